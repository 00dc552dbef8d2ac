"""Convolution kernels: `campaign_init` on flax's conv layout."""

import flax.linen as nn
import jax
from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

import nc_jax
import reference
from helpers import stratified
from nc_jax._src import conv

HE = jax.nn.initializers.he_normal()


def _images(data, m, side, seed=0):
  x, y = stratified(*data, m, seed)
  return x.reshape(m, side, side, 1), y


def _reference_kernel(x, y, shape, key, n, *, strides, padding, dilation,
                      alpha):
  """The kernel the float64 reference elects from the same candidates."""
  w = np.asarray(nc_jax.draw_candidates(key, HE, shape, n))
  patches, owner = reference.conv_patches(x, shape[:-2], strides, padding,
                                          dilation)
  picked = reference.campaign_select(patches, y[owner], w.reshape(-1, n),
                                     shape[-1], alpha)
  return w[..., picked]


@pytest.mark.parametrize("window, channels, strides, padding, dilation", [
    ((3, 3), 1, (1, 1), "SAME", (1, 1)),
    ((3, 3), 3, (2, 2), "VALID", (1, 1)),
    ((3, 2), 2, (1, 2), "SAME", (2, 2)),
    ((2, 2), 2, (2, 1), ((1, 0), (2, 1)), (1, 2)),
])
def test_matches_the_float64_reference_on_explicit_patches(
    digits, window, channels, strides, padding, dilation):
  # Real 8x8 digits, stacked into `channels` shifted copies, so the
  # (kh, kw, C) flattening order is pinned.
  x, y = _images(digits, 48, 8)
  x = np.concatenate([np.roll(x, c, axis=2) for c in range(channels)], -1)
  shape, n, key = (*window, channels, 6), 30, jax.random.key(3)
  init = nc_jax.campaign_init(x, y, alpha=0.5, num_candidates=n,
                              strides=strides, padding=padding,
                              kernel_dilation=dilation)
  want = _reference_kernel(x, y, shape, key, n, strides=strides,
                           padding=padding, dilation=dilation, alpha=0.5)
  np.testing.assert_array_equal(init(key, shape), want)


def test_matches_the_reference_on_mnist(mnist):
  x, y = _images(mnist, 12, 28)
  shape, n, key = (3, 3, 1, 8), 40, jax.random.key(0)
  init = nc_jax.campaign_init(x, y, alpha=0.0, num_candidates=n, strides=2,
                              padding="VALID")
  want = _reference_kernel(x, y, shape, key, n, strides=(2, 2),
                           padding="VALID", dilation=(1, 1), alpha=0.0)
  np.testing.assert_array_equal(init(key, shape), want)


def test_the_kernel_inside_nn_conv_gives_the_responses_scored(digits):
  x, y = _images(digits, 16, 8)
  layer = nn.Conv(5, (3, 3), strides=2, padding="SAME", kernel_dilation=1,
                  kernel_init=nc_jax.campaign_init(x, y, strides=2))
  params = layer.init(jax.random.key(0), x)["params"]
  spec = conv.ConvSpec(strides=(2, 2), padding="SAME", dilation=(1, 1))
  np.testing.assert_array_equal(layer.apply({"params": params}, x),
                                spec.apply(jnp.asarray(x), params["kernel"]))


def test_jit_dtype_same_key_and_chunks(digits):
  x, y = _images(digits, 100, 8)
  shape, key = (3, 3, 1, 6), jax.random.key(1)
  init = nc_jax.campaign_init(x, y)
  kernel = init(key, shape)
  assert kernel.shape == shape and kernel.dtype == jnp.float32
  np.testing.assert_array_equal(kernel, init(key, shape))
  assert not np.array_equal(kernel, init(jax.random.key(2), shape))
  np.testing.assert_array_equal(
      kernel, jax.jit(init, static_argnums=(1,))(key, shape))
  for chunk_size in (7, 64, 1000):
    np.testing.assert_array_equal(
        kernel, nc_jax.campaign_init(x, y, chunk_size=chunk_size)(key, shape))
  assert init(key, shape, jnp.bfloat16).dtype == jnp.bfloat16


