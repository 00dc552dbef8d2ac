"""Step 4: `select_neurons`, the greedy null-space election."""

from unittest import mock

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax.experimental import checkify

import nc_jax
import reference
from nc_jax._src import election


def test_diversity_beats_a_slightly_better_redundant_candidate():
  w = np.array([[1.0, 1.0, 0.0], [0.0, 0.01, 1.0]])
  assert nc_jax.select_neurons(w, np.array([0.9, 1.0, 0.5]), 2).tolist() == [1, 2]


def test_negative_scores_are_shifted_not_rewarded():
  # Columns 0 and 1 are the same direction. The published rule multiplies the
  # negative score -2 by the new fraction 0 and elects the duplicate column 1;
  # shifted scores [3, 2, 1, 0] elect the new direction 2.
  w = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
  got = nc_jax.select_neurons(w, np.array([-1.0, -2.0, -3.0, -4.0]), 2)
  assert got.tolist() == [0, 2]


def test_exhausted_residuals_fall_back_to_scores():
  # fan_in = 2 < k = 4: two picks span the space, the rest go by score.
  w = np.array([[1.0, 0.0, 1.0, 2.0, 0.5], [0.0, 1.0, 1.0, 0.0, 0.5]])
  scores = np.array([0.1, 0.2, 0.9, 0.5, 0.7])
  got = nc_jax.select_neurons(w, scores, 4).tolist()
  assert got == reference.elect(w, scores, [0] * 5, 4, 1)
  assert got[:1] == [2] and sorted(got[2:], key=lambda j: -scores[j]) == got[2:]


def test_all_candidates_and_zero_columns():
  w = np.zeros((3, 5))
  w[0, 0] = w[1, 1] = 1.0
  got = np.asarray(nc_jax.select_neurons(w, np.zeros(5), 5))
  assert sorted(got.tolist()) == list(range(5))
  assert nc_jax.select_neurons(w, np.zeros(5), 0).shape == (0,)


def test_groups_order_and_quotas():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(6, 12))
  groups = np.array([2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 2, 2])
  got = nc_jax.select_neurons(w, rng.uniform(size=12), 6, groups).tolist()
  assert [groups[j] for j in got] == [0, 0, 1, 1, 2, 2]


@settings(max_examples=25, deadline=None)
@given(fan_in=st.integers(1, 12), n=st.integers(1, 30), num_groups=st.integers(1, 4),
       negative=st.booleans(), seed=st.integers(0, 2**16), data=st.data())
def test_matches_reference(fan_in, n, num_groups, negative, seed, data):
  k = data.draw(st.integers(0, n))
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(fan_in, n))
  scores = rng.uniform(-1.0 if negative else 0.0, 1.0, size=n)
  groups = rng.integers(0, num_groups, size=n)
  want = reference.elect(w, scores, groups.tolist(), k, num_groups)
  with jax.enable_x64(True):
    got = nc_jax.select_neurons(w, scores, k, groups, num_groups=num_groups)
  assert got.tolist() == want
  assert len(set(want)) == k


@settings(max_examples=25, deadline=None)
@given(fan_in=st.integers(1, 12), n=st.integers(1, 30), num_groups=st.integers(1, 4),
       block=st.integers(1, 4), seed=st.integers(0, 2**16), data=st.data())
def test_large_election_matches_reference(fan_in, n, num_groups, block, seed,
                                          data):
  # Every election taken as large: candidates in the tiled layout, directions
  # projected off in blocks of `block`.
  k = data.draw(st.integers(1, n))
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(fan_in, n))
  scores = rng.uniform(-1.0, 1.0, size=n)
  groups = rng.integers(0, num_groups, size=n)
  want = reference.elect(w, scores, groups.tolist(), k, num_groups)
  with mock.patch.object(election, "_LARGE_ELECTION", 0), mock.patch.object(
      election, "_BASIS_BLOCK", block), jax.enable_x64(True):
    # A fresh jitted function: traces with the patched constants.
    got = jax.jit(lambda *a: election.elect(*a, num_groups, k))(
        w, scores, groups)
  assert got.tolist() == want


def test_jit_and_bfloat16():
  rng = np.random.default_rng(2)
  w = jnp.asarray(rng.normal(size=(8, 20)), jnp.bfloat16)
  scores = jnp.asarray(rng.uniform(size=20), jnp.float32)
  groups = jnp.arange(20) % 3
  eager = nc_jax.select_neurons(w, scores, 6, groups)
  jitted = jax.jit(nc_jax.select_neurons, static_argnames=("k", "num_groups"))(
      w, scores, k=6, groups=groups, num_groups=3)
  np.testing.assert_array_equal(eager, jitted)


@pytest.mark.parametrize("w, scores, k, groups, match", [
    (np.zeros(4), np.zeros(4), 1, None, r"`candidates` must have shape \(fan_in, N\)"),
    (np.zeros((2, 4)), np.zeros(3), 1, None, r"`scores` must have shape \(N,\)"),
    (np.zeros((2, 4)), np.zeros(4), 5, None, "cannot elect k=5 neurons from 4"),
    (np.zeros((2, 4)), np.zeros(4), -1, None, "non-negative int"),
    (np.zeros((2, 4)), np.zeros(4), 1, np.array([0, 1, 2, -1]), r"lie in \[0"),
    (np.zeros((2, 4)), np.zeros(4), 1, np.zeros(3, int), "int group ids of shape"),
])
def test_bad_input(w, scores, k, groups, match):
  with pytest.raises(ValueError, match=match):
    nc_jax.select_neurons(w, scores, k, groups)


def test_traced_groups_need_num_groups():
  with pytest.raises(ValueError, match="pass `num_groups=`"):
    jax.jit(lambda g: nc_jax.select_neurons(np.eye(3), np.ones(3), 2, g))(
        jnp.zeros(3, jnp.int32))


@pytest.mark.parametrize("w, scores, match", [
    (np.ones((2, 4)), np.array([0.1, np.nan, 0.3, 0.2]), "`scores` has 1 NaN"),
    (np.array([[1.0, np.inf, 0, 1], [0, 1, 1, 1]]), np.ones(4), "`candidates` has 1 NaN"),
])
def test_non_finite_input_is_refused(w, scores, match):
  # NaN scores or candidates once returned the first k candidates.
  with pytest.raises(ValueError, match=match):
    nc_jax.select_neurons(w, scores, 2)


def test_under_jit_non_finite_input_raises_under_checkify():
  elect = jax.jit(lambda w, s: nc_jax.select_neurons(w, s, 2))
  error, _ = checkify.checkify(elect)(np.ones((2, 4)),
                                      np.array([0.1, np.nan, 0.3, 0.2]))
  with pytest.raises(checkify.JaxRuntimeError, match="must be finite"):
    error.throw()


def test_sparse_group_ids_are_mapped_to_dense_ids():
  rng = np.random.default_rng(3)
  w, scores = rng.normal(size=(5, 30)), rng.uniform(size=30)
  groups = np.arange(30) % 3
  want = nc_jax.select_neurons(w, scores, 9, groups)
  sparse = np.array([0, 10**5, 10**9])[groups]  # same order as 0, 1, 2
  np.testing.assert_array_equal(nc_jax.select_neurons(w, scores, 9, sparse),
                                want)
