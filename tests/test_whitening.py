"""`whitening_init`: patch-whitening kernels, against a float64 reference on
explicit patches; layouts, jit, dtypes, scale, degenerate and bad input, and
the whole-model walks' `whiten=`."""

import flax.linen as nn
from flax import nnx
import hypothesis
from hypothesis import strategies as st
import jax
from jax.experimental import checkify
import jax.numpy as jnp
import numpy as np
import pytest

import nc_jax
import reference
from helpers import stratified

KEY = jax.random.key(0)
EPS = 5e-4


def _images(data, m, side, channels=1, seed=0):
  """Real digits as images; `channels` shifted copies pin the (*window, C)
  flattening order."""
  x, y = stratified(*data, m, seed)
  x = x.reshape(m, side, side, 1)
  return np.concatenate([np.roll(x, c, axis=2) for c in range(channels)],
                        -1), y


def _flat(kernel):
  kernel = np.asarray(kernel, np.float64)
  return kernel.reshape(-1, kernel.shape[-1])


def _assert_matches(got, want, top=4):
  """The strongest directions filter by filter; all of them through the
  sign- and rotation-free `U U^T` (near-equal eigenvalues make single
  eigenvectors ill-posed). `U U^T` is dominated by the weakest directions,
  `1 / (lam + eps * median)`: where lam is 0 in float64, float32's eigh gives
  rounding noise near 1e-7, which moves it by up to 0.5%."""
  got, want = _flat(got), _flat(want)
  d = want.shape[0]
  for i in range(min(top, want.shape[1])):
    np.testing.assert_allclose(got[:, i], want[:, i],
                               atol=1e-4 * np.abs(want[:, i]).max())
  k = min(d, got.shape[1])
  gram, want_gram = got[:, :k] @ got[:, :k].T, want[:, :k] @ want[:, :k].T
  np.testing.assert_allclose(gram, want_gram,
                             atol=1e-2 * np.abs(want_gram).max())


@pytest.mark.parametrize("window, channels, strides, padding, dilation", [
    ((3, 3), 1, (1, 1), "SAME", (1, 1)),
    ((3, 3), 3, (2, 2), "VALID", (1, 1)),
    ((3, 2), 2, (1, 2), "SAME", (2, 2)),
    ((2, 2), 2, (2, 1), ((1, 0), (2, 1)), (1, 2)),
])
@pytest.mark.parametrize("center", [True, False])
def test_matches_the_float64_reference_on_explicit_patches(
    digits, window, channels, strides, padding, dilation, center):
  x, _ = _images(digits, 64, 8, channels)
  d = int(np.prod(window)) * channels
  shape = (*window, channels, 2 * d)
  got = nc_jax.whitening_init(x, strides=strides, padding=padding,
                              kernel_dilation=dilation, center=center)(
                                  KEY, shape)
  patches, _ = reference.conv_patches(x, window, strides, padding, dilation)
  want, _, _ = reference.whitening(patches, shape[-1], EPS, center=center)
  assert got.shape == shape
  _assert_matches(got, want)


@pytest.mark.parametrize("method", ["pca", "zca"])
def test_dense_rows_match_the_reference(digits, method):
  x, _ = stratified(*digits, 400)
  got = nc_jax.whitening_init(x, method=method, pairs=False)(KEY, (64, 64))
  want, _, _ = reference.whitening(x, 64, EPS, pairs=False, method=method)
  _assert_matches(got, want, top=4 if method == "pca" else 0)
  if method == "zca":  # V diag(.) V^T: symmetric
    np.testing.assert_allclose(got, got.T, atol=1e-4 * float(
        jnp.abs(got).max()))


def test_filters_whiten_the_layers_output_on_mnist(mnist):
  x, _ = _images(mnist, 500, 28)
  kernel = nc_jax.whitening_init(x)(KEY, (3, 3, 1, 18))
  out = nn.Conv(18, (3, 3), use_bias=False).apply({"params": {
      "kernel": kernel}}, x).reshape(-1, 18)
  cov = np.cov(np.asarray(out, np.float64).T, bias=True)
  patches, _ = reference.conv_patches(x, (3, 3), (1, 1), "SAME", (1, 1))
  _, lam, level = reference.whitening(patches, 18, EPS)
  gains = lam / (lam + EPS * level)  # each direction's variance, about 1
  np.testing.assert_allclose(np.diag(cov)[:9], gains, rtol=1e-3)
  np.testing.assert_allclose(cov[:9, 9:], -cov[:9, :9], atol=1e-6)
  off = cov[:9, :9] - np.diag(np.diag(cov[:9, :9]))
  assert np.abs(off).max() < 1e-4  # distinct directions are uncorrelated


