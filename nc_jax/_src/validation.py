"""Checks of user input.

Shapes are Python ints even under tracing, so shape errors are always raised
eagerly. Value checks (non-finite entries, label ranges, one-hot rows) run
eagerly on concrete arrays, before any heavy work: a reduction compiled on
the devices that hold a `jax.Array` (so a batch sharded over many devices or
processes is never fetched), and small arrays such as labels read on the
host. Under `jit` the values are unknown: `traced_checks` carries the checks
into the computation as `checkify` checks, which surface when the caller
wraps it with `jax.experimental.checkify.checkify`, and as a flag the
factories turn into a NaN kernel.
"""

from __future__ import annotations

from collections.abc import Mapping
import numbers
import os
import sys
import warnings

import flax
import jax
from jax.experimental import checkify
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from nc_jax._src.placement import auto_axes
from nc_jax._src.placement import compute_dtype
from nc_jax._src.placement import is_concrete

# Frames that are not the user's: nc_jax's own, and jax's and flax's between
# them (a walk traced inside the caller's jit, a flax module's call).
_INTERNAL = tuple(
    os.path.dirname(module.__file__) + os.sep
    for module in (sys.modules["nc_jax"], jax, flax))


def warn(message: str, category: type[Warning] = UserWarning) -> None:
  """`warnings.warn` pointing at the user's line: the innermost frame outside
  nc_jax, jax and flax, however deep the call that warns."""
  frame, level = sys._getframe(1), 1
  while frame.f_back is not None and frame.f_code.co_filename.startswith(
      _INTERNAL):
    frame, level = frame.f_back, level + 1
  warnings.warn(message, category, stacklevel=level + 1)


def as_batch(batch: ArrayLike, name: str = "batch") -> jax.Array:
  """Checks a batch of samples and returns it as a float array.

  Args:
    batch: `(m, fan_in)`, or `(m, *dims)` that flattens to `fan_in`.
    name: the argument's name, for error messages.

  Returns:
    The batch, in float32 (float64 if given float64 with x64), unflattened.

  Raises:
    TypeError: for a dtype that is not real numeric.
    ValueError: for fewer than 2 dimensions, fewer than 2 samples, or
      non-finite entries.
  """
  if not isinstance(batch, jax.Array):
    batch = np.asarray(batch)
  if batch.dtype == object or not (jnp.issubdtype(batch.dtype, jnp.number) or
                                   batch.dtype == bool) or jnp.issubdtype(
                                       batch.dtype, jnp.complexfloating):
    raise TypeError(
        f"`{name}` must be a real numeric array, got dtype {batch.dtype}; "
        f"convert it with `{name}.astype(np.float32)`.")
  if batch.ndim < 2:
    raise ValueError(
        f"`{name}` must have shape (m, fan_in) or (m, *dims), got shape "
        f"{tuple(batch.shape)}; for a single feature use `{name}[:, None]`.")
  if batch.shape[0] < 2:
    raise ValueError(
        f"`{name}` has {batch.shape[0]} sample(s) but the campaign's "
        "statistics (standard deviations over the batch) need at least 2; "
        "pass more rows.")
  if batch.size == 0:
    raise ValueError(
        f"`{name}` of shape {tuple(batch.shape)} has no features; pass at "
        "least one feature per sample.")
  batch = auto_axes(batch)  # before any computation on it
  check_finite(batch, name)
  x = jnp.asarray(batch)
  return x.astype(compute_dtype(x.dtype))


@jax.jit
def _all_finite(x: jax.Array) -> jax.Array:
  # `x * 0` is NaN exactly where `x` is NaN or infinite, and a sum keeps any
  # NaN: one streaming pass, several times faster than counting (a max would
  # not do: XLA's CPU max may drop NaN).
  return jnp.isfinite(jnp.sum(x * 0))


@jax.jit
def _count_nonfinite(x: jax.Array) -> jax.Array:
  return jnp.sum(~jnp.isfinite(x), dtype=jnp.int32)


def check_finite(values: ArrayLike, name: str) -> None:
  """Raises if concrete `values` hold NaN or infinite entries.

  A `jax.Array` is checked where it lies (one compiled reduction; the entries
  are counted only when it fails), so a batch sharded over devices or
  processes is never gathered. It is checked eagerly even when the call is
  inside a trace (a concrete batch closed over by a jitted function).
  Traced values are left to `traced_checks`.
  """
  if not is_concrete(values) or not jnp.issubdtype(
      jnp.result_type(values), jnp.inexact):
    return
  if isinstance(values, jax.Array):
    with jax.ensure_compile_time_eval():
      bad = 0 if bool(_all_finite(values)) else int(_count_nonfinite(values))
  else:
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
  if bad:
    raise ValueError(
        f"`{name}` has {bad} NaN or infinite entries; clean or impute them "
        "first.")


