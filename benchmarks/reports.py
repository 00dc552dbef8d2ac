"""What the benchmarks write: markdown tables, JSON, per-epoch CSV and plots.

`markdown_table` is the one table writer; every table of every results file
goes through it.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np

from benchmarks import stats
from benchmarks import training
from benchmarks.training import DIGITS, LABELS, Run


def machine_info() -> dict[str, Any]:
  """Describes the device, host, jax version and date of a run."""
  device = jax.devices()[0]
  return {"device": f"{device.device_kind} ({device.platform})",
          "cpu cores": os.cpu_count(), "jax": jax.__version__,
          "date": datetime.datetime.now().isoformat(timespec="seconds")}


def markdown_table(head: Sequence[str],
                   rows: Iterable[Sequence[str]]) -> str:
  """A markdown table: the header, the rule, one line per row of cells.

  Examples:
    >>> print(markdown_table(["a", "b"], [["1", "2"]]))
    | a | b |
    |---|---|
    | 1 | 2 |
  """
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def settings_lines(settings: dict[str, Any]) -> list[str]:
  """A results file's settings, one markdown list item each."""
  return [f"- {k}: {v}" for k, v in settings.items()]


def format_ci(mean: float, half: float, digits: int) -> str:
  """`mean ± half`, or `mean` alone where the CI is undefined."""
  if math.isnan(half):
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {half:.{digits}f}"


def mean_cell(values: np.ndarray, metric: str) -> str:
  """A table cell: the mean ± 95% CI of a metric's per-seed values."""
  return format_ci(*stats.mean_ci(values), DIGITS[metric])


def difference_cell(row: dict[str, Any]) -> str:
  """A table cell for a `stats.paired_difference` row: the mean difference ±
  95% CI (bold where p < 0.05), the p-value and the seeds on which the first
  run is lower."""
  diff = format_ci(row["mean_diff"], row["ci95"], DIGITS[row["metric"]])
  p = row["p_value"]
  if p < 0.05:
    diff = f"**{diff}**"
  p = "–" if math.isnan(p) else f"{p:.2g}"
  return f"{diff} (p {p}, {row['wins']}/{row['seeds']})"


def summary_table(runs: Sequence[Run],
                  metrics: Sequence[str] = training.SUMMARY_METRICS) -> str:
  """Markdown: per arch x init, each summary metric's mean ± 95% CI."""
  metrics = training.present(runs, metrics)

  def cells(run: Run) -> list[str]:
    summary = run.summary()
    out = [run.arch, run.init]
    for m in metrics:
      if m == "init_seconds":
        # The first seed's init includes compilation; the median is warm.
        out.append(f"{np.median(run.init_seconds):.2f} "
                   f"(first {run.init_seconds[0]:.1f})")
      else:
        out.append(mean_cell(summary[m], m))
    return out

  return markdown_table(["arch", "init"] + [LABELS[m] for m in metrics],
                        map(cells, runs))


def comparison_table(rows: Sequence[dict[str, Any]]) -> str:
  """Markdown: one line per (arch, comparison), one column per metric, each
  cell a `difference_cell`."""
  metrics = list(dict.fromkeys(r["metric"] for r in rows))
  cells = {(r["arch"], r["comparison"], r["metric"]): r for r in rows}
  return markdown_table(
      ["arch", "comparison"] + [LABELS[m] for m in metrics],
      ([arch, comparison] + [
          difference_cell(cells[(arch, comparison, m)])
          if (arch, comparison, m) in cells else "" for m in metrics]
       for arch, comparison in dict.fromkeys(
           (r["arch"], r["comparison"]) for r in rows)))


def run_records(runs: Sequence[Run]) -> list[dict[str, Any]]:
  """Each run's summary metrics per seed, for a results JSON."""
  return [{"arch": r.arch, "init": r.init, "seeds": list(r.seeds),
           **{m: v.tolist() for m, v in r.summary().items()}} for r in runs]


def write_curves_csv(runs: Sequence[Run], path: pathlib.Path) -> None:
  """One line per (arch, init, seed, epoch) with each epoch metric; epoch 0
  (before any step) for runs that measured it (`Run.initial`)."""
  metrics = training.curve_metrics(runs)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["arch", "init", "seed", "epoch", *metrics])
    for run in runs:
      for i, seed in enumerate(run.seeds):
        if run.initial:
          writer.writerow([run.arch, run.init, seed, 0] + [
              f"{run.initial[m][i]:.6g}" for m in metrics])
        for e in range(run.epochs):
          writer.writerow([run.arch, run.init, seed, e + 1] + [
              f"{run.curves[m][i, e]:.6g}" for m in metrics])


