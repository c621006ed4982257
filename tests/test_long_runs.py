"""Long runs: 200,000 steps of every method in one ``lax.scan``.

A noisy quadratic with a few parameters; the gradient noise comes from a
fixed key folded with the step number. Checks: no NaN/inf in any update or
in the final state, counters equal the number of steps (int32 counters do
not wrap), and the adaptive quantities end in their documented ranges. A
second, shorter run starts every int32 counter just below its maximum and
checks that it saturates instead of wrapping to a negative value.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_adaptive as oa
from tests import _utils

pytestmark = pytest.mark.slow

_STEPS = 200_000
_INT32_MAX = np.iinfo(np.int32).max
_CURVATURE = {"w": jnp.array([1.0, 0.8, 1.2]),
              "conv": {"kernel": jnp.full((1, 1, 2, 2), 1.0)},
              "head": {"kernel": jnp.array([[1.0], [0.3]])}}
_TARGET = {"w": jnp.array([1.0, -2.0, 0.5]),
           "conv": {"kernel": jnp.array([[[[0.5, -0.5], [1.0, 0.2]]]])},
           "head": {"kernel": jnp.array([[0.7], [-0.3]])}}
_NOISE = 0.1


def _sub(tree, like):
  return {k: tree[k] for k in like}


def loss(params, scale=1.0):
  """Noise-free quadratic; its gradient plus noise is the stream."""
  curv, target = _sub(_CURVATURE, params), _sub(_TARGET, params)
  return scale * sum(
      0.5 * jnp.sum(c * jnp.square(p - t)) for p, c, t in zip(
          jax.tree.leaves(params), jax.tree.leaves(curv),
          jax.tree.leaves(target)))


def _noisy_grad(params, step):
  key = jax.random.fold_in(jax.random.key(0), step)
  leaves, treedef = jax.tree.flatten(jax.grad(loss)(params))
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [
      g + _NOISE * jax.random.normal(k, g.shape, g.dtype)
      for g, k in zip(leaves, keys)])


def _line_search_kwargs(params, grad):
  return dict(value=loss(params), grad=grad, value_fn=loss)


def _labpal_kwargs(params, grad):
  return dict(grad=grad, value_fn=loss,
              approx_batch={"scale": jnp.array([0.9, 1.1])})


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  build: Callable[[], Any]
  extra: Callable[[Any, Any], dict[str, Any]] = lambda params, grad: {}
  params: tuple[str, ...] = ("w",)
  tol: float = 0.1  # final |params - target|, noise-limited

  def __repr__(self):
    return self.name


CASES = [
    Case("cprop", lambda: oa.cprop(optax.adam(1e-3), beta=0.999)),
    Case("cprop_sgd", lambda: oa.cprop_sgd(1e-2, momentum=0.9, c=3.0)),
    Case("cprop_adam", lambda: oa.cprop_adam(1e-3, b2=0.99)),
    Case("autodrop", lambda: optax.chain(
        optax.sgd(1e-2, momentum=0.9),
        oa.autodrop(window_size=100, min_scale=0.01))),
    Case("autodrop_v1", lambda: optax.chain(
        optax.sgd(1e-2, momentum=0.9),
        oa.autodrop_v1(steps_per_epoch=1000, patience_epochs=5,
                       min_scale=0.01))),
    Case("adas", lambda: oa.adas(1e-2, steps_per_epoch=2000,
                                 weight_decay=0.0),
         params=("conv", "head"), tol=0.2),
    Case("pal", lambda: oa.pal(max_step=0.1), _line_search_kwargs, tol=0.2),
    # alpha = 1: a learning rate reused for 500 steps must stay below
    # 2 / L; the exact line minimum along g is at most 1 / l_min = 1.25.
    Case("labpal", lambda: oa.labpal(mode="sgd", approx_batches=2,
                                     reuse_steps=500, untrusted_updates=2000,
                                     fit="exact", fd_step=1e-2,
                                     measuring_step=0.1,
                                     update_step_adaptation=1.0),
         _labpal_kwargs),
]


@functools.partial(jax.jit, static_argnames=("case", "steps"))
def _long_run(case, params, state, steps):
  """``steps`` steps; returns (params, state, all updates finite)."""
  tx = case.build()

  def body(carry, step):
    params, state, finite = carry
    grad = _noisy_grad(params, step)
    updates, state = tx.update(grad, state, params,
                               **case.extra(params, grad))
    finite &= jnp.all(jnp.array([jnp.all(jnp.isfinite(u))
                                 for u in jax.tree.leaves(updates)]))
    return (optax.apply_updates(params, updates), state, finite), None

  carry = (params, state, jnp.ones((), bool))
  return jax.lax.scan(body, carry, jnp.arange(steps))[0]


def _init(case):
  params = {k: jax.tree.map(jnp.zeros_like, _TARGET[k]) for k in case.params}
  return params, case.build().init(params)


def _int32_leaves(state):
  return [(jax.tree_util.keystr(path), int(x)) for path, x in
          jax.tree_util.tree_leaves_with_path(state)
          if jnp.asarray(x).dtype == jnp.int32 and jnp.ndim(x) == 0]


def _check_ranges(name, state, steps):
  """The adaptive quantities of each method at the end of a run."""
  get = lambda field: np.asarray(optax.tree.get(state, field))
  if name.startswith("cprop"):
    assert int(state.count) == min(steps, _INT32_MAX)
    assert 0.0 <= float(get("mean_scale")) <= 1.0
  elif name.startswith("autodrop"):
    scale = get("lr_scale")
    assert np.float32(0.01) <= scale <= 1.0
    # AutoDrop drops at most once per buffer_size (10) windows of 100 steps.
    max_drops = steps // 1000 if name == "autodrop" else steps // 5000
    assert 0 <= int(get("n_drops")) <= max_drops
  elif name == "adas":
    assert int(get("count")) == min(steps, _INT32_MAX)
    assert np.all(np.isfinite(get("layer_lr")))
    # adas's default min_lr, 1e-20, in the float32 of its rates.
    min_lr = np.float32(1e-20)
    assert np.all(get("layer_lr") >= min_lr)
    assert float(get("fc_lr")) >= min_lr
  elif name == "pal":
    assert 0.0 <= float(get("pal_step_length")) <= np.float32(0.1)
  elif name == "labpal":
    assert 0 <= int(get("since_measure")) < 500
    assert 0 < int(get("hist_count")) <= 25
    step = float(get("labpal_step_length"))
    assert 0.0 < step <= 1.0  # alpha * max_step
    assert int(get("status")) == 1  # the last measurement succeeded


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_long_run(case):
  params, state = _init(case)
  params, state, finite = _long_run(case, params, state, _STEPS)
  assert bool(finite), "a non-finite update during the run"
  _utils.assert_tree_all_finite((params, state))
  for name, value in _int32_leaves(state):
    assert 0 <= value <= _STEPS, (name, value)
  _check_ranges(case.name, state, _STEPS)
  if case.name == "adas":
    assert int(state.epoch) == _STEPS // 2000
  if case.name == "labpal":  # every call moved (no retries)
    assert int(state.updates_done) == _STEPS - 1  # starts at -1
  target = _sub(_TARGET, params)
  _utils.assert_trees_all_close(params, target, atol=case.tol, rtol=0.0)


def _near_max(state):
  """Every int32 scalar counter set just below the int32 maximum."""
  big = {"count", "updates_done", "since_measure", "epoch", "n_drops"}

  def set_leaf(path, x):
    name = getattr(path[-1], "name", None)
    if name in big and jnp.asarray(x).dtype == jnp.int32:
      return jnp.full_like(x, _INT32_MAX - 100)
    return x

  return jax.tree_util.tree_map_with_path(set_leaf, state)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_counters_saturate(case):
  params, state = _init(case)
  state = _near_max(state)
  params, state, finite = _long_run(case, params, state, 1000)
  assert bool(finite)
  _utils.assert_tree_all_finite((params, state))
  step_counters = 0
  for name, value in _int32_leaves(state):
    assert value >= 0, f"{name} wrapped to {value}"
    if name.endswith(".count"):  # a per-step counter: saturated
      assert value == _INT32_MAX, (name, value)
      step_counters += 1
  if case.name.startswith(("cprop", "adas")):
    assert step_counters >= 1