def test_how_features_take_the_directions(digits):
  x, _ = _images(digits, 64, 8)
  init = nc_jax.whitening_init(x)
  full = _flat(init(KEY, (3, 3, 1, 18)))  # 2d: airbench's layout
  np.testing.assert_array_equal(full[:, :9], -full[:, 9:])
  # Fewer: the strongest directions, each with both signs; an odd count
  # drops the last negated one.
  np.testing.assert_array_equal(
      _flat(init(KEY, (3, 3, 1, 8))), np.concatenate(
          [full[:, :4], -full[:, :4]], 1))
  np.testing.assert_array_equal(
      _flat(init(KEY, (3, 3, 1, 7))), np.concatenate(
          [full[:, :4], -full[:, :3]], 1))
  # Up to 2d the kernel depends on the batch alone.
  np.testing.assert_array_equal(init(jax.random.key(5), (3, 3, 1, 18)),
                                init(KEY, (3, 3, 1, 18)))
  # More: random unit combinations of the d directions beyond them, drawn
  # with the key, each of variance about 1 on the batch as well.
  more = _flat(init(KEY, (3, 3, 1, 26)))
  np.testing.assert_array_equal(more[:, :9], full[:, :9])
  np.testing.assert_array_equal(more[:, :13], -more[:, 13:])
  np.testing.assert_array_equal(more, _flat(init(KEY, (3, 3, 1, 26))))
  assert not np.array_equal(more, _flat(init(jax.random.key(5),
                                             (3, 3, 1, 26))))
  patches, _ = reference.conv_patches(x, (3, 3), (1, 1), "SAME", (1, 1))
  variance = (patches - patches.mean(0)) @ more[:, 9:13]
  np.testing.assert_allclose(variance.var(0), 1.0, atol=0.02)
  # pairs=False: the directions themselves, strongest first.
  single = _flat(nc_jax.whitening_init(x, pairs=False)(KEY, (3, 3, 1, 12)))
  np.testing.assert_array_equal(single[:, :9], full[:, :9])
  np.testing.assert_array_equal(single[:, 9:], _flat(nc_jax.whitening_init(
      x, pairs=False)(KEY, (3, 3, 1, 12)))[:, 9:])


def test_jit_dtypes_and_chunks(digits):
  x, _ = _images(digits, 300, 8, channels=2)
  shape = (3, 3, 2, 36)
  eager = nc_jax.whitening_init(x)(KEY, shape)
  jitted = jax.jit(lambda x, k: nc_jax.whitening_init(x)(k, shape))(x, KEY)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
  closed = jax.jit(lambda k: nc_jax.whitening_init(x)(k, shape))(KEY)
  np.testing.assert_allclose(closed, eager, rtol=1e-5, atol=1e-5)
  for dtype in (jnp.bfloat16, jnp.float16):
    kernel = nc_jax.whitening_init(x)(KEY, shape, dtype)
    assert kernel.dtype == dtype
    np.testing.assert_array_equal(kernel, eager.astype(dtype))
  for chunk_size in (1, 7, 299):
    _assert_matches(nc_jax.whitening_init(x, chunk_size=chunk_size)(KEY, shape),
                    eager)
  with jax.enable_x64(True):  # a float64 batch is whitened in float64
    wide = nc_jax.whitening_init(x.astype(np.float64))(KEY, shape,
                                                       jnp.float64)
    patches, _ = reference.conv_patches(x, (3, 3), (1, 1), "SAME", (1, 1))
    want, _, _ = reference.whitening(patches, 36, EPS)
    assert wide.dtype == jnp.float64
    np.testing.assert_allclose(_flat(wide), want,
                               atol=1e-8 * np.abs(want).max())


def test_scale_and_degenerate_batches(digits):
  x, _ = stratified(*digits, 300)
  init = lambda b: nc_jax.whitening_init(b)(KEY, (64, 40))
  base = init(x)
  # Powers of two scale back exactly; other scales to rounding.
  np.testing.assert_array_equal(init(x * 2.0**60), base * 2.0**-60)
  for scale in (1e-30, 1e30):
    _assert_matches(np.asarray(init(x * scale), np.float64) * scale, base)
  # One huge feature: finite. Its eigenvalue is 1e12 times the others, which
  # float32's eigh cannot resolve below it (docs/algorithm.md#patch-whitening
  # says so); a float64 batch whitens every direction, and eps, in units of
  # the median eigenvalue, does not damp the others.
  huge = x.copy()
  huge[:, 20] *= 1e6
  assert np.isfinite(init(huge)).all()
  with jax.enable_x64(True):
    kernel = np.asarray(nc_jax.whitening_init(huge.astype(np.float64))(
        KEY, (64, 128), jnp.float64))
  variance = ((huge - huge.mean(0)) @ kernel[:, :64]).var(0)
  assert (variance[:50] > 0.95).all(), variance
  # No variation at all: orthonormal filters; constant features: finite.
  for flat in (np.zeros((10, 64), np.float32), np.ones((10, 64), np.float32)):
    kernel = np.asarray(nc_jax.whitening_init(flat, pairs=False)(
        KEY, (64, 64)))
    np.testing.assert_allclose(kernel.T @ kernel, np.eye(64), atol=1e-5)
  kernel = init(np.where(np.arange(64) < 60, x, 3.0))
  assert np.isfinite(kernel).all()
  # One feature, one filter.
  one = nc_jax.whitening_init(x[:, 20:21])(KEY, (1, 2))
  np.testing.assert_allclose(
      one, [[1, -1]] / np.sqrt(x[:, 20].var() * (1 + EPS)), rtol=1e-4)


