"""The models, their initializers and their training: what every run is.

The models are the MLPs of `ARCHS` and the LeNet-style CNN of `CNN_ARCHS`
(`model_for` builds either from its name). Every (architecture, initializer)
pair trains one model per seed with plain SGD
(learning rate 0.1, batch 100, cross-entropy, biases zero), all seeds at once
(`jax.vmap`), one jitted `lax.scan` over the batches per epoch, test error
(and validation error, where the data has a validation split) after every
epoch. Runs with the same seed share the data order across initializers (a
paired design). Initializers go through nc_jax's public whole-model API.

The metric names are defined here once, with their table labels and
decimals, for training, tables, CSV and plots alike.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm.auto as tqdm

import nc_jax
from benchmarks import data as data_lib

ARCHS = {  # hidden widths; ReLU after each, a linear output layer
    "mlp2": (100,),
    "mlp3": (256, 100),
    "mlp5": (32, 32, 32, 32),
}
# The CNN: (conv features per block, dense width); each block a 3x3 Conv,
# ReLU and a 2x2 max-pool, then a ReLU Dense layer and a linear output layer.
CNN_ARCHS = {"cnn": ((32, 64), 128)}
INITS = ("xavier", "he", "lsuv", "xavier+campaign", "he+campaign",
         "xavier+random", "he+random")
# The first weight layer whitened (`nc_jax.whitening_init` of its input, as
# airbench's first conv), the rest He ("whitening") or elected by the
# campaign from He candidates ("whitening+campaign").
WHITENING_INITS = ("whitening", "whitening+campaign")
# The campaign's elected kernels, then rescaled layer by layer to unit output
# variance on the batch as LSUV does (`lsuv_linen(..., variables=...)`): the
# election's directions with LSUV's scale.
LSUV_INITS = ("xavier+campaign+lsuv", "he+campaign+lsuv")
ALL_INITS = INITS + LSUV_INITS + WHITENING_INITS
BASE_INITS = {
    "xavier": nn.initializers.glorot_uniform(),
    "he": nn.initializers.he_normal(),
}
LEARNING_RATE = 0.1
BATCH_SIZE = 100
# One object, so that every run hits `train_epoch`'s compilation cache.
OPTIMIZER = optax.sgd(LEARNING_RATE)
OPTIMIZER_DESCRIPTION = (f"SGD lr {LEARNING_RATE}, batch {BATCH_SIZE}, "
                         "cross-entropy, biases 0")

# Metric names, defined once for training, tables, CSV and plots. Runs on data
# without a validation split have no "val_error" curve.
EPOCH_METRICS = ("train_loss", "test_error", "val_error")
EARLY_EPOCHS = (1, 3, 10)  # the early-training effect is read at these epochs
# The first epoch's minibatch losses, averaged over windows of this many
# steps (`Run.step_loss`): how long a head start lasts, in steps.
STEP_WINDOW = 20


def _metric_labels() -> dict[str, tuple[str, int]]:
  """Every metric's table label and decimals."""
  curves = {"train_loss": ("train loss", 3), "test_error": ("test error %", 2),
            "val_error": ("validation error %", 2)}
  labels = dict(curves)
  for name in ("test_error", "val_error"):
    label, digits = curves[name]
    labels[f"min_{name}"] = (f"min {label}", digits)
    labels[f"final_{name}"] = (f"final {label}", digits)
  labels["best_epoch"] = ("epoch of min", 1)
  labels["test_error_at_best_val"] = (
      "test error % at the epoch of min validation error", 2)
  for epoch in EARLY_EPOCHS:
    for name, (label, digits) in curves.items():
      labels[f"epoch{epoch}_{name}"] = (f"{label} after epoch {epoch}", digits)
  for name, (label, digits) in curves.items():
    labels[f"epoch0_{name}"] = (f"{label} at init", digits)
  labels["epochs_to_2x_best"] = ("epochs to 2x best final test error", 1)
  labels["seconds_to_2x_best"] = ("s to 2x best, init warm", 2)
  labels["seconds_to_2x_best_first_call"] = (
      "s to 2x best, init's first call", 2)
  labels["init_seconds"] = ("init s, median (first seed, incl. compile)", 2)
  return labels


