"""Layer-sequential traversal of Flax models, compiled: one walk, any rule.

The walk runs the model's own forward pass on the batch and stops at every
weight layer (`Dense`, `DenseGeneral`, `Conv`; nnx `Linear`,
`LinearGeneral`, `Conv`) in the order the forward pass calls it. A rule sees
the layer's real input, as produced by the layers already set, and returns
the layer's new kernel; the forward pass then goes on with it. The campaign
and LSUV are two rules on this one walk (docs/algorithm.md#whole-models).

A walk has two phases:

1. **The plan**, before any work: one abstract pass (`jax.eval_shape`, no
   computation, nothing compiled) finds the weight layers in call order,
   their geometry, the layers the walk leaves alone, and every layer the
   rule refuses, so that all errors name their layer and come first.
2. **The walk**, one compiled program (`jax.jit`, keyed by the model, the
   plan and the rule): `model.init` (linen), the forward pass, and each
   layer's rule on its captured input, all traced together, so nothing runs
   op by op and nothing waits on the host between layers. Called inside the
   user's own `jax.jit` the program is simply inlined.

Inputs are captured and kernels replaced with the frameworks' own mechanisms:
`flax.linen.intercept_methods` for linen; for nnx, `nnx.split`/`nnx.merge`
and the weight layers' `__call__` wrapped for the pass. A layer is caught at
flax's own call, the one that multiplies its kernel, so a subclass that
transforms its input before `super().__call__` is scored on what its kernel
sees. Every module whose call takes `deterministic` (dropout, attention
dropout, user modules that follow the convention) runs deterministically;
nothing but the kernels changes in the model.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
import dataclasses
import functools
import inspect
import itertools
import math
import time
from typing import Any, Hashable

from flax import nnx
from flax.core import tracers as flax_tracers
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm.auto as tqdm

from nc_jax._src import output_variance
from nc_jax._src import placement
from nc_jax._src import report as report_lib
from nc_jax._src import validation
from nc_jax._src.types import Initializer

LayerFilter = Callable[[str], bool] | Collection[str] | None


@dataclasses.dataclass(frozen=True)
class Geometry:
  """How a weight layer's kernel meets its input.

  Attributes:
    input_axes: for a dense layer, the input axes the kernel contracts,
      non-negative, in order (the last axis for `Dense`; `axis` for
      `DenseGeneral`); for a convolution, its spatial and feature axes.
    kernel_in_axes: how many leading kernel axes are contracted (fan_in is
      their product; the rest is fan_out).
    conv: for a convolution, `campaign_init`'s convolution options as the
      layer applies them, as sorted `(name, value)` pairs; None for a dense
      layer.
  """
  input_axes: tuple[int, ...]
  kernel_in_axes: int
  conv: tuple[tuple[str, Hashable], ...] | None = None

  @property
  def conv_options(self) -> dict[str, Any] | None:
    return None if self.conv is None else dict(self.conv)


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """What the plan knows of a weight layer before any work.

  Attributes:
    path: the layer's path in the model, "/"-joined (e.g. "Dense_0",
      "blocks/0/linear").
    index: its position among the layers that take part, in call order.
    kernel_shape: its kernel's shape: `(fan_in, fan_out)` for `Dense`,
      `(*window, in, features)` for `Conv`, `(*contracted, *features)` for
      `DenseGeneral`.
    input_shape: its input's shape in the plan's pass, batch axis included.
    geometry: how the kernel meets the input.
    kernel_init: the layer's own kernel initializer, or None where the
      framework does not record it (nnx).
  """
  path: str
  index: int
  kernel_shape: tuple[int, ...]
  input_shape: tuple[int, ...]
  geometry: Geometry
  kernel_init: Initializer | None

  @property
  def flat_shape(self) -> tuple[int, int]:
    """The kernel as a matrix: `(fan_in, fan_out)`."""
    k = self.geometry.kernel_in_axes
    return (math.prod(self.kernel_shape[:k]), math.prod(self.kernel_shape[k:]))


@dataclasses.dataclass(frozen=True)
class Layer:
  """One weight layer as the compiled walk reaches it, handed to a rule.

  Attributes:
    spec: what the plan knows of it.
    inputs: its input on the batch, `(m, ...)` (traced).
    kernel: its current kernel, in the parameter dtype.
    bias: its current bias, or None.
    outputs: `outputs(kernel, inputs=None)` runs the layer's own call with
      the given kernel on its captured input (or on `inputs`, of the same
      shape past the batch axis) and returns its output; traceable inside any
      transform.
    row_sharding: `(mesh, axes)` when the walk's batch is split along its
      rows over several devices (its layers' inputs are too), else None.
  """
  spec: LayerSpec
  inputs: jax.Array
  kernel: jax.Array
  bias: jax.Array | None
  outputs: Callable[..., jax.Array]
  row_sharding: placement.RowSharding | None = None

  def rows(self) -> tuple[jax.Array, int]:
    """The input as the `(m, positions, fan_in)` rows a dense layer's kernel
    multiplies, and the positions per example: the contracted axes moved
    last and flattened (a convolution's: its images, every axis before the
    spatial ones flattened into the batch)."""
    axes = self.spec.geometry.input_axes
    if self.spec.geometry.conv is not None:
      images = self.inputs.reshape(-1, *self.inputs.shape[axes[0]:])
      return images, images.shape[0] // self.inputs.shape[0]
    moved = jnp.moveaxis(self.inputs, axes, tuple(range(-len(axes), 0)))
    rows = moved.reshape(moved.shape[0], -1, self.spec.flat_shape[0])
    return rows, rows.shape[1]


@dataclasses.dataclass(frozen=True)
class Plan:
  """The weight layers a walk will visit, known before the first rule runs."""
  layers: tuple[LayerSpec, ...]  # taking part, in call order
  output: str  # the last weight layer the forward pass calls

  @property
  def paths(self) -> tuple[str, ...]:
    return tuple(layer.path for layer in self.layers)


class Rule:
  """A per-layer rule: hashable (it keys the compiled walk), traceable.

  Subclasses are frozen dataclasses; `__call__` runs inside the compiled
  walk, `refusal` at plan time.
  """

  def refusal(self, spec: LayerSpec) -> str | None:
    """Why the rule cannot handle this layer (raised before any work), or
    None."""
    del spec
    return None

  def describe(self, spec: LayerSpec) -> dict[str, Any]:
    """What the report shows of the layer that is known before the walk."""
    del spec
    return {}

  def __call__(
      self, layer: Layer, key: jax.Array,
      labels: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The layer's new kernel and what the report shows of it."""
    raise NotImplementedError


RuleFactory = Callable[[Plan], Rule]


@dataclasses.dataclass(frozen=True)
class _Found:
  """What a pass saw of one weight layer call."""
  path: str
  kernel_shape: tuple[int, ...]
  input_shape: tuple[int, ...]
  geometry: Geometry | str  # a str: why the walk leaves the layer alone
  kernel_init: Initializer | None


def select_paths(paths: tuple[str, ...],
                 chooser: LayerFilter,
                 name: str = "layers",
                 among: str = "the model's weight layers") -> tuple[str, ...]:
  """The paths `chooser` picks (None: all), in order; `name` and `among`
  word the errors (the argument, and what `paths` are)."""
  if chooser is None:
    return paths
  if callable(chooser):
    chosen = tuple(p for p in paths if chooser(p))
  elif isinstance(chooser, str | Collection):
    if isinstance(chooser, str):
      chooser = (chooser,)
    unknown = sorted(set(chooser) - set(paths))
    if unknown:
      raise ValueError(f"`{name}` names {unknown}, which are not among {among} "
                       f"{list(paths)}.")
    chosen = tuple(p for p in paths if p in chooser)
  else:
    raise TypeError(
        f"`{name}` must be None, a collection of layer paths or a predicate "
        f"on the path, got {type(chooser).__name__}; {among} are "
        f"{list(paths)}.")
  if not chosen:
    raise ValueError(f"`{name}` selects none of {among} {list(paths)}.")
  return chosen


def make_plan(found: Sequence[_Found], layers: LayerFilter,
              lifted: Mapping[str, str],
              make_rule: RuleFactory) -> tuple[Plan, Rule]:
  """Orders the weight layers found, applies the filter, refuses what the
  walk or the rule cannot do (naming the layers), and warns on sharing and
  on the layers the walk leaves as they are."""
  unique = tuple(
      dict.fromkeys([f.path for f in found if not isinstance(f.geometry, str)] +
                    list(lifted)))
  if not unique:
    raise ValueError(
        "the model calls no weight layer the walk handles (Dense, "
        "DenseGeneral, Conv; nnx Linear, LinearGeneral, Conv) on `x`, so "
        "there is nothing to do.")
  chosen = select_paths(unique, layers)
  inside = [p for p in chosen if p in lifted]
  if inside:
    raise ValueError(
        f"layers {inside} are called inside a lifted transform (" +
        "; ".join(f"{p!r}: {lifted[p]}" for p in inside) + "): the walk "
        "sees their input only per step of the transform, not as the layer "
        "multiplies it, so it cannot set them; leave them out with "
        "`layers=` (they keep their own init) or call the layers without "
        "the transform.")
  unsupported = {
      f.path: f.geometry for f in found if isinstance(f.geometry, str)
  }
  if unsupported:
    validation.warn(
        "these layers keep their own init (the walk does not handle them): " +
        "; ".join(f"{p!r} ({why})" for p, why in unsupported.items()))
  first = {}
  for f in found:
    first.setdefault(f.path, f)
  specs = tuple(
      LayerSpec(
          path=p,
          index=i,
          kernel_shape=first[p].kernel_shape,
          input_shape=first[p].input_shape,
          geometry=first[p].geometry,
          kernel_init=first[p].kernel_init) for i, p in enumerate(chosen))
  calls = [f.path for f in found]
  output = [p for p in dict.fromkeys(calls) if p not in unsupported][-1]
  plan = Plan(layers=specs, output=output)
  rule = make_rule(plan)
  refused = {s.path: why for s in specs if (why := rule.refusal(s))}
  if refused:
    raise ValueError(
        "the walk refuses these layers before any work: " +
        "; ".join(f"{p!r}: {why.rstrip('.')}" for p, why in refused.items()) +
        f". Leave them out with `layers=` (they keep their own init), "
        f"e.g. layers=lambda path: path not in {sorted(refused)}.")
  for path in chosen:  # a layer left out keeps its init, however shared
    if calls.count(path) > 1:
      validation.warn(
          f"layer {path!r} is called {calls.count(path)} times with shared"
          " weights; it is set once, on the input of its first call.")
  return plan, rule


def _forward_error(x: Any, error: Exception) -> ValueError:
  return ValueError(
      f"the model could not take `x` of shape {tuple(x.shape)} and dtype "
      f"{x.dtype}: {type(error).__name__}: {error}; pass the batch the model's "
      "`__call__` expects.")


# Layer kinds ------------------------------------------------------------------


def _axes(axis: int | Sequence[int], ndim: int) -> tuple[int, ...]:
  axis = (axis,) if isinstance(axis, int) else tuple(axis)
  return tuple(sorted(a % ndim for a in axis))


def _per_axis(value: Any, rank: int) -> Hashable:
  """A flax conv option as a hashable value (None: flax's default 1)."""
  if value is None:
    return 1
  if isinstance(value, str) or not isinstance(value, Sequence):
    return value
  return tuple(
      _per_axis(v, rank
               ) if isinstance(v, Sequence) and not isinstance(v, str) else v
      for v in value)


def _conv_geometry(module: Any, kernel_shape: tuple[int, ...],
                   input_ndim: int) -> Geometry | str:
  rank = len(kernel_shape) - 2
  if getattr(module, "mask", None) is not None:
    return "a masked convolution"
  if _per_axis(getattr(module, "input_dilation", None),
               rank) not in (1, (1,) * rank):
    return "input dilation"
  options = {
      "strides": _per_axis(module.strides, rank),
      "padding": _per_axis(module.padding, rank),
      "kernel_dilation": _per_axis(module.kernel_dilation, rank),
      "feature_group_count": module.feature_group_count
  }
  return Geometry(
      tuple(range(input_ndim - rank - 1, input_ndim)),
      len(kernel_shape) - 1, tuple(sorted(options.items())))


@dataclasses.dataclass(frozen=True)
class _Kinds:
  """A framework's weight layers, by what the walk does with them."""
  dense: type
  general: type
  conv: type
  batch_attr: str  # the general layer's batch-axes attribute
  unsupported: tuple[type, ...]

  @property
  def all(self) -> tuple[type, ...]:
    return (self.dense, self.general, self.conv, *self.unsupported)


_LINEN = _Kinds(nn.Dense, nn.DenseGeneral, nn.Conv, "batch_dims",
                (nn.ConvTranspose, nn.ConvLocal, nn.Einsum))
_NNX = _Kinds(nnx.Linear, nnx.LinearGeneral, nnx.Conv, "batch_axis",
              (nnx.ConvTranspose, nnx.Einsum))


def _geometry(kinds: _Kinds, module: Any, kernel_shape: tuple[int, ...],
              input_ndim: int) -> Geometry | str:
  """The layer's geometry, or the reason the walk cannot handle it."""
  if isinstance(module, kinds.unsupported):
    return type(module).__name__
  if isinstance(module, kinds.conv):
    return _conv_geometry(module, kernel_shape, input_ndim)
  if isinstance(module, kinds.general):
    if getattr(module, kinds.batch_attr):
      return f"{type(module).__name__} with {kinds.batch_attr}"
    axes = _axes(module.axis, input_ndim)
    return Geometry(axes, len(axes))
  return Geometry((input_ndim - 1,), 1)


@functools.cache
def _deterministic_position(function: Callable) -> int | None:
  """Where a call takes `deterministic` among its arguments after `self`,
  -1 for keyword-only, None if it does not take it."""
  try:
    parameters = list(inspect.signature(function).parameters.values())[1:]
  except (TypeError, ValueError):
    return None
  for i, p in enumerate(parameters):
    if p.name == "deterministic":
      return -1 if p.kind == p.KEYWORD_ONLY else i
  return None


def _deterministic(function: Callable, args: tuple,
                   kwargs: dict) -> tuple[tuple, dict]:
  """`args`, `kwargs` with `deterministic=True` where the call takes it."""
  at = _deterministic_position(_unbound(function))
  if at is None:
    return args, kwargs
  if 0 <= at < len(args):
    return (*args[:at], True, *args[at + 1:]), kwargs
  return args, {**kwargs, "deterministic": True}


def _unbound(function: Callable) -> Callable:
  """The function behind a method linen's interceptors see bound."""
  return getattr(function, "func", function)


def _is_flax_call(function: Callable) -> bool:
  """Whether `function` is a flax layer's own `__call__` (not a subclass's)."""
  return getattr(_unbound(function), "__module__", "").startswith("flax.")


def _flax_call(cls: type) -> Callable:
  """The flax `__call__` a layer class runs: its own, or the flax base's a
  subclass reaches with `super().__call__`."""
  for base in cls.__mro__:
    if "__call__" in vars(base) and _is_flax_call(vars(base)["__call__"]):
      return vars(base)["__call__"]
  raise TypeError(f"{cls.__name__} is not a flax layer.")


def _observe(call_id: jax.Array, index: int, kernel: jax.Array) -> None:
  """Tells the host (progress bar, per-layer seconds) when a kernel is ready."""
  jax.debug.callback(lambda c, k: _Observer.done(int(c), index, k), call_id,
                     jnp.sum(kernel.astype(jnp.float32)))


class _Observer:
  """Progress and per-layer seconds of one eager walk, fed by `_observe`."""

  _live: dict[int, _Observer] = {}
  _ids = itertools.count()

  def __init__(self, plan: Plan, progress: bool, desc: str):
    self.plan = plan
    self.id = next(self._ids) % 2**31
    self.bar = tqdm.tqdm(
        total=len(plan.layers), desc=desc, unit="layer", disable=not progress)
    self.times: dict[int, float] = {}
    self.start = time.perf_counter()
    self._live[self.id] = self

  @classmethod
  def done(cls, call_id: int, index: int, _: Any) -> None:
    observer = cls._live.get(call_id)
    if observer is None or index in observer.times:
      return
    observer.times[index] = time.perf_counter()
    observer.bar.set_postfix_str(observer.plan.layers[index].path)
    observer.bar.update()

  def seconds(self) -> list[float]:
    """Per layer, the time from the previous layer's kernel to its own."""
    jax.effects_barrier()
    ends = [self.times.get(i, math.nan) for i in range(len(self.plan.layers))]
    return list(np.diff([self.start, *ends]))

  def close(self) -> None:
    self._live.pop(self.id, None)
    self.bar.close()


@dataclasses.dataclass(frozen=True)
class _Identity:
  """A static argument keyed by identity, for unhashable models."""
  value: Any

  def __hash__(self) -> int:
    return id(self.value)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, _Identity) and other.value is self.value


