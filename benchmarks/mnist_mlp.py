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
  python benchmarks/mnist_mlp.py --data idx DIR --from RESULTS --out RESULTS

`--from` writes a finished comparison's tables again from its files
(mnist_mlp.json and mnist_mlp_epochs.csv), timing the epochs anew on the
`--data` it trained on, without training.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

if __package__ in (None, ""):  # run as `python benchmarks/mnist_mlp.py`
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import cli  # noqa: E402
from benchmarks import reports  # noqa: E402
from benchmarks import stats  # noqa: E402
from benchmarks import training  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = cli.base_parser(
      __doc__, archs=training.ARCHS, epochs=50, seeds=5,
      epochs_help="default 50 keeps the default run near 10 minutes on 2 CPU "
      "cores; the paper trains about 100")
  parser.add_argument("--init", nargs="+", choices=training.INITS,
                      default=list(training.INITS), metavar="INIT",
                      help=f"initializers to compare, of {training.INITS}")
  parser.add_argument("--from", dest="source", type=pathlib.Path,
                      metavar="RESULTS",
                      help="write the tables again from a finished "
                      "comparison's files in RESULTS, without training")
  args = cli.parse_checked(parser, argv, unique=("--arch", "--init"),
                           files=reports.run_files("mnist_mlp"))
  if args.source is not None and not all(
      (args.source / name).is_file() for name in reports.run_files(
          "mnist_mlp")[1:3]):
    parser.error(f"argument --from: {str(args.source)!r} does not hold a "
                 "finished comparison (mnist_mlp.json and "
                 "mnist_mlp_epochs.csv)")
  return args


def main(argv: Sequence[str] | None = None) -> str:
  args = parse_args(argv)
  if args.source is None:
    runs, settings, target = cli.run("mnist_mlp.py", argv, args)
  else:
    runs, settings = reports.load_runs(args.source, "mnist_mlp")
    settings["tables written again by"] = cli.command("mnist_mlp.py", argv)
    target = stats.time_to_target(runs, cli.load_data(args))
  text = reports.write_comparison(runs, settings, args.out, target)
  print(text)
  return text


if __name__ == "__main__":
  main()
