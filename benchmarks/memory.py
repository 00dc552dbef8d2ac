"""The campaign's peak working memory, each measured in a fresh process
(`python -m benchmarks.memory --peak-memory-child ...`)."""

from __future__ import annotations

import gc
import os
import pathlib
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import jax
import tqdm.auto as tqdm

import nc_jax
from benchmarks import speed_cases

PEAK_FLAG = "--peak-memory-child"


MEMORY_COLUMNS = ("shape", "m", "chunk", "peak MB")


def peak_memory_mb(case: speed_cases.Case, m: int, seed: int = 0,
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
      [sys.executable, "-m", "benchmarks.memory", PEAK_FLAG,
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


def _measure_peak_in_this_process(case: speed_cases.Case, m: int, seed: int,
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


def memory_scaling(case: speed_cases.Case | tuple[int, int], rows: Sequence[int],
                   seed: int = 0) -> list[dict[str, Any]]:
  """Peak working memory per m: nc_jax's default chunks (`chunk_size=None`,
  "auto") against the whole batch at once (`chunk_size=m`).

  Returns:
    Rows keyed by `MEMORY_COLUMNS`, each measured in its own fresh process.
  """
  case = speed_cases.as_case(case)
  out = []
  for m in tqdm.tqdm(rows, desc=f"memory {case.name}"):
    for chunk in (None, m):
      out.append(dict(zip(MEMORY_COLUMNS, (
          case.name, m, speed_cases.chunk_cell(chunk),
          peak_memory_mb(case, m, seed, chunk)))))
  return out


def _peak_memory_child(argv: Sequence[str]) -> None:
  """The fresh process of `peak_memory_mb`: prints the peak in MB."""
  if argv[:1] != [PEAK_FLAG]:
    raise SystemExit(f"usage: python -m benchmarks.memory {PEAK_FLAG} "
                     "FAN_INxFAN_OUT|conv1|conv2 M SEED CHUNK_SIZE|None")
  case, m, seed = speed_cases.case_for(argv[1]), int(argv[2]), int(argv[3])
  chunk_size = None if argv[4] == "None" else int(argv[4])
  print(_measure_peak_in_this_process(case, m, seed, chunk_size))


if __name__ == "__main__":
  _peak_memory_child(sys.argv[1:])
