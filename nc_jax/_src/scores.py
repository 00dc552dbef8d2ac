"""Steps 1-3 of the campaign: responses, the two criteria, the class groups.

All statistics are reduced to per-class sums of the candidates' shifted
responses (count, sum, sum of squares), which add up over row chunks and
devices, then to per-class moments; both criteria (docs/algorithm.md,
#step-2-scores) and the class groups of #step-3-class-quotas are read off
those moments. `campaign_scores` is the one entry point for a layer.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
from jax.typing import ArrayLike

from nc_jax._src import placement
from nc_jax._src import validation
from nc_jax._src.conv import ConvSpec
from nc_jax._src.types import Activation
from nc_jax._src.types import CriterionDroppedWarning

# A norm at most this fraction of the responses' scale counts as zero
# (docs/algorithm.md#tolerances): rounding leaves ~1e-7 relative residue where
# the exact value is 0.
_ZERO_RTOL = 1e-5

# Deviations from the shift are summed as they are while their peak lies in
# [2**-_SCALE_BITS, 2**_SCALE_BITS); a candidate's deviations outside it are
# summed scaled by a power of two (exact) to a peak at its edge, so that no
# square overflows or underflows float32: squares stay under 2**80, and sums
# of them under float32's 2**128 for any number of rows below 2**47.
_SCALE_BITS = 40
# The exponent of sums of zeros: below any other, so that merging them
# (`add_sums`) takes the other side's; 0 once all sums are merged.
_NO_SCALE = -1000


class ClassMoments(NamedTuple):
  """Per-class moments of the responses `z` (shape `(m, N)`) of N candidates.

  Means are stored relative to `shift` (the batch's first row), which keeps
  constant columns exactly constant and offset data well conditioned; and
  candidate j's in units of `2**exponent[j]` (`_SCALE_BITS`).
  """

  count: jax.Array  # (C,) samples per class
  mean: jax.Array  # (C, N) class means of z - shift, in units 2**exponent
  # (C, N) sums of squared deviations from the class mean, units 4**exponent
  m2: jax.Array
  shift: jax.Array  # (N,) reference response subtracted before summing
  # (N,) int32, 0 unless a candidate's responses are huge or tiny
  exponent: jax.Array


class ClassSums(NamedTuple):
  """Per-class sums of the shifted responses `d = z - shift`, scaled.

  Sums add up over row chunks and over devices (`add_sums`), so one pass
  over the batch and one cross-device reduction give the statistics of all
  of it. Candidate j's sums are of `d * 2**-exponent[j]`.
  """

  count: jax.Array  # (C,) samples per class
  first: jax.Array  # (C, N) sums of d * 2**-exponent
  second: jax.Array  # (C, N) sums of (d * 2**-exponent) ** 2
  exponent: jax.Array  # (N,) int32


class Dropped(NamedTuple):
  """Which criteria dropped out of the score, as scalars.

  docs/algorithm.md#defects-of-the-published-code-and-our-fixes.
  """

  input_info: jax.Array  # every candidate's response is constant
  label_info: jax.Array  # labels given, but fewer than two classes present
  overflowed: jax.Array  # int32, candidates whose responses are not finite


def _pow2(exponent: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """`2.0 ** exponent`, exactly, in `dtype`."""
  return jnp.ldexp(jnp.ones(exponent.shape, dtype), exponent)


def _scale_exponent(d: jax.Array) -> jax.Array:
  """Per column, the power of two to divide `d` by: 0 for a peak inside
  `[2**-_SCALE_BITS, 2**_SCALE_BITS)`, `_NO_SCALE` for an all-zero column."""
  peak = jnp.max(jnp.abs(d), axis=0)
  _, exponent = jnp.frexp(peak)  # peak = f * 2**exponent, f in [0.5, 1)
  exponent = (
      jnp.maximum(exponent - _SCALE_BITS, 0) +
      jnp.minimum(exponent + _SCALE_BITS, 0))
  return jnp.where(peak > 0, exponent, _NO_SCALE).astype(jnp.int32)


def _settled(exponent: jax.Array) -> jax.Array:
  """The exponent to scale by: `_NO_SCALE` (sums of zeros) scales by 1."""
  return jnp.where(exponent == _NO_SCALE, 0, exponent)


def rescale_sums(sums: ClassSums, exponent: jax.Array) -> ClassSums:
  """`sums` expressed with the larger `exponent` (exact powers of two)."""
  down = _pow2(sums.exponent - exponent, sums.first.dtype)[None, :]
  return ClassSums(sums.count, sums.first * down, sums.second * (down * down),
                   exponent)


def add_sums(a: ClassSums, b: ClassSums) -> ClassSums:
  """The sums of two disjoint sets of rows."""
  exponent = jnp.maximum(a.exponent, b.exponent)
  a, b = rescale_sums(a, exponent), rescale_sums(b, exponent)
  return ClassSums(a.count + b.count, a.first + b.first, a.second + b.second,
                   exponent)


def class_sums(z: jax.Array,
               labels: jax.Array | None,
               num_classes: int,
               shift: jax.Array,
               scaled: bool = True) -> ClassSums:
  """Per-class count, sum and sum of squares of each column of `z - shift`.

  One pass of one-hot products, so nothing loops over samples or classes.
  With `labels=None` there is one class holding every sample. Responses of
  shape `(rows, *positions, N)` (a convolution's) count every position of a
  row as one sample with the row's label. With `scaled=False` the deviations
  are summed as they are (exponent 0): no pass for their peaks, and the same
  sums wherever every peak lies in the unscaled range (`unscaled_sums_exact`).
  """
  n = z.shape[-1]
  d = (z - shift.reshape((1,) * (z.ndim - 1) + (n,))).reshape(z.shape[0], -1, n)
  if scaled:
    exponent = _scale_exponent(d.reshape(-1, n))
    d = d * _pow2(-_settled(exponent), d.dtype)[None, None, :]
  else:
    exponent = jnp.zeros(n, jnp.int32)
  if labels is None:
    onehot = jnp.ones((z.shape[0], 1), z.dtype)
  else:
    onehot = jax.nn.one_hot(labels, num_classes, dtype=z.dtype)
  if d.shape[1] == 1:  # one position: a dense layer's responses
    first, second = d[:, 0], (d * d)[:, 0]
  else:
    first, second = d.sum(axis=1), (d * d).sum(axis=1)
  return ClassSums(
      onehot.sum(axis=0) * d.shape[1], placement.exact_matmul(onehot.T, first),
      placement.exact_matmul(onehot.T, second), exponent)


def unscaled_sums_exact(sums: ClassSums) -> jax.Array:
  """Whether sums taken with `scaled=False` equal the scaled ones.

  They do when every candidate's peak |d| over the batch is 0 or lies in
  `[2**-_SCALE_BITS, 2**_SCALE_BITS)`, where the scaled sums use exponent 0
  too. The sums bound the peak: `S2 / m <= peak**2 <= S2` for the sum of
  squares S2 over m samples. A column with S2 = 0 and every class sum 0 is
  taken as all zero (its deviations, if any, are below 2**-63 and cancel in
  every class). Anything else, overflowed or non-finite sums included, is
  not exact: the caller then sums again, scaled.
  """
  second = sums.second.sum(axis=0)
  bound = 2.0**(2 * _SCALE_BITS)
  in_range = (second < bound) & (second >= sums.count.sum() / bound)
  zero = (second == 0) & jnp.all(sums.first == 0, axis=0)
  finite = jnp.isfinite(second) & jnp.all(jnp.isfinite(sums.first), axis=0)
  return jnp.all(finite & (in_range | zero))


def moments_from_sums(sums: ClassSums, shift: jax.Array) -> ClassMoments:
  """Class means and squared deviations from shifted sums.

  The shift is a response of the batch itself (its first row), so the shifted
  values are of the order of the data's spread, not of its offset, and the
  sum of squares does not cancel catastrophically (tests/test_streaming.py:
  raw pixels plus 1e4 match the float64 reference).
  """
  safe = jnp.maximum(sums.count, 1)[:, None]
  mean = sums.first / safe
  m2 = jnp.maximum(sums.second - sums.first * mean, 0.0)
  return ClassMoments(sums.count, mean, m2, shift, _settled(sums.exponent))


def _response_sums(
    x: jax.Array,
    labels: jax.Array | None,
    respond: Callable[[jax.Array], jax.Array],
    num_classes: int,
    chunk_size: int | None,
    shift: jax.Array,
    scaled: bool,
) -> ClassSums:
  """`class_sums` of `respond(x)`, a `lax.scan` over row chunks if asked.

  Chunk i covers rows `[i * c, i * c + c)`; the last one is moved back to end
  at row m and its rows already counted get the out-of-range class id C (an
  all-zero one-hot row), so every chunk has the same shape and no row is
  counted twice or copied.
  """
  m = x.shape[0]
  if chunk_size is None or chunk_size >= m:
    return class_sums(respond(x), labels, num_classes, shift, scaled)
  classes = 1 if labels is None else num_classes
  labels = jnp.zeros(m, jnp.int32) if labels is None else labels

  def step(acc: ClassSums, start: jax.Array) -> tuple[ClassSums, None]:
    begin = jnp.minimum(start, m - chunk_size)
    rows = jax.lax.dynamic_slice_in_dim(x, begin, chunk_size)
    fresh = begin + jnp.arange(chunk_size) >= start
    chunk_labels = jnp.where(
        fresh, jax.lax.dynamic_slice_in_dim(labels, begin, chunk_size), classes)
    sums = class_sums(respond(rows), chunk_labels, classes, shift, scaled)
    return add_sums(acc, sums), None

  n = shift.shape[0]
  zero = ClassSums(
      jnp.zeros(classes, x.dtype), jnp.zeros((classes, n), x.dtype),
      jnp.zeros((classes, n), x.dtype), jnp.full(n, _NO_SCALE, jnp.int32))
  starts = jnp.arange(0, m, chunk_size)
  return jax.lax.scan(step, zero, starts)[0]


def response_moments(
    x: jax.Array,
    labels: jax.Array | None,
    respond: Callable[[jax.Array], jax.Array],
    num_classes: int | None,
    chunk_size: int | None = None,
    row_sharding: placement.RowSharding | None = None,
    first_row: jax.Array | None = None,
) -> ClassMoments:
  """Class moments of `respond(x)`: one pass, streamed and sharded if asked.

  With `chunk_size`, the responses of only `chunk_size` rows exist at a time:
  a `lax.scan` over row chunks adds up their `ClassSums`, so memory is
  O(chunk_size * N), not O(m * N). With `row_sharding = (mesh, axes)` (the
  batch sharded along m over those mesh axes), every device sums its own
  rows and one `psum` of the packed sums combines them: the batch is never
  gathered. All rows share the responses to `first_row` (default `x[:1]`;
  pass it replicated over the mesh so that no other collective is needed)
  as their shift. The deviations are summed as they are; only when those
  sums show a candidate's responses too large or too small for float32
  squares (`unscaled_sums_exact`) does a second pass sum them scaled by
  powers of two.
  """
  # The response at the first row's first position.
  shift = respond(x[:1] if first_row is None else first_row)
  shift = shift.reshape(-1, shift.shape[-1])[0]

  def total(scaled: bool) -> ClassSums:
    sums = functools.partial(
        _response_sums,
        respond=respond,
        num_classes=num_classes,
        chunk_size=chunk_size,
        shift=shift,
        scaled=scaled)
    if row_sharding is None:
      return sums(x, labels)
    mesh, axes = row_sharding

    def local(x, labels):
      mine = sums(x, labels)
      if scaled:  # every device's sums in the largest exponent
        mine = rescale_sums(mine, jax.lax.pmax(mine.exponent, axes))
      flat, unravel = jax.flatten_util.ravel_pytree(mine[:3])
      return ClassSums(*unravel(jax.lax.psum(flat, axes)), mine.exponent)

    spec = jax.sharding.PartitionSpec(axes)
    # check_vma=False: the chunk scan starts from zeros that are not marked
    # as varying per device; the psum makes the result replicated.
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(spec, spec),
        out_specs=jax.sharding.PartitionSpec(),
        check_vma=False)(x, labels)

  fast = total(scaled=False)
  sums = jax.lax.cond(
      unscaled_sums_exact(fast), lambda: fast, lambda: total(scaled=True))
  return moments_from_sums(sums, shift)


def _unit(v: jax.Array, atol: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """`v / ||v||`, and 0 when `||v|| <= atol`; also returns that zero flag.

  The norm is taken of `v` scaled by a power of two to a peak in [0.5, 1),
  so no square overflows or underflows; the quotient is unchanged.
  """
  _, exponent = jnp.frexp(jnp.max(jnp.abs(v)))
  down = _pow2(-exponent, v.dtype)
  v = v * down
  norm = jnp.linalg.norm(v)
  is_zero = norm <= atol * down
  return jnp.where(is_zero, 0.0, v / jnp.where(is_zero, 1.0, norm)), is_zero


def scores_from_moments(moments: ClassMoments, alpha: jax.Array,
                        has_labels: bool) -> tuple[jax.Array, Dropped]:
  """`alpha * div + (1 - alpha) * acc` per candidate, NaN-free.

  docs/algorithm.md#step-2-scores. Each criterion of a candidate is zero
  where it is at most `_ZERO_RTOL` of that candidate's own scale (the RMS of
  its responses), and a criterion whose norm over the candidates is zero is
  zero. A candidate whose responses are not finite (they overflow float32)
  has zero criteria and is counted in `Dropped.overflowed`.
  """
  count, mean, m2, shift, exponent = moments
  m = count.sum()
  weights = count[:, None]
  # Total moments by the parallel-variance merge of the class moments.
  total_mean = (weights * mean).sum(axis=0) / m
  total_m2 = m2.sum(axis=0) + (weights *
                               (mean - total_mean[None, :])**2).sum(axis=0)
  up = _pow2(exponent, mean.dtype)
  # Each candidate's own scale, in its units: the RMS of its responses.
  rms = jnp.sqrt((total_mean + shift / up)**2 + total_m2 / m)
  measured = jnp.isfinite(rms)

  def criterion(v):  # zero at the candidate's resolution; in true units
    return jnp.where(measured & (v > _ZERO_RTOL * rms), v * up, 0.0)

  div, input_dropped = _unit(criterion(jnp.sqrt(total_m2 / (m - 1))))
  overflowed = jnp.sum(~measured, dtype=jnp.int32)
  if not has_labels:
    return div, Dropped(input_dropped, jnp.asarray(False), overflowed)

  present = (count > 0)[:, None]
  num_present = present.sum()
  class_mean = jnp.where(present, mean, 0.0).sum(axis=0) / jnp.maximum(
      num_present, 1)
  between = jnp.sqrt(
      jnp.where(present, (mean - class_mean[None, :])**2, 0.0).sum(axis=0) /
      jnp.maximum(num_present - 1, 1))
  # A single-sample class has m2 == 0 exactly, so its std is 0 (Step 2).
  class_std = jnp.sqrt(m2 / jnp.maximum(count - 1, 1)[:, None])
  within = jnp.where(present, class_std, 0.0).sum(axis=0) / jnp.maximum(
      num_present, 1)
  between, _ = _unit(criterion(between))
  within, _ = _unit(criterion(within))
  acc, _ = _unit(between - within, _ZERO_RTOL)
  separable = num_present >= 2
  score = jnp.where(separable, alpha * div + (1 - alpha) * acc, div)
  return score, Dropped(input_dropped, ~separable, overflowed)


def class_groups(moments: ClassMoments) -> jax.Array:
  """Each candidate's class, the one with its highest mean response.

  docs/algorithm.md#step-3-class-quotas.

  Only classes present in the batch compete; ties go to the lowest class id.
  """
  present = (moments.count > 0)[:, None]
  return jnp.argmax(
      jnp.where(present, moments.mean, -jnp.inf), axis=0).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class ScoringOptions:
  """What scores a layer's candidates besides the data, as one static record.

  Hashable, so it is one static argument of the compiled scoring.

  Attributes:
    activation: the activation that follows the layer.
    class_balanced: one group per class (Step 3), or a single group.
    num_classes: C, or None without labels.
    chunk_size: rows scored at a time, or None for the whole batch at once.
    row_sharding: `(mesh, axes)` of a batch split along its rows, or None.
    conv: the convolution of a conv layer, or None for a dense one.
  """
  activation: Activation
  class_balanced: bool
  num_classes: int | None
  chunk_size: int | None
  row_sharding: placement.RowSharding | None
  conv: ConvSpec | None = None

  @property
  def num_groups(self) -> int:
    """G of Step 3: one group per class when balancing by class, else one."""
    return (self.num_classes
            if self.class_balanced and self.num_classes is not None else 1)


def campaign_scores(
    x: jax.Array,
    first_row: jax.Array | None,
    labels: jax.Array | None,
    candidates: jax.Array,
    alpha: jax.Array,
    bias: jax.Array,
    options: ScoringOptions,
) -> tuple[jax.Array, jax.Array, Dropped]:
  """Steps 1-3 for one layer: each candidate's score and group, and which
  criteria dropped out.

  Args:
    x: the layer's validated batch, `(m, fan_in)`, or `(m, *spatial, in)`
      for a convolution.
    first_row: `x[:1]` as `placement.placement` places it, or None.
    labels: int32 class ids `(m,)`, or None.
    candidates: `(fan_in, N)`, or `(*window, in, N)` for a convolution,
      cast to the batch's dtype before scoring.
    alpha: the weight of the input-information criterion.
    bias: the scalar bias of the layer.
    options: the static rest.

  Returns:
    `(scores, groups, dropped)`: `(N,)` scores, `(N,)` int32 group ids in
    `[0, options.num_groups)`, and the `Dropped` flags.
  """
  w = candidates.astype(x.dtype)
  if options.conv is None:  # Step 1
    respond = lambda rows: options.activation(rows @ w + bias.astype(x.dtype))
  else:
    respond = lambda rows: options.activation(
        options.conv.apply(rows, w) + bias.astype(x.dtype))
  moments = response_moments(x, labels, respond, options.num_classes,
                             options.chunk_size, options.row_sharding,
                             first_row)
  scores, dropped = scores_from_moments(moments, alpha, labels is not None)
  if options.num_groups > 1:
    groups = class_groups(moments)
  else:
    groups = jnp.zeros(w.shape[-1], jnp.int32)
  return scores, groups, dropped


def warn_if_dropped(dropped: Dropped, where: str = "") -> None:
  """Warns, at the user's call, about criteria that dropped out (`where`: the
  layer, for the message); silent under tracing."""
  if not all(placement.is_concrete(flag) for flag in dropped):
    return
  if bool(dropped.input_info):
    validation.warn(
        f"{where}The input-information criterion (MI(X;Z) proxy) dropped "
        "out: every candidate's response is constant on the batch (e.g. all "
        "ReLUs are dead). Scores carry no input information; check the batch "
        "and the layer's activation.", CriterionDroppedWarning)
  overflowed = int(dropped.overflowed)
  if overflowed:
    validation.warn(
        f"{where}{overflowed} candidate(s) respond to the batch with values "
        "beyond float32's range; they score 0 on both criteria. Scale the "
        "batch (or the layer's inputs) to a moderate range.",
        CriterionDroppedWarning)
  if bool(dropped.label_info):
    validation.warn(
        f"{where}The label-information criterion (MI(Z;Y) proxy) dropped "
        "out: fewer than two classes are present in the batch. The score is "
        "the input-information criterion alone; pass a batch with several "
        "classes to use labels.", CriterionDroppedWarning)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _neuron_scores(z, labels, alpha, num_classes):
  moments = response_moments(z, labels, lambda z: z, num_classes)
  return scores_from_moments(moments, alpha, labels is not None)


@placement.eager_on_auto_axes
def neuron_scores(
    z: ArrayLike,
    labels: ArrayLike | None = None,
    *,
    alpha: float = 0.5,
    num_classes: int | None = None,
) -> jax.Array:
  """Scores candidate neurons by the two information-bottleneck criteria.

  Step 2 of the Neuron Campaign: for the responses `z = act(X @ W + b)` of N
  candidates to a batch of m samples, the score of candidate j is
  `alpha * div_j + (1 - alpha) * acc_j`, where `div` (the MI(X;Z) proxy) is
  the standard deviation of its responses and `acc` (the MI(Z;Y) proxy) is
  the spread of its class means minus its mean within-class spread, each
  criterion normalized over the candidates. With no labels, or fewer than two
  classes in the batch, the score is `div` alone. Never NaN: a criterion
  whose norm is zero is zero.

  Args:
    z: responses of the candidates, shape `(m, N)`, `m >= 2`.
    labels: int class ids `(m,)`, one-hot `(m, C)`, or None.
    alpha: weight of the input-information criterion, in [0, 1].
    num_classes: C; inferred from one-hot width or `max(labels) + 1`.
      Required when `labels` are traced.

  Returns:
    Scores of shape `(N,)`, float32 (float64 for float64 input with x64).

  Raises:
    ValueError, TypeError: for malformed `z`, `labels` or `alpha`; values
      are checked eagerly when concrete. Under `jax.jit`, non-finite `z` or
      labels outside `[0, C)` are `checkify` checks (raised when the caller
      wraps with `jax.experimental.checkify.checkify`) and make the scores
      NaN.

  Examples:
    >>> import jax.numpy as jnp
    >>> import nc_jax
    >>> z = jnp.array([[0., 1., 2.], [0., 3., 2.], [0., 1., 4.], [0., 3., 4.]])
    >>> labels = jnp.array([0, 0, 1, 1])
    >>> # column 2 separates the classes
    >>> nc_jax.neuron_scores(z, labels, alpha=0.0).round(3)
    Array([ 0.   , -0.707,  0.707], dtype=float32)

  References:
    Mao et al., "Neuron Campaign for Initialization Guided by Information
    Bottleneck Theory", CIKM 2021, https://arxiv.org/abs/2108.06530.
  """
  if jnp.ndim(z) != 2:
    raise ValueError(
        f"`z` must have shape (m, N) (responses of N candidates to m samples), "
        f"got shape {jnp.shape(z)}.")
  z = validation.as_batch(z, "z")
  labels, num_classes = validation.as_int_labels(labels, z.shape[0],
                                                 num_classes)
  valid = validation.traced_checks(z, labels, num_classes)
  scores, dropped = placement.on_auto_axes(_neuron_scores,
                                           z)(z,
                                              labels,
                                              validation.check_alpha(alpha),
                                              num_classes=num_classes)
  warn_if_dropped(dropped)
  return scores if valid is None else jnp.where(valid, scores, jnp.nan)
