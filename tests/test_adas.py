"""Tests of the AdaS optimizer, its layer groups and early stop (adas.md)."""

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from benchmarks.harness.models import CNN1DBN
from optax_adaptive import _adas, _spectral
from optax_adaptive._adas import (
    LayerGroup,
    adas,
    adas_early_stop,
    adas_end_epoch,
    adas_layer_groups,
    adas_layer_names,
)
from tests import _utils

# ------------------------------------------------------------- helpers


def _one_conv_state(**kwargs):
  params = {"conv": {"kernel": jnp.zeros((3, 3, 2, 2))},
            "head": {"kernel": jnp.zeros((2, 3))}}
  return adas(**kwargs).init(params)


def _apply_gains(state, gains):
  """Runs the §1.6 recurrence with G3 = G4 = each value of ``gains``."""
  rates = []
  for g in gains:
    g = jnp.asarray([g], jnp.float32)
    zero = jnp.zeros((1,), jnp.int32)
    kg = _spectral.KnowledgeGain(g, g, g, g, zero, zero, g)
    state = _adas._update_rates(state, kg)
    rates.append((float(state.layer_lr[0]), float(state.fc_lr)))
  return np.asarray(rates)


def _low_rank_kernel(key, shape, noise=0.05):
  k1, k2, k3 = jax.random.split(key, 3)
  spatial = jax.random.normal(k1, shape[:-2])
  channels = jax.random.normal(k2, shape[-2:])
  kernel = jnp.einsum("...,io->...io", spatial, channels)
  return kernel / jnp.abs(kernel).max() + noise * jax.random.normal(k3, shape)


# ------------------------------------------------------- §7 T7 recurrence

T7_GAINS = [.10, .15, .18, .18, .17, .05, .05, .06]


def test_t7_scheduler_recurrence():
  rates = _apply_gains(_one_conv_state(learning_rate=0.03), T7_GAINS)
  expected = [0.03, 0.074, 0.0892, 0.07136, 0.047088, 1e-20, 1e-20, 0.01]
  np.testing.assert_allclose(rates[:, 0], expected, rtol=1e-5)
  np.testing.assert_allclose(rates[:, 1], expected, rtol=1e-5)  # fc: G4


def test_t7_clip_to_zero_variant():
  rates = _apply_gains(_one_conv_state(min_lr=0.0), T7_GAINS)
  np.testing.assert_allclose(rates[5:, 0], [0.0, 0.0, 0.01], atol=1e-8)


def test_hold_lr_while_zero_gain_variant():
  gains = [0.0, 0.0, 0.1, 0.15]
  paper = _apply_gains(_one_conv_state(), gains)[:, 0]
  held = _apply_gains(_one_conv_state(hold_lr_while_zero_gain=True),
                      gains)[:, 0]
  np.testing.assert_allclose(paper, [0.03, 0.024, 0.1192, 0.14536],
                             rtol=1e-5)
  np.testing.assert_allclose(held, [0.03, 0.03, 0.124, 0.1492], rtol=1e-5)


def test_non_finite_gain_keeps_previous_value():
  state = _one_conv_state()
  rates = _apply_gains(state, [0.1, float("nan"), 0.2])
  # The NaN epoch reuses G = 0.1, so Delta = 0 (§1.10).
  np.testing.assert_allclose(rates[:, 0], [0.03, 0.024, 0.1192], rtol=1e-5)


def test_lr_during_epochs_and_sgd_semantics():
  """Epochs 0 and 1 run at eta_0; steps are PyTorch SGD (§1.8, §2)."""
  params = {"w": jnp.array([1.0, -2.0])}
  tx = adas(learning_rate=0.1, momentum=0.9, weight_decay=0.01,
            steps_per_epoch=2)
  ref = optax.chain(optax.add_decayed_weights(0.01), optax.trace(0.9),
                    optax.scale(-0.1))
  state, ref_state = tx.init(params), ref.init(params)
  ref_params = params
  for step in range(6):
    grads = {"w": jnp.array([0.5, 0.25]) * (step + 1)}
    updates, state = tx.update(grads, state, params)
    ref_updates, ref_state = ref.update(grads, ref_state, ref_params)
    params = optax.apply_updates(params, updates)
    ref_params = optax.apply_updates(ref_params, ref_updates)
    _utils.assert_trees_all_close(params, ref_params, rtol=1e-6)
  assert int(state.epoch) == 3 and int(state.count) == 6