LABELS = {name: label for name, (label, _) in _metric_labels().items()}
DIGITS = {name: digits for name, (_, digits) in _metric_labels().items()}
# Table columns; a metric a run does not have (epoch 10 of a 5-epoch run, or
# validation error without a validation split) is left out (`present`).
SUMMARY_METRICS = ("min_test_error", "best_epoch", "final_test_error",
                   "epochs_to_2x_best", "seconds_to_2x_best",
                   "seconds_to_2x_best_first_call", "init_seconds")
# Time to accuracy (`stats.time_to_target`): epochs, and seconds with the
# initializer's own time, warm and on its first call.
TARGET_METRICS = ("epochs_to_2x_best", "seconds_to_2x_best",
                  "seconds_to_2x_best_first_call")
EARLY_METRICS = tuple(f"epoch{e}_{name}"
                      for name in ("train_loss", "test_error")
                      for e in EARLY_EPOCHS)
FINAL_METRICS = ("min_test_error", "final_test_error")


def conv_as_matmul(lhs: jax.Array, rhs: jax.Array,
                   window_strides: Sequence[int], padding: Any,
                   lhs_dilation: Sequence[int] | None = None,
                   rhs_dilation: Sequence[int] | None = None,
                   dimension_numbers: Any = None,
                   feature_group_count: int = 1,
                   precision: Any = None, **unused: Any) -> jax.Array:
  """`lax.conv_general_dilated` for `nn.Conv`, as shifted slices and a matmul.

  The same convolution (NHWC input, HWIO kernel, stride 1, no dilation, one
  feature group), computed as the image patches (one slice per kernel tap,
  concatenated on the channel axis) times the kernel reshaped to
  `(taps * in_features, features)`. On CPU its gradient is a (batched, under
  `jax.vmap`) matmul, which XLA runs far faster than its convolution's
  gradient; the values match `lax.conv_general_dilated`
  (tests/test_bench_mnist_cnn.py).
  """
  del dimension_numbers, unused  # flax passes NHWC / HWIO
  if (any(s != 1 for s in window_strides) or feature_group_count != 1
      or any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))):
    raise NotImplementedError("conv_as_matmul: stride 1, no dilation, one "
                              "feature group only")
  taps = rhs.shape[:-2]
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:-1], taps, window_strides,
                                      padding)
  x = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
  out = [n - t + 1 for n, t in zip(x.shape[1:-1], taps)]
  patches = jnp.concatenate(
      [x[(slice(None), *(slice(o, o + n) for o, n in zip(offset, out)))]
       for offset in np.ndindex(*taps)], axis=-1)
  return jnp.einsum("...k,kf->...f", patches,
                    rhs.reshape(-1, rhs.shape[-1]), precision=precision)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """`nn.max_pool(x, (2, 2), strides=(2, 2))` on NHWC as a reshape and a max:
  the same values, and on CPU a faster gradient."""
  h, w, c = x.shape[-3:]
  x = x[..., :h // 2 * 2, :w // 2 * 2, :]
  return x.reshape(*x.shape[:-3], h // 2, 2, w // 2, 2, c).max((-4, -2))


class CNN(nn.Module):
  """LeNet-style: per block a 3x3 Conv (SAME), ReLU, 2x2 max-pool; then a
  ReLU Dense layer and a linear output layer; zero biases.

  Takes flat rows of a square one-channel image (784 MNIST pixels become
  28x28x1, 64 digits pixels 8x8x1). Convolutions go through `conv_as_matmul`
  and pooling through `max_pool_2x2`, for speed on CPU.
  """
  features: tuple[int, ...] = (32, 64)
  dense: int = 128
  num_classes: int = 10
  kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    side = round(math.sqrt(x.shape[-1]))
    if side * side != x.shape[-1]:
      raise ValueError(f"CNN: {x.shape[-1]} features are not a square image")
    x = x.reshape(*x.shape[:-1], side, side, 1)
    for features in self.features:
      x = nn.Conv(features, (3, 3), kernel_init=self.kernel_init,
                  conv_general_dilated=conv_as_matmul)(x)
      x = max_pool_2x2(nn.relu(x))
    x = x.reshape(*x.shape[:-3], -1)
    x = nn.relu(nn.Dense(self.dense, kernel_init=self.kernel_init)(x))
    return nn.Dense(self.num_classes, kernel_init=self.kernel_init)(x)


class MLP(nn.Module):
  """ReLU hidden layers, a linear output layer, zero biases."""
  hidden: tuple[int, ...]
  num_classes: int = 10
  kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, kernel_init=self.kernel_init)(x))
    return nn.Dense(self.num_classes, kernel_init=self.kernel_init)(x)


