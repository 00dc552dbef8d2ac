"""Patch whitening: a layer's filters from the covariance of its input.

The first convolution of the CIFAR-10 speed records (airbench) starts as the
whitening of its input patches: each filter an eigenvector of the patches'
covariance scaled by `1 / sqrt(eigenvalue + eps)`, once with each sign.
`whitening_init` builds that kernel for a convolution or a dense layer from
a batch, as the layer sees it (its window, strides, padding and dilation).
The covariance (`patches.patch_moments`) is summed over row chunks and over
the devices that hold the rows, then decomposed once
(docs/algorithm.md#patch-whitening).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import functools
import math
import numbers
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from nc_jax._src import campaign
from nc_jax._src import conv
from nc_jax._src import patches
from nc_jax._src import placement
from nc_jax._src import validation
from nc_jax._src.types import Initializer

Method = Literal["pca", "zca"]


@dataclasses.dataclass(frozen=True)
class WhiteningOptions:
  """How the patches' covariance becomes filters, checked and hashable:
  `whitening_init`'s keyword arguments of the same names."""
  eps: float = 5e-4
  center: bool = True
  pairs: bool = True
  method: Method = "pca"

  def __post_init__(self) -> None:
    eps = self.eps
    if (not isinstance(eps, numbers.Real) or isinstance(eps, bool) or
        not math.isfinite(eps) or eps <= 0):
      raise ValueError(
          f"`eps` must be a positive float (added to each eigenvalue, in "
          f"units of their median), got {eps!r}; airbench's is 5e-4.")
    for name in ("center", "pairs"):
      if not isinstance(getattr(self, name), bool):
        raise TypeError(
            f"`{name}` must be True or False, got {getattr(self, name)!r}.")
    if not isinstance(self.method, str) or self.method not in get_args(Method):
      raise ValueError(
          f"`method` must be one of {get_args(Method)}, got {self.method!r}:"
          " 'pca' keeps the strongest directions first, 'zca' needs all of "
          "them.")
    object.__setattr__(self, "eps", float(eps))

  def directions(self, features: int) -> int:
    """The distinct directions a kernel of `features` filters takes: half
    of them (rounded up) in +/- pairs, else all."""
    return -(-features // 2) if self.pairs else features

  def check_shape(self, shape: tuple[int, ...]) -> None:
    """Raises for a kernel ZCA cannot fill: fewer directions than the
    patch dimension."""
    d, k = math.prod(shape[:-1]), self.directions(shape[-1])
    if self.method == "zca" and k < d:
      raise ValueError(
          f"method='zca' whitens all d={d} patch directions (one filter per "
          f"input coordinate), but a kernel of shape {shape} holds {k} "
          f"direction(s){' in +/- pairs' if self.pairs else ''}; use "
          "method='pca' to keep the strongest directions, or give the layer "
          f"at least {2 * d if self.pairs else d} features.")


def _directions(cov: jax.Array, options: WhiteningOptions,
                down: jax.Array) -> jax.Array:
  """The d whitening directions as columns: eigenvectors by falling
  eigenvalue (or their ZCA rotation), each scaled by `1 / sqrt(eigenvalue +
  eps * median eigenvalue)`, signed so that its largest entry is positive;
  `cov` is the covariance of the batch times `down`, the directions are for
  the batch itself."""
  lam, v = jnp.linalg.eigh(cov)
  lam, v = jnp.maximum(lam[::-1], 0), v[:, ::-1]
  peak = jnp.argmax(jnp.abs(v), axis=0)
  sign = jnp.sign(v[peak, jnp.arange(v.shape[1])])
  v = v * jnp.where(sign == 0, 1, sign)[None, :]
  # eps's unit: the median eigenvalue (a few huge features do not move it),
  # or the mean when more than half are zero. A batch without variation has
  # no scale: orthonormal filters.
  median = jnp.median(lam)
  level = jnp.where(median > 0, median, jnp.mean(lam))
  scale = jnp.where(level > 0, down / jnp.sqrt(lam + options.eps * level), 1)
  u = v * scale[None, :]
  return u @ v.T if options.method == "zca" else u


@functools.partial(
    jax.jit,
    static_argnames=("shape", "dtype", "spec", "options", "chunk_size",
                     "row_sharding"))
def _whitening_kernel(key, x, first_row, *, shape, dtype, spec, options,
                      chunk_size, row_sharding):
  """The kernel of `whitening_init`, on the layer's input `x`."""
  d = math.prod(shape[:-1])
  moments = patches.patch_moments(
      x,
      first_row,
      shape,
      spec,
      center=options.center,
      chunk_size=chunk_size,
      row_sharding=row_sharding)
  u = _directions(moments.cov, options, moments.down)
  k = options.directions(shape[-1])
  if k > d:  # random unit combinations of the d directions: variance 1 too
    q = jax.random.normal(key, (d, k - d), u.dtype)
    q = q / jnp.linalg.norm(q, axis=0, keepdims=True)
    u = jnp.concatenate([u, u @ q], axis=1)
  u = u[:, :k]
  if options.pairs:
    u = jnp.concatenate([u, -u], axis=1)[:, :shape[-1]]
  return u.reshape(shape).astype(dtype)


def whitened_kernel(checked: campaign.CheckedBatch,
                    key: jax.Array,
                    shape: tuple[int, ...],
                    dtype: jnp.dtype,
                    options: WhiteningOptions,
                    *,
                    chunk_size: int | None,
                    strides: Any = 1,
                    padding: conv.Padding = "SAME",
                    kernel_dilation: Any = 1,
                    feature_group_count: int = 1) -> jax.Array:
  """`whitening_init`'s kernel of `shape` on a checked batch; NaN when a
  traced batch fails its value checks."""
  options.check_shape(shape)
  layer = campaign.layer_input(
      checked,
      shape,
      strides=strides,
      padding=padding,
      kernel_dilation=kernel_dilation,
      feature_group_count=feature_group_count)
  chunk_size = placement.auto_chunk_size(chunk_size, layer.rows.shape[0],
                                         math.prod(shape[:-1]),
                                         placement.platform(layer.rows),
                                         layer.positions)
  kernel = placement.on_auto_axes(_whitening_kernel, layer.rows)(
      key,
      layer.rows,
      layer.first_row,
      shape=shape,
      dtype=dtype,
      spec=layer.conv,
      options=options,
      chunk_size=chunk_size,
      row_sharding=checked.row_sharding)
  if checked.valid is not None:  # failed value checks: NaN, never plausible
    kernel = jnp.where(checked.valid, kernel, jnp.nan)
  return kernel


@placement.eager_on_auto_axes
def whitening_init(
    batch: ArrayLike,
    *,
    eps: float = 5e-4,
    center: bool = True,
    pairs: bool = True,
    method: Method = "pca",
    chunk_size: int | None = None,
    strides: int | Sequence[int] = 1,
    padding: conv.Padding = "SAME",
    kernel_dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
) -> Initializer:
  """Builds an initializer whose filters whiten the layer's input patches.

  The returned `init(key, shape, dtype)` has the `jax.nn.initializers`
  signature. For a convolution's kernel `(*window, in_features, features)`
  it takes every patch the layer multiplies on `batch` (its window, strides,
  padding and dilation; padded zeros included), of dimension
  `d = prod(window) * in_features`; for a dense kernel `(fan_in, fan_out)`
  the rows of `batch` flattened, `d = fan_in`. Their covariance `C = V diag
  (lam) V^T` (summed over row chunks and devices, decomposed once) gives d
  whitening directions `v_i / sqrt(lam_i + eps * median(lam))`, strongest
  first, each signed so that its largest entry is positive. A filter `w_i`
  then has variance `lam_i / (lam_i + eps * median(lam))`, about 1, on the
  batch, and distinct filters are uncorrelated.

  The kernel holds the directions as follows (airbench's layout when
  `features == 2 * d`):
  - `pairs=True`: the first `ceil(features / 2)` directions, then the same
    negated (`[+w_1..+w_k, -w_1..-w_k]`, the last one dropped for an odd
    count), so a ReLU after the layer loses no direction's information.
    Fewer features than `2 * d` keep the strongest directions; more take,
    beyond the d directions, random unit combinations of them (drawn with
    `key`; each also of variance about 1 on the batch, not decorrelated from
    the rest).
  - `pairs=False`: the first `features` directions, extended the same way.
  Only those random combinations use `key`: otherwise the kernel depends on
  the batch alone.

  Args:
    batch: the inputs this layer will see: images `(m, *spatial,
      in_features)` for a convolution, `(m, fan_in)` or `(m, *dims)` that
      flattens to fan_in for a dense layer; `m >= 2`.
    eps: added to each eigenvalue, in units of the median eigenvalue (the
      mean if more than half are zero), so the kernel does not depend on
      the batch's scale and a few huge features do not damp the rest; for
      inputs normalized to unit variance, close to airbench's absolute
      `eps`. Must be positive (padded or constant patches make the
      covariance singular).
    center: subtract the patches' mean (the covariance); False uses their
      second moment, as airbench does.
    pairs: +/- pairs of directions (see above).
    method: "pca" (the eigenvectors, strongest first) or "zca" (their
      rotation `V diag(1 / sqrt(lam + eps * mean(lam))) V^T`, one filter per
      input coordinate, as local as the data allow); "zca" needs at least d
      directions.
    chunk_size: sum the covariance over this many rows (images) at a time;
      None chooses by device, as `default_chunk_size` states with `d` in the
      role of N. A batch sharded along its rows over a `jax.sharding.Mesh`
      is summed where it lies, with one all-reduce.
    strides, padding, kernel_dilation, feature_group_count: for a
      convolution's kernel, as `flax.linen.Conv` takes them (only one
      feature group).

  Returns:
    `init(key, shape, dtype=jnp.float32) -> jax.Array`, computed in float32
    (float64 for a float64 batch) and returned in `dtype`; it compiles once
    per shape, dtype and options and works under `jax.jit`.

  Raises:
    ValueError, TypeError: here for a malformed batch or options, and from
      `init` for a shape that does not fit the batch, or a kernel with fewer
      directions than d under "zca". Non-finite entries are checked as in
      `campaign_init` (a traced batch that fails them gives a NaN kernel).

  Examples:
    >>> import jax
    >>> import flax.linen as nn
    >>> import nc_jax
    >>> images = jax.random.uniform(jax.random.key(0), (256, 12, 12, 3))
    >>> conv = nn.Conv(54, (3, 3), padding="VALID",
    ...                kernel_init=nc_jax.whitening_init(images,
    ...                                                  padding="VALID"))
    >>> kernel = conv.init(jax.random.key(1), images)["params"]["kernel"]
    >>> kernel.shape  # 27 directions, each with both signs
    (3, 3, 3, 54)
    >>> bool((kernel[..., :27] == -kernel[..., 27:]).all())
    True
  """
  checked = campaign.checked_batch(batch, None, None)
  options = WhiteningOptions(eps, center, pairs, method)
  chunk_size = validation.check_chunk_size(chunk_size)
  convolution = conv.check_options(strides, padding, kernel_dilation,
                                   feature_group_count)

  @placement.eager_on_auto_axes
  def init(key: jax.Array,
           shape: tuple[int, ...],
           dtype: DTypeLike = jnp.float32) -> jax.Array:
    shape = validation.check_kernel_shape(shape)
    return whitened_kernel(
        checked,
        key,
        shape,
        validation.check_float_dtype(dtype),
        options,
        chunk_size=chunk_size,
        **convolution)

  return init
