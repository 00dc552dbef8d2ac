"""Small Flax models, linen and nnx, that the whole-model walk must handle."""

from collections.abc import Sequence

import flax.linen as nn
import jax
from flax import nnx


class MLP(nn.Module):
  """ReLU hidden layers and a linear output layer, as in the paper."""
  features: Sequence[int]

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.features):
      x = nn.Dense(width)(x)
      if i < len(self.features) - 1:
        x = nn.relu(x)
    return x


class NnxMLP(nnx.Module):
  """The nnx twin of `MLP`."""

  def __init__(self, sizes: Sequence[int], *, rngs: nnx.Rngs):
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])

  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for layer in self.layers[:-1]:
      x = jax.nn.relu(layer(x))
    return self.layers[-1](x)


class ResidualMLP(nn.Module):
  width: int = 32

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(self.width)(x))
    h = h + nn.relu(nn.Dense(self.width)(h))
    return nn.Dense(10)(h)


class NormDropoutMLP(nn.Module):
  """LayerNorm and a non-deterministic Dropout: the walk must turn it off."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(32)(x))
    h = nn.LayerNorm()(h)
    h = nn.Dropout(0.5, deterministic=False)(h)
    return nn.Dense(10)(h)


class SmallCNN(nn.Module):
  """A convolution, then a Dense head: every kernel is elected."""

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], 28, 28, 1)
    x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(32)(x))
    return nn.Dense(10)(x)


class SharedDense(nn.Module):
  """One Dense called twice (tied weights)."""

  def setup(self):
    self.embed = nn.Dense(32)
    self.inner = nn.Dense(32)
    self.head = nn.Dense(10)

  def __call__(self, x):
    h = nn.relu(self.embed(x))
    h = nn.relu(self.inner(h))
    h = nn.relu(self.inner(h))
    return self.head(h)


class NoWeights(nn.Module):
  """Normalization only: no layer with a kernel."""

  @nn.compact
  def __call__(self, x):
    return nn.LayerNorm()(x)


class NnxNormDropout(nnx.Module):
  """nnx: BatchNorm in training mode and Dropout, whose state must not move."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(784, 32, rngs=rngs)
    self.norm = nnx.BatchNorm(32, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.out = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    h = self.dropout(self.norm(jax.nn.relu(self.hidden(x))))
    return self.out(h)
