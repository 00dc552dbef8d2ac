"""The init_speed benchmark's functions on tiny inputs."""

import json
import math

import pytest

from benchmarks import init_speed


@pytest.mark.parametrize("shape", [(64, 8), (784, 8)])
def test_load_dataset_shapes(shape):
  x, y = init_speed.load_dataset(50, shape[0])
  assert x.shape == (50, shape[0]) and x.dtype == "float32"
  assert y.shape == (50,)


def test_mnist_rows_are_tiled():
  x, _ = init_speed.load_dataset(5003, 784)
  assert (x[5000:] == x[:3]).all() and 0.0 <= x.min() and x.max() <= 1.0


def test_writes_table_and_json(tmp_path):
  rows = init_speed.run_benchmark([(64, 8)], [50], repeats=2)
  table = init_speed.write_results(rows, init_speed.machine_info(), tmp_path)
  assert (tmp_path / "init_speed.md").read_text() == table
  assert "| " + " | ".join(init_speed.COLUMNS) + " |" in table
  result = json.loads((tmp_path / "init_speed.json").read_text())
  assert result["columns"] == list(init_speed.COLUMNS)
  assert set(result["machine"]) >= {"device", "cpu cores", "jax", "date"}
  [row] = result["rows"]
  assert list(row) == list(init_speed.COLUMNS)
  assert (row["shape"], row["m"], row["N"]) == ("64x8", 50, 40)
  assert math.isfinite(row["ratio"]) and row["ratio"] > 0