def host_values(values: ArrayLike) -> np.ndarray:
  """A small array's values on this host, gathered from other processes if
  it spans them (labels, group ids; never a batch)."""
  if isinstance(values, jax.Array) and not values.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(values, tiled=True))
  return np.asarray(values)


def traced_checks(x: jax.Array, labels: jax.Array | None,
                  num_classes: int | None) -> jax.Array | None:
  """The value checks of `as_batch` and `as_int_labels`, for traced input.

  Returns None when `x` and `labels` are concrete (they were checked
  eagerly). Otherwise adds `checkify` checks, which raise when the caller
  wraps the computation with `checkify.checkify` (and are free otherwise),
  and returns a bool scalar, False when a check fails, with which the caller
  makes its result NaN rather than plausible.
  """
  if is_concrete(x) and (labels is None or is_concrete(labels)):
    return None
  ok = jnp.all(jnp.isfinite(x))
  checkify.debug_check(
      ok, "`batch` has NaN or infinite entries; clean or "
      "impute them before scoring candidates.")
  if labels is not None:
    in_range = jnp.all((labels >= 0) & (labels < num_classes))
    checkify.debug_check(
        in_range, f"`labels` must lie in [0, num_classes={num_classes}); "
        "remap them to 0..C-1 or raise `num_classes`.")
    ok = ok & in_range
  return ok


def is_int(value: object) -> bool:
  """The one integer rule: a Python or NumPy integer, never a bool."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(value: object,
                       name: str,
                       *,
                       allow_none: bool = False,
                       hint: str = "") -> int | None:
  """Checks that `value` is an int >= 1 (or None, where allowed); returns it.

  Raises:
    ValueError: naming the argument, the value and, with `hint`, the fix.
  """
  if value is None and allow_none:
    return None
  if not is_int(value) or value < 1:
    raise ValueError(
        f"`{name}` must be a positive int{' or None' if allow_none else ''}, "
        f"got {value!r}{'; ' + hint if hint else ''}.")
  return int(value)


def as_int_labels(
    labels: ArrayLike | None,
    num_samples: int,
    num_classes: int | None,
    name: str = "labels",
) -> tuple[jax.Array | None, int | None]:
  """Checks labels and returns them as dense int32 class ids with the count.

  Concrete labels are mapped to dense ids: the classes present, in id
  order, become 0..C-1. The campaign gives every present class the same
  quota and order either way (absent classes get nothing), so this changes
  no result, and no sparse id (say 10**9) ever sizes the statistics.

  Args:
    labels: int class ids `(m,)`, one-hot `(m, C)`, or None.
    num_samples: m, the batch's number of rows.
    num_classes: C, or None to infer it (one-hot width, or max label + 1).
    name: the argument's name in error messages.

  Returns:
    `(ids, num_classes)`, or `(None, None)` when `labels` is None. For
    concrete labels, `num_classes` is the number of classes present.

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
        f"(m, C), got shape {tuple(labels.shape)}.")
  if labels.shape[0] != num_samples:
    raise ValueError(
        f"`{name}` has {labels.shape[0]} rows but the batch has {num_samples} "
        "samples; pass one label per row of the batch.")
  if labels.ndim == 2:
    ids, num_classes = _one_hot_to_ids(labels, num_classes, name)
  elif not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(
        f"`{name}` of shape (m,) must hold integer class ids, got dtype "
        f"{labels.dtype}; convert with `{name}.astype(int)` or pass one-hot "
        "labels of shape (m, C).")
  else:
    ids = labels
  if not is_concrete(ids):
    if num_classes is None:
      raise ValueError(
          f"`{name}` are traced (inside `jax.jit`), so the number of classes "
          "cannot be read off them; pass `num_classes=` explicitly.")
    if num_classes > _MAX_CLASSES:
      raise ValueError(
          f"`num_classes` is {num_classes}, more than the {_MAX_CLASSES} "
          "class ids int32 holds; remap the labels to 0..C-1 before the "
          "trace, or pass them concrete (they are then mapped to dense ids).")
    return jnp.asarray(ids, jnp.int32), num_classes
  return _dense(ids, num_classes, name, "num_classes")