def _static(value: Any) -> Hashable:
  try:
    hash(value)
  except TypeError:
    return _Identity(value)
  return value


def _unwrap(value: Hashable) -> Any:
  return value.value if isinstance(value, _Identity) else value


@dataclasses.dataclass(frozen=True)
class _Kwargs:
  """`model_kwargs` split into arrays (traced) and the rest (static)."""
  treedef: Any
  static: tuple[tuple[int, Hashable], ...]

  @classmethod
  def split(
      cls, model_kwargs: Mapping[str, Any] | None
  ) -> tuple[_Kwargs, list[jax.Array]]:
    if model_kwargs is None:
      model_kwargs = {}
    if not isinstance(model_kwargs, Mapping):
      raise TypeError(
          "`model_kwargs` must be a mapping of keyword arguments for the "
          f"model's `__call__`, e.g. {{'train': False}}, got "
          f"{model_kwargs!r}.")
    leaves, treedef = jax.tree.flatten(dict(model_kwargs))
    arrays = [a for a in leaves if isinstance(a, jax.Array | np.ndarray)]
    static = tuple((i, _static(a))
                   for i, a in enumerate(leaves)
                   if not isinstance(a, jax.Array | np.ndarray))
    return cls(treedef, static), arrays

  def join(self, arrays: Sequence[jax.Array]) -> dict[str, Any]:
    leaves, arrays = [], iter(arrays)
    static = dict(self.static)
    for i in range(self.treedef.num_leaves):
      leaves.append(_unwrap(static[i]) if i in static else next(arrays))
    return jax.tree.unflatten(self.treedef, leaves)


