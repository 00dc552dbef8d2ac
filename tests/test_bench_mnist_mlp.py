"""The MNIST comparison benchmark (benchmarks/mnist_mlp.py) and its data, small."""

import csv
import gzip
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from scipy import stats

import nc_jax
from benchmarks import data
from benchmarks import mnist_mlp


@pytest.fixture(scope="module")
def small():
  """Digits with 400 training images: fast, real, 64 features."""
  d = data.digits()
  return data.Dataset(d.name, d.x_train[:400], d.y_train[:400], d.x_test,
                      d.y_test)


def test_mnist_subset_is_a_fixed_stratified_4000_1000_split():
  a, b = data.mnist_subset(), data.mnist_subset()
  assert a.x_train.shape == (4000, 784) and a.x_test.shape == (1000, 784)
  np.testing.assert_array_equal(a.y_test, b.y_test)
  assert np.bincount(a.y_test).min() >= 80  # every class, in proportion
  assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0


def _write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(
      int(n).to_bytes(4, "big") for n in array.shape)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_plain_and_gzipped(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 28, 28))
  labels = np.arange(6) % 3
  _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
  _write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
  _write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:4])
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:4])
  d = data.load("idx", str(tmp_path))
  np.testing.assert_allclose(d.x_train, images.reshape(6, -1) / 255.0,
                             rtol=1e-6)
  np.testing.assert_array_equal(d.y_test, labels[:4])
  with pytest.raises(data.DataUnavailable, match="t10k-images"):
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    data.idx_mnist(tmp_path)


def test_tfds_path_with_mock_data():
  with tfds.testing.mock_data(num_examples=12):
    d = data.load("tfds")
  assert d.x_train.shape == (12, 784) and d.x_test.shape == (12, 784)
  assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
  assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0


def test_tfds_missing_is_detected_fast_and_auto_falls_back(tmp_path):
  start = time.perf_counter()
  with pytest.raises(data.DataUnavailable, match="not prepared"):
    data.tfds_mnist(str(tmp_path))
  assert time.perf_counter() - start < 5.0
  said = []
  d = data.load("auto", str(tmp_path), log=said.append)
  assert len(said) == 1 and "bundled real MNIST subset" in said[0]
  assert d.x_train.shape == (4000, 784)


# The random-pick controls share the campaign's path through `initialize`;
# test_init_names_and_options checks one (each costs a compilation).
@pytest.mark.parametrize("model_init", [i for i in mnist_mlp.INITS
                                        if not i.endswith("+random")])
def test_every_initializer_gives_the_mlp_its_shapes(small, model_init):
  params = mnist_mlp.initialize(model_init, "mlp3", jax.random.key(0), small)
  shapes = jax.tree.map(lambda a: a.shape, params)
  assert shapes == {"Dense_0": {"kernel": (64, 256), "bias": (256,)},
                    "Dense_1": {"kernel": (256, 100), "bias": (100,)},
                    "Dense_2": {"kernel": (100, 10), "bias": (10,)}}
  assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))
  assert all((params[k]["bias"] == 0).all() for k in params)


def test_validation_split_is_stratified_disjoint_and_deterministic():
  d = data.digits()
  a, b = data.with_validation(d, 300), data.with_validation(d, 300)
  np.testing.assert_array_equal(a.x_val, b.x_val)
  np.testing.assert_array_equal(a.x_train, b.x_train)
  assert a.x_val.shape == (300, 64) and len(a.y_train) == len(d.y_train) - 300
  # Disjoint and complete: the two parts are the training set, row for row.
  rows = lambda x: sorted(map(bytes, x))
  assert rows(np.concatenate([a.x_train, a.x_val])) == rows(d.x_train)
  assert set(map(bytes, a.x_val)).isdisjoint(map(bytes, a.x_train))
  expected = np.bincount(d.y_train) * 300 / len(d.y_train)
  assert np.abs(np.bincount(a.y_val) - expected).max() <= 1
  np.testing.assert_array_equal(a.x_test, d.x_test)  # test split untouched
  assert "1,137 train / 300 validation / 360 test" in a.describe()
  assert not np.array_equal(data.with_validation(d, 300, seed=1).y_val,
                            a.y_val)
  with pytest.raises(ValueError, match="validation split already"):
    data.with_validation(a, 100)
  with pytest.raises(ValueError, match="`size` must be between 10"):
    data.with_validation(d, 5)


