"""The initializer factories: draw candidates, score them, elect, gather.

`checked_batch` checks a batch (`validation`) and places it (`placement`)
once; `score_and_elect` draws, scores (`scores.campaign_scores`) and elects
(`election.elect_compiled`). `campaign_init` and the whole-model walk go
through both.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jax.typing import DTypeLike

from nc_jax._src import conv
from nc_jax._src import election
from nc_jax._src import placement
from nc_jax._src import scores as scores_lib
from nc_jax._src import validation
from nc_jax._src.types import Activation
from nc_jax._src.types import Initializer

# Published experiments draw five candidates per neuron
# (docs/algorithm.md#notation).
CANDIDATES_PER_NEURON = 5


def draw_candidates(
    key: jax.Array,
    base_init: Initializer,
    shape: tuple[int, ...],
    num_candidates: int,
    dtype: DTypeLike = jnp.float32,
) -> jax.Array:
  """Draws candidate neurons distributed like the layer's kernel columns.

  The candidates are `ceil(num_candidates / fan_out)` independent draws
  `base_init(key_i, shape, dtype)`, with `key_i` from
  `jax.random.split(key, ceil(num_candidates / fan_out))`, side by side; the
  first `num_candidates` columns are kept. Every column thus has the
  distribution the base initializer gives a column of this very layer (the
  published code's single `(fan_in, N)` draw reads its fan-in wrongly).

  Args:
    key: a PRNG key.
    base_init: any `jax.nn.initializers` callable, e.g. `he_normal()`.
    shape: the layer's kernel shape, `(fan_in, fan_out)`, or flax's conv
      layout `(*window, in_features, features)`.
    num_candidates: N, the number of candidates to draw.
    dtype: the kernel's dtype.

  Returns:
    Candidates along the last axis, shape `(*shape[:-1], num_candidates)`, in
    `dtype`.

  Examples:
    >>> import jax
    >>> import nc_jax
    >>> w = nc_jax.draw_candidates(
    ...     jax.random.key(0), jax.nn.initializers.he_normal(), (784, 100), 500)
    >>> w.shape, w.dtype
    ((784, 500), dtype('float32'))
  """
  shape = validation.check_kernel_shape(shape)
  fan_out = shape[-1]
  validation.check_num_candidates(num_candidates, fan_out,
                                  CANDIDATES_PER_NEURON)
  draws = -(-num_candidates // fan_out)
  keys = jax.random.split(key, draws)
  w = jax.vmap(lambda k: base_init(k, shape, dtype))(keys)
  return jnp.moveaxis(w, 0, -2).reshape(*shape[:-1],
                                        draws * fan_out)[..., :num_candidates]


# The platforms `default_chunk_size` knows; jax names GPUs "gpu".
_PLATFORMS = ("cpu", "gpu", "tpu")


def default_chunk_size(m: int,
                       num_candidates: int,
                       *,
                       positions: int = 1,
                       platform: str | None = None) -> int | None:
  """The rows a campaign scores at a time when `chunk_size=None`.

  On CPU, chunks of at most 2**20 responses (rows x positions x N) and
  1,024 rows, which stay in cache; on GPU/TPU the whole batch unless its
  responses exceed 2**27 values. Chunks are then evened out over the batch,
  so that the last one, moved back to end at row m, repeats few rows. The
  working memory of the scoring is O(chunk x positions x N).

  Args:
    m: rows (examples, or images for a convolution) in the batch.
    num_candidates: N, the candidates scored (`campaign_init`'s default is
      5 * fan_out).
    positions: samples per row: a convolution's output positions per image,
      1 for a dense layer.
    platform: where the batch lives, "cpu", "gpu" or "tpu" (any case); None:
      `jax.default_backend()`.

  Returns:
    The chunk size `campaign_init` and `campaign_select` use, or None for
    the whole batch at once.

  Raises:
    ValueError: for an argument that is not a positive int, or an unknown
      platform.
    TypeError: for a `platform` that is not a string.

  Examples:
    >>> import nc_jax
    >>> nc_jax.default_chunk_size(60_000, 500, platform="cpu")  # 59 chunks
    1017
    >>> nc_jax.default_chunk_size(5_000, 160, positions=28 * 28,
    ...                           platform="cpu")  # 8 images of 28x28
    8
    >>> print(nc_jax.default_chunk_size(60_000, 500, platform="gpu"))
    None
  """
  m = validation.check_positive_int(m, "m")
  num_candidates = validation.check_positive_int(num_candidates,
                                                 "num_candidates")
  positions = validation.check_positive_int(positions, "positions")
  if platform is None:
    platform = jax.default_backend()
  elif not isinstance(platform, str):
    raise TypeError(
        f"`platform` must be a string such as 'cpu', 'gpu' or 'tpu', or None "
        f"for jax.default_backend(), got {platform!r}.")
  elif platform.lower() not in _PLATFORMS:
    raise ValueError(
        f"`platform` must be one of {_PLATFORMS} (any case), or None for "
        f"jax.default_backend(), got {platform!r}.")
  platform = platform.lower()
  return placement.auto_chunk_size(None, m, num_candidates, platform, positions)


def _options(x: jax.Array,
             num_candidates: int,
             row_sharding: placement.RowSharding | None,
             *,
             activation: Activation,
             class_balanced: bool,
             num_classes: int | None,
             chunk_size: int | None,
             convolution: conv.ConvSpec | None = None,
             positions: int = 1) -> scores_lib.ScoringOptions:
  """The static scoring options for N candidates on the placed batch `x`,
  whose rows give `positions` samples each (a convolution's)."""
  return scores_lib.ScoringOptions(
      activation=activation,
      class_balanced=bool(class_balanced),
      num_classes=num_classes,
      chunk_size=placement.auto_chunk_size(chunk_size,
                                           x.shape[0], num_candidates,
                                           placement.platform(x), positions),
      row_sharding=row_sharding,
      conv=convolution)


def _flat(x: jax.Array | None) -> jax.Array | None:
  """A batch `(m, *dims)` as the `(m, fan_in)` rows a dense layer sees."""
  return None if x is None else x.reshape(x.shape[0], -1)


# Scoring and election compile separately: the election takes its own
# compiler options on CPU (`election.elect_compiled`).
_campaign_scores = jax.jit(
    scores_lib.campaign_scores, static_argnames=("options",))


@placement.eager_on_auto_axes
def campaign_select(
    batch: ArrayLike,
    labels: ArrayLike | None,
    candidates: ArrayLike,
    k: int,
    *,
    alpha: float = 0.5,
    activation: Activation = jax.nn.relu,
    class_balanced: bool = True,
    num_classes: int | None = None,
    bias: float = 0.0,
    chunk_size: int | None = None,
) -> jax.Array:
  """Elects k of the given candidate neurons by a Neuron Campaign on a batch.

  Steps 1-4 of the campaign: responses `z = activation(batch @ candidates +
  bias)`, scores from the two information-bottleneck criteria
  (`neuron_scores`), class-balanced quotas (`class_quotas`) and the greedy
  null-space election (`select_neurons`); scoring and election are each one
  compiled function.

  Args:
    batch: inputs to the layer, `(m, fan_in)` or `(m, *dims)`, `m >= 2`.
    labels: int class ids `(m,)`, one-hot `(m, C)`, or None (input information
      only).
    candidates: candidate weight vectors as columns, `(fan_in, N)`.
    k: number of neurons to elect, `k <= N`.
    alpha: weight of the input-information criterion, in [0, 1].
    activation: the activation that follows the layer (identity for an
      output layer: `lambda z: z`).
    class_balanced: split the k picks over the classes the candidates respond
      to most (Step 3); otherwise one group.
    num_classes: C; inferred from one-hot width or `max(labels) + 1`.
    bias: the scalar bias every neuron of the layer starts with.
    chunk_size: score the batch this many rows at a time (a `lax.scan` over
      chunks that adds up the class statistics), so memory is
      O(chunk_size * N) rather than O(m * N). None chooses by device, by
      the rule `default_chunk_size` states and computes.

  Returns:
    int32 indices of the elected candidates, shape `(k,)`, in Step 5's order.

  Raises:
    ValueError, TypeError: for malformed input, named in the message. Shapes,
      dtypes and options are always checked here. Values (NaN or infinite
      entries in `batch` or `candidates`, labels outside `[0, C)`, one-hot
      rows) are checked here when the arrays are concrete, also when they
      are sharded over many devices or processes. Under `jax.jit` they are
      `checkify` checks, which raise when the caller wraps the function with
      `jax.experimental.checkify.checkify`, and a batch or labels that fail
      them give every index -1: never a plausible election.

  Examples:
    >>> import jax
    >>> import nc_jax
    >>> kx, kw = jax.random.split(jax.random.key(0))
    >>> x = jax.random.normal(kx, (64, 20))
    >>> y = jax.numpy.arange(64) % 4
    >>> w = jax.random.normal(kw, (20, 50))
    >>> idx = nc_jax.campaign_select(x, y, w, 10)
    >>> idx.shape, len(set(idx.tolist()))
    ((10,), 10)

  References:
    Mao et al., "Neuron Campaign for Initialization Guided by Information
    Bottleneck Theory", CIKM 2021, https://arxiv.org/abs/2108.06530.
  """
  checked = checked_batch(batch, labels, num_classes)
  x, first_row = _flat(checked.x), _flat(checked.first_row)
  candidates = jnp.asarray(candidates)
  if candidates.ndim != 2 or candidates.shape[0] != x.shape[1]:
    raise ValueError(
        f"`candidates` must have shape (fan_in, N) with fan_in={x.shape[1]} "
        f"(the batch's features), got {candidates.shape}.")
  k = validation.check_k(k, candidates.shape[1])
  validation.check_callables(activation=activation)
  alpha = validation.check_alpha(alpha)
  bias = validation.check_bias(bias)
  chunk_size = validation.check_chunk_size(chunk_size)
  validation.check_finite(candidates, "candidates")
  options = _options(
      x,
      candidates.shape[1],
      checked.row_sharding,
      activation=activation,
      class_balanced=class_balanced,
      num_classes=checked.num_classes,
      chunk_size=chunk_size)
  scores, groups, dropped = placement.on_auto_axes(_campaign_scores,
                                                   x)(x,
                                                      first_row,
                                                      checked.labels,
                                                      candidates,
                                                      alpha,
                                                      bias,
                                                      options=options)
  scores_lib.warn_if_dropped(dropped)
  indices = election.elect_compiled(
      candidates.astype(x.dtype), scores, groups, options.num_groups, k)
  # Traced input that fails a value check elects nothing: every index -1.
  return (indices if checked.valid is None else jnp.where(
      checked.valid, indices, -1))


@functools.partial(
    jax.jit,
    static_argnames=("base_init", "shape", "dtype", "num_candidates",
                     "options"))
def _campaign_kernel(key, x, first_row, labels, alpha, bias, *, base_init,
                     shape, dtype, num_candidates, options):
  """The candidates, and Steps 1-3 on them."""
  w = draw_candidates(key, base_init, shape, num_candidates, dtype)
  return w, *scores_lib.campaign_scores(x, first_row, labels, w, alpha, bias,
                                        options)


class CheckedBatch(NamedTuple):
  """A layer's batch and labels, checked once and placed for scoring."""
  x: jax.Array
  labels: jax.Array | None
  num_classes: int | None
  first_row: jax.Array | None
  row_sharding: placement.RowSharding | None
  valid: jax.Array | None  # traced input: False when a value check fails


def checked_batch(batch: ArrayLike, labels: ArrayLike | None,
                  num_classes: int | None) -> CheckedBatch:
  """Checks a batch and its labels (`validation`) and places them
  (`placement`): the record every campaign of the batch starts from."""
  x = validation.as_batch(batch)
  int_labels, num_classes = validation.as_int_labels(labels, x.shape[0],
                                                     num_classes)
  valid = validation.traced_checks(x, int_labels, num_classes)
  x, int_labels, first_row, row_sharding = placement.placement(x, int_labels)
  return CheckedBatch(x, int_labels, num_classes, first_row, row_sharding,
                      valid)


class LayerInput(NamedTuple):
  """A checked batch as a kernel of some shape multiplies it."""
  rows: jax.Array  # a dense kernel's (m, fan_in) rows; a conv's images
  first_row: jax.Array | None  # `rows[:1]`, placed (None: traced)
  conv: conv.ConvSpec | None  # a convolution's geometry
  positions: int  # samples per row: a convolution's output positions


def layer_input(checked: CheckedBatch, shape: tuple[int, ...], *, strides: Any,
                padding: conv.Padding, kernel_dilation: Any,
                feature_group_count: int) -> LayerInput:
  """The checked batch as a kernel of `shape` meets it: a dense kernel's
  rows (the batch flattened to fan_in), or a convolution's images with its
  checked geometry.

  Raises:
    ValueError: for a batch that does not fit the kernel, naming the fix.
  """
  x, first_row = checked.x, checked.first_row
  if len(shape) == 2:  # a dense kernel: the batch flattened to fan_in
    rows = _flat(x)
    if rows.shape[1] != shape[0]:
      raise ValueError(
          f"`batch` has {rows.shape[1]} features but the kernel expects "
          f"fan_in={shape[0]}; pass the activations that feed this layer.")
    return LayerInput(rows, _flat(first_row), None, 1)
  spec = conv.conv_spec(
      x.shape,
      shape,
      strides=strides,
      padding=padding,
      kernel_dilation=kernel_dilation,
      feature_group_count=feature_group_count)
  return LayerInput(x, first_row, spec, spec.positions(x.shape, shape))


class Elected(NamedTuple):
  """A layer's campaign: its kernel and how it was chosen."""
  kernel: jax.Array  # the elected candidates, in the kernel's layout
  scores: jax.Array  # (N,) every candidate's score
  indices: jax.Array  # (fan_out,) the elected candidates
  dropped: scores_lib.Dropped


def score_and_elect(checked: CheckedBatch,
                    key: jax.Array,
                    shape: tuple[int, ...],
                    dtype: jnp.dtype,
                    num_candidates: int,
                    *,
                    alpha: jax.Array,
                    bias: jax.Array,
                    base_init: Initializer,
                    activation: Activation,
                    class_balanced: bool,
                    chunk_size: int | None,
                    strides: Any = 1,
                    padding: conv.Padding = "SAME",
                    kernel_dilation: Any = 1,
                    feature_group_count: int = 1) -> Elected:
  """Draws N candidates for a kernel of `shape`, scores them on the checked
  batch (Steps 1-3) and elects fan_out of them (Steps 3-5)."""
  x = checked.x
  rows, first, spec, positions = layer_input(
      checked,
      shape,
      strides=strides,
      padding=padding,
      kernel_dilation=kernel_dilation,
      feature_group_count=feature_group_count)
  options = _options(
      rows,
      num_candidates,
      checked.row_sharding,
      activation=activation,
      class_balanced=class_balanced,
      num_classes=checked.num_classes,
      chunk_size=chunk_size,
      convolution=spec,
      positions=positions)
  w, scores, groups, dropped = placement.on_auto_axes(_campaign_kernel, x)(
      key,
      rows,
      first,
      checked.labels,
      alpha,
      bias,
      base_init=base_init,
      shape=shape,
      dtype=dtype,
      num_candidates=num_candidates,
      options=options)
  indices = election.elect_compiled(  # on the candidates as scored, flat
      w.reshape(-1, num_candidates).astype(x.dtype), scores, groups,
      options.num_groups, shape[-1])
  kernel = w[..., indices]  # Step 5: the raw candidates, in the layout
  if checked.valid is not None:  # failed value checks: NaN, never plausible
    kernel = jnp.where(checked.valid, kernel, jnp.nan)
  return Elected(kernel, scores, indices, dropped)


@placement.eager_on_auto_axes
def campaign_init(
    batch: ArrayLike,
    labels: ArrayLike | None = None,
    *,
    alpha: float = 0.5,
    num_candidates: int | None = None,
    base_init: Initializer = jax.nn.initializers.he_normal(),
    activation: Activation = jax.nn.relu,
    class_balanced: bool = True,
    num_classes: int | None = None,
    bias: float = 0.0,
    chunk_size: int | None = None,
    strides: int | Sequence[int] = 1,
    padding: conv.Padding = "SAME",
    kernel_dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
) -> Initializer:
  """Builds an initializer that elects a layer's neurons by a Neuron Campaign.

  The returned `init(key, shape, dtype)` has the `jax.nn.initializers`
  signature, so it plugs into `flax.linen.Dense(kernel_init=...)` and
  `flax.nnx.Linear(kernel_init=...)`. It draws `num_candidates` candidate
  neurons from `base_init` (`draw_candidates` with the whole key), scores them
  on `batch` by the two information-bottleneck criteria, elects `fan_out` of
  them (`campaign_select`) and returns those columns, unscaled, in `dtype`.
  Statistics are computed in float32 whatever `dtype` is. The batch and labels
  are checked once, here; `init` compiles once per shape, dtype and options
  and works under `jax.jit`.

  Args:
    batch: the inputs this layer will see, `(m, fan_in)` or `(m, *dims)` that
      flattens to fan_in, `m >= 2`; for a deeper layer, the activations the
      layers before it produce.
    labels: int class ids `(m,)`, one-hot `(m, C)`, or None (the unsupervised
      campaign: input information only).
    alpha: weight of the input-information criterion MI(X;Z), in [0, 1];
      `1 - alpha` weighs the label criterion MI(Z;Y). Front layers favour
      alpha near 1, rear layers alpha near 0.
    num_candidates: N, candidates drawn per layer; default `5 * fan_out`.
    base_init: the initializer candidates are drawn from (He normal by
      default; `glorot_uniform()` for Xavier candidates).
    activation: the activation that follows the layer (identity for an
      output layer).
    class_balanced: split the elected neurons over the classes, as published.
    num_classes: C; inferred from one-hot width or `max(labels) + 1`.
    bias: the scalar bias the layer's neurons start with.
    chunk_size: score the batch this many rows at a time, with memory
      O(chunk_size * N) instead of O(m * N); None chooses by device (see
      `campaign_select`). A batch sharded along its rows over a
      `jax.sharding.Mesh` is scored where it lies: each device sums its own
      rows and one small all-reduce combines the statistics.
    strides: for a convolution's kernel, the layer's strides (an int or one
      per spatial axis), as `flax.linen.Conv` takes them.
    padding: for a convolution's kernel, "SAME", "VALID", an int, or one int
      or `(low, high)` pair per spatial axis, as `flax.linen.Conv` takes it.
    kernel_dilation: for a convolution's kernel, its dilation.
    feature_group_count: for a convolution's kernel; only 1 is supported
      (grouped and depthwise convolutions are refused with an error).

  Returns:
    `init(key, shape, dtype=jnp.float32) -> jax.Array`. A dense kernel
    `shape = (fan_in, fan_out)` takes `batch` flattened to `(m, fan_in)`; a
    convolution's, flax's `(*window, in_features, features)` for a 1-, 2- or
    3-D convolution, takes `batch` as `(m, *spatial, in_features)`: every
    output position of every example is a sample of a candidate's response,
    with its example's label, and the election runs on the filters
    flattened over `(*window, in_features)`.

  Raises:
    ValueError, TypeError: here for malformed batch, labels or options, and
      from `init` for a shape that does not fit the batch. Shapes, dtypes and
      options are always checked eagerly; values (NaN or infinite entries,
      labels outside `[0, C)`, one-hot rows) are checked eagerly when the
      batch and labels are concrete (where they lie, when sharded). When they
      are traced (the factory called inside `jax.jit`), the same value checks
      are `checkify` checks, which raise when the caller wraps the function
      with `jax.experimental.checkify.checkify`, and a batch or labels that
      fail them make the kernel NaN: never a plausible kernel.

  Examples:
    >>> import jax
    >>> import flax.linen as nn
    >>> import nc_jax
    >>> x = jax.random.normal(jax.random.key(0), (128, 32))
    >>> y = jax.numpy.arange(128) % 10
    >>> layer = nn.Dense(16, kernel_init=nc_jax.campaign_init(x, y))
    >>> params = layer.init(jax.random.key(1), x)["params"]
    >>> params["kernel"].shape, params["kernel"].dtype
    ((32, 16), dtype('float32'))

  References:
    Mao et al., "Neuron Campaign for Initialization Guided by Information
    Bottleneck Theory", CIKM 2021, https://arxiv.org/abs/2108.06530.
  """
  checked = checked_batch(batch, labels, num_classes)
  alpha = validation.check_alpha(alpha)
  bias = validation.check_bias(bias)
  chunk_size = validation.check_chunk_size(chunk_size)
  validation.check_positive_int(
      num_candidates, "num_candidates", allow_none=True)
  validation.check_callables(base_init=base_init, activation=activation)
  convolution = conv.check_options(strides, padding, kernel_dilation,
                                   feature_group_count)

  @placement.eager_on_auto_axes
  def init(key: jax.Array,
           shape: tuple[int, ...],
           dtype: DTypeLike = jnp.float32) -> jax.Array:
    shape, n, dtype = validation.check_init_call(shape, num_candidates, dtype,
                                                 CANDIDATES_PER_NEURON)
    elected = score_and_elect(
        checked,
        key,
        shape,
        dtype,
        n,
        alpha=alpha,
        bias=bias,
        base_init=base_init,
        activation=activation,
        class_balanced=class_balanced,
        chunk_size=chunk_size,
        **convolution)
    scores_lib.warn_if_dropped(elected.dropped)
    return elected.kernel

  return init


@functools.partial(
    jax.jit, static_argnames=("base_init", "shape", "dtype", "num_candidates"))
def _random_pick_kernel(key, *, base_init, shape, dtype, num_candidates):
  w = draw_candidates(key, base_init, shape, num_candidates, dtype)
  # A key folded from `key` picks; the candidates above use `key` itself.
  picked = jax.random.choice(
      jax.random.fold_in(key, 1), num_candidates, (shape[-1],), replace=False)
  return w[..., picked]


def random_pick_init(
    *,
    num_candidates: int | None = None,
    base_init: Initializer = jax.nn.initializers.he_normal(),
) -> Initializer:
  """Builds an initializer that picks a layer's neurons from the campaign's
  candidates uniformly at random: the control for the election.

  `init(key, shape, dtype)` draws exactly the candidates that
  `campaign_init(..., num_candidates=num_candidates, base_init=base_init)`
  draws with the same key (`draw_candidates(key, base_init, shape, N, dtype)`)
  and returns `fan_out` of them chosen uniformly at random without replacement
  by `jax.random.choice(jax.random.fold_in(key, 1), N, (fan_out,),
  replace=False)`, in that order. The choice's key is derived from `key`, so
  the candidates do not change. Comparing a campaign with this control, key by
  key, separates the effect of the election from that of the candidate draw.
  Since the candidates are independent draws of `base_init`'s columns, the
  picked kernel is distributed like one `base_init` kernel. `init` needs no
  data, compiles once per shape, dtype and options, and works under `jax.jit`.

  Args:
    num_candidates: N, candidates drawn per layer; default `5 * fan_out`, as
      in `campaign_init`.
    base_init: the initializer candidates are drawn from (He normal by
      default; `glorot_uniform()` for Xavier candidates).

  Returns:
    `init(key, shape, dtype=jnp.float32) -> jax.Array`, a kernel of the
    given shape: a dense `(fan_in, fan_out)` or a convolution's
    `(*window, in_features, features)`, fan_out its last axis.

  Raises:
    ValueError, TypeError: here for malformed options, and from `init` for a
      shape that is not a kernel shape (at least two positive ints), N <
      fan_out or a dtype that is not floating.

  Examples:
    >>> import jax
    >>> import nc_jax
    >>> key = jax.random.key(0)
    >>> kernel = nc_jax.random_pick_init()(key, (32, 16))
    >>> kernel.shape, kernel.dtype
    ((32, 16), dtype('float32'))
    >>> candidates = nc_jax.draw_candidates(
    ...     key, jax.nn.initializers.he_normal(), (32, 16), 80)
    >>> bool((kernel[:, :, None] == candidates[:, None, :]).all(0).any(1).all())
    True
  """
  validation.check_positive_int(
      num_candidates, "num_candidates", allow_none=True)
  validation.check_callables(base_init=base_init)

  def init(key: jax.Array,
           shape: tuple[int, ...],
           dtype: DTypeLike = jnp.float32) -> jax.Array:
    shape, n, dtype = validation.check_init_call(shape, num_candidates, dtype,
                                                 CANDIDATES_PER_NEURON)
    return _random_pick_kernel(
        key, base_init=base_init, shape=shape, dtype=dtype, num_candidates=n)

  return init
