"""Controls and ablations: what the campaign's election itself buys.

Each campaign variant trains beside its random-pick control: the same He
candidates (same seed, same layer keys, same candidates per neuron), `fan_out`
of them picked uniformly at random instead of elected
(`campaign_linen(..., elect="random")`). Variants change one option of the
default campaign at a time: the alpha schedule, the candidates per neuron,
the class-balanced quotas, the images scored, the labels. Training, metrics,
tables and plots are `benchmarks/mnist_mlp.py`'s; every run with the same seed
shares the data order, so differences are paired by seed.

A quarter of the training images is held out as a validation split
(`data.with_validation`: 1,000 of the MNIST subset's 4,000), the campaign
scores and the networks train on the rest, and settings are chosen on the
validation error alone; the test split is only read to report.

  python benchmarks/ablation.py          # the full run: 10 seeds, 50 epochs
  python benchmarks/ablation.py --quick  # a first look
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/ablation.py`
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import data as data_lib  # noqa: E402
from benchmarks import mnist_mlp  # noqa: E402
from benchmarks.mnist_mlp import Init, Run  # noqa: E402

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
FINAL_METRICS = ("min_test_error", "final_test_error", "test_error_at_best_val")
VAL_METRICS = tuple(f"epoch{e}_val_error" for e in mnist_mlp.EARLY_EPOCHS) + (
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
  return max(e for e in mnist_mlp.EARLY_EPOCHS if e <= epochs)


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
  mean = lambda run, metric: mnist_mlp.mean_cell(run.summary()[metric], metric)
  head = ["arch", "rule (validation)", "chosen", "its validation value",
          "default campaign's validation value", "test metric",
          "chosen, on test", "chosen - its random-pick control, on test",
          "chosen - he, on test"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  rows = []
  for rule, (val_metric, test_metric) in selection_rules(epochs).items():
    for arch, run in choose(runs, val_metric).items():
      vs_control, vs_base = (
          mnist_mlp.paired_difference(run, by_key[(arch, other)], test_metric)
          for other in (control_of[run.init], "he"))
      lines.append("| " + " | ".join([
          arch, f"{rule}: lowest mean {mnist_mlp.LABELS[val_metric]}",
          run.init, mean(run, val_metric),
          mean(by_key[(arch, DEFAULT.name)], val_metric),
          mnist_mlp.LABELS[test_metric], mean(run, test_metric),
          mnist_mlp.difference_cell(vs_control),
          mnist_mlp.difference_cell(vs_base)]) + " |")
      rows.append({"arch": arch, "rule": rule, "validation_metric": val_metric,
                   "chosen": run.init, "test_metric": test_metric,
                   "against_control": vs_control, "against_base": vs_base})
  return "\n".join(lines), rows


def comparisons(runs: Sequence[Run], metrics: Sequence[str]
                ) -> dict[str, list[dict[str, Any]]]:
  """Every pair of `ablation_pairs` on each of the metrics the runs have."""
  metrics = mnist_mlp.present(runs, metrics)
  return {what: [row for m in metrics
                 for row in mnist_mlp.paired_comparisons(runs, m, pairs)]
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
  out.mkdir(parents=True, exist_ok=True)
  epochs = runs[0].curves["test_error"].shape[1]
  selection, chosen = selection_table(runs, epochs)
  test_rows = comparisons(runs, mnist_mlp.EARLY_METRICS + FINAL_METRICS)
  val_rows = comparisons(runs, VAL_METRICS)
  sections = []
  for what, rows in test_rows.items():
    if not rows:
      continue
    early = [r for r in rows if r["metric"] in mnist_mlp.EARLY_METRICS]
    final = [r for r in rows if r["metric"] in FINAL_METRICS]
    sections += [f"### {what[0].upper()}{what[1:]}", "",
                 mnist_mlp.comparison_table(early), "",
                 mnist_mlp.comparison_table(final), ""]
  text = "\n".join([
      "# Controls and ablations (benchmarks/ablation.py)", "",
      *[f"- {k}: {v}" for k, v in settings.items()], "",
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
      mnist_mlp.summary_table(runs, VAL_METRICS), "",
      "## Test split", "",
      mnist_mlp.summary_table(runs, mnist_mlp.EARLY_METRICS), "",
      mnist_mlp.summary_table(runs, FINAL_METRICS), "",
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
  (out / "ablation.md").write_text(text)
  (out / "ablation.json").write_text(json.dumps({
      "settings": settings,
      "runs": [{"arch": r.arch, "init": r.init, "seeds": list(r.seeds),
                **{m: v.tolist() for m, v in r.summary().items()}}
               for r in runs],
      "comparisons_test": test_rows, "comparisons_validation": val_rows,
      "selection": chosen}, indent=1, default=str))
  mnist_mlp.write_curves_csv(runs, out / "ablation_epochs.csv")
  mnist_mlp.plot_curves(runs, out / "ablation.png", panels=plot_panels(runs),
                        last_epoch=early_epoch(epochs))
  return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = mnist_mlp.base_parser(
      __doc__, archs=("mlp2", "mlp3"), epochs=EPOCHS, seeds=SEEDS,
      epochs_help=f"default {EPOCHS}: the full run (MLP-2 and MLP-3, 10 "
      "seeds, 30 runs) took 18 minutes on 2 CPU cores")
  parser.add_argument(
      "--family", nargs="+", choices=tuple(FAMILIES), default=list(FAMILIES),
      help="the variants to run beside the default campaign and the controls:"
      " alpha (constant 0.5, 0, 1), candidates (2, 10, 20 per neuron), "
      f"scoring (class_balanced off, {SCORE_ROWS} images scored, no labels)")
  return mnist_mlp.parse_checked(parser, argv)


def main(argv: Sequence[str] | None = None) -> str:
  args = parse_args(argv)
  dataset = mnist_mlp.load_data(args)
  dataset = data_lib.with_validation(
      dataset, int(VALIDATION_FRACTION * len(dataset.y_train)))
  print(dataset.describe())
  start = time.perf_counter()
  campaigns = [DEFAULT, *(v for f in args.family for v in FAMILIES[f])]
  runs = mnist_mlp.run_comparison(args.arch, ablation_inits(campaigns),
                                  dataset, range(args.seeds), args.epochs)
  settings = mnist_mlp.run_settings("ablation.py", argv, dataset, args,
                                    time.perf_counter() - start)
  settings["validation split"] = (
      f"{len(dataset.y_val):,} of the training images, stratified by class, "
      "seed 0 (data.with_validation); the campaign scores and the networks "
      "train on the rest; the test split is untouched")
  text = write_results(runs, settings, args.out)
  print(text)
  return text


if __name__ == "__main__":
  main()
