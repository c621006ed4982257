"""Non-finite gradients: ``optax.apply_if_finite``, and without a guard.

Every public transformation composes with ``optax.apply_if_finite``: a step
whose gradient holds a NaN or an infinity leaves the inner state exactly as
it was (bit for bit), returns zero updates, and the next finite step is the
step the transformation would have taken had the bad one never happened.
Without the guard each method's behaviour is pinned down below (and
summarised in the docs' "Failure modes" sections).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_adaptive as oa
from tests import _registry as R
from tests import _utils


def loss(params, scale=1.0):
  return scale * sum(jnp.sum(jnp.square(x - 0.5))
                     for x in jax.tree.leaves(params))


def _params():
  return {"conv": {"kernel": jnp.arange(8.0).reshape(1, 2, 2, 2) / 8 - 0.3,
                   "bias": jnp.array([0.1, -0.2])},
          "head": {"kernel": jnp.array([[0.5], [-1.0]])},
          "w": jnp.array(1.5)}


CASES = R.NONFINITE_CASES

def test_every_public_transformation_is_guarded_here():
  missing = R.missing_factories(R.factory_name(c) for c in CASES)
  assert not missing, f"no NONFINITE_CASES entry runs {missing}"


_BAD = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}


@functools.cache
def _case(name):
  """(case, tx, jitted step, guarded tx, its jitted step), built once."""
  case = next(c for c in CASES if c.name == name)
  tx = case.build()
  guarded = optax.apply_if_finite(tx, max_consecutive_errors=3)
  return case, tx, _stepper(case, tx), guarded, _stepper(case, guarded)


def _stepper(case, tx):
  @jax.jit
  def step(params, state, grad):
    kwargs = R.extra_kwargs(case, loss, params, loss(params), grad)
    return tx.update(grad, state, params, **kwargs)

  return step


def _poison(grad, value, leaf="w"):
  """``grad`` with one entry of one leaf replaced by ``value``."""
  bad = dict(grad)
  bad[leaf] = grad[leaf].at[()].set(value) if grad[leaf].ndim == 0 else (
      grad[leaf].at[0].set(value))
  return bad


def _finite_run(step, params, state, n):
  for _ in range(n):
    updates, state = step(params, state, jax.grad(loss)(params))
    params = optax.apply_updates(params, updates)
  return params, state


# One case per method family in the default tier; the rest (each one more
# compilation of a guarded step) in the slow tier.
_DEFAULT_TIER = ("cprop_sgd", "autodrop", "adas", "pal", "labpal",
                 "autodrop_prodigy")


@pytest.mark.parametrize("case", [
    c if c.name in _DEFAULT_TIER else pytest.param(c, marks=pytest.mark.slow)
    for c in CASES], ids=repr)
def test_apply_if_finite_skips_exactly_and_training_continues(case):
  for bad in _BAD:
    _check_skip(case.name, bad)


def _check_skip(name, bad):
  _, _, _, guarded, guarded_step = _case(name)
  params = _params()
  params, state = _finite_run(guarded_step, params, guarded.init(params), 3)
  before_skips = state
  before = state.inner_state

  for leaf in ("w", "conv"):  # twice in a row, in two leaves
    grad = jax.grad(loss)(params)
    grad = _poison(grad, _BAD[bad]) if leaf == "w" else {
        **grad, "conv": {**grad["conv"], "bias": grad["conv"]["bias"].at[
            1].set(_BAD[bad])}}
    updates, state = guarded_step(params, state, grad)
    _utils.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like,
                                                        params))
    _utils.assert_trees_all_equal(state.inner_state, before)
    assert not bool(state.last_finite)
  assert int(state.notfinite_count) == 2

  # The next finite step is exactly the one taken had the bad steps never
  # happened (same compiled step, from the state before them).
  grad = jax.grad(loss)(params)
  updates, state = guarded_step(params, state, grad)
  expected_updates, expected = guarded_step(params, before_skips, grad)
  _utils.assert_tree_all_finite((updates, state))
  _utils.assert_trees_all_equal(updates, expected_updates)
  _utils.assert_trees_all_equal(state.inner_state, expected.inner_state)
  assert int(state.notfinite_count) == 0
  assert int(state.total_notfinite) == 2
  # ... and keeps going.
  params, state = _finite_run(guarded_step, optax.apply_updates(
      params, updates), state, 4)
  _utils.assert_tree_all_finite((params, state))


# ------------------------------------------------ without apply_if_finite


def _unguarded(case_name, steps_before=3, bad=np.nan, apply_bad=False,
               steps_after=6):
  """Runs a case through a NaN/inf gradient without a guard.

  Returns the per-step updates and states after the bad step. The bad
  update is applied to the params only if ``apply_bad``; otherwise the loop
  skips it (a user-side check of the updates), to show what the *state*
  keeps from the bad gradient.
  """
  _, tx, step, _, _ = _case(case_name)
  params = _params()
  params, state = _finite_run(step, params, tx.init(params), steps_before)
  bad_updates, state = step(params, state,
                            _poison(jax.grad(loss)(params), bad))
  if apply_bad:
    params = optax.apply_updates(params, bad_updates)
  history = [(bad_updates, state)]
  for _ in range(steps_after):
    updates, state = step(params, state, jax.grad(loss)(params))
    if apply_bad or all(np.all(np.isfinite(x))
                        for x in jax.tree.leaves(updates)):
      params = optax.apply_updates(params, updates)
    history.append((updates, state))
  return history


def _nan_leaves(tree):
  return sorted(
      jax.tree_util.keystr(path)
      for path, x in jax.tree_util.tree_leaves_with_path(tree)
      if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)
      and not np.all(np.isfinite(np.asarray(x, np.float64))))


@pytest.mark.parametrize("name", ["cprop", "cprop_sgd", "cprop_adam"])
def test_unguarded_cprop_is_poisoned_for_good(name):
  """The EMAs m, v of the bad entry become non-finite for good: every later
  update of that leaf is non-finite (other leaves are unaffected). A NaN
  makes mean_scale NaN from then on; an inf makes m̂ and v̂ infinite, whose
  inf - inf spread is taken as σ̂² = 0, so that entry's scale is 1 and
  mean_scale stays finite."""
  for bad in (np.nan, np.inf):
    history = _unguarded(name, bad=bad)
    for updates, state in history:
      assert _nan_leaves(updates) == ["['w']"]
      assert "['w']" in "".join(_nan_leaves(state.m))
      assert np.isnan(float(state.mean_scale)) == np.isnan(bad)


def test_unguarded_autodrop_stops_dropping():
  """The bad update passes through (scaled by lambda). The window mean
  (prev_mean) becomes NaN for good, so every later angle is NaN and the
  detector never drops again: lambda stays frozen at a finite value. The
  inner sgd's momentum is poisoned too (NaN updates for that leaf)."""
  history = _unguarded("autodrop", steps_after=12)
  drops = [int(optax.tree.get(s, "n_drops")) for _, s in history]
  scales = [float(optax.tree.get(s, "lr_scale")) for _, s in history]
  assert len(set(drops)) == 1 and np.all(np.isfinite(scales))
  assert np.isnan(float(optax.tree.get(history[-1][1], "last_omega")))
  # For comparison: the same run without the bad gradient keeps dropping
  # (threshold_deg=180 makes every test a drop).
  _, tx, step, _, _ = _case("autodrop")
  _, state = _finite_run(step, _params(), tx.init(_params()), 16)
  assert int(optax.tree.get(state, "n_drops")) >= 2


