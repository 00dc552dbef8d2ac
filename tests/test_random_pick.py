"""`random_pick_init` and `elect="random"`: the campaign's random-pick control."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nc_jax
import models
from nc_jax._src import campaign
from helpers import stratified

HE = jax.nn.initializers.he_normal()
LECUN = nn.initializers.lecun_normal()


@pytest.fixture(scope="module")
def data(mnist):
  # The batch and SHAPE of test_campaign_init: its compiled campaign is reused.
  return stratified(*mnist, 1000)


def column_positions(kernel, candidates):
  """For each kernel column, the index of the equal candidate column (or -1)."""
  equal = (np.asarray(kernel)[:, :, None] ==
           np.asarray(candidates)[:, None, :]).all(0)
  return np.where(equal.any(1), equal.argmax(1), -1)


SHAPE = (784, 40)  # one shape for most tests: each new shape compiles anew


def test_picks_distinct_columns_of_the_campaigns_candidates(data):
  x, y = data
  key = jax.random.key(2)
  for n, init in [
      (200, nc_jax.random_pick_init()),
      (47, nc_jax.random_pick_init(num_candidates=47)),  # a partial last draw
      # The campaign with the same key elects from the same matrix.
      (200, nc_jax.campaign_init(x, y))]:
    candidates = nc_jax.draw_candidates(key, HE, SHAPE, n)
    positions = column_positions(init(key, SHAPE), candidates)
    assert (positions >= 0).all() and len(set(positions.tolist())) == SHAPE[1]


def test_the_pick_is_the_documented_choice_and_keys_matter():
  init = nc_jax.random_pick_init()
  key = jax.random.key(4)
  candidates = nc_jax.draw_candidates(key, HE, SHAPE, 5 * SHAPE[1])
  expected = jax.random.choice(jax.random.fold_in(key, 1), 5 * SHAPE[1],
                               (SHAPE[1],), replace=False)
  kernel = init(key, SHAPE)
  np.testing.assert_array_equal(kernel, candidates[:, expected])
  np.testing.assert_array_equal(kernel, init(key, SHAPE))
  assert not np.array_equal(kernel, init(jax.random.key(5), SHAPE))
  # Distributed like one He kernel: std sqrt(2 / fan_in).
  assert abs(float(kernel.std()) - np.sqrt(2 / 784)) < 0.003


def test_under_jit_matches_eager_without_recompiling():
  init = nc_jax.random_pick_init()
  key = jax.random.key(6)
  eager = init(key, SHAPE)
  before = campaign._random_pick_kernel._cache_size()
  init(jax.random.key(7), SHAPE)
  assert campaign._random_pick_kernel._cache_size() == before
  jitted = jax.jit(init, static_argnums=(1, 2))(key, SHAPE, jnp.float32)
  np.testing.assert_array_equal(jitted, eager)


def test_honours_dtype():
  key = jax.random.key(3)
  kernel = nc_jax.random_pick_init()(key, SHAPE, jnp.bfloat16)
  assert kernel.dtype == jnp.bfloat16
  candidates = nc_jax.draw_candidates(key, HE, SHAPE, 5 * SHAPE[1],
                                      jnp.bfloat16)
  assert (column_positions(kernel, candidates) >= 0).all()


@pytest.mark.parametrize("make, error, match", [
    (lambda: nc_jax.random_pick_init(num_candidates=0), ValueError,
     "num_candidates"),
    (lambda: nc_jax.random_pick_init(base_init="he"), TypeError, "base_init"),
    (lambda: nc_jax.random_pick_init(num_candidates=4)(
        jax.random.key(0), (8, 5)), ValueError, "fan_out=5"),
    (lambda: nc_jax.random_pick_init()(jax.random.key(0), (8,)),
     ValueError, "must be a kernel shape"),
    (lambda: nc_jax.random_pick_init()(jax.random.key(0), (8, 5), jnp.int32),
     TypeError, "floating dtype"),
])
def test_errors(make, error, match):
  with pytest.raises(error, match=match):
    make()


def test_linen_random_layers_pick_the_campaigns_candidates(data):
  x, y = data
  key = jax.random.key(8)
  model = models.MLP((40, 10))
  picked = nc_jax.campaign_linen(model, key, x, y, base_init=LECUN,
                                 elect="random", progress=False)["params"]
  # Layer i uses the key the campaign gives it (test_campaign_models checks
  # that campaign_linen's layer i is campaign_init with this key, and the test
  # above that campaign_init elects from these same candidates).
  init_key, campaign_key = jax.random.split(key)
  for i, shape in enumerate([SHAPE, (40, 10)]):
    np.testing.assert_array_equal(
        picked[f"Dense_{i}"]["kernel"],
        nc_jax.random_pick_init(base_init=LECUN)(
            jax.random.fold_in(campaign_key, i), shape))
  # Biases keep the model's init, as with the campaign.
  np.testing.assert_array_equal(
      picked["Dense_0"]["bias"],
      model.init(init_key, x[:2])["params"]["Dense_0"]["bias"])
  # The nnx twin with the same campaign key picks the same kernels.
  nnx_model = models.NnxMLP((784, 40, 10), rngs=nnx.Rngs(0))
  nc_jax.campaign_nnx(nnx_model, x, None, key=campaign_key, base_init=LECUN,
                      elect="random", progress=False)
  for i, layer in enumerate(nnx_model.layers):
    np.testing.assert_array_equal(layer.kernel[...],
                                  picked[f"Dense_{i}"]["kernel"])


def test_bad_elect_raises(data):
  x, y = data
  with pytest.raises(ValueError, match=r"`elect` must be one of .*'best'"):
    nc_jax.campaign_linen(models.MLP((8, 10)), jax.random.key(0), x, y,
                          elect="best")
  with pytest.raises(ValueError, match="`elect`"):
    nc_jax.campaign_nnx(models.NnxMLP((784, 8, 10), rngs=nnx.Rngs(0)), x, y,
                        elect="Random")