def _line_style(name: str) -> str:
  """Dashed for a random-pick control, dotted for a base initializer."""
  if "+random" in name:
    return "--"
  return ":" if name in training.BASE_INITS else "-"


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
  dashed, a base initializer dotted. Runs that measured their initialized
  parameters (`Run.initial`) start at epoch 0.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import NullFormatter, ScalarFormatter

  if panels is None:
    panels = [(arch, [r for r in runs if r.arch == arch])
              for arch in dict.fromkeys(r.arch for r in runs)]
  metrics = training.curve_metrics(runs)
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
        if run.initial:
          values = np.concatenate([run.initial[metric][:, None], values], 1)
          epochs = np.arange(values.shape[1])
        mean = values.mean(0)
        color = colors.setdefault(run.init.replace("+random", "+campaign"),
                                  palette[len(colors) % len(palette)])
        ax.plot(epochs, mean, _line_style(run.init), color=color,
                label=run.init)
        if values.shape[0] > 1:
          half = stats.ci_half_width(values)
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


def run_files(stem: str) -> tuple[str, str, str, str, str]:
  """The files `write_run_results` writes: `stem.md`, `stem.json`,
  `stem_epochs.csv`, `stem.png`, `stem_steps.csv`."""
  return (f"{stem}.md", f"{stem}.json", f"{stem}_epochs.csv", f"{stem}.png",
          f"{stem}_steps.csv")


def write_steps_csv(runs: Sequence[Run], path: pathlib.Path) -> None:
  """One line per (arch, init, seed, window) of the first epoch's minibatch
  loss (`Run.step_loss`): `step` is the window's last step. No file where no
  run recorded it."""
  if all(run.step_loss is None for run in runs):
    return
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["arch", "init", "seed", "step", "train_loss"])
    for run in runs:
      if run.step_loss is None:
        continue
      for i, seed in enumerate(run.seeds):
        for w in range(run.step_loss.shape[1]):
          writer.writerow([run.arch, run.init, seed,
                           (w + 1) * training.STEP_WINDOW,
                           f"{run.step_loss[i, w]:.6g}"])


def head_start_table(rows: Sequence[dict[str, Any]]) -> str:
  """Markdown for `stats.head_start`'s rows."""
  def lasting(row: dict[str, Any]) -> str:
    if row["steps"] == 0:
      return "0"
    if row["steps"] >= row["windows"] * row["window"]:
      return "the whole first epoch"
    return str(row["steps"])
  window = rows[0]["window"] if rows else training.STEP_WINDOW
  return markdown_table(
      ["arch", "comparison", "lower from step 0 through step",
       f"loss diff, steps 1-{window}",
       f"steps {4 * window + 1}-{5 * window}", "last window of epoch 1"],
      ([r["arch"], r["comparison"], lasting(r), f"{r['diff_first']:+.3f}",
        f"{r['diff_fifth']:+.3f}", f"{r['diff_last']:+.3f}"] for r in rows))


def head_start_lines(runs: Sequence[Run],
                     pairs: Sequence[tuple[str, str]] | None = None
                     ) -> list[str]:
  """The head start in steps (`stats.head_start`), as text and a table;
  nothing for runs without `step_loss`."""
  rows = stats.head_start(runs, pairs)
  if not rows:
    return []
  return [
      "Head start in steps: the first epoch's minibatch training loss, mean "
      f"per window of {training.STEP_WINDOW} steps, paired by seed (first "
      "minus second). A head start lasts through the last step of the "
      "leading windows in which the first is lower with paired t-test "
      "p < 0.05.", "", head_start_table(rows), ""]


def write_run_results(out: pathlib.Path, stem: str, text: str,
                      results: dict[str, Any], runs: Sequence[Run],
                      **plot_options: Any) -> None:
  """Writes `stem.md` (the text), `stem.json` (the results),
  `stem_epochs.csv` (the curves) and `stem.png` (`plot_curves` with
  `plot_options`) into `out`, created if missing."""
  out.mkdir(parents=True, exist_ok=True)
  md, js, curves, png, steps = (out / name for name in run_files(stem))
  md.write_text(text)
  js.write_text(json.dumps(results, indent=1, default=str))
  write_curves_csv(runs, curves)
  write_steps_csv(runs, steps)
  plot_curves(runs, png, **plot_options)


