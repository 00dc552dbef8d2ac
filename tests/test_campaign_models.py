"""`campaign_linen` / `campaign_nnx`: layer-sequential campaigns on whole models."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nc_jax
import models
from helpers import stratified

SIZES = (784, 48, 24, 10)
# One object each, so that repeated `campaign_init` calls hit the jit cache.
LECUN = nn.initializers.lecun_normal()
IDENTITY = lambda z: z


@pytest.fixture(scope="module")
def data(mnist):
  x, y = stratified(*mnist, 600, seed=3)
  return jnp.asarray(x), jnp.asarray(y)


def by_hand(x, y, key, sizes, alphas):
  """The MLP campaign composed layer by layer from `campaign_init`."""
  _, campaign_key = jax.random.split(key)
  kernels, h = [], x
  for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
    last = i == len(sizes) - 2
    act = IDENTITY if last else jax.nn.relu
    init = nc_jax.campaign_init(h, y, alpha=alphas[i], activation=act,
                                base_init=LECUN)
    w = init(jax.random.fold_in(campaign_key, i), (fan_in, fan_out))
    kernels.append(w)
    h = act(h @ w)  # biases start at zero
  return kernels


def dense_kernels(params):
  return [params[f"Dense_{i}"]["kernel"] for i in range(len(params))]


def test_structure_and_shapes_equal_model_init(data):
  x, y = data
  model = models.MLP(SIZES[1:])
  key = jax.random.key(0)
  got = nc_jax.campaign_linen(model, key, x, y, progress=False)
  ref = model.init(jax.random.split(key)[0], x)
  assert jax.tree.structure(got) == jax.tree.structure(ref)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), got) == jax.tree.map(
      lambda a: (a.shape, a.dtype), ref)
  for name in ref["params"]:  # biases keep the model's own init (zeros)
    np.testing.assert_array_equal(got["params"][name]["bias"],
                                  ref["params"][name]["bias"])


@pytest.mark.parametrize("alpha, expected", [
    (None, (1.0, 0.5, 0.0)),            # the default linear schedule
    ((0.2, 0.9, 0.4), (0.2, 0.9, 0.4)),  # one per layer
    (0.3, (0.3, 0.3, 0.3)),
    (lambda i, n: i / n, (0.0, 1 / 3, 2 / 3)),
])
def test_every_layer_equals_campaign_init_on_its_input(data, alpha, expected):
  x, y = data
  key = jax.random.key(7)
  got = nc_jax.campaign_linen(models.MLP(SIZES[1:]), key, x, y, alpha=alpha,
                              progress=False)
  for w, ref in zip(dense_kernels(got["params"]),
                    by_hand(x, y, key, SIZES, expected), strict=True):
    np.testing.assert_array_equal(w, ref)


def test_first_layer_is_campaign_init_on_x_with_the_documented_key(data):
  x, y = data
  key = jax.random.key(11)
  got = nc_jax.campaign_linen(models.MLP((32, 10)), key, x, y, progress=False)
  init = nc_jax.campaign_init(x, y, alpha=1.0,
                              base_init=LECUN)
  expected = init(jax.random.fold_in(jax.random.split(key)[1], 0), (784, 32))
  np.testing.assert_array_equal(got["params"]["Dense_0"]["kernel"], expected)


def test_same_key_same_variables_and_keys_matter(data):
  x, y = data
  model = models.MLP((32, 10))
  a = nc_jax.campaign_linen(model, jax.random.key(1), x, y, progress=False)
  b = nc_jax.campaign_linen(model, jax.random.key(1), x, y, progress=False)
  c = nc_jax.campaign_linen(model, jax.random.key(2), x, y, progress=False)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(a["params"]["Dense_0"]["kernel"],
                            c["params"]["Dense_0"]["kernel"])


def test_linen_and_nnx_give_the_same_kernels(data):
  x, y = data
  key = jax.random.key(5)
  linen_params = nc_jax.campaign_linen(models.MLP(SIZES[1:]), key, x, y,
                                       progress=False)["params"]
  model = models.NnxMLP(SIZES, rngs=nnx.Rngs(0))
  nc_jax.campaign_nnx(model, x, y, key=jax.random.split(key)[1],
                      progress=False)
  for w, layer in zip(dense_kernels(linen_params), model.layers, strict=True):
    np.testing.assert_array_equal(layer.kernel[...], w)


@pytest.mark.parametrize("labels", ["int", "one_hot", "none"])
def test_labels_int_one_hot_or_none(data, labels):
  x, y = data
  key = jax.random.key(3)
  y_in = {"int": y, "one_hot": jax.nn.one_hot(y, 10), "none": None}[labels]
  got = nc_jax.campaign_linen(models.MLP((32, 10)), key, x, y_in,
                              progress=False)["params"]
  expected = by_hand(x, None if labels == "none" else y, key, (784, 32, 10),
                     (1.0, 0.0))
  for w, ref in zip(dense_kernels(got), expected, strict=True):
    np.testing.assert_array_equal(w, ref)


def elected_and_kept(model, x, y, key=jax.random.key(0)):
  got = nc_jax.campaign_linen(model, key, x, y, progress=False)
  ref = model.init(jax.random.split(key)[0], x)
  flat_got = dict(jax.tree_util.tree_flatten_with_path(got)[0])
  flat_ref = dict(jax.tree_util.tree_flatten_with_path(ref)[0])
  changed = {jax.tree_util.keystr(k) for k in flat_ref
             if not np.array_equal(flat_got[k], flat_ref[k])}
  assert all(np.isfinite(v).all() for v in flat_got.values())
  return changed


@pytest.mark.parametrize("model, kernels", [
    (models.MLP(SIZES[1:]), 3),
    (models.ResidualMLP(), 3),
    (models.NormDropoutMLP(), 2),
    (models.SmallCNN(), 3),
])
def test_exactly_the_kernels_change(data, model, kernels):
  x, y = data
  changed = elected_and_kept(model, x, y)
  assert len(changed) == kernels
  assert all(name.endswith("['kernel']") and ("Dense" in name or "Conv" in name)
             for name in changed), changed


def test_dropout_is_off_during_the_walk(data):
  x, y = data
  a = nc_jax.campaign_linen(models.NormDropoutMLP(), jax.random.key(0), x, y,
                            progress=False)
  b = nc_jax.campaign_linen(models.NormDropoutMLP(), jax.random.key(0), x, y,
                            progress=False)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_shared_dense_is_elected_once_with_a_warning(data):
  x, y = data
  with pytest.warns(UserWarning, match="'inner' is called 2 times"):
    got = nc_jax.campaign_linen(models.SharedDense(), jax.random.key(0), x, y,
                                progress=False)
  params = got["params"]
  campaign_key = jax.random.split(jax.random.key(0))[1]
  h = jax.nn.relu(x @ params["embed"]["kernel"])  # input to the first call
  init = nc_jax.campaign_init(h, y, alpha=0.5,  # layer 1 of 3
                              base_init=LECUN)
  np.testing.assert_array_equal(
      params["inner"]["kernel"],
      init(jax.random.fold_in(campaign_key, 1), (32, 32)))


def test_layers_filter_and_activation_mapping(data):
  x, y = data
  key = jax.random.key(4)
  model = models.MLP(SIZES[1:])
  only_last = nc_jax.campaign_linen(model, key, x, y, layers=["Dense_2"],
                                    progress=False)["params"]
  ref = model.init(jax.random.split(key)[0], x)["params"]
  for name in ("Dense_0", "Dense_1"):
    np.testing.assert_array_equal(only_last[name]["kernel"],
                                  ref[name]["kernel"])
  assert not np.array_equal(only_last["Dense_2"]["kernel"],
                            ref["Dense_2"]["kernel"])
  by_predicate = nc_jax.campaign_linen(
      model, key, x, y, layers=lambda path: path == "Dense_2",
      progress=False)["params"]
  jax.tree.map(np.testing.assert_array_equal, by_predicate, only_last)
  # An explicit mapping equal to the default changes nothing.
  mapped = nc_jax.campaign_linen(
      model, key, x, y, activation={"Dense_0": jax.nn.relu,
                                    "Dense_2": lambda z: z},
      progress=False)["params"]
  default = nc_jax.campaign_linen(model, key, x, y, progress=False)["params"]
  jax.tree.map(np.testing.assert_array_equal, mapped, default)
  tanh = nc_jax.campaign_linen(model, key, x, y,
                               activation=lambda path: jnp.tanh,
                               progress=False)["params"]
  assert not np.array_equal(tanh["Dense_1"]["kernel"],
                            default["Dense_1"]["kernel"])


def test_dense_on_positions_uses_each_examples_label(data):
  x, y = data
  tokens = x.reshape(x.shape[0], 28, 28)  # 28 positions of 28 features

  class PerRow(nn.Module):
    @nn.compact
    def __call__(self, t):
      return nn.Dense(12)(t).mean(axis=1)

  key = jax.random.key(9)
  got = nc_jax.campaign_linen(PerRow(), key, tokens, y, progress=False)
  init = nc_jax.campaign_init(tokens.reshape(-1, 28), jnp.repeat(y, 28),
                              alpha=1.0, activation=IDENTITY,
                              base_init=LECUN)
  np.testing.assert_array_equal(
      got["params"]["Dense_0"]["kernel"],
      init(jax.random.fold_in(jax.random.split(key)[1], 0), (28, 12)))


def test_progress_bar_names_the_layers(data, capsys):
  x, y = data
  nc_jax.campaign_linen(models.MLP((32, 10)), jax.random.key(0), x, y)
  err = capsys.readouterr().err
  assert "campaign" in err and "2/2" in err and "Dense_1" in err


def test_nnx_leaves_other_state_alone(data):
  x, y = data
  model = models.NnxNormDropout(rngs=nnx.Rngs(0))
  raw = lambda v: (jax.random.key_data(v) if jnp.issubdtype(
      v.dtype, jax.dtypes.prng_key) else v)
  flat = lambda: {path: np.asarray(raw(v.get_value()))
                  for path, v in nnx.to_flat_state(nnx.state(model))}
  before = flat()
  nc_jax.campaign_nnx(model, x, y, key=1, progress=False)
  after = flat()
  assert before.keys() == after.keys()
  for path in before:
    same = np.array_equal(before[path], after[path])
    assert same == (path[-1] != "kernel"), path
  assert model.dropout.deterministic is False  # the model's mode is kept
  assert np.isfinite(model(x).sum())


def test_nnx_same_key_same_kernels(data):
  x, y = data
  a, b = (models.NnxMLP(SIZES, rngs=nnx.Rngs(0)) for _ in range(2))
  nc_jax.campaign_nnx(a, x, y, key=3, progress=False)
  nc_jax.campaign_nnx(b, x, y, key=jax.random.key(3), progress=False)
  for la, lb in zip(a.layers, b.layers):
    np.testing.assert_array_equal(la.kernel[...], lb.kernel[...])


def test_bfloat16_params_keep_their_dtype(data):
  x, y = data

  class Half(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.relu(nn.Dense(16, param_dtype=jnp.bfloat16)(x))
      return nn.Dense(10, param_dtype=jnp.bfloat16)(h)

  got = nc_jax.campaign_linen(Half(), jax.random.key(0), x, y, progress=False)
  assert got["params"]["Dense_0"]["kernel"].dtype == jnp.bfloat16
  assert np.isfinite(np.asarray(got["params"]["Dense_1"]["kernel"],
                                np.float32)).all()


@pytest.mark.parametrize("call, error, match", [
    (lambda x, y: nc_jax.campaign_linen(models.NoWeights(), jax.random.key(0),
                                        x, y), ValueError, "no weight layer"),
    (lambda x, y: nc_jax.campaign_linen(models.SmallCNN(), jax.random.key(0),
                                        x[:, :100], y), ValueError,
     "could not take `x`"),
    (lambda x, y: nc_jax.campaign_nnx(models.NnxMLP(SIZES, rngs=nnx.Rngs(0)),
                                      x[:, :100], y), ValueError,
     "could not take `x`"),
    (lambda x, y: nc_jax.campaign_linen(models.MLP((8, 10)), jax.random.key(0),
                                        x, y[:-1]), ValueError,
     "`y` has 599 rows"),
    (lambda x, y: nc_jax.campaign_nnx(models.NnxMLP(SIZES, rngs=nnx.Rngs(0)),
                                      x, y[:10]), ValueError, "`y` has 10 rows"),
    (lambda x, y: nc_jax.campaign_linen(models.MLP((8, 10)), jax.random.key(0),
                                        x, y, alpha=[1.0]), ValueError,
     "`alpha` has 1 values but 2 layers"),
    (lambda x, y: nc_jax.campaign_linen(models.MLP((8, 10)), jax.random.key(0),
                                        x, y, alpha=1.5), ValueError,
     r"\[0, 1\]"),
    (lambda x, y: nc_jax.campaign_linen(models.MLP((8, 10)), jax.random.key(0),
                                        x, y, layers=["Dense_7"]), ValueError,
     r"`layers` names \['Dense_7'\], which are not among the model's weight "
     r"layers \['Dense_0', 'Dense_1'\]"),
    (lambda x, y: nc_jax.campaign_linen(models.MLP((8, 10)), jax.random.key(0),
                                        x, y, layers=lambda path: False),
     ValueError, "`layers` selects none of the model's weight layers"),
    (lambda x, y: nc_jax.campaign_linen(models.MLP((8, 10)), jax.random.key(0),
                                        x, y, layers=3),
     TypeError, "`layers` must be None, a collection of layer paths"),
    (lambda x, y: nc_jax.campaign_linen(models.MLP((8, 10)), jax.random.key(0),
                                        x, y, activation={"Dense_9": jnp.tanh}),
     ValueError, "do not take part"),
    (lambda x, y: nc_jax.campaign_linen(models.MLP((8, 10)), jax.random.key(0),
                                        x, y, activation=jax.nn.relu),
     TypeError, "called with a layer path"),
    (lambda x, y: nc_jax.campaign_linen(models.MLP((8, 10)), jax.random.key(0),
                                        x, y, candidates_per_neuron=0),
     ValueError, "candidates_per_neuron"),
    (lambda x, y: nc_jax.campaign_linen(
        nn.Dense(8, bias_init=nn.initializers.normal()), jax.random.key(0),
        x, y), ValueError, "non-constant bias"),
    (lambda x, y: nc_jax.campaign_nnx(models.MLP((8, 10)), x, y), TypeError,
     "flax.nnx.Module"),
    (lambda x, y: nc_jax.campaign_nnx(models.NnxMLP(SIZES, rngs=nnx.Rngs(0)),
                                      x, y, key="seed"), TypeError, "`key`"),
    (lambda x, y: nc_jax.campaign_linen(models.MLP((8, 10)), jax.random.key(0),
                                        x[:1], y[:1]), ValueError,
     "at least 2 examples"),
])
def test_errors(data, call, error, match):
  x, y = data
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    with pytest.raises(error, match=match):
      call(x, y)


def test_a_shared_layer_left_out_does_not_warn(data):
  # The warning about shared weights once fired for a layer `layers=` leaves
  # out, which keeps its own init.
  x, y = data
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    got = nc_jax.campaign_linen(models.SharedDense(), jax.random.key(0), x, y,
                                layers=lambda path: path != "inner",
                                progress=False)
  assert "inner" in got["params"]


def test_int_keys_are_seeds_everywhere(data):
  # campaign_nnx and lsuv_nnx took an int seed; the linen functions failed
  # with a PRNG error. All four take one now, as jax.random.key(seed).
  x, y = data
  model = models.MLP(SIZES[1:])
  for walk in (lambda k: nc_jax.campaign_linen(model, k, x, y, progress=False),
               lambda k: nc_jax.lsuv_linen(model, k, x, progress=False)):
    jax.tree.map(np.testing.assert_array_equal, walk(3),
                 walk(jax.random.key(3)))