def test_traced_batch_that_fails_its_checks_gives_nan():
  bad = jnp.ones((8, 4)).at[0, 0].set(jnp.nan)
  kernel = jax.jit(lambda b: nc_jax.whitening_init(b)(KEY, (4, 8)))(bad)
  assert np.isnan(kernel).all()
  checked = checkify.checkify(
      lambda b: nc_jax.whitening_init(b)(KEY, (4, 8)),
      errors=checkify.user_checks)
  error, _ = jax.jit(checked)(bad)
  with pytest.raises(checkify.JaxRuntimeError, match="NaN or infinite"):
    error.throw()


@pytest.mark.parametrize("batch_shape, shape, kwargs, match", [
    ((8, 4), (4, 8), {"eps": 0.0}, "`eps` must be a positive float"),
    ((8, 4), (4, 8), {"eps": float("nan")}, "`eps` must be a positive"),
    ((8, 4), (4, 8), {"eps": "1e-3"}, "`eps` must be a positive"),
    ((8, 4), (4, 8), {"method": "svd"}, "`method` must be one of"),
    ((8, 4), (4, 6), {"method": "zca"}, "method='zca' whitens all d=4"),
    ((8, 4), (5, 8), {}, "fan_in=5"),
    ((8, 6, 6, 2), (3, 3, 1, 8), {}, "2 channels but the kernel expects 1"),
    ((8, 6, 6, 1), (3, 3, 1, 8), {"feature_group_count": 2}, "grouped"),
    ((8, 2, 2, 1), (3, 3, 1, 8), {"padding": "VALID"}, "larger than"),
    ((8, 4), (4,), {}, "must be a kernel shape"),
    ((8, 4), (4, 8), {"chunk_size": 0}, "chunk_size"),
])
def test_bad_input(batch_shape, shape, kwargs, match):
  with pytest.raises(ValueError, match=match):
    nc_jax.whitening_init(np.ones(batch_shape, np.float32), **kwargs)(KEY,
                                                                       shape)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"center": "yes"}, TypeError, "`center` must be True or False"),
    ({"pairs": 1}, TypeError, "`pairs` must be True or False"),
])
def test_bad_flags(kwargs, error, match):
  with pytest.raises(error, match=match):
    nc_jax.whitening_init(np.ones((8, 4), np.float32), **kwargs)


