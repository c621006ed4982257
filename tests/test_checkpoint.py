"""Checkpoint and resume of every method with orbax, in a fresh process.

For each method the test trains ``SAVE_AT`` steps of the CNN, saves params
and the full optimizer state with :class:`orbax.checkpoint.StandardCheckpointer`
at a point where every method is mid-way through something (LABPAL has a
measurement pending and a partly filled ring buffer, AdaS is mid-epoch,
AutoDrop mid-window), and runs on to ``TOTAL`` steps. A fresh Python process
(``tests/_checkpoint_worker.py``) restores the checkpoint, checks it, and
continues; its final params and state must equal the uninterrupted run's
bit for bit (CPU, same compiled step). Restoring into an FSDP layout over 8
devices is checked too: same values, requested shardings, and a sharded
continuation within float32 tolerance.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import optax_adaptive as oa
from tests import _checkpoint_worker as W
from tests import _cnn_tasks as T
from tests import _registry as R
from tests import _utils

REPO = pathlib.Path(__file__).resolve().parent.parent
WORKER_TIMEOUT_S = 540

FAST_METHODS = ("labpal",)
SLOW_METHODS = tuple(m.name for m in T.METHODS if m.name not in FAST_METHODS)


def _available(names):
  out = []
  for name in names:
    try:
      T.METHODS_BY_NAME[name].build(None)
      out.append(name)
    except (ImportError, AttributeError):
      pass
  if not out:
    pytest.skip(f"none of {names} has landed")
  return out


def _assert_mid_training(name, state):
  """The checkpoint is taken in the middle of something stateful."""
  if name == "labpal":
    assert bool(state.pending), "LABPAL should have a measurement pending"
    assert int(state.hist_count) >= 1, "ring buffer should be partly full"
    assert int(state.hist_count) < state.hist_step.shape[0]
  if name == "adas":
    counts = [s for s in jax.tree.leaves(state) if s.dtype == np.int32]
    assert W.SAVE_AT % 2 == 1  # steps_per_epoch=2: mid-epoch
    assert counts, "AdaS state should hold its step counter"
  if name in ("autodrop", "cprop_autodrop", "autodrop_prodigy"):
    (lib,) = [s for s in _library_states(state)
              if type(s).__name__ == "AutoDropState"]
    assert int(lib.window_step) != 0, "AutoDrop should be mid-window"


def _library_states(state):
  from optax_adaptive._diagnostics import find_states
  return find_states(state)


def _train_and_save(directory, name, data):
  """Uninterrupted run; checkpoint at SAVE_AT; returns the final leaves."""
  method = T.METHODS_BY_NAME[name]
  tx = method.build(None)
  params = T.init_params()
  state = tx.init(params)
  step = jax.jit(T.make_step(method, tx))
  checkpointer = ocp.StandardCheckpointer()
  for i in range(W.TOTAL):
    if i == W.SAVE_AT:
      _assert_mid_training(name, state)
      tree = {"params": params, "opt_state": state}
      checkpointer.save((directory / name / "ckpt").absolute(), tree)
      checkpointer.wait_until_finished()
      np.savez(directory / name / "saved.npz",
               *[np.asarray(x) for x in jax.tree.leaves(tree)])
    params, state, _ = step(params, state, T.batch_at(data, i),
                            T.approx_at(data, i))
  return [np.asarray(x) for x in jax.tree.leaves((params, state))]


def _run_worker(directory, names, mode):
  command = [sys.executable, "-m", "tests._checkpoint_worker",
             str(directory), "--methods", ",".join(names), "--mode", mode]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          timeout=WORKER_TIMEOUT_S, env=dict(os.environ))
  assert result.returncode == 0, (
      f"worker failed:\n{result.stdout}\n{result.stderr[-5000:]}")


def _check(tmp_path, names, mode):
  data = T.make_data(steps=W.TOTAL)
  np.savez(tmp_path / "data.npz", **data)
  expected = {name: _train_and_save(tmp_path, name, data) for name in names}
  _run_worker(tmp_path, names, mode)
  for name in names:
    with np.load(tmp_path / name / f"{mode}.npz") as f:
      resumed = [f[f"arr_{i}"] for i in range(len(f.files))]
    if mode == "single":
      _utils.assert_trees_all_equal(resumed, expected[name], err_msg=name)
    else:
      _utils.assert_trees_all_close(resumed, expected[name], err_msg=name,
                                    **T.tolerance(name))


def test_resume_in_fresh_process_is_bit_exact(tmp_path):
  _check(tmp_path, _available(FAST_METHODS), "single")


@pytest.mark.slow
def test_resume_in_fresh_process_is_bit_exact_all_methods(tmp_path):
  _check(tmp_path, _available(SLOW_METHODS), "single")


@pytest.mark.slow  # a fresh process; the default tier runs one (LABPAL)
def test_recipes_resume_in_fresh_process_is_bit_exact(tmp_path):
  """The recipes of docs/choosing.md. Their FSDP restore is not
  checked: the worker's FSDP layout uses Explicit mesh axes, on which
  prodigy cannot update (``T.RECIPE_LIMITS``)."""
  _check(tmp_path, [m.name for m in T.RECIPES], "single")


@pytest.mark.slow
def test_restore_into_fsdp_layout(tmp_path):
  _check(tmp_path, _available([m.name for m in T.METHODS]), "fsdp")


_NNX_BLOCKS = {
    "setup": "# nnx: the model, tx and train step",
    "save": "# nnx: train, then save the model and the optimizer",
    "restore": "# nnx: restore the model and the optimizer",
    "continue": "# nnx: continue training",
}


def _nnx_recipe_blocks():
  """The nnx recipe's python blocks of docs/checkpointing.md, by role."""
  from tests.test_docs import parse_blocks
  page = REPO / "docs" / "checkpointing.md"
  blocks = {}
  for block in parse_blocks(page.read_text(encoding="utf-8"), page):
    for role, title in _NNX_BLOCKS.items():
      if block.code.startswith(title):
        blocks[role] = block.code
  assert set(blocks) == set(_NNX_BLOCKS), f"found only {sorted(blocks)}"
  return blocks


