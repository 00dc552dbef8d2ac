"""Benchmarks of nc_jax: thin entry scripts over importable functions."""