@dataclasses.dataclass(frozen=True)
class Init:
  """An initializer with its options: what the runs of one table row start from.

  Attributes:
    init: one of `ALL_INITS`: a base initializer ("xavier", "he"), "lsuv", a
      campaign with that base's candidates ("he+campaign"), its random-pick
      control ("he+random": `campaign_linen(..., elect="random")`, the same
      candidates picked uniformly at random) or the campaign's kernels
      rescaled by LSUV ("he+campaign+lsuv", `LSUV_INITS`).
    options: keyword arguments for `nc_jax.campaign_linen`, e.g.
      `{"alpha": 0.5}` or `{"candidates_per_neuron": 2}`; of these a
      random-pick control uses only `candidates_per_neuron`.
    score_rows: score the campaign on the first this many training images
      only; None: on all of them.
    labels: False runs the unsupervised campaign (`y=None`).

  Examples:
    >>> Init("he+campaign", {"alpha": 0.5}).name
    'he+campaign alpha=0.5'
    >>> Init("he+campaign", score_rows=500, labels=False).name
    'he+campaign rows=500 y=None'
  """
  init: str
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  score_rows: int | None = None
  labels: bool = True

  def __post_init__(self) -> None:
    if self.init not in ALL_INITS:
      raise ValueError(
          f"unknown initializer {self.init!r}; choose from {ALL_INITS}.")
    plain = self.init.partition("+")[2] == ""
    if plain and (self.options or self.score_rows is not None
                  or not self.labels):
      raise ValueError(
          f"{self.init!r} takes no campaign options; use `X+campaign` or "
          "`X+random` to pass `options`, `score_rows` or `labels`.")

  @property
  def name(self) -> str:
    """The run's name in tables: the initializer, then each option."""
    parts = [self.init, *(f"{k}={v}" for k, v in self.options.items())]
    if self.score_rows is not None:
      parts.append(f"rows={self.score_rows}")
    if not self.labels:
      parts.append("y=None")
    return " ".join(parts)


def as_init(model_init: str | Init) -> Init:
  """An `Init` from itself or from a name in `ALL_INITS` (no options)."""
  return model_init if isinstance(model_init, Init) else Init(model_init)


def model_for(arch: str, num_classes: int = 10,
              kernel_init: Callable[..., jax.Array] =
              nn.initializers.lecun_normal()) -> nn.Module:
  """The model an architecture name stands for: an MLP of `ARCHS` or a CNN
  of `CNN_ARCHS`."""
  if arch in CNN_ARCHS:
    features, dense = CNN_ARCHS[arch]
    return CNN(features, dense, num_classes, kernel_init)
  return MLP(ARCHS[arch], num_classes, kernel_init)


def first_layer(arch: str) -> str:
  """The path of an architecture's first weight layer."""
  return "Conv_0" if arch in CNN_ARCHS else "Dense_0"


