"""The paper's MNIST comparison: Xavier, He, LSUV and the campaign on MLPs.

Every (architecture, initializer) pair trains one MLP per seed with plain SGD
(learning rate 0.1, batch 100, cross-entropy, biases zero), all seeds at once
(`jax.vmap`), one jitted `lax.scan` over the batches per epoch, test error
(and validation error, where the data has a validation split) after every
epoch. Runs with the same seed share the data order across initializers (a
paired design), so the campaign is compared seed by seed with its own base
initializer and with its random-pick control `X+random`: the same candidates
(same key), `fan_out` of them picked uniformly at random instead of elected.
Initializers go through the library's public whole-model API.

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
from collections.abc import Callable, Mapping, Sequence
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
INITS = ("xavier", "he", "lsuv", "xavier+campaign", "he+campaign",
         "xavier+random", "he+random")
BASE_INITS = {
    "xavier": nn.initializers.glorot_uniform(),
    "he": nn.initializers.he_normal(),
}
LEARNING_RATE = 0.1
BATCH_SIZE = 100
# One object, so that every run hits `train_epoch`'s compilation cache.
OPTIMIZER = optax.sgd(LEARNING_RATE)
# Metric names, defined once for training, tables, CSV and plots. Runs on data
# without a validation split have no "val_error" curve.
EPOCH_METRICS = ("train_loss", "test_error", "val_error")
EARLY_EPOCHS = (1, 3, 10)  # the early-training effect is read at these epochs


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
  labels["init_seconds"] = ("init s, median (first seed, incl. compile)", 2)
  return labels


LABELS = {name: label for name, (label, _) in _metric_labels().items()}
DIGITS = {name: digits for name, (_, digits) in _metric_labels().items()}
# Table columns; a metric a run does not have (epoch 10 of a 5-epoch run, or
# validation error without a validation split) is left out.
SUMMARY_METRICS = ("min_test_error", "best_epoch", "final_test_error",
                   "init_seconds")
EARLY_METRICS = tuple(f"epoch{e}_{name}"
                      for name in ("train_loss", "test_error")
                      for e in EARLY_EPOCHS)
FINAL_METRICS = ("min_test_error", "final_test_error")


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
    init: one of `INITS`: a base initializer ("xavier", "he"), "lsuv", a
      campaign with that base's candidates ("he+campaign") or its random-pick
      control ("he+random": `campaign_linen(..., elect="random")`, the same
      candidates picked uniformly at random).
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
    if self.init not in INITS:
      raise ValueError(
          f"unknown initializer {self.init!r}; choose from {INITS}.")
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
  """An `Init` from itself or from a name in `INITS` (no options)."""
  return model_init if isinstance(model_init, Init) else Init(model_init)


def initialize(model_init: str | Init, arch: str, key: jax.Array,
               data: data_lib.Dataset) -> Any:
  """Parameters of one MLP under one initializer, through the public API.

  The data-dependent initializers (LSUV, campaign) see the training set.
  """
  spec = as_init(model_init)
  base, _, method = spec.init.partition("+")
  model = MLP(ARCHS[arch], data.num_classes,
              BASE_INITS.get(base, nn.initializers.lecun_normal()))
  if spec.init in BASE_INITS:
    return model.init(key, data.x_train[:1])["params"]
  if spec.init == "lsuv":
    return nc_jax.lsuv_linen(model, key, data.x_train,
                             progress=False)["params"]
  rows = slice(spec.score_rows)
  return nc_jax.campaign_linen(
      model, key, data.x_train[rows],
      data.y_train[rows] if spec.labels else None, elect=method,
      progress=False, **spec.options)["params"]


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
def error_rate(params, x, y, *, model):
  """Each seed's error on (x, y), in percent."""
  def one_seed(params):
    logits = model.apply({"params": params}, x)
    return 100.0 * jnp.mean(jnp.argmax(logits, -1) != y)
  return jax.vmap(one_seed)(params)


