"""Tests of ``optax_adaptive.diagnostics``."""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_adaptive as oa
from optax_adaptive._diagnostics import (
  MONITORED_FIELDS,
  diagnostics,
  find_states,
)
from tests import _cnn_tasks as T
from tests import _registry as R
from tests import _utils

PARAMS = {"conv": {"kernel": jnp.ones((3, 3, 2, 4))},
          "w": jnp.ones((4, 3)), "b": jnp.zeros((3,))}

CPROP = {"cprop/mean_scale"}
AUTODROP = {"autodrop/lr_scale", "autodrop/last_omega",
            "autodrop/smoothed_omega", "autodrop/n_drops"}
EXPECTED_KEYS = {
    "cprop": CPROP,
    "cprop_sgd": CPROP,
    "cprop_adam": CPROP,
    "autodrop": AUTODROP,
    "autodrop_v1": {"autodrop/lr_scale", "autodrop/last_omega",
                    "autodrop/theta", "autodrop/n_drops"},
    "pal": {"pal/pal_learning_rate", "pal/pal_step_length",
            "pal/info.curvature", "pal/info.case"},
    "labpal": {"labpal/labpal_learning_rate", "labpal/labpal_step_length",
               "labpal/updates_done", "labpal/pending", "labpal/retries",
               "labpal/info.raw_step", "labpal/info.status"},
    "adas": {"adas/epoch", "adas/layer_lr", "adas/fc_lr",
             "adas/gain", "adas/input_gain", "adas/output_gain",
             "adas/input_condition", "adas/output_condition"},
    "cprop_autodrop": CPROP | AUTODROP,
}


def _build(method):
  try:
    return method.build(None)
  except (ImportError, AttributeError) as e:
    pytest.skip(f"{method.name} has not landed: {e}")


def _mark_fields(state):
  """Gives every floating/int scalar leaf a distinct value (its index+1)."""
  leaves, treedef = jax.tree.flatten(state)
  marked = [
      jnp.full_like(x, i + 1) if x.size < 64 and x.dtype != jnp.bool_ else x
      for i, x in enumerate(leaves)
  ]
  return treedef.unflatten(marked)


def _field(state, dotted):
  for name in dotted.split("."):
    state = getattr(state, name)
  return state


@pytest.mark.parametrize("method", T.METHODS, ids=repr)
def test_every_method_reports_its_monitored_fields(method):
  tx = _build(method)
  state = _mark_fields(tx.init(PARAMS))
  out = diagnostics(state)
  expected = EXPECTED_KEYS[method.name]
  assert expected <= set(out), (sorted(out), sorted(expected))
  prefixes = {key.split("/")[0] for key in out}
  assert prefixes == {key.split("/")[0] for key in expected}
  # Every value is the state's field itself, unchanged.
  for lib_state in find_states(state):
    prefix, fields = MONITORED_FIELDS[type(lib_state).__name__]
    for field in fields:
      key = f"{prefix}/{field}"
      if key in out:
        np.testing.assert_array_equal(out[key], _field(lib_state, field))
  for value in out.values():
    assert isinstance(value, jax.Array)
    assert value.size <= 64


@pytest.mark.parametrize(
    "model", [_utils.mlp_problem, _utils.cnn_problem], ids=["mlp", "cnn"])
@pytest.mark.parametrize("case", R.params(R.CASES))
def test_values_are_numbers_a_logger_takes(case, model):
  """No booleans (LABPAL's ``pending`` was one), no empty arrays (AdaS's
  per-layer rates of a model without conv layers were), for any model."""
  params, objective = model()
  tx = case.build()
  step = jax.jit(R.make_step(case, tx, objective))
  state = tx.init(params)
  for _ in range(2):
    params, state, _ = step(params, state)
  out = diagnostics(state)
  assert out
  for key, value in out.items():
    assert value.dtype.kind in "iuf", f"{key}: {value.dtype}"
    assert value.size > 0, key
    np.round(np.asarray(value), 4)
  if "adas/fc_lr" in out:  # the rates in force
    (adas_state,) = find_states(state)
    assert float(out["adas/fc_lr"]) == float(adas_state.fc_lr)
    assert ("adas/layer_lr" in out) == (model is _utils.cnn_problem)


def _cprop_sgd():
  return oa.cprop_sgd(learning_rate=0.1)


def _autodrop():
  return oa.autodrop(window_size=2)


