"""Timing as the benchmarks do it: every side called in turn over rounds in
one process, so that load on the machine falls on all of them alike; a
side whose floor moved too much is noisy and never judged."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax

# A row whose faster floor varied more than this (max / min over the
# repeats) ran on a machine too busy to judge a target on.
NOISY_SPREAD = 1.3


def interleaved(fns: dict[str, Callable[[int], Any]], repeats: int,
                warmup: int = 0
                ) -> tuple[dict[str, float], dict[str, list[float]]]:
  """Times each `fn(i)` until ready: a first call each, then `warmup`
  untimed rounds, then `repeats` rounds that call every fn in turn, so that
  load on the machine falls on all of them alike.

  Args:
    fns: called with 0 for the first (compiling) call, then with the round
      number (warm-up rounds included).
    repeats: rounds of warm calls.
    warmup: rounds run before the timed ones and not timed (the first round
      after several large first calls can pay for the memory they freed).

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
  for i in range(1, warmup + repeats + 1):
    for name, fn in fns.items():
      took = seconds(fn, i)
      if i > warmup:
        warm[name].append(took)
  return first, warm


def time_calls(fn: Callable[[int], Any], repeats: int) -> tuple[float, float]:
  """`(first call seconds, median warm seconds)` of `fn` alone."""
  first, warm = interleaved({"fn": fn}, repeats)
  return first["fn"], statistics.median(warm["fn"])


def verdict(ratio: float, spread: float, target: float | None) -> str:
  """"met" or "missed" against `target`; "noisy" when the floor's spread
  exceeds `NOISY_SPREAD` (never judged); "–" without a target."""
  if target is None:
    return "–"
  if spread > NOISY_SPREAD:
    return "noisy"
  return "met" if ratio <= target else "missed"
