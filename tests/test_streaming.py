"""`chunk_size`: the campaign's statistics streamed over row chunks."""

import functools
from unittest import mock

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import nc_jax
import reference
from helpers import he_candidates, stratified
from nc_jax._src import placement
from nc_jax._src import scores as scores_lib


@pytest.mark.parametrize("chunk_size", [1, 37, 400, 10_000])
@pytest.mark.parametrize("with_labels", [True, False])
def test_offset_data_matches_float64_reference(mnist, chunk_size, with_labels):
  # Raw 0..255 pixels plus 1e4: a mean far above the spread.
  x, y = stratified(*mnist, 400)
  x = x * 255.0 + 1e4
  w = he_candidates(784, 30)
  want, _, _ = reference.scores(x.astype(np.float64) @ w,
                                y if with_labels else None, 0.5)
  labels = jnp.asarray(y) if with_labels else None
  moments = jax.jit(scores_lib.response_moments, static_argnums=(2, 3, 4))(
      jnp.asarray(x, jnp.float32), labels,
      lambda rows: rows @ jnp.asarray(w, jnp.float32), 10, chunk_size)
  got, _ = scores_lib.scores_from_moments(moments, jnp.asarray(0.5),
                                          with_labels)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("chunk_size", [7, 250, 999])
@pytest.mark.parametrize("alpha, class_balanced", [(0.0, True), (0.5, False),
                                                   (1.0, True)])
def test_chunked_election_matches_reference(mnist, chunk_size, alpha,
                                            class_balanced):
  x, y = stratified(*mnist, 1000)
  w = he_candidates(784, 100)
  want = reference.campaign_select(x, y, w, 20, alpha, class_balanced)
  got = nc_jax.campaign_select(x, y, w.astype(np.float32), 20, alpha=alpha,
                               class_balanced=class_balanced,
                               chunk_size=chunk_size)
  assert got.tolist() == want


def test_campaign_init_and_linen_same_result_chunked(digits):
  x, y = digits
  init = nc_jax.campaign_init(x, y)
  chunked = nc_jax.campaign_init(x, y, chunk_size=128)
  key = jax.random.key(0)
  np.testing.assert_array_equal(init(key, (64, 32)), chunked(key, (64, 32)))
  np.testing.assert_array_equal(jax.jit(chunked, static_argnums=1)(key, (64, 32)),
                                chunked(key, (64, 32)))
  import flax.linen as nn
  model = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(10)])
  a = nc_jax.campaign_linen(model, key, x, y, progress=False)
  b = nc_jax.campaign_linen(model, key, x, y, chunk_size=300, progress=False)
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, "64"])
def test_bad_chunk_size(digits, chunk_size):
  x, y = digits
  with pytest.raises(ValueError, match="`chunk_size` must be a positive int"):
    nc_jax.campaign_init(x, y, chunk_size=chunk_size)


def _moments(x, labels, chunk_size, scaled=None):
  """`response_moments` of the identity; `scaled` forces one way of summing."""
  identity = lambda rows: rows
  shift = x[0]
  if scaled is None:
    return scores_lib.response_moments(x, labels, identity, 3, chunk_size)
  sums = scores_lib._response_sums(x, labels, identity, 3, chunk_size, shift,
                                   scaled)
  return scores_lib.moments_from_sums(sums, shift)


@settings(max_examples=25, deadline=None)
@given(exponents=st.lists(st.integers(-75, 75), min_size=5, max_size=5),
       chunk_size=st.sampled_from([None, 7, 64]),
       mixed=st.booleans())