def initialize(model_init: str | Init, arch: str, key: jax.Array,
               data: data_lib.Dataset) -> Any:
  """Parameters of one model under one initializer, through the public API.

  The data-dependent initializers (LSUV, campaign, whitening) see the
  training set's first `data.init_rows` images (all by default; fewer with
  `spec.score_rows`); "X+campaign+lsuv" rescales the campaign's kernels with
  `lsuv_linen(..., variables=...)` on the same images, with the same key.
  """
  spec = as_init(model_init)
  base, _, method = spec.init.partition("+")
  whitened = base == "whitening"
  model = model_for(
      arch, data.num_classes,
      BASE_INITS.get("he" if whitened else base,
                     nn.initializers.lecun_normal()))
  if spec.init in BASE_INITS:
    return model.init(key, data.x_train[:1])["params"]
  if spec.init == "lsuv":
    return nc_jax.lsuv_linen(model, key, data.x_init, progress=False)["params"]
  rows = slice(spec.score_rows or data.init_rows)
  method, _, rescale = method.partition("+")
  first = {"whiten": [first_layer(arch)]} if whitened else {}
  if whitened and not method:  # that layer alone; the rest keep He
    first["layers"] = first["whiten"]
  variables = nc_jax.campaign_linen(
      model, key, data.x_train[rows],
      data.y_train[rows] if spec.labels else None, elect=method or "campaign",
      progress=False, **first, **spec.options)
  if rescale == "lsuv":
    variables = nc_jax.lsuv_linen(model, key, data.x_train[rows],
                                  variables=variables, progress=False)
  return variables["params"]


def _loss(model: MLP, params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
  logits = model.apply({"params": params}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@functools.partial(jax.jit, static_argnames=("model", "optimizer"))
def train_epoch(params, opt_state, key, x, y, *, model, optimizer):
  """One epoch for a stack of seeds: a `lax.scan` over shuffled batches.

  Args: params, opt_state and key carry a leading seed axis; x, y are shared.
  Returns the new params and optimizer state and each seed's loss at each
  step, `(seeds, steps)`.
  """
  steps = x.shape[0] // BATCH_SIZE

  def one_seed(params, opt_state, key):
    order = jax.random.permutation(key, x.shape[0])[:steps * BATCH_SIZE]
    batches = order.reshape(steps, BATCH_SIZE)

    def step(carry, rows):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(functools.partial(_loss, model))(
          params, x[rows], y[rows])
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state),
                                               batches)
    return params, opt_state, losses

  return jax.vmap(one_seed)(params, opt_state, key)


def epoch_seconds(arch: str, data: data_lib.Dataset, repeats: int = 3) -> float:
  """One model's training epoch on `data` (one seed, compiled, as
  `train_epoch` runs it), the min over `repeats` timed runs, in seconds."""
  model = model_for(arch, data.num_classes)
  params = jax.tree.map(lambda p: p[None], model.init(
      jax.random.key(0), data.x_train[:1])["params"])
  opt_state = jax.vmap(OPTIMIZER.init)(params)
  keys = jax.random.split(jax.random.key(0), 1)
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  run = lambda: jax.block_until_ready(train_epoch(
      params, opt_state, keys, x, y, model=model, optimizer=OPTIMIZER))
  run()  # compiles
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return min(times)


@functools.partial(jax.jit, static_argnames=("model",))
def error_rate(params, x, y, *, model):
  """Each seed's error on (x, y), in percent."""
  def one_seed(params):
    logits = model.apply({"params": params}, x)
    return 100.0 * jnp.mean(jnp.argmax(logits, -1) != y)
  return jax.vmap(one_seed)(params)


EVAL_CHUNK = 250  # held-out images per forward pass of a CNN (memory)


