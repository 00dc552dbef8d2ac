"""`campaign_init` and `draw_candidates`: the initializer users plug into Flax."""

import warnings

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from jax.experimental import checkify

import nc_jax
from nc_jax._src import campaign
from helpers import stratified

HE = jax.nn.initializers.he_normal()


@pytest.fixture(scope="module")
def mnist_small(mnist):
  return stratified(*mnist, 1000)


def test_is_draw_then_select_then_gather(mnist_small):
  x, y = mnist_small
  key = jax.random.key(3)
  kernel = nc_jax.campaign_init(x, y, alpha=0.3)(key, (784, 40))
  candidates = nc_jax.draw_candidates(key, HE, (784, 40), 200)
  indices = nc_jax.campaign_select(x, y, candidates, 40, alpha=0.3)
  np.testing.assert_array_equal(kernel, candidates[:, indices])


def test_candidates_are_independent_draws_of_the_layers_init():
  key = jax.random.key(0)
  w = nc_jax.draw_candidates(key, HE, (32, 32), 160)
  keys = jax.random.split(key, 5)
  np.testing.assert_array_equal(
      w, jnp.concatenate([HE(k, (32, 32)) for k in keys], axis=1))
  # The layer's He std sqrt(2 / fan_in) = 0.25, not the published sqrt(2 / N).
  assert abs(float(w.std()) - 0.25) < 0.01
  assert nc_jax.draw_candidates(key, HE, (32, 32), 70).shape == (32, 70)


def test_same_key_same_kernel_new_key_new_kernel(mnist_small):
  init = nc_jax.campaign_init(*mnist_small)
  a = init(jax.random.key(0), (784, 30))
  np.testing.assert_array_equal(a, init(jax.random.key(0), (784, 30)))
  assert not np.array_equal(a, init(jax.random.key(1), (784, 30)))


def test_under_jit_matches_eager(mnist_small):
  init = nc_jax.campaign_init(*mnist_small)
  key = jax.random.key(5)
  jitted = jax.jit(init, static_argnums=(1, 2))(key, (784, 20), jnp.float32)
  np.testing.assert_array_equal(jitted, init(key, (784, 20)))



def test_a_concrete_batch_built_into_a_jitted_function(mnist_small):
  # The factory called inside `jax.jit` on a batch the function closes over:
  # the batch is concrete, so it is checked eagerly there too (the check once
  # failed with a ConcretizationTypeError), and the kernel is the eager one.
  x, y = (jnp.asarray(a) for a in mnist_small)
  key = jax.random.key(5)
  build = lambda batch: jax.jit(
      lambda key: nc_jax.campaign_init(batch, y)(key, (784, 20)))
  np.testing.assert_array_equal(build(x)(key),
                                nc_jax.campaign_init(x, y)(key, (784, 20)))
  with pytest.raises(ValueError, match="`batch` has 1 NaN or infinite"):
    build(x.at[3, 5].set(jnp.inf))(key)

def test_compiles_once_per_shape_and_options(mnist_small):
  x, y = mnist_small
  shape = (784, 17)  # a shape no other test uses
  before = campaign._campaign_kernel._cache_size()
  nc_jax.campaign_init(x, y)(jax.random.key(0), shape)
  nc_jax.campaign_init(x, y)(jax.random.key(1), shape)  # new key
  nc_jax.campaign_init(x[::-1].copy(), y[::-1].copy(), alpha=0.9)(
      jax.random.key(2), shape)  # new batch values, new alpha
  assert campaign._campaign_kernel._cache_size() == before + 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_honors_dtype_and_returns_raw_candidate_columns(mnist_small, dtype):
  x, y = mnist_small
  key = jax.random.key(7)
  kernel = nc_jax.campaign_init(x, y)(key, (784, 24), dtype)
  assert kernel.dtype == dtype
  candidates = nc_jax.draw_candidates(key, HE, (784, 24), 120, dtype)
  columns = {c.tobytes() for c in np.asarray(candidates.astype(jnp.float32)).T}
  assert all(c.tobytes() in columns for c in np.asarray(kernel.astype(jnp.float32)).T)


