"""The paper's MNIST comparison: Xavier, He, LSUV and the campaign on MLPs.

Every (architecture, initializer) pair trains one MLP per seed with plain SGD
(learning rate 0.1, batch 100, cross-entropy, biases zero), all seeds at once
(`jax.vmap`), one jitted `lax.scan` over the batches per epoch, test error after
every epoch. Runs with the same seed share the data order across initializers
(a paired design), so the campaign is compared with its own base initializer
seed by seed. Initializers go through the library's public whole-model API.

  python benchmarks/mnist_mlp.py                    # the default comparison
  python benchmarks/mnist_mlp.py --epochs 100 --seeds 10 --data tfds
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import math
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from scipy import stats

if __package__ in (None, ""):  # run as `python benchmarks/mnist_mlp.py`
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import nc_jax  # noqa: E402
from benchmarks import data as data_lib  # noqa: E402
from benchmarks import init_speed  # noqa: E402

ARCHS = {  # hidden widths; ReLU after each, a linear output layer
    "mlp2": (100,),
    "mlp3": (256, 100),
    "mlp5": (32, 32, 32, 32),
}
INITS = ("xavier", "he", "lsuv", "xavier+campaign", "he+campaign")
BASE_INITS = {
    "xavier": nn.initializers.glorot_uniform(),
    "he": nn.initializers.he_normal(),
}
LEARNING_RATE = 0.1
BATCH_SIZE = 100
# Metric names, defined once for training, tables, CSV and plots.
EPOCH_METRICS = ("train_loss", "test_error")
SUMMARY_METRICS = ("min_test_error", "best_epoch", "final_test_error",
                   "epoch1_train_loss", "init_seconds")
LABELS = {
    "min_test_error": "min test error %",
    "best_epoch": "epoch of min",
    "final_test_error": "final test error %",
    "epoch1_train_loss": "train loss after epoch 1",
    "init_seconds": "init s, median (first seed, incl. compile)",
    "train_loss": "train loss",
    "test_error": "test error %",
}
DIGITS = {"min_test_error": 2, "best_epoch": 1, "final_test_error": 2,
          "epoch1_train_loss": 3}


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


def initialize(model_init: str, arch: str, key: jax.Array,
               data: data_lib.Dataset) -> Any:
  """Parameters of one MLP under one initializer, through the public API.

  The data-dependent initializers (LSUV, campaign) see the training set.
  """
  base, _, campaign = model_init.partition("+")
  model = MLP(ARCHS[arch], data.num_classes,
              BASE_INITS.get(base, nn.initializers.lecun_normal()))
  if model_init in BASE_INITS:
    return model.init(key, data.x_train[:1])["params"]
  if model_init == "lsuv":
    return nc_jax.lsuv_linen(model, key, data.x_train,
                             progress=False)["params"]
  if campaign == "campaign":
    return nc_jax.campaign_linen(model, key, data.x_train, data.y_train,
                                 progress=False)["params"]
  raise ValueError(f"unknown initializer {model_init!r}; choose from {INITS}.")


def _loss(model: MLP, params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
  logits = model.apply({"params": params}, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@functools.partial(jax.jit, static_argnames=("model", "optimizer"))
def train_epoch(params, opt_state, key, x, y, *, model, optimizer):
  """One epoch for a stack of seeds: a `lax.scan` over shuffled batches.

  Args: params, opt_state and key carry a leading seed axis; x, y are shared.
  Returns the new params and optimizer state and each seed's mean loss.
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
    return params, opt_state, losses.mean()

  return jax.vmap(one_seed)(params, opt_state, key)


@functools.partial(jax.jit, static_argnames=("model",))
def test_error(params, x, y, *, model):
  """Each seed's test error, in percent."""
  def one_seed(params):
    logits = model.apply({"params": params}, x)
    return 100.0 * jnp.mean(jnp.argmax(logits, -1) != y)
  return jax.vmap(one_seed)(params)


