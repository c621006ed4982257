# Copyright 2026 The optax_adaptive Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
# ==============================================================================
"""Degenerate input for every public transformation.

All-zero gradients and parameters, empty pytrees, ``None`` leaves,
``optax.masked`` holes, leaves with a zero-sized axis, 1x1 / depthwise /
empty conv kernels (AdaS), and integer leaves. Each gives a finite result or
a clear error naming the problem.

Policy for non-float leaves (int, bool, complex): every method raises a
``TypeError`` naming the leaf path at ``init``, as optax's convention is to
exclude such leaves with ``optax.masked``; the transformations that may be
masked then leave them untouched. PAL/LABPAL must be outermost, so their
message says to keep such leaves out of the params instead.
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
from tests._registry import CASES

_IDS = R.ids(CASES)
# optax.contrib.prodigy itself returns NaN for all-zero gradients and for an
# empty tree (0/0 in its step-size estimate); recipes built on it inherit it.
_PRODIGY_RECIPES = {"autodrop_prodigy", "autodrop_prodigy_inner"}


def _skip_prodigy_recipes(case):
  if case.name in _PRODIGY_RECIPES:
    pytest.skip("optax.contrib.prodigy gives NaN for zero gradients and"
                " empty trees (upstream); the recipe inherits it")


def _loss(params):
  """Sum of squares over the float leaves (None and holes skipped)."""
  leaves = jax.tree.leaves(params)
  return sum((jnp.sum(jnp.square(x.astype(jnp.float32) - 1.0))
              for x in leaves), jnp.zeros((), jnp.float32))


def _run(case, params, grads=None, steps=2, tx=None, jit=True):
  """``steps`` updates; returns the last updates, state and params."""
  tx = case.build() if tx is None else tx
  state = tx.init(params)

  def step(params, state):
    value = _loss(params)
    grad = (jax.grad(_loss)(params) if grads is None else grads)
    kwargs = R.extra_kwargs(case, _loss, params, value, grad)
    updates, state = tx.update(grad, state, params, **kwargs)
    return updates, state, optax.apply_updates(params, updates)

  step = jax.jit(step) if jit else step
  for _ in range(steps):
    updates, state, params = step(params, state)
  return updates, state, params


def _adas_end_of_epoch(case, state, params):
  """AdaS's state after an update with zero gradients that ends an epoch."""
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx = case.build(steps_per_epoch=None)  # epochs end where flagged
  update = functools.partial(tx.update, end_of_epoch=True)
  return jax.jit(update)(zeros, state, params)[1]