@functools.partial(jax.jit, static_argnames=("model", "chunk"))
def loss_and_error(params, x, y, *, model, chunk):
  """Each seed's mean cross-entropy and error (percent) on (x, y), computed
  `chunk` images at a time (the last chunk may be shorter)."""
  def one_seed(params):
    def totals(xc, yc):
      logits = model.apply({"params": params}, xc)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, yc)
      return loss.sum(), jnp.sum(jnp.argmax(logits, -1) != yc)
    full = x.shape[0] // chunk * chunk
    loss, wrong = jax.lax.map(
        lambda xy: totals(*xy),
        (x[:full].reshape(-1, chunk, *x.shape[1:]),
         y[:full].reshape(-1, chunk)))
    loss, wrong = loss.sum(), wrong.sum()
    if full < x.shape[0]:
      rest = totals(x[full:], y[full:])
      loss, wrong = loss + rest[0], wrong + rest[1]
    return loss / x.shape[0], 100.0 * wrong / x.shape[0]
  return jax.vmap(one_seed)(params)


@dataclasses.dataclass
class Run:
  """One (architecture, initializer) pair over all seeds.

  `initial` holds the epoch metrics of the initialized parameters, before
  any step (empty unless trained with `at_init=True`): the training loss
  over the whole training set and the held-out errors. `step_loss` holds
  the first epoch's minibatch losses in windows of `STEP_WINDOW` steps. `extra` holds summary
  metrics computed across runs (e.g. `epochs_to_2x_best`).
  """
  arch: str
  init: str                                    # the initializer's name
  seeds: tuple[int, ...]
  init_seconds: np.ndarray                     # (seeds,)
  curves: dict[str, np.ndarray]                # metric -> (seeds, epochs)
  initial: dict[str, np.ndarray] = dataclasses.field(
      default_factory=dict)                    # metric -> (seeds,)
  extra: dict[str, np.ndarray] = dataclasses.field(
      default_factory=dict)                    # summary metric -> (seeds,)
  # The first epoch's minibatch loss, mean per `STEP_WINDOW` steps (the
  # last window may be shorter); None where not recorded.
  step_loss: np.ndarray | None = None          # (seeds, windows)

  @property
  def epochs(self) -> int:
    """The number of epochs trained."""
    return self.curves["test_error"].shape[1]

  def summary(self) -> dict[str, np.ndarray]:
    """Each summary metric per seed (those the run's curves allow)."""
    errors = self.curves["test_error"]
    summary = {
        "min_test_error": errors.min(1),
        "best_epoch": errors.argmin(1) + 1.0,
        "final_test_error": errors[:, -1],
    }
    if "val_error" in self.curves:
      val = self.curves["val_error"]
      summary["min_val_error"] = val.min(1)
      summary["final_val_error"] = val[:, -1]
      # Early stopping on the validation split, read on the test split.
      summary["test_error_at_best_val"] = np.take_along_axis(
          errors, val.argmin(1)[:, None], 1)[:, 0]
    for name, values in self.initial.items():
      summary[f"epoch0_{name}"] = values
    for epoch in EARLY_EPOCHS:
      if epoch <= errors.shape[1]:
        for name, values in self.curves.items():
          summary[f"epoch{epoch}_{name}"] = values[:, epoch - 1]
    summary.update(self.extra)
    summary["init_seconds"] = self.init_seconds
    return summary


def present(runs: Sequence[Run], metrics: Sequence[str]) -> list[str]:
  """The summary metrics, in order, that every run has."""
  summaries = [run.summary() for run in runs]
  return [m for m in metrics if all(m in s for s in summaries)]


def curve_metrics(runs: Sequence[Run]) -> list[str]:
  """The epoch metrics, in order, that every run has a curve of."""
  return [m for m in EPOCH_METRICS if all(m in r.curves for r in runs)]