@pytest.mark.parametrize("batch_shape, shape", [
    ((60, 20, 3), (5, 3, 4)),  # 1-D
    ((30, 6, 6, 6, 2), (3, 3, 3, 2, 4)),  # 3-D
])
def test_one_and_three_dimensional_kernels(batch_shape, shape):
  rng = np.random.default_rng(0)
  x = rng.normal(size=batch_shape).astype(np.float32)
  y = np.arange(batch_shape[0]) % 3
  key, n = jax.random.key(0), 5 * shape[-1]
  kernel = nc_jax.campaign_init(x, y, padding="VALID")(key, shape)
  want = _reference_kernel(x, y, shape, key, n,
                           strides=(1,) * (len(shape) - 2), padding="VALID",
                           dilation=(1,) * (len(shape) - 2), alpha=0.5)
  np.testing.assert_array_equal(kernel, want)


@pytest.mark.parametrize("batch_shape, shape, kwargs, match", [
    ((10, 8, 8, 1), (3, 3, 3, 4), {}, "1 channels but the kernel expects 3"),
    ((10, 64), (3, 3, 1, 4), {}, r"must have shape \(m, size, size, in_features\)"),
    ((10, 8, 1), (3, 3, 1, 4), {}, r"must have shape \(m, size, size, in_features\)"),
    ((10, 4, 4, 1), (5, 5, 1, 4), {"padding": "VALID"}, "larger than the padded input"),
    ((10, 8, 8, 2), (3, 3, 1, 4), {"feature_group_count": 2}, "grouped and depthwise"),
    ((10, 8, 8, 1), (3, 3, 1, 4), {"padding": "CIRCULAR"}, "not supported"),
    ((10, 8, 8, 1), (3, 3, 1, 4), {"strides": 0}, "`strides` must be a positive int"),
    ((10, 8, 8, 1), (3, 3, 1, 4), {"kernel_dilation": (1, 2, 3)}, "`kernel_dilation`"),
    ((10, 8, 8, 1), (3, 3, 1, 4), {"padding": ((1, 1),)}, "`padding` must be"),
    ((10, 8, 8, 1), (3, 3, 1, 4), {"strides": 1.0}, "`strides` must be a positive int"),
    ((10, 8, 8, 1), (3, 3, 1, 4), {"padding": ["a", "b"]}, "`padding` must be"),
    ((10, 8, 8, 1), (3, 3, 1, 4), {"feature_group_count": True},
     "`feature_group_count` must be a positive int"),
    ((10, 4, 4, 1), (3, 3, 1, 4), {"padding": "VALID", "kernel_dilation": 2},
     r"the \(5, 5\) window \(dilated\) is larger"),
])
def test_bad_input(batch_shape, shape, kwargs, match):
  x = np.random.default_rng(0).normal(size=batch_shape).astype(np.float32)
  with pytest.raises(ValueError, match=match):
    nc_jax.campaign_init(x, np.arange(10) % 2, **kwargs)(jax.random.key(0),
                                                         shape)


@pytest.mark.parametrize("kwargs", [{"strides": 1.0}, {"padding": ["a", "b"]},
                                    {"kernel_dilation": "2"}])
def test_conv_options_raise_at_once_even_for_a_dense_kernel(kwargs):
  # They were ignored when the kernel turned out dense.
  with pytest.raises(ValueError, match="must be"):
    nc_jax.campaign_init(np.ones((4, 3), np.float32), **kwargs)


def test_none_strides_and_dilation_are_flax_s_default():
  x = np.random.default_rng(0).normal(size=(10, 8, 8, 1)).astype(np.float32)
  key, shape = jax.random.key(0), (3, 3, 1, 4)
  np.testing.assert_array_equal(
      nc_jax.campaign_init(x, strides=None, kernel_dilation=None)(key, shape),
      nc_jax.campaign_init(x)(key, shape))


def test_random_pick_takes_conv_kernels():
  key, shape = jax.random.key(0), (3, 3, 2, 4)
  kernel = nc_jax.random_pick_init()(key, shape)
  candidates = nc_jax.draw_candidates(key, HE, shape, 20)
  assert kernel.shape == shape
  flat, pool = kernel.reshape(-1, 4), candidates.reshape(-1, 20)
  assert all(any(np.array_equal(flat[:, i], pool[:, j]) for j in range(20))
             for i in range(4))


