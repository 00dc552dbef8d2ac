"""Controls and ablations: what the campaign's election itself buys.

Each campaign variant trains beside its random-pick control: the same He
candidates (same seed, same layer keys, same candidates per neuron), `fan_out`
of them picked uniformly at random instead of elected
(`campaign_linen(..., elect="random")`). Variants change one option of the
default campaign at a time: the alpha schedule, the candidates per neuron,
the class-balanced quotas, the images scored, the labels. Training, metrics,
tables and plots are the MNIST comparison's (`benchmarks/training.py`,
`benchmarks/reports.py`); every run with the same seed shares the data order,
so differences are paired by seed. The study itself is
`benchmarks/ablation_study.py`.

A quarter of the training images is held out as a validation split
(`data.with_validation`: 1,000 of the MNIST subset's 4,000), the campaign
scores and the networks train on the rest, and settings are chosen on the
validation error alone; the test split is only read to report.

  python benchmarks/ablation.py          # the full run: 10 seeds, 50 epochs
  python benchmarks/ablation.py --quick  # a first look
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Sequence

if __package__ in (None, ""):  # run as `python benchmarks/ablation.py`
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import ablation_study as study  # noqa: E402
from benchmarks import cli  # noqa: E402
from benchmarks import data as data_lib  # noqa: E402
from benchmarks import reports  # noqa: E402
from benchmarks import training  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = cli.base_parser(
      __doc__, archs=("mlp2", "mlp3"), epochs=study.EPOCHS, seeds=study.SEEDS,
      epochs_help=f"default {study.EPOCHS}: the full run (MLP-2 and MLP-3, 10 "
      "seeds, 30 runs) took 18 minutes on 2 CPU cores")
  parser.add_argument(
      "--family", nargs="+", choices=tuple(study.FAMILIES),
      default=list(study.FAMILIES),
      help="the variants to run beside the default campaign and the controls:"
      " alpha (constant 0.5, 0, 1), candidates (2, 10, 20 per neuron), "
      f"scoring (class_balanced off, {study.SCORE_ROWS} images scored, no "
      "labels)")
  return cli.parse_checked(parser, argv, unique=("--arch", "--family"),
                           files=reports.run_files("ablation"))


def main(argv: Sequence[str] | None = None) -> str:
  args = parse_args(argv)
  dataset = cli.load_data(args)
  dataset = data_lib.with_validation(
      dataset, int(study.VALIDATION_FRACTION * len(dataset.y_train)))
  print(dataset.describe())
  start = time.perf_counter()
  runs = training.run_comparison(
      args.arch, study.ablation_inits(study.campaigns_of(args.family)),
      dataset, range(args.seeds), args.epochs)
  settings = cli.run_settings("ablation.py", argv, dataset, args,
                              time.perf_counter() - start)
  settings["validation split"] = (
      f"{len(dataset.y_val):,} of the training images, stratified by class, "
      "seed 0 (data.with_validation); the campaign scores and the networks "
      "train on the rest; the test split is untouched")
  text = study.write_results(runs, settings, args.out)
  print(text)
  return text


if __name__ == "__main__":
  main()
