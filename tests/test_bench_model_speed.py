"""The whole-model speed measurements (benchmarks/whole_model.py) on tiny
inputs."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from benchmarks import reports
from benchmarks import whole_model


@pytest.mark.parametrize("name", sorted(whole_model.MODELS))
def test_every_model_takes_its_batch(name):
  model = whole_model.MODELS[name]
  x, y = whole_model.batch(model, 8)
  assert x.shape == (8, *model.example) and y.shape == (8,)
  module = model.make()
  variables = module.init(jax.random.key(0), x[:2])
  assert module.apply(variables, x).shape == (8, 10)


def test_resnet_has_at_least_twelve_convs_and_batch_norm():
  model = whole_model.MODELS["resnet"]
  x, _ = whole_model.batch(model, 4)
  module = model.make()
  variables = module.init(jax.random.key(0), x[:2])
  calls = whole_model.capture(module, variables, x)
  assert sum(isinstance(layer, nn.Conv) for layer, _ in calls) >= 12
  assert "batch_stats" in variables


def test_floor_is_the_forward_and_every_layers_relu_sum():
  model = whole_model.MODELS["lenet"]
  x, _ = whole_model.batch(model, 48)  # conv1 in 6 chunks of 8 images
  module = model.make()
  variables = module.init(jax.random.key(0), x[:2])
  calls = whole_model.capture(module, variables, x)
  kernels = whole_model.candidate_kernels(calls)
  assert [k.shape[-1] for k in kernels] == [160, 320, 640, 50]
  layers, inputs = [layer for layer, _ in calls], [h for _, h in calls]
  got = whole_model.floor_program(module, layers)(variables, x, inputs,
                                                  kernels)
  chunked = whole_model.floor_program(module, layers, chunked=True)(
      variables, x, inputs, kernels)
  expected = module.apply(variables, x).sum()
  conv = lambda h, w: jax.lax.conv_general_dilated(
      h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  for (layer, h), w in zip(calls, kernels):
    z = conv(h, w) if isinstance(layer, nn.Conv) else h @ w
    expected += jax.nn.relu(z).sum()
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  np.testing.assert_allclose(chunked, expected, rtol=1e-4)


def test_first_call_counts_compilations_then_none():
  got = whole_model.first_call(whole_model.MODELS["mlp3"], 64, None)
  assert got["first"]["compilations"] >= 1
  assert got["new key"]["compilations"] == 0
  assert got["new batch"]["compilations"] == 0


def test_verdicts():
  row = {"floor spread": 1.05, "warm / floor": 1.2, "first / floor": 5.0,
         "LSUV / forward": 2.0, "forward spread": 1.1}
  assert whole_model.verdict(row, (1.3, 4.0, 3.0)) == (
      "warm met (<= 1.3), first missed (<= 4), LSUV met (<= 3)")
  assert whole_model.verdict({**row, "floor spread": 1.4},
                             (1.3, 4.0, 3.0)).startswith("noisy")
  # LSUV is timed against the forward: judged only if the forward held still.
  assert whole_model.verdict({**row, "forward spread": 1.37},
                             (1.3, 4.0, 3.0)) == (
      "warm met (<= 1.3), first missed (<= 4), "
      "LSUV noisy (forward spread > 1.3): not judged")
  assert whole_model.verdict(row, None) == ""


def test_writes_the_table_and_json(tmp_path):
  row = {column: 1.0 for column in whole_model.COLUMNS}
  row.update(model="lenet", verdict="")
  text = whole_model.write_results([row], reports.machine_info(), tmp_path)
  assert (tmp_path / "model_speed.md").read_text() == text
  assert "| " + " | ".join(whole_model.COLUMNS) + " |" in text
  assert json.loads((tmp_path / "model_speed.json").read_text())["rows"][0][
      "model"] == "lenet"
