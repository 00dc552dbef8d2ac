"""Speed and memory of `nc_jax.campaign_init` against its floor, one jitted ReLU matmul.

The campaign's unavoidable work is the candidates' responses on the batch,
`relu(x @ w)` with `w` of shape `(fan_in, N)`, reduced over the rows. The floor
is exactly that, jitted; the ratio says what drawing, scoring and electing add.
Beside it: the compile time, the campaign's peak working memory (measured in a
fresh process per row, `benchmarks/memory.py`),
the published algorithm's structure ported to NumPy
(`benchmarks/numpy_port.py`), and the election's cost alone as fan_out grows.
"""

from __future__ import annotations

import functools
import itertools
import statistics
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm.auto as tqdm

import nc_jax
from benchmarks import memory as memory_lib
from benchmarks import numpy_port
from benchmarks import speed_cases
from benchmarks import speed_report
from benchmarks import timing

# Targets for the ratio of mins, on 2 CPU cores: (case, m) -> ratio.
TARGETS = {("784x100", 60_000): 1.25, ("784x256", 60_000): 1.2,
           ("1024x1024", 60_000): 1.3, ("conv1", 5_000): 1.5,
           ("conv2", 5_000): 1.5}


@functools.partial(jax.jit, static_argnames="case")
def _floor(x: jax.Array, w: jax.Array, case: speed_cases.Case) -> jax.Array:
  """ReLU responses summed over the rows (dense) or over each image's
  positions (conv)."""
  z = jax.nn.relu(case.responses(x, w))
  return z.sum(axis=tuple(range(1, z.ndim - 1)) if case.is_conv else 0)


@functools.partial(jax.jit, static_argnames=("case", "chunk_size"))
def _chunked_floor(x: jax.Array, w: jax.Array, case: speed_cases.Case,
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


def _candidates(case: speed_cases.Case, n: int, seed: int) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).standard_normal(
      (*case.shape[:-1], n), np.float32) / np.sqrt(np.prod(case.shape[:-1])))


def floor_seconds(x: jax.Array, num_candidates: int, repeats: int,
                  seed: int = 0) -> float:
  """Median warm time of the plain floor, `relu(x @ w).sum(0)` with N
  columns."""
  case = speed_cases.as_case((x.shape[1], num_candidates))
  w = _candidates(case, num_candidates, seed)
  return timing.time_calls(lambda _: _floor(x, w, case), repeats)[1]


def bench_config(case: speed_cases.Case | tuple[int, int], m: int, *,
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
    case: the kernel (`speed_cases.Case`), or a dense `(fan_in, fan_out)`.
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
    One table row, keyed by `speed_report.COLUMNS`; skipped measurements are None.
  """
  case = speed_cases.as_case(case)
  n = candidates_per_neuron * case.shape[-1]
  x, y = case.batch(m, seed)
  chunk = min(m, chunk_size or nc_jax.default_chunk_size(
      m, n, positions=case.positions, platform=jax.default_backend()) or m)
  w = _candidates(case, n, seed)
  keys = jax.random.split(jax.random.key(seed), repeats + 1)
  first, warm = timing.interleaved({
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
    port = timing.time_calls(lambda _: numpy_port.campaign_select(
        x_np, y_np, w_np, case.shape[1], 0.5, 10), max(1, repeats // 2))[1]
  return dict(zip(speed_report.COLUMNS, (
      case.name, m, n, speed_cases.chunk_cell(chunk_size),
      best["plain"] * 1e3, best["chunked"] * 1e3, spread,
      best["campaign"] * 1e3, median["campaign"] * 1e3, ratio,
      median["campaign"] / median[floor], target,
      timing.verdict(ratio, spread, target), first["campaign"] - best["campaign"],
      memory_lib.peak_memory_mb(case, m, seed, chunk_size) if memory else None,
      None if port is None else port * 1e3,
      None if port is None else port / best["campaign"])))


def bench_election(fan_in: int, fan_out: int, num_groups: int, *,
                   floor_rows: int = speed_cases.ELECTION_FLOOR_ROWS, repeats: int = 3,
                   seed: int = 0) -> dict[str, Any]:
  """The election (Steps 3-4, `nc_jax.select_neurons`) alone against the
  floor at `floor_rows` rows.

  Candidates are He-normal draws, scores uniform in [0, 1), and each
  candidate's group uniform over `num_groups` (class-balanced quotas).

  Returns:
    One row of the election table, keyed by `speed_report.ELECTION_COLUMNS`.
  """
  n = 5 * fan_out
  key_w, key_s, key_g = jax.random.split(jax.random.key(seed), 3)
  w = nc_jax.draw_candidates(key_w, jax.nn.initializers.he_normal(),
                             (fan_in, fan_out), n)
  scores = jax.random.uniform(key_s, (n,))
  groups = jax.random.randint(key_g, (n,), 0, num_groups)
  election = timing.time_calls(lambda _: nc_jax.select_neurons(
      w, scores, fan_out, groups, num_groups=num_groups), repeats)[1]
  x, _ = speed_cases.load_dataset(floor_rows, fan_in, seed)
  floor = floor_seconds(jnp.asarray(x), n, repeats, seed)
  return dict(zip(speed_report.ELECTION_COLUMNS, (
      fan_in, fan_out, n, num_groups, election * 1e3, floor * 1e3,
      election / floor)))


def floor_flops(shape: tuple[int, int], m: int,
                candidates_per_neuron: int = 5) -> int:
  """The floor's flops, `2 m fan_in N`, that `run_benchmark`'s `max_flops`
  bounds."""
  return speed_cases.as_case(shape).floor_flops(m, candidates_per_neuron)


def run_benchmark(cases: Sequence[speed_cases.Case | tuple[int, int]],
                  rows: Sequence[int], max_flops: float = float("inf"),
                  **kwargs: Any) -> list[dict[str, Any]]:
  """Runs `bench_config` over every case and row count, with a progress bar.

  Args:
    cases: kernels (`speed_cases.Case`s or dense shapes `(fan_in, fan_out)`).
    rows: batch sizes m.
    max_flops: skip configurations whose floor exceeds this many flops.
    **kwargs: passed to `bench_config`.

  Returns:
    The table rows.
  """
  per_neuron = kwargs.get("candidates_per_neuron", 5)
  configs = [(case, m) for case, m in itertools.product(map(speed_cases.as_case, cases),
                                                        rows)
             if case.floor_flops(m, per_neuron) <= max_flops]
  return [bench_config(case, m, **kwargs)
          for case, m in tqdm.tqdm(configs, desc="init_speed")]


def run_chunk_sizes(case: speed_cases.Case | tuple[int, int], m: int,
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