def _wrappers():
  cprop_sgd = oa.cprop_sgd
  mask = {"conv": {"kernel": True}, "w": True, "b": False}
  labels = {"conv": {"kernel": "a"}, "w": "a", "b": "b"}
  return {
      "chain": (optax.chain(optax.clip(1.0), _cprop_sgd()), CPROP),
      "named_chain": (optax.named_chain(("clip", optax.clip(1.0)),
                                        ("opt", _cprop_sgd())), CPROP),
      "multisteps": (optax.MultiSteps(_cprop_sgd(), 2), CPROP),
      "masked": (optax.masked(_cprop_sgd(), mask), CPROP),
      "partition": (
          optax.partition({"a": _cprop_sgd(), "b": _autodrop()}, labels),
          CPROP | AUTODROP),
      "inject": (optax.inject_hyperparams(cprop_sgd)(learning_rate=0.1),
                 CPROP),
      "inject_in_multisteps_in_chain": (
          optax.chain(optax.MultiSteps(
              optax.inject_hyperparams(cprop_sgd)(learning_rate=0.1), 2),
                      _autodrop()),
          CPROP | AUTODROP),
      "twice": (optax.chain(_cprop_sgd(), optax.masked(_cprop_sgd(), mask)),
                {"cprop_0/mean_scale", "cprop_1/mean_scale"}),
  }


@pytest.mark.parametrize("wrapper", [
    "chain", "named_chain", "multisteps", "masked", "partition", "inject",
    "inject_in_multisteps_in_chain", "twice"])
def test_found_inside_wrappers(wrapper):
  tx, expected = _wrappers()[wrapper]
  state = tx.init(PARAMS)
  assert set(diagnostics(state)) == expected


def test_repeated_method_keys_follow_state_order():
  cprop = oa.cprop
  tx = optax.chain(cprop(optax.sgd(0.1), c=1.0), cprop(optax.adam(0.1)))
  state = tx.init(PARAMS)
  state = (state[0]._replace(mean_scale=jnp.float32(0.25)),
           state[1]._replace(mean_scale=jnp.float32(0.75)))
  out = diagnostics(state)
  assert float(out["cprop_0/mean_scale"]) == 0.25
  assert float(out["cprop_1/mean_scale"]) == 0.75


def test_no_library_state_gives_empty_dict():
  assert diagnostics(optax.adam(0.1).init(PARAMS)) == {}
  assert diagnostics(None) == {}


def test_nnx_optimizer_state_under_nnx_jit():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  tx = optax.chain(_cprop_sgd(), _autodrop())
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x):
    grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
    optimizer.update(model, grads)
    return diagnostics(optimizer.opt_state)

  out = step(model, optimizer, jnp.ones((4, 3)))
  assert set(out) == CPROP | AUTODROP
  assert set(diagnostics(optimizer.opt_state)) == CPROP | AUTODROP
  chex.assert_trees_all_equal(out, diagnostics(optimizer.opt_state),
                              strict=True)


def test_jit_matches_eager_and_values_track_training():
  tx = optax.chain(_cprop_sgd(), _autodrop())
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  state = tx.init(params)

  @jax.jit
  def step(params, state, i):
    grads = {"w": params["w"] * (1.0 + jnp.sin(i * params["w"]))}
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, diagnostics(state)

  for i in range(6):
    params, state, logged = step(params, state, jnp.float32(i))
  chex.assert_trees_all_equal(logged, diagnostics(state), strict=True)
  chex.assert_trees_all_equal(jax.jit(diagnostics)(state), logged,
                              strict=True)
  assert 0.0 < float(logged["cprop/mean_scale"]) < 1.0
  assert float(logged["autodrop/last_omega"]) > 0.0


class FutureState(NamedTuple):
  lr_vector: jax.Array
  hits: jax.Array
  buffer: jax.Array
  inner: dict


FutureState.__module__ = "optax_adaptive._future"


def test_unlisted_library_state_reports_small_float_fields():
  state = FutureState(lr_vector=jnp.ones(3), hits=jnp.zeros((), jnp.int32),
                       buffer=jnp.ones((4, 4)), inner={"x": jnp.ones(2)})
  out = diagnostics((*optax.chain(optax.sgd(1.0)).init(PARAMS), state))
  assert set(out) == {"future/lr_vector"}


@pytest.mark.slow  # compiles AdaS's epoch end (SVD + EVBMF)
def test_adas_per_layer_values_after_an_epoch_end():
  tx = oa.adas(learning_rate=0.1)
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)
  _, state = jax.jit(functools.partial(tx.update, end_of_epoch=True))(
      zeros, tx.init(PARAMS), PARAMS)
  out = diagnostics(state)
  assert out["adas/layer_lr"].shape == (1,)  # one conv layer
  np.testing.assert_allclose(out["adas/layer_lr"], [0.1], rtol=1e-6)
  assert int(out["adas/epoch"]) == 1
  early = oa.adas_early_stop_init()
  assert set(diagnostics((state, early))) >= {
      "adas_early_stop/best_loss", "adas_early_stop/wait"}


def test_docstring_examples():
  import doctest

  from optax_adaptive import _diagnostics
  result = doctest.testmod(_diagnostics, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0