def _assert_finite(tree):
  inexact = [x for x in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  _utils.assert_tree_all_finite(inexact)


def _zero_params():
  return {"conv": {"kernel": jnp.zeros((3, 3, 2, 4)), "bias": jnp.zeros(4)},
          "dense": {"kernel": jnp.zeros((4, 2))}, "scalar": jnp.zeros(())}


# --------------------------------------------------------- zero gradients


@pytest.mark.parametrize("case", R.params(CASES))
def test_zero_gradients_and_zero_params(case):
  """All-zero gradients on all-zero params: finite, and no movement."""
  _skip_prodigy_recipes(case)
  params = _zero_params()
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, state, new_params = _run(case, params, grads)
  _assert_finite((updates, state))
  _utils.assert_trees_all_equal(updates, grads)  # exactly zero
  _utils.assert_trees_all_equal(new_params, params)
  if case.name.startswith("adas"):  # epoch end on zero kernels
    state = _adas_end_of_epoch(case, state, params)
    _assert_finite(state)
    assert np.all(np.asarray(state.layer_lr) > 0)
    assert np.all(np.asarray(state.gain) == 0.0)  # a zero kernel: rank 0



# ------------------------------------------------------------ empty trees


@pytest.mark.parametrize("case", R.params(CASES))
@pytest.mark.parametrize("empty", [(), {"a": {}, "b": ()}],
                         ids=["tuple", "nested"])
def test_empty_pytrees(case, empty):
  _skip_prodigy_recipes(case)
  updates, state, params = _run(case, empty, grads=empty, steps=2)
  assert jax.tree.structure(updates) == jax.tree.structure(empty)
  assert jax.tree.structure(params) == jax.tree.structure(empty)
  _assert_finite(state)


@pytest.mark.parametrize("case", R.params(CASES))
def test_zero_sized_leaves(case):
  """Leaves with a zero-sized axis next to ordinary ones."""
  params = {"empty": jnp.zeros((0, 4)), "conv": {"kernel": jnp.ones(
      (3, 3, 0, 4))}, "w": jnp.array([3.0, -1.0])}
  updates, state, new_params = _run(case, params)
  _assert_finite((updates, state, new_params))
  assert updates["empty"].shape == (0, 4)
  assert updates["conv"]["kernel"].shape == (3, 3, 0, 4)
  assert float(_loss(new_params)) < float(_loss(params))
  if case.name.startswith("adas"):
    _assert_finite(_adas_end_of_epoch(case, state, new_params))


# -------------------------------------------------------- None and holes


@pytest.mark.parametrize("case", R.params(CASES))
def test_none_leaves(case):
  """None in params and grads is an empty subtree, kept as None."""
  params = {"w": jnp.array([3.0, -1.0]), "frozen": None,
            "layer": {"kernel": jnp.ones((2, 2)), "bias": None}}
  updates, state, new_params = _run(case, params)
  assert updates["frozen"] is None and updates["layer"]["bias"] is None
  assert new_params["frozen"] is None
  _assert_finite((updates, state))
  assert float(_loss(new_params)) < float(_loss(params))


_MASK = {"w": True, "frozen": False, "layer": {"kernel": True, "bias": False}}


def _masked_params():
  return {"w": jnp.array([3.0, -1.0]), "frozen": jnp.array([5.0, 6.0]),
          "layer": {"kernel": jnp.ones((2, 2)) * 2, "bias": jnp.ones(2)}}


@pytest.mark.parametrize("case", R.params(CASES))
def test_masked_holes(case):
  """Inside optax.masked the holes are MaskedNode; line searches refuse."""
  params = _masked_params()
  tx = optax.masked(case.build(), _MASK)
  if case.line_search:
    with pytest.raises(ValueError, match="must be the outermost"):
      _run(case, params, tx=tx, steps=1)
    return
  grads = jax.grad(_loss)(params)
  updates, state, _ = _run(case, params, grads, tx=tx)
  _assert_finite((updates, state))
  # masked-out leaves pass through untouched (optax.masked's contract)
  _utils.assert_trees_all_equal(updates["frozen"], grads["frozen"])
  _utils.assert_trees_all_equal(updates["layer"]["bias"],
                                grads["layer"]["bias"])
  assert not np.allclose(updates["w"], grads["w"])


# ---------------------------------------------------------- integer leaves


@pytest.mark.parametrize("case", CASES, ids=_IDS)
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.complex64],
                         ids=["int32", "bool", "complex64"])
def test_non_float_leaves_are_rejected_by_name(case, dtype):
  params = {"w": jnp.ones(3), "model": {"step": jnp.zeros((), dtype)}}
  tx = case.build()
  with pytest.raises(TypeError, match=r"\['model'\]\['step'\] has dtype"):
    tx.init(params)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          params)
  with pytest.raises(TypeError, match="only real floating-point leaves"):
    jax.eval_shape(tx.init, abstract)


@pytest.mark.parametrize("case", CASES, ids=_IDS)
def test_integer_leaf_error_says_how_to_fix(case):
  params = {"w": jnp.ones(3), "step": jnp.zeros((), jnp.int32)}
  fix = ("keep it out of the params" if case.line_search
         else "optax.masked")
  with pytest.raises(TypeError, match=fix):
    case.build().init(params)


@pytest.mark.parametrize(
    "case", R.params(c for c in CASES if not c.line_search))
