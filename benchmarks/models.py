"""Small Flax nnx models used by the benchmarks, the examples and the tests.

The convolutions are :class:`Conv`, a drop-in for ``nnx.Conv`` with ``SAME``
padding (same parameter names, shapes and initialisation, same outputs) that
lowers to one matmul over extracted patches. XLA's CPU convolution is about
10x slower inside ``lax.scan``/``while`` loops than outside them; the matmul
form is fast in both, which keeps the benchmark's scanned epochs fast on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
  """(low pad, high pad, output size) of ``SAME`` padding, as in lax."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2, out


def extract_patches(x: jax.Array, kernel_size: Sequence[int],
                    strides: Sequence[int]) -> jax.Array:
  """``[B, *spatial, C] -> [B, *out_spatial, prod(kernel_size) * C]``.

  The last axis is ordered (kernel offsets..., channel), matching
  ``kernel.reshape(-1, out_features)`` for a Flax kernel
  ``(*kernel_size, in_features, out_features)``.
  """
  spatial = len(kernel_size)
  pads, outs = [(0, 0)], []
  for size, k, s in zip(x.shape[1:1 + spatial], kernel_size, strides):
    lo, hi, out = _same_pads(size, k, s)
    pads.append((lo, hi))
    outs.append(out)
  x = jnp.pad(x, [*pads, (0, 0)])
  slices = [[]]
  for k, s, out in zip(kernel_size, strides, outs):
    slices = [[*prev, slice(i, i + (out - 1) * s + 1, s)]
              for prev in slices for i in range(k)]
  return jnp.concatenate([x[(slice(None), *sl)] for sl in slices], axis=-1)


class Conv(nnx.Module):
  """``nnx.Conv`` with ``SAME`` padding, computed as patches @ kernel."""

  def __init__(self, in_features: int, out_features: int,
               kernel_size: Sequence[int], strides: Sequence[int] | None = None,
               use_bias: bool = True, *, rngs: nnx.Rngs):
    self.kernel_size = tuple(kernel_size)
    self.strides = tuple(strides or (1,) * len(self.kernel_size))
    shape = (*self.kernel_size, in_features, out_features)
    self.kernel = nnx.Param(
        nnx.initializers.lecun_normal()(rngs.params(), shape))
    self.bias = (nnx.Param(jnp.zeros((out_features,))) if use_bias
                 else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...]
    patches = extract_patches(x, self.kernel_size, self.strides)
    y = patches @ kernel.reshape(math.prod(kernel.shape[:-1]), -1)
    if self.bias is not None:
      y = y + self.bias[...]
    return y


class CNN1D(nnx.Module):
  """1-D CNN for mnist1d: three convolutions and a linear classifier."""

  def __init__(self, *, channels: int = 32, num_classes: int = 10,
               length: int = 40, rngs: nnx.Rngs):
    self.conv1 = Conv(1, channels, kernel_size=(5,), rngs=rngs)
    self.conv2 = Conv(channels, channels, kernel_size=(3,), strides=(2,),
                          rngs=rngs)
    self.conv3 = Conv(channels, channels, kernel_size=(3,), strides=(2,),
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
      self.convs.append(Conv(in_ch, channels, kernel_size=(3,),
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
    self.conv1 = Conv(1, channels, kernel_size=(3, 3), rngs=rngs)
    self.conv2 = Conv(channels, channels, kernel_size=(3, 3),
                          strides=(2, 2), rngs=rngs)
    self.head = nnx.Linear(channels * 16, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.conv1(x))
    x = nnx.relu(self.conv2(x))
    return self.head(x.reshape(x.shape[0], -1))
