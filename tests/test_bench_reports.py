"""Tables, CSV and plots of the benchmarks (benchmarks/reports.py)."""

import csv
import json

import numpy as np

from benchmarks import reports
from benchmarks import stats
from benchmarks import training
from helpers import runs_with_errors


def test_markdown_table():
  assert reports.markdown_table(["a", "b"], [["1", "2"], ["3", "4"]]) == (
      "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |")
  assert reports.markdown_table(["a"], []) == "| a |\n|---|"


def test_comparison_table_cells():
  runs = runs_with_errors(he=[3.0, 4.0, 5.0], he_campaign=[2.0, 3.5, 4.0],
                          he_random=[3.0, 4.0, 5.0])
  table = reports.comparison_table(stats.paired_comparisons(runs))
  assert ("| mlp2 | he+campaign - he+random | **-0.83 ± 0.72** (p 0.038, 3/3)"
          " |") in table  # bold: p < 0.05
  assert "| mlp2 | he+random - he | 0.00 ± 0.00 (p –, 0/3) |" in table


def test_summary_table_leaves_out_metrics_a_run_lacks():
  runs = runs_with_errors(he=[3.0, 4.0, 5.0], he_campaign=[2.0, 3.5, 4.0])
  table = reports.summary_table(runs, ("min_test_error", "epoch3_test_error",
                                       "init_seconds"))
  assert table.splitlines()[0] == (
      "| arch | init | min test error % | "
      "init s, median (first seed, incl. compile) |")
  assert "| mlp2 | he | 4.00 ± 2.48 | 1.00 (first 1.0) |" in table
  assert reports.format_ci(2.0, float("nan"), 2) == "2.00"


def test_write_run_results(tmp_path):
  rng = np.random.default_rng(0)
  runs = [training.Run("mlp2", name, (0, 1), np.ones(2), {
      metric: 5 + rng.random((2, 4)) for metric in training.EPOCH_METRICS})
      for name in ("he", "he+campaign", "he+random")]
  reports.write_run_results(tmp_path / "out", "stem", "text",
                            {"runs": reports.run_records(runs)}, runs)
  assert (tmp_path / "out" / "stem.md").read_text() == "text"
  [record, *_] = json.loads((tmp_path / "out" / "stem.json").read_text())[
      "runs"]
  assert record["seeds"] == [0, 1] and len(record["min_val_error"]) == 2
  with open(tmp_path / "out" / "stem_epochs.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 3 * 2 * 4  # runs x seeds x epochs
  assert list(rows[0]) == ["arch", "init", "seed", "epoch",
                           *training.EPOCH_METRICS]
  assert (tmp_path / "out" / "stem.png").stat().st_size > 10_000


def test_machine_info():
  assert set(reports.machine_info()) == {"device", "cpu cores", "jax", "date"}
