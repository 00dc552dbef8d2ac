"""`lsuv_linen` / `lsuv_nnx`: unit output variance per layer, on the campaign's walk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nc_jax
import models
from helpers import stratified

SIZES = (784, 256, 100, 10)  # MLP-3


@pytest.fixture(scope="module")
def data(mnist):
  x, y = stratified(*mnist, 1000, seed=5)
  return jnp.asarray(x), jnp.asarray(y)


def dense_output_variances(model, variables, x):
  """Output variance of every Dense, from the model's own intermediates."""
  _, state = model.apply(variables, x, capture_intermediates=True,
                         mutable=["intermediates"])
  flat = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
  return {jax.tree_util.keystr(path): float(jnp.var(value))
          for path, value in flat if "Dense" in jax.tree_util.keystr(path)}


@pytest.mark.parametrize("tol", [0.1, 0.01])
def test_every_layer_has_unit_output_variance_on_mnist(data, tol):
  x, _ = data
  model = models.MLP(SIZES[1:])
  variables = nc_jax.lsuv_linen(model, jax.random.key(0), x, tol=tol,
                                progress=False)
  variances = dense_output_variances(model, variables, x)
  assert len(variances) == 3
  for name, var in variances.items():
    assert abs(var - 1) < tol, (name, var)


def test_kernels_are_scaled_orthogonal_with_the_documented_keys(data):
  x, _ = data
  key = jax.random.key(3)
  params = nc_jax.lsuv_linen(models.MLP(SIZES[1:]), key, x,
                             progress=False)["params"]
  lsuv_key = jax.random.split(key)[1]
  for i in range(3):
    w = params[f"Dense_{i}"]["kernel"]
    q = jax.nn.initializers.orthogonal()(jax.random.fold_in(lsuv_key, i),
                                         w.shape)
    scale = float(jnp.linalg.norm(w) / jnp.linalg.norm(q))
    np.testing.assert_allclose(w, scale * q, rtol=1e-4, atol=1e-7)


def test_other_variables_keep_the_models_init(data):
  x, _ = data
  model = models.SmallCNN()
  key = jax.random.key(1)
  got = nc_jax.lsuv_linen(model, key, x, progress=False,
                          layers=lambda path: path != "Conv_0")
  ref = model.init(jax.random.split(key)[0], x)
  np.testing.assert_array_equal(got["params"]["Conv_0"]["kernel"],
                                ref["params"]["Conv_0"]["kernel"])
  np.testing.assert_array_equal(got["params"]["Dense_0"]["bias"],
                                ref["params"]["Dense_0"]["bias"])
  assert jax.tree.structure(got) == jax.tree.structure(ref)


def test_linen_and_nnx_agree(data):
  x, _ = data
  key = jax.random.key(2)
  params = nc_jax.lsuv_linen(models.MLP(SIZES[1:]), key, x,
                             progress=False)["params"]
  model = models.NnxMLP(SIZES, rngs=nnx.Rngs(0))
  nc_jax.lsuv_nnx(model, x, key=jax.random.split(key)[1], progress=False)
  for i, layer in enumerate(model.layers):
    np.testing.assert_allclose(layer.kernel[...], params[f"Dense_{i}"]["kernel"],
                               rtol=1e-5, atol=1e-7)


def test_dead_layer_is_kept_finite_with_a_warning(data):
  x, _ = data
  with pytest.warns(UserWarning,
                    match=r"output variance 0 on the batch \(dead or constant"):
    params = nc_jax.lsuv_linen(models.MLP((16, 10)), jax.random.key(0),
                               jnp.zeros_like(x), progress=False)["params"]
  assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))


@pytest.mark.parametrize("kwargs, match", [
    ({"tol": 0.0}, "`tol`"),
    ({"tol": 1.5}, "`tol`"),
    ({"max_iters": 0}, "`max_iters`"),
])
def test_bad_options(data, kwargs, match):
  x, _ = data
  with pytest.raises(ValueError, match=match):
    nc_jax.lsuv_linen(models.MLP((16, 10)), jax.random.key(0), x, **kwargs)


