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


def test_time_to_target_counts_the_initializer_s_own_time():
  # Test error per seed and epoch; the first seed's init compiled.
  he, campaign = (
      training.Run("mlp2", name, (0, 1, 2), np.array(init),
                   {"test_error": np.array(errors)})
      for name, init, errors in [
          ("he", [2.0, 0.1, 0.3], [[9.0, 4.0], [9.0, 4.0], [3.0, 4.0]]),
          ("he+campaign", [7.0, 0.5, 0.7], [[3.0, 4.0], [9.0, 9.0],
                                            [3.0, 4.0]])])
  thresholds = stats.epochs_to_reach([he, campaign], 2.0)
  assert thresholds == {"mlp2": 8.0}  # 2 x he's mean final 4.0
  stats.seconds_to_reach([he, campaign], {"mlp2": 10.0})
  np.testing.assert_array_equal(he.extra["epochs_to_2x_best"], [2, 2, 1])
  np.testing.assert_array_equal(campaign.extra["epochs_to_2x_best"], [1, 3, 1])
  # Warm: each seed's init, the first replaced by the others' median.
  np.testing.assert_allclose(he.extra["seconds_to_2x_best"],
                             [20.2, 20.1, 10.3])
  np.testing.assert_allclose(campaign.extra["seconds_to_2x_best"],
                             [10.6, 30.5, 10.7])  # the censored seed: 3
  # The first call: the compiling seed's init for every seed.
  np.testing.assert_allclose(campaign.extra["seconds_to_2x_best_first_call"],
                             [17.0, 37.0, 17.0])
  row = stats.paired_difference(campaign, he, "seconds_to_2x_best")
  assert row["wins"] == 1 and row["mean_diff"] == pytest.approx(
      np.mean([10.6 - 20.2, 30.5 - 20.1, 10.7 - 10.3]))


def test_head_start_counts_the_leading_significant_windows():
  rng = np.random.default_rng(0)
  noise = rng.normal(scale=0.01, size=(5, 6))
  base = np.full((5, 6), 2.0) + noise
  ahead = base - np.array([0.5, 0.4, 0.3, 0.0, 0.2, 0.0]) + rng.normal(
      scale=0.01, size=(5, 6))
  runs = [training.Run("mlp2", name, tuple(range(5)), np.ones(5),
                       {"test_error": np.ones((5, 1))}, step_loss=loss)
          for name, loss in [("he", base), ("he+campaign", ahead),
                             ("he+random", base + 0.0)]]
  rows = stats.head_start(runs, [("he+campaign", "he"), ("he+random", "he")])
  first, control = rows
  assert first["comparison"] == "he+campaign - he"
  # Three leading windows lower; the fourth is not, so the fifth's does not
  # extend the head start.
  assert first["steps"] == 3 * training.STEP_WINDOW and first["windows"] == 6
  assert first["diff_first"] == pytest.approx(-0.5, abs=0.02)
  assert control["steps"] == 0  # identical losses: never lower
  assert stats.head_start(runs[:1] + [training.Run(
      "mlp2", "he+campaign", tuple(range(5)), np.ones(5),
      {"test_error": np.ones((5, 1))})], [("he+campaign", "he")]) == []