@dataclasses.dataclass
class Run:
  """One (architecture, initializer) pair over all seeds."""
  arch: str
  init: str                                    # the initializer's name
  seeds: tuple[int, ...]
  init_seconds: np.ndarray                     # (seeds,)
  curves: dict[str, np.ndarray]                # metric -> (seeds, epochs)

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
    for epoch in EARLY_EPOCHS:
      if epoch <= errors.shape[1]:
        for name, values in self.curves.items():
          summary[f"epoch{epoch}_{name}"] = values[:, epoch - 1]
    summary["init_seconds"] = self.init_seconds
    return summary


def train_and_evaluate(arch: str, model_init: str | Init,
                       data: data_lib.Dataset, seeds: Sequence[int],
                       epochs: int,
                       on_epoch: Callable[[int], None] = lambda e: None) -> Run:
  """Trains one MLP per seed from one initializer; returns the curves.

  Seed `s` uses `init_key, order_key = jax.random.split(jax.random.key(s))`;
  epoch `e` shuffles with `jax.random.fold_in(order_key, e)`, the same for
  every initializer. After each epoch: the mean training loss, the test error
  and, if `data` has a validation split, the validation error.
  """
  spec = as_init(model_init)
  model = MLP(ARCHS[arch], data.num_classes)
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
  for epoch in range(epochs):
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(order_keys, epoch)
    params, opt_state, loss = train_epoch(params, opt_state, keys, x, y,
                                          model=model, optimizer=OPTIMIZER)
    curves["train_loss"].append(np.asarray(loss))
    for name, (x_eval, y_eval) in held_out.items():
      curves[name].append(np.asarray(
          error_rate(params, x_eval, y_eval, model=model)))
    on_epoch(epoch + 1)
  return Run(arch, spec.name, tuple(seeds), np.asarray(init_seconds),
             {name: np.stack(v, axis=1) for name, v in curves.items()})


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
  """Mean and the half-width of its t confidence interval (nan for n < 2)."""
  values = np.asarray(values, np.float64)
  if len(values) < 2:
    return float(values.mean()), math.nan
  half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * stats.sem(values)
  return float(values.mean()), float(half)


def _format_ci(mean: float, half: float, digits: int) -> str:
  """`mean ± half`, or `mean` alone where the CI is undefined."""
  if math.isnan(half):
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {half:.{digits}f}"


def present(runs: Sequence[Run], metrics: Sequence[str]) -> list[str]:
  """The metrics, in order, that every run's summary has."""
  summaries = [run.summary() for run in runs]
  return [m for m in metrics if all(m in s for s in summaries)]


def mean_cell(values: np.ndarray, metric: str) -> str:
  """A table cell: the mean ± 95% CI of a metric's per-seed values."""
  return _format_ci(*mean_ci(values), DIGITS[metric])


def difference_cell(row: dict[str, Any]) -> str:
  """A table cell for a `paired_difference` row: the mean difference ± 95% CI
  (bold where p < 0.05), the p-value and the seeds on which the first run is
  lower."""
  diff = _format_ci(row["mean_diff"], row["ci95"], DIGITS[row["metric"]])
  p = row["p_value"]
  if p < 0.05:
    diff = f"**{diff}**"
  p = "–" if math.isnan(p) else f"{p:.2g}"
  return f"{diff} (p {p}, {row['wins']}/{row['seeds']})"


def summary_table(runs: Sequence[Run],
                  metrics: Sequence[str] = SUMMARY_METRICS) -> str:
  """Markdown: per arch x init, each summary metric's mean ± 95% CI."""
  metrics = present(runs, metrics)
  head = ["arch", "init"] + [LABELS[m] for m in metrics]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for run in runs:
    summary = run.summary()
    cells = []
    for m in metrics:
      if m == "init_seconds":
        # The first seed's init includes compilation; the median is warm.
        cells.append(f"{np.median(run.init_seconds):.2f} "
                     f"(first {run.init_seconds[0]:.1f})")
      else:
        cells.append(mean_cell(summary[m], m))
    lines.append("| " + " | ".join([run.arch, run.init] + cells) + " |")
  return "\n".join(lines)