LECUN = nn.initializers.lecun_normal()


class CNN(nn.Module):
  """Convolutions with pooling, normalization and a residual connection."""

  @nn.compact
  def __call__(self, x):
    h = nn.max_pool(nn.relu(nn.Conv(4, (3, 3), padding="VALID")(x)), (2, 2),
                    (2, 2))
    h = nn.LayerNorm()(h + nn.relu(nn.Conv(4, (3, 3), strides=1)(h)))
    return nn.Dense(10)(h.reshape(h.shape[0], -1))


class NnxCNN(nnx.Module):
  def __init__(self, rngs):
    self.conv0 = nnx.Conv(1, 4, (3, 3), padding="VALID", rngs=rngs)
    self.conv1 = nnx.Conv(4, 4, (3, 3), rngs=rngs)
    self.norm = nnx.LayerNorm(4, rngs=rngs)
    self.head = nnx.Linear(36, 10, rngs=rngs)

  def __call__(self, x):
    h = nnx.max_pool(nnx.relu(self.conv0(x)), (2, 2), (2, 2))
    h = self.norm(h + nnx.relu(self.conv1(h)))
    return self.head(h.reshape(h.shape[0], -1))


def _conv(x, kernel, **kwargs):
  return nn.Conv(kernel.shape[-1], kernel.shape[:2], **kwargs).apply(
      {"params": {"kernel": kernel, "bias": jnp.zeros(kernel.shape[-1])}}, x)


def test_a_cnn_is_elected_layer_by_layer_on_each_layers_input(digits):
  x, y = _images(digits, 120, 8)
  key = jax.random.key(5)
  got = nc_jax.campaign_linen(CNN(), key, x, y, progress=False)["params"]
  campaign_key = jax.random.split(key)[1]
  layer_key = lambda i: jax.random.fold_in(campaign_key, i)
  k0 = nc_jax.campaign_init(x, y, alpha=1.0, base_init=LECUN,
                            padding="VALID")(layer_key(0), (3, 3, 1, 4))
  h = nn.max_pool(jax.nn.relu(_conv(x, k0, padding="VALID")), (2, 2), (2, 2))
  k1 = nc_jax.campaign_init(h, y, alpha=0.5, base_init=LECUN)(
      layer_key(1), (3, 3, 4, 4))
  h = nn.LayerNorm().apply({"params": got["LayerNorm_0"]},
                           h + jax.nn.relu(_conv(h, k1)))
  k2 = nc_jax.campaign_init(h.reshape(120, -1), y, alpha=0.0, base_init=LECUN,
                            activation=lambda z: z)(layer_key(2), (36, 10))
  np.testing.assert_array_equal(got["Conv_0"]["kernel"], k0)
  np.testing.assert_array_equal(got["Conv_1"]["kernel"], k1)
  np.testing.assert_array_equal(got["Dense_0"]["kernel"], k2)

  model = NnxCNN(nnx.Rngs(0))
  nc_jax.campaign_nnx(model, x, y, key=campaign_key, progress=False)
  np.testing.assert_array_equal(model.conv0.kernel.get_value(), k0)
  np.testing.assert_array_equal(model.conv1.kernel.get_value(), k1)
  np.testing.assert_array_equal(model.head.kernel.get_value(), k2)


def test_lsuv_sets_every_conv_to_unit_output_variance(digits):
  x, _ = _images(digits, 120, 8)
  params = nc_jax.lsuv_linen(CNN(), jax.random.key(0), x,
                             progress=False)["params"]
  h = _conv(x, params["Conv_0"]["kernel"], padding="VALID")
  assert abs(float(h.var()) - 1) < 0.1
  model = NnxCNN(nnx.Rngs(0))
  nc_jax.lsuv_nnx(model, x, progress=False)
  assert abs(float(model.conv0(jnp.asarray(x)).var()) - 1) < 0.1