def target_lines(runs: Sequence[Run], target: dict[str, Any]) -> list[str]:
  """What the time-to-accuracy columns mean (`stats.time_to_target`'s
  `target`), with each arch's threshold and epoch time."""
  factor = target["factor"]
  censored = ", ".join(
      f"{r.arch} {r.init} {int((r.extra['epochs_to_2x_best'] > r.epochs).sum())}"
      for r in runs if (r.extra["epochs_to_2x_best"] > r.epochs).any())
  return [
      f"Time to accuracy. Epochs to {factor:g}x the best final test error: "
      "per seed, the first epoch (0 = the initialized parameters, where "
      f"measured) whose test error is at most {factor:g} times the arch's "
      "best final test error (the lowest over the initializers of the mean "
      "over seeds of the final test error); a seed that never gets there "
      "counts as epochs + 1 (censored: " + (censored or "none") + "). "
      "Seconds to it: those epochs times one model's training epoch "
      "(one seed, compiled, min of 3, timed after the runs on this machine), "
      "plus the initializer's own time: warm (each seed's init, the first "
      "seed's replaced by the median of the others) or its first call in "
      "the process (the first seed's, compilation included). An epoch is "
      f"{target['steps_per_epoch']} steps; test error is measured once per "
      "epoch, so a head start shorter than an epoch does not show.", "",
      *(f"- {arch}: threshold {t:.2f}% (best final {t / factor:.2f}%), one "
        f"epoch {target['epoch_seconds'][arch]:.2f} s"
        for arch, t in target["thresholds"].items())]


def write_comparison(runs: Sequence[Run], settings: dict[str, Any],
                     out: pathlib.Path,
                     target: dict[str, Any] | None = None) -> str:
  """Writes the MNIST comparison's mnist_mlp.md, .json, _epochs.csv and .png,
  with the time to accuracy if `target` (`stats.time_to_target`); returns
  the markdown."""
  final, early = (
      [row for metric in training.present(runs, metrics)
       for row in stats.paired_comparisons(runs, metric)]
      for metrics in (training.FINAL_METRICS + training.TARGET_METRICS,
                      training.EARLY_METRICS))
  text = "\n".join([
      "# MNIST MLP comparison (benchmarks/mnist_mlp.py)", "",
      *settings_lines(settings), "",
      "Mean ± 95% CI (t) over seeds.", "", summary_table(runs), "",
      *(target_lines(runs, target) + [""] if target else []),
      "Early training:", "", summary_table(runs, training.EARLY_METRICS), "",
      *head_start_lines(runs),
      "Paired by seed (same data order): first minus second; negative = the "
      "first is lower. `X+random` is the campaign's control: the same "
      "candidates (same key), picked uniformly at random. Each cell: mean "
      "difference ± 95% CI (bold: paired t-test p < 0.05), p, seeds on which "
      "the first is lower.", "",
      comparison_table(final), "", comparison_table(early), ""])
  write_run_results(out, "mnist_mlp", text, {
      "settings": settings, **({"time_to_target": target} if target else {}),
      "runs": run_records(runs), "comparisons": final + early}, runs)
  return text


def load_runs(out: pathlib.Path, stem: str) -> tuple[list[Run], dict[str, Any]]:
  """The runs and settings a finished comparison wrote into `out`
  (`stem.json` and `stem_epochs.csv`): curves, initial metrics and init
  seconds, so its tables can be written again."""
  results = json.loads((out / f"{stem}.json").read_text())
  rows: dict[tuple[str, str], list[dict[str, str]]] = {}
  with open(out / f"{stem}_epochs.csv", newline="") as f:
    for row in csv.DictReader(f):
      rows.setdefault((row["arch"], row["init"]), []).append(row)
  runs = []
  for record in results["runs"]:
    seeds = tuple(record["seeds"])
    table = rows[(record["arch"], record["init"])]
    metrics = [m for m in training.EPOCH_METRICS if m in table[0]]
    epochs = max(int(r["epoch"]) for r in table)
    curves = {m: np.zeros((len(seeds), epochs)) for m in metrics}
    initial = {}
    for r in table:
      i, epoch = seeds.index(int(r["seed"])), int(r["epoch"])
      for m in metrics:
        if epoch == 0:
          initial.setdefault(m, np.zeros(len(seeds)))[i] = float(r[m])
        else:
          curves[m][i, epoch - 1] = float(r[m])
    runs.append(Run(record["arch"], record["init"], seeds,
                    np.asarray(record["init_seconds"]), curves, initial))
  steps = out / f"{stem}_steps.csv"
  if steps.is_file():
    windows: dict[tuple[str, str], dict[int, list[float]]] = {}
    with open(steps, newline="") as f:
      for row in csv.DictReader(f):
        windows.setdefault((row["arch"], row["init"]), {}).setdefault(
            int(row["seed"]), []).append(float(row["train_loss"]))
    for run in runs:
      if (run.arch, run.init) in windows:
        run.step_loss = np.array(
            [windows[(run.arch, run.init)][s] for s in run.seeds])
  return runs, results["settings"]
