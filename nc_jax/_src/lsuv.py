"""LSUV: layer-sequential unit-variance init, on the campaign's walk."""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import numbers
from typing import Any

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from nc_jax._src import conv
from nc_jax._src import patches
from nc_jax._src import placement
from nc_jax._src import traversal
from nc_jax._src import validation
from nc_jax._src.report import WalkReport


@dataclasses.dataclass(frozen=True)
class _LsuvRule(traversal.Rule):
  """Orthogonal pre-init (or the layer's current kernel), then rescale until
  the output variance is 1: a compiled loop on the layer alone, on its
  captured input."""
  tol: float
  max_iters: int
  orthogonal: bool

  def __call__(
      self, layer: traversal.Layer, key: jax.Array,
      labels: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
    del labels
    spec = layer.spec
    dtype = layer.kernel.dtype
    if self.orthogonal:  # drawn in float32: CPU's QR takes no 16-bit floats
      kernel = _ORTHOGONAL(
          jax.random.fold_in(key, spec.index), spec.flat_shape,
          jnp.float32).astype(dtype).reshape(spec.kernel_shape)
    else:
      kernel = layer.kernel

    variance = _output_variance(layer, kernel)

    def settled(v):  # within tol, or dead: a kernel that cannot be scaled
      return (jnp.abs(v - 1.0) < self.tol) | ~jnp.isfinite(v) | (v == 0.0)

    def rescale(carry):
      k, v, i = carry
      k = (k / jnp.sqrt(v).astype(dtype)).astype(dtype)
      return k, variance(k), i + 1

    kernel, v, iterations = jax.lax.while_loop(
        lambda c: (c[2] < self.max_iters) & ~settled(c[1]), rescale,
        (kernel, variance(kernel), jnp.int32(0)))
    return kernel, {
        "lsuv_iterations": iterations,
        "converged": jnp.abs(v - 1.0) < self.tol,
        "variance": v
    }


def _output_variance(layer: traversal.Layer,
                     start: jax.Array) -> Callable[[jax.Array], jax.Array]:
  """The variance of the layer's output on its input, over samples and
  channels, as a function of a kernel that is `start` rescaled (all the
  loop tries), with no output written out.

  Per output channel c (a kernel column w_c, bias b_c), the variance splits
  into the channels' own spread and that of their means:
  `mean_c(var_c) + var_c(mean_c)`. The means are linear in the input, so
  they come from the layer applied to the batch's mean example. The
  within-channel part takes one pass over the batch: for a layer with no
  more inputs than outputs per position (`d <= F`, e.g. a first convolution
  on 1-3 channels) the d x d patch moments (`var_c = w_c^T C w_c`, for any
  kernel); otherwise the centered output of `start`, squared and summed in
  the pass that computes it (XLA fuses it: the output is never stored), and
  for `t * start` it is `t^2` that.
  """
  spec = layer.spec
  d, f = spec.flat_shape
  if d <= f:
    return _patch_moment_variance(layer)
  mean_input = jnp.mean(
      layer.inputs.astype(jnp.float32), axis=0,
      keepdims=True).astype(layer.inputs.dtype)
  features = len(spec.kernel_shape) - spec.geometry.kernel_in_axes

  def channel_means(kernel):  # kept with the output's rank (no reshape)
    out = layer.outputs(kernel, mean_input).astype(jnp.float32)
    return jnp.mean(out, tuple(range(out.ndim - features)), keepdims=True)

  means = channel_means(start)
  # Reduced to the channels on the output's own axes: a reshape between the
  # layer and the reduction would keep XLA from fusing them.
  out = layer.outputs(start).astype(jnp.float32)
  within = jnp.mean(
      jnp.mean(jnp.square(out - means), tuple(range(out.ndim - features))))
  start = start.astype(jnp.float32)
  start_sq = jnp.vdot(start, start)

  def variance(kernel: jax.Array) -> jax.Array:
    along = jnp.vdot(kernel.astype(jnp.float32), start)
    scale = jnp.where(start_sq > 0, along / start_sq, 0.0)
    return jnp.square(scale) * within + jnp.var(channel_means(kernel))

  return variance


def _patch_moment_variance(
    layer: traversal.Layer) -> Callable[[jax.Array], jax.Array]:
  """`_output_variance` of a layer with `d <= F`: from the moments of its
  input patches, `mean_c(w_c^T C w_c) + var_c(mu . w_c + b_c)`, summed once
  (no more work than one output)."""
  spec = layer.spec
  d, f = spec.flat_shape
  rows, positions = layer.rows()
  if spec.geometry.conv is None:  # every position a row of the flat kernel
    rows, positions, shape, geometry = rows.reshape(-1, d), 1, (d, f), None
  else:
    shape = spec.kernel_shape
    geometry = conv.conv_spec(rows.shape, shape, **spec.geometry.conv_options)
  chunk_size = placement.auto_chunk_size(None, rows.shape[0], d,
                                         placement.platform(rows), positions)
  moments = patches.patch_moments(
      rows.astype(jnp.float32),
      None,
      shape,
      geometry,
      center=True,
      chunk_size=chunk_size,
      row_sharding=layer.row_sharding)
  bias = (
      jnp.zeros(f, jnp.float32)
      if layer.bias is None else layer.bias.reshape(f).astype(jnp.float32))

  def variance(kernel: jax.Array) -> jax.Array:
    w = kernel.reshape(d, f).astype(jnp.float32) / moments.down
    within = jnp.sum(w * placement.exact_matmul(moments.cov, w), axis=0)
    means = placement.exact_matmul(moments.mean, w) + bias
    return jnp.mean(within) + jnp.var(means)

  return variance


_ORTHOGONAL = jax.nn.initializers.orthogonal()


def _lsuv_rule(tol: float, max_iters: int,
               orthogonal: bool) -> traversal.RuleFactory:
  if (not isinstance(tol, numbers.Real) or isinstance(tol, bool) or
      not 0 < tol < 1):
    raise ValueError(f"`tol` must be a float in (0, 1), got {tol!r}.")
  validation.check_positive_int(max_iters, "max_iters")
  if not isinstance(orthogonal, bool | np.bool_):
    raise TypeError(f"`orthogonal` must be True or False, got {orthogonal!r}.")
  rule = _LsuvRule(float(tol), int(max_iters), bool(orthogonal))
  return lambda plan: rule


@placement.eager_on_auto_axes
def lsuv_linen(
    model: nn.Module,
    key: jax.Array | int,
    x: ArrayLike,
    *,
    tol: float = 0.1,
    max_iters: int = 10,
    layers: traversal.LayerFilter = None,
    progress: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
    variables: Mapping[str, Any] | None = None,
    report: bool = False,
) -> dict[str, Any] | tuple[dict[str, Any], WalkReport]:
  """Initializes a flax.linen model by LSUV on a batch.

  Mishkin & Matas (ICLR 2016): every kernel (Dense, DenseGeneral, Conv) is
  drawn orthogonal, then, layer by layer in call order, divided by the
  standard deviation of the layer's output on the batch until that variance
  is 1 within `tol` (at most `max_iters` rescalings; a layer left outside
  `tol` is a warning naming it). The variance comes from one pass of the
  layer's own call over its captured input that never writes the output out
  (docs/algorithm.md, "Whole models"), then a compiled loop on that layer
  alone: the walk is `campaign_linen`'s (one compiled program, also inside
  the caller's `jax.jit`), with this rule instead of the election.
  `init_key, lsuv_key = jax.random.split(key)`;
  `model.init(init_key, x[:2])` initializes everything else and layer `i`'s
  orthogonal draw uses `jax.random.fold_in(lsuv_key, i)`.

  Args:
    model: a flax.linen module.
    key: a PRNG key or an int seed.
    x: the batch, as the model's `__call__` takes it.
    tol: tolerance on the output variance, `|var - 1| < tol`.
    max_iters: most rescalings per layer.
    layers: which weight layers take part (None: all; a collection of paths or
      a predicate on the path); the others keep the model's init.
    progress: show a tqdm bar over layers, naming each.
    model_kwargs: keyword arguments for the model's `__call__`.
    report: also return a `WalkReport`, a row per layer (rescalings, whether
      the variance ended within `tol`, output std before and after).
    variables: start from these variables (e.g. `campaign_linen`'s) instead
      of `model.init` and orthogonal kernels: each layer's own kernel is
      rescaled to unit output variance, its direction kept.

  Returns:
    The variables, as `model.init` returns them, with the LSUV kernels;
    with `report=True`, `(variables, report)`.

  Raises:
    ValueError, TypeError: for a model without weight layers, an `x` the model
      cannot take, or malformed options.

  Examples:
    >>> import jax
    >>> import flax.linen as nn
    >>> import nc_jax
    >>> x = jax.random.normal(jax.random.key(0), (256, 20))
    >>> model = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(4)])
    >>> variables = nc_jax.lsuv_linen(model, jax.random.key(1), x,
    ...                               progress=False)
    >>> h = x @ variables["params"]["layers_0"]["kernel"]
    >>> bool(abs(h.var() - 1) < 0.1)
    True

  References:
    Mishkin & Matas, "All you need is a good init", ICLR 2016,
    https://arxiv.org/abs/1511.06422.
  """
  x, _, _ = validation.check_model_batch(x, None, None)
  rule = _lsuv_rule(tol, max_iters, orthogonal=variables is None)
  out, made = traversal.walk_linen(
      model,
      validation.as_key(key),
      x,
      None,
      rule,
      layers=layers,
      progress=progress,
      desc="LSUV",
      model_kwargs=model_kwargs,
      report=bool(report),
      variables=variables)
  return (out, made) if report else out


@placement.eager_on_auto_axes
def lsuv_nnx(
    model: nnx.Module,
    x: ArrayLike,
    *,
    key: jax.Array | int = 0,
    tol: float = 0.1,
    max_iters: int = 10,
    layers: traversal.LayerFilter = None,
    progress: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
    orthogonal: bool = True,
    report: bool = False,
) -> WalkReport | None:
  """Initializes a flax.nnx model's kernels by LSUV on a batch, in place.

  As `lsuv_linen`, with `key` in the role of its `lsuv_key`: layer `i`'s
  orthogonal draw uses `jax.random.fold_in(key, i)`. Every other variable is
  left as it was.

  Args:
    model: a flax.nnx module, already constructed.
    x: the batch, as the model's `__call__` takes it.
    key: a PRNG key or an int seed.
    tol: tolerance on the output variance, `|var - 1| < tol`.
    max_iters: most rescalings per layer.
    layers: which weight layers take part (None: all; a collection of paths or
      a predicate on the path); the others keep their init.
    progress: show a tqdm bar over layers, naming each.
    model_kwargs: keyword arguments for the model's `__call__`.
    orthogonal: draw orthogonal kernels first (LSUV); False rescales the
      model's current kernels (e.g. `campaign_nnx`'s), directions kept.
    report: also return a `WalkReport`, a row per layer (rescalings, whether
      the variance ended within `tol`, output std before and after).

  Returns:
    None (the model is updated in place), or with `report=True` the
    `WalkReport`.

  Raises:
    ValueError, TypeError: for a model without weight layers, an `x` the model
      cannot take, or malformed options.

  Examples:
    >>> import jax
    >>> from flax import nnx
    >>> import nc_jax
    >>> x = jax.random.normal(jax.random.key(0), (256, 20))
    >>> model = nnx.Sequential(nnx.Linear(20, 16, rngs=nnx.Rngs(0)),
    ...                        jax.nn.relu, nnx.Linear(16, 4, rngs=nnx.Rngs(1)))
    >>> nc_jax.lsuv_nnx(model, x, progress=False)
    >>> bool(abs(model.layers[0](x).var() - 1) < 0.1)
    True

  References:
    Mishkin & Matas, "All you need is a good init", ICLR 2016,
    https://arxiv.org/abs/1511.06422.
  """
  x, _, _ = validation.check_model_batch(x, None, None)
  return traversal.walk_nnx(
      model,
      validation.as_key(key),
      x,
      None,
      _lsuv_rule(tol, max_iters, orthogonal),
      layers=layers,
      progress=progress,
      desc="LSUV",
      model_kwargs=model_kwargs,
      report=bool(report))
