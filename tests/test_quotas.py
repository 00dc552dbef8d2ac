"""Step 3: `class_quotas`, the published water filling."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax.experimental import checkify

import nc_jax
import reference


@pytest.mark.parametrize("sizes, k, expected", [
    ([10, 10, 10], 10, [3, 3, 4]),  # docs/algorithm.md#quotas' example
    ([1, 0, 20, 5], 12, [1, 0, 6, 5]),  # small groups give all their members
    ([4, 4, 4, 4], 6, [1, 1, 2, 2]),  # remainder to the higher ids among equals
    ([2, 9, 3], 14, [2, 9, 3]),  # k == N
    ([0, 0, 7], 7, [0, 0, 7]),  # empty groups
    ([5], 3, [3]),
    ([6, 2], 0, [0, 0]),
])
def test_hand_computed(sizes, k, expected):
  np.testing.assert_array_equal(nc_jax.class_quotas(sizes, k), expected)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=12), st.data())
def test_matches_reference(sizes, data):
  k = data.draw(st.integers(0, sum(sizes)))
  got = np.asarray(nc_jax.class_quotas(sizes, k))
  assert got.tolist() == reference.quotas(sizes, k)
  assert got.sum() == k and np.all(got <= np.array(sizes))


def test_too_few_candidates():
  with pytest.raises(ValueError, match="fewer than k=5"):
    nc_jax.class_quotas([1, 2], 5)


@pytest.mark.parametrize("sizes, k, error, match", [
    ([-3, 10], 5, ValueError, "must be non-negative"),
    ([1.5, 2.0], 1, ValueError, "must be int sizes"),
    ([[1, 2]], 1, ValueError, r"shape \(G,\)"),
    ([1, 2], 1.0, ValueError, "`k` must be a non-negative int"),
])
def test_bad_input(sizes, k, error, match):
  # [-3, 10] once gave quotas [-3, 8]; float sizes were truncated silently.
  with pytest.raises(error, match=match):
    nc_jax.class_quotas(sizes, k)


def test_under_jit_negative_sizes_raise_under_checkify():
  quotas = jax.jit(lambda s: nc_jax.class_quotas(s, 5))
  error, _ = checkify.checkify(quotas)(jnp.array([-3, 10]))
  with pytest.raises(checkify.JaxRuntimeError, match="non-negative"):
    error.throw()