def _run_recipe(blocks, roles, directory, out):
  """Runs the blocks in a fresh Python process; saves the final states."""
  code = "\n".join(
      [f"import pathlib\ndirectory = pathlib.Path({str(directory)!r})"]
      + [blocks[role] for role in roles]
      + ["import jax as _jax, numpy as _np",
         f"_np.savez({str(out)!r}, *[_np.asarray(a) for a in _jax.tree.leaves("
         "(nnx.state(model), nnx.state(optimizer)))])"])
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                          capture_output=True, text=True,
                          timeout=WORKER_TIMEOUT_S, env=dict(os.environ))
  assert result.returncode == 0, f"{roles}:\n{result.stderr[-5000:]}"
  with np.load(out) as f:
    return [f[f"arr_{i}"] for i in range(len(f.files))]


@pytest.mark.slow  # a fresh process; the default tier runs one (LABPAL)
def test_nnx_recipe_of_the_docs_resumes_bit_exactly(tmp_path):
  """docs/checkpointing.md's nnx recipe, as written, in two processes.

  The first process trains, saves and trains on; the second restores and
  trains on. Saving only ``nnx.state(optimizer)``, which holds no model
  params, would restart the second from the initial weights.
  """
  blocks = _nnx_recipe_blocks()
  uninterrupted = _run_recipe(blocks, ("setup", "save", "continue"),
                              tmp_path, tmp_path / "uninterrupted.npz")
  resumed = _run_recipe(blocks, ("setup", "restore", "continue"), tmp_path,
                        tmp_path / "resumed.npz")
  _utils.assert_trees_all_equal(resumed, uninterrupted)


def test_linen_train_state_round_trip(tmp_path):
  train_state_cls = oa.TrainState
  tx = T.METHODS_BY_NAME["cprop_autodrop"].build(None)
  params = T.init_params()
  state = train_state_cls.create(apply_fn=T.apply, params=params, tx=tx)
  grads = jax.tree.map(np.ones_like, params)
  state = state.apply_gradients(grads=grads)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "linen", state)
  checkpointer.wait_until_finished()
  abstract = jax.eval_shape(lambda: train_state_cls.create(
      apply_fn=T.apply, params=params, tx=tx))
  restored = checkpointer.restore(tmp_path / "linen", abstract)
  assert isinstance(restored, train_state_cls)
  assert int(restored.step) == int(state.step) == 1  # a Python int in state
  _utils.assert_trees_all_equal(restored.params, state.params)
  _utils.assert_trees_all_equal(restored.opt_state, state.opt_state)


# ------------------------------------------- every method, any model kind


# The default tier saves each case's state for the MLP (the model that once
# broke AdaS); the CNN runs with -m slow.
@pytest.mark.parametrize("model", [
    _utils.mlp_problem, pytest.param(_utils.cnn_problem, marks=pytest.mark.slow)
], ids=["mlp", "cnn"])
@pytest.mark.parametrize("case", R.params(R.CASES))
def test_every_method_state_is_checkpointable(tmp_path, case, model):
  """orbax saves and restores every public factory's state, any model.

  A model without conv layers once left AdaS with zero-size per-layer
  arrays, which ``StandardCheckpointer`` refuses.
  """
  params, objective = model()
  tx = case.build()
  step = jax.jit(R.make_step(case, tx, objective))
  state = tx.init(params)
  for _ in range(2):
    params, state, _ = step(params, state)
  tree = {"params": params, "opt_state": state}
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", tree)
  checkpointer.wait_until_finished()
  abstract = jax.eval_shape(lambda: {"params": params,
                                     "opt_state": tx.init(params)})
  restored = checkpointer.restore(tmp_path / "ckpt", abstract)
  _utils.assert_trees_all_equal(restored, tree)
  # and it continues from the restored state like from the original
  expected = step(params, state)
  _utils.assert_trees_all_equal(
      step(restored["params"], restored["opt_state"]), expected)
