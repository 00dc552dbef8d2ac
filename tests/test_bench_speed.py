"""The init_speed measurements (benchmarks/speed.py, speed_cases.py,
timing.py, memory.py, speed_report.py) and entry script
(benchmarks/init_speed.py) on tiny inputs."""

import json
import math

import jax
import numpy as np
import pytest

import nc_jax
from benchmarks import init_speed
from benchmarks import numpy_port
from benchmarks import reports
from benchmarks import speed
from benchmarks import timing
from benchmarks import speed_report
from benchmarks import speed_cases
from benchmarks import memory as memory_lib
from helpers import stratified


@pytest.mark.parametrize("shape", [(64, 8), (784, 8)])
def test_load_dataset_shapes(shape):
  x, y = speed_cases.load_dataset(50, shape[0])
  assert x.shape == (50, shape[0]) and x.dtype == "float32"
  assert y.shape == (50,)


def test_mnist_rows_are_tiled():
  x, _ = speed_cases.load_dataset(5003, 784)
  assert (x[5000:] == x[:3]).all() and 0.0 <= x.min() and x.max() <= 1.0


def test_writes_tables_json_and_plot(tmp_path):
  rows = speed.run_benchmark([(64, 8)], [50, 120], repeats=2, memory=False)
  election = [speed.bench_election(32, 8, 2, floor_rows=100, repeats=1)]
  text = speed_report.write_results(rows, reports.machine_info(), tmp_path, election,
                             repeats=2)
  assert (tmp_path / "init_speed.md").read_text() == text
  assert "| " + " | ".join(speed_report.COLUMNS) + " |" in text
  assert "| " + " | ".join(speed_report.ELECTION_COLUMNS) + " |" in text
  assert (tmp_path / "init_speed.png").stat().st_size > 0
  result = json.loads((tmp_path / "init_speed.json").read_text())
  assert result["columns"] == list(speed_report.COLUMNS)
  assert set(result["machine"]) >= {"device", "cpu cores", "jax", "date"}
  row = result["rows"][0]
  assert list(row) == list(speed_report.COLUMNS)
  assert (row["shape"], row["m"], row["N"], row["chunk"]) == ("64x8", 50, 40,
                                                               "auto")
  assert "| 64x8 | 50 | 40 | auto | " in text
  assert row["peak MB"] is None
  for key in ("ratio", "median ratio", "floor spread", "speed-up",
              "compile s"):
    assert math.isfinite(row[key]) and row[key] > 0
  assert row["floor spread"] >= 1.0
  assert (row["target"], row["verdict"]) == (None, "–")
  assert "2 rounds interleave" in result["method"]
  [elected] = result["election"]
  assert (elected["fan_out"], elected["N"], elected["groups"]) == (8, 40, 2)
  assert elected["election / floor"] > 0


@pytest.mark.parametrize("ratio, spread, target, want", [
    (1.1, 1.05, 1.25, "met"),
    (1.3, 1.05, 1.25, "missed"),
    (1.1, 1.31, 1.25, "noisy"),  # never judged on a busy machine
    (1.1, 1.05, None, "–"),
])
def test_verdict(ratio, spread, target, want):
  assert timing.verdict(ratio, spread, target) == want


def test_the_cnn_convs_against_their_floor():
  # The CNN's convs on MNIST images: the second's input is the first
  # block's output (32 channels, 14x14); floors and campaign timed alike.
  x, _ = speed_cases.CONV_CASES["conv2"].batch(3)
  assert x.shape == (3, 14, 14, 32) and float(x.min()) >= 0.0
  row = speed.bench_config(speed_cases.CONV_CASES["conv2"], 3, repeats=1,
                           memory=False)
  assert (row["shape"], row["N"], row["NumPy port ms"]) == ("conv2", 320, None)
  assert row["ratio"] > 0 and row["plain ms"] > 0 and row["chunked ms"] > 0
  [memory, whole] = memory_lib.memory_scaling(speed_cases.CONV_CASES["conv1"], [4])
  assert (memory["shape"], memory["chunk"], whole["chunk"]) == ("conv1", "auto", 4)
  assert memory["peak MB"] >= 0


def test_chunk_sizes_table():
  rows = speed.run_chunk_sizes((64, 8), 60, [16, 60], repeats=1)
  assert [(r["chunk"], r["peak MB"]) for r in rows] == [(16, None), (60, None)]


def test_max_flops_skips_large_configurations():
  rows = speed.run_benchmark([(64, 8), (64, 80)], [50], max_flops=2e6,
                             repeats=1, memory=False)
  assert [r["shape"] for r in rows] == ["64x8"]


def test_memory_scaling_runs_default_chunks_and_the_whole_batch():
  rows = memory_lib.memory_scaling((64, 8), [3000])
  assert [(r["m"], r["chunk"]) for r in rows] == [(3000, "auto"), (3000, 3000)]
  assert all(math.isfinite(r["peak MB"]) and r["peak MB"] >= 0 for r in rows)


def test_numpy_port_elects_what_nc_jax_elects(mnist):
  x, y = stratified(*mnist, 1000)
  w = np.asarray(nc_jax.draw_candidates(
      jax.random.key(0), jax.nn.initializers.he_normal(), (784, 32), 160))
  want = nc_jax.campaign_select(x, y, w, 32, alpha=0.5).tolist()
  assert numpy_port.campaign_select(x, y, w, 32, 0.5, 10) == want


def test_main_smoke(tmp_path):
  text = init_speed.main(["--rows", "50", "--shapes", "64x8", "--fan-outs",
                          "--memory-rows", "--repeats", "1", "--convs",
                          "conv1", "--conv-rows", "3", "--chunk-sizes", "16",
                          "--chunk-rows", "50", "--out", str(tmp_path)])
  assert (tmp_path / "init_speed.md").read_text() == text
  assert "command: python benchmarks/init_speed.py --rows 50" in text
  assert "| conv1 | 3 | 160 | auto | " in text
  # The chunk table: 784 -> 100 at --chunk-rows, each chunk size, then all.
  assert "| 784x100 | 50 | 500 | 16 | " in text
  assert "| 784x100 | 50 | 500 | 50 | " in text
  assert "| 64x8 | 50 | 40 | auto | " in text
  result = json.loads((tmp_path / "init_speed.json").read_text())
  assert result["election"] == [] and result["memory"] == []
  assert init_speed.parse_args([]).shapes == [(784, 100), (784, 256),
                                              (1024, 1024)]


def test_interleaved_runs_warmup_rounds_untimed():
  calls = []
  first, warm = timing.interleaved(
      {"a": lambda i: calls.append(("a", i)), "b": lambda i: calls.append(
          ("b", i))}, repeats=2, warmup=1)
  assert calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2),
                   ("b", 2), ("a", 3), ("b", 3)]
  assert set(first) == {"a", "b"}
  assert [len(v) for v in warm.values()] == [2, 2]