@dataclasses.dataclass
class Run:
  """One (architecture, initializer) pair over all seeds."""
  arch: str
  init: str
  seeds: tuple[int, ...]
  init_seconds: np.ndarray                     # (seeds,)
  curves: dict[str, np.ndarray]                # metric -> (seeds, epochs)

  def summary(self) -> dict[str, np.ndarray]:
    """Each summary metric per seed."""
    errors = self.curves["test_error"]
    return {
        "min_test_error": errors.min(1),
        "best_epoch": errors.argmin(1) + 1.0,
        "final_test_error": errors[:, -1],
        "epoch1_train_loss": self.curves["train_loss"][:, 0],
        "init_seconds": self.init_seconds,
    }


def train_and_evaluate(arch: str, model_init: str, data: data_lib.Dataset,
                       seeds: Sequence[int], epochs: int,
                       on_epoch: Callable[[int], None] = lambda e: None) -> Run:
  """Trains one MLP per seed from one initializer; returns the curves.

  Seed `s` uses `init_key, order_key = jax.random.split(jax.random.key(s))`;
  epoch `e` shuffles with `jax.random.fold_in(order_key, e)`, the same for
  every initializer.
  """
  model = MLP(ARCHS[arch], data.num_classes)
  optimizer = optax.sgd(LEARNING_RATE)
  params, init_seconds, order_keys = [], [], []
  for seed in seeds:
    init_key, order_key = jax.random.split(jax.random.key(seed))
    start = time.perf_counter()
    params.append(jax.block_until_ready(
        initialize(model_init, arch, init_key, data)))
    init_seconds.append(time.perf_counter() - start)
    order_keys.append(order_key)
  params = jax.tree.map(lambda *p: jnp.stack(p), *params)
  order_keys = jnp.stack(order_keys)
  opt_state = jax.vmap(optimizer.init)(params)
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  curves = {name: [] for name in EPOCH_METRICS}
  for epoch in range(epochs):
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(order_keys, epoch)
    params, opt_state, loss = train_epoch(params, opt_state, keys, x, y,
                                          model=model, optimizer=optimizer)
    curves["train_loss"].append(np.asarray(loss))
    curves["test_error"].append(np.asarray(
        test_error(params, x_test, y_test, model=model)))
    on_epoch(epoch + 1)
  return Run(arch, model_init, tuple(seeds), np.asarray(init_seconds),
             {name: np.stack(v, axis=1) for name, v in curves.items()})


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
  """Mean and the half-width of its t confidence interval (nan for n < 2)."""
  values = np.asarray(values, np.float64)
  if len(values) < 2:
    return float(values.mean()), math.nan
  half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * stats.sem(values)
  return float(values.mean()), float(half)


def _cell(mean: float, half: float, digits: int) -> str:
  if math.isnan(half):
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {half:.{digits}f}"


