"""The MNIST comparison's entry script (benchmarks/mnist_mlp.py), small."""

import csv
import json

import numpy as np
import pytest

from benchmarks import mnist_mlp
from benchmarks import reports
from benchmarks import training


def test_main_smoke_writes_table_csv_and_plot(tmp_path, capsys):
  text = mnist_mlp.main(["--quick", "--epochs", "1", "--seeds", "1",
                         "--arch", "mlp2", "--data", "digits",
                         "--out", str(tmp_path)])
  assert (tmp_path / "mnist_mlp.md").read_text() == text
  for model_init in training.INITS:
    assert f"| mlp2 | {model_init} |" in text
  with open(tmp_path / "mnist_mlp_epochs.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(training.INITS)
  assert set(rows[0]) == {"arch", "init", "seed", "epoch", "train_loss",
                          "test_error"}
  assert "| mlp2 | he+campaign - he+random |" in text
  assert (tmp_path / "mnist_mlp.png").stat().st_size > 10_000
  assert "digits" in capsys.readouterr().out
  assert "Time to accuracy" in text and "s to 2x best, init warm" in text
  assert "| mlp2 | he+campaign - he |" in text

  # --from: the same runs read back, the tables written again (epochs
  # timed anew), without training.
  runs, settings = reports.load_runs(tmp_path, "mnist_mlp")
  records = json.loads((tmp_path / "mnist_mlp.json").read_text())
  assert settings == records["settings"]
  for run, record in zip(runs, records["runs"], strict=True):
    assert (run.arch, run.init) == (record["arch"], record["init"])
    np.testing.assert_allclose(run.summary()["min_test_error"],
                               record["min_test_error"], rtol=1e-5)
    np.testing.assert_array_equal(run.init_seconds, record["init_seconds"])
    assert run.step_loss.shape == (1, 1)  # 10 steps: one window of 20
  assert "Head start in steps" in text
  again = mnist_mlp.main(["--data", "digits", "--from", str(tmp_path),
                          "--out", str(tmp_path / "again")])
  table = lambda t: next(block for block in t.split("\n\n")
                         if block.startswith("| arch | init | min test"))
  keep = lambda t: [line.split(" | ")[:5] for line in table(t).splitlines()]
  assert keep(again) == keep(text)
  assert "tables written again by: python benchmarks/mnist_mlp.py" in again


def test_bad_arguments():
  with pytest.raises(SystemExit):
    mnist_mlp.parse_args(["--init", "orthogonal"])
  with pytest.raises(SystemExit):
    mnist_mlp.parse_args(["--epochs", "0"])
  with pytest.raises(SystemExit):
    mnist_mlp.parse_args(["--data", "idx", "a", "b"])
  with pytest.raises(SystemExit):  # no finished comparison there
    mnist_mlp.parse_args(["--data", "digits", "--from", "/nonexistent"])
  args = mnist_mlp.parse_args(["--quick", "--epochs", "10", "--seeds", "5"])
  assert (args.epochs, args.seeds) == (3, 2)
