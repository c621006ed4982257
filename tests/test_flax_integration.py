"""Every method inside Flax training loops: nnx.Optimizer and linen TrainState.

nnx: ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` updated under ``nnx.jit``
must give the same params as the plain functional optax loop on the same
``nnx.State`` (rtol=1e-5: both are the same float32 computation, traced
differently). PAL/LABPAL get ``value``, ``grad``, a pure ``value_fn`` built
with :func:`optax_adaptive.nnx_value_fn` and the batch by name.

linen: :class:`optax_adaptive.TrainState` forwards the extra arguments to
``tx.update``; its steps must equal the hand-written ``tx.update`` loop (bit
for bit on the CPU, to rtol=1e-4 elsewhere).

``import optax_adaptive`` itself must not import flax: the helpers above are
imported on first use.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state as flax_train_state

import optax_adaptive as oa
from tests import _cnn_tasks as T

STEPS = 3
# Methods of the default run; the others run under -m slow.
NNX_FAST = ("labpal",)
LINEN_FAST = ("pal",)


def _params(fast):
  out = []
  for method in T.METHODS:
    marks = () if method.name in fast else (pytest.mark.slow,)
    out.append(pytest.param(method, marks=marks, id=method.name))
  return out


def _build(method):
  try:
    return method.build(None)
  except (ImportError, AttributeError) as e:
    pytest.skip(f"{method.name} has not landed: {e}")


def _nnx_value_fn(model, loss_fn):
  return oa.nnx_value_fn(model, loss_fn)


def _train_state_cls():
  return oa.TrainState


DATA = T.make_data(steps=STEPS)

# ---------------------------------------------------------------- nnx


class NnxCNN(nnx.Module):

  def __init__(self, rngs):
    self.conv1 = nnx.Conv(T.IMAGE[-1], T.CHANNELS, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(T.CHANNELS, T.CHANNELS, (3, 3), rngs=rngs)
    self.dense = nnx.Linear(T.CHANNELS, T.CLASSES, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.conv1(x))
    h = nnx.relu(self.conv2(h))
    return self.dense(jnp.mean(h, axis=(1, 2)))


def nnx_loss(model, x, y):
  logits = model(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _nnx_run(method, tx):
  model = NnxCNN(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, batch, approx):
    value_fn = _nnx_value_fn(model, nnx_loss)  # inside the step (flax.md)
    value, grads = nnx.value_and_grad(nnx_loss)(model, batch["x"],
                                                batch["y"])
    kwargs = T.update_kwargs(method, value, grads, value_fn, batch, approx)
    optimizer.update(model, grads, **kwargs)
    return value

  losses = [step(model, optimizer, T.batch_at(DATA, i), T.approx_at(DATA, i))
            for i in range(STEPS)]
  return nnx.state(model, nnx.Param), optimizer, jnp.stack(losses)


def _functional_run(method, tx):
  model = NnxCNN(nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rest = nnx.as_pure(rest)

  def loss_fn(params, x, y):
    return nnx_loss(nnx.merge(graphdef, params, rest), x, y)

  @jax.jit
  def step(params, state, batch, approx):
    value, grads = jax.value_and_grad(loss_fn)(params, batch["x"],
                                               batch["y"])
    kwargs = T.update_kwargs(method, value, grads, loss_fn, batch, approx)
    updates, state = tx.update(grads, state, params, **kwargs)
    return optax.apply_updates(params, updates), state, value

  params = nnx.as_pure(params)
  state = tx.init(params)
  losses = []
  for i in range(STEPS):
    params, state, value = step(params, state, T.batch_at(DATA, i),
                                T.approx_at(DATA, i))
    losses.append(value)
  return params, jnp.stack(losses)


@pytest.mark.parametrize("method", _params(NNX_FAST))
def test_nnx_optimizer_under_nnx_jit(method):
  tx = _build(method)
  params, optimizer, losses = _nnx_run(method, tx)
  ref_params, ref_losses = _functional_run(method, tx)
  chex.assert_tree_all_finite(nnx.as_pure(params))
  assert int(optimizer.step[...]) == STEPS
  chex.assert_trees_all_close(losses, ref_losses, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(nnx.as_pure(params), ref_params, rtol=1e-5,
                              atol=1e-6)
  assert not np.allclose(np.asarray(losses[0]), np.asarray(losses[-1]))


# -------------------------------------------------------------- linen


class LinenCNN(nn.Module):

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(T.CHANNELS, (3, 3))(x))
    h = nn.relu(nn.Conv(T.CHANNELS, (3, 3))(h))
    return nn.Dense(T.CLASSES)(jnp.mean(h, axis=(1, 2)))


def _linen_setup(tx):
  module = LinenCNN()
  params = module.init(jax.random.key(0), DATA["x"][0])["params"]

  def loss_fn(params, x, y):
    logits = module.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return module, params, loss_fn


@pytest.mark.parametrize("method", _params(LINEN_FAST))
def test_linen_train_state_forwards_update_kwargs(method):
  tx = _build(method)
  module, params, loss_fn = _linen_setup(tx)
  state = _train_state_cls().create(apply_fn=module.apply, params=params,
                                    tx=tx)

  @jax.jit
  def step(state, batch, approx):
    value, grads = jax.value_and_grad(loss_fn)(state.params, batch["x"],
                                               batch["y"])
    kwargs = T.update_kwargs(method, value, grads, loss_fn, batch, approx)
    return state.apply_gradients(grads=grads, **kwargs)

  @jax.jit
  def manual(params, opt_state, batch, approx):
    value, grads = jax.value_and_grad(loss_fn)(params, batch["x"],
                                               batch["y"])
    kwargs = T.update_kwargs(method, value, grads, loss_fn, batch, approx)
    updates, opt_state = tx.update(grads, opt_state, params, **kwargs)
    return optax.apply_updates(params, updates), opt_state

  ref_params, ref_state = params, tx.init(params)
  for i in range(STEPS):
    batch, approx = T.batch_at(DATA, i), T.approx_at(DATA, i)
    state = step(state, batch, approx)
    ref_params, ref_state = manual(ref_params, ref_state, batch, approx)
  assert int(state.step) == STEPS
  # Two separately compiled programs: bitwise equal on CPU, but a GPU may
  # fuse them differently, and PAL's parabola amplifies the last bit of a
  # loss difference (1.6e-5 relative seen on an H100). A kwarg that is not
  # forwarded changes the result by orders of magnitude more.
  chex.assert_trees_all_close(state.params, ref_params, rtol=1e-4,
                              atol=1e-7)
  chex.assert_trees_all_close(state.opt_state, ref_state, rtol=1e-4,
                              atol=1e-7)


def test_flax_train_state_drops_kwargs_but_ours_forwards_them():
  """Why the subclass exists: flax's apply_gradients cannot run PAL."""
  tx = T.METHODS_BY_NAME["pal"].build(None)
  module = nn.Dense(1)
  batch = {"x": jnp.ones((4, 3)), "y": jnp.zeros((4, 1))}
  params = module.init(jax.random.key(0), batch["x"])["params"]

  def loss_fn(params, x, y):
    return jnp.mean((module.apply({"params": params}, x) - y) ** 2)

  value, grads = jax.value_and_grad(loss_fn)(params, batch["x"], batch["y"])
  plain = flax_train_state.TrainState.create(apply_fn=module.apply,
                                             params=params, tx=tx)
  with pytest.raises(TypeError):
    plain.apply_gradients(grads=grads, value=value, grad=grads,
                          value_fn=loss_fn, **batch)
  ours = _train_state_cls().create(apply_fn=module.apply, params=params,
                                   tx=tx)
  ours = jax.jit(lambda s, g, v, b: s.apply_gradients(
      grads=g, value=v, grad=g, value_fn=loss_fn, **b))(ours, grads, value,
                                                         batch)
  assert float(loss_fn(ours.params, **batch)) < float(value)