@dataclasses.dataclass(frozen=True)
class _Walk:
  """Everything static about one walk: the compiled program's key."""
  model: Hashable
  plan: Plan
  rule: Rule
  kwargs: _Kwargs
  report: bool  # std of each layer's output before and after
  observe: bool  # progress and seconds via host callbacks
  row_sharding: placement.RowSharding | None  # the batch's, if split by rows


def _row_sharding(x: jax.Array) -> placement.RowSharding | None:
  """The batch's `(mesh, axes)` if it is concrete and split along its rows:
  every layer's rows are then scored where they lie (one all-reduce of the
  class sums each)."""
  return placement.placement(x, None)[3]


def _visit(walk: _Walk, spec: LayerSpec, layer_outputs: Callable,
           inputs: jax.Array, kernel: jax.Array, bias: jax.Array | None,
           key: jax.Array, labels: jax.Array | None,
           call_id: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Runs the rule on one layer; returns its kernel and report values."""
  layer = Layer(spec, inputs, kernel, bias, layer_outputs, walk.row_sharding)
  new, values = walk.rule(layer, key, labels)
  new = new.astype(kernel.dtype)
  if walk.report:  # measured in one pass each, no output written out
    std = lambda k: jnp.sqrt(output_variance.output_variance(layer, k)(k))
    values = {"std_before": std(kernel), **values, "std_after": std(new)}
  if walk.observe:
    _observe(call_id, spec.index, new)
  return new, values


# linen ------------------------------------------------------------------------


def _linen_path(module: nn.Module) -> str:
  return "/".join(map(str, module.path))


def _linen_interceptor(on_layer: Callable[..., Any]) -> nn.module.Interceptor:
  """Makes every call that takes `deterministic` deterministic and hands
  every weight layer's flax call to `on_layer`."""
  state = {"busy": False}

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or state["busy"]:
      return next_fun(*args, **kwargs)
    if getattr(module, "deterministic", None) is not None:
      object.__setattr__(module, "deterministic", True)  # frozen dataclass
    else:
      args, kwargs = _deterministic(context.orig_method, args, kwargs)
    if not (isinstance(module, _LINEN.all) and
            _is_flax_call(context.orig_method)):
      return next_fun(*args, **kwargs)
    state["busy"] = True
    try:
      return on_layer(module, next_fun, args, kwargs)
    finally:
      state["busy"] = False

  return interceptor


def _linen_found(module: nn.Module, inputs: jax.Array) -> _Found:
  kernel = module.variables["params"]["kernel"]
  kernel = getattr(kernel, "value", kernel)  # boxed (partitioned) params
  return _Found(
      _linen_path(module), tuple(kernel.shape), tuple(inputs.shape),
      _geometry(_LINEN, module, tuple(kernel.shape), inputs.ndim),
      getattr(module, "kernel_init", None))


def _linen_lifted(module: nn.Module, root_trace: Any) -> str | None:
  if flax_tracers.current_trace() != root_trace:
    return f"{type(module).__name__} under nn.scan, nn.vmap, nn.remat or nn.jit"
  return None


def _linen_plan(model: nn.Module, init_key: jax.Array, x: jax.Array,
                variables: Mapping[str, Any] | None,
                kwargs: dict[str, Any]) -> tuple[list[_Found], dict[str, str]]:
  """The abstract pass: every weight layer call, and those inside lifted
  transforms."""
  found: list[_Found] = []
  lifted: dict[str, str] = {}

  def run(init_key, x, variables):
    root = flax_tracers.current_trace()

    def record(module, next_fun, args, kwargs_):
      out = next_fun(*args, **kwargs_)  # makes the params on init
      why = _linen_lifted(module, root)
      if why:
        lifted[_linen_path(module)] = why
      else:
        found.append(_linen_found(module, args[0]))
      return out

    with nn.intercept_methods(_linen_interceptor(record)):
      if variables is None:
        model.init(init_key, x[:2], **kwargs)
      else:
        model.apply(variables, x[:2], mutable=True, **kwargs)

  jax.eval_shape(run, init_key, x, variables)
  return found, lifted


def _with_input(args: tuple, inputs: jax.Array | None) -> tuple:
  """A layer call's positional arguments with its input replaced, if given."""
  return args if inputs is None else (inputs, *args[1:])


def _linen_outputs(module: nn.Module, args: tuple,
                   kwargs: dict) -> Callable[..., jax.Array]:
  """The layer's own flax call on its captured input (or another), with a
  given kernel, on an unbound copy (usable inside `lax.while_loop`)."""
  params = dict(module.variables["params"])
  copy = module.clone(parent=None)

  def outputs(kernel, inputs=None):
    return copy.apply({"params": {
        **params, "kernel": kernel
    }},
                      *_with_input(args, inputs),
                      method=_flax_call(type(module)),
                      **kwargs)

  return outputs


def _linen_program(walk: _Walk, key, x, labels, variables, kwarg_arrays,
                   call_id):
  init_key, rule_key = jax.random.split(key)
  model = _unwrap(walk.model)
  kwargs = walk.kwargs.join(kwarg_arrays)
  if variables is None:
    variables = _linen_init(model, init_key, x, kwargs)
  specs = {s.path: s for s in walk.plan.layers}
  values: dict[str, dict[str, jax.Array]] = {}

  def set_kernel(module, next_fun, args, kwargs_):
    path = _linen_path(module)
    if path not in specs or path in values:
      return next_fun(*args, **kwargs_)
    params = module.variables["params"]
    new, values[path] = _visit(walk, specs[path],
                               _linen_outputs(module, args, kwargs_), args[0],
                               params["kernel"], params.get("bias"), rule_key,
                               labels, call_id)
    module.put_variable("params", "kernel", new)
    return next_fun(*args, **kwargs_)

  with nn.intercept_methods(_linen_interceptor(set_kernel)):
    _, updated = model.apply(variables, x, mutable=True, **kwargs)
  return ({
      **variables, "params": updated["params"]
  }, _in_plan_order(walk.plan, values))


_compiled_linen = jax.jit(_linen_program, static_argnames=("walk",))


def _in_plan_order(plan: Plan, values: Mapping[str, dict]) -> tuple[dict, ...]:
  missed = [p for p in plan.paths if p not in values]
  if missed:
    raise ValueError(
        f"layers {missed} were called when the walk planned on two examples "
        "but not on the whole batch; the model's forward pass must call the "
        "same layers for any batch size.")
  return tuple(values[p] for p in plan.paths)


def _check_variables(variables: Any, expected: Any) -> dict[str, Any]:
  """`variables` must be the model's: every collection its init makes, with
  the shapes it makes them."""
  if not isinstance(variables, Mapping):
    raise TypeError(
        "`variables` must be the model's variables dict, as `model.init` "
        f"returns it, got {type(variables).__name__}.")
  missing = sorted(set(expected) - set(variables))
  if missing:
    raise ValueError(
        f"`variables` lacks the collections {missing} that the model's init "
        f"makes (it has {sorted(variables)}); pass the whole variables dict, "
        "e.g. campaign_linen's result, not only its params.")
  given = dict(
      jax.tree_util.tree_leaves_with_path({k: variables[k] for k in expected}))
  for path, leaf in jax.tree_util.tree_leaves_with_path(expected):
    have = given.get(path)
    if have is None or tuple(np.shape(have)) != tuple(leaf.shape):
      where = jax.tree_util.keystr(path)
      raise ValueError(
          f"`variables{where}` has shape "
          f"{None if have is None else tuple(np.shape(have))} but the "
          f"model's init on `x` makes {tuple(leaf.shape)}; pass this "
          "model's variables, for a batch shaped like `x`.")
  return dict(variables)


def _pass_through(module, next_fun, args, kwargs):
  del module
  return next_fun(*args, **kwargs)


def _linen_init(model: nn.Module, init_key: jax.Array, x: jax.Array,
                kwargs: Mapping[str, Any]) -> Any:
  """`model.init` on two examples (shapes only), deterministically."""
  with nn.intercept_methods(_linen_interceptor(_pass_through)):
    return model.init(init_key, x[:2], **kwargs)


def walk_linen(
    model: nn.Module,
    key: jax.Array,
    x: jax.Array,
    labels: jax.Array | None,
    make_rule: RuleFactory,
    *,
    layers: LayerFilter,
    progress: bool,
    desc: str,
    model_kwargs: Mapping[str, Any] | None,
    report: bool,
    variables: Mapping[str, Any] | None = None
) -> tuple[dict, report_lib.WalkReport | None]:
  """Initializes a linen model with `model.init` (or takes `variables`),
  then sets its kernels layer by layer with the rule, compiled; returns the
  variables and, if asked, the report."""
  if not isinstance(model, nn.Module):
    raise TypeError(
        f"`model` must be a flax.linen.Module, got {type(model).__name__}; for "
        "flax.nnx models use the `_nnx` function.")
  kwargs_static, kwarg_arrays = _Kwargs.split(model_kwargs)

  def run(key, x, labels, variables, kwarg_arrays):
    kwargs = kwargs_static.join(kwarg_arrays)
    if variables is not None:
      try:
        expected = jax.eval_shape(lambda k, x: _linen_init(model, k, x, kwargs),
                                  key, x)
      except Exception as error:  # the model's own error, re-raised
        raise _forward_error(x, error) from error
      variables = _check_variables(variables, expected)
    try:  # the plan's passes are abstract: any key of its type
      found, lifted = _linen_plan(model, key, x, variables, kwargs)
    except Exception as error:  # the model's own error, re-raised with context
      raise _forward_error(x, error) from error
    return _plan_and_run(
        model,
        found,
        lifted,
        _compiled_linen,
        key,
        x,
        labels,
        variables,
        kwarg_arrays,
        layers=layers,
        make_rule=make_rule,
        kwargs=kwargs_static,
        report=report,
        progress=progress,
        desc=desc)

  return placement.on_auto_axes(run, x)(key, x, labels, variables, kwarg_arrays)


def _plan_and_run(model: Any, found: Sequence[_Found],
                  lifted: Mapping[str, str], program: Callable, key: jax.Array,
                  x: jax.Array, labels: jax.Array | None, *args: Any,
                  layers: LayerFilter, make_rule: RuleFactory, kwargs: _Kwargs,
                  report: bool, progress: bool,
                  desc: str) -> tuple[Any, report_lib.WalkReport | None]:
  """The plan (`make_plan`) and everything static about the compiled walk
  (`model` is the linen module or the nnx graph definition), then the
  compiled walk `program(walk, key, x, labels, *args, call_id)`, with a
  progress bar and seconds when eager."""
  plan, rule = make_plan(found, layers, lifted, make_rule)
  walk = _Walk(
      _static(model),
      plan,
      rule,
      kwargs,
      report,
      observe=(progress or report) and placement.is_concrete(x),
      row_sharding=_row_sharding(x))
  observer = _Observer(walk.plan, progress, desc) if walk.observe else None
  try:
    out, values = program(walk, key, x, labels, *args,
                          jnp.int32(observer.id if observer else 0))
    seconds = observer.seconds() if observer else None
  finally:
    if observer:
      observer.close()
  made = report_lib.WalkReport.build(walk.plan, walk.rule, values, seconds)
  made.check()
  return out, made if walk.report else None


# nnx --------------------------------------------------------------------------


def _nnx_bases(types: Collection[type]) -> set[type]:
  """The flax classes whose `__call__` the given layer types run."""
  return {
      base for cls in types for base in cls.__mro__
      if vars(base).get("__call__") is _flax_call(cls)
  }


def _wrapped(types: Collection[type], wrap: Callable[[Callable], Callable]):
  """Wraps `__call__` of each type for the duration of the block."""
  originals = {cls: vars(cls)["__call__"] for cls in types}

  class _Block:

    def __enter__(self):
      for cls, call in originals.items():
        cls.__call__ = wrap(call)

    def __exit__(self, *_):
      for cls, call in originals.items():
        cls.__call__ = call

  return _Block()


def _nnx_pass(view: nnx.Module, x: jax.Array, on_layer: Callable[..., Any],
              on_copy: Callable[[Any], None], kwargs: Mapping[str,
                                                              Any]) -> None:
  """One forward pass of `view`, deterministic, handing each weight layer's
  flax call to `on_layer` (and a call of a layer not in the graph, a
  lifted transform's copy, to `on_copy`)."""
  modules = [(path, module) for path, module in nnx.iter_modules(view)]
  paths = {
      id(module): "/".join(map(str, path))
      for path, module in modules
      if isinstance(module, _NNX.all)
  }
  layer_bases = _nnx_bases(
      {type(m) for _, m in modules if isinstance(m, _NNX.all)})
  stochastic = {
      base for cls in {type(m) for _, m in modules} for base in cls.__mro__
      if "__call__" in vars(base) and
      _deterministic_position(vars(base)["__call__"]) is not None
  }

  busy = {"on": False}

  def wrap_layer(call):

    def wrapped(self, *args, **kwargs_):
      args, kwargs_ = _deterministic(call, args, kwargs_)
      if busy["on"] or not isinstance(self, _NNX.all):
        return call(self, *args, **kwargs_)
      if id(self) not in paths:
        on_copy(self)
        return call(self, *args, **kwargs_)
      busy["on"] = True
      try:
        return on_layer(paths[id(self)], self, call, args, kwargs_)
      finally:
        busy["on"] = False

    return wrapped

  def wrap_stochastic(call):

    def wrapped(self, *args, **kwargs_):
      args, kwargs_ = _deterministic(call, args, kwargs_)
      return call(self, *args, **kwargs_)

    return wrapped

  with _wrapped(layer_bases, wrap_layer), _wrapped(stochastic - layer_bases,
                                                   wrap_stochastic):
    view(x, **kwargs)


def _nnx_view(model: nnx.Module) -> nnx.Module:
  return nnx.view(model, deterministic=True, raise_if_not_found=False)


def _nnx_kernel_shape(module: Any) -> tuple[int, ...]:
  return tuple(module.kernel.get_value().shape)


def _nnx_found(path: str, module: Any, inputs: jax.Array) -> _Found:
  shape = _nnx_kernel_shape(module)
  return _Found(path, shape, tuple(inputs.shape),
                _geometry(_NNX, module, shape, inputs.ndim), None)


def _nnx_plan(graphdef: Any, state: Any, x: jax.Array,
              kwargs: dict[str, Any]) -> tuple[list[_Found], dict[str, str]]:
  found: list[_Found] = []
  copies: list[str] = []

  def run(state, x):
    view = _nnx_view(nnx.merge(graphdef, state))

    def record(path, module, call, args, kwargs_):
      found.append(_nnx_found(path, module, args[0]))
      return call(module, *args, **kwargs_)

    def copy(module):
      copies.append(f"{type(module).__name__} with kernel "
                    f"{_nnx_kernel_shape(module)}")

    _nnx_pass(view, x[:2], record, copy, kwargs)

  jax.eval_shape(run, state, x)
  lifted = {}
  if copies:  # the graph's layers the pass never called directly
    called = {f.path for f in found}
    model = nnx.merge(graphdef, state)
    for path, module in nnx.iter_modules(model):
      name = "/".join(map(str, path))
      if isinstance(module, _NNX.all) and name not in called:
        lifted[name] = (f"called as copies ({', '.join(sorted(set(copies)))})"
                        " by nnx.scan, nnx.vmap, nnx.remat or nnx.jit")
  return found, lifted


def _nnx_outputs(module: nnx.Module, call: Callable, args: tuple,
                 kwargs: dict) -> Callable[..., jax.Array]:
  """The layer's own flax call on its captured input (or another) with a
  given kernel, on a fresh copy (usable inside `lax.while_loop`)."""
  graphdef, state = nnx.split(module)

  def outputs(kernel, inputs=None):  # new Variables, made in the caller's trace
    copy = nnx.merge(graphdef, jax.tree.map(lambda a: a, state))
    copy.kernel.set_value(kernel)
    return call(copy, *_with_input(args, inputs), **kwargs)

  return outputs


def _nnx_program(walk: _Walk, rule_key, x, labels, state, kwarg_arrays,
                 call_id):
  graphdef = _unwrap(walk.model)
  kwargs = walk.kwargs.join(kwarg_arrays)
  view = _nnx_view(nnx.merge(graphdef, state))
  specs = {s.path: s for s in walk.plan.layers}
  values: dict[str, dict[str, jax.Array]] = {}

  def set_kernel(path, module, call, args, kwargs_):
    if path not in specs or path in values:
      return call(module, *args, **kwargs_)
    bias = None if module.bias is None else module.bias.get_value()
    new, values[path] = _visit(walk, specs[path],
                               _nnx_outputs(module, call, args,
                                            kwargs_), args[0],
                               module.kernel.get_value(), bias, rule_key,
                               labels, call_id)
    module.kernel.set_value(new)
    return call(module, *args, **kwargs_)

  _nnx_pass(view, x, set_kernel, lambda module: None, kwargs)
  return nnx.state(view, nnx.Param), _in_plan_order(walk.plan, values)


_compiled_nnx = jax.jit(_nnx_program, static_argnames=("walk",))


def walk_nnx(model: nnx.Module, key: jax.Array, x: jax.Array,
             labels: jax.Array | None, make_rule: RuleFactory, *,
             layers: LayerFilter, progress: bool, desc: str,
             model_kwargs: Mapping[str, Any] | None,
             report: bool) -> report_lib.WalkReport | None:
  """Sets an nnx model's kernels layer by layer with the rule, compiled, in
  place; returns the report if asked."""
  if not isinstance(model, nnx.Module):
    raise TypeError(
        f"`model` must be a flax.nnx.Module, got {type(model).__name__}; for "
        "flax.linen models use the `_linen` function.")
  kwargs_static, kwarg_arrays = _Kwargs.split(model_kwargs)
  graphdef, state = nnx.split(model)

  def run(state, key, x, labels, kwarg_arrays):
    try:
      found, lifted = _nnx_plan(graphdef, state, x,
                                kwargs_static.join(kwarg_arrays))
    except Exception as error:  # the model's own error, re-raised with context
      raise _forward_error(x, error) from error
    return _plan_and_run(
        graphdef,
        found,
        lifted,
        _compiled_nnx,
        key,
        x,
        labels,
        state,
        kwarg_arrays,
        layers=layers,
        make_rule=make_rule,
        kwargs=kwargs_static,
        report=report,
        progress=progress,
        desc=desc)

  params, made = placement.on_auto_axes(run,
                                        x)(jax.tree.map(placement.auto_axes,
                                                        state), key, x, labels,
                                           kwarg_arrays)
  nnx.update(model,
             jax.tree.map(_placed_like, params, nnx.state(model, nnx.Param)))
  return made


def _placed_like(new: jax.Array, old: Any) -> jax.Array:
  """`new` with the sharding of `old` (its mesh axes' types included) when
  `old` lies on a mesh, eagerly or typed on Explicit axes in a trace: a walk
  leaves a sharded model's parameters sharded as they were."""
  if placement.is_concrete(old):
    if isinstance(getattr(old, "sharding", None), jax.sharding.NamedSharding):
      return jax.device_put(new, old.sharding)
    return new
  sharding = jax.typeof(old).sharding
  if jax.sharding.AxisType.Explicit in sharding.mesh.axis_types and any(
      sharding.spec):
    return jax.sharding.reshard(new, sharding)
  return new
