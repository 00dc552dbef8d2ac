"""The MNIST comparison on a LeNet-style CNN: He, LSUV and the campaign.

A CNN (Conv 3x3x32, ReLU, max-pool 2, Conv 3x3x64, ReLU, max-pool 2, Dense
128, ReLU, Dense 10; `training.CNN`) trains per seed with plain SGD (learning
rate 0.1, batch 100, cross-entropy, biases zero), all seeds at once, from He,
LSUV, He+campaign (every Conv and Dense kernel elected layer by layer), its
random-pick control He+random (the same candidates picked uniformly at random)
and He+campaign+LSUV (the campaign's elected kernels rescaled layer by layer to
unit output variance on the training images, as LSUV does: the election's
directions with LSUV's scale), and the first conv whitened (`whitening`:
the rest He; `whitening+campaign`: the rest elected). Runs with the same
seed share the data order
(a paired design); each initializer is compared seed by seed with He and with
the control. The initialized parameters are evaluated before any step
(epoch 0). Training, metrics, tables and plots are the MLP comparison's
(`benchmarks/training.py`, `benchmarks/reports.py`).

  python benchmarks/mnist_cnn.py          # the full run: 10 seeds, 30 epochs
  python benchmarks/mnist_cnn.py --quick  # a first look (the CI smoke test)
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/mnist_cnn.py`
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import cli  # noqa: E402
from benchmarks import reports  # noqa: E402
from benchmarks import stats  # noqa: E402
from benchmarks import training  # noqa: E402
from benchmarks.training import Run  # noqa: E402

STEM = "mnist_cnn"
INITS = ("he", "lsuv", "he+campaign", "he+random", "he+campaign+lsuv",
         *training.WHITENING_INITS)
BASELINE, CONTROL = "he", "he+random"
EARLY_METRICS = tuple(f"epoch{e}_{name}"
                      for name in ("train_loss", "test_error")
                      for e in (0, *training.EARLY_EPOCHS))
FINAL_METRICS = ("min_test_error", "final_test_error",
                 *training.TARGET_METRICS)
COMPARED_METRICS = (*FINAL_METRICS, *EARLY_METRICS)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = cli.base_parser(
      __doc__, archs=tuple(training.CNN_ARCHS), epochs=30, seeds=10,
      arch_choices=tuple(training.CNN_ARCHS), out=cli.RESULTS / "cnn",
      epochs_help="default 30")
  parser.add_argument("--init", nargs="+", choices=INITS, default=list(INITS),
                      metavar="INIT",
                      help=f"initializers to compare, of {INITS}")
  return cli.parse_checked(parser, argv, unique=("--arch", "--init"),
                           files=reports.run_files(STEM))


def comparison_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
  """Each initializer against He, then each but He against the control."""
  return ([(n, BASELINE) for n in names if n != BASELINE and BASELINE in names]
          + [(n, CONTROL) for n in names
             if n not in (BASELINE, CONTROL) and CONTROL in names])


def write_results(runs: Sequence[Run], settings: dict[str, Any],
                  target: dict[str, Any], out: pathlib.Path) -> str:
  """Writes mnist_cnn.md, .json, _epochs.csv and .png, with the time to
  accuracy `target` (`stats.time_to_target`); returns the markdown."""
  pairs = comparison_pairs(list(dict.fromkeys(r.init for r in runs)))
  rows = [row for metric in training.present(runs, COMPARED_METRICS)
          for row in stats.paired_comparisons(runs, metric, pairs)]
  by_metric = lambda metrics: [r for r in rows if r["metric"] in metrics]
  text = "\n".join([
      "# MNIST CNN comparison (benchmarks/mnist_cnn.py)", "",
      "LeNet-style CNN: Conv 3x3x32, ReLU, max-pool 2, Conv 3x3x64, ReLU, "
      "max-pool 2, Dense 128, ReLU, Dense 10 (SAME padding, biases 0; the "
      "784 pixels as a 28x28x1 image). `whitening`: the first conv's kernel "
      "whitens its 3x3 patches (`nc_jax.whitening_init`: the 9 whitening "
      "directions and 7 random unit combinations of them, each with both "
      "signs: 32 filters), the rest He; `whitening+campaign`: the same first conv, "
      "the rest elected by the campaign.", "",
      *reports.settings_lines(settings), "",
      "Mean ± 95% CI (t) over seeds.", "",
      reports.summary_table(runs, training.SUMMARY_METRICS), "",
      *reports.target_lines(runs, target), "",
      "At init and early training. At init (epoch 0): the initialized "
      "parameters before any step; its train loss is the mean cross-entropy "
      "over the whole training set, while after epoch e it is the mean over "
      "that epoch's minibatches.", "",
      reports.summary_table(runs, EARLY_METRICS), "",
      *reports.head_start_lines(runs, pairs),
      f"Paired by seed (same data order): first minus second; negative = the "
      f"first is lower. Each initializer against {BASELINE}, then against "
      f"the campaign's control {CONTROL} (the same candidates, same key, "
      "picked uniformly at random). Each cell: mean difference ± 95% CI "
      "(bold: paired t-test p < 0.05), p, seeds on which the first is "
      "lower.", "",
      reports.comparison_table(by_metric(FINAL_METRICS)), "",
      reports.comparison_table(by_metric(EARLY_METRICS)), ""])
  reports.write_run_results(out, STEM, text, {
      "settings": settings, "time_to_target": target,
      "runs": reports.run_records(runs), "comparisons": rows}, runs)
  return text


def main(argv: Sequence[str] | None = None) -> str:
  args = parse_args(argv)
  runs, settings, target = cli.run("mnist_cnn.py", argv, args, at_init=True)
  text = write_results(runs, settings, target, args.out)
  print(text)
  return text


if __name__ == "__main__":
  main()