def test_unguarded_autodrop_v1_only_passes_the_bad_update_through():
  """The v1 detector reads the params (and, with average_on_drop, the
  updates of an epoch's second step only): a bad gradient gives a bad
  update in that step; its state stays finite while the params do."""
  history = _unguarded("autodrop_v1", steps_before=2)
  assert _nan_leaves(history[0][0]) == ["['w']"]
  for updates, state in history[1:]:
    _utils.assert_tree_all_finite((updates, state))


def test_unguarded_adas_momentum_poisoned_rates_stay_finite():
  """The momentum buffer of the bad leaf becomes NaN for good, so that
  leaf's updates stay NaN. The per-layer rates stay finite, even when the
  NaN update reaches the conv kernel: a non-finite knowledge gain keeps
  the previous one (docs/adas.md, "Failure modes")."""
  history = _unguarded("adas")
  for updates, state in history:
    assert _nan_leaves(updates) == ["['w']"]
    _utils.assert_tree_all_finite((state.layer_lr, state.fc_lr))
  _, tx, step, _, _ = _case("adas")
  params = _params()
  params, state = _finite_run(step, params, tx.init(params), 2)
  grad = jax.grad(loss)(params)
  grad["conv"]["kernel"] = grad["conv"]["kernel"].at[0, 0, 0, 0].set(np.nan)
  for _ in range(4):  # two epoch ends with a NaN kernel
    updates, state = step(params, state, grad)
    params = optax.apply_updates(params, updates)
  assert np.isnan(np.asarray(params["conv"]["kernel"])).any()
  _utils.assert_tree_all_finite((state.layer_lr, state.fc_lr, state.gain))


