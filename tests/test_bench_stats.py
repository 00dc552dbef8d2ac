"""Confidence intervals and paired comparisons (benchmarks/stats.py)."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from benchmarks import stats
from benchmarks import training
from helpers import runs_with_errors


def test_mean_ci():
  mean, half = stats.mean_ci(np.array([1.0, 2.0, 3.0]))
  assert mean == 2.0 and half == pytest.approx(2.4841, rel=1e-3)
  assert np.isnan(stats.mean_ci(np.array([1.0]))[1])
  values = np.array([[1.0, 5.0], [2.0, 7.0], [3.0, 6.0]])
  np.testing.assert_allclose(stats.ci_half_width(values),
                             [stats.mean_ci(v)[1] for v in values.T])


def test_paired_comparison():
  runs = runs_with_errors(he=[3.0, 4.0, 5.0], he_campaign=[2.0, 3.5, 4.0])
  (row,) = stats.paired_comparisons(runs)
  assert row["comparison"] == "he+campaign - he" and row["wins"] == 3
  assert row["mean_diff"] == pytest.approx(-2.5 / 3)
  assert row["p_value"] == pytest.approx(
      float(scipy_stats.ttest_rel([2, 3.5, 4], [3, 4, 5]).pvalue))
  # With the random-pick control, the campaign is paired with it too.
  runs += runs_with_errors(he_random=[3.0, 4.0, 5.0])
  rows = stats.paired_comparisons(runs)
  assert [r["comparison"] for r in rows] == [
      "he+campaign - he+random", "he+campaign - he", "he+random - he"]
  assert np.isnan(rows[2]["p_value"]) and rows[2]["mean_diff"] == 0.0
  other_seeds = training.Run("mlp2", "he", (0, 1, 3), np.ones(3),
                             runs[0].curves)
  with pytest.raises(ValueError, match="same arch and seeds"):
    stats.paired_difference(runs[1], other_seeds, "min_test_error")


def test_control_pairs_skip_initializers_not_run():
  assert stats.control_pairs(["xavier", "he", "he+campaign", "xavier+random"]
                             ) == [("he+campaign", "he"),
                                   ("xavier+random", "xavier")]