def test_float64_rates_and_steps_match_numpy_float64(x64):
  """Float64 params: the rates, their recurrence and the SGD steps in f64."""
  del x64
  params = {"conv": {"kernel": jnp.full((3, 3, 2, 2), 0.5)},
            "head": {"kernel": jnp.full((2, 3), -0.25)}}
  tx = adas(learning_rate=0.03, beta=0.8, momentum=0.9, weight_decay=0.01)
  state = tx.init(params)
  for field in ("layer_lr", "fc_lr", "gain", "init_lr", "beta", "zeta",
                "min_lr"):
    assert getattr(state, field).dtype == jnp.float64, field
  # §1.6 with G3 = G4 = g, from NumPy float64.
  rate, previous = 0.0, None
  for epoch, g in enumerate(T7_GAINS):
    g64 = jnp.asarray([g], jnp.float64)
    zero = jnp.zeros((1,), jnp.int32)
    state = _adas._update_rates(
        state, _spectral.KnowledgeGain(g64, g64, g64, g64, zero, zero, g64))
    delta = 0.03 if epoch == 0 else g - previous
    rate = max(0.8 * (rate if epoch else 0.0) + 1.0 * delta, 1e-20)
    previous = g
    np.testing.assert_allclose(float(state.layer_lr[0]), rate, rtol=1e-15)
    np.testing.assert_allclose(float(state.fc_lr), rate, rtol=1e-15)
  # b ← μ b + (g + λ θ), θ ← θ - R b, in NumPy float64.
  theta = {k: np.asarray(v["kernel"]) for k, v in params.items()}
  trace = {k: np.zeros_like(v) for k, v in theta.items()}
  lr = {"conv": float(state.layer_lr[0]), "head": float(state.fc_lr)}
  for step in range(3):
    grads = jax.tree.map(lambda p: jnp.cos(p) * (step + 1), params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    for k in theta:
      g = np.cos(theta[k]) * (step + 1)
      trace[k] = 0.9 * trace[k] + (g + 0.01 * theta[k])
      theta[k] = theta[k] - lr[k] * trace[k]
      assert params[k]["kernel"].dtype == jnp.float64
      np.testing.assert_allclose(params[k]["kernel"], theta[k], rtol=1e-15)


# ------------------------------------------------------- §7 T8 early stop


def test_t8_early_stop():
  losses = [2.0, 1.0, 0.9995, 0.9991, 0.9989, 0.9989, 0.9989, 0.9989]
  state, waits, stops = None, [], []
  step = jax.jit(lambda loss, s: adas_early_stop(loss, s, patience=3))
  state = _adas.adas_early_stop_init()
  for loss in losses:
    state, stop = step(jnp.float32(loss), state)
    waits.append(int(state.wait))
    stops.append(bool(stop))
  assert waits == [0, 0, 1, 2, 0, 1, 2, 3]
  assert stops == [False] * 7 + [True]


def test_early_stop_disabled_by_negative_threshold():
  state, stop = adas_early_stop(1.0, threshold=-1.0, patience=1)
  for _ in range(3):
    state, stop = adas_early_stop(1.0, state, threshold=-1.0, patience=1)
  assert not bool(stop)


def _numpy_early_stop(losses, threshold, patience):
  """§1.9 in NumPy float64: (best, wait, stop) after each epoch."""
  best, wait, out = np.inf, 0, []
  for loss in np.asarray(losses, np.float64):
    if loss - best < -threshold:
      best, wait = loss, 0
    else:
      wait += 1
    out.append((best, wait, wait >= patience))
  return out


def test_early_stop_float64_matches_numpy_float64(x64):
  """Under x64 the best loss is float64: 0.999 after 1.0 improves by 1e-3.

  In float32, 0.999 - 1.0 = -0.00099999 is no improvement of 1e-3.
  """
  del x64
  losses = [1.0, 0.999, 0.998, 0.9975, 0.9965, 0.9965000001, 0.9955]
  expected = _numpy_early_stop(losses, 1e-3, 2)
  for init in (None, _adas.adas_early_stop_init()):
    state = init
    for loss, (best, wait, stop) in zip(losses, expected):
      state, stopped = adas_early_stop(loss, state, threshold=1e-3,
                                       patience=2)
      assert state.best_loss.dtype == jnp.float64
      assert (float(state.best_loss), int(state.wait), bool(stopped)) == (
          best, wait, stop)
  assert [w for _, w, _ in expected] == [0, 0, 0, 1, 0, 1, 0]


def test_early_stop_state_dtype_is_stable_under_jit():
  """A float16 loss keeps a float32 state; jit compiles once."""
  state = _adas.adas_early_stop_init()
  assert state.best_loss.dtype == jnp.float32
  step = jax.jit(lambda loss, s: adas_early_stop(loss, s, patience=3))
  losses = [jnp.float16(loss) for loss in (2.0, 1.5, 1.4)]
  with _utils.log_compilations() as compilations:
    for loss in losses:
      state, _ = step(loss, state)
  assert state.best_loss.dtype == jnp.float32
  assert len(compilations) == 1, compilations
  fresh, _ = adas_early_stop(jnp.bfloat16(1.0))
  assert fresh.best_loss.dtype == jnp.float32


# ------------------------------------------------------------ layer groups


class _LinenCNN(linen.Module):

  @linen.compact
  def __call__(self, x, train=False):
    x = linen.Conv(8, (3,))(x)
    x = linen.BatchNorm(use_running_average=not train)(x)
    x = linen.relu(linen.Conv(8, (3,), strides=(2,))(x))
    x = linen.BatchNorm(use_running_average=not train)(x)
    return linen.Dense(10)(x.reshape(x.shape[0], -1))


def test_default_groups_nnx():
  model = CNN1DBN(channels=8, depth=3, rngs=nnx.Rngs(0))
  labels = adas_layer_groups(nnx.state(model, nnx.Param))
  assert labels["convs"][1]["kernel"] == "convs/1"
  assert labels["norms"][1]["scale"] == "convs/1"
  assert labels["norms"][2]["bias"] == "convs/2"
  assert labels["head"]["kernel"] == "fc" and labels["head"]["bias"] == "fc"
  params = nnx.state(model, nnx.Param)
  state = adas().init(params)
  assert adas_layer_names(state, params) == ("convs/0", "convs/1",
                                             "convs/2")


def test_default_groups_linen():
  variables = _LinenCNN().init(jax.random.key(0), jnp.ones((2, 12, 1)))
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


def test_custom_layer_groups_with_stacked_layers():
  keys = jax.random.split(jax.random.key(1), 3)
  stack = jnp.stack([_low_rank_kernel(k, (3, 4, 6)) for k in keys])
  params = {"blocks": {"kernel": stack, "bias": jnp.zeros((3, 6))}}

  def groups(path, leaf):
    del leaf
    return LayerGroup("blocks", kernel=path[-1] == "kernel", stack_dims=1)

  tx = adas(layer_groups=groups)
  state = jax.jit(adas_end_epoch)(tx.init(params), params)
  assert adas_layer_names(state, params) == ("blocks[0]", "blocks[1]",
                                             "blocks[2]")
  for i in range(3):
    kg = _spectral.knowledge_gain(stack[i])
    # float32 batched and single spectra differ at ~1e-5 on GPUs.
    np.testing.assert_allclose(state.gain[i], kg.gain, rtol=1e-4, atol=1e-7)
  state = _apply_gains_per_layer(state, [0.1, 0.2, 0.3])
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  lr = np.asarray(state.layer_lr)
  assert len(set(lr.round(8))) == 3
  for i in range(3):
    np.testing.assert_allclose(
        updates["blocks"]["bias"][i], -lr[i] * (1 + 5e-4 * 0), rtol=1e-6)


class _ScannedBlock(linen.Module):

  @linen.compact
  def __call__(self, x, _):
    x = linen.Conv(8, (3,), use_bias=False)(x)
    return linen.relu(linen.LayerNorm()(x)), None


class _LinenScanCNN(linen.Module):
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
  params = _LinenScanCNN().init(jax.random.key(0), jnp.ones((2, 12, 1)))[
      "params"]
  labels = adas_layer_groups(params)
  block = "blocks/Conv_0"
  assert labels["blocks"]["Conv_0"]["kernel"] == block
  assert labels["blocks"]["LayerNorm_0"]["scale"] == block  # no conv bias
  assert labels["Dense_0"]["kernel"] == "fc"
  names = adas_layer_names(adas().init(params), params)
  assert names == ("Conv_0", *(f"{block}[{i}]" for i in range(3)))


@pytest.mark.slow
def test_linen_scan_layers_measured_one_by_one():
  params = _LinenScanCNN().init(jax.random.key(0), jnp.ones((2, 12, 1)))[
      "params"]
  kernels = jnp.stack([_low_rank_kernel(k, (3, 8, 8)) for k in
                       jax.random.split(jax.random.key(11), 3)])
  params["blocks"]["Conv_0"]["kernel"] = kernels
  state = jax.jit(adas_end_epoch)(adas().init(params), params)
  for i in range(3):
    kg = _spectral.knowledge_gain(kernels[i])
    np.testing.assert_allclose(state.gain[1 + i], kg.gain, rtol=1e-4,
                               atol=1e-7)
  assert len(set(np.asarray(state.gain[1:]).round(6))) == 3


def test_default_groups_detect_nnx_vmap_layers():
  model = _NnxStackedCNN(nnx.Rngs(0))
  assert model(jnp.ones((2, 12, 1))).shape == (2, 10)
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  assert adas_layer_groups(params)["blocks"]["conv"]["bias"] == "blocks/conv"
  assert adas_layer_names(adas().init(params), params) == (
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
  assert adas_layer_names(adas().init(params), params) == ("conv3d",)


def _apply_gains_per_layer(state, gains):
  g = jnp.asarray(gains, jnp.float32)
  zero = jnp.zeros(g.shape, jnp.int32)
  return _adas._update_rates(
      state, _spectral.KnowledgeGain(g, g, g, g, zero, zero, g))


def test_layer_groups_errors():
  params = {"a": jnp.ones((3, 3, 2, 2)), "b": jnp.ones((3, 3, 2, 2))}
  with pytest.raises(ValueError, match="exactly one kernel"):
    adas(layer_groups=lambda p, x: "same").init(params)
  with pytest.raises(TypeError, match="layer_groups"):
    adas(layer_groups=lambda p, x: 3).init(params)


# ------------------------------------------------------ training, modes


def _train_nnx(steps_per_epoch, epochs=3, explicit=False):
  model = CNN1DBN(channels=8, depth=3, rngs=nnx.Rngs(0))
  for i, conv in enumerate(model.convs):
    conv.kernel[...] = _low_rank_kernel(
        jax.random.key(10 + i), conv.kernel.shape)
  tx = adas(learning_rate=0.05,
            steps_per_epoch=None if explicit else steps_per_epoch)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((steps_per_epoch, 16, 40, 1)),
                  jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, (steps_per_epoch, 16)))

  @nnx.jit
  def train_step(model, optimizer, x, y):
    def loss_fn(model):
      logits = model(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads)

  end_epoch = jax.jit(adas_end_epoch)
  history = []
  for _ in range(epochs):
    for s in range(steps_per_epoch):
      train_step(model, optimizer, x[s], y[s])
    if explicit:
      new_state = end_epoch(nnx.as_pure(optimizer.opt_state),
                            nnx.as_pure(nnx.state(model, nnx.Param)))
      nnx.update(optimizer.opt_state, nnx.state(new_state))
    state = nnx.as_pure(optimizer.opt_state)
    history.append((np.asarray(state.layer_lr), np.asarray(state.gain),
                    float(state.fc_lr)))
  return history