def train_and_evaluate(arch: str, model_init: str | Init,
                       data: data_lib.Dataset, seeds: Sequence[int],
                       epochs: int,
                       on_epoch: Callable[[int], None] = lambda e: None,
                       at_init: bool = False) -> Run:
  """Trains one model per seed from one initializer; returns the curves.

  Seed `s` uses `init_key, order_key = jax.random.split(jax.random.key(s))`;
  epoch `e` shuffles with `jax.random.fold_in(order_key, e)`, the same for
  every initializer. After each epoch: the mean training loss, the test error
  and, if `data` has a validation split, the validation error. With
  `at_init`, also before any step (`Run.initial`): the loss over the whole
  training set and the held-out errors. A CNN is evaluated `EVAL_CHUNK`
  images at a time (`loss_and_error`).
  """
  spec = as_init(model_init)
  model = model_for(arch, data.num_classes)
  params, init_seconds, order_keys = [], [], []
  for seed in seeds:
    init_key, order_key = jax.random.split(jax.random.key(seed))
    start = time.perf_counter()
    params.append(jax.block_until_ready(initialize(spec, arch, init_key, data)))
    init_seconds.append(time.perf_counter() - start)
    order_keys.append(order_key)
  params = jax.tree.map(lambda *p: jnp.stack(p), *params)
  order_keys = jnp.stack(order_keys)
  opt_state = jax.vmap(OPTIMIZER.init)(params)
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  held_out = {"test_error": (data.x_test, data.y_test)}
  if data.x_val is not None:
    held_out["val_error"] = (data.x_val, data.y_val)
  held_out = {name: tuple(map(jnp.asarray, xy))
              for name, xy in held_out.items()}
  curves = {name: [] for name in ("train_loss", *held_out)}

  def held_out_error(x_eval, y_eval):
    if arch in CNN_ARCHS:
      return loss_and_error(params, x_eval, y_eval, model=model,
                            chunk=EVAL_CHUNK)[1]
    return error_rate(params, x_eval, y_eval, model=model)

  initial = {}
  if at_init:
    initial["train_loss"] = np.asarray(loss_and_error(
        params, x, y, model=model, chunk=EVAL_CHUNK)[0])
    for name, (x_eval, y_eval) in held_out.items():
      initial[name] = np.asarray(held_out_error(x_eval, y_eval))
  step_loss = None
  for epoch in range(epochs):
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(order_keys, epoch)
    params, opt_state, losses = train_epoch(params, opt_state, keys, x, y,
                                            model=model, optimizer=OPTIMIZER)
    losses = np.asarray(losses)
    if epoch == 0:
      step_loss = window_means(losses, STEP_WINDOW)
    curves["train_loss"].append(losses.mean(1))
    for name, (x_eval, y_eval) in held_out.items():
      curves[name].append(np.asarray(held_out_error(x_eval, y_eval)))
    on_epoch(epoch + 1)
  return Run(arch, spec.name, tuple(seeds), np.asarray(init_seconds),
             {name: np.stack(v, axis=1) for name, v in curves.items()},
             initial, step_loss=step_loss)


def window_means(values: np.ndarray, window: int) -> np.ndarray:
  """The means of `values (rows, n)` over consecutive windows of `window`
  columns, the last one shorter if `n` is not a multiple.

  Examples:
    >>> window_means(np.arange(5.0)[None], 2)
    array([[0.5, 2.5, 4. ]])
  """
  starts = np.arange(0, values.shape[1], window)
  return np.add.reduceat(values, starts, axis=1) / np.diff(
      np.append(starts, values.shape[1]))


def run_comparison(archs: Sequence[str], inits: Sequence[str | Init],
                   data: data_lib.Dataset, seeds: Sequence[int],
                   epochs: int, progress: bool = True,
                   at_init: bool = False) -> list[Run]:
  """Trains every (arch, init) pair; a tqdm bar over runs (`at_init`: see
  `train_and_evaluate`)."""
  runs = []
  pairs = [(a, as_init(i)) for a in archs for i in inits]
  with tqdm.tqdm(pairs, desc="runs", unit="run", disable=not progress) as bar:
    for arch, spec in bar:
      bar.set_postfix_str(f"{arch} {spec.name}")
      runs.append(train_and_evaluate(
          arch, spec, data, seeds, epochs,
          on_epoch=lambda e: bar.set_postfix_str(
              f"{arch} {spec.name} epoch {e}/{epochs}"), at_init=at_init))
  return runs