def test_float64_with_x64(mnist_small):
  x, y = mnist_small
  with jax.enable_x64(True):
    kernel = nc_jax.campaign_init(x.astype(np.float64), y)(
        jax.random.key(0), (784, 10), jnp.float64)
    assert kernel.dtype == jnp.float64


def test_label_forms_and_extra_classes_agree(mnist_small):
  x, y = mnist_small
  key, shape = jax.random.key(9), (784, 20)
  ints = nc_jax.campaign_init(x, y)(key, shape)
  np.testing.assert_array_equal(
      ints, nc_jax.campaign_init(x, np.eye(10)[y].astype(np.int8))(key, shape))
  np.testing.assert_array_equal(
      ints, nc_jax.campaign_init(x, y, num_classes=13)(key, shape))


def test_options_reach_the_campaign(mnist_small):
  x, y = mnist_small
  key, shape = jax.random.key(4), (784, 20)
  glorot = jax.nn.initializers.glorot_uniform()
  kernel = nc_jax.campaign_init(x, y, base_init=glorot, num_candidates=50,
                                activation=jnp.tanh, class_balanced=False,
                                alpha=1.0)(key, shape)
  candidates = nc_jax.draw_candidates(key, glorot, shape, 50)
  np.testing.assert_array_equal(kernel, candidates[:, nc_jax.campaign_select(
      x, y, candidates, 20, alpha=1.0, activation=jnp.tanh, class_balanced=False)])


def test_images_flatten(mnist_small):
  x, y = mnist_small
  key = jax.random.key(0)
  np.testing.assert_array_equal(
      nc_jax.campaign_init(x.reshape(-1, 28, 28, 1), y)(key, (784, 8)),
      nc_jax.campaign_init(x, y)(key, (784, 8)))


def _distinct_columns(kernel):
  return len({c.tobytes() for c in np.asarray(kernel).T}) == kernel.shape[1]


X = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
Y = np.arange(50) % 3


@pytest.mark.parametrize("batch, labels, kwargs, shape, error, match", [
    (X, Y, {}, (7, 4), ValueError, "6 features but the kernel expects fan_in=7"),
    (X, Y, {}, (6,), ValueError, r"`shape` must be a kernel shape, `\(fan_in, fan_out\)`"),
    (X, Y, {}, (6, 4, 1), ValueError, r"1-D convolution's, so `batch` must have shape \(m, size, in_features\)"),
    (X, Y, {"num_candidates": 3}, (6, 4), ValueError, "`num_candidates` must be an int >= fan_out=4"),
    (X, Y, {"num_candidates": 0}, (6, 4), ValueError, "positive int or None"),
    (X[:1], Y[:1], {}, (6, 4), ValueError, "at least 2"),
    (np.where(X > 2, np.nan, X), Y, {}, (6, 4), ValueError, "NaN or infinite"),
    (np.where(X > 2, np.inf, X), Y, {}, (6, 4), ValueError, "NaN or infinite"),
    (X, Y[:40], {}, (6, 4), ValueError, "40 rows but the batch has 50"),
    (X, Y - 1, {}, (6, 4), ValueError, r"must lie in \[0, num_classes=2\)"),
    (X, Y, {"num_classes": 2}, (6, 4), ValueError, r"must lie in \[0, num_classes=2\)"),
    (X, Y.astype(np.float32), {}, (6, 4), TypeError, "integer class ids"),
    (X, np.eye(3)[Y] * 0.5, {}, (6, 4), ValueError, "must be one-hot, but row 0"),
    (X, np.eye(3)[Y], {"num_classes": 4}, (6, 4), ValueError, "one-hot `labels` have 3 columns"),
    (X, Y[:, None, None], {}, (6, 4), ValueError, r"shape \(m,\) or one-hot"),
    (X, Y, {"alpha": -0.1}, (6, 4), ValueError, r"`alpha` must lie in \[0, 1\]"),
    (X, Y, {"alpha": 2}, (6, 4), ValueError, r"`alpha` must lie in \[0, 1\]"),
    (X, Y, {"bias": np.zeros(4)}, (6, 4), ValueError, "`bias` must be a scalar"),
    (X[:, 0], Y, {}, (6, 4), ValueError, r"`batch` must have shape \(m, fan_in\)"),
    (X.astype(np.complex64), Y, {}, (6, 4), TypeError, "real numeric array"),
    (X, Y, {"base_init": None}, (6, 4), TypeError, "`base_init` must be a callable"),
])
def test_bad_input(batch, labels, kwargs, shape, error, match):
  with pytest.raises(error, match=match):
    nc_jax.campaign_init(batch, labels, **kwargs)(jax.random.key(0), shape)