def paired_difference(ours: Run, theirs: Run, metric: str) -> dict[str, Any]:
  """`ours - theirs` on one summary metric, seed by seed (a paired design).

  Returns:
    A row: the mean difference, the half-width of its 95% CI, the paired
    t-test p-value (nan when undefined) and the seeds on which `ours` is lower.

  Raises:
    ValueError: when the two runs do not share architecture and seeds.
  """
  if (ours.arch, ours.seeds) != (theirs.arch, theirs.seeds):
    raise ValueError(
        f"a paired comparison needs the same arch and seeds; got {ours.arch} "
        f"seeds {ours.seeds} against {theirs.arch} seeds {theirs.seeds}.")
  a, b = ours.summary()[metric], theirs.summary()[metric]
  diff = a - b
  mean, half = mean_ci(diff)
  p = (float(stats.ttest_rel(a, b).pvalue)
       if len(diff) > 1 and np.any(diff != diff[0]) else math.nan)
  return {"arch": ours.arch, "comparison": f"{ours.init} - {theirs.init}",
          "metric": metric, "mean_diff": mean, "ci95": half, "p_value": p,
          "wins": int((diff < 0).sum()), "seeds": len(diff)}


def control_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
  """The comparison's pairs among the initializers run.

  `X+campaign` against `X+random` (same candidates, the election's effect)
  and against `X` (the whole method's effect); `X+random` against `X` (the
  candidate draw alone, which should change nothing).
  """
  pairs = []
  for name in names:
    base, _, method = name.partition("+")
    if method == "campaign":
      pairs += [(name, f"{base}+random"), (name, base)]
    elif method == "random":
      pairs.append((name, base))
  return [(ours, theirs) for ours, theirs in pairs if theirs in names]


