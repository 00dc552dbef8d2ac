"""Whole-model walks against their floor: the models, the floor, the timings.

A whole-model campaign's unavoidable work is one forward pass of the model
and, for every weight layer, its N candidates' responses on the layer's real
input, reduced: `relu(layer_with_N_outputs(input)).sum()`, which XLA fuses
into one pass that never stores the responses. The floor is exactly that,
one compiled program, with each layer's pass over the whole batch or over
the campaign's row chunks, whichever was faster in the run. `campaign_linen` and `lsuv_linen` are timed against it
(and LSUV against one compiled forward) interleaved in one process; a first
call, with its compilations counted, runs in a fresh process, and again in a
second fresh process that finds jax's persistent compilation cache filled
by the first.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import nc_jax
from benchmarks import data as data_lib
from benchmarks import reports
from benchmarks import timing
from benchmarks import training

CHILD_FLAG = "--first-call-child"
RESULT_FILES = ("model_speed.md", "model_speed.json")
# Targets: (warm / floor, first call / floor, LSUV warm / forward).
TARGETS = {"lenet": (1.3, 4.0, 3.0), "resnet": (1.3, 4.0, 3.0)}
COLUMNS = ("model", "weight layers", "forward ms", "floor ms", "floor kind",
           "campaign warm ms", "warm / floor", "floor spread",
           "first call s", "first / floor", "compilations first / warm",
           "first call, cache filled s", "LSUV warm ms", "LSUV / forward",
           "forward spread", "verdict")


class LeNet(nn.Module):
  """Two 3x3 convs, each with ReLU and 2x2 max-pooling, Dense 128, Dense 10:
  a LeNet as users write it, on `(m, 28, 28, 1)` images."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for features in (32, 64):
      x = nn.max_pool(nn.relu(nn.Conv(features, (3, 3))(x)), (2, 2), (2, 2))
    x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


class ResidualCNN(nn.Module):
  """A ResNet for 28x28 images: a 3x3 stem, 3 stages of 2 residual blocks
  (two 3x3 convs with BatchNorm; the first block of a stage halves the
  resolution, with a 1x1 projection), global average pooling, Dense 10."""
  widths: tuple[int, ...] = (16, 32, 64)
  blocks: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = lambda: nn.BatchNorm(use_running_average=not train)
    h = nn.relu(norm()(nn.Conv(self.widths[0], (3, 3), use_bias=False)(x)))
    for stage, width in enumerate(self.widths):
      for block in range(self.blocks):
        stride = 2 if stage and not block else 1
        r = nn.Conv(width, (3, 3), strides=stride, use_bias=False)(h)
        r = nn.relu(norm()(r))
        r = norm()(nn.Conv(width, (3, 3), use_bias=False)(r))
        if stride != 1 or h.shape[-1] != width:
          h = norm()(nn.Conv(width, (1, 1), strides=stride,
                             use_bias=False)(h))
        h = nn.relu(h + r)
    return nn.Dense(10)(h.mean(axis=(1, 2)))


@dataclasses.dataclass(frozen=True)
class Model:
  """A benchmarked model and the shape of one example it takes."""
  name: str
  make: Callable[[], nn.Module]
  example: tuple[int, ...]


MODELS = {
    "lenet": Model("lenet", LeNet, (28, 28, 1)),
    "cnn": Model("cnn", lambda: training.model_for("cnn"), (784,)),
    "mlp3": Model("mlp3", lambda: training.model_for("mlp3"), (784,)),
    "resnet": Model("resnet", ResidualCNN, (28, 28, 1)),
}


