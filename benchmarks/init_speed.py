"""Speed and memory of `nc_jax.campaign_init` against its floor, one jitted ReLU matmul.

The campaign's unavoidable work is the candidates' responses on the batch,
`relu(x @ w)` with `w` of shape `(fan_in, N)` (for a conv, the batch's
convolution with N output channels), reduced over the rows. The floor is
exactly that, jitted, as one product or over the campaign's row chunks,
whichever is faster; the ratio says what drawing, scoring and electing add.
Floors and campaign are timed interleaved in one process, and a row whose
floor varied too much is marked noisy, never judged. Beside it: the compile
time, the campaign's peak working memory (measured in a fresh process per
row), the published algorithm's structure ported to NumPy
(`benchmarks/numpy_port.py`), the chunk size's effect, and the election's
cost alone as fan_out grows. The measurements are `benchmarks/speed.py`'s.

  python benchmarks/init_speed.py                   # the full tables
  python benchmarks/init_speed.py --rows 5000 --shapes 784x100 --fan-outs 256
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Sequence

if __package__ in (None, ""):  # run as `python benchmarks/init_speed.py`
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import cli  # noqa: E402
from benchmarks import reports  # noqa: E402
from benchmarks import speed  # noqa: E402
from benchmarks import speed_report  # noqa: E402
from benchmarks import speed_cases  # noqa: E402
from benchmarks import memory as memory_lib  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  # The campaign's statistics (standard deviations over the batch) need at
  # least 2 rows.
  parser.add_argument("--rows", type=cli.at_least(2), nargs="+",
                      default=[15_000, 60_000, 240_000],
                      help="batch sizes m of the dense rows")
  parser.add_argument("--shapes", type=cli.checked(speed_cases.parse_shape),
                      nargs="+",
                      default=[(784, 100), (784, 256), (1024, 1024)],
                      help="kernel shapes as FAN_INxFAN_OUT")
  parser.add_argument("--convs", nargs="*", choices=tuple(speed_cases.CONV_CASES),
                      default=list(speed_cases.CONV_CASES),
                      help="the CNN's convs, each on --conv-rows images")
  parser.add_argument("--conv-rows", type=cli.at_least(2), default=5_000,
                      help="images the conv rows are scored on")
  parser.add_argument("--chunk-sizes", type=cli.at_least(1), nargs="*",
                      default=[1024, 2048, 4096, 8192, 16384],
                      help="chunk sizes of the chunk table (784x100 at "
                      "m = 60,000, and the whole batch)")
  parser.add_argument("--chunk-rows", type=cli.at_least(2), default=60_000,
                      help="m of the chunk table")
  parser.add_argument("--max-flops", type=cli.positive_float, default=1e12,
                      help="skip shape/rows pairs whose floor exceeds this")
  parser.add_argument("--fan-outs", type=cli.at_least(1), nargs="*",
                      default=[256, 512, 1024, 2048, 4096],
                      help="fan_outs of the election table (fan_in 1024)")
  parser.add_argument("--groups", type=cli.at_least(1), nargs="+",
                      default=[10], help="group counts of the election table")
  parser.add_argument("--memory-rows", type=cli.at_least(2), nargs="*",
                      default=[60_000, 240_000],
                      help="m of the memory-scaling table (784x100)")
  parser.add_argument("--repeats", type=cli.at_least(1), default=7,
                      help="interleaved rounds of warm calls per row")
  parser.add_argument("--out", default="benchmarks/results", metavar="DIR",
                      help="directory for init_speed.md, .json and .png")
  args = parser.parse_args(argv)
  cli.check_unique(parser, args, "--rows", "--shapes", "--fan-outs",
                   "--groups", "--memory-rows", "--convs", "--chunk-sizes")
  smallest = min(speed.floor_flops(shape, m)
                 for shape in args.shapes for m in args.rows)
  if smallest > args.max_flops:
    parser.error(f"argument --max-flops: {args.max_flops:g} skips every "
                 f"--shapes/--rows pair (the smallest floor is "
                 f"{smallest:g} flops)")
  cli.check_out(parser, args.out, speed_report.RESULT_FILES)
  return args


def main(argv: Sequence[str] | None = None) -> str:
  args = parse_args(argv)
  start = time.perf_counter()
  rows = speed.run_benchmark(args.shapes, args.rows, args.max_flops,
                             repeats=args.repeats)
  convs = [speed_cases.CONV_CASES[name] for name in args.convs]
  rows += speed.run_benchmark(convs, [args.conv_rows], repeats=args.repeats)
  chunks = []
  if args.chunk_sizes:
    chunks = speed.run_chunk_sizes(
        (784, 100), args.chunk_rows,
        list(dict.fromkeys([*args.chunk_sizes, args.chunk_rows])),
        repeats=args.repeats)
  # The election table's floors are large products: half the repeats.
  election = speed.run_elections(args.fan_outs, args.groups,
                                 repeats=max(1, args.repeats // 2))
  memory = memory_lib.memory_scaling((784, 100), args.memory_rows)
  if args.memory_rows:  # a quarter of --conv-rows and all of them
    for case in convs:
      memory += memory_lib.memory_scaling(case, sorted({max(2, args.conv_rows // 4),
                                                   args.conv_rows}))
  info = {**reports.machine_info(), "data": speed_cases.DATA,
          "command": cli.command("init_speed.py", argv),
          "wall time s": round(time.perf_counter() - start, 1)}
  text = speed_report.write_results(rows, info, args.out, election, memory, chunks,
                             repeats=args.repeats)
  print(text)
  return text


if __name__ == "__main__":
  main()
