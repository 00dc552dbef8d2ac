"""Statistics over seeds: confidence intervals and paired comparisons of runs.

Runs with the same seed share the data order across initializers, so two runs
on one architecture are compared seed by seed (a paired design).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from benchmarks import data as data_lib
from benchmarks import training
from benchmarks.training import Run


def ci_half_width(values: np.ndarray, level: float = 0.95,
                  axis: int = 0) -> np.ndarray:
  """The half-width of the t confidence interval of the mean along `axis`."""
  n = np.shape(values)[axis]
  return stats.t.ppf(0.5 + level / 2, n - 1) * stats.sem(values, axis)


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
  """Mean and the half-width of its t confidence interval (nan for n < 2)."""
  values = np.asarray(values, np.float64)
  if len(values) < 2:
    return float(values.mean()), math.nan
  return float(values.mean()), float(ci_half_width(values, level))


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


def epochs_to_reach(runs: Sequence[Run], factor: float = 2.0,
                    name: str = "epochs_to_2x_best") -> dict[str, float]:
  """Per seed, the first epoch whose test error is at most `factor` times
  the arch's best final test error; stored in each run's `extra[name]`.

  The arch's best final test error is the lowest, over the initializers run
  on it, of the mean over seeds of the final test error. Epoch 0 (before any
  step) counts where the run measured it (`Run.initial`); a seed that never
  gets there counts as `epochs + 1` (censored).

  Returns:
    Each arch's threshold, `factor` times its best final test error.
  """
  thresholds = {}
  for arch in dict.fromkeys(r.arch for r in runs):
    arch_runs = [r for r in runs if r.arch == arch]
    best = min(float(r.curves["test_error"][:, -1].mean()) for r in arch_runs)
    thresholds[arch] = factor * best
    for run in arch_runs:
      errors = run.curves["test_error"]
      if "test_error" in run.initial:
        errors = np.concatenate([run.initial["test_error"][:, None], errors], 1)
      first = 0 if "test_error" in run.initial else 1
      reached = errors <= thresholds[arch]
      run.extra[name] = np.where(reached.any(1), reached.argmax(1) + first,
                                 run.epochs + 1).astype(np.float64)
  return thresholds


def seconds_to_reach(runs: Sequence[Run], epoch_seconds: Mapping[str, float],
                     epochs: str = "epochs_to_2x_best") -> None:
  """Per seed, seconds to the target of `epochs` (`epochs_to_reach`), the
  initializer's own time included; stored in each run's `extra`.

  `seconds_to_2x_best`: the seed's init seconds plus its epochs to the
  target times the arch's `epoch_seconds` (one model's epoch); the first
  seed's init, which compiled, is replaced by the median of the others'
  (warm). `seconds_to_2x_best_first_call`: the same with the first seed's
  init time, compilation included, for every seed. A censored seed counts
  `epochs + 1` epochs, as in `epochs_to_reach`.
  """
  name = epochs.replace("epochs", "seconds", 1)
  for run in runs:
    init = np.asarray(run.init_seconds, np.float64)
    warm = init.copy()
    if len(init) > 1:
      warm[0] = np.median(init[1:])
    training_time = run.extra[epochs] * epoch_seconds[run.arch]
    run.extra[name] = warm + training_time
    run.extra[f"{name}_first_call"] = init[0] + training_time


def time_to_target(runs: Sequence[Run], data: data_lib.Dataset,
                   factor: float = 2.0) -> dict[str, Any]:
  """Epochs and seconds to `factor` times each arch's best final test error
  (`epochs_to_reach`, `seconds_to_reach`), with one model's epoch timed here
  on `data` (`training.epoch_seconds`); returns what the results state."""
  thresholds = epochs_to_reach(runs, factor)
  epoch_seconds = {arch: training.epoch_seconds(arch, data)
                   for arch in thresholds}
  seconds_to_reach(runs, epoch_seconds)
  return {"factor": factor, "thresholds": thresholds,
          "epoch_seconds": epoch_seconds,
          "steps_per_epoch": len(data.y_train) // training.BATCH_SIZE}


def head_start(runs: Sequence[Run],
               pairs: Sequence[tuple[str, str]] | None = None,
               window: int = training.STEP_WINDOW) -> list[dict[str, Any]]:
  """How long one initializer's first-epoch training loss stays below
  another's, in steps, from the runs' `step_loss` windows.

  Per (arch, pair) (default `control_pairs`), the paired difference of the
  window means, seed by seed: `steps` is where the leading stretch of
  windows whose difference is negative with paired t-test p < 0.05 ends
  (0: not even the first window), `windows` how many windows the first
  epoch has, and the mean difference in the first, the fifth and the last
  window. Runs without `step_loss` are skipped.
  """
  by_key = {(r.arch, r.init): r for r in runs if r.step_loss is not None}
  if pairs is None:
    pairs = control_pairs(list(dict.fromkeys(r.init for r in runs)))
  rows = []
  for arch in dict.fromkeys(arch for arch, _ in by_key):
    for ours, theirs in pairs:
      if (arch, ours) not in by_key or (arch, theirs) not in by_key:
        continue
      a, b = by_key[(arch, ours)].step_loss, by_key[(arch, theirs)].step_loss
      diff = a - b
      p = (stats.ttest_rel(a, b, axis=0).pvalue if len(diff) > 1 else
           np.full(diff.shape[1], np.nan))
      lower = (diff.mean(0) < 0) & (p < 0.05)
      lasting = int(np.argmin(lower)) if not lower.all() else len(lower)
      rows.append({
          "arch": arch, "comparison": f"{ours} - {theirs}",
          "steps": lasting * window, "windows": diff.shape[1],
          "window": window, "diff_first": float(diff[:, 0].mean()),
          "diff_fifth": float(diff[:, min(4, diff.shape[1] - 1)].mean()),
          "diff_last": float(diff[:, -1].mean())})
  return rows