def batch(model: Model, m: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
  """m MNIST-subset images (pixels / 255), shaped for the model, and labels."""
  x, y = data_lib.mnist_subset_arrays()
  order = np.random.default_rng(seed).permutation(len(y))[:m]
  return (jnp.asarray(x[order].reshape(m, *model.example)),
          jnp.asarray(y[order]))


def capture(module: nn.Module, variables: Any, x: jax.Array
            ) -> list[tuple[nn.Module, jax.Array]]:
  """Each Dense and Conv call's unbound layer and input, in call order."""
  calls = []

  def interceptor(next_fun, args, kwargs, context):
    if (context.method_name == "__call__"
        and isinstance(context.module, nn.Dense | nn.Conv)):
      calls.append((context.module.clone(parent=None), args[0]))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    module.apply(variables, x)
  return calls


def floor_program(module: nn.Module, layers: Sequence[nn.Module],
                  chunked: bool = False) -> Callable[..., Any]:
  """`f(variables, x, inputs, kernels)`: the model's forward pass, and each
  layer's N candidates' ReLU responses on its input, summed; compiled. With
  `chunked`, each layer's pass runs over the row chunks the campaign uses
  (`nc_jax.default_chunk_size`), the last one moved back to end at row m."""

  def pass_of(layer: nn.Module, inputs: jax.Array, kernel: jax.Array):
    wide = layer.clone(features=kernel.shape[-1], use_bias=False)
    relu_sum = lambda rows: jax.nn.relu(wide.apply(
        {"params": {"kernel": kernel}}, rows)).sum()
    m = inputs.shape[0]
    positions = math.prod(inputs.shape[1:-1]) if isinstance(
        layer, nn.Conv) else 1
    chunk = nc_jax.default_chunk_size(m, kernel.shape[-1],
                                      positions=max(positions, 1))
    if not chunked or chunk is None:
      return relu_sum(inputs)
    starts = jnp.minimum(jnp.arange(0, m, chunk), m - chunk)
    return jax.lax.map(lambda s: relu_sum(jax.lax.dynamic_slice_in_dim(
        inputs, s, chunk)), starts).sum()

  @jax.jit
  def floor(variables, x, inputs, kernels):
    total = module.apply(variables, x).sum()
    for layer, h, w in zip(layers, inputs, kernels, strict=True):
      total += pass_of(layer, h, w)
    return total

  return floor


def candidate_kernels(layers: Sequence[tuple[nn.Module, jax.Array]],
                      candidates_per_neuron: int = 5) -> list[jax.Array]:
  """For each layer, N = 5 fan_out He-normal candidates in its layout."""
  kernels = []
  for i, (layer, h) in enumerate(layers):
    fan_in_shape = (tuple(layer.kernel_size) + (h.shape[-1],)
                    if isinstance(layer, nn.Conv) else (h.shape[-1],))
    shape = (*fan_in_shape, candidates_per_neuron * layer.features)
    kernels.append(jax.nn.initializers.he_normal()(jax.random.key(i), shape))
  return kernels


def _seconds(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def warm_timings(model: Model, m: int, repeats: int) -> dict[str, Any]:
  """Interleaved warm calls, after one untimed round: the floor, the
  campaign, LSUV, the forward."""
  module = model.make()
  x, y = batch(model, m)
  variables = module.init(jax.random.key(0), x[:2])
  layers = capture(module, variables, x)
  kernels = candidate_kernels(layers)
  plain = floor_program(module, [layer for layer, _ in layers])
  chunked = floor_program(module, [layer for layer, _ in layers], True)
  forward = jax.jit(module.apply)
  inputs = [h for _, h in layers]
  fns = {
      "floor": lambda i: plain(variables, x, inputs, kernels),
      "chunked floor": lambda i: chunked(variables, x, inputs, kernels),
      "forward": lambda i: forward(variables, x),
      "campaign": lambda i: nc_jax.campaign_linen(module, i, x, y,
                                                  progress=False),
      "lsuv": lambda i: nc_jax.lsuv_linen(module, i, x, progress=False),
  }
  _, times = timing.interleaved(fns, repeats, warmup=1)
  return {"layers": len(layers), "times": times}


def first_call(model: Model, m: int, cache: str | None) -> dict[str, Any]:
  """In this (fresh) process: the campaign's first call, its compilations,
  and the compilations of warm calls with a new key and a new batch."""
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  module = model.make()
  x, y = batch(model, m)
  other_x, other_y = batch(model, m, seed=1)
  keys = [jax.random.key(i) for i in range(3)]
  jax.block_until_ready((x, y, other_x, other_y, keys))
  counts = []

  def count(event: str, duration: float, **_: Any) -> None:
    del duration
    if event == "/jax/core/compile/backend_compile_duration":
      counts[-1] += 1

  jax.monitoring.register_event_duration_secs_listener(count)
  out = {}
  for name, key, images, labels in (("first", keys[0], x, y),
                                    ("new key", keys[1], x, y),
                                    ("new batch", keys[2], other_x, other_y)):
    counts.append(0)
    seconds = _seconds(lambda: nc_jax.campaign_linen(
        module, key, images, labels, progress=False))
    out[name] = {"seconds": seconds, "compilations": counts[-1]}
  return out


def run_child(model: Model, m: int, cache: str | None) -> dict[str, Any]:
  """`first_call` in a fresh Python process."""
  command = [sys.executable, str(pathlib.Path(__file__).with_name(
      "model_speed.py")), CHILD_FLAG, model.name, str(m), cache or ""]
  result = subprocess.run(command, capture_output=True, text=True,
                          check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


def child_main(argv: Sequence[str]) -> None:
  name, m, cache = argv
  print(json.dumps(first_call(MODELS[name], int(m), cache or None)))


def bench_model(model: Model, m: int, repeats: int) -> dict[str, Any]:
  """One row: first calls in fresh processes, then warm interleaved."""
  with tempfile.TemporaryDirectory() as cache:
    cold = run_child(model, m, None)
    run_child(model, m, cache)  # fills the persistent cache
    cached = run_child(model, m, cache)
  warm = warm_timings(model, m, repeats)
  times = warm["times"]
  # The floor is the faster way to compute the responses, in that run.
  faster = min(("floor", "chunked floor"), key=lambda n: min(times[n]))
  times = {**times, "floor": times[faster]}
  low = {name: min(v) for name, v in times.items()}
  median = {name: statistics.median(v) for name, v in times.items()}
  spread = max(times["floor"]) / low["floor"]
  forward_spread = max(times["forward"]) / low["forward"]
  row = {
      "model": model.name, "weight layers": warm["layers"],
      "forward ms": 1e3 * low["forward"], "floor ms": 1e3 * low["floor"],
      "campaign warm ms": 1e3 * low["campaign"],
      "campaign warm median ms": 1e3 * median["campaign"],
      "warm / floor": low["campaign"] / low["floor"],
      "warm / floor, medians": median["campaign"] / median["floor"],
      "floor spread": spread, "floor kind": faster,
      "first call s": cold["first"]["seconds"],
      "first / floor": cold["first"]["seconds"] / low["floor"],
      "compilations first / warm": (
          f"{cold['first']['compilations']} / "
          f"{cold['new key']['compilations']}, "
          f"{cold['new batch']['compilations']}"),
      "first call, cache filled s": cached["first"]["seconds"],
      "LSUV warm ms": 1e3 * low["lsuv"],
      "LSUV / forward": low["lsuv"] / low["forward"],
      "forward spread": forward_spread,
      "times s": times, "cold": cold, "cached": cached,
  }
  row["verdict"] = verdict(row, TARGETS.get(model.name))
  return row


def verdict(row: dict[str, Any], targets: tuple[float, ...] | None) -> str:
  """Met/missed per target, or noisy when its denominator moved too much:
  the floor for the campaign's ratios, the forward for LSUV's."""
  if targets is None:
    return ""
  if row["floor spread"] > timing.NOISY_SPREAD:
    return "noisy (floor spread > 1.3): not judged"
  measured = (row["warm / floor"], row["first / floor"],
              row["LSUV / forward"])
  names = ("warm", "first", "LSUV")
  parts = [f"{n} {'met' if v <= t else 'missed'} (<= {t:g})"
           for n, v, t in zip(names, measured, targets)]
  if row["forward spread"] > timing.NOISY_SPREAD:
    parts[-1] = "LSUV noisy (forward spread > 1.3): not judged"
  return ", ".join(parts)


def _cell(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"
  return str(value)


def write_results(rows: Sequence[dict[str, Any]], info: dict[str, Any],
                  out: str | pathlib.Path) -> str:
  """The table as markdown and everything measured as JSON, in `out`."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  lines = ["# Whole-model walks against their floor", "",
           *reports.settings_lines(info), "", __doc__.split("\n\n", 1)[1]
           .strip(), "",
           reports.markdown_table(COLUMNS, [[_cell(r[c]) for c in COLUMNS]
                                            for r in rows]), ""]
  text = "\n".join(lines)
  (out / RESULT_FILES[0]).write_text(text)
  (out / RESULT_FILES[1]).write_text(json.dumps(
      {"info": info, "rows": rows}, indent=1, default=str))
  return text
