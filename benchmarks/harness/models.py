"""Flax nnx models used by the benchmarks, the examples and the tests.

The small models' convolutions are :class:`Conv`, a drop-in for
``nnx.Conv`` with ``SAME`` padding (same parameter names, shapes and
initialisation, same outputs) that lowers to one matmul over extracted
patches. XLA's CPU convolution is about 10x slower inside
``lax.scan``/``while`` loops than outside them; the matmul form is fast in
both, which keeps the benchmark's scanned epochs fast on CPU. The realistic
models of ``benchmarks.overhead.gpu_suite`` (:class:`ResNet`, :class:`GPT`) use
``nnx.Conv`` and ``nnx.Linear`` as a GPU user would.
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


# ------------------------------------------------ realistic models (GPU suite)


class BasicBlock(nnx.Module):
  """ResNet basic block: two 3x3 convs with batch norm and a shortcut.

  The shortcut is the identity, or a strided 1x1 conv with batch norm
  (``conv3``/``bn3``) where the shape changes. Parameters are float32 and
  the computation runs in ``dtype`` (mixed precision).
  """

  def __init__(self, in_features: int, out_features: int, stride: int, *,
               dtype: jnp.dtype, rngs: nnx.Rngs):
    def conv(cin, kernel, strides=1):
      return nnx.Conv(cin, out_features, (kernel, kernel),
                      strides=(strides, strides), use_bias=False, dtype=dtype,
                      rngs=rngs)

    def norm():
      return nnx.BatchNorm(out_features, momentum=0.9, dtype=dtype, rngs=rngs)

    self.conv1, self.bn1 = conv(in_features, 3, stride), norm()
    self.conv2, self.bn2 = conv(out_features, 3), norm()
    if stride != 1 or in_features != out_features:
      self.conv3, self.bn3 = conv(in_features, 1, stride), norm()
    else:
      self.conv3 = self.bn3 = None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.conv3 is not None:
      x = self.bn3(self.conv3(x))
    return nnx.relu(x + y)


class ResNet(nnx.Module):
  """CIFAR-style ResNet (3x3 stem, no max pool); defaults: ResNet-18.

  ``widths`` and ``blocks`` give the channels and the number of
  :class:`BasicBlock` of each stage; every stage after the first halves the
  resolution. Batch-norm statistics are ``nnx.BatchStat`` variables, updated
  in training mode.
  """

  def __init__(self, *, widths: Sequence[int] = (64, 128, 256, 512),
               blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10,
               dtype: jnp.dtype = jnp.bfloat16, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(3, widths[0], (3, 3), use_bias=False, dtype=dtype,
                          rngs=rngs)
    self.bn1 = nnx.BatchNorm(widths[0], momentum=0.9, dtype=dtype, rngs=rngs)
    self.layers = nnx.List()
    in_features = widths[0]
    for stage, (width, count) in enumerate(zip(widths, blocks, strict=True)):
      for i in range(count):
        stride = 2 if stage > 0 and i == 0 else 1
        self.layers.append(BasicBlock(in_features, width, stride, dtype=dtype,
                                      rngs=rngs))
        in_features = width
    self.head = nnx.Linear(in_features, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.bn1(self.conv1(x)))
    for block in self.layers:
      x = block(x)
    return self.head(x.mean(axis=(1, 2)))


class _GPTBlock(nnx.Module):
  """Pre-LayerNorm transformer block: causal self-attention and a GELU MLP."""

  def __init__(self, dim: int, heads: int, *, dtype: jnp.dtype,
               rngs: nnx.Rngs):
    init = nnx.initializers.normal(0.02)

    def linear(din, dout):
      return nnx.Linear(din, dout, dtype=dtype, kernel_init=init, rngs=rngs)

    self.heads = heads
    self.ln1 = nnx.LayerNorm(dim, dtype=dtype, rngs=rngs)
    self.qkv, self.proj = linear(dim, 3 * dim), linear(dim, dim)
    self.ln2 = nnx.LayerNorm(dim, dtype=dtype, rngs=rngs)
    self.fc, self.out = linear(dim, 4 * dim), linear(4 * dim, dim)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
    q, k, v = (a.reshape(b, t, self.heads, d // self.heads) for a in (q, k, v))
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    x = x + self.proj(y.reshape(b, t, d))
    return x + self.out(nnx.gelu(self.fc(self.ln2(x))))


class GPT(nnx.Module):
  """Decoder-only transformer; defaults: GPT-2 small (124M parameters).

  Learned position embeddings, pre-LayerNorm blocks, the output layer tied
  to the token embedding. The ``layers`` blocks are stacked (one leaf per
  parameter with a leading layer axis) and applied with ``nnx.scan``, so
  that compilation does not grow with depth. Parameters are float32 and the
  computation runs in ``dtype``. The default vocabulary is GPT-2's 50257
  padded to a multiple of 64.
  """

  def __init__(self, *, vocab: int = 50304, context: int = 1024,
               layers: int = 12, dim: int = 768, heads: int = 12,
               dtype: jnp.dtype = jnp.bfloat16, rngs: nnx.Rngs):
    init = nnx.initializers.normal(0.02)
    self.embed = nnx.Embed(vocab, dim, dtype=dtype, embedding_init=init,
                           rngs=rngs)
    self.position = nnx.Param(init(rngs.params(), (context, dim)))

    @nnx.split_rngs(splits=layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_blocks(rngs):
      return _GPTBlock(dim, heads, dtype=dtype, rngs=rngs)

    self.blocks = make_blocks(rngs)
    self.ln_f = nnx.LayerNorm(dim, dtype=dtype, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens)
    x = x + self.position[: tokens.shape[1]].astype(x.dtype)

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def apply_blocks(x, block):
      return block(x)

    x = apply_blocks(x, self.blocks)
    return self.embed.attend(self.ln_f(x))
