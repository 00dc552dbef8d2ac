"""Benchmarks of nc_jax: thin entry scripts over shared modules.

Entry scripts (`python benchmarks/X.py`): `mnist_mlp.py`, `ablation.py`,
`init_speed.py`. Shared modules: `training` (the MLPs, initializers, training,
metric names), `stats` (confidence intervals, paired comparisons), `reports`
(markdown tables, JSON, CSV, plots), `cli` (options, data, settings), `data`,
`ablation_study`, `speed` and `numpy_port`.
"""