def test_nnx_cnn_in_update_and_explicit_epoch_ends_agree():
  in_update = _train_nnx(steps_per_epoch=3)
  explicit = _train_nnx(steps_per_epoch=3, explicit=True)
  for (lr_a, g_a, fc_a), (lr_b, g_b, fc_b) in zip(in_update, explicit):
    # Two compiled paths; float32 differs at ~1e-5 between them on GPUs.
    np.testing.assert_allclose(lr_a, lr_b, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(g_a, g_b, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(fc_a, fc_b, rtol=1e-4)
  assert np.any(in_update[-1][1] > 0)  # gains measured, not all zero
  np.testing.assert_allclose(in_update[0][0], 0.05, rtol=1e-6)  # epoch 0


@pytest.mark.slow
def test_linen_cnn_in_update_and_explicit_epoch_ends_agree():
  model = _LinenCNN()
  variables = model.init(jax.random.key(0), jnp.ones((2, 40, 1)))
  params = variables["params"]
  params["Conv_0"]["kernel"] = _low_rank_kernel(jax.random.key(3), (3, 1, 8))
  params["Conv_1"]["kernel"] = _low_rank_kernel(jax.random.key(4), (3, 8, 8))
  stats = variables["batch_stats"]
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((4, 16, 40, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, (4, 16)))

  def run(tx, explicit):
    p, state = params, tx.init(params)

    @jax.jit
    def step(p, state, xb, yb):
      def loss_fn(p):
        logits, _ = model.apply({"params": p, "batch_stats": stats}, xb,
                                train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, yb).mean()
      grads = jax.grad(loss_fn)(p)
      updates, state = tx.update(grads, state, p)
      return optax.apply_updates(p, updates), state

    rates = []
    for _ in range(3):
      for s in range(4):
        p, state = step(p, state, x[s], y[s])
      if explicit:
        state = jax.jit(adas_end_epoch)(state, p)
      rates.append(np.append(state.layer_lr, state.fc_lr))
    return np.asarray(rates), state

  a, state_a = run(adas(learning_rate=0.05, steps_per_epoch=4), False)
  b, _ = run(adas(learning_rate=0.05), True)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)  # see nnx test
  assert int(state_a.epoch) == 3


def test_epoch_ends_only_every_steps_per_epoch():
  params = {"conv": {"kernel": _low_rank_kernel(jax.random.key(5),
                                                (3, 3, 4, 8))}}
  tx = adas(steps_per_epoch=3)
  state = tx.init(params)
  update = jax.jit(tx.update)
  grads = jax.tree.map(jnp.zeros_like, params)
  epochs = []
  for _ in range(7):
    _, state = update(grads, state, params)
    epochs.append(int(state.epoch))
  assert epochs == [0, 0, 1, 1, 1, 2, 2]


@pytest.mark.slow  # two compilations of the epoch end (about 10 s)
@pytest.mark.parametrize("steps_per_epoch, epochs", [(3, [0, 0, 0]),
                                                      (1, [1, 2, 3])])
def test_epoch_ends_after_the_step_count_saturates(steps_per_epoch, epochs):
  """As adas.md says: the count stops at 2**31 - 1 (a prime), so epoch ends
  stop unless ``steps_per_epoch`` is 1."""
  params = {"conv": {"kernel": _low_rank_kernel(jax.random.key(5),
                                                (3, 3, 4, 8))}}
  tx = adas(steps_per_epoch=steps_per_epoch)
  state = tx.init(params)
  state = state._replace(count=jnp.asarray(np.iinfo(np.int32).max - 1,
                                           jnp.int32))
  update = jax.jit(tx.update)
  grads = jax.tree.map(jnp.zeros_like, params)
  seen = []
  for _ in range(3):
    _, state = update(grads, state, params)
    seen.append(int(state.epoch))
  assert int(state.count) == np.iinfo(np.int32).max
  assert seen == epochs


@pytest.mark.slow
def test_in_update_epoch_end_under_vmap_is_per_lane():
  params = {"conv": {"kernel": _low_rank_kernel(jax.random.key(5),
                                                (3, 3, 4, 8))}}
  tx = adas(steps_per_epoch=3)
  grads = jax.tree.map(jnp.zeros_like, params)
  states = jax.tree.map(lambda x: jnp.stack([x, x]), tx.init(params))
  states = states._replace(count=jnp.asarray([1, 2], jnp.int32))
  _, states = jax.jit(jax.vmap(tx.update, in_axes=(None, 0, None)))(
      grads, states, params)
  assert states.epoch.tolist() == [0, 1]


def test_injected_learning_rate_changed_mid_run_is_only_eta0():
  """As documented: the conv and fc rates in force ignore it; the leaves in
  no group train at it."""
  params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4)) * 0.1},
            "head": {"kernel": jnp.ones((4, 2)) * 0.1}, "emb": jnp.ones(3)}
  assert adas_layer_groups(params)["emb"] == "init"
  grads = jax.tree.map(jnp.ones_like, params)
  runs = []
  for changed in (False, True):
    tx = optax.inject_hyperparams(adas)(learning_rate=0.1, steps_per_epoch=2)
    state, history, update = tx.init(params), [], jax.jit(tx.update)
    for step in range(6):
      if changed and step == 3:  # after the first epoch end
        state.hyperparams["learning_rate"] = jnp.asarray(1e-3)
      updates, state = update(grads, state, params)
      history.append((updates, state.inner_state.layer_lr,
                      state.inner_state.fc_lr))
    runs.append(history)
  for step, (plain, changed) in enumerate(zip(*runs)):
    (u0, lr0, fc0), (u1, lr1, fc1) = plain, changed
    _utils.assert_trees_all_equal((u1["conv"], u1["head"], lr1, fc1),
                                  (u0["conv"], u0["head"], lr0, fc0))
    emb_rate = 1e-3 if step >= 3 else 0.1
    np.testing.assert_allclose(-u1["emb"], emb_rate * np.asarray(
        -u0["emb"]) / 0.1, rtol=1e-6)


