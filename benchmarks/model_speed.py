"""Speed of whole-model walks (`campaign_linen`, `lsuv_linen`) against their floor.

For each model: one compiled forward pass plus each weight layer's fused
pass over its N candidates' responses is the floor; the campaign's warm
call (min over interleaved repeats, new key each) is divided by it, and
LSUV's by one compiled forward. A first call runs in a fresh process with
its XLA compilations counted (and those of warm calls with a new key and a
new batch), then in a second fresh process that finds jax's persistent
compilation cache filled. Rows whose floor moved more than 30% are noisy
and never judged, nor is LSUV when the forward moved more than 30%. The
measurements are `benchmarks/whole_model.py`'s.

  python benchmarks/model_speed.py                          # all four models
  python benchmarks/model_speed.py --models lenet --repeats 3
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Sequence

if __package__ in (None, ""):  # run as `python benchmarks/model_speed.py`
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import cli  # noqa: E402
from benchmarks import reports  # noqa: E402
from benchmarks import whole_model  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", metavar="MODEL",
                      choices=tuple(whole_model.MODELS),
                      default=list(whole_model.MODELS),
                      help=f"models to time, of {tuple(whole_model.MODELS)}")
  parser.add_argument("--rows", type=cli.at_least(2), default=4_000,
                      help="MNIST-subset images each walk runs on")
  parser.add_argument("--repeats", type=cli.at_least(1), default=5,
                      help="interleaved rounds of warm calls")
  parser.add_argument("--out", default="benchmarks/results", metavar="DIR",
                      help="directory for model_speed.md and .json")
  args = parser.parse_args(argv)
  cli.check_unique(parser, args, "--models")
  cli.check_out(parser, args.out, whole_model.RESULT_FILES)
  return args


def main(argv: Sequence[str] | None = None) -> str:
  args = parse_args(argv)
  start = time.perf_counter()
  rows = [whole_model.bench_model(whole_model.MODELS[name], args.rows,
                                   args.repeats) for name in args.models]
  info = {**reports.machine_info(), "images": args.rows,
          "repeats": args.repeats,
          "command": cli.command("model_speed.py", argv),
          "wall time s": round(time.perf_counter() - start, 1)}
  text = whole_model.write_results(rows, info, args.out)
  print(text)
  return text


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] == whole_model.CHILD_FLAG:
    whole_model.child_main(sys.argv[2:])
  else:
    main()
