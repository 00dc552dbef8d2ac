"""Layer-sequential traversal of Flax models: one walk, any per-layer rule.

The walk runs the model's own forward pass on the batch and stops at every
weight layer (`Dense`, `DenseGeneral`, `Conv`; nnx `Linear`, `LinearGeneral`,
`Conv`) in the order the forward pass calls it. A rule sees the layer's real input, as produced by the layers
already set, and returns the layer's new kernel; the forward pass then goes on
with it. The campaign (`campaign_linen`) and LSUV (`lsuv_linen`) are two rules
on this one walk.

Inputs are captured and kernels replaced with the frameworks' own mechanisms:
`flax.linen.intercept_methods` for linen, and for nnx a graph traversal
(`nnx.iter_modules`) with the weight layers' `__call__` wrapped for the pass,
the mechanism `nnx.capture` itself uses. Dropout is deterministic during the
walk; nothing but the elected kernels changes in the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import tqdm.auto as tqdm
from flax import nnx

from nc_jax._src import placement
from nc_jax._src.types import Initializer

LayerFilter = Callable[[str], bool] | Collection[str] | None


@dataclasses.dataclass(frozen=True)
class Geometry:
  """How a weight layer's kernel meets its input.

  Attributes:
    input_axes: the input axes the kernel contracts, non-negative, in order
      (the last axis for `Dense` and `Conv`; `axis` for `DenseGeneral`).
    kernel_in_axes: how many leading kernel axes are contracted (fan_in is
      their product; the rest is fan_out).
    conv: for a convolution, `campaign_init`'s convolution options as the
      layer applies them (`strides`, `padding`, `kernel_dilation`,
      `feature_group_count`); None for a dense layer.
  """
  input_axes: tuple[int, ...]
  kernel_in_axes: int
  conv: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Layer:
  """One weight layer as the walk reaches it, handed to a rule.

  Attributes:
    path: the layer's path in the model, "/"-joined (e.g. "Dense_0",
      "blocks/0/linear").
    index: its position among the layers that take part, in call order.
    inputs: its input on the batch, `(m, ...)`.
    kernel: its current kernel, in the parameter dtype: `(fan_in, fan_out)`
      for `Dense`, `(*window, in, features)` for `Conv`, `(*contracted,
      *features)` for `DenseGeneral`.
    bias: its current bias, or None.
    kernel_init: the layer's own kernel initializer, or None where the
      framework does not record it (nnx).
    outputs: `outputs(kernel)` runs the layer's own call on `inputs` with the
      given kernel and returns its output.
    geometry: how the kernel meets the input.
  """
  path: str
  index: int
  inputs: jax.Array
  kernel: jax.Array
  bias: jax.Array | None
  kernel_init: Initializer | None
  outputs: Callable[[jax.Array], jax.Array]
  geometry: Geometry

  @property
  def flat_shape(self) -> tuple[int, int]:
    """The kernel as a matrix: `(fan_in, fan_out)`."""
    k = self.geometry.kernel_in_axes
    return (math.prod(self.kernel.shape[:k]), math.prod(self.kernel.shape[k:]))

  def rows(self) -> tuple[jax.Array, int]:
    """A dense layer's input as `(m, positions, fan_in)` rows and positions:
    the contracted axes moved last and flattened."""
    axes = self.geometry.input_axes
    moved = jnp.moveaxis(self.inputs, axes,
                         tuple(range(-len(axes), 0)))
    rows = moved.reshape(moved.shape[0], -1, self.flat_shape[0])
    return rows, rows.shape[1]


@dataclasses.dataclass(frozen=True)
class Plan:
  """The weight layers a walk will visit, known before the first rule runs."""
  paths: tuple[str, ...]    # taking part, in call order
  output: str               # the last weight layer the forward pass calls


Rule = Callable[[Layer], jax.Array]
RuleFactory = Callable[[Plan], Rule]


def _plan(calls: Sequence[str], layers: LayerFilter,
          unsupported: Mapping[str, str]) -> Plan:
  """Orders the weight layers found, applies the filter, warns on sharing
  and on the layers the walk leaves as they are."""
  if unsupported:
    warnings.warn(
        "these layers keep their own init (the walk does not handle them): "
        + "; ".join(f"{path!r} ({why})" for path, why in unsupported.items()),
        stacklevel=4)
  if not calls:
    raise ValueError(
        "the model calls no weight layer the walk handles (Dense, "
        "DenseGeneral, Conv; nnx Linear, LinearGeneral, Conv) on `x`, so "
        "there is nothing to do.")
  unique = tuple(dict.fromkeys(calls))
  if layers is None:
    chosen = unique
  elif callable(layers):
    chosen = tuple(p for p in unique if layers(p))
  else:
    if isinstance(layers, str):
      layers = (layers,)
    unknown = sorted(set(layers) - set(unique))
    if unknown:
      raise ValueError(
          f"`layers` names {unknown}, which the model does not call; its weight "
          f"layers are {list(unique)}.")
    chosen = tuple(p for p in unique if p in layers)
  if not chosen:
    raise ValueError(
        f"`layers` selects none of the model's weight layers {list(unique)}.")
  for path in chosen:  # a layer left out keeps its init, however shared
    if calls.count(path) > 1:
      warnings.warn(
          f"layer {path!r} is called {calls.count(path)} times with shared"
          " weights; it is set once, on the input of its first call.",
          stacklevel=4)
  return Plan(paths=chosen, output=unique[-1])


class _Walker:
  """Visits each weight layer once, in call order, and applies the rule."""

  def __init__(self, plan: Plan, rule: Rule, progress: bool, desc: str):
    self._plan = plan
    self._rule = rule
    self._seen: set[str] = set()
    self._bar = tqdm.tqdm(total=len(plan.paths), desc=desc, unit="layer",
                          disable=not progress)

  def visit(self, path: str, inputs: jax.Array, kernel: jax.Array,
            bias: jax.Array | None, kernel_init: Initializer | None,
            outputs: Callable[[jax.Array], jax.Array],
            geometry: Geometry) -> jax.Array | None:
    """Returns the layer's new kernel, or None to leave it as it is."""
    if path in self._seen or path not in self._plan.paths:
      return None
    self._seen.add(path)
    if not placement.is_concrete(inputs):
      raise ValueError(
          f"layer {path!r} is called inside a JAX transformation (jit, "
          "scan, vmap, remat); the walk needs concrete inputs, so call the "
          "whole-model functions outside any transformation and use models "
          "without lifted transforms around weight layers.")
    self._bar.set_postfix_str(path)
    kernel = self._rule(Layer(
        path=path, index=self._plan.paths.index(path), inputs=inputs,
        kernel=kernel, bias=bias, kernel_init=kernel_init, outputs=outputs,
        geometry=geometry))
    self._bar.update()
    return kernel

  def close(self) -> None:
    self._bar.close()