def test_unscaled_sums_are_used_only_where_they_equal_the_scaled(
    exponents, chunk_size, mixed):
  # The deviations are summed unscaled (no pass for their peaks) and summed
  # again scaled only where the sums show it is needed: the moments are
  # always exactly those of the scaled sums. Column 5 is dead (all zero);
  # with `mixed`, column 0 mixes rows at 2**-50 with rows at its scale, so
  # chunks of the scaled sums take different exponents.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 6)) * 2.0 ** np.array(exponents + [0])
  x[:, 5] = 0.0
  if mixed:
    x[:100, 0] *= 2.0 ** -50
  x = jnp.asarray(x, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 3, 200), jnp.int32)
  fast = jax.jit(_moments, static_argnums=(2, 3))(x, labels, chunk_size)
  scaled = jax.jit(_moments, static_argnums=(2, 3))(x, labels, chunk_size, True)
  jax.tree.map(np.testing.assert_array_equal, fast, scaled)
  exact = scores_lib.unscaled_sums_exact(jax.jit(
      scores_lib._response_sums, static_argnums=(2, 3, 4, 6))(
          x, labels, lambda rows: rows, 3, chunk_size, x[0], False))
  # The check bounds the sum of squares over the 200 rows, not the peak:
  # exponents within +-30 keep it well inside [m / 2**80, 2**80) (at 2**37,
  # for one, it is about 2**83 while every peak is below 2**40).
  in_range = all(-30 < e < 30 for e in exponents) and not (
      mixed and exponents[0] < -30)
  if in_range:  # no second pass
    assert bool(exact)
  if any(abs(e) > 70 for e in exponents):  # squares out of float32's range
    assert not bool(exact)


def test_default_chunks_bound_the_responses_they_hold():
  # The rule `default_chunk_size` states, value by value.
  auto = functools.partial(nc_jax.default_chunk_size, platform="cpu")
  assert auto(60_000, 500) == 1017  # 59 chunks, not 58 x 1,024
  assert auto(4_000, 1280) == 800  # 2**20 // 1,280 = 819
  assert auto(1_025, 500) == 513  # 2 chunks, 1 row twice
  assert auto(5_000, 160, positions=28 * 28) == 8
  assert auto(10, 10**7) == 1
  assert auto(1_000, 500) is None  # one chunk: the whole batch
  assert nc_jax.default_chunk_size(5_000, 160, positions=28 * 28,
                                   platform="gpu") == 1000  # <= 1,070
  assert nc_jax.default_chunk_size(500, 160, positions=28 * 28,
                                   platform="tpu") is None
  assert nc_jax.default_chunk_size(60_000, 500) == auto(60_000, 500)  # on CPU
  assert placement.auto_chunk_size(64, 60_000, 500, "cpu") == 64  # as given


@pytest.mark.parametrize("kwargs, error, match", [
    ({"m": 0}, ValueError, "`m` must be a positive int, got 0"),
    ({"num_candidates": 2.5}, ValueError, "`num_candidates` must be"),
    ({"positions": True}, ValueError, "`positions` must be"),
    ({"platform": 0}, TypeError, "`platform` must be a string"),
])
def test_default_chunk_size_names_a_bad_argument(kwargs, error, match):
  args = {"m": 100, "num_candidates": 50, **kwargs}
  with pytest.raises(error, match=match):
    nc_jax.default_chunk_size(args.pop("m"), args.pop("num_candidates"),
                              **args)


def test_a_conv_campaign_streams_the_images_in_bounded_chunks(mnist):
  # 1,000 MNIST images, a 3x3 conv with 32 filters (N = 160): the default
  # chunk holds 8 images (8 x 784 x 160 responses), and the kernel is the
  # one the whole batch at once gives.
  x, y = stratified(*mnist, 1000)
  images = jnp.asarray(x.reshape(-1, 28, 28, 1), jnp.float32)
  seen = []
  auto = placement.auto_chunk_size

  def spy(*args):
    seen.append(auto(*args))
    return seen[-1]

  key = jax.random.key(0)
  with mock.patch.object(placement, "auto_chunk_size", spy):
    streamed = nc_jax.campaign_init(images, y)(key, (3, 3, 1, 32))
  assert seen == [8] == [nc_jax.default_chunk_size(1000, 160, positions=784)]
  whole = nc_jax.campaign_init(images, y, chunk_size=1000)(key, (3, 3, 1, 32))
  np.testing.assert_array_equal(streamed, whole)
