"""The MNIST comparison's entry script (benchmarks/mnist_mlp.py), small."""

import csv

import pytest

from benchmarks import mnist_mlp
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


def test_bad_arguments():
  with pytest.raises(SystemExit):
    mnist_mlp.parse_args(["--init", "orthogonal"])
  with pytest.raises(SystemExit):
    mnist_mlp.parse_args(["--epochs", "0"])
  with pytest.raises(SystemExit):
    mnist_mlp.parse_args(["--data", "idx", "a", "b"])
  args = mnist_mlp.parse_args(["--quick", "--epochs", "10", "--seeds", "5"])
  assert (args.epochs, args.seeds) == (3, 2)