def test_bad_dtype():
  with pytest.raises(TypeError, match="floating dtype"):
    nc_jax.campaign_init(X, Y)(jax.random.key(0), (6, 4), jnp.int32)


@pytest.mark.parametrize("name, batch, labels, shape, kwargs, warns", [
    ("all-zero batch (every ReLU dead)", np.zeros((20, 6)), np.arange(20) % 2,
     (6, 4), {}, "input-information"),
    ("one class only", X, np.zeros(50, int), (6, 4), {}, "label-information"),
    ("fan_out > fan_in", X, Y, (6, 15), {}, None),
    ("fan_out == N", X, Y, (6, 4), {"num_candidates": 4}, None),
    ("m == 2", X[:2], Y[:2], (6, 4), {}, None),
    ("constant features", np.ones((30, 6)), np.arange(30) % 3, (6, 5), {},
     "input-information"),
    ("unsupervised", X, None, (6, 4), {}, None),
])
def test_degenerate_input_gives_finite_distinct_columns(name, batch, labels, shape,
                                                        kwargs, warns):
  init = nc_jax.campaign_init(batch, labels, **kwargs)
  if warns:
    with pytest.warns(nc_jax.CriterionDroppedWarning, match=warns):
      kernel = init(jax.random.key(0), shape)
  else:
    kernel = init(jax.random.key(0), shape)
  assert kernel.shape == shape
  assert bool(jnp.all(jnp.isfinite(kernel)))
  assert _distinct_columns(kernel)


