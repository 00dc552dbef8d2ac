"""The campaign for whole models: every kernel elected, layer by layer."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import math
import numbers
from typing import Any, Literal, Union, get_args

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from nc_jax._src import campaign
from nc_jax._src import conv
from nc_jax._src import placement
from nc_jax._src import traversal
from nc_jax._src import validation
from nc_jax._src import whitening as whitening_lib
from nc_jax._src.report import WalkReport
from nc_jax._src.types import Activation
from nc_jax._src.types import Initializer

# How each layer's fan_out neurons are chosen from its candidates.
Elect = Literal["campaign", "random"]
AlphaSchedule = Union[float, Sequence[float], Callable[[int, int], float], None]
Activations = Union[Mapping[str, Activation], Callable[[str], Activation], None]


def linear_alpha(index: int, count: int) -> float:
  """The default alpha schedule: 1 at the first layer, falling to 0 at the last.

  The published MNIST setting for two layers is alpha = [1, 0]
  (docs/algorithm.md#notation); a single layer gets 1.

  Examples:
    >>> import nc_jax
    >>> [nc_jax.linear_alpha(i, 3) for i in range(3)]
    [1.0, 0.5, 0.0]
  """
  return 1.0 if count == 1 else 1.0 - index / (count - 1)


def _alphas(alpha: AlphaSchedule, count: int) -> tuple[float, ...]:
  if alpha is None:
    alpha = linear_alpha
  if callable(alpha):
    values = [alpha(i, count) for i in range(count)]
  elif isinstance(alpha, numbers.Real) or np.ndim(alpha) == 0:
    values = [alpha] * count
  else:
    values = list(alpha)
    if len(values) != count:
      raise ValueError(
          f"`alpha` has {len(values)} values but {count} layers take part; "
          "pass one alpha per layer, a float, or a schedule (index, count) -> "
          "alpha.")
  for a in values:
    if not placement.is_concrete(a):
      raise TypeError(
          "`alpha` must hold Python or NumPy numbers (each layer's alpha is "
          "fixed when the walk is compiled), got a traced value; pass floats.")
    validation.check_alpha(a)
  return tuple(float(a) for a in values)


def _activation_for(activation: Activations,
                    plan: traversal.Plan) -> Callable[[str], Activation]:
  """Resolves `activation` to a function of the layer path."""

  def default(path: str) -> Activation:
    return _identity if path == plan.output else jax.nn.relu

  if activation is None:
    return default
  if isinstance(activation, Mapping):
    unknown = sorted(set(activation) - set(plan.paths))
    if unknown:
      raise ValueError(
          f"`activation` names layers {unknown} that do not take part; they "
          f"are {list(plan.paths)}.")
    return lambda path: activation.get(path) or default(path)
  if not callable(activation):
    raise TypeError(
        "`activation` must be None, a mapping from layer path to activation, "
        f"or a function of the layer path, got {type(activation).__name__}.")

  def by_path(path: str) -> Activation:
    try:
      act = activation(path)
    except Exception as error:
      raise TypeError(
          f"`activation` is called with a layer path ({path!r}) and must return"
          " that layer's activation; to use one activation everywhere pass "
          "`lambda path: jax.nn.relu`.") from error
    if not callable(act):
      raise TypeError(
          f"`activation({path!r})` returned {type(act).__name__}, not an "
          "activation function.")
    return act

  return by_path


def _identity(z: jax.Array) -> jax.Array:
  return z


def _scalar_bias(bias: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """The one bias the campaign scores with (docs/algorithm.md#notation), and
  whether every neuron's bias equals it."""
  if bias is None:
    return jnp.zeros((), jnp.float32), jnp.asarray(True)
  flat = bias.reshape(-1)
  return flat[0], jnp.all(flat == flat[0])


def _whitened(whiten: traversal.LayerFilter,
              plan: traversal.Plan) -> tuple[bool, ...]:
  """Which layers taking part `whiten` names, one flag per layer."""
  if whiten is None:
    return (False,) * len(plan.layers)
  chosen = traversal.select_paths(plan.paths, whiten, "whiten",
                                  "the layers taking part (see `layers=`)")
  return tuple(p in chosen for p in plan.paths)


def _whitening_options(
    whitening: Mapping[str, Any] | None) -> whitening_lib.WhiteningOptions:
  if whitening is None:
    return whitening_lib.WhiteningOptions()
  fields = [f.name for f in dataclasses.fields(whitening_lib.WhiteningOptions)]
  if not isinstance(whitening, Mapping) or set(whitening) - set(fields):
    raise ValueError(
        f"`whitening` must be a mapping of `whitening_init`'s options "
        f"{fields}, got {whitening!r}.")
  return whitening_lib.WhiteningOptions(**whitening)


# nnx layers do not keep their kernel_init; this is their default.
_NNX_DEFAULT_INIT = nnx.initializers.lecun_normal()


@dataclasses.dataclass(frozen=True)
class _CampaignRule(traversal.Rule):
  """Each layer's kernel elected by a campaign on its input (or, with
  `elect="random"`, picked at random from the same candidates), or for the
  layers `whitened` names, `whitening_init` of its input."""
  alphas: tuple[float, ...]
  activations: tuple[Activation, ...]
  candidates_per_neuron: int
  base_init: Initializer | None
  class_balanced: bool
  num_classes: int | None
  chunk_size: int | None
  elect: Elect
  whitened: tuple[bool, ...]
  whitening: whitening_lib.WhiteningOptions

  def _shape(self, spec: traversal.LayerSpec) -> tuple[int, ...]:
    # A convolution is elected in its own layout; a dense layer's kernel as
    # the matrix it is, on its input's rows.
    return spec.kernel_shape if spec.geometry.conv else spec.flat_shape

  def describe(self, spec: traversal.LayerSpec) -> dict[str, Any]:
    shape = self._shape(spec)
    if self.whitened[spec.index]:
      return {"whitened": f"{self.whitening.method}, d={math.prod(shape[:-1])}"}
    return {
        "candidates": self.candidates_per_neuron * shape[-1],
        "elected": shape[-1]
    }

  def refusal(self, spec: traversal.LayerSpec) -> str | None:
    options = spec.geometry.conv_options
    whitened = self.whitened[spec.index]
    try:
      if whitened:
        self.whitening.check_shape(self._shape(spec))
      if options is not None and (whitened or self.elect != "random"):
        images = (2, *spec.input_shape[-len(spec.kernel_shape) + 1:])
        conv.conv_spec(images, spec.kernel_shape, **options)
    except ValueError as error:
      return str(error)
    return None

  def __call__(
      self, layer: traversal.Layer, key: jax.Array,
      labels: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
    spec = layer.spec
    shape = self._shape(spec)
    num_candidates = self.candidates_per_neuron * shape[-1]
    draw_from = self.base_init or spec.kernel_init or _NNX_DEFAULT_INIT
    key = jax.random.fold_in(key, spec.index)
    dtype = layer.kernel.dtype
    if self.elect == "random" and not self.whitened[spec.index]:
      kernel = campaign.random_pick_init(
          num_candidates=num_candidates, base_init=draw_from)(key, shape, dtype)
      return kernel.reshape(spec.kernel_shape), {}
    rows, positions = layer.rows()
    if not spec.geometry.conv:
      rows = rows.reshape(-1, shape[0])
    if labels is not None and positions > 1:  # each with its example's label
      labels = jnp.repeat(labels, positions)
    whitened = self.whitened[spec.index]
    checked = campaign.checked_batch(rows, None if whitened else labels,
                                     self.num_classes)
    if layer.row_sharding is not None:  # scored where the rows lie
      checked = checked._replace(row_sharding=layer.row_sharding)
    # False when the forward overflowed before this layer; refused after the
    # walk (`WalkReport.check`), its kernel NaN meanwhile.
    finite = {
        "input_finite":
            jnp.asarray(True) if checked.valid is None else checked.valid
    }
    if whitened:
      kernel = whitening_lib.whitened_kernel(
          checked,
          key,
          shape,
          dtype,
          self.whitening,
          chunk_size=self.chunk_size,
          **(spec.geometry.conv_options or {}))
      return kernel.reshape(spec.kernel_shape), finite
    bias, constant = _scalar_bias(layer.bias)
    elected = campaign.score_and_elect(
        checked,
        key,
        shape,
        dtype,
        num_candidates,
        alpha=jnp.float32(self.alphas[spec.index]),
        bias=bias,
        base_init=draw_from,
        activation=self.activations[spec.index],
        class_balanced=self.class_balanced,
        chunk_size=self.chunk_size,
        **(spec.geometry.conv_options or {}))
    # A non-constant bias is refused after the walk (`WalkReport.check`);
    # its kernel is NaN meanwhile, never plausible.
    kernel = jnp.where(constant, elected.kernel, jnp.nan)
    return kernel.reshape(spec.kernel_shape), {
        "score_elected": jnp.median(elected.scores[elected.indices]),
        "score_all": jnp.median(elected.scores),
        "dropped_input": elected.dropped.input_info,
        "dropped_label": elected.dropped.label_info,
        "overflowed": elected.dropped.overflowed,
        "bias_constant": constant,
        **finite
    }


def _campaign_rule(
    num_classes: int | None, *, alpha: AlphaSchedule, activation: Activations,
    candidates_per_neuron: int, base_init: Initializer | None,
    class_balanced: bool, chunk_size: int | None, elect: Elect,
    whiten: traversal.LayerFilter,
    whitening: Mapping[str, Any] | None) -> traversal.RuleFactory:
  validation.check_positive_int(
      candidates_per_neuron,
      "candidates_per_neuron",
      hint="candidates drawn per elected neuron; the paper uses 5")
  if not isinstance(elect, str) or elect not in get_args(Elect):
    raise ValueError(
        f"`elect` must be one of {get_args(Elect)}, got {elect!r}; "
        "\"random\" picks the same candidates uniformly at random (the "
        "control for the election).")
  if base_init is not None:
    validation.check_callables(base_init=base_init)
  chunk_size = validation.check_chunk_size(chunk_size)
  whitening_options = _whitening_options(whitening)

  def make_rule(plan: traversal.Plan) -> traversal.Rule:
    activation_of = _activation_for(activation, plan)
    return _CampaignRule(
        alphas=_alphas(alpha, len(plan.layers)),
        activations=tuple(activation_of(p) for p in plan.paths),
        candidates_per_neuron=int(candidates_per_neuron),
        base_init=base_init,
        class_balanced=bool(class_balanced),
        num_classes=num_classes,
        chunk_size=chunk_size,
        elect=elect,
        whitened=_whitened(whiten, plan),
        whitening=whitening_options)

  return make_rule


@placement.eager_on_auto_axes
def campaign_linen(
    model: nn.Module,
    key: jax.Array | int,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    alpha: AlphaSchedule = None,
    activation: Activations = None,
    candidates_per_neuron: int = campaign.CANDIDATES_PER_NEURON,
    base_init: Initializer | None = None,
    class_balanced: bool = True,
    num_classes: int | None = None,
    layers: traversal.LayerFilter = None,
    chunk_size: int | None = None,
    elect: Elect = "campaign",
    whiten: traversal.LayerFilter = None,
    whitening: Mapping[str, Any] | None = None,
    progress: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
    report: bool = False,
) -> dict[str, Any] | tuple[dict[str, Any], WalkReport]:
  """Initializes a flax.linen model with every kernel elected by a campaign.

  `init_key, campaign_key = jax.random.split(key)`;
  `model.init(init_key, x[:2])` gives every variable its own init, then one
  forward pass of `x` visits the `Dense`, `DenseGeneral` and `Conv` layers
  in call order. Layer `i`
  (counting the layers taking part) gets `campaign_init(inputs_i, y,
  ...)(jax.random.fold_in(campaign_key, i), shape, dtype)`, where `inputs_i`
  is its input in that pass, produced by the layers already elected
  (docs/algorithm.md#whole-models). The walk is one compiled program
  (a later call with a new key or batch of the same shape compiles
  nothing), and the function also works inside the caller's `jax.jit`, with
  the same result (traced labels need `num_classes`). Every module whose call
  takes `deterministic` (dropout, attention dropout) is deterministic during
  the pass. Layers called inside a lifted transform (`nn.scan`, `nn.vmap`,
  `nn.remat`) are refused by name before any work. A `Conv`
  is elected in its own layout with its strides, padding and dilation
  (grouped convolutions raise: leave them out with `layers=`); a
  `DenseGeneral` as the matrix of its contracted axes. A layer whose input
  has extra axes (tokens, positions) is scored on every one, each with its
  example's label. `ConvTranspose`, `ConvLocal` and `Einsum` keep their own
  init, with one warning naming them.

  Args:
    model: a flax.linen module.
    key: a PRNG key or an int seed.
    x: the batch the campaign is scored on: one array, the model's first
      argument (other inputs go by keyword through `model_kwargs`).
    y: int class ids `(m,)`, one-hot `(m, C)`, or None (unsupervised campaign).
    alpha: weight of the input-information criterion per layer: a float for
      every layer, a sequence with one value per layer taking part, or a
      schedule `(index, count) -> alpha`. Default `linear_alpha`: 1 at the
      first layer falling linearly to 0 at the last.
    activation: the activation that follows each layer: a mapping from layer
      path to activation (unlisted layers keep the default) or a function of
      the path. Default: ReLU, and identity for the last weight layer the
      forward pass calls.
    candidates_per_neuron: candidates drawn per neuron (N = this * fan_out).
    base_init: the initializer candidates are drawn from; default the layer's
      own `kernel_init` (linen) or `lecun_normal`, `nnx.Linear`'s default
      (nnx does not record a layer's kernel_init: pass it if yours differ).
    class_balanced: split each layer's neurons over the classes (Step 3).
    num_classes: C; inferred from `y` when left out.
    layers: which weight layers take part: None (all), a collection of layer
      paths, or a predicate on the path. The others keep the model's init.
    chunk_size: score each layer's input this many rows at a time (memory
      O(chunk_size * N), see `campaign_init`); None chooses by device.
    elect: "campaign" (default) elects each layer's neurons by the campaign;
      "random" is its control: the same layer key draws the same candidates
      and `random_pick_init` picks fan_out of them uniformly at random
      (`y`, `alpha`, `activation`, `class_balanced` and `chunk_size` then
      play no part).
    whiten: layers whose kernel is `whitening_init` of their input instead
      (their window, strides, padding and dilation; the campaign's
      `chunk_size`), e.g. `whiten=["Conv_0"]` for a whitened first
      convolution and the rest elected: None (none), a collection of paths
      among the layers taking part, or a predicate on the path. With
      `layers=["Conv_0"], whiten=["Conv_0"]` only that layer changes. A
      whitened layer's input is the output of the layers already set, as for
      the campaign, and the alpha schedule still counts it.
    whitening: `whitening_init`'s options for those layers, e.g.
      `{"eps": 1e-3, "center": False}`.
    progress: show a tqdm bar over layers, naming each as the compiled walk
      finishes it (none inside the caller's jit).
    model_kwargs: keyword arguments for the model's `__call__` (e.g.
      `{"train": False}`); arrays among them are traced, the rest static.
    report: also return a `WalkReport`, a row per layer
      (docs/algorithm.md#whole-models).

  Returns:
    The variables, as `model.init` returns them, with the elected kernels;
    with `report=True`, `(variables, report)`.

  Raises:
    ValueError, TypeError: for a model without weight layers, an `x` the model
      cannot take or with NaN or infinite entries, `y` of another length than
      `x`, a layer whose input overflowed (named), or malformed options.

  Examples:
    >>> import jax
    >>> import flax.linen as nn
    >>> import nc_jax
    >>> x = jax.random.normal(jax.random.key(0), (256, 20))
    >>> y = jax.numpy.arange(256) % 4
    >>> model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(4)])
    >>> variables = nc_jax.campaign_linen(model, jax.random.key(1), x, y,
    ...                                   progress=False)
    >>> variables["params"]["layers_0"]["kernel"].shape
    (20, 16)

  References:
    Mao et al., "Neuron Campaign for Initialization Guided by Information
    Bottleneck Theory", CIKM 2021, https://arxiv.org/abs/2108.06530.
  """
  x, labels, num_classes = validation.check_model_batch(x, y, num_classes)
  make_rule = _campaign_rule(
      num_classes,
      alpha=alpha,
      activation=activation,
      candidates_per_neuron=candidates_per_neuron,
      base_init=base_init,
      class_balanced=class_balanced,
      chunk_size=chunk_size,
      elect=elect,
      whiten=whiten,
      whitening=whitening)
  variables, made = traversal.walk_linen(
      model,
      validation.as_key(key),
      x,
      labels,
      make_rule,
      layers=layers,
      progress=progress,
      desc="campaign",
      model_kwargs=model_kwargs,
      report=bool(report))
  return (variables, made) if report else variables


@placement.eager_on_auto_axes
def campaign_nnx(
    model: nnx.Module,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    key: jax.Array | int = 0,
    alpha: AlphaSchedule = None,
    activation: Activations = None,
    candidates_per_neuron: int = campaign.CANDIDATES_PER_NEURON,
    base_init: Initializer | None = None,
    class_balanced: bool = True,
    num_classes: int | None = None,
    layers: traversal.LayerFilter = None,
    chunk_size: int | None = None,
    elect: Elect = "campaign",
    whiten: traversal.LayerFilter = None,
    whitening: Mapping[str, Any] | None = None,
    progress: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
    report: bool = False,
) -> WalkReport | None:
  """Elects every kernel of a flax.nnx model by a campaign, in place.

  One forward pass of `x` visits the `nnx.Linear`, `nnx.LinearGeneral` and
  `nnx.Conv` layers in call order; layer
  `i` (counting the layers taking part) gets `campaign_init(inputs_i, y,
  ...)(jax.random.fold_in(key, i), shape, dtype)`, as in `campaign_linen`
  with `key` in the role of its `campaign_key`, so the two give the same
  kernels for the same architecture. As there, the walk is one compiled
  program and works inside the caller's `nnx.jit`; dropout is off during the
  pass and every other variable (biases, batch statistics, RNG state) is left
  as it was. Layers called inside `nnx.scan`, `nnx.vmap`, `nnx.remat` or
  `nnx.jit` (an nnx layer stack) are refused by name before any work; leave
  them out with `layers=`.

  Args:
    model: a flax.nnx module, already constructed.
    x: the batch the campaign is scored on: one array, the model's first
      argument (other inputs go by keyword through `model_kwargs`).
    y: int class ids `(m,)`, one-hot `(m, C)`, or None (unsupervised campaign).
    key: a PRNG key or an int seed for the candidates.
    alpha: weight of the input-information criterion per layer: a float for
      every layer, a sequence with one value per layer taking part, or a
      schedule `(index, count) -> alpha`. Default `linear_alpha`: 1 at the
      first layer falling linearly to 0 at the last.
    activation: the activation that follows each layer: a mapping from layer
      path to activation (unlisted layers keep the default) or a function of
      the path. Default: ReLU, and identity for the last weight layer the
      forward pass calls.
    candidates_per_neuron: candidates drawn per neuron (N = this * fan_out).
    base_init: the initializer candidates are drawn from; default the layer's
      own `kernel_init` (linen) or `lecun_normal`, `nnx.Linear`'s default
      (nnx does not record a layer's kernel_init: pass it if yours differ).
    class_balanced: split each layer's neurons over the classes (Step 3).
    num_classes: C; inferred from `y` when left out.
    layers: which weight layers take part: None (all), a collection of layer
      paths, or a predicate on the path. The others keep the model's init.
    chunk_size: score each layer's input this many rows at a time (memory
      O(chunk_size * N), see `campaign_init`); None chooses by device.
    elect: "campaign" (default) elects each layer's neurons by the campaign;
      "random" is its control: the same layer key draws the same candidates
      and `random_pick_init` picks fan_out of them uniformly at random
      (`y`, `alpha`, `activation`, `class_balanced` and `chunk_size` then
      play no part).
    whiten: layers whose kernel is `whitening_init` of their input instead
      (their window, strides, padding and dilation; the campaign's
      `chunk_size`), e.g. `whiten=["Conv_0"]` for a whitened first
      convolution and the rest elected: None (none), a collection of paths
      among the layers taking part, or a predicate on the path. With
      `layers=["Conv_0"], whiten=["Conv_0"]` only that layer changes. A
      whitened layer's input is the output of the layers already set, as for
      the campaign, and the alpha schedule still counts it.
    whitening: `whitening_init`'s options for those layers, e.g.
      `{"eps": 1e-3, "center": False}`.
    progress: show a tqdm bar over layers, naming each as the compiled walk
      finishes it (none inside the caller's jit).
    model_kwargs: keyword arguments for the model's `__call__` (e.g.
      `{"train": False}`); arrays among them are traced, the rest static.
    report: also return a `WalkReport`, a row per layer
      (docs/algorithm.md#whole-models).

  Returns:
    None (the model is updated in place), or with `report=True` the
    `WalkReport`.

  Raises:
    ValueError, TypeError: for a model without weight layers, an `x` the model
      cannot take or with NaN or infinite entries, `y` of another length than
      `x`, a layer whose input overflowed (named), or malformed options.

  Examples:
    >>> import jax
    >>> from flax import nnx
    >>> import nc_jax
    >>> x = jax.random.normal(jax.random.key(0), (256, 20))
    >>> y = jax.numpy.arange(256) % 4
    >>> model = nnx.Sequential(nnx.Linear(20, 16, rngs=nnx.Rngs(0)),
    ...                        jax.nn.relu, nnx.Linear(16, 4, rngs=nnx.Rngs(1)))
    >>> nc_jax.campaign_nnx(model, x, y, progress=False)
    >>> model.layers[0].kernel.shape
    (20, 16)

  References:
    Mao et al., "Neuron Campaign for Initialization Guided by Information
    Bottleneck Theory", CIKM 2021, https://arxiv.org/abs/2108.06530.
  """
  x, labels, num_classes = validation.check_model_batch(x, y, num_classes)
  make_rule = _campaign_rule(
      num_classes,
      alpha=alpha,
      activation=activation,
      candidates_per_neuron=candidates_per_neuron,
      base_init=base_init,
      class_balanced=class_balanced,
      chunk_size=chunk_size,
      elect=elect,
      whiten=whiten,
      whitening=whitening)
  return traversal.walk_nnx(
      model,
      validation.as_key(key),
      x,
      labels,
      make_rule,
      layers=layers,
      progress=progress,
      desc="campaign",
      model_kwargs=model_kwargs,
      report=bool(report))
