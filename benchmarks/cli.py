"""Command-line helpers of the entry scripts: shared options, data, settings.

A command-line mistake gets argparse's usage and one error line, exit status
2, before any work: argument types check values (`at_least`,
`positive_float`, `checked`), and `check_data` and `check_out` check, after
parsing, that the data is there and that `--out` can be written.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from benchmarks import data as data_lib
from benchmarks import reports
from benchmarks import stats
from benchmarks import training

RESULTS = pathlib.Path(__file__).parent / "results"


def _number(cast: Callable[[str], Any], kind: str, valid: Callable[[Any], bool],
            requirement: str) -> Callable[[str], Any]:
  """An argparse type: `cast(text)`, which must satisfy `valid`."""

  def parse(text: str) -> Any:
    try:
      value = cast(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    if not valid(value):
      raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}")
    return value

  return parse


def at_least(low: int) -> Callable[[str], int]:
  """An argparse type: an integer of at least `low`."""
  return _number(int, "an integer", lambda v: v >= low, f"at least {low}")


# An argparse type: a number above zero (`inf` included, `nan` not).
positive_float = _number(float, "a number", lambda v: v > 0, "above 0")


def checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
  """An argparse type from a parser that raises ValueError: the error's
  message becomes argparse's."""

  def parse_value(text: str) -> Any:
    try:
      return parse(text)
    except ValueError as error:
      raise argparse.ArgumentTypeError(str(error)) from None

  parse_value.__name__ = parse.__name__
  return parse_value


def check_unique(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 *flags: str) -> None:
  """A usage error for a value given twice to a list option."""
  for flag in flags:
    values = getattr(args, flag.lstrip("-").replace("-", "_"))
    seen = set()
    for value in values:
      if value in seen:
        parser.error(f"argument {flag}: {value!r} given twice")
      seen.add(value)


def check_data(parser: argparse.ArgumentParser, data: Sequence[str]) -> None:
  """A usage error, at once, for `--data` that `data_lib.load` could not
  load: an unknown source, a missing or superfluous directory, data that is
  not there (`data_lib.check`)."""
  if len(data) > 2:
    parser.error("argument --data: takes a source and at most one directory")
  if data[0] not in data_lib.SOURCES:
    parser.error(f"argument --data: invalid choice: {data[0]!r} (choose from "
                 f"{', '.join(map(repr, data_lib.SOURCES))})")
  try:
    data_lib.check(data[0], data[1] if len(data) > 1 else None)
  except (ValueError, data_lib.DataUnavailable) as error:
    parser.error(f"argument --data: {error}")


def check_out(parser: argparse.ArgumentParser, out: str | os.PathLike[str],
              files: Iterable[str] = (), flag: str = "--out") -> None:
  """A usage error, before any work, where the results cannot be written.

  Creates the directory `out` if missing, then writes and removes a probe
  file in it; each of `files` (the names the results will take in `out`)
  must be absent or a writable file.
  """
  path = pathlib.Path(out)
  try:
    path.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=path, prefix=".write-check-")
    os.close(fd)
    os.remove(probe)
    for name in files:
      target = path / name
      if target.exists() or target.is_symlink():
        if not target.is_file():
          raise IsADirectoryError(f"{target} is not a regular file")
        with open(target, "ab"):
          pass
  except OSError as error:
    reason = error.strerror or str(error)
    where = f" ({error.filename})" if error.filename else ""
    parser.error(f"argument {flag}: cannot write results to {str(out)!r}: "
                 f"{reason}{where}")


class _Formatter(argparse.HelpFormatter):
  """Shows `--data` as what it takes, one source and at most one directory
  (argparse would repeat the metavar of a `nargs="+"` option)."""

  def _format_args(self, action: argparse.Action, default: str) -> str:
    if action.dest == "data":
      return str(action.metavar)
    return super()._format_args(action, default)


