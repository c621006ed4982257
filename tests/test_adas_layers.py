"""Tests of AdaS's layer groups: which leaves share a rate (docs/adas.md)."""

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from optax_adaptive._adas import adas, adas_layer_names
from optax_adaptive._adas_layers import adas_layer_groups


class LinenCNN(linen.Module):

  @linen.compact
  def __call__(self, x, train=False):
    x = linen.Conv(8, (3,))(x)
    x = linen.BatchNorm(use_running_average=not train)(x)
    x = linen.relu(linen.Conv(8, (3,), strides=(2,))(x))
    x = linen.BatchNorm(use_running_average=not train)(x)
    return linen.Dense(10)(x.reshape(x.shape[0], -1))


class NnxCNN(nnx.Module):
  """Three 1-D conv + batch-norm layers in lists and a linear head."""

  def __init__(self, rngs, channels=8, depth=3, length=40):
    self.convs, self.norms = nnx.List(), nnx.List()
    in_ch = 1
    for i in range(depth):
      stride = 2 if i in (depth // 3, 2 * depth // 3) else 1
      self.convs.append(nnx.Conv(in_ch, channels, kernel_size=(3,),
                                 strides=(stride,), use_bias=False,
                                 rngs=rngs))
      self.norms.append(nnx.BatchNorm(channels, rngs=rngs))
      in_ch, length = channels, -(-length // stride)
    self.head = nnx.Linear(channels * length, 10, rngs=rngs)

  def __call__(self, x):
    for conv, norm in zip(self.convs, self.norms):
      x = nnx.relu(norm(conv(x)))
    return self.head(x.reshape(x.shape[0], -1))


def test_default_groups_nnx():
  model = NnxCNN(nnx.Rngs(0))
  labels = adas_layer_groups(nnx.state(model, nnx.Param))
  assert labels["convs"][1]["kernel"] == "convs/1"
  assert labels["norms"][1]["scale"] == "convs/1"
  assert labels["norms"][2]["bias"] == "convs/2"
  assert labels["head"]["kernel"] == "fc" and labels["head"]["bias"] == "fc"
  params = nnx.state(model, nnx.Param)
  state = adas().init(params)
  assert adas_layer_names(state) == ("convs/0", "convs/1", "convs/2")


def test_default_groups_linen():
  variables = LinenCNN().init(jax.random.key(0), jnp.ones((2, 12, 1)))
  labels = adas_layer_groups(variables["params"])
  assert labels["Conv_1"]["bias"] == "Conv_1"
  assert labels["BatchNorm_0"]["scale"] == "Conv_0"
  assert labels["BatchNorm_1"]["bias"] == "Conv_1"
  assert labels["Dense_0"]["kernel"] == "fc"


def test_unmatched_leaves_keep_initial_rate():
  params = {"embed": {"embedding": jnp.ones((5, 3))},
            "conv": {"kernel": jnp.ones((3, 3, 3))}}
  labels = adas_layer_groups(params)
  assert labels["embed"]["embedding"] == "init"
  tx = adas(learning_rate=0.5, momentum=0.0, weight_decay=0.0)
  state = tx.init(params)
  state = state._replace(layer_lr=state.layer_lr * 0 + 0.25)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(updates["embed"]["embedding"], -0.5)
  np.testing.assert_allclose(updates["conv"]["kernel"], -0.25)


class _ScannedBlock(linen.Module):

  @linen.compact
  def __call__(self, x, _):
    x = linen.Conv(8, (3,), use_bias=False)(x)
    return linen.relu(linen.LayerNorm()(x)), None


class LinenScanCNN(linen.Module):
  """A stem conv, three scanned conv + norm blocks and a dense head."""

  @linen.compact
  def __call__(self, x):
    x = linen.Conv(8, (3,))(x)
    blocks = linen.scan(_ScannedBlock, variable_axes={"params": 0},
                        split_rngs={"params": True}, length=3)
    x, _ = blocks(name="blocks")(x, None)
    return linen.Dense(10)(x.reshape(x.shape[0], -1))


class _NnxBlock(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(8, 8, kernel_size=(3,), rngs=rngs)

  def __call__(self, x):
    return nnx.relu(self.conv(x))


class _NnxStackedCNN(nnx.Module):
  """A stem conv, three ``nnx.vmap``-built blocks run by ``nnx.scan``."""

  def __init__(self, rngs):
    self.stem = nnx.Conv(1, 8, kernel_size=(3,), rngs=rngs)

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_blocks(rngs):
      return _NnxBlock(rngs)

    self.blocks = make_blocks(rngs)
    self.head = nnx.Linear(8 * 12, 10, rngs=rngs)

  def __call__(self, x):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def run_blocks(x, block):
      return block(x)

    x = run_blocks(self.stem(x), self.blocks)
    return self.head(x.reshape(x.shape[0], -1))


def test_default_groups_detect_linen_scan_layers():
  params = LinenScanCNN().init(jax.random.key(0), jnp.ones((2, 12, 1)))[
      "params"]
  labels = adas_layer_groups(params)
  block = "blocks/Conv_0"
  assert labels["blocks"]["Conv_0"]["kernel"] == block
  assert labels["blocks"]["LayerNorm_0"]["scale"] == block  # no conv bias
  assert labels["Dense_0"]["kernel"] == "fc"
  names = adas_layer_names(adas().init(params))
  assert names == ("Conv_0", *(f"{block}[{i}]" for i in range(3)))


def test_default_groups_detect_nnx_vmap_layers():
  model = _NnxStackedCNN(nnx.Rngs(0))
  assert model(jnp.ones((2, 12, 1))).shape == (2, 10)
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  assert adas_layer_groups(params)["blocks"]["conv"]["bias"] == "blocks/conv"
  assert adas_layer_names(adas().init(params)) == (
      "blocks/conv[0]", "blocks/conv[1]", "blocks/conv[2]", "stem")
  # One rate per stacked layer in the update.
  tx = adas(learning_rate=0.1, momentum=0.0, weight_decay=0.0)
  state = tx.init(params)
  state = state._replace(layer_lr=jnp.asarray([0.1, 0.2, 0.3, 0.4]))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  np.testing.assert_allclose(updates["blocks"]["conv"]["bias"][:, 0],
                             [-0.1, -0.2, -0.3], rtol=1e-6)
  np.testing.assert_allclose(updates["stem"]["kernel"], -0.4, rtol=1e-6)


def test_stacked_dense_layers_go_to_fc_and_ambiguous_kernels_stay_convs():
  params = {"mlp": {"kernel": jnp.ones((4, 6, 6)), "bias": jnp.ones((4, 6))},
            "conv3d": {"kernel": jnp.ones((2, 3, 3, 4, 5))}}
  labels = adas_layer_groups(params)
  assert labels["mlp"]["kernel"] == "fc" and labels["mlp"]["bias"] == "fc"
  # No bias and no norm: a 5-D kernel is a 3-D conv unless layer_groups
  # says otherwise (LayerGroup(stack_dims=...)).
  assert adas_layer_names(adas().init(params)) == ("conv3d",)


def test_layer_groups_errors():
  params = {"a": jnp.ones((3, 3, 2, 2)), "b": jnp.ones((3, 3, 2, 2))}
  with pytest.raises(ValueError, match="exactly one kernel"):
    adas(layer_groups=lambda p, x: "same").init(params)
  with pytest.raises(TypeError, match="layer_groups"):
    adas(layer_groups=lambda p, x: 3).init(params)


def test_layer_names_come_from_the_state_of_each_model():
  """Two models with as many conv layers keep their own names."""
  first = {"a": {"kernel": jnp.ones((3, 3, 2, 2))}}
  second = {"b": {"kernel": jnp.ones((3, 3, 2, 2))}}
  first_state = adas().init(first)
  adas().init(second)
  assert adas_layer_names(first_state) == ("a",)  # from its momentum buffer
