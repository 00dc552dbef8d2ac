"""A layer's output variance on its input, without writing the output out."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from nc_jax._src import conv
from nc_jax._src import patches
from nc_jax._src import placement

if TYPE_CHECKING:  # traversal calls this module
  from nc_jax._src import traversal


def output_variance(layer: traversal.Layer,
                    start: jax.Array) -> Callable[[jax.Array], jax.Array]:
  """The variance of the layer's output on its input, over samples and
  channels, as a function of a kernel that is `start` rescaled (all the
  loop tries), with no output written out.

  Per output channel c (a kernel column w_c, bias b_c), the variance splits
  into the channels' own spread and that of their means:
  `mean_c(var_c) + var_c(mean_c)`. The means are linear in the input, so
  they come from the layer applied to the batch's mean example. The
  within-channel part takes one pass over the batch: for a layer with no
  more inputs than outputs per position (`d <= F`, e.g. a first convolution
  on 1-3 channels) the d x d patch moments (`var_c = w_c^T C w_c`, for any
  kernel); otherwise the centered output of `start`, squared and summed in
  the pass that computes it (XLA fuses it: the output is never stored), and
  for `t * start` it is `t^2` that.
  """
  spec = layer.spec
  d, f = spec.flat_shape
  if d <= f:
    return _patch_moment_variance(layer)
  mean_input = jnp.mean(
      layer.inputs.astype(jnp.float32), axis=0,
      keepdims=True).astype(layer.inputs.dtype)
  features = len(spec.kernel_shape) - spec.geometry.kernel_in_axes

  def channel_means(kernel):  # kept with the output's rank (no reshape)
    out = layer.outputs(kernel, mean_input).astype(jnp.float32)
    return jnp.mean(out, tuple(range(out.ndim - features)), keepdims=True)

  means = channel_means(start)
  # Reduced to the channels on the output's own axes: a reshape between the
  # layer and the reduction would keep XLA from fusing them.
  out = layer.outputs(start).astype(jnp.float32)
  within = jnp.mean(
      jnp.mean(jnp.square(out - means), tuple(range(out.ndim - features))))
  start = start.astype(jnp.float32)
  start_sq = jnp.vdot(start, start)

  def variance(kernel: jax.Array) -> jax.Array:
    along = jnp.vdot(kernel.astype(jnp.float32), start)
    scale = jnp.where(start_sq > 0, along / start_sq, 0.0)
    return jnp.square(scale) * within + jnp.var(channel_means(kernel))

  return variance


def _patch_moment_variance(
    layer: traversal.Layer) -> Callable[[jax.Array], jax.Array]:
  """`output_variance` of a layer with `d <= F`: from the moments of its
  input patches, `mean_c(w_c^T C w_c) + var_c(mu . w_c + b_c)`, summed once
  (no more work than one output)."""
  spec = layer.spec
  d, f = spec.flat_shape
  rows, positions = layer.rows()
  if spec.geometry.conv is None:  # every position a row of the flat kernel
    rows, positions, shape, geometry = rows.reshape(-1, d), 1, (d, f), None
  else:
    shape = spec.kernel_shape
    geometry = conv.conv_spec(rows.shape, shape, **spec.geometry.conv_options)
  chunk_size = placement.auto_chunk_size(None, rows.shape[0], d,
                                         placement.platform(rows), positions)
  moments = patches.patch_moments(
      rows.astype(jnp.float32),
      None,
      shape,
      geometry,
      center=True,
      chunk_size=chunk_size,
      row_sharding=layer.row_sharding)
  bias = (
      jnp.zeros(f, jnp.float32)
      if layer.bias is None else layer.bias.reshape(f).astype(jnp.float32))

  def variance(kernel: jax.Array) -> jax.Array:
    w = kernel.reshape(d, f).astype(jnp.float32) / moments.down
    within = jnp.sum(w * placement.exact_matmul(moments.cov, w), axis=0)
    means = placement.exact_matmul(moments.mean, w) + bias
    # w^T C w >= 0 but for rounding when the input barely varies.
    return jnp.maximum(jnp.mean(within), 0.0) + jnp.var(means)

  return variance