def _forward_error(x: jax.Array, error: Exception) -> ValueError:
  return ValueError(
      f"the model could not take `x` of shape {tuple(x.shape)} and dtype "
      f"{x.dtype}: {type(error).__name__}: {error}; pass the batch the model's "
      "`__call__` expects.")


# linen ------------------------------------------------------------------------


def _axes(axis: int | Sequence[int], ndim: int) -> tuple[int, ...]:
  axis = (axis,) if isinstance(axis, int) else tuple(axis)
  return tuple(sorted(a % ndim for a in axis))


def _conv_options(module: Any) -> dict[str, Any]:
  return {"strides": module.strides or 1, "padding": module.padding,
          "kernel_dilation": module.kernel_dilation or 1,
          "feature_group_count": module.feature_group_count}


def _conv_unsupported(module: Any) -> str | None:
  if module.mask is not None:
    return "a masked convolution"
  if (module.input_dilation or 1) not in (1, (1,) * len(module.kernel_size)):
    return "input dilation"
  return None


@dataclasses.dataclass(frozen=True)
class _Kinds:
  """A framework's weight layers, by what the walk does with them."""
  dense: type
  general: type
  conv: type
  batch_attr: str  # the general layer's batch-axes attribute
  unsupported: tuple[type, ...]


_LINEN = _Kinds(nn.Dense, nn.DenseGeneral, nn.Conv, "batch_dims",
                (nn.ConvTranspose, nn.ConvLocal, nn.Einsum))