class Tokens(nn.Module):
  """DenseGeneral over the last axis of tokens, then over two axes."""

  @nn.compact
  def __call__(self, x):  # (m, 6, 8)
    h = nn.relu(nn.DenseGeneral((2, 5), axis=-1)(x))  # (m, 6, 2, 5)
    h = nn.relu(nn.DenseGeneral(7, axis=(-2, -1))(h))  # (m, 6, 7)
    return nn.Dense(3)(h.mean(axis=1))


def test_dense_general_contracts_its_axes_and_labels_every_token(digits):
  x, y = stratified(*digits, 90)
  x = x[:, :48].reshape(90, 6, 8)
  key = jax.random.key(1)
  got = nc_jax.campaign_linen(Tokens(), key, x, y, progress=False)["params"]
  layer_key = lambda i: jax.random.fold_in(jax.random.split(key)[1], i)
  k0 = nc_jax.campaign_init(x.reshape(-1, 8), np.repeat(y, 6), alpha=1.0,
                            base_init=LECUN)(layer_key(0), (8, 10))
  np.testing.assert_array_equal(got["DenseGeneral_0"]["kernel"],
                                k0.reshape(8, 2, 5))
  h = jax.nn.relu(jnp.einsum("mtd,dab->mtab", x, k0.reshape(8, 2, 5)))
  k1 = nc_jax.campaign_init(h.reshape(-1, 10), np.repeat(y, 6), alpha=0.5,
                            base_init=LECUN)(layer_key(1), (10, 7))
  np.testing.assert_array_equal(got["DenseGeneral_1"]["kernel"],
                                k1.reshape(2, 5, 7))


class Unsupported(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.ConvTranspose(2, (3, 3))(x)
    return nn.Dense(10)(h.reshape(h.shape[0], -1))


def test_layers_the_walk_cannot_handle_keep_their_init_with_one_warning(digits):
  x, y = _images(digits, 60, 8)
  key = jax.random.key(0)
  with pytest.warns(UserWarning, match=r"'ConvTranspose_0' \(ConvTranspose\)"):
    got = nc_jax.campaign_linen(Unsupported(), key, x, y, progress=False)
  own = Unsupported().init(jax.random.split(key)[0], x[:2])
  np.testing.assert_array_equal(got["params"]["ConvTranspose_0"]["kernel"],
                                own["params"]["ConvTranspose_0"]["kernel"])


def test_a_grouped_conv_names_layers_as_the_way_out(digits):
  x, y = _images(digits, 60, 8)
  x = np.concatenate([x, x], -1)
  model = nn.Sequential([nn.Conv(4, (3, 3), feature_group_count=2), nn.relu])
  with pytest.raises(ValueError, match="grouped and depthwise") as caught:
    nc_jax.campaign_linen(model, jax.random.key(0), x, y, progress=False)
  message = str(caught.value)
  assert "Leave them out with `layers=`" in message and ".." not in message


def test_lsuv_from_the_campaigns_kernels_keeps_their_directions(digits):
  x, y = _images(digits, 120, 8)
  key = jax.random.key(0)
  elected = nc_jax.campaign_linen(CNN(), key, x, y, progress=False)
  scaled = nc_jax.lsuv_linen(CNN(), key, x, variables=elected, progress=False)
  for name in ("Conv_0", "Conv_1", "Dense_0"):
    a, b = elected["params"][name]["kernel"], scaled["params"][name]["kernel"]
    ratio = float(jnp.linalg.norm(b) / jnp.linalg.norm(a))
    np.testing.assert_allclose(b, ratio * a, rtol=1e-5, atol=1e-7)
  h = _conv(x, scaled["params"]["Conv_0"]["kernel"], padding="VALID")
  assert abs(float(h.var()) - 1) < 0.1

  model = NnxCNN(nnx.Rngs(0))
  nc_jax.campaign_nnx(model, x, y, key=jax.random.split(key)[1],
                      progress=False)
  nc_jax.lsuv_nnx(model, x, orthogonal=False, progress=False)
  np.testing.assert_allclose(model.conv0.kernel.get_value(),
                             scaled["params"]["Conv_0"]["kernel"], rtol=1e-6)