def test_train_state_replaces_dataclass_fields_and_rejects_computed_ones():
  class StateWithStats(_train_state_cls()):
    batch_stats: dict

  tx = optax.sgd(0.1)
  params = {"w": jnp.ones(2)}
  state = StateWithStats.create(apply_fn=None, params=params, tx=tx,
                                batch_stats={"mean": jnp.zeros(2)})
  grads = {"w": jnp.ones(2)}
  new = state.apply_gradients(grads=grads, batch_stats={"mean": jnp.ones(2)},
                              value=jnp.float32(3.0))  # value -> tx, ignored
  np.testing.assert_array_equal(new.batch_stats["mean"], jnp.ones(2))
  np.testing.assert_allclose(new.params["w"], jnp.full(2, 0.9))
  for name in ("params", "opt_state", "step"):
    with pytest.raises(TypeError, match=name):
      state.apply_gradients(grads=grads, **{name: None})


def test_train_state_overwrite_with_gradient_params():
  owg = flax_train_state.OVERWRITE_WITH_GRADIENT
  cprop_sgd = oa.cprop_sgd
  params = {"params": {"w": jnp.ones(2)}, owg: {"scale": jnp.ones(())}}
  state = _train_state_cls().create(apply_fn=None, params=params,
                                    tx=cprop_sgd(learning_rate=0.1))
  grads = {"params": {"w": jnp.ones(2)}, owg: {"scale": jnp.full((), 5.0)}}
  new = state.apply_gradients(grads=grads, value=jnp.float32(1.0))
  np.testing.assert_allclose(new.params["params"]["w"], jnp.full(2, 0.9))
  assert float(new.params[owg]["scale"]) == 5.0


def test_docstring_examples():
  import doctest

  from optax_adaptive import _flax
  result = doctest.testmod(_flax, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------ lazy import

_LAZY_NAMES = ("TrainState", "linen_value_fn", "nnx_value_fn")


def _run_python(code):
  """Runs ``code`` in a fresh interpreter that imports this checkout."""
  root = pathlib.Path(oa.__file__).resolve().parents[1]
  return subprocess.run([sys.executable, "-c", code], cwd=root,
                        capture_output=True, text=True, check=False,
                        timeout=300)


def test_import_does_not_import_flax():
  code = (
      "import sys, optax_adaptive as oa\n"
      "print(sorted(m for m in sys.modules if m.split('.')[0] == 'flax'))\n"
      f"print(all(n in dir(oa) for n in {_LAZY_NAMES!r}))\n"
      "oa.TrainState\n"
      "print('flax.training.train_state' in sys.modules)\n")
  result = _run_python(code)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split("\n")[:3] == ["[]", "True", "True"], (
      result.stdout)


def test_lazy_flax_names_are_the_helpers():
  from optax_adaptive import _flax, _flax_utils
  assert oa.TrainState is _flax.TrainState
  assert oa.nnx_value_fn is _flax_utils.nnx_value_fn
  assert oa.linen_value_fn is _flax_utils.linen_value_fn
  assert set(_LAZY_NAMES) <= set(oa.__all__)
  with pytest.raises(AttributeError, match="no_such_name"):
    _ = oa.no_such_name