def test_integer_leaves_masked_out_are_untouched(case):
  """The documented fix: mask float leaves; the counter is left as it is."""
  params = {"w": jnp.array([3.0, -1.0]), "step": jnp.array(7, jnp.int32)}
  is_float = jax.tree.map(
      lambda x: jnp.issubdtype(x.dtype, jnp.floating), params)
  tx = optax.masked(case.build(), is_float)
  grads = {"w": 2 * (params["w"] - 1.0), "step": jnp.zeros((), jnp.int32)}
  updates, state, new_params = _run(case, params, grads, tx=tx)
  _assert_finite((updates, state))
  assert updates["step"].dtype == jnp.int32 and int(updates["step"]) == 0
  assert int(new_params["step"]) == 7
  assert new_params["step"].dtype == jnp.int32


# ------------------------------------------------- AdaS: degenerate kernels

# One tree with every degenerate conv kernel: all-zero, 1x1, depthwise
# (in=1) and zero-sized in/out channels (shapes chosen to share EVBMF
# compilations; 1x1 matrices are in test_evbmf_of_empty_and_tiny_matrices).
_KERNELS = {
    "conv0_zero": (1, 1, 4, 4),
    "conv1_pointwise": (1, 1, 4, 4),
    "conv2_depthwise": (3, 3, 1, 4),
    "conv3_no_inputs": (3, 3, 0, 4),
    "conv4_no_outputs": (3, 3, 4, 0),
}


def _degenerate_cnn():
  keys = jax.random.split(jax.random.key(0), len(_KERNELS))
  params = {}
  for key, (name, shape) in zip(keys, _KERNELS.items()):
    kernel = jax.random.normal(key, shape) * 0.1
    if name == "conv0_zero":
      kernel = jnp.zeros(shape)
    params[name] = {"kernel": kernel, "bias": jnp.zeros(shape[-1])}
  params["head"] = {"kernel": jnp.ones((4, 2)) * 0.1}
  return params


def test_adas_degenerate_kernels():
  """Epoch ends counted by update, then one flagged with end_of_epoch."""
  params = _degenerate_cnn()
  tx = oa.adas(learning_rate=0.05, steps_per_epoch=2)
  state = tx.init(params)
  assert oa.adas_layer_names(state) == tuple(_KERNELS)
  step = jax.jit(tx.update)
  for epoch in range(2):
    for _ in range(2):
      grads = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), params)
      updates, state = step(grads, state, params)
      params = optax.apply_updates(params, updates)
    assert int(state.epoch) == epoch + 1
    _assert_finite((updates, state, params))
    assert np.all(np.asarray(state.layer_lr) >= 1e-20)
  zeros = jax.tree.map(jnp.zeros_like, params)
  flagged = oa.adas(learning_rate=0.05, weight_decay=0.0)
  _, state = jax.jit(functools.partial(flagged.update, end_of_epoch=True))(
      zeros, state, params)
  _assert_finite(state)
  gain = dict(zip(_KERNELS, np.asarray(state.gain)))
  assert gain["conv3_no_inputs"] == 0.0 and gain["conv4_no_outputs"] == 0.0


@pytest.mark.parametrize("shape", [(3, 3, 0, 4), (3, 3, 4, 0), (0, 3, 2, 2),
                                   (0, 5), (4, 0)])
def test_knowledge_gain_of_empty_kernel(shape):
  kg = oa.knowledge_gain(jnp.ones(shape))
  _assert_finite(kg)
  assert float(kg.gain) == 0.0
  assert int(kg.input_rank) == 0 and int(kg.output_rank) == 0


def test_evbmf_of_empty_and_tiny_matrices():
  for shape in [(0, 4), (4, 0), (2, 0, 3)]:
    result = oa.evbmf(jnp.ones(shape))
    assert result.rank.shape == shape[:-2]
    assert result.singular_values.shape == (*shape[:-2], min(shape[-2:]))
    assert np.all(np.asarray(result.rank) == 0)
  for matrix in (jnp.zeros((1, 1)), jnp.ones((1, 1)), jnp.zeros((3, 5))):
    result = oa.evbmf(matrix)
    _assert_finite(result)
    assert int(result.rank) == 0
