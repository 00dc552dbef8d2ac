"""The benchmarks' data sets (benchmarks/data.py): sources, splits, fallback."""

import gzip
import importlib.util
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from benchmarks import data


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
  data.check("idx", str(tmp_path))  # headers only
  d = data.load("idx", str(tmp_path))
  np.testing.assert_allclose(d.x_train, images.reshape(6, -1) / 255.0,
                             rtol=1e-6)
  np.testing.assert_array_equal(d.y_test, labels[:4])
  with pytest.raises(data.DataUnavailable, match="t10k-images"):
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    data.idx_mnist(tmp_path)


def test_idx_needs_its_directory():
  with pytest.raises(ValueError, match="needs the directory"):
    data.load("idx")


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


def test_tfds_load_is_never_tried_on_data_that_is_not_prepared(
    tmp_path, monkeypatch):
  # As where TensorFlow is installed: tfds.load would read TFRecords, but
  # only once the data set is known to be prepared.
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
      object() if name == "tensorflow" else find_spec(name, *a)))
  loads = []
  monkeypatch.setattr(tfds, "load", lambda *a, **k: loads.append(a))
  for call in (data.tfds_mnist, lambda d: data.check("tfds", d)):
    with pytest.raises(data.DataUnavailable, match="not prepared"):
      call(str(tmp_path))
  assert not loads


def test_check_tells_what_load_would_miss(tmp_path):
  data.check("subset")
  data.check("auto", str(tmp_path))
  for source, path, error, match in [
      ("bogus", None, ValueError, "must be one of"),
      ("digits", str(tmp_path), ValueError, "takes no directory"),
      ("idx", None, ValueError, "needs the directory"),
      ("idx", str(tmp_path / "nowhere"), data.DataUnavailable, "no such"),
      ("tfds", str(tmp_path / "nowhere"), data.DataUnavailable, "no such"),
      ("auto", str(tmp_path / "nowhere"), data.DataUnavailable, "no such")]:
    with pytest.raises(error, match=match):
      data.check(source, path)


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
