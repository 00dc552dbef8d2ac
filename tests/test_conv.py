"""Convolution kernels: `campaign_init` on flax's conv layout."""

import flax.linen as nn
import jax
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
])
def test_bad_input(batch_shape, shape, kwargs, match):
  x = np.random.default_rng(0).normal(size=batch_shape).astype(np.float32)
  with pytest.raises(ValueError, match=match):
    nc_jax.campaign_init(x, np.arange(10) % 2, **kwargs)(jax.random.key(0),
                                                         shape)


def test_random_pick_takes_conv_kernels():
  key, shape = jax.random.key(0), (3, 3, 2, 4)
  kernel = nc_jax.random_pick_init()(key, shape)
  candidates = nc_jax.draw_candidates(key, HE, shape, 20)
  assert kernel.shape == shape
  flat, pool = kernel.reshape(-1, 4), candidates.reshape(-1, 20)
  assert all(any(np.array_equal(flat[:, i], pool[:, j]) for j in range(20))
             for i in range(4))