# Each example compiles anew; shrinking would recompile for minutes.
@settings(max_examples=12, deadline=None,
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(m=st.integers(2, 40), fan_in=st.integers(1, 12), fan_out=st.integers(1, 12),
       extra=st.integers(0, 20), num_classes=st.integers(1, 5),
       dtype=st.sampled_from([jnp.float32, jnp.bfloat16]), seed=st.integers(0, 999))
def test_property_finite_distinct_shape_dtype(m, fan_in, fan_out, extra, num_classes,
                                              dtype, seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(m, fan_in)).astype(np.float32)
  y = rng.integers(0, num_classes, size=m)
  init = nc_jax.campaign_init(x, y, num_candidates=fan_out + extra,
                              num_classes=num_classes)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", nc_jax.CriterionDroppedWarning)
    kernel = init(jax.random.key(seed), (fan_in, fan_out), dtype)
  label_warned = any("label-information" in str(w.message) for w in caught)
  assert label_warned == (len(set(y.tolist())) < 2)
  assert kernel.shape == (fan_in, fan_out) and kernel.dtype == dtype
  assert bool(jnp.all(jnp.isfinite(kernel)))
  # Distinct candidates (bfloat16 draws of a tiny fan_in may coincide in value).
  candidates = nc_jax.draw_candidates(jax.random.key(seed), HE, (fan_in, fan_out),
                                      fan_out + extra, dtype)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", nc_jax.CriterionDroppedWarning)
    indices = nc_jax.campaign_select(x, y, candidates, fan_out,
                                     num_classes=num_classes)
  assert len(set(indices.tolist())) == fan_out
  np.testing.assert_array_equal(kernel, candidates[:, indices])


def _jitted_init(num_classes=10, shape=(784, 16)):
  return jax.jit(lambda x, y: nc_jax.campaign_init(x, y, num_classes=num_classes)(
      jax.random.key(0), shape))


def test_under_jit_a_nan_batch_gives_a_nan_kernel_and_a_checkify_error(
    mnist_small):
  # Under jit the batch's values are unknown when the factory runs; a NaN in
  # it once gave a finite, plausible kernel (the first candidates).
  x, y = mnist_small
  bad = x.copy()
  bad[3, 5] = np.nan
  init = _jitted_init()
  assert np.isfinite(init(x, y)).all()
  assert np.isnan(init(bad, y)).all()
  error, _ = checkify.checkify(init)(bad, y)
  with pytest.raises(checkify.JaxRuntimeError, match="NaN or infinite"):
    error.throw()
  checkify.checkify(init)(x, y)[0].throw()  # clean input: no error


def test_under_jit_out_of_range_labels_give_nan_and_a_checkify_error(
    mnist_small):
  x, y = mnist_small
  bad = y.copy()
  bad[0] = 12
  init = _jitted_init()
  assert np.isnan(init(x, bad)).all()
  error, _ = checkify.checkify(init)(x, bad)
  with pytest.raises(checkify.JaxRuntimeError,
                     match=r"must lie in \[0, num_classes=10\)"):
    error.throw()


@pytest.mark.parametrize("ids", [[0, 1, 10**9], [0, 1, 10**5], [3, 7, 9]])
def test_sparse_class_ids_are_mapped_to_dense_ids(ids):
  # The ids present, in order, are the classes: {0, 1, 10**9} once sized
  # the statistics by the largest id (an int32 overflow in JAX).
  rng = np.random.default_rng(1)
  x = rng.normal(size=(90, 6)).astype(np.float32)
  dense = np.arange(90) % 3
  sparse = np.asarray(ids, np.int64)[dense]
  key = jax.random.key(2)
  want = nc_jax.campaign_init(x, dense)(key, (6, 9))
  np.testing.assert_array_equal(nc_jax.campaign_init(x, sparse)(key, (6, 9)), want)
  if max(ids) < 100:  # one-hot labels with absent classes, too
    one_hot = np.eye(max(ids) + 1, dtype=np.float32)[sparse]
    np.testing.assert_array_equal(
        nc_jax.campaign_init(x, one_hot)(key, (6, 9)), want)


def test_traced_labels_need_an_int32_num_classes():
  with pytest.raises(ValueError, match="int32 holds"):
    jax.jit(lambda y: nc_jax.campaign_init(X, y, num_classes=2**31)(
        jax.random.key(0), (6, 4)))(Y)


@pytest.mark.parametrize("batch, shape, match", [
    (np.zeros((10, 0), np.float32), (0, 4), "has no features"),
    (np.zeros((10, 0, 3), np.float32), (0, 4), "has no features"),
])
def test_a_batch_without_features_is_refused(batch, shape, match):
  with pytest.raises(ValueError, match=match):
    nc_jax.campaign_init(batch, None)(jax.random.key(0), shape)


def test_an_empty_kernel_shape_is_refused():
  with pytest.raises(ValueError, match="fan_in >= 1 and fan_out >= 1"):
    nc_jax.random_pick_init()(jax.random.key(0), (0, 4))


def test_bools_are_not_ints():
  # `True` passed as a count or a shape entry, refused like any non-int.
  init = nc_jax.random_pick_init()
  with pytest.raises(ValueError, match="`shape` must be a kernel shape"):
    init(jax.random.key(0), (True, 4))
  with pytest.raises(ValueError, match="`num_candidates`"):
    nc_jax.random_pick_init(num_candidates=True)
  with pytest.raises(ValueError, match="`num_candidates`"):
    nc_jax.draw_candidates(jax.random.key(0), jax.nn.initializers.he_normal(),
                           (3, 4), True)
  with pytest.raises(ValueError, match="`k` must be a non-negative int"):
    nc_jax.select_neurons(np.ones((3, 4), np.float32), np.ones(4), True)
