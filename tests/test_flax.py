"""`campaign_init` as a Flax `kernel_init`: linen `Dense` and nnx `Linear`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import nc_jax
from helpers import stratified


def test_linen_dense_init_eager_and_jitted(mnist):
  x, y = stratified(*mnist, 500)
  layer = nn.Dense(32, kernel_init=nc_jax.campaign_init(x, y))
  key = jax.random.key(0)
  params = layer.init(key, x)["params"]
  assert params["kernel"].shape == (784, 32)
  np.testing.assert_array_equal(params["bias"], np.zeros(32))
  np.testing.assert_array_equal(jax.jit(layer.init)(key, x)["params"]["kernel"],
                                params["kernel"])
  np.testing.assert_allclose(layer.apply({"params": params}, x),
                             x @ params["kernel"], rtol=1e-5, atol=1e-5)


def test_linen_param_dtype(mnist):
  x, y = stratified(*mnist, 300)
  layer = nn.Dense(8, kernel_init=nc_jax.campaign_init(x, y),
                   param_dtype=jnp.bfloat16)
  assert layer.init(jax.random.key(1), x)["params"]["kernel"].dtype == jnp.bfloat16


def test_nnx_linear_uses_its_params_key(mnist):
  x, y = stratified(*mnist, 500)
  init = nc_jax.campaign_init(x, y)
  layer = nnx.Linear(784, 24, kernel_init=init, rngs=nnx.Rngs(0))
  expected = init(nnx.Rngs(0).params(), (784, 24))
  np.testing.assert_array_equal(layer.kernel[...], expected)
  assert layer(jnp.asarray(x)).shape == (500, 24)
