"""Every method on a small CNN over 8 devices, in every parallel style.

Complements ``test_conformance.py`` (per-transformation pmap and sharded jit
on a toy regression) with a convolutional model that gives AdaS conv kernels
to factorise, and with shard_map, data-parallel jit and FSDP-style jit
(params and optimizer state sharded over the mesh, Explicit and Auto axis
types). Each run is compared with the single-device run of the same steps.

Tolerance (``_cnn_tasks.tolerance``): rtol=1e-4, atol=1e-5 on params, state
and losses after ``STEPS`` steps; rtol=1e-3, atol=1e-4 for LABPAL. Only the
order of the float32 reductions over the batch differs between the runs
(about 1e-7 relative per step); LABPAL divides finite differences of losses
by small distances, which amplifies it by about 100.

The default run covers each parallel style with one or two methods; the
whole method x style matrix runs under ``-m slow``.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optax_adaptive as oa
from tests import _cnn_tasks as T
from tests import _registry as R
from tests import _utils

STEPS = 4

MODES = ("pmap", "shard_map", "dp_jit", "fsdp_explicit", "fsdp_auto")
# (mode, method) pairs of the default (fast) run; the rest is slow.
FAST = {
    ("pmap", "pal"),
    ("shard_map", "labpal"),
    ("fsdp_explicit", "adas"),
    ("fsdp_explicit", "labpal"),
    ("fsdp_auto", "cprop_adam"),
    ("fsdp_auto", "autodrop_prodigy"),
}


def _cases():
  for mode in MODES:
    for method in T.METHODS + T.RECIPES:
      marks = () if (mode, method.name) in FAST else (pytest.mark.slow,)
      yield pytest.param(mode, method, marks=marks,
                         id=f"{mode}-{method.name}")


@pytest.fixture(autouse=True)
def _needs_devices():
  if jax.device_count() < T.N_DEVICES:
    pytest.skip(f"needs {T.N_DEVICES} devices")


def _require(method):
  try:
    method.build(None)
  except (ImportError, AttributeError) as e:
    pytest.skip(f"{method.name} has not landed: {e}")


@functools.cache
def _data():
  return T.make_data(steps=STEPS)


@functools.cache
def _reference(name):
  params, state, losses = T.run_single_device(
      T.METHODS_BY_NAME[name], _data(), STEPS)
  return jax.device_get((params, state, losses))


# ------------------------------------------------------------- the runs


def _split(tree, n, axis):
  """Splits ``axis`` of every leaf into (n, size / n) and moves n first."""
  def split(a):
    a = np.asarray(a)
    shape = (*a.shape[:axis], n, a.shape[axis] // n, *a.shape[axis + 1:])
    return np.moveaxis(a.reshape(shape), axis, 0)
  return jax.tree.map(split, tree)


def _run_pmap(method):
  n = T.N_DEVICES
  tx = method.build("batch")
  step = jax.pmap(T.make_step(method, tx, axis_name="batch"),
                  axis_name="batch")
  params = T.init_params()
  replicate = lambda t: jax.tree.map(lambda a: jnp.stack([a] * n), t)
  params, state = replicate(params), replicate(tx.init(params))
  losses = []
  for i in range(STEPS):
    batch = _split(T.batch_at(_data(), i), n, 0)
    approx = _split(T.approx_at(_data(), i), n, 1)
    params, state, value = step(params, state, batch, approx)
    losses.append(value[0])
  # Replicas agree exactly: every device applied the same reduced update.
  for leaf in jax.tree.leaves((params, state)):
    leaf = np.asarray(leaf)
    for d in range(1, n):
      np.testing.assert_array_equal(leaf[d], leaf[0])
  first = lambda t: jax.tree.map(lambda a: a[0], t)
  return first(params), first(state), jnp.stack(losses), None


def _explicit_mesh():
  return jax.make_mesh((T.N_DEVICES,), ("data",),
                       axis_types=(AxisType.Explicit,))


def _put(tree, mesh, spec):
  return jax.tree.map(
      lambda a: jax.device_put(a, NamedSharding(mesh, spec)), tree)


def _run_shard_map(method):
  mesh = _explicit_mesh()
  tx = method.build("data")
  with jax.set_mesh(mesh):
    # check_vma=False: gradients stay per-shard until the explicit pmean,
    # exactly as under pmap.
    step = jax.jit(jax.shard_map(
        T.make_step(method, tx, axis_name="data"), mesh=mesh,
        in_specs=(P(), P(), P("data"), P(None, "data")),
        out_specs=(P(), P(), P()), check_vma=False))
    params = _put(T.init_params(), mesh, P())
    state = _put(tx.init(T.init_params()), mesh, P())
    losses = []
    for i in range(STEPS):
      batch = _put(T.batch_at(_data(), i), mesh, P("data"))
      approx = _put(T.approx_at(_data(), i), mesh, P(None, "data"))
      params, state, value = step(params, state, batch, approx)
      losses.append(value)
  return params, state, jnp.stack(losses), None


def _run_jit(method, *, fsdp, axis_type):
  mesh = jax.make_mesh((T.N_DEVICES,), ("data",), axis_types=(axis_type,))
  out = T.run_on_mesh(method, _data(), STEPS, mesh, fsdp=fsdp)
  state, params = out["state"], out["params"]
  if axis_type == AxisType.Explicit:
    assert jax.tree.map(jax.typeof, state) == out["state_types0"]
  for before, leaf in zip(jax.tree.leaves(out["state_shardings0"]),
                          jax.tree.leaves(state)):
    assert leaf.sharding.is_equivalent_to(before, leaf.ndim), (
        f"state leaf {leaf.shape}: {before} -> {leaf.sharding}")
  shardings = out["param_shardings"]
  for leaf, sharding in zip(jax.tree.leaves(params),
                            jax.tree.leaves(shardings)):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
  return params, state, out["losses"], shardings


RUNS = {
    "pmap": _run_pmap,
    "shard_map": _run_shard_map,
    "dp_jit": functools.partial(_run_jit, fsdp=False,
                                axis_type=AxisType.Explicit),
    "fsdp_explicit": functools.partial(_run_jit, fsdp=True,
                                       axis_type=AxisType.Explicit),
    "fsdp_auto": functools.partial(_run_jit, fsdp=True,
                                   axis_type=AxisType.Auto),
}


# ------------------------------------------------------- state layout


def _params_like_subtrees(state, params):
  """Subtrees of ``state`` with exactly the structure of ``params``."""
  treedef = jax.tree.structure(params)
  is_params_like = lambda node: (
      isinstance(node, dict) and jax.tree.structure(node) == treedef)
  found, others = [], []
  for node in jax.tree.leaves(state, is_leaf=is_params_like):
    (found if is_params_like(node) else others).append(node)
  return found, others


def _assert_state_layout(state, shardings):
  """Params-shaped state mirrors the params' shardings, the rest is small
  and replicated."""
  mirrors, others = _params_like_subtrees(state, shardings)
  for mirror in mirrors:
    for leaf, sharding in zip(jax.tree.leaves(mirror),
                              jax.tree.leaves(shardings)):
      assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (
          f"params-shaped state {leaf.shape} is {leaf.sharding}, "
          f"its param is {sharding}")
  for leaf in others:
    assert leaf.sharding.is_fully_replicated, (
        f"small state {leaf.shape} is not replicated: {leaf.sharding}")
    assert leaf.size <= 64, f"state leaf {leaf.shape} is not small"
  return mirrors


# ------------------------------------------------------------------ tests


def test_every_public_transformation_runs_on_the_cnn():
  missing = R.missing_factories(
      f for m in T.METHODS + T.RECIPES for f in m.covers())
  assert not missing, f"tests/_cnn_tasks.py runs no {missing}"


@pytest.mark.parametrize(("mode", "method"), list(_cases()))
def test_matches_single_device(mode, method):
  _require(method)
  if mode == "fsdp_explicit":
    reason = T.RECIPE_LIMITS.get(method.name, {}).get("explicit_fsdp")
    if reason:
      pytest.skip(reason)
  params, state, losses, shardings = RUNS[mode](method)
  ref_params, ref_state, ref_losses = _reference(method.name)
  _utils.assert_tree_all_finite(params)
  tol = T.tolerance(method.name)
  _utils.assert_trees_all_close(losses, ref_losses, err_msg="losses", **tol)
  _utils.assert_trees_all_close(params, ref_params, err_msg="params", **tol)
  _utils.assert_trees_all_close(state, ref_state, err_msg="state", **tol)
  if mode.startswith("fsdp"):
    mirrors = _assert_state_layout(state, shardings)
    if method.name not in ("labpal",):  # LABPAL without momentum: none
      assert mirrors, "expected params-shaped optimizer state"


def _collectives_by_computation(hlo: str) -> dict[str, list[str]]:
  """Names of the all-gather ops of each computation of an HLO module."""
  out: dict[str, list[str]] = {}
  current = None
  for line in hlo.splitlines():
    header = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header:
      current = ("ENTRY " if header.group(1) else "") + header.group(2)
      out.setdefault(current, [])
    elif current and re.search(r"\ball-gather(-start)?\(", line):
      out[current].append(line.strip().split(" ")[0])
  return out


def test_adas_gathers_kernels_only_at_epoch_end():
  """With FSDP params, AdaS's per-step update is local; only the epoch-end
  SVD all-gathers the sharded kernels."""
  _require(T.METHODS_BY_NAME["adas"])
  mesh = _explicit_mesh()
  with jax.set_mesh(mesh):
    params = T.init_params()
    params = jax.tree.map(jax.device_put, params,
                          T.fsdp_shardings(params, mesh))
    tx = oa.adas(learning_rate=0.05, weight_decay=0.0)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    step_hlo = jax.jit(tx.update).lower(
        grads, state, params).compile().as_text()
    zeros = jax.tree.map(jnp.zeros_like, params)  # the epoch end alone
    end_epoch = jax.jit(lambda s, p: tx.update(
        zeros, s, p, end_of_epoch=True)[1])
    end_hlo = end_epoch.lower(state, params).compile().as_text()
    step_gathers = [g for gs in _collectives_by_computation(step_hlo).values()
                    for g in gs]
    end_gathers = [g for gs in _collectives_by_computation(end_hlo).values()
                   for g in gs]
    assert not step_gathers, step_gathers
    assert end_gathers, "the epoch-end SVD should gather sharded kernels"
    new_state = end_epoch(state, params)
    assert jax.tree.map(jax.typeof, new_state) == jax.tree.map(
        jax.typeof, state)
    _assert_state_layout(new_state, T.fsdp_shardings(params, mesh))


def test_pal_without_axis_name_differs_under_pmap():
  """Guards the test itself: PAL's extra loss must be pmean-ed under pmap.

  Without ``axis_name`` every replica fits its own parabola, so the replicas
  drift apart; the ``axis_name`` runs above must therefore be what keeps
  them equal.
  """
  method = T.METHODS_BY_NAME["pal"]
  n = T.N_DEVICES
  tx = method.build(None)
  step = jax.pmap(T.make_step(method, tx, axis_name="batch"),
                  axis_name="batch")
  params = T.init_params()
  replicate = lambda t: jax.tree.map(lambda a: jnp.stack([a] * n), t)
  params, state = replicate(params), replicate(tx.init(params))
  batch = _split(T.batch_at(_data(), 0), n, 0)
  approx = _split(T.approx_at(_data(), 0), n, 1)
  params, _, _ = step(params, state, batch, approx)
  kernel = np.asarray(params["dense"]["kernel"])
  assert not all(np.array_equal(kernel[d], kernel[0]) for d in range(n))
