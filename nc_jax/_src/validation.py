"""Checks of user input, run eagerly before any heavy work.

Shapes are Python ints even under tracing, so shape errors are always raised.
Value checks (non-finite entries, label ranges, one-hot rows) need concrete
values and are skipped for traced arrays, never branched on under `jit`.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from nc_jax._src.placement import compute_dtype
from nc_jax._src.placement import is_concrete


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


def check_bias(bias: ArrayLike) -> jax.Array:
  """Checks that `bias` is a scalar and returns it as an array."""
  if jnp.ndim(bias) != 0:
    raise ValueError(
        "`bias` must be a scalar (the value every neuron's bias starts at), "
        f"got shape {jnp.shape(bias)}.")
  return jnp.asarray(bias)


def check_chunk_size(chunk_size: object) -> int | None:
  """Checks `chunk_size`: a positive int, or None to choose by device."""
  return check_positive_int(
      chunk_size, "chunk_size", allow_none=True,
      hint="the rows scored at a time, or None to choose by device")


def check_k(k: object, num_candidates: int | None) -> int:
  """Checks the number of neurons to elect against the candidates drawn."""
  if not isinstance(k, numbers.Integral) or k < 0:
    raise ValueError(f"`k` must be a non-negative int, got {k!r}.")
  if num_candidates is not None and k > num_candidates:
    raise ValueError(
        f"cannot elect k={k} neurons from {num_candidates} candidates; draw at "
        f"least {k} candidates (num_candidates >= fan_out).")
  return int(k)


def check_callables(**functions: object) -> None:
  """Checks that each keyword argument is callable, naming the first that is not."""
  for name, function in functions.items():
    if not callable(function):
      raise TypeError(
          f"`{name}` must be a callable, got {type(function).__name__}; pass "
          "e.g. `jax.nn.initializers.he_normal()` for an initializer or "
          "`jax.nn.relu` for an activation.")


def check_model_batch(x: ArrayLike, y: ArrayLike | None,
                      num_classes: int | None
                      ) -> tuple[jax.Array, jax.Array | None, int | None]:
  """Checks a whole model's batch `x` and labels `y`; returns ids and C."""
  if not hasattr(x, "shape"):
    x = jnp.asarray(x)
  if jnp.ndim(x) < 1 or x.shape[0] < 2:
    raise ValueError(
        f"`x` must be a batch of at least 2 examples along axis 0, got shape "
        f"{jnp.shape(x)}.")
  labels, num_classes = as_int_labels(y, x.shape[0], num_classes, name="y")
  return jnp.asarray(x), labels, num_classes


def as_key(key: jax.Array | int) -> jax.Array:
  """A PRNG key from a key or an int seed."""
  if isinstance(key, numbers.Integral):
    return jax.random.key(int(key))
  if not isinstance(key, jax.Array):
    raise TypeError(
        f"`key` must be a PRNG key or an int seed, got {type(key).__name__}.")
  return key