def test_unguarded_pal_does_not_move_on_a_bad_direction():
  """Regression (PAL returned NaN updates, 0 * NaN): a non-finite gradient
  gives a zero step with case ``PalCase.NOT_FINITE`` and pal_learning_rate 0.
  scale_by_pal alone (no momentum) then trains on normally; pal's momentum
  buffer is poisoned, so it keeps not moving (case 3 every step)."""
  for bad in (np.nan, np.inf):
    history = _unguarded("scale_by_pal", bad=bad)
    updates, state = history[0]
    _utils.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like,
                                                        updates))
    pal_state = state[1]
    assert int(pal_state.info.case) == oa.PalCase.NOT_FINITE
    assert float(pal_state.pal_learning_rate) == 0.0
    for updates, state in history[1:]:
      _utils.assert_tree_all_finite((updates, state))
      assert int(state[1].info.case) != oa.PalCase.NOT_FINITE
    history = _unguarded("pal", bad=bad)
    for updates, state in history:
      _utils.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like,
                                                          updates))
      assert int(state[2].info.case) == oa.PalCase.NOT_FINITE


def test_unguarded_labpal():
  """Regression (a rejected measurement returned NaN updates, 0 * NaN): a
  measuring step with a non-finite direction does not move and measures
  again on the next call (status RETRY). A training step passes the bad
  gradient on: in "nsgd" mode every leaf's update is NaN (the direction is
  divided by its global norm), in "sgd" mode only the bad entries. With
  momentum the buffer is poisoned for good and LABPAL stalls (zero updates,
  status RETRY at every step)."""
  _, tx, step, _, _ = _case("labpal")
  params = _params()
  state = tx.init(params)
  for _ in range(20):  # until the next step measures
    if bool(state.pending):
      break
    params, state = _finite_run(step, params, state, 1)
  assert bool(state.pending)
  updates, state = step(params, state, _poison(jax.grad(loss)(params),
                                               np.nan))
  _utils.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like,
                                                      updates))
  assert int(state.info.status) == oa.LabpalStatus.RETRY
  assert bool(state.pending)
  _utils.assert_tree_all_finite(state)
  updates, state = step(params, state, jax.grad(loss)(params))
  assert int(state.info.status) == oa.LabpalStatus.OK
  _utils.assert_tree_all_finite((updates, state))
  # A training step (nsgd): all leaves NaN.
  assert not bool(state.pending)
  updates, _ = step(params, state, _poison(jax.grad(loss)(params), np.nan))
  assert len(_nan_leaves(updates)) == len(jax.tree.leaves(updates))
  # sgd mode with momentum, bad gradient on a training step: NaN in the bad
  # entry only; the buffer keeps it, every later measurement is rejected
  # (non-finite direction) and LABPAL stalls without moving (zero updates).
  history = _unguarded("scale_by_labpal", steps_before=1)
  assert _nan_leaves(history[0][0]) == ["['w']"]
  for _, state in history:
    assert _nan_leaves(state.momentum) == ["['w']"]
  for updates, state in history[1:]:
    _utils.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like,
                                                        updates))
    assert int(state.info.status) == oa.LabpalStatus.RETRY
