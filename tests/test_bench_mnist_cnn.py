"""The MNIST CNN comparison (benchmarks/mnist_cnn.py) and its CNN, small."""

import csv
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

import nc_jax
from benchmarks import data
from benchmarks import mnist_cnn
from benchmarks import stats
from benchmarks import training


def test_cnn_shapes_on_mnist_rows():
  model = training.model_for("cnn", 10, training.BASE_INITS["he"])
  x = np.zeros((3, 784), np.float32)
  params = model.init(jax.random.key(0), x)["params"]
  assert jax.tree.map(lambda a: a.shape, params) == {
      "Conv_0": {"kernel": (3, 3, 1, 32), "bias": (32,)},
      "Conv_1": {"kernel": (3, 3, 32, 64), "bias": (64,)},
      "Dense_0": {"kernel": (7 * 7 * 64, 128), "bias": (128,)},
      "Dense_1": {"kernel": (128, 10), "bias": (10,)}}
  assert model.apply({"params": params}, x).shape == (3, 10)
  with pytest.raises(ValueError, match="not a square image"):
    model.init(jax.random.key(0), np.zeros((1, 50), np.float32))


def test_conv_and_pool_are_flax_s():
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
  plain, ours = nn.Conv(4, (3, 3)), nn.Conv(
      4, (3, 3), conv_general_dilated=training.conv_as_matmul)
  variables = plain.init(jax.random.key(1), x)
  np.testing.assert_allclose(ours.apply(variables, x),
                             plain.apply(variables, x), atol=1e-5)
  np.testing.assert_array_equal(training.max_pool_2x2(x),
                                nn.max_pool(x, (2, 2), strides=(2, 2)))


def test_campaign_then_lsuv_keeps_the_campaign_s_directions():
  d = data.digits()
  small = data.Dataset(d.name, d.x_train[:300], d.y_train[:300], d.x_test,
                       d.y_test)
  key = jax.random.key(0)
  got = training.initialize("he+campaign+lsuv", "mlp2", key, small)
  model = training.MLP((100,), 10, training.BASE_INITS["he"])
  campaign = nc_jax.campaign_linen(model, key, small.x_train, small.y_train,
                                   progress=False)
  expected = nc_jax.lsuv_linen(model, key, small.x_train, variables=campaign,
                               progress=False)
  jax.tree.map(np.testing.assert_array_equal, got, expected["params"])
  for layer in got:
    a, b = got[layer]["kernel"], campaign["params"][layer]["kernel"]
    np.testing.assert_allclose(a / np.linalg.norm(a), b / np.linalg.norm(b),
                               atol=1e-5)
  assert training.Init("he+campaign+lsuv").name == "he+campaign+lsuv"


def _run(name, errors, initial=None):
  errors = np.asarray(errors, np.float64)
  return training.Run("cnn", name, tuple(range(len(errors))),
                      np.ones(len(errors)), {"test_error": errors},
                      {} if initial is None else
                      {"test_error": np.asarray(initial, np.float64)})


def test_epochs_to_reach_twice_the_best_final_error():
  runs = [_run("he", [[9.0, 4.0, 3.0], [8.0, 7.0, 5.0]]),
          _run("lsuv", [[5.0, 3.0, 1.0], [9.0, 9.0, 9.0]], [4.0, 90.0])]
  thresholds = stats.epochs_to_reach(runs, 2.0)
  assert thresholds == {"cnn": 2.0 * min(4.0, 5.0)}  # best final mean: he's
  np.testing.assert_array_equal(runs[0].extra["epochs_to_2x_best"], [2, 1])
  # lsuv seed 0 is there at init (epoch 0); seed 1 never (epochs + 1).
  np.testing.assert_array_equal(runs[1].extra["epochs_to_2x_best"], [0, 4])
  assert runs[1].summary()["epochs_to_2x_best"].tolist() == [0, 4]


# The campaign itself runs inside he+campaign+lsuv; plain LSUV and the
# campaign alone go through the same `initialize` paths as the MLPs'.
SMOKE_INITS = ("he", "he+random", "he+campaign+lsuv")


def test_main_writes_tables_json_csv_and_plot(tmp_path, capsys):
  text = mnist_cnn.main(["--quick", "--epochs", "1", "--seeds", "2",
                         "--data", "digits", "--init", *SMOKE_INITS,
                         "--out", str(tmp_path)])
  assert (tmp_path / "mnist_cnn.md").read_text() == text
  for model_init in SMOKE_INITS:
    assert f"| cnn | {model_init} |" in text
  for pair in ("he+random - he", "he+campaign+lsuv - he",
               "he+campaign+lsuv - he+random"):
    assert f"| cnn | {pair} |" in text
  assert "test error % at init" in text and "epochs to 2x best" in text
  with open(tmp_path / "mnist_cnn_epochs.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(SMOKE_INITS) * 2 * 2  # epochs 0 and 1
  assert {r["epoch"] for r in rows} == {"0", "1"}
  results = json.loads((tmp_path / "mnist_cnn.json").read_text())
  assert results["settings"]["epochs"] == 1
  assert [r["init"] for r in results["runs"]] == list(SMOKE_INITS)
  assert len(results["runs"][0]["epoch0_test_error"]) == 2
  assert (tmp_path / "mnist_cnn.png").stat().st_size > 10_000
  assert "digits" in capsys.readouterr().out


def test_arguments():
  args = mnist_cnn.parse_args(["--quick", "--data", "digits"])
  assert (args.epochs, args.seeds, args.arch) == (3, 2, ["cnn"])
  assert args.init == list(mnist_cnn.INITS)
  assert args.out.parts[-2:] == ("results", "cnn")
  assert mnist_cnn.comparison_pairs(["he", "he+campaign"]) == [
      ("he+campaign", "he")]