_NNX = _Kinds(nnx.Linear, nnx.LinearGeneral, nnx.Conv, "batch_axis",
              (nnx.ConvTranspose, nnx.Einsum))


def _geometry(kinds: _Kinds, module: Any, inputs: jax.Array
              ) -> Geometry | str | None:
  """The layer's geometry; a reason if the walk cannot handle it; None if it
  is not a weight layer."""
  last = (inputs.ndim - 1,)
  if isinstance(module, kinds.dense):
    return Geometry(last, 1)
  if isinstance(module, kinds.general):
    if getattr(module, kinds.batch_attr):
      return f"{type(module).__name__} with {kinds.batch_attr}"
    axes = _axes(module.axis, inputs.ndim)
    return Geometry(axes, len(axes))
  if isinstance(module, kinds.conv):
    return _conv_unsupported(module) or Geometry(
        last, inputs.ndim - 1, _conv_options(module))
  if isinstance(module, kinds.unsupported):
    return type(module).__name__
  return None


def _linen_interceptor(on_layer: Callable[..., None]) -> nn.module.Interceptor:
  """Turns dropout off and hands every weight layer's call to `on_layer`
  first, with its geometry (or the reason it is not handled)."""

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__":
      if isinstance(module, nn.Dropout):  # deterministic dropout is identity
        return args[0]
      geometry = _geometry(_LINEN, module, args[0])
      if geometry is not None:
        on_layer(module, geometry, next_fun, args, kwargs)
    return next_fun(*args, **kwargs)

  return interceptor


def _linen_path(module: nn.Module) -> str:
  return "/".join(map(str, module.path))


def walk_linen(model: nn.Module, key: jax.Array, x: jax.Array,
               make_rule: RuleFactory, *, layers: LayerFilter, progress: bool,
               desc: str, model_kwargs: Mapping[str, Any] | None,
               variables: Mapping[str, Any] | None = None) -> dict:
  """Initializes a linen model with `model.init` (or takes `variables`), then
  sets its kernels layer by layer with the rule; returns the variables."""
  if not isinstance(model, nn.Module):
    raise TypeError(
        f"`model` must be a flax.linen.Module, got {type(model).__name__}; for "
        "flax.nnx models use the `_nnx` function.")
  model_kwargs = dict(model_kwargs or {})
  calls: list[str] = []
  unsupported: dict[str, str] = {}

  def record(module, geometry, *_):
    if isinstance(geometry, str):
      unsupported[_linen_path(module)] = geometry
    else:
      calls.append(_linen_path(module))

  try:
    with nn.intercept_methods(_linen_interceptor(record)):
      if variables is None:
        variables = model.init(key, x[:2], **model_kwargs)  # shapes only
      else:
        variables = dict(variables)
        model.apply(variables, x[:2], mutable=True, **model_kwargs)
  except Exception as error:  # the model's own error, re-raised with context
    raise _forward_error(x, error) from error
  plan = _plan(calls, layers, unsupported)
  walker = _Walker(plan, make_rule(plan), progress, desc)

  def set_kernel(module, geometry, next_fun, args, kwargs):
    if isinstance(geometry, str):
      return
    params = dict(module.variables["params"])

    def outputs(kernel):  # the layer's own call, on an unbound copy
      return module.clone(parent=None).apply(
          {"params": {**params, "kernel": kernel}}, *args, **kwargs)

    new = walker.visit(_linen_path(module), args[0], params["kernel"],
                       params.get("bias"), module.kernel_init, outputs,
                       geometry)
    if new is not None:
      module.put_variable("params", "kernel", new)

  try:
    with nn.intercept_methods(_linen_interceptor(set_kernel)):
      _, updated = model.apply(variables, x, mutable=True, **model_kwargs)
  finally:
    walker.close()
  return {**variables, "params": updated["params"]}


