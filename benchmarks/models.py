"""Small Flax nnx models used by the benchmarks, the examples and the tests."""

from __future__ import annotations

import jax
from flax import nnx


class CNN1D(nnx.Module):
  """1-D CNN for mnist1d: three convolutions and a linear classifier."""

  def __init__(self, *, channels: int = 32, num_classes: int = 10,
               length: int = 40, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, channels, kernel_size=(5,), rngs=rngs)
    self.conv2 = nnx.Conv(channels, channels, kernel_size=(3,), strides=(2,),
                          rngs=rngs)
    self.conv3 = nnx.Conv(channels, channels, kernel_size=(3,), strides=(2,),
                          rngs=rngs)
    self.head = nnx.Linear(channels * (length // 4), num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.conv1(x))
    x = nnx.relu(self.conv2(x))
    x = nnx.relu(self.conv3(x))
    return self.head(x.reshape(x.shape[0], -1))


class CNN1DBN(nnx.Module):
  """Deeper 1-D CNN with batch norm for the larger mnist1d task."""

  def __init__(self, *, channels: int = 64, depth: int = 6,
               num_classes: int = 10, length: int = 40, rngs: nnx.Rngs):
    self.convs = nnx.List()
    self.norms = nnx.List()
    in_ch, size = 1, length
    for i in range(depth):
      stride = 2 if i in (depth // 3, 2 * depth // 3) else 1
      self.convs.append(nnx.Conv(in_ch, channels, kernel_size=(3,),
                                 strides=(stride,), use_bias=False, rngs=rngs))
      self.norms.append(nnx.BatchNorm(channels, rngs=rngs))
      in_ch = channels
      size = -(-size // stride)
    self.head = nnx.Linear(channels * size, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv, norm in zip(self.convs, self.norms):
      x = nnx.relu(norm(conv(x)))
    return self.head(x.reshape(x.shape[0], -1))


class CNN2D(nnx.Module):
  """2-D CNN for scikit-learn's 8x8 digits."""

  def __init__(self, *, channels: int = 32, num_classes: int = 10,
               rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, channels, kernel_size=(3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(channels, channels, kernel_size=(3, 3),
                          strides=(2, 2), rngs=rngs)
    self.head = nnx.Linear(channels * 16, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.conv1(x))
    x = nnx.relu(self.conv2(x))
    return self.head(x.reshape(x.shape[0], -1))