def _dense(ids: ArrayLike, count: int | None, name: str,
           count_name: str) -> tuple[jax.Array, int]:
  """Concrete ids checked against `[0, count)` and mapped to dense int32 ids.

  The ids present, in id order, become 0..P-1; returns them with P.
  `count=None` takes `max(ids) + 1`.
  """
  values = host_values(ids)
  low, high = int(values.min()), int(values.max())
  if count is None:
    count = high + 1
  if low < 0 or high >= count:
    raise ValueError(
        f"`{name}` must lie in [0, {count_name}={count}), got values in "
        f"[{low}, {high}]; pass ids from 0 or raise `{count_name}`.")
  present = np.unique(values)
  if len(present) == count:
    return jnp.asarray(ids, jnp.int32), count
  return _dense_ids(ids, present), len(present)


def as_group_ids(groups: ArrayLike, num_candidates: int,
                 num_groups: int | None) -> tuple[jax.Array, int]:
  """Checks candidates' group ids; returns dense int32 ids and their count.

  Concrete ids are mapped to dense ids as in `as_int_labels` (the election
  gives an absent group nothing, so no pick changes).
  """
  if not isinstance(groups, jax.Array):
    groups = np.asarray(groups)
  if groups.shape != (num_candidates,) or not jnp.issubdtype(
      groups.dtype, jnp.integer):
    raise ValueError(
        f"`groups` must be int group ids of shape (N,) = ({num_candidates},), "
        f"got dtype {groups.dtype} and shape {groups.shape}.")
  num_groups = check_positive_int(num_groups, "num_groups", allow_none=True)
  if not is_concrete(groups):
    if num_groups is None:
      raise ValueError(
          "`groups` are traced, so their count cannot be read off them; pass "
          "`num_groups=` explicitly.")
    return jnp.asarray(groups, jnp.int32), num_groups
  if not num_candidates:
    return jnp.asarray(groups, jnp.int32), num_groups or 1
  return _dense(groups, num_groups, "groups", "num_groups")


# Class and group ids must fit the int32 the compiled statistics use.
_MAX_CLASSES = 2**31 - 1


@jax.jit
def _searchsorted(present: jax.Array, ids: jax.Array) -> jax.Array:
  return jnp.searchsorted(present, ids).astype(jnp.int32)


def _dense_ids(ids: ArrayLike, present: np.ndarray) -> jax.Array:
  """`ids` mapped to their rank among the sorted `present` ids, as int32.

  A `jax.Array` is mapped where it lies, keeping its sharding.
  """
  if isinstance(ids, jax.Array):
    return _searchsorted(jnp.asarray(present, ids.dtype), ids)
  return jnp.asarray(np.searchsorted(present, ids), jnp.int32)


def _one_hot_to_ids(labels: ArrayLike, num_classes: int | None,
                    name: str) -> tuple[jax.Array, int]:
  width = labels.shape[1]
  if num_classes is not None and num_classes != width:
    raise ValueError(
        f"one-hot `{name}` have {width} columns but `num_classes` is "
        f"{num_classes}; pass num_classes={width} or leave it out.")
  if is_concrete(labels):
    values = host_values(labels)
    valid = np.all((values == 0) | (values == 1), axis=1) & (values.sum(1) == 1)
    if not valid.all():
      row = int(np.argmin(valid))
      raise ValueError(
          f"`{name}` of shape (m, C) must be one-hot, but row {row} is "
          f"{values[row].tolist()}; pass integer class ids or exact one-hot "
          "rows (soft labels are not supported).")
  return jnp.argmax(jnp.asarray(labels), axis=1).astype(jnp.int32), width


def check_alpha(alpha: ArrayLike) -> jax.Array:
  """Checks that `alpha` is a scalar in [0, 1] and returns it as float32."""
  if jnp.ndim(alpha) != 0:
    raise ValueError(
        f"`alpha` must be a scalar in [0, 1], got shape {jnp.shape(alpha)}.")
  if is_concrete(alpha) and not 0.0 <= float(alpha) <= 1.0:
    raise ValueError(
        f"`alpha` must lie in [0, 1] (the weight of the input-information "
        f"criterion), got {float(alpha)}.")
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
      chunk_size,
      "chunk_size",
      allow_none=True,
      hint="the rows scored at a time, or None to choose by device")