def test_adas_end_epoch_inside_chain_and_inject_hyperparams():
  params = {"conv": {"kernel": _low_rank_kernel(jax.random.key(6),
                                                (3, 3, 4, 8))}}
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.inject_hyperparams(adas)(learning_rate=0.02))
  state = adas_end_epoch(tx.init(params), params)
  inner = state[1].inner_state
  np.testing.assert_allclose(inner.layer_lr, 0.02, rtol=1e-6)
  assert int(inner.epoch) == 1
  with pytest.raises(ValueError, match="AdasState"):
    adas_end_epoch(optax.sgd(0.1).init(params), params)


# ------------------------------------------------ dtypes, sharding, errors


def test_bf16_params_keep_dtype_and_f32_trace():
  params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4), jnp.bfloat16)}}
  tx = adas(steps_per_epoch=1)
  state = tx.init(params)
  updates, new_state = jax.jit(tx.update)(params, state, params)
  assert updates["conv"]["kernel"].dtype == jnp.bfloat16
  assert state.trace["conv"]["kernel"].dtype == jnp.float32
  assert jax.tree.map(jax.typeof, state) == jax.tree.map(jax.typeof,
                                                         new_state)
  _utils.assert_tree_all_finite(new_state)


@pytest.mark.slow  # ~15 s; tests/test_multidevice.py covers AdaS under sharding
def test_sharded_epoch_end_matches_unsharded():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices")
  mesh = jax.make_mesh((8,), ("x",))
  params = {"conv": {"kernel": _low_rank_kernel(jax.random.key(7),
                                                (3, 3, 4, 16)),
                     "bias": jnp.zeros(16)},
            "head": {"kernel": jnp.ones((16, 8)) * 0.1}}
  tx = adas(steps_per_epoch=1)
  grads = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), params)
  plain_updates, plain_state = jax.jit(tx.update)(grads, tx.init(params),
                                                  params)
  with jax.set_mesh(mesh):
    spec = lambda x: jax.sharding.PartitionSpec(
        *([None] * (x.ndim - 1)), "x")
    shard = lambda t: jax.tree.map(
        lambda x: jax.device_put(x, jax.sharding.NamedSharding(
            mesh, spec(x))), t)
    sharded, sgrads = shard(params), shard(grads)
    state = tx.init(sharded)
    updates, new_state = jax.jit(tx.update)(sgrads, state, sharded)
    assert jax.tree.map(jax.typeof, state) == jax.tree.map(jax.typeof,
                                                           new_state)
    explicit = jax.jit(adas_end_epoch)(
        adas().init(sharded), optax.apply_updates(sharded, updates))
  _utils.assert_trees_all_close(updates, plain_updates, rtol=1e-6)
  np.testing.assert_allclose(new_state.gain, plain_state.gain, rtol=1e-4)
  np.testing.assert_allclose(explicit.gain, plain_state.gain, rtol=1e-4)
  assert int(new_state.epoch) == 1