def test_no_weight_layer(data):
  x, _ = data
  with pytest.raises(ValueError, match="no weight layer"):
    nc_jax.lsuv_linen(models.NoWeights(), jax.random.key(0), x)


def test_every_layer_kind_reaches_unit_variance_with_per_channel_biases(data):
  # A first conv on one channel (9 inputs per position, 16 outputs) and a
  # Dense with more outputs than inputs take the patch-moment path; a conv
  # and a Dense with more inputs than outputs the centered one-pass path
  # (channel means from the mean example). Biases that differ per channel
  # enter the variance (the between-channel part) on both.
  import flax.linen as nn

  class Net(nn.Module):

    @nn.compact
    def __call__(self, x):
      # Tokens: 49 positions of 16 pixels, two feature axes (d 16 <= F 32).
      t = nn.DenseGeneral((4, 8))(x.reshape(-1, 49, 16))
      x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x.reshape(-1, 28, 28, 1)))
      x = nn.relu(nn.Conv(8, (3, 3))(x))  # d 144 > F 8
      x = nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1)))
      return nn.Dense(32)(x) + t.mean((1, 2, 3))[:, None]

  x, _ = data
  model = Net()
  variables = model.init(jax.random.key(0), x[:2])
  params = dict(variables["params"])
  for path, scale in (("Conv_0", 0.3), ("Conv_1", 0.4), ("Dense_0", 0.6),
                      ("Dense_1", 0.5)):
    layer = dict(params[path])
    layer["bias"] = scale * jax.random.normal(jax.random.key(1),
                                              layer["bias"].shape)
    params[path] = layer
  for tol in (0.1, 0.01):
    out, report = nc_jax.lsuv_linen(model, jax.random.key(2), x, tol=tol,
                                    variables={"params": params},
                                    report=True, progress=False)
    _, state = model.apply(out, x, capture_intermediates=True,
                           mutable=["intermediates"])
    outputs = state["intermediates"]
    for path in ("DenseGeneral_0", "Conv_0", "Conv_1", "Dense_0", "Dense_1"):
      var = float(jnp.var(outputs[path]["__call__"][0]))
      assert abs(var - 1) < tol, (path, var)
    assert all(row["converged"] for row in report.rows())


def test_half_precision_kernels_are_drawn_and_scaled(data):
  # CPU's QR takes no 16-bit floats: the orthogonal draw is made in float32
  # and cast; the variance is measured in float32 on every path.
  import flax.linen as nn
  x, _ = data

  class Net(nn.Module):
    dtype: object

    @nn.compact
    def __call__(self, x):
      opts = {"dtype": self.dtype, "param_dtype": self.dtype}
      h = nn.relu(nn.Conv(8, (3, 3), **opts)(x.reshape(-1, 28, 28, 1)))
      h = nn.relu(nn.Conv(4, (3, 3), strides=2, **opts)(h))
      return nn.Dense(10, **opts)(h.reshape(h.shape[0], -1))

  for dtype in (jnp.bfloat16, jnp.float16):
    model = Net(dtype)
    images = x.astype(dtype)
    out = nc_jax.lsuv_linen(model, 0, images, progress=False)
    jitted = jax.jit(lambda a: nc_jax.lsuv_linen(model, 0, a,
                                                 progress=False))(images)
    jax.tree.map(np.testing.assert_array_equal, out, jitted)
    assert {a.dtype for a in jax.tree.leaves(out)} == {jnp.dtype(dtype)}
    _, state = model.apply(out, images, capture_intermediates=True,
                           mutable=["intermediates"])
    for path in ("Conv_0", "Conv_1", "Dense_0"):
      h = state["intermediates"][path]["__call__"][0].astype(jnp.float32)
      assert abs(float(jnp.var(h)) - 1) < 0.1, (dtype, path)
