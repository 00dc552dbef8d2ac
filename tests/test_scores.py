"""Step 2: `neuron_scores` against hand-computed cases and the float64 reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import nc_jax
import reference
from helpers import he_candidates, stratified

# Column 0 constant, column 1 varies only within classes, column 2 only between.
TOY_Z = np.array([[0., 1., 2.], [0., 3., 2.], [0., 1., 4.], [0., 3., 4.]])
TOY_Y = np.array([0, 0, 1, 1])
S = np.sqrt(0.5)


@pytest.mark.parametrize("alpha, expected", [
    (0.0, [0.0, -S, S]),  # acc: between [0,0,1] - within [0,1,0], normalized
    (1.0, [0.0, S, S]),  # div: stds [0, 1.155, 1.155], normalized
    (0.5, [0.0, 0.0, S]),
])
def test_hand_computed_toy(alpha, expected):
  np.testing.assert_allclose(nc_jax.neuron_scores(TOY_Z, TOY_Y, alpha=alpha),
                             expected, atol=1e-6)


def _mnist_responses(mnist, m=600, n=80):
  x, y = stratified(*mnist, m)
  z = np.maximum(x.astype(np.float64) @ he_candidates(784, n), 0)
  return z, y


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("label_form", ["int", "one_hot", "none"])
def test_matches_reference_on_mnist(mnist, alpha, label_form):
  z, y = _mnist_responses(mnist)
  labels = {"int": y, "one_hot": np.eye(10, dtype=np.int32)[y], "none": None}[label_form]
  want, _, _ = reference.scores(z, None if labels is None else y, alpha)
  got32 = nc_jax.neuron_scores(z.astype(np.float32), labels, alpha=alpha)
  np.testing.assert_allclose(got32, want, rtol=2e-4, atol=2e-6)
  with jax.enable_x64(True):
    got64 = nc_jax.neuron_scores(jnp.asarray(z), labels, alpha=alpha)
    assert got64.dtype == jnp.float64
    np.testing.assert_allclose(got64, want, rtol=1e-10, atol=1e-13)


def test_matches_reference_on_digits_with_absent_and_singleton_classes(digits):
  x, y = digits
  keep = (y != 3) & (y != 7)  # classes 3 and 7 absent
  x, y = x[keep][:400], y[keep][:400].copy()
  y[0] = 9
  y[y == 9] = 5
  y[0] = 9  # class 9 has a single sample
  z = np.maximum(x.astype(np.float64) @ he_candidates(64, 40), 0)
  want, _, _ = reference.scores(z, y, 0.3)
  np.testing.assert_allclose(
      nc_jax.neuron_scores(z.astype(np.float32), y, alpha=0.3), want,
      rtol=2e-4, atol=2e-6)


def test_absent_classes_change_nothing(mnist):
  # Up to float32 rounding: the one-hot product's blocking depends on C.
  z, y = _mnist_responses(mnist, m=300, n=30)
  np.testing.assert_allclose(
      nc_jax.neuron_scores(z, y, num_classes=10),
      nc_jax.neuron_scores(z, y, num_classes=25), rtol=0, atol=1e-6)


def test_offset_data_is_stable(mnist):
  # Raw 0..255 pixels plus 1e4: a mean far above the spread (shifted sums).
  x, y = stratified(*mnist, 400)
  z = (x * 255.0 + 1e4).astype(np.float64) @ he_candidates(784, 30)
  want, _, _ = reference.scores(z, y, 0.5)
  got = nc_jax.neuron_scores(z.astype(np.float32), y, alpha=0.5)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_one_class_is_div_alone_and_warns(mnist):
  z, _ = _mnist_responses(mnist, m=200, n=20)
  labels = np.full(200, 4)
  with pytest.warns(nc_jax.CriterionDroppedWarning, match="label-information"):
    got = nc_jax.neuron_scores(z, labels, alpha=0.0)
  np.testing.assert_allclose(got, nc_jax.neuron_scores(z, None, alpha=0.0),
                             rtol=1e-6)


def test_dead_responses_are_zero_not_nan():
  z = np.zeros((10, 6), np.float32)
  with pytest.warns(nc_jax.CriterionDroppedWarning, match="input-information"):
    got = nc_jax.neuron_scores(z, np.arange(10) % 2)
  np.testing.assert_array_equal(got, np.zeros(6))


def test_constant_columns_score_zero_on_div():
  z = np.tile(np.array([[3.3, 0.0, 7.1]], np.float32), (5000, 1))
  z[:, 1] = np.arange(5000) % 7
  got = nc_jax.neuron_scores(z, alpha=1.0)
  np.testing.assert_array_equal(got, [0.0, 1.0, 0.0])


def test_jit_matches_eager_and_bfloat16_input(mnist):
  z, y = _mnist_responses(mnist, m=200, n=20)
  z32 = jnp.asarray(z, jnp.float32)
  eager = nc_jax.neuron_scores(z32, y, alpha=0.25)
  jitted = jax.jit(lambda z, y: nc_jax.neuron_scores(z, y, alpha=0.25,
                                                     num_classes=10))(z32, y)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)
  bf16 = nc_jax.neuron_scores(z32.astype(jnp.bfloat16), y, alpha=0.25)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, eager, atol=2e-2)


@pytest.mark.parametrize("z, labels, kwargs, error, match", [
    (np.zeros((4,)), None, {}, ValueError, r"`z` must have shape \(m, N\)"),
    (np.zeros((1, 3)), None, {}, ValueError, "at least 2"),
    (np.zeros((4, 3)), np.zeros(5, int), {}, ValueError, "5 rows but the batch has 4"),
    (np.zeros((4, 3)), None, {"alpha": 1.5}, ValueError, r"`alpha` must lie in \[0, 1\]"),
    (np.full((4, 3), np.nan), None, {}, ValueError, "NaN or infinite"),
])
def test_bad_input(z, labels, kwargs, error, match):
  with pytest.raises(error, match=match):
    nc_jax.neuron_scores(z, labels, **kwargs)


def test_zero_is_judged_per_candidate_not_against_the_largest(mnist):
  # One column with mean 1e7 once zeroed every criterion of all the others,
  # whose spread is of order one: "zero" was judged against the batch's
  # largest scale. Each candidate is now judged against its own.
  z, y = _mnist_responses(mnist, m=300, n=20)
  z = z.astype(np.float32)
  z[:, 0] += 1e7
  want, _, _ = reference.scores(z, y, 0.5)
  got = nc_jax.neuron_scores(z, y, alpha=0.5)
  assert np.count_nonzero(got[1:]) == 19
  np.testing.assert_allclose(got[1:], want[1:], rtol=1e-3, atol=1e-4)


def test_a_constant_candidate_is_zero_beside_varying_ones():
  z = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
  z[:, 2] = 4.25  # constant, at a scale like the others'
  got = np.asarray(nc_jax.neuron_scores(z, alpha=1.0))
  assert got[2] == 0.0 and np.all(got[[0, 1, 3]] > 0.4)


@pytest.mark.parametrize("scale", [2.0**60, 1e19, 1e30, 2.0**-100, 1e-35])
def test_huge_and_tiny_responses_match_the_reference(mnist, scale):
  # Squares of responses near 1e19 overflowed float32 (NaN scores), and of
  # responses near 1e-30 underflowed (every candidate "constant"); the sums
  # are now taken scaled by a power of two per candidate.
  z, y = _mnist_responses(mnist, m=300, n=20)
  z = (z * scale).astype(np.float32)
  want, _, _ = reference.scores(z.astype(np.float64), y, 0.5)
  got = nc_jax.neuron_scores(z, y, alpha=0.5)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_responses_beyond_float32_are_dropped_with_a_warning():
  # A finite batch whose products overflow: the candidates with a first
  # weight above 3.4e38 / 3e38 respond +inf to row 7. They score 0, with a
  # warning; the others are scored as usual.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 8)).astype(np.float32)
  x[7, 0] = 3e38
  w = rng.normal(size=(8, 30)).astype(np.float32)
  overflowing = int(np.sum(w[0] > np.finfo(np.float32).max / 3e38))
  assert 0 < overflowing < 30
  with pytest.warns(nc_jax.CriterionDroppedWarning,
                    match=f"{overflowing} candidate"):
    picked = nc_jax.campaign_select(x, np.arange(200) % 3, w, 5)
  assert len(set(picked.tolist())) == 5


def test_under_jit_out_of_range_labels_give_nan_scores_and_a_checkify_error(
    mnist):
  z, y = _mnist_responses(mnist, m=200, n=20)
  bad = np.array(y)
  bad[4] = -1
  score = jax.jit(lambda z, y: nc_jax.neuron_scores(z, y, num_classes=10))
  assert np.isfinite(score(z, y)).all()
  assert np.isnan(score(z, bad)).all()
  error, _ = checkify.checkify(score)(z, bad)
  with pytest.raises(checkify.JaxRuntimeError, match="must lie in"):
    error.throw()