def check_k(k: object, num_candidates: int | None) -> int:
  """Checks the number of neurons to elect against the candidates drawn."""
  if not is_int(k) or k < 0:
    raise ValueError(f"`k` must be a non-negative int, got {k!r}.")
  if num_candidates is not None and k > num_candidates:
    raise ValueError(
        f"cannot elect k={k} neurons from {num_candidates} candidates; draw at "
        f"least {k} candidates (num_candidates >= fan_out).")
  return int(k)


def check_kernel_shape(shape: object) -> tuple[int, ...]:
  """Checks a kernel shape, `(fan_in, fan_out)` or `(*window, in, features)`:
  at least two positive ints; returns it as a tuple of ints."""
  try:
    shape = tuple(shape)
  except TypeError:
    shape = (shape,)
  if len(shape) < 2 or not all(is_int(d) for d in shape):
    raise ValueError(
        f"`shape` must be a kernel shape, `(fan_in, fan_out)` for a dense "
        f"layer or `(*window, in_features, features)` for a convolution, got "
        f"{shape}.")
  if min(shape) < 1:
    raise ValueError(
        f"`shape` must have fan_in >= 1 and fan_out >= 1 (every size at "
        f"least 1), got {shape}.")
  return tuple(int(d) for d in shape)


def check_num_candidates(num_candidates: object, fan_out: int,
                         per_neuron: int) -> int:
  """Checks N against the fan_out it elects (`per_neuron`: the default's
  multiple, for the message)."""
  if not is_int(num_candidates) or num_candidates < fan_out:
    raise ValueError(
        f"`num_candidates` must be an int >= fan_out={fan_out} (the campaign "
        f"elects fan_out of them), got {num_candidates!r}; the default is "
        f"{per_neuron} * fan_out.")
  return int(num_candidates)


def check_init_call(shape: object, num_candidates: int | None, dtype: object,
                    per_neuron: int) -> tuple[tuple[int, ...], int, jnp.dtype]:
  """Checks an initializer call: the kernel shape, N (default `per_neuron *
  fan_out`) and a floating dtype."""
  shape = check_kernel_shape(shape)
  n = per_neuron * shape[-1] if num_candidates is None else num_candidates
  n = check_num_candidates(n, shape[-1], per_neuron)
  return shape, n, check_float_dtype(dtype)


def check_float_dtype(dtype: object) -> jnp.dtype:
  """Checks a kernel's dtype: a floating dtype; returns it as a dtype."""
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"`dtype` must be a floating dtype, got {dtype}.")
  return dtype


def check_callables(**functions: object) -> None:
  """Checks that each keyword argument is callable, naming the first that is
  not."""
  for name, function in functions.items():
    if not callable(function):
      raise TypeError(
          f"`{name}` must be a callable, got {type(function).__name__}; pass "
          "e.g. `jax.nn.initializers.he_normal()` for an initializer or "
          "`jax.nn.relu` for an activation.")


def check_model_batch(
    x: ArrayLike, y: ArrayLike | None,
    num_classes: int | None) -> tuple[jax.Array, jax.Array | None, int | None]:
  """Checks a whole model's batch `x` and labels `y`; returns ids and C.

  `x` and the ids come back on Auto mesh axes (`placement.auto_axes`).
  """
  if not hasattr(x, "shape"):
    given = x
    try:  # a mapping or tuple of inputs is never stacked into one array
      x = None if isinstance(given, Mapping | tuple) else jnp.asarray(given)
    except (TypeError, ValueError):
      x = None
    if x is None:
      raise TypeError(
          f"`x` must be one array, the model's first argument, got "
          f"{type(given).__name__}; pass the model's other inputs by keyword "
          "through `model_kwargs`.")
  if jnp.ndim(x) < 1 or x.shape[0] < 2:
    raise ValueError(
        f"`x` must be a batch of at least 2 examples along axis 0, got shape "
        f"{jnp.shape(x)}.")
  labels, num_classes = as_int_labels(y, x.shape[0], num_classes, name="y")
  x = auto_axes(jnp.asarray(x))
  check_finite(x, "x")
  return x, auto_axes(labels), num_classes


def as_key(key: jax.Array | int) -> jax.Array:
  """A PRNG key from a key or an int seed."""
  if isinstance(key, numbers.Integral):
    return jax.random.key(int(key))
  if not isinstance(key, jax.Array):
    raise TypeError(
        f"`key` must be a PRNG key or an int seed, got {type(key).__name__}.")
  return key
