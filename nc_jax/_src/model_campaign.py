"""The campaign for whole models: every kernel elected, layer by layer."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from nc_jax._src import campaign
from nc_jax._src import traversal
from nc_jax._src import validation
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


def _alphas(alpha: AlphaSchedule, count: int) -> list[float]:
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
  return [float(validation.check_alpha(a)) for a in values]


def _activation_for(activation: Activations, plan: traversal.Plan
                    ) -> Callable[[str], Activation]:
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


def _bias_value(layer: traversal.Layer) -> float:
  """The campaign scores with one bias for all neurons (docs/algorithm.md#notation)."""
  if layer.bias is None:
    return 0.0
  flat = np.asarray(layer.bias, np.float64).reshape(-1)
  if not np.all(flat == flat[0]):
    raise ValueError(
        f"layer {layer.path!r} starts with a non-constant bias (values in "
        f"[{flat.min():.3g}, {flat.max():.3g}]); the campaign scores candidates"
        " with one bias for all neurons, so give the layer a constant "
        "`bias_init` (zeros, as published) or leave it out with `layers=`.")
  return float(flat[0])


def _layer_labels(layer: traversal.Layer, labels: jax.Array | None,
                  positions: int) -> jax.Array | None:
  """Labels row-aligned with `positions` samples per example."""
  if labels is None:
    return None
  if layer.inputs.ndim < 2 or layer.inputs.shape[0] != labels.shape[0]:
    raise ValueError(
        f"layer {layer.path!r} gets input of shape {tuple(layer.inputs.shape)},"
        f" whose leading axis is not the batch of {labels.shape[0]} labelled "
        "examples; leave it out with `layers=` or pass `y=None`.")
  return labels if positions == 1 else jnp.repeat(labels, positions)


def _campaign_rule(key: jax.Array, labels: jax.Array | None,
                   num_classes: int | None, *, alpha: AlphaSchedule,
                   activation: Activations, candidates_per_neuron: int,
                   base_init: Initializer | None,
                   class_balanced: bool,
                   chunk_size: int | None,
                   elect: Elect) -> traversal.RuleFactory:
  validation.check_positive_int(
      candidates_per_neuron, "candidates_per_neuron",
      hint="candidates drawn per elected neuron; the paper uses 5")
  if elect not in get_args(Elect):
    raise ValueError(
        f"`elect` must be one of {get_args(Elect)}, got {elect!r}; "
        "\"random\" picks the same candidates uniformly at random (the "
        "control for the election).")
  if base_init is not None:
    validation.check_callables(base_init=base_init)

  def make_rule(plan: traversal.Plan) -> traversal.Rule:
    alphas = _alphas(alpha, len(plan.paths))
    activation_of = _activation_for(activation, plan)

    def rule(layer: traversal.Layer) -> jax.Array:
      conv = layer.geometry.conv
      # A convolution is elected in its own layout; a dense layer's kernel
      # as the matrix it is, on its input's rows.
      shape = layer.kernel.shape if conv else layer.flat_shape
      num_candidates = candidates_per_neuron * shape[-1]
      draw_from = base_init or layer.kernel_init or _NNX_DEFAULT_INIT
      if elect == "random":
        init = campaign.random_pick_init(num_candidates=num_candidates,
                                         base_init=draw_from)
      else:
        if conv:
          batch, batch_labels = layer.inputs, _layer_labels(layer, labels, 1)
        else:
          rows, positions = layer.rows()
          batch = rows.reshape(-1, shape[0])
          batch_labels = _layer_labels(layer, labels, positions)
        init = campaign.campaign_init(
            batch, batch_labels, alpha=alphas[layer.index],
            num_candidates=num_candidates, base_init=draw_from,
            activation=activation_of(layer.path),
            class_balanced=class_balanced, num_classes=num_classes,
            bias=_bias_value(layer), chunk_size=chunk_size, **(conv or {}))
      kernel = init(jax.random.fold_in(key, layer.index), shape,
                    layer.kernel.dtype)
      return kernel.reshape(layer.kernel.shape)
    return rule
  return make_rule


# nnx layers do not keep their kernel_init; this is their default.
_NNX_DEFAULT_INIT = nnx.initializers.lecun_normal()

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
    progress: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """Initializes a flax.linen model with every kernel elected by a campaign.

  `init_key, campaign_key = jax.random.split(key)`; `model.init(init_key, x[:2])`
  gives every variable its own init, then one forward pass of `x` visits the
  `Dense`, `DenseGeneral` and `Conv` layers in call order. Layer `i`
  (counting the layers taking part) gets `campaign_init(inputs_i, y,
  ...)(jax.random.fold_in(campaign_key, i), shape, dtype)`, where `inputs_i`
  is its input in that pass, produced by the layers already elected
  (docs/algorithm.md#whole-models). Dropout is off during the pass. A `Conv`
  is elected in its own layout with its strides, padding and dilation
  (grouped convolutions raise: leave them out with `layers=`); a
  `DenseGeneral` as the matrix of its contracted axes. A layer whose input
  has extra axes (tokens, positions) is scored on every one, each with its
  example's label. `ConvTranspose`, `ConvLocal` and `Einsum` keep their own
  init, with one warning naming them.

  Args:
    model: a flax.linen module.
    key: a PRNG key or an int seed.
    x: the batch the campaign is scored on, as the model's `__call__` takes it.
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
    progress: show a tqdm bar over layers, naming each.
    model_kwargs: keyword arguments for the model's `__call__` (e.g.
      `{"train": False}`).

  Returns:
    The variables, as `model.init` returns them, with the elected kernels.

  Raises:
    ValueError, TypeError: for a model without weight layers, an `x` the model
      cannot take, `y` of another length than `x`, or malformed options.

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
  init_key, campaign_key = jax.random.split(validation.as_key(key))
  make_rule = _campaign_rule(
      campaign_key, labels, num_classes, alpha=alpha, activation=activation,
      candidates_per_neuron=candidates_per_neuron, base_init=base_init,
      class_balanced=class_balanced, chunk_size=chunk_size, elect=elect)
  return traversal.walk_linen(model, init_key, x, make_rule, layers=layers,
                              progress=progress, desc="campaign",
                              model_kwargs=model_kwargs)


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
    progress: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
) -> None:
  """Elects every kernel of a flax.nnx model by a campaign, in place.

  One forward pass of `x` visits the `nnx.Linear`, `nnx.LinearGeneral` and
  `nnx.Conv` layers in call order; layer
  `i` (counting the layers taking part) gets `campaign_init(inputs_i, y,
  ...)(jax.random.fold_in(key, i), shape, dtype)`, as in `campaign_linen`
  with `key` in the role of its `campaign_key`, so the two give the same
  kernels for the same architecture. Dropout is off during the pass and
  every other variable (biases, batch statistics, RNG state) is left as it was.

  Args:
    model: a flax.nnx module, already constructed.
    x: the batch the campaign is scored on, as the model's `__call__` takes it.
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
    progress: show a tqdm bar over layers, naming each.
    model_kwargs: keyword arguments for the model's `__call__` (e.g.
      `{"train": False}`).

  Raises:
    ValueError, TypeError: for a model without weight layers, an `x` the model
      cannot take, `y` of another length than `x`, or malformed options.

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
      validation.as_key(key), labels, num_classes, alpha=alpha,
      activation=activation,
      candidates_per_neuron=candidates_per_neuron, base_init=base_init,
      class_balanced=class_balanced, chunk_size=chunk_size, elect=elect)
  traversal.walk_nnx(model, x, make_rule, layers=layers, progress=progress,
                     desc="campaign", model_kwargs=model_kwargs)