def summary_table(runs: Sequence[Run]) -> str:
  """Markdown: per arch x init, each summary metric's mean ± 95% CI."""
  head = ["arch", "init"] + [LABELS[m] for m in SUMMARY_METRICS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for run in runs:
    summary = run.summary()
    cells = [_cell(*mean_ci(summary[m]), DIGITS[m]) for m in SUMMARY_METRICS
             if m != "init_seconds"]
    # The first seed's init includes compilation; the median is the warm cost.
    cells.append(f"{np.median(run.init_seconds):.2f} "
                 f"(first {run.init_seconds[0]:.1f})")
    lines.append("| " + " | ".join([run.arch, run.init] + cells) + " |")
  return "\n".join(lines)


def paired_comparisons(runs: Sequence[Run],
                       metric: str = "min_test_error") -> list[dict[str, Any]]:
  """Each campaign variant against its base initializer, seed by seed.

  Returns rows with the mean paired difference (campaign - base), its 95% CI,
  the paired t-test p-value and the seeds on which the campaign was lower.
  """
  by_key = {(r.arch, r.init): r for r in runs}
  rows = []
  for run in runs:
    base, _, campaign = run.init.partition("+")
    if not campaign or (run.arch, base) not in by_key:
      continue
    ours, theirs = run.summary()[metric], by_key[(run.arch, base)].summary()[
        metric]
    diff = ours - theirs
    mean, half = mean_ci(diff)
    p = (float(stats.ttest_rel(ours, theirs).pvalue)
         if len(diff) > 1 and np.any(diff != diff[0]) else math.nan)
    rows.append({"arch": run.arch, "comparison": f"{run.init} - {base}",
                 "metric": metric, "mean_diff": mean, "ci95": half,
                 "p_value": p, "wins": int((diff < 0).sum()),
                 "seeds": len(diff)})
  return rows


def comparison_table(rows: Sequence[dict[str, Any]]) -> str:
  head = ["arch", "comparison", "metric", "mean difference ± 95% CI",
          "paired t-test p", "seeds campaign lower"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    p = "–" if math.isnan(r["p_value"]) else f"{r['p_value']:.3g}"
    lines.append(
        f"| {r['arch']} | {r['comparison']} | {LABELS[r['metric']]} | "
        f"{_cell(r['mean_diff'], r['ci95'], DIGITS[r['metric']])} | {p} | "
        f"{r['wins']}/{r['seeds']} |")
  return "\n".join(lines)


def write_curves_csv(runs: Sequence[Run], path: pathlib.Path) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["arch", "init", "seed", "epoch", *EPOCH_METRICS])
    for run in runs:
      for i, seed in enumerate(run.seeds):
        for e in range(run.curves["test_error"].shape[1]):
          writer.writerow([run.arch, run.init, seed, e + 1] + [
              f"{run.curves[m][i, e]:.6g}" for m in EPOCH_METRICS])


def plot_curves(runs: Sequence[Run], path: pathlib.Path) -> None:
  """Each epoch metric per epoch: mean over seeds and a 95% CI band, per init."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import NullFormatter, ScalarFormatter

  archs = list(dict.fromkeys(r.arch for r in runs))
  fig, axes = plt.subplots(len(EPOCH_METRICS), len(archs),
                           figsize=(5 * len(archs), 3.5 * len(EPOCH_METRICS)),
                           squeeze=False)
  for row, metric in zip(axes, EPOCH_METRICS):
    for ax, arch in zip(row, archs):
      for run in (r for r in runs if r.arch == arch):
        values = run.curves[metric]
        epochs = np.arange(1, values.shape[1] + 1)
        mean = values.mean(0)
        ax.plot(epochs, mean, label=run.init)
        if values.shape[0] > 1:
          half = stats.t.ppf(0.975, values.shape[0] - 1) * stats.sem(values, 0)
          ax.fill_between(epochs, mean - half, mean + half, alpha=0.2)
      ax.set_title(arch)
      ax.set_xlabel("epoch")
      ax.set_ylabel(LABELS[metric])
      ax.set_yscale("log")
      ax.yaxis.set_major_formatter(ScalarFormatter())
      ax.yaxis.set_minor_formatter(NullFormatter())
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def run_comparison(archs: Sequence[str], inits: Sequence[str],
                   data: data_lib.Dataset, seeds: Sequence[int],
                   epochs: int, progress: bool = True) -> list[Run]:
  """Trains every (arch, init) pair; a tqdm bar over runs."""
  runs = []
  pairs = [(a, i) for a in archs for i in inits]
  with tqdm.tqdm(pairs, desc="runs", unit="run", disable=not progress) as bar:
    for arch, model_init in bar:
      bar.set_postfix_str(f"{arch} {model_init}")
      runs.append(train_and_evaluate(
          arch, model_init, data, seeds, epochs,
          on_epoch=lambda e: bar.set_postfix_str(
              f"{arch} {model_init} epoch {e}/{epochs}")))
  return runs


def write_results(runs: Sequence[Run], settings: dict[str, Any],
                  out: pathlib.Path) -> str:
  """Writes mnist_mlp.md, .json, _epochs.csv and .png; returns the markdown."""
  out.mkdir(parents=True, exist_ok=True)
  comparisons = [row for metric in ("min_test_error", "epoch1_train_loss")
                 for row in paired_comparisons(runs, metric)]
  text = "\n".join([
      "# MNIST MLP comparison (benchmarks/mnist_mlp.py)", "",
      *[f"- {k}: {v}" for k, v in settings.items()], "",
      "Mean ± 95% CI (t) over seeds.", "", summary_table(runs), "",
      "Paired by seed (same data order): campaign minus its base "
      "initializer; negative = the campaign is lower.", "",
      comparison_table(comparisons), ""])
  (out / "mnist_mlp.md").write_text(text)
  (out / "mnist_mlp.json").write_text(json.dumps({
      "settings": settings,
      "runs": [{"arch": r.arch, "init": r.init, "seeds": list(r.seeds),
                **{m: v.tolist() for m, v in r.summary().items()}}
               for r in runs],
      "comparisons": comparisons}, indent=1, default=str))
  write_curves_csv(runs, out / "mnist_mlp_epochs.csv")
  plot_curves(runs, out / "mnist_mlp.png")
  return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--arch", nargs="+", choices=tuple(ARCHS),
                      default=list(ARCHS))
  parser.add_argument("--init", nargs="+", choices=INITS, default=list(INITS))
  parser.add_argument("--epochs", type=int, default=50,
                      help="default 50 keeps the default run near 10 minutes "
                      "on 2 CPU cores; the paper trains about 100")
  parser.add_argument("--seeds", type=int, default=5,
                      help="number of seeds, 0..seeds-1")
  parser.add_argument("--data", nargs="+", default=["auto"],
                      metavar="SOURCE [DIR]",
                      help=f"one of {data_lib.SOURCES}; `idx DIR` for IDX "
                      "files, `tfds [DATA_DIR]`. auto: tfds MNIST when "
                      "prepared locally, else the bundled subset")
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).parent / "results")
  parser.add_argument("--quick", action="store_true",
                      help="a first look in about a minute: 3 epochs, 2 seeds,"
                      " 1,000 training images")
  args = parser.parse_args(argv)
  if len(args.data) > 2:
    parser.error("--data takes a source and at most one directory")
  if args.epochs < 1 or args.seeds < 1:
    parser.error("--epochs and --seeds must be positive")
  return args


def main(argv: Sequence[str] | None = None) -> str:
  args = parse_args(argv)
  dataset = data_lib.load(args.data[0], args.data[1] if len(args.data) > 1
                          else None)
  epochs, seeds = args.epochs, args.seeds
  if args.quick:
    epochs, seeds = min(epochs, 3), min(seeds, 2)
    dataset = dataclasses.replace(
        dataset, name=dataset.name + ", first 1,000 training images",
        x_train=dataset.x_train[:1000], y_train=dataset.y_train[:1000])
  print(dataset.describe())
  start = time.perf_counter()
  runs = run_comparison(args.arch, args.init, dataset, range(seeds), epochs)
  settings = {
      "data": dataset.describe(), "epochs": epochs, "seeds": seeds,
      "optimizer": f"SGD lr {LEARNING_RATE}, batch {BATCH_SIZE}, "
                   "cross-entropy, biases 0",
      "command": "python benchmarks/mnist_mlp.py " + " ".join(
          sys.argv[1:] if argv is None else argv),
      "wall time s": round(time.perf_counter() - start, 1),
      **init_speed.machine_info(),
  }
  text = write_results(runs, settings, args.out)
  print(text)
  return text


if __name__ == "__main__":
  main()