def paired_comparisons(
    runs: Sequence[Run], metric: str = "min_test_error",
    pairs: Sequence[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
  """`paired_difference` for each pair of initializer names, per arch.

  Args:
    runs: the runs.
    metric: a summary metric.
    pairs: (ours, theirs) initializer names; default `control_pairs` of the
      initializers run. Pairs not run on an arch are skipped.
  """
  by_key = {(r.arch, r.init): r for r in runs}
  if pairs is None:
    pairs = control_pairs(list(dict.fromkeys(r.init for r in runs)))
  return [paired_difference(by_key[(arch, ours)], by_key[(arch, theirs)],
                            metric)
          for arch in dict.fromkeys(r.arch for r in runs)
          for ours, theirs in pairs
          if (arch, ours) in by_key and (arch, theirs) in by_key]


def comparison_table(rows: Sequence[dict[str, Any]]) -> str:
  """Markdown: one line per (arch, comparison), one column per metric, each
  cell a `difference_cell`."""
  metrics = list(dict.fromkeys(r["metric"] for r in rows))
  cells = {(r["arch"], r["comparison"], r["metric"]): r for r in rows}
  head = ["arch", "comparison"] + [LABELS[m] for m in metrics]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for arch, comparison in dict.fromkeys((r["arch"], r["comparison"])
                                        for r in rows):
    line = [arch, comparison]
    line += [difference_cell(cells[(arch, comparison, m)])
             if (arch, comparison, m) in cells else "" for m in metrics]
    lines.append("| " + " | ".join(line) + " |")
  return "\n".join(lines)


def _curve_metrics(runs: Sequence[Run]) -> list[str]:
  return [m for m in EPOCH_METRICS if all(m in r.curves for r in runs)]


def write_curves_csv(runs: Sequence[Run], path: pathlib.Path) -> None:
  """One line per (arch, init, seed, epoch) with each epoch metric."""
  metrics = _curve_metrics(runs)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["arch", "init", "seed", "epoch", *metrics])
    for run in runs:
      for i, seed in enumerate(run.seeds):
        for e in range(run.curves["test_error"].shape[1]):
          writer.writerow([run.arch, run.init, seed, e + 1] + [
              f"{run.curves[m][i, e]:.6g}" for m in metrics])


def _line_style(name: str) -> str:
  """Dashed for a random-pick control, dotted for a base initializer."""
  if "+random" in name:
    return "--"
  return ":" if name in BASE_INITS else "-"


def plot_curves(runs: Sequence[Run], path: pathlib.Path, *,
                panels: Sequence[tuple[str, Sequence[Run]]] | None = None,
                last_epoch: int | None = None) -> None:
  """Each epoch metric per epoch: mean over seeds and a 95% CI band per run.

  Args:
    runs: the runs.
    path: the PNG to write.
    panels: (title, runs) per column; default one column per arch.
    last_epoch: plot epochs 1..last_epoch only; default all.

  A campaign and its random-pick control share a colour; the control is
  dashed, a base initializer dotted.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import NullFormatter, ScalarFormatter

  if panels is None:
    panels = [(arch, [r for r in runs if r.arch == arch])
              for arch in dict.fromkeys(r.arch for r in runs)]
  metrics = _curve_metrics(runs)
  palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  fig, axes = plt.subplots(len(metrics), len(panels),
                           figsize=(5 * len(panels), 3.5 * len(metrics)),
                           squeeze=False)
  for row, metric in zip(axes, metrics):
    for ax, (title, panel_runs) in zip(row, panels):
      colors = {}
      for run in panel_runs:
        values = run.curves[metric][:, :last_epoch]
        epochs = np.arange(1, values.shape[1] + 1)
        mean = values.mean(0)
        color = colors.setdefault(run.init.replace("+random", "+campaign"),
                                  palette[len(colors) % len(palette)])
        ax.plot(epochs, mean, _line_style(run.init), color=color,
                label=run.init)
        if values.shape[0] > 1:
          half = stats.t.ppf(0.975, values.shape[0] - 1) * stats.sem(values, 0)
          ax.fill_between(epochs, mean - half, mean + half, color=color,
                          alpha=0.15)
      ax.set_title(title)
      ax.set_xlabel("epoch")
      ax.set_ylabel(LABELS[metric])
      ax.set_yscale("log")
      ax.yaxis.set_major_formatter(ScalarFormatter())
      ax.yaxis.set_minor_formatter(NullFormatter())
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def run_comparison(archs: Sequence[str], inits: Sequence[str | Init],
                   data: data_lib.Dataset, seeds: Sequence[int],
                   epochs: int, progress: bool = True) -> list[Run]:
  """Trains every (arch, init) pair; a tqdm bar over runs."""
  runs = []
  pairs = [(a, as_init(i)) for a in archs for i in inits]
  with tqdm.tqdm(pairs, desc="runs", unit="run", disable=not progress) as bar:
    for arch, spec in bar:
      bar.set_postfix_str(f"{arch} {spec.name}")
      runs.append(train_and_evaluate(
          arch, spec, data, seeds, epochs,
          on_epoch=lambda e: bar.set_postfix_str(
              f"{arch} {spec.name} epoch {e}/{epochs}")))
  return runs


def write_results(runs: Sequence[Run], settings: dict[str, Any],
                  out: pathlib.Path) -> str:
  """Writes mnist_mlp.md, .json, _epochs.csv and .png; returns the markdown."""
  out.mkdir(parents=True, exist_ok=True)
  final, early = (
      [row for metric in present(runs, metrics)
       for row in paired_comparisons(runs, metric)]
      for metrics in (FINAL_METRICS, EARLY_METRICS))
  text = "\n".join([
      "# MNIST MLP comparison (benchmarks/mnist_mlp.py)", "",
      *[f"- {k}: {v}" for k, v in settings.items()], "",
      "Mean ± 95% CI (t) over seeds.", "", summary_table(runs), "",
      "Early training:", "", summary_table(runs, EARLY_METRICS), "",
      "Paired by seed (same data order): first minus second; negative = the "
      "first is lower. `X+random` is the campaign's control: the same "
      "candidates (same key), picked uniformly at random. Each cell: mean "
      "difference ± 95% CI (bold: paired t-test p < 0.05), p, seeds on which "
      "the first is lower.", "",
      comparison_table(final), "", comparison_table(early), ""])
  (out / "mnist_mlp.md").write_text(text)
  (out / "mnist_mlp.json").write_text(json.dumps({
      "settings": settings,
      "runs": [{"arch": r.arch, "init": r.init, "seeds": list(r.seeds),
                **{m: v.tolist() for m, v in r.summary().items()}}
               for r in runs],
      "comparisons": final + early}, indent=1, default=str))
  write_curves_csv(runs, out / "mnist_mlp_epochs.csv")
  plot_curves(runs, out / "mnist_mlp.png")
  return text


def base_parser(doc: str, *, archs: Sequence[str], epochs: int, seeds: int,
                epochs_help: str) -> argparse.ArgumentParser:
  """The options the MNIST benchmarks share: --arch, --epochs, --seeds,
  --data, --out, --quick."""
  parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
  parser.add_argument("--arch", nargs="+", choices=tuple(ARCHS),
                      default=list(archs))
  parser.add_argument("--epochs", type=int, default=epochs, help=epochs_help)
  parser.add_argument("--seeds", type=int, default=seeds,
                      help=f"number of seeds, 0..seeds-1 (default {seeds})")
  parser.add_argument("--data", nargs="+", default=["auto"],
                      metavar="SOURCE [DIR]",
                      help=f"one of {data_lib.SOURCES}; `idx DIR` for IDX "
                      "files, `tfds [DATA_DIR]`. auto: tfds MNIST when "
                      "prepared locally, else the bundled subset")
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(__file__).parent / "results")
  parser.add_argument("--quick", action="store_true",
                      help="a first look: at most 3 epochs and 2 seeds, the "
                      "first 1,000 training images")
  return parser


def parse_checked(parser: argparse.ArgumentParser,
                  argv: Sequence[str] | None) -> argparse.Namespace:
  """Parses and checks the shared options."""
  args = parser.parse_args(argv)
  if len(args.data) > 2:
    parser.error("--data takes a source and at most one directory")
  if args.epochs < 1 or args.seeds < 1:
    parser.error("--epochs and --seeds must be positive")
  if args.quick:
    args.epochs, args.seeds = min(args.epochs, 3), min(args.seeds, 2)
  return args


def load_data(args: argparse.Namespace) -> data_lib.Dataset:
  """The data set `--data` names; with `--quick`, its first 1,000 training
  images."""
  dataset = data_lib.load(args.data[0], args.data[1] if len(args.data) > 1
                          else None)
  if args.quick:
    dataset = dataclasses.replace(
        dataset, name=dataset.name + ", first 1,000 training images",
        x_train=dataset.x_train[:1000], y_train=dataset.y_train[:1000])
  return dataset


def run_settings(script: str, argv: Sequence[str] | None,
                 dataset: data_lib.Dataset, args: argparse.Namespace,
                 seconds: float) -> dict[str, Any]:
  """The settings a results file states: data, training, command, wall time
  and machine."""
  return {
      "data": dataset.describe(), "epochs": args.epochs, "seeds": args.seeds,
      "optimizer": f"SGD lr {LEARNING_RATE}, batch {BATCH_SIZE}, "
                   "cross-entropy, biases 0",
      "command": " ".join([f"python benchmarks/{script}",
                           *(sys.argv[1:] if argv is None else argv)]),
      "wall time s": round(seconds, 1),
      **init_speed.machine_info(),
  }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = base_parser(
      __doc__, archs=ARCHS, epochs=50, seeds=5,
      epochs_help="default 50 keeps the default run near 10 minutes on 2 CPU "
      "cores; the paper trains about 100")
  parser.add_argument("--init", nargs="+", choices=INITS, default=list(INITS))
  return parse_checked(parser, argv)


def main(argv: Sequence[str] | None = None) -> str:
  args = parse_args(argv)
  dataset = load_data(args)
  print(dataset.describe())
  start = time.perf_counter()
  runs = run_comparison(args.arch, args.init, dataset, range(args.seeds),
                        args.epochs)
  settings = run_settings("mnist_mlp.py", argv, dataset, args,
                          time.perf_counter() - start)
  text = write_results(runs, settings, args.out)
  print(text)
  return text


if __name__ == "__main__":
  main()
