"""Where and how the campaign computes: devices, chunking, sharding, precision.

The device policy lives here, apart from the checks (`validation`) and the
math (`scores`, `election`): which platform an array is on, how many rows are
scored at a time, how a batch sharded along its rows is reduced, and which
dtype and matmul precision the statistics use.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

T = TypeVar("T")

# `(mesh, axes)`: a batch split along its rows over these mesh axes.
RowSharding = tuple[jax.sharding.Mesh, Any]

# The bounds of `auto_chunk_size`, whose rule `default_chunk_size` states:
# on CPU, responses that stay in cache beat one big product
# (`benchmarks/init_speed.py` measures chunk sizes).
_CPU_CHUNK_ROWS = 1024
_CPU_CHUNK_ELEMENTS = 2**20
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
  """The dtype statistics accumulate in: float32, or wider if given wider."""
  if jnp.issubdtype(dtype, jnp.floating):
    return jnp.promote_types(dtype, jnp.float32)
  return jnp.dtype(jnp.float32)


# Products whose float32 results feed cancelling differences (sums of squares,
# projections) must be exact float32: no TF32 or bf16 passes on GPU/TPU.
exact_matmul = functools.partial(
    jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def auto_chunk_size(chunk_size: int | None,
                    m: int,
                    num_candidates: int,
                    on: str,
                    positions: int = 1) -> int | None:
  """`chunk_size`, or platform `on`'s default for m rows of `positions`
  samples each (a convolution's output positions; 1 for a dense layer) and
  N candidates. None: the whole batch at once."""
  if chunk_size is not None:
    return chunk_size
  per_row = num_candidates * positions
  if on == "cpu":
    rows = min(_CPU_CHUNK_ROWS, max(1, _CPU_CHUNK_ELEMENTS // per_row))
  else:
    rows = max(1, _ACCELERATOR_CHUNK_ELEMENTS // per_row)
  if rows >= m:
    return None
  # As many chunks as that takes, of equal size: the last chunk, moved back
  # to end at row m, then repeats as few rows as possible.
  return -(-m // -(-m // rows))


def with_axis_types(a: T, axis_type: jax.sharding.AxisType) -> T:
  """`a` on the same devices and layout, its mesh axes all of `axis_type`.

  The buffers stay where they are: nothing is copied or gathered. Anything
  but a concrete `jax.Array` on a mesh comes back as it is.
  """
  if not isinstance(a, jax.Array) or not is_concrete(a):
    return a
  sharding = a.sharding
  if not isinstance(sharding, jax.sharding.NamedSharding) or all(
      t == axis_type for t in sharding.mesh.axis_types):
    return a
  mesh = sharding.mesh
  retyped = jax.sharding.Mesh(
      mesh.devices,
      mesh.axis_names,
      axis_types=(axis_type,) * len(mesh.axis_names))
  return jax.device_put(a, jax.sharding.NamedSharding(retyped, sharding.spec))


def auto_axes(a: jax.Array | None) -> jax.Array | None:
  """`a` on the same devices and layout, with Auto mesh axes.

  `jax.make_mesh` builds Explicit axes, under which slicing and reducing a
  sharded axis must name its output sharding; the campaign places its
  reductions itself (`scores.response_moments`), so it works on Auto axes.
  Under a mesh context of Explicit axes (a trace under `jax.set_mesh`; the
  eager calls run on Auto ones, `eager_on_auto_axes`), `a` stays as it is,
  for `on_auto_axes`.
  """
  if _explicit(jax.sharding.get_abstract_mesh()):  # traced on these axes
    return a
  return with_axis_types(a, jax.sharding.AxisType.Auto)


def _explicit(mesh: Any) -> bool:
  return jax.sharding.AxisType.Explicit in getattr(mesh, "axis_types", ())


def _arrays(fn: Callable[[Any], Any], tree: Any) -> Any:
  """`fn` on every leaf of `tree` inside tuples, lists and dicts (a model or
  another pytree is one leaf, left whole)."""
  return jax.tree.map(
      fn, tree, is_leaf=lambda a: type(a) not in (tuple, list, dict))


def eager_on_auto_axes(fn: Callable[..., T]) -> Callable[..., T]:
  """`fn`, called eagerly under a mesh context of Explicit axes
  (`jax.set_mesh`), run on Auto axes.

  The campaign works on Auto axes (`auto_axes`), and jax refuses an
  operation whose arrays and context mesh differ in axis types: the arrays
  among the arguments go in on Auto axes, the context is the same mesh with
  Auto axes, and arrays in the result come back on Explicit ones, as the
  caller's other arrays are. Inside a trace the context stays, and
  `on_auto_axes` takes over.
  """

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    mesh = jax.sharding.get_abstract_mesh()
    # Inside a trace (of the caller's jit, even with arguments closed over)
    # every new value is a tracer.
    if not _explicit(mesh) or not is_concrete(jnp.zeros(())):
      return fn(*args, **kwargs)
    args, kwargs = _arrays(
        lambda a: with_axis_types(a, jax.sharding.AxisType.Auto),
        (args, kwargs))
    with jax.sharding.use_abstract_mesh(
        mesh.update_axis_types(
            {name: jax.sharding.AxisType.Auto for name in mesh.axis_names})):
      out = fn(*args, **kwargs)
    return _arrays(lambda a: with_axis_types(a, jax.sharding.AxisType.Explicit),
                   out)

  return wrapped


def placement(
    x: jax.Array, labels: jax.Array | None
) -> tuple[jax.Array, jax.Array | None, jax.Array, RowSharding | None]:
  """`(x, labels, first_row, row_sharding)`: the batch placed for scoring.

  `x` and `labels` come back on Auto mesh axes (`auto_axes`); `first_row` is
  `x[:1]`, the input of the responses every row is shifted by (None for a
  traced `x`: the scoring slices it);
  `row_sharding` is `(mesh, axes)` when `x` is split along its rows only over
  several devices, in which case the first row is put on every device.
  """
  x, labels = auto_axes(x), auto_axes(labels)
  if not is_concrete(x) or _explicit(jax.typeof(x).sharding.mesh):
    return x, labels, None, None  # sliced inside the trace (`on_auto_axes`)
  sharding = x.sharding if isinstance(x, jax.Array) else None
  if (not isinstance(sharding, jax.sharding.NamedSharding) or
      len(sharding.device_set) < 2 or not sharding.spec or
      sharding.spec[0] is None or any(sharding.spec[1:])):
    return x, labels, x[:1], None
  first_row = jax.device_put(
      x[:1],
      jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
  return x, labels, first_row, (sharding.mesh, sharding.spec[0])


def on_auto_axes(fn: Callable[..., T], x: jax.Array) -> Callable[..., T]:
  """`fn`, run with Auto mesh axes when `x` is on Explicit ones (traced, or
  closed over by a trace under `jax.set_mesh`).

  Inside a trace an Explicit-axes batch cannot be re-placed as `auto_axes`
  does for eager calls; `jax.sharding.auto_axes` lets the
  compiler place `fn`'s work instead, and returns replicated results.
  """
  mesh = jax.typeof(x).sharding.mesh
  if not _explicit(mesh):
    return fn

  def tied(x, *args, **kwargs):
    # A result that does not depend on `x` (a random pick) would let the
    # caller's jit prune `x`, the input that names the mesh's devices, and
    # leave it with one device and results typed on the mesh.
    return jax.lax.optimization_barrier((fn(*args, **kwargs), x))[0]

  def on_auto(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh):
      return jax.sharding.auto_axes(
          functools.partial(tied, **kwargs),
          out_sharding=jax.sharding.PartitionSpec())(x, *args)

  return on_auto
