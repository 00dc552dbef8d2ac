"""The controls-and-ablations study that `benchmarks/ablation.py` runs.

Its runs (the default campaign, one-option variants, each beside its
random-pick control: the same candidates picked uniformly at random), its
paired comparisons, its choice of settings on the validation split alone
(the test split is only read to report), and its report.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

from benchmarks import reports
from benchmarks import stats
from benchmarks import training
from benchmarks.training import Init, Run

# The default campaign: He candidates, alpha falling linearly from 1 to 0 over
# the layers, 5 candidates per neuron, class-balanced quotas, every training
# image scored, with labels.
DEFAULT = Init("he+campaign")
SCORE_ROWS = 500
# Each variant changes one option of DEFAULT; families for `--family` and
# the plot.
FAMILIES = {
    "alpha": tuple(Init("he+campaign", {"alpha": a}) for a in (0.5, 0.0, 1.0)),
    "candidates": tuple(
        Init("he+campaign", {"candidates_per_neuron": n}) for n in (2, 10, 20)),
    "scoring": (Init("he+campaign", {"class_balanced": False}),
                Init("he+campaign", score_rows=SCORE_ROWS),
                Init("he+campaign", labels=False)),
}
CAMPAIGNS = (DEFAULT, *(v for family in FAMILIES.values() for v in family))
VALIDATION_FRACTION = 0.25
EPOCHS = 50
SEEDS = 10
# Settings are chosen per architecture on the validation split: the campaign
# variant with the lowest mean of each rule's metric; the test metric beside
# it is what that choice is reported with.
SELECTION_RULES = {
    "early": ("epoch10_val_error", "epoch10_test_error"),
    "final": ("min_val_error", "test_error_at_best_val"),
}
FINAL_METRICS = (*training.FINAL_METRICS, "test_error_at_best_val")
VAL_METRICS = tuple(f"epoch{e}_val_error" for e in training.EARLY_EPOCHS) + (
    "min_val_error", "final_val_error")


def random_control(spec: Init) -> Init:
  """The campaign's random-pick control: the same candidates, picked at random.

  The candidates depend only on the key and the candidates per neuron, so the
  control keeps `candidates_per_neuron` and drops every other option.
  """
  base, _, _ = spec.init.partition("+")
  cpn = spec.options.get("candidates_per_neuron")
  return Init(f"{base}+random",
              {} if cpn is None else {"candidates_per_neuron": cpn})


def ablation_inits(campaigns: Sequence[Init] = CAMPAIGNS) -> list[Init]:
  """Every run: the base initializer, the random-pick controls, the campaigns."""
  bases = [Init(s.init.partition("+")[0]) for s in campaigns]
  unique = {s.name: s for s in [*bases, *map(random_control, campaigns)]}
  return [*unique.values(), *campaigns]


def campaigns_of(families: Sequence[str]) -> list[Init]:
  """The default campaign and the variants of the named families."""
  return [DEFAULT, *(v for f in families for v in FAMILIES[f])]


def ablation_pairs(campaigns: Sequence[Init] = CAMPAIGNS
                   ) -> dict[str, list[tuple[str, str]]]:
  """The paired comparisons, by what they measure: (ours, theirs) names."""
  controls = list(dict.fromkeys(random_control(c).name for c in campaigns))
  return {
      "each campaign against its random-pick control (the election's effect)":
          [(c.name, random_control(c).name) for c in campaigns],
      "each variant against the default campaign (the option's effect)":
          [(c.name, DEFAULT.name) for c in campaigns if c != DEFAULT],
      "each random-pick control against its base initializer (the candidate "
      "draw alone; nothing is expected)":
          [(name, name.partition("+")[0]) for name in controls],
  }


def early_epoch(epochs: int) -> int:
  """The epoch the early rule reads: 10, or the last early epoch trained."""
  return max(e for e in training.EARLY_EPOCHS if e <= epochs)


def selection_rules(epochs: int) -> dict[str, tuple[str, str]]:
  """`SELECTION_RULES` with the early epoch available in a run this long."""
  e = early_epoch(epochs)
  return {rule: tuple(m.replace("epoch10_", f"epoch{e}_") for m in metrics)
          for rule, metrics in SELECTION_RULES.items()}


def choose(runs: Sequence[Run], metric: str) -> dict[str, Run]:
  """Per arch, the campaign run with the lowest mean of a validation metric."""
  if not metric.endswith("val_error"):
    raise ValueError(
        f"settings are chosen on the validation split; `metric` must be a "
        f"validation metric, got {metric!r}.")
  chosen = {}
  for run in runs:
    if "+campaign" not in run.init:
      continue
    best = chosen.get(run.arch)
    if best is None or (run.summary()[metric].mean()
                        < best.summary()[metric].mean()):
      chosen[run.arch] = run
  return chosen


def selection_table(runs: Sequence[Run], epochs: int
                    ) -> tuple[str, list[dict[str, Any]]]:
  """Markdown and rows: the setting each rule chooses, and its test figures."""
  by_key = {(r.arch, r.init): r for r in runs}
  control_of = {c.name: random_control(c).name for c in CAMPAIGNS}
  mean = lambda run, metric: reports.mean_cell(run.summary()[metric], metric)
  head = ["arch", "rule (validation)", "chosen", "its validation value",
          "default campaign's validation value", "test metric",
          "chosen, on test", "chosen - its random-pick control, on test",
          "chosen - he, on test"]
  lines, rows = [], []
  for rule, (val_metric, test_metric) in selection_rules(epochs).items():
    for arch, run in choose(runs, val_metric).items():
      vs_control, vs_base = (
          stats.paired_difference(run, by_key[(arch, other)], test_metric)
          for other in (control_of[run.init], "he"))
      lines.append([
          arch, f"{rule}: lowest mean {training.LABELS[val_metric]}",
          run.init, mean(run, val_metric),
          mean(by_key[(arch, DEFAULT.name)], val_metric),
          training.LABELS[test_metric], mean(run, test_metric),
          reports.difference_cell(vs_control),
          reports.difference_cell(vs_base)])
      rows.append({"arch": arch, "rule": rule, "validation_metric": val_metric,
                   "chosen": run.init, "test_metric": test_metric,
                   "against_control": vs_control, "against_base": vs_base})
  return reports.markdown_table(head, lines), rows


def comparisons(runs: Sequence[Run], metrics: Sequence[str]
                ) -> dict[str, list[dict[str, Any]]]:
  """Every pair of `ablation_pairs` on each of the metrics the runs have."""
  metrics = training.present(runs, metrics)
  return {what: [row for m in metrics
                 for row in stats.paired_comparisons(runs, m, pairs)]
          for what, pairs in ablation_pairs().items()}


def plot_panels(runs: Sequence[Run]) -> list[tuple[str, list[Run]]]:
  """One panel per arch and family run: the family's variants beside the
  default campaign, the random-pick controls and He."""
  panels = []
  for arch in dict.fromkeys(r.arch for r in runs):
    by_name = {r.init: r for r in runs if r.arch == arch}
    for family, variants in FAMILIES.items():
      if not any(v.name in by_name for v in variants):
        continue
      specs = [DEFAULT, *variants]
      if family == "candidates":  # each beside its own control
        names = [n for s in specs for n in (s.name, random_control(s).name)]
      else:
        names = ["he", random_control(DEFAULT).name] + [s.name for s in specs]
      panels.append((f"{arch}: {family}",
                     [by_name[n] for n in names if n in by_name]))
  return panels


def write_results(runs: Sequence[Run], settings: dict[str, Any],
                  out: pathlib.Path) -> str:
  """Writes ablation.md, .json, _epochs.csv and .png; returns the markdown."""
  epochs = runs[0].epochs
  selection, chosen = selection_table(runs, epochs)
  test_rows = comparisons(runs, training.EARLY_METRICS + FINAL_METRICS)
  val_rows = comparisons(runs, VAL_METRICS)
  sections = []
  for what, rows in test_rows.items():
    if not rows:
      continue
    early = [r for r in rows if r["metric"] in training.EARLY_METRICS]
    final = [r for r in rows if r["metric"] in FINAL_METRICS]
    sections += [f"### {what[0].upper()}{what[1:]}", "",
                 reports.comparison_table(early), "",
                 reports.comparison_table(final), ""]
  text = "\n".join([
      "# Controls and ablations (benchmarks/ablation.py)", "",
      *reports.settings_lines(settings), "",
      "Runs: `he` (He normal), `he+campaign` (the default campaign: He "
      "candidates, alpha 1 -> 0 over the layers, 5 candidates per neuron, "
      "class-balanced, scored on every training image, with labels), each "
      "variant naming the one option it changes (`alpha=0.5`: constant "
      "alpha; `candidates_per_neuron=2`; `class_balanced=False`; "
      f"`rows={SCORE_ROWS}`: scored on the first {SCORE_ROWS} training "
      "images; `y=None`: no labels, the unsupervised campaign), and each "
      "`he+random ...`: the random-pick control, the same candidates as the "
      "campaign with the same candidates per neuron, picked uniformly at "
      "random. Mean ± 95% CI (t) over seeds.", "",
      "## Validation split (settings are chosen here)", "",
      reports.summary_table(runs, VAL_METRICS), "",
      "## Test split", "",
      reports.summary_table(runs, training.EARLY_METRICS), "",
      reports.summary_table(runs, FINAL_METRICS), "",
      "## Settings chosen on the validation split", "",
      "For each architecture and rule, the campaign variant with the lowest "
      "mean validation metric; its test figures are read afterwards. "
      "Differences on test: mean ± 95% CI (bold: paired t-test p < 0.05), p, "
      "seeds on which the chosen setting is lower.", "",
      selection, "",
      "## Paired comparisons on the test split", "",
      "First minus second, paired by seed; negative = the first is lower. "
      "Each cell: mean difference ± 95% CI (bold: paired t-test p < 0.05), p, "
      "seeds on which the first is lower. p-values are not corrected for "
      "the number of comparisons. The same comparisons on the validation "
      "split are in ablation.json.", "",
      *sections])
  reports.write_run_results(out, "ablation", text, {
      "settings": settings, "runs": reports.run_records(runs),
      "comparisons_test": test_rows, "comparisons_validation": val_rows,
      "selection": chosen}, runs, panels=plot_panels(runs),
      last_epoch=early_epoch(epochs))
  return text
