"""The moments of the patches a layer multiplies: their mean and covariance.

A dense kernel `(fan_in, fan_out)` multiplies its input's rows; a
convolution's `(*window, in, features)` every patch of its input under its
window, strides, padding and dilation, flattened as the kernel is over
`(*window, in)`. `patch_moments` sums them over row chunks and over the
devices that hold the rows, in one pass, and never builds the patch matrix
of the batch. `whitening_init` decomposes the covariance; LSUV computes a
small layer's output variance from it.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nc_jax._src import conv
from nc_jax._src import placement


class PatchMoments(NamedTuple):
  """The patches' mean and covariance (second moment if not centered), both
  of the batch scaled by `down`, a power of two that brings its peak into
  [0.5, 1) so that no square over- or underflows: in the batch's own units
  the mean is `mean / down` and the covariance `cov / down**2`."""
  mean: jax.Array  # (d,)
  cov: jax.Array  # (d, d)
  down: jax.Array  # scalar


class _Sums(NamedTuple):
  """Sums over patches `p` (shifted by `c`): count, sum of `p - c`, and
  sum of `(p - c)(p - c)^T`."""
  count: jax.Array
  first: jax.Array
  second: jax.Array


def _patch_sums(p: jax.Array, weight: jax.Array, shift: jax.Array) -> _Sums:
  dev = p - shift[None, :]
  kept = dev * weight[:, None]
  return _Sums(weight.sum(), kept.sum(0), placement.exact_matmul(kept.T, dev))


def _add(a: _Sums, b: _Sums) -> _Sums:
  return _Sums(*(u + v for u, v in zip(a, b)))


def _sums(x: jax.Array, patches_of: Callable[[jax.Array], jax.Array],
          shift: jax.Array, chunk_size: int | None) -> _Sums:
  """`_Sums` of every patch of `x`'s rows, a `lax.scan` over row chunks if
  asked (the last chunk moved back to end at row m, its rows already counted
  weighted 0, as the campaign's scoring does)."""
  m = x.shape[0]
  if chunk_size is None or chunk_size >= m:
    p = patches_of(x)
    return _patch_sums(p, jnp.ones(p.shape[0], p.dtype), shift)

  def step(acc: _Sums, start: jax.Array) -> tuple[_Sums, None]:
    begin = jnp.minimum(start, m - chunk_size)
    p = patches_of(jax.lax.dynamic_slice_in_dim(x, begin, chunk_size))
    fresh = (begin + jnp.arange(chunk_size) >= start).astype(p.dtype)
    return _add(
        acc, _patch_sums(p, jnp.repeat(fresh, p.shape[0] // chunk_size),
                         shift)), None

  d = shift.shape[0]
  zero = _Sums(
      jnp.zeros((), x.dtype), jnp.zeros(d, x.dtype), jnp.zeros((d, d), x.dtype))
  return jax.lax.scan(step, zero, jnp.arange(0, m, chunk_size))[0]


def patch_moments(x: jax.Array, first_row: jax.Array | None,
                  shape: tuple[int, ...], spec: conv.ConvSpec | None, *,
                  center: bool, chunk_size: int | None,
                  row_sharding: placement.RowSharding | None) -> PatchMoments:
  """The moments of the patches a kernel of `shape` multiplies on `x`.

  Args:
    x: a dense kernel's rows `(m, fan_in)`, or a convolution's images
      `(m, *spatial, in)` with its geometry `spec`.
    first_row: `x[:1]`, placed (`placement.placement`), or None to slice it.
    shape: the kernel's shape; `d = prod(shape[:-1])`.
    spec: the convolution's geometry, or None for a dense kernel.
    center: the covariance (True) or the second moment (False).
    chunk_size: rows summed at a time, or None for all at once.
    row_sharding: `(mesh, axes)` for a batch split along its rows: each
      device sums its own rows and one psum adds them up.

  Patches are the layer's own convolution of the batch with the `d x d`
  identity as the kernel, at full float32 precision. Every patch is shifted
  by the first row's mean patch before its square is summed, so one huge
  offset cancels first.
  """
  d = math.prod(shape[:-1])
  if first_row is None:
    first_row = x[:1]
  _, exponent = jnp.frexp(jnp.max(jnp.abs(x)))
  down = jnp.ldexp(jnp.ones((), x.dtype), -exponent)

  def patches_of(rows: jax.Array) -> jax.Array:
    rows = rows * down
    if spec is None:
      return rows.reshape(-1, d)
    eye = jnp.eye(d, dtype=rows.dtype).reshape(*shape[:-1], d)
    return spec.apply(rows, eye, jax.lax.Precision.HIGHEST).reshape(-1, d)

  first_patches = patches_of(first_row)
  shift = (
      first_patches.mean(0) if center else jnp.zeros_like(first_patches[0]))
  sums = functools.partial(
      _sums, patches_of=patches_of, shift=shift, chunk_size=chunk_size)
  if row_sharding is None:
    total = sums(x)
  else:
    mesh, axes = row_sharding

    def local(x):
      return jax.tree.map(lambda s: jax.lax.psum(s, axes), sums(x))

    # check_vma=False: the chunk scan starts from zeros that are not marked
    # as varying per device; the psum makes the result replicated.
    total = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=jax.sharding.PartitionSpec(axes),
        out_specs=jax.sharding.PartitionSpec(),
        check_vma=False)(
            x)
  mean = total.first / total.count
  cov = total.second / total.count
  if center:
    cov = cov - jnp.outer(mean, mean)
  return PatchMoments(shift + mean, (cov + cov.T) / 2, down)
