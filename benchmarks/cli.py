"""Command-line helpers of the entry scripts: shared options, data, settings."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks import data as data_lib
from benchmarks import reports
from benchmarks import training

RESULTS = pathlib.Path(__file__).parent / "results"


def base_parser(doc: str, *, archs: Sequence[str], epochs: int, seeds: int,
                epochs_help: str) -> argparse.ArgumentParser:
  """The options the MNIST benchmarks share: --arch, --epochs, --seeds,
  --data, --out, --quick."""
  parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
  parser.add_argument("--arch", nargs="+", choices=tuple(training.ARCHS),
                      default=list(archs))
  parser.add_argument("--epochs", type=int, default=epochs, help=epochs_help)
  parser.add_argument("--seeds", type=int, default=seeds,
                      help=f"number of seeds, 0..seeds-1 (default {seeds})")
  parser.add_argument("--data", nargs="+", default=["auto"],
                      metavar="SOURCE [DIR]",
                      help=f"one of {data_lib.SOURCES}; `idx DIR` for IDX "
                      "files, `tfds [DATA_DIR]`. auto: tfds MNIST when "
                      "prepared locally, else the bundled subset")
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
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


def command(script: str, argv: Sequence[str] | None) -> str:
  """The command line that ran `benchmarks/<script>` with `argv` (default
  `sys.argv[1:]`)."""
  return " ".join([f"python benchmarks/{script}",
                   *(sys.argv[1:] if argv is None else argv)])


def run_settings(script: str, argv: Sequence[str] | None,
                 dataset: data_lib.Dataset, args: argparse.Namespace,
                 seconds: float) -> dict[str, Any]:
  """The settings a results file states: data, training, command, wall time
  and machine."""
  return {
      "data": dataset.describe(), "epochs": args.epochs, "seeds": args.seeds,
      "optimizer": training.OPTIMIZER_DESCRIPTION,
      "command": command(script, argv),
      "wall time s": round(seconds, 1),
      **reports.machine_info(),
  }