def base_parser(doc: str, *, archs: Sequence[str], epochs: int, seeds: int,
                epochs_help: str, arch_choices: Sequence[str] | None = None,
                out: pathlib.Path = RESULTS) -> argparse.ArgumentParser:
  """The options the MNIST benchmarks share: --arch (one of `arch_choices`,
  default the MLPs of `training.ARCHS`), --epochs, --seeds, --data, --out
  (default `out`), --init-rows, --quick."""
  parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=_Formatter)
  choices = tuple(arch_choices or training.ARCHS)
  parser.add_argument("--arch", nargs="+", choices=choices,
                      default=list(archs), metavar="ARCH",
                      help=f"architectures, of {choices}")
  parser.add_argument("--epochs", type=at_least(1), default=epochs,
                      help=epochs_help)
  parser.add_argument("--seeds", type=at_least(1), default=seeds,
                      help=f"number of seeds, 0..seeds-1 (default {seeds})")
  parser.add_argument("--data", nargs="+", default=["auto"],
                      metavar="SOURCE [DIR]",
                      help=f"one of {data_lib.SOURCES}; `idx DIR` for IDX "
                      "files, `tfds [DATA_DIR]`. auto: tfds MNIST when "
                      "prepared locally, else the bundled subset")
  parser.add_argument("--out", type=pathlib.Path, default=out, metavar="DIR",
                      help="directory for the results")
  parser.add_argument("--init-rows", type=at_least(2), metavar="N",
                      help="the data-driven initializers (LSUV, campaign, "
                      "whitening) see the first N training images (default "
                      "all; a CNN's walk holds its activations on all of "
                      "them at once)")
  parser.add_argument("--quick", action="store_true",
                      help="a first look: at most 3 epochs and 2 seeds, the "
                      "first 1,000 training images")
  return parser


def parse_checked(parser: argparse.ArgumentParser,
                  argv: Sequence[str] | None, *,
                  unique: Sequence[str] = ("--arch",),
                  files: Iterable[str] = ()) -> argparse.Namespace:
  """Parses and checks the shared options, before any work: each of the list
  options `unique` without repeats, `--data` there (`check_data`), `--out`
  writable for `files` (`check_out`)."""
  args = parser.parse_args(argv)
  check_unique(parser, args, *unique)
  check_data(parser, args.data)
  check_out(parser, args.out, files)
  if args.quick:
    args.epochs, args.seeds = min(args.epochs, 3), min(args.seeds, 2)
  return args


def load_data(args: argparse.Namespace) -> data_lib.Dataset:
  """The data set `--data` names; with `--quick`, its first 1,000 training
  images; with `--init-rows N`, the initializers see its first N."""
  dataset = data_lib.load(args.data[0], args.data[1] if len(args.data) > 1
                          else None)
  if args.quick:
    dataset = dataclasses.replace(
        dataset, name=dataset.name + ", first 1,000 training images",
        x_train=dataset.x_train[:1000], y_train=dataset.y_train[:1000])
  if args.init_rows is not None and args.init_rows < len(dataset.y_train):
    dataset = dataclasses.replace(dataset, init_rows=args.init_rows)
  return dataset


def command(script: str, argv: Sequence[str] | None) -> str:
  """The command line that ran `benchmarks/<script>` with `argv` (default
  `sys.argv[1:]`)."""
  return " ".join([f"python benchmarks/{script}",
                   *(sys.argv[1:] if argv is None else argv)])


def run(
    script: str, argv: Sequence[str] | None, args: argparse.Namespace,
    **options: Any
) -> tuple[list[training.Run], dict[str, Any], dict[str, Any]]:
  """Loads the data, trains every (`args.arch`, `args.init`) pair over
  `args.seeds` and `args.epochs`, then times the time to accuracy
  (`stats.time_to_target`); returns the runs, their settings and that."""
  dataset = load_data(args)
  print(dataset.describe())
  start = time.perf_counter()
  runs = training.run_comparison(args.arch, args.init, dataset,
                                 range(args.seeds), args.epochs, **options)
  settings = run_settings(script, argv, dataset, args,
                          time.perf_counter() - start)
  return runs, settings, stats.time_to_target(runs, dataset)


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