def test_bad_batch_and_dtype():
  with pytest.raises(ValueError, match="at least 2"):
    nc_jax.whitening_init(np.ones((1, 4), np.float32))
  with pytest.raises(ValueError, match="NaN or infinite"):
    nc_jax.whitening_init(np.full((4, 4), np.inf, np.float32))
  with pytest.raises(TypeError, match="floating dtype"):
    nc_jax.whitening_init(np.ones((8, 4), np.float32))(KEY, (4, 8), jnp.int32)


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(
    window=st.lists(st.integers(1, 3), min_size=1, max_size=2),
    channels=st.integers(1, 3),
    extra=st.integers(-3, 3),
    stride=st.integers(1, 2),
    padding=st.sampled_from(["SAME", "VALID"]),
)
def test_any_geometry_whitens_its_patches(window, channels, extra, stride,
                                          padding):
  rng = np.random.default_rng(len(window) * 100 + channels * 10 + stride)
  spatial = (7,) * len(window)
  x = rng.normal(size=(40, *spatial, channels)) * rng.uniform(
      0.5, 2, size=channels)
  d = int(np.prod(window)) * channels
  shape = (*window, channels, max(1, 2 * d + extra))
  kernel = nc_jax.whitening_init(x.astype(np.float32), strides=stride,
                                 padding=padding)(KEY, shape)
  assert kernel.shape == shape and np.isfinite(kernel).all()
  patches, _ = reference.conv_patches(x, window, (stride,) * len(window),
                                      padding, (1,) * len(window))
  k = min(d, -(-shape[-1] // 2))
  _, lam, level = reference.whitening(patches, 2 * k, EPS)
  variance = ((patches - patches.mean(0)) @ _flat(kernel)[:, :k]).var(0)
  np.testing.assert_allclose(variance, lam[:k] / (lam[:k] + EPS * level),
                             rtol=2e-3, atol=1e-4)


class _LeNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.max_pool(nn.relu(nn.Conv(18, (3, 3))(x)), (2, 2), (2, 2))
    x = nn.max_pool(nn.relu(nn.Conv(8, (3, 3), padding="VALID")(x)),
                    (2, 2), (2, 2))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_walk_whitens_the_named_layers_on_their_input(mnist):
  x, y = _images(mnist, 400, 28)
  model = _LeNet()
  variables, report = nc_jax.campaign_linen(
      model, 1, x, y, whiten=["Conv_0"], report=True, progress=False)
  params = variables["params"]
  np.testing.assert_array_equal(params["Conv_0"]["kernel"],
                                nc_jax.whitening_init(x)(KEY, (3, 3, 1, 18)))
  # The next layer is elected on the whitened layer's output.
  h = nn.max_pool(nn.relu(nn.Conv(18, (3, 3)).apply(
      {"params": params["Conv_0"]}, x)), (2, 2), (2, 2))
  campaign_key = jax.random.split(jax.random.key(1))[1]
  np.testing.assert_array_equal(
      params["Conv_1"]["kernel"],
      nc_jax.campaign_init(h, y, alpha=0.5, padding="VALID",
                           base_init=nn.initializers.lecun_normal())(
          jax.random.fold_in(campaign_key, 1), (3, 3, 18, 8)))
  rows = report.rows()
  assert rows[0]["whitened"] == "pca, d=9" and "candidates" not in rows[0]
  assert rows[1]["candidates"] == 40 and "whitened" not in rows[1]
  assert "whitened" in str(report)
  # Only the whitened layer changes; the rest keep the model's init.
  alone = nc_jax.campaign_linen(model, 1, x, y, layers=["Conv_0"],
                                whiten=["Conv_0"], progress=False)
  init = model.init(jax.random.split(jax.random.key(1))[0], x[:2])
  np.testing.assert_array_equal(alone["params"]["Conv_0"]["kernel"],
                                params["Conv_0"]["kernel"])
  for path in ("Conv_1", "Dense_0"):
    jax.tree.map(np.testing.assert_array_equal, alone["params"][path],
                 init["params"][path])
  # Whitening options, the random-pick control, and inside jit.
  zca = nc_jax.campaign_linen(model, 1, x, y, whiten=lambda p: p == "Conv_0",
                              whitening={"method": "zca", "eps": 1e-3},
                              elect="random", progress=False)
  np.testing.assert_array_equal(
      zca["params"]["Conv_0"]["kernel"],
      nc_jax.whitening_init(x, method="zca", eps=1e-3)(KEY, (3, 3, 1, 18)))
  jitted = jax.jit(lambda k, x, y: nc_jax.campaign_linen(
      model, k, x, y, num_classes=10, whiten=["Conv_0"], progress=False))(
          jax.random.key(1), x, y)
  jax.tree.map(np.testing.assert_array_equal, jitted, variables)


def test_nnx_walk_whitens_too(mnist):
  x, y = _images(mnist, 200, 28)

  class Net(nnx.Module):

    def __init__(self, rngs):
      self.conv = nnx.Conv(1, 18, (3, 3), rngs=rngs)
      self.out = nnx.Linear(28 * 28 * 18, 10, rngs=rngs)

    def __call__(self, x):
      return self.out(nnx.relu(self.conv(x)).reshape(x.shape[0], -1))

  net = Net(nnx.Rngs(0))
  nc_jax.campaign_nnx(net, x, y, key=3, whiten=["conv"], progress=False)
  np.testing.assert_array_equal(net.conv.kernel[...],
                                nc_jax.whitening_init(x)(KEY, (3, 3, 1, 18)))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"whiten": ["Conv_9"]}, ValueError, r"`whiten` names \['Conv_9'\]"),
    ({"whiten": 3}, TypeError, "`whiten` must be None, a collection"),
    ({"layers": ["Dense_0"], "whiten": ["Conv_0"]}, ValueError,
     r"not among the layers taking part \(see `layers=`\) \['Dense_0'\]"),
    ({"whiten": lambda path: False}, ValueError, "`whiten` selects none"),
    ({"whiten": ["Conv_0"], "whitening": {"eps": -1}}, ValueError, "`eps`"),
    ({"whitening": {"alpha": 1}}, ValueError, "`whitening` must be a mapping"),
    ({"whiten": ["Conv_1"], "whitening": {"method": "zca"}}, ValueError,
     "refuses these layers before any work: 'Conv_1': method='zca'"),
])
def test_walk_whitening_errors(digits, kwargs, error, match):
  x, y = _images(digits, 32, 8)
  with pytest.raises(error, match=match):
    nc_jax.campaign_linen(_LeNet(), 0, x, y, progress=False, **kwargs)
