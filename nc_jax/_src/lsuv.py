"""LSUV: layer-sequential unit-variance init, on the campaign's walk."""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import numbers
from typing import Any

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from nc_jax._src import output_variance
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

    variance = output_variance.output_variance(layer, kernel)

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
    x: the batch: one array, the model's first argument (other inputs go by
      keyword through `model_kwargs`).
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
      cannot take or with NaN or infinite entries, or malformed options.

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
    x: the batch: one array, the model's first argument (other inputs go by
      keyword through `model_kwargs`).
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
      cannot take or with NaN or infinite entries, or malformed options.

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
