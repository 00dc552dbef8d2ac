"""Convolution kernels: the geometry of a conv layer's responses.

A convolution's output unit is a dot product of one filter with a window of
its input, so the campaign applies as it is (docs/algorithm.md
#beyond-dense-layers): a candidate is a whole filter, flattened over
`(*window, in)` for the election, and every output position of every image
is one sample of its response, labelled with the image's label. Responses
are the layer's own convolution of the batch with the N candidates as output
channels, computed as `flax.linen.Conv` computes them.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math
import numbers
from typing import Any, Union

import jax
import jax.numpy as jnp

Padding = Union[str, int, Sequence[Union[int, tuple[int, int]]]]


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """A convolution's strides, padding and dilation, canonical and hashable.

  Attributes:
    strides: one stride per spatial axis.
    padding: "SAME", "VALID", or one `(low, high)` pair per spatial axis.
    dilation: the kernel dilation per spatial axis.
  """
  strides: tuple[int, ...]
  padding: str | tuple[tuple[int, int], ...]
  dilation: tuple[int, ...]

  def apply(self,
            rows: jax.Array,
            kernel: jax.Array,
            precision: Any = None) -> jax.Array:
    """`rows (c, *spatial, in)` convolved with `kernel (*window, in, out)`,
    as `flax.linen.Conv` does it: `(c, *out_spatial, out)`; `precision` as
    `jax.lax.conv_general_dilated` takes it."""
    n = rows.ndim
    dimensions = jax.lax.ConvDimensionNumbers(
        lhs_spec=(0, n - 1, *range(1, n - 1)),
        rhs_spec=(n - 1, n - 2, *range(0, n - 2)),
        out_spec=(0, n - 1, *range(1, n - 1)))
    return jax.lax.conv_general_dilated(
        rows,
        kernel.astype(rows.dtype),
        window_strides=self.strides,
        padding=self.padding,
        rhs_dilation=self.dilation,
        dimension_numbers=dimensions,
        precision=precision)

  def positions(self, batch_shape: tuple[int, ...],
                kernel_shape: tuple[int, ...]) -> int:
    """Output positions per example: the samples each example gives (0 when
    the window does not fit the padded input)."""
    out = jax.eval_shape(
        self.apply, jax.ShapeDtypeStruct((1, *batch_shape[1:]), jnp.float32),
        jax.ShapeDtypeStruct(kernel_shape, jnp.float32)).shape
    return math.prod(out[1:-1])


def _per_axis(value: int | Sequence[int], rank: int,
              name: str) -> tuple[int, ...]:
  if isinstance(value, numbers.Integral):
    values = (value,) * rank
  elif isinstance(value, Sequence) and not isinstance(value, str):
    values = tuple(value)
  else:
    values = None
  if values is None or len(values) != rank or not all(
      isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
      for v in values):
    per_axis = (f"{rank} of them (one per spatial axis of the {rank}-D "
                "convolution)" if rank > 0 else "one per spatial axis")
    raise ValueError(
        f"`{name}` must be a positive int or {per_axis}, got {value!r}.")
  return tuple(int(v) for v in values)


def _pad(value: object) -> int:
  if not isinstance(value, numbers.Integral) or isinstance(value, bool):
    raise TypeError(value)
  return int(value)


def _padding(padding: Padding, rank: int) -> str | tuple[tuple[int, int], ...]:
  """`padding` as `jax.lax.conv_general_dilated` takes it, from what
  `flax.linen.Conv` takes."""
  if isinstance(padding, str):
    if padding.upper() in ("SAME", "VALID"):
      return padding.upper()
    raise ValueError(
        f"`padding` {padding!r} is not supported by the campaign; use 'SAME', "
        "'VALID' or explicit pads, or initialize the layer another way.")
  if isinstance(padding, numbers.Integral):
    padding = (padding,) * rank
  try:
    pads = tuple((int(p), int(p)) if isinstance(p, numbers.Integral) else tuple(
        _pad(v) for v in p) for p in padding)
  except (TypeError, ValueError):
    pads = ()
  if len(pads) != rank or any(len(p) != 2 or min(p) < 0 for p in pads):
    raise ValueError(
        f"`padding` must be 'SAME', 'VALID', an int, or {rank} non-negative "
        f"ints or (low, high) pairs, got {padding!r}.")
  return pads


def check_options(strides: Any, padding: Any, kernel_dilation: Any,
                  feature_group_count: Any) -> dict[str, Any]:
  """Checks convolution options before any kernel is known, as flax takes
  them (`None` strides or dilation: 1); returns them with `None` replaced.

  Raises:
    ValueError: naming the option, the value and the fix.
  """
  options = {
      "strides": 1 if strides is None else strides,
      "kernel_dilation": 1 if kernel_dilation is None else kernel_dilation
  }
  for name, value in options.items():
    rank = (1 if isinstance(value, numbers.Integral) else len(value) if
            isinstance(value, Sequence) and not isinstance(value, str) else 0)
    _per_axis(value, max(rank, 1) if rank else -1, name)
  rank = (
      len(padding)
      if isinstance(padding, Sequence) and not isinstance(padding, str) else 1)
  _padding(padding, rank)
  if (not isinstance(feature_group_count, numbers.Integral) or
      isinstance(feature_group_count, bool) or feature_group_count < 1):
    raise ValueError(f"`feature_group_count` must be a positive int, got "
                     f"{feature_group_count!r}.")
  return {
      **options, "padding": padding,
      "feature_group_count": feature_group_count
  }


def conv_spec(batch_shape: tuple[int, ...], kernel_shape: tuple[int, ...], *,
              strides: int | Sequence[int], padding: Padding,
              kernel_dilation: int | Sequence[int],
              feature_group_count: int) -> ConvSpec:
  """Checks a batch against a conv kernel and returns the canonical spec.

  Args:
    batch_shape: the batch's shape, `(m, *spatial, in_features)`.
    kernel_shape: flax's conv layout, `(*window, in_features, features)`.
    strides, padding, kernel_dilation, feature_group_count: as
      `flax.linen.Conv` takes them.

  Raises:
    ValueError: for a batch whose rank or channels do not fit the kernel, a
      window larger than the padded input, grouped convolutions, or
      malformed options; each names the fix.
  """
  rank = len(kernel_shape) - 2
  if len(batch_shape) != rank + 2:
    raise ValueError(
        f"the kernel of shape {kernel_shape} is a {rank}-D convolution's, so "
        f"`batch` must have shape (m, {', '.join(['size'] * rank)}, "
        f"in_features), got {batch_shape}; pass the images (or feature maps) "
        "that feed this layer, unflattened.")
  if (not isinstance(feature_group_count, numbers.Integral) or
      feature_group_count != 1):
    raise ValueError(
        f"`feature_group_count` is {feature_group_count!r}: grouped and "
        "depthwise convolutions are not supported by the campaign yet; "
        "initialize the layer another way.")
  if batch_shape[-1] != kernel_shape[-2]:
    raise ValueError(
        f"`batch` has {batch_shape[-1]} channels but the kernel expects "
        f"{kernel_shape[-2]} input features; pass the activations that feed "
        "this layer.")
  spec = ConvSpec(
      _per_axis(strides, rank, "strides"), _padding(padding, rank),
      _per_axis(kernel_dilation, rank, "kernel_dilation"))
  if spec.positions(batch_shape, kernel_shape) < 1:
    window = tuple(
        (k - 1) * d + 1 for k, d in zip(kernel_shape[:-2], spec.dilation))
    raise ValueError(
        f"the {window} window (dilated) is larger than the padded "
        f"input {batch_shape[1:-1]} (padding {spec.padding!r}), so the "
        "convolution has no output; pad more or use a smaller window.")
  return spec