def test_eval_shape_init_and_no_recompile():
  params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}}
  tx = adas(steps_per_epoch=2)
  abstract = jax.eval_shape(tx.init, params)
  state = tx.init(params)
  assert jax.tree.map(jax.typeof, state) == jax.tree.map(
      lambda x: jax.typeof(jnp.zeros(x.shape, x.dtype)), abstract)
  update = jax.jit(tx.update)
  _, state = update(params, state, params, junk=1)
  with _utils.log_compilations() as compiles:
    update(params, state, params, junk=2)
  assert not compiles


def test_argument_validation():
  with pytest.raises(ValueError, match="beta"):
    adas(beta=1.0)
  with pytest.raises(ValueError, match="`p`"):
    adas(p=3)
  with pytest.raises(TypeError, match="steps_per_epoch"):
    adas(steps_per_epoch=2.5)
  with pytest.raises(ValueError, match="solver"):
    adas(solver="newton")
  with pytest.raises(TypeError, match="learning_rate"):
    adas(learning_rate=optax.constant_schedule(0.1))
  params = {"w": jnp.ones(3)}
  tx = adas()
  with pytest.raises(ValueError, match="params"):
    tx.update(params, tx.init(params))
  tx = adas(weight_decay=0.0)  # no params needed without decay or epochs
  tx.update(params, tx.init(params))
