"""Eager checks of user input, run before any heavy work.

Shapes are Python ints even under tracing, so shape errors are always raised.
Value checks (non-finite entries, label ranges, one-hot rows) need concrete
values and are skipped for traced arrays, never branched on under `jit`.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


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


def as_batch(batch: ArrayLike, name: str = "batch") -> jax.Array:
  """Checks a batch of samples and returns it as a `(m, features)` float array.

  Args:
    batch: `(m, fan_in)`, or `(m, *dims)` that flattens to `fan_in`.
    name: the argument's name, for error messages.

  Returns:
    The batch flattened to 2-D, in float32 (float64 if given float64 with x64).

  Raises:
    TypeError: for a dtype that is not real numeric.
    ValueError: for fewer than 2 dimensions, fewer than 2 samples, or
      non-finite entries.
  """
  if not isinstance(batch, jax.Array):
    batch = np.asarray(batch)
  if batch.dtype == object or not (
      jnp.issubdtype(batch.dtype, jnp.number) or batch.dtype == bool
  ) or jnp.issubdtype(batch.dtype, jnp.complexfloating):
    raise TypeError(
        f"`{name}` must be a real numeric array, got dtype {batch.dtype}; "
        f"convert it with `{name}.astype(np.float32)`."
    )
  if batch.ndim < 2:
    raise ValueError(
        f"`{name}` must have shape (m, fan_in) or (m, *dims), got shape "
        f"{tuple(batch.shape)}; for a single feature use `{name}[:, None]`."
    )
  if batch.shape[0] < 2:
    raise ValueError(
        f"`{name}` has {batch.shape[0]} sample(s) but the campaign's statistics "
        "(standard deviations over the batch) need at least 2; pass more rows."
    )
  if is_concrete(batch):
    bad = int(np.size(batch) - np.count_nonzero(np.isfinite(np.asarray(batch))))
    if bad:
      raise ValueError(
          f"`{name}` has {bad} NaN or infinite entries; clean or impute them "
          "before scoring candidates."
      )
  x = jnp.asarray(batch)
  return x.reshape(x.shape[0], -1).astype(compute_dtype(x.dtype))


def check_positive_int(value: object, name: str, *, allow_none: bool = False,
                       hint: str = "") -> int | None:
  """Checks that `value` is an int >= 1 (or None, where allowed); returns it.

  Raises:
    ValueError: naming the argument, the value and, with `hint`, the fix.
  """
  if value is None and allow_none:
    return None
  if not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(
        f"`{name}` must be a positive int{' or None' if allow_none else ''}, "
        f"got {value!r}{'; ' + hint if hint else ''}.")
  return int(value)


def as_int_labels(
    labels: ArrayLike | None, num_samples: int, num_classes: int | None,
    name: str = "labels",
) -> tuple[jax.Array | None, int | None]:
  """Checks labels and returns them as int32 class ids with the class count.

  Args:
    labels: int class ids `(m,)`, one-hot `(m, C)`, or None.
    num_samples: m, the batch's number of rows.
    num_classes: C, or None to infer it (one-hot width, or max label + 1).
    name: the argument's name in error messages.

  Returns:
    `(ids, num_classes)`, or `(None, None)` when `labels` is None.

  Raises:
    TypeError: for 1-D labels that are not integers.
    ValueError: for a wrong length or rank, ids outside `[0, num_classes)`,
      one-hot rows that are not one-hot, or a `num_classes` that cannot hold
      them.
  """
  if labels is None:
    return None, None
  num_classes = check_positive_int(num_classes, "num_classes", allow_none=True)
  if not isinstance(labels, jax.Array):
    labels = np.asarray(labels)
  if labels.ndim not in (1, 2):
    raise ValueError(
        f"`{name}` must be int class ids of shape (m,) or one-hot of shape "
        f"(m, C), got shape {tuple(labels.shape)}."
    )
  if labels.shape[0] != num_samples:
    raise ValueError(
        f"`{name}` has {labels.shape[0]} rows but the batch has {num_samples} "
        "samples; pass one label per row of the batch."
    )
  if labels.ndim == 2:
    return _one_hot_to_ids(labels, num_classes, name)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(
        f"`{name}` of shape (m,) must hold integer class ids, got dtype "
        f"{labels.dtype}; convert with `{name}.astype(int)` or pass one-hot "
        "labels of shape (m, C)."
    )
  if is_concrete(labels):
    values = np.asarray(labels)
    low, high = int(values.min()), int(values.max())
    if num_classes is None:
      num_classes = high + 1
    if low < 0 or high >= num_classes:
      raise ValueError(
          f"`{name}` must lie in [0, num_classes={num_classes}), got values in "
          f"[{low}, {high}]; remap them to 0..C-1 or raise `num_classes`."
      )
  elif num_classes is None:
    raise ValueError(
        f"`{name}` are traced (inside `jax.jit`), so the number of classes "
        "cannot be read off them; pass `num_classes=` explicitly."
    )
  return jnp.asarray(labels, jnp.int32), num_classes


def _one_hot_to_ids(
    labels: ArrayLike, num_classes: int | None, name: str
) -> tuple[jax.Array, int]:
  width = labels.shape[1]
  if num_classes is not None and num_classes != width:
    raise ValueError(
        f"one-hot `{name}` have {width} columns but `num_classes` is "
        f"{num_classes}; pass num_classes={width} or leave it out."
    )
  if is_concrete(labels):
    values = np.asarray(labels)
    valid = np.all((values == 0) | (values == 1), axis=1) & (values.sum(1) == 1)
    if not valid.all():
      row = int(np.argmin(valid))
      raise ValueError(
          f"`{name}` of shape (m, C) must be one-hot, but row {row} is "
          f"{values[row].tolist()}; pass integer class ids or exact one-hot "
          "rows (soft labels are not supported)."
      )
  return jnp.argmax(jnp.asarray(labels), axis=1).astype(jnp.int32), width


def check_alpha(alpha: ArrayLike) -> jax.Array:
  """Checks that `alpha` is a scalar in [0, 1] and returns it as float32."""
  if jnp.ndim(alpha) != 0:
    raise ValueError(
        f"`alpha` must be a scalar in [0, 1], got shape {jnp.shape(alpha)}."
    )
  if is_concrete(alpha) and not 0.0 <= float(alpha) <= 1.0:
    raise ValueError(
        f"`alpha` must lie in [0, 1] (the weight of the input-information "
        f"criterion), got {float(alpha)}."
    )
  return jnp.asarray(alpha, jnp.float32)
