"""Tests of CProp's fused XLA:CPU kernels (optax_adaptive/_cpu_kernels.py).

The kernels must reproduce the pure-JAX update (the XLA path, forced here
with ``_cpu_kernels.xla_loops()``) for every variant, be used only
where they are valid, and keep ``vmap``, ``jvp`` and sharded ``jit`` working.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optax_adaptive as oa
from benchmarks import cprop_passes
from optax_adaptive import _cprop, _cpu_kernels
from tests._utils import assert_trees_all_close

KERNELS = (_cprop._ADAM_KERNEL, _cprop._WRAPPER_KERNEL)

pytestmark = pytest.mark.skipif(
    _cpu_kernels._library_path() is None,
    reason="the CPU kernel library was not built (no C++17 compiler at "
           "install time); CProp then runs on XLA's loops")


def _problem(size=3000, seed=0):
  rng = np.random.default_rng(seed)
  params = {"w": jnp.asarray(rng.normal(size=(size // 30, 30)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=7), jnp.float32)}
  grads = []
  for step in range(4):
    g = jax.tree.map(
        lambda p, step=step: jnp.asarray(
            rng.normal(size=p.shape) * 0.3 + 0.1 * p, jnp.float32), params)
    if step == 1:  # a zero gradient, and a leaf of zeros
      g = {"w": g["w"].at[0, :5].set(0.0), "b": jnp.zeros_like(g["b"])}
    grads.append(g)
  return params, grads


def _run(tx, params, grads, jit=True):
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params)
  history = []
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    history.append((updates, state))
  return history


def _uses_kernel(tx, params, grads) -> bool:
  state = tx.init(params)
  text = jax.jit(tx.update).lower(grads, state, params).as_text()
  return "optax_adaptive_cprop" in text


def test_kernels_pass_their_self_tests():
  for kernel in KERNELS:
    assert kernel.unavailable_reason is None, kernel.unavailable_reason


_ADAM_VARIANTS = [
    dict(),
    dict(cdf="normal"),
    dict(cdf="bfo", track_mean_scale=False),
    dict(cdf="logistic", c=0.7),
    dict(b2=0.99),  # CProp keeps its own v
    dict(weight_decay=0.05),
    dict(weight_decay=0.05, b2=0.995, cdf="normal"),
    dict(learning_rate=optax.linear_schedule(0.1, 0.01, 4), beta=0.9),
    dict(beta=0.0),  # n - 1 == 0 at every step: sigma^2 := 0
    dict(cprop_eps=0.0),
]


def _id(kwargs):
  return ",".join(f"{k}={'schedule' if callable(v) else v}"
                  for k, v in kwargs.items()) or "defaults"


@pytest.mark.parametrize("kwargs", _ADAM_VARIANTS, ids=_id)
def test_fused_kernel_matches_xla_path(kwargs):
  kwargs = {"learning_rate": 0.01, **kwargs}
  params, grads = _problem()
  tx = oa.cprop_adam(**kwargs)
  assert _uses_kernel(tx, params, grads[0])
  got = _run(tx, params, grads)
  with _cpu_kernels.xla_loops():
    assert not _uses_kernel(oa.cprop_adam(**kwargs), params, grads[0])
    expected = _run(oa.cprop_adam(**kwargs), params, grads)
  assert_trees_all_close(got, expected, rtol=2e-5, atol=1e-9)


_WRAPPED = [
    pytest.param(lambda: optax.adam(1e-2), dict(), id="adam"),
    pytest.param(lambda: optax.sgd(0.1, momentum=0.9),
                 dict(cdf="normal", c=3.0), id="sgd-momentum,normal"),
    pytest.param(lambda: optax.sgd(0.1), dict(cdf="bfo", beta=0.9),
                 id="sgd,bfo"),
    pytest.param(optax.identity, dict(cdf="logistic", track_mean_scale=False),
                 id="identity,logistic,untracked"),
]


@pytest.mark.parametrize("make_inner,kwargs", _WRAPPED)
def test_wrapper_kernel_matches_xla_path(make_inner, kwargs):
  params, grads = _problem(seed=1)
  tx = oa.cprop(make_inner(), **kwargs)
  assert _uses_kernel(tx, params, grads[0])
  got = _run(tx, params, grads)
  with _cpu_kernels.xla_loops():
    expected = _run(oa.cprop(make_inner(), **kwargs), params, grads)
  assert_trees_all_close(got, expected, rtol=2e-5, atol=1e-9)


def test_eager_and_jit_agree():
  params, grads = _problem(seed=2)
  tx = oa.cprop_adam(0.01)
  # Eager per-step scalars (bias corrections) round differently; the
  # tolerance of the conformance battery's check (k).
  assert_trees_all_close(_run(tx, params, grads, jit=False),
                         _run(tx, params, grads), rtol=1e-5, atol=1e-6)


def test_kernel_only_for_float32_leaves():
  params, grads = _problem()
  half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), (params, grads[0]))
  assert not _uses_kernel(oa.cprop_adam(0.01), *half)
  assert not _uses_kernel(oa.cprop(optax.sgd(0.1)), *half)
  # A bfloat16 run still works (XLA path), in float32 statistics.
  history = _run(oa.cprop_adam(0.01), half[0], [half[1]] * 2)
  assert history[-1][0]["w"].dtype == jnp.bfloat16
  assert history[-1][1].mu["w"].dtype == jnp.float32


def test_kernel_updates_state_in_place():
  size = 1 << 16
  for tx in (oa.cprop_adam(1e-3), oa.cprop(optax.adam(1e-3))):
    text = cprop_passes.compiled_update_hlo(tx, size)
    loops = cprop_passes.leaf_loops(text, size)
    assert [loop.opcode for loop in loops].count("copy") == 0, loops
    calls = [loop for loop in loops if loop.opcode == "custom-call"]
    assert len(calls) == 1, loops


@pytest.mark.parametrize("xla_loops", [False, True])
def test_nan_gradient_makes_mean_scale_nan_on_large_leaves(xla_loops):
  # XLA:CPU fuses a jnp.minimum feeding a sum into a kernel that drops NaNs
  # over large arrays; _cprop._scale is a select for that reason. Both paths
  # keep the documented NaN propagation (tests/test_nonfinite.py).
  params = {"w": jnp.ones((40_000,), jnp.float32)}
  grads = {"w": jnp.full((40_000,), 0.1, jnp.float32).at[5].set(jnp.nan)}
  for tx in (oa.cprop_adam(1e-3), oa.cprop(optax.sgd(0.1))):
    with (_cpu_kernels.xla_loops() if xla_loops
          else contextlib.nullcontext()):
      update = jax.jit(tx.update)
      _, state = update(grads, tx.init(params), params)
    assert np.isnan(float(state.mean_scale))


def test_vmap_and_grad_use_the_reference():
  params, grads = _problem(size=300, seed=3)
  tx = oa.cprop_adam(0.01)
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads[:3])

  def updates_of(g, p):
    return tx.update(g, tx.init(p), p)[0]

  batched = jax.jit(jax.vmap(updates_of, in_axes=(0, None)))(stacked, params)
  for i, g in enumerate(grads[:3]):
    assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], batched),
                           updates_of(g, params), rtol=1e-5, atol=1e-9)

  def loss(p):
    updates = updates_of(jax.tree.map(lambda x: x * 0.5, p), p)
    return sum(jnp.sum(u * u) for u in jax.tree.leaves(updates))

  got = jax.jit(jax.grad(loss))(params)
  with _cpu_kernels.xla_loops():
    expected = jax.jit(jax.grad(loss))(params)
  assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-12)


def test_sharded_jit_uses_xla_loops_and_keeps_sharding():
  # Auto axes (GSPMD): the primitive is traced, and lowered to XLA's loops.
  mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Auto,))
  params, grads = _problem(size=2400)
  sharding = NamedSharding(mesh, P("x"))
  put = lambda tree: jax.tree.map(
      lambda x: jax.device_put(x, sharding if x.shape[0] % 8 == 0 else
                               NamedSharding(mesh, P())), tree)
  tx = oa.cprop_adam(0.01)
  state = jax.jit(tx.init)(put(params))
  update = jax.jit(tx.update)
  compiled = update.lower(put(grads[0]), state, put(params)).compile()
  assert "optax_adaptive_cprop" not in compiled.as_text()
  updates, new_state = update(put(grads[0]), state, put(params))
  assert new_state.mu["w"].sharding.is_equivalent_to(sharding, 2)
  single = _run(tx, params, grads[:1])[0]
  assert_trees_all_close((updates, new_state), single, rtol=2e-5, atol=1e-9)


def test_pmap_uses_the_kernel():
  params, grads = _problem(size=300)
  tx = oa.cprop_adam(0.01)
  n = 2
  replicate = lambda tree: jax.tree.map(
      lambda x: jnp.stack([x] * n), tree)
  update = jax.pmap(tx.update, devices=jax.devices()[:n])
  state = replicate(tx.init(params))
  text = update.lower(replicate(grads[0]), state,
                      replicate(params)).as_text()
  assert "optax_adaptive_cprop" in text
  updates, _ = update(replicate(grads[0]), state, replicate(params))
  single = _run(tx, params, grads[:1])[0][0]
  assert_trees_all_close(jax.tree.map(lambda x: x[1], updates), single,
                         rtol=1e-6)


def test_disable_variable(monkeypatch):
  monkeypatch.setenv(_cpu_kernels.DISABLE_VARIABLE, "0")
  assert "OPTAX_ADAPTIVE_CPU_KERNELS=0" in _cpu_kernels.disabled_reason()
  monkeypatch.delenv(_cpu_kernels.DISABLE_VARIABLE)
  assert _cpu_kernels.disabled_reason() is None


def test_export_uses_xla_loops():
  params, grads = _problem(size=300)
  tx = oa.cprop_adam(0.01)
  state = tx.init(params)
  exported = jax.export.export(jax.jit(tx.update), platforms=("cpu",))(
      grads[0], state, params)
  assert "optax_adaptive_cprop" not in exported.mlir_module()
  updates, _ = exported.call(grads[0], state, params)
  assert_trees_all_close(updates, _run(tx, params, grads[:1])[0][0],
                         rtol=2e-5, atol=1e-9)