def test_init_names_and_options(small):
  assert mnist_mlp.Init("he+campaign", {"alpha": 0.5}).name == (
      "he+campaign alpha=0.5")
  assert mnist_mlp.Init("he+random", score_rows=500, labels=False).name == (
      "he+random rows=500 y=None")
  with pytest.raises(ValueError, match="takes no campaign options"):
    mnist_mlp.Init("he", {"alpha": 0.5})
  with pytest.raises(ValueError, match="unknown initializer 'orthogonal'"):
    mnist_mlp.Init("orthogonal")
  key = jax.random.key(0)
  spec = mnist_mlp.Init("he+random", {"candidates_per_neuron": 2})
  model = mnist_mlp.MLP((100,), 10, mnist_mlp.BASE_INITS["he"])
  expected = nc_jax.campaign_linen(model, key, small.x_train, elect="random",
                                   candidates_per_neuron=2, progress=False)
  jax.tree.map(np.testing.assert_array_equal,
               mnist_mlp.initialize(spec, "mlp2", key, small),
               expected["params"])


def test_seeds_train_independently_and_reproducibly(small):
  both = mnist_mlp.train_and_evaluate("mlp2", "he+campaign", small, (0, 1), 2)
  alone = mnist_mlp.train_and_evaluate("mlp2", "he+campaign", small, (1,), 2)
  assert set(both.curves) == {"train_loss", "test_error"}  # no validation
  for name in both.curves:
    assert both.curves[name].shape == (2, 2)
    np.testing.assert_allclose(both.curves[name][1], alone.curves[name][0],
                               rtol=1e-4, atol=1e-4)
  assert both.curves["train_loss"][:, 1].mean() < both.curves[
      "train_loss"][:, 0].mean()


def test_mean_ci_and_paired_comparison():
  mean, half = mnist_mlp.mean_ci(np.array([1.0, 2.0, 3.0]))
  assert mean == 2.0 and half == pytest.approx(2.4841, rel=1e-3)
  assert np.isnan(mnist_mlp.mean_ci(np.array([1.0]))[1])
  curves = lambda errs: {"test_error": np.array(errs, float)[:, None],
                         "train_loss": np.ones((len(errs), 1))}
  runs = [mnist_mlp.Run("mlp2", "he", (0, 1, 2), np.ones(3),
                        curves([3.0, 4.0, 5.0])),
          mnist_mlp.Run("mlp2", "he+campaign", (0, 1, 2), np.ones(3),
                        curves([2.0, 3.5, 4.0]))]
  (row,) = mnist_mlp.paired_comparisons(runs)
  assert row["comparison"] == "he+campaign - he" and row["wins"] == 3
  assert row["mean_diff"] == pytest.approx(-2.5 / 3)
  assert row["p_value"] == pytest.approx(
      float(stats.ttest_rel([2, 3.5, 4], [3, 4, 5]).pvalue))
  # With the random-pick control, the campaign is paired with it too.
  runs.append(mnist_mlp.Run("mlp2", "he+random", (0, 1, 2), np.ones(3),
                            curves([3.0, 4.0, 5.0])))
  rows = mnist_mlp.paired_comparisons(runs)
  assert [r["comparison"] for r in rows] == [
      "he+campaign - he+random", "he+campaign - he", "he+random - he"]
  assert np.isnan(rows[2]["p_value"]) and rows[2]["mean_diff"] == 0.0
  table = mnist_mlp.comparison_table(rows)
  assert ("| mlp2 | he+campaign - he+random | **-0.83 ± 0.72** (p 0.038, 3/3)"
          " |") in table  # bold: p < 0.05
  assert "| mlp2 | he+random - he | 0.00 ± 0.00 (p –, 0/3) |" in table
  with pytest.raises(ValueError, match="same arch and seeds"):
    mnist_mlp.paired_difference(
        runs[1], mnist_mlp.Run("mlp2", "he", (0, 1, 3), np.ones(3),
                               curves([3.0, 4.0, 5.0])), "min_test_error")


def test_main_smoke_writes_table_csv_and_plot(tmp_path, capsys):
  text = mnist_mlp.main(["--quick", "--epochs", "1", "--seeds", "1",
                         "--arch", "mlp2", "--data", "digits",
                         "--out", str(tmp_path)])
  assert (tmp_path / "mnist_mlp.md").read_text() == text
  for model_init in mnist_mlp.INITS:
    assert f"| mlp2 | {model_init} |" in text
  with open(tmp_path / "mnist_mlp_epochs.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(mnist_mlp.INITS)
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
  with pytest.raises(ValueError, match="needs the directory"):
    data.load("idx")