# nnx --------------------------------------------------------------------------


@contextlib.contextmanager
def _wrapped_calls(types: Collection[type],
                   wrap: Callable[[Callable], Callable]) -> Iterator[None]:
  """Wraps `__call__` of each type for the duration of the block."""
  originals = {cls: (cls.__call__, vars(cls).get("__call__")) for cls in types}
  try:
    for cls, (resolved, _) in originals.items():
      cls.__call__ = wrap(resolved)
    yield
  finally:
    for cls, (_, own) in originals.items():
      if own is None:
        del cls.__call__
      else:
        cls.__call__ = own


_NNX_LAYERS = (_NNX.dense, _NNX.general, _NNX.conv, *_NNX.unsupported)


def _nnx_pass(view: nnx.Module, x: jax.Array, on_layer: Callable[..., None],
              model_kwargs: Mapping[str, Any]) -> None:
  """One forward pass of `view`, handing each weight layer's call to
  `on_layer` with its geometry (or the reason it is not handled)."""
  found = [(path, module) for path, module in nnx.iter_modules(view)
           if isinstance(module, _NNX_LAYERS)]
  paths = {id(module): "/".join(map(str, path)) for path, module in found}
  types = {type(module) for _, module in found}

  def wrap(call):
    def wrapped(self, *args, **kwargs):
      if id(self) in paths:
        geometry = _geometry(_NNX, self, args[0])
        if geometry is not None:
          on_layer(paths[id(self)], self, geometry, call, args, kwargs)
      return call(self, *args, **kwargs)
    return wrapped

  with _wrapped_calls(types, wrap):
    view(x, **model_kwargs)


def walk_nnx(model: nnx.Module, x: jax.Array, make_rule: RuleFactory, *,
             layers: LayerFilter, progress: bool, desc: str,
             model_kwargs: Mapping[str, Any] | None) -> None:
  """Sets an nnx model's kernels layer by layer with the rule, in place."""
  if not isinstance(model, nnx.Module):
    raise TypeError(
        f"`model` must be a flax.nnx.Module, got {type(model).__name__}; for "
        "flax.linen models use the `_linen` function.")
  model_kwargs = dict(model_kwargs or {})
  # The pass must leave batch statistics and RNG counts as they were.
  saved = nnx.clone(nnx.state(model, nnx.Not(nnx.Param)))
  view = nnx.view(model, only=nnx.Dropout, deterministic=True,
                  raise_if_not_found=False)
  calls: list[str] = []
  unsupported: dict[str, str] = {}

  def record(path, module, geometry, *_):
    if isinstance(geometry, str):
      unsupported[path] = geometry
    else:
      calls.append(path)

  try:
    _nnx_pass(view, x[:2], record, model_kwargs)
  except Exception as error:  # the model's own error, re-raised with context
    raise _forward_error(x, error) from error
  finally:
    nnx.update(model, saved)
  plan = _plan(calls, layers, unsupported)
  walker = _Walker(plan, make_rule(plan), progress, desc)

  def set_kernel(path, module, geometry, call, args, kwargs):
    if isinstance(geometry, str):
      return

    def outputs(kernel):
      module.kernel.set_value(kernel)
      return call(module, *args, **kwargs)

    kernel = module.kernel.get_value()
    bias = None if module.bias is None else module.bias.get_value()
    new = walker.visit(path, args[0], kernel, bias, None, outputs, geometry)
    module.kernel.set_value(kernel if new is None else new)

  try:
    _nnx_pass(view, x, set_kernel, model_kwargs)
  finally:
    walker.close()
    nnx.update(model, saved)
