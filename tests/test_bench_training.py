"""The benchmarks' MLPs, initializers and training (benchmarks/training.py)."""

import dataclasses

import jax
import numpy as np
import pytest

import nc_jax
from benchmarks import data
from benchmarks import training


@pytest.fixture(scope="module")
def small():
  """Digits with 400 training images: fast, real, 64 features."""
  d = data.digits()
  return data.Dataset(d.name, d.x_train[:400], d.y_train[:400], d.x_test,
                      d.y_test)


# The random-pick controls share the campaign's path through `initialize`;
# test_init_names_and_options checks one (each costs a compilation).
@pytest.mark.parametrize("model_init", [i for i in training.INITS
                                        if not i.endswith("+random")])
def test_every_initializer_gives_the_mlp_its_shapes(small, model_init):
  params = training.initialize(model_init, "mlp3", jax.random.key(0), small)
  shapes = jax.tree.map(lambda a: a.shape, params)
  assert shapes == {"Dense_0": {"kernel": (64, 256), "bias": (256,)},
                    "Dense_1": {"kernel": (256, 100), "bias": (100,)},
                    "Dense_2": {"kernel": (100, 10), "bias": (10,)}}
  assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))
  assert all((params[k]["bias"] == 0).all() for k in params)


def test_init_names_and_options(small):
  assert training.Init("he+campaign", {"alpha": 0.5}).name == (
      "he+campaign alpha=0.5")
  assert training.Init("he+random", score_rows=500, labels=False).name == (
      "he+random rows=500 y=None")
  with pytest.raises(ValueError, match="takes no campaign options"):
    training.Init("he", {"alpha": 0.5})
  with pytest.raises(ValueError, match="unknown initializer 'orthogonal'"):
    training.Init("orthogonal")
  key = jax.random.key(0)
  spec = training.Init("he+random", {"candidates_per_neuron": 2})
  model = training.MLP((100,), 10, training.BASE_INITS["he"])
  expected = nc_jax.campaign_linen(model, key, small.x_train, elect="random",
                                   candidates_per_neuron=2, progress=False)
  jax.tree.map(np.testing.assert_array_equal,
               training.initialize(spec, "mlp2", key, small),
               expected["params"])


def test_seeds_train_independently_and_reproducibly(small):
  both = training.train_and_evaluate("mlp2", "he+campaign", small, (0, 1), 2)
  alone = training.train_and_evaluate("mlp2", "he+campaign", small, (1,), 2)
  assert set(both.curves) == {"train_loss", "test_error"}  # no validation
  assert both.epochs == 2
  for name in both.curves:
    assert both.curves[name].shape == (2, 2)
    np.testing.assert_allclose(both.curves[name][1], alone.curves[name][0],
                               rtol=1e-4, atol=1e-4)
  assert both.curves["train_loss"][:, 1].mean() < both.curves[
      "train_loss"][:, 0].mean()


def test_every_metric_has_a_label_and_decimals():
  run = training.Run("mlp2", "he", (0, 1), np.ones(2), {
      name: np.ones((2, 12)) for name in training.EPOCH_METRICS})
  names = {*training.EPOCH_METRICS, *run.summary()}
  assert names <= set(training.LABELS) == set(training.DIGITS)
  assert training.curve_metrics([run]) == list(training.EPOCH_METRICS)
  assert training.present([run], ("epoch10_val_error", "epoch20_val_error")
                          ) == ["epoch10_val_error"]


def test_whitening_arms_whiten_the_first_layer(small):
  key = jax.random.key(3)
  x = small.x_train
  params = training.initialize("whitening", "cnn", key, small)
  images = x.reshape(-1, 8, 8, 1)
  # 9 directions and 7 random combinations of them (the walk's layer key).
  layer_key = jax.random.fold_in(jax.random.split(key)[1], 0)
  np.testing.assert_array_equal(
      params["Conv_0"]["kernel"],
      nc_jax.whitening_init(images)(layer_key, (3, 3, 1, 32)))
  # The rest keep He: the model's own init with the walk's init key.
  he = training.model_for("cnn", 10, training.BASE_INITS["he"]).init(
      jax.random.split(key)[0], x[:2])["params"]
  for path in ("Conv_1", "Dense_0", "Dense_1"):
    np.testing.assert_array_equal(params[path]["kernel"], he[path]["kernel"])
  elected = training.initialize("whitening+campaign", "cnn", key, small)
  np.testing.assert_array_equal(elected["Conv_0"]["kernel"],
                                params["Conv_0"]["kernel"])
  assert not np.array_equal(elected["Conv_1"]["kernel"], he["Conv_1"]["kernel"])
  dense = training.initialize("whitening", "mlp2", key, small)["Dense_0"]
  np.testing.assert_array_equal(
      dense["kernel"], nc_jax.whitening_init(x)(layer_key, (64, 100)))
  # `init_rows` (`--init-rows`): the initializers see the first rows only.
  fewer = dataclasses.replace(small, init_rows=100)
  assert fewer.describe().endswith("initializers see the first 100")
  dense = training.initialize("whitening", "mlp2", key, fewer)["Dense_0"]
  np.testing.assert_array_equal(
      dense["kernel"], nc_jax.whitening_init(x[:100])(layer_key, (64, 100)))


def test_epoch_seconds_times_one_compiled_epoch(small):
  seconds = training.epoch_seconds("mlp2", small, repeats=2)
  assert 0 < seconds < 5
