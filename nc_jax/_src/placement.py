"""Where and how the campaign computes: devices, chunking, sharding, precision.

The device policy lives here, apart from the checks (`validation`) and the
math (`scores`, `election`): which platform an array is on, how many rows are
scored at a time, how a batch sharded along its rows is reduced, and which
dtype and matmul precision the statistics use.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

# `(mesh, axes)`: a batch split along its rows over these mesh axes.
RowSharding = tuple[jax.sharding.Mesh, Any]

# Rows scored at a time when `chunk_size=None`. On CPU, responses that stay
# in cache beat one big product (`benchmarks/init_speed.py` measures this);
# accelerators take the whole batch up to a bound on the responses' memory.
_CPU_CHUNK_ROWS = 2048
_ACCELERATOR_CHUNK_ELEMENTS = 2**27


def is_concrete(x: object) -> bool:
  """Whether `x` holds values Python can inspect (not a tracer)."""
  return not isinstance(x, jax.core.Tracer)


def platform(x: object) -> str:
  """The platform `x` lives on (the default backend's for a tracer)."""
  if is_concrete(x) and isinstance(x, jax.Array):
    return next(iter(x.devices())).platform
  return jax.default_backend()


def compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
  """The dtype statistics are accumulated in: float32, or wider if given wider."""
  if jnp.issubdtype(dtype, jnp.floating):
    return jnp.promote_types(dtype, jnp.float32)
  return jnp.dtype(jnp.float32)


# Products whose float32 results feed cancelling differences (sums of squares,
# projections) must be exact float32: no TF32 or bf16 passes on GPU/TPU.
exact_matmul = functools.partial(jnp.matmul,
                                 precision=jax.lax.Precision.HIGHEST)


def auto_chunk_size(chunk_size: int | None, m: int, num_candidates: int,
                    on: str) -> int | None:
  """`chunk_size`, or platform `on`'s default for m rows and N candidates."""
  if chunk_size is not None:
    return chunk_size
  if on == "cpu":
    return _CPU_CHUNK_ROWS
  rows = max(1, _ACCELERATOR_CHUNK_ELEMENTS // num_candidates)
  return None if rows >= m else rows


def placement(x: jax.Array) -> tuple[jax.Array, RowSharding | None]:
  """`(first_row, row_sharding)` of a batch.

  `first_row` is `x[:1]`, the input of the responses every row is shifted by;
  `row_sharding` is `(mesh, axes)` when `x` is split along its rows only over
  several devices, in which case the first row is put on every device.
  """
  sharding = x.sharding if (is_concrete(x)
                            and isinstance(x, jax.Array)) else None
  if (not isinstance(sharding, jax.sharding.NamedSharding)
      or len(sharding.device_set) < 2 or not sharding.spec
      or sharding.spec[0] is None or any(sharding.spec[1:])):
    return x[:1], None
  return jax.device_put(x[:1], jax.sharding.NamedSharding(
      sharding.mesh, jax.sharding.PartitionSpec())), (sharding.mesh,
                                                      sharding.spec[0])
