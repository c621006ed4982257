"""Tests of CProp (optax_adaptive/_cprop.py), formulas of docs/cprop.md."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_adaptive as oa
from optax_adaptive import _cprop
from optax_adaptive._cprop import (
    CPropAdamState,
    CPropState,
    cprop,
    cprop_adam,
    cprop_sgd,
)
from tests._utils import (
    assert_tree_all_finite,
    assert_trees_all_close,
    assert_trees_all_equal,
)

# ----------------------------------------------------------------- helpers


@jax.jit
def _scale_trace(grads, beta, c):
  """Per-step s of a scalar parameter for every CDF (via ``mean_scale``)."""
  out = {}
  for cdf in _cprop.CDFS:
    tx = cprop(optax.identity(), beta=beta, c=c, cdf=cdf)

    def step(state, g, tx=tx):
      _, state = tx.update(g, state)
      return state, state.mean_scale

    _, out[cdf] = jax.lax.scan(step, tx.init(jnp.zeros(())), grads)
  return out


def scales(grads, beta, c=1.0):
  grads = jnp.asarray(grads, jnp.float32)
  return _scale_trace(grads, jnp.float32(beta), jnp.float32(c))


def rtol_for(values):
  """rtol 1e-5, or 1e-3 for values below 1e-3 (float32 z-test of tiny s)."""
  return np.where(np.abs(np.asarray(values)) < 1e-3, 1e-3, 1e-5)


def assert_scales(actual, expected):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected)
  np.testing.assert_array_less(
      np.abs(actual - expected), rtol_for(expected) * np.abs(expected) + 1e-12)


def random_tree(key, dtype=jnp.float32):
  k1, k2 = jax.random.split(key)
  return {"w": jax.random.normal(k1, (3, 4), dtype),
          "b": jax.random.normal(k2, (5,), dtype)}


# ------------------------------------------- hand-checkable test vectors


@pytest.mark.parametrize("beta", [0.9, 0.999])
@pytest.mark.parametrize("g", [1.0, -0.3])
def test_constant_gradient_gives_min_one_c(beta, g):
  for c, expected in [(1.0, 1.0), (0.5, 0.5), (3.0, 1.0)]:
    out = scales([g] * 4, beta, c)
    for cdf in _cprop.CDFS:
      np.testing.assert_allclose(out[cdf], expected, rtol=1e-6, err_msg=cdf)


def test_zero_gradient_gives_zero_scale():
  out = scales([0.0] * 4, 0.999)
  for cdf in _cprop.CDFS:
    np.testing.assert_array_equal(out[cdf], 0.0)


# (grads, beta, c) -> {cdf: expected s per step}, computed by hand and in
# float64 (scipy) from the formulas of docs/cprop.md, "Algorithm".
VECTORS = [
    ([1, -1], 0.9, 1.0, {"normal": [1, 0.0398776], "bft": [1, 0.039923]}),
    ([1, -1], 0.9, 5.0, {"normal": [1, 0.199388]}),
    ([2, 1], 0.9, 1.0, {"normal": [1, 0.994890], "bft": [1, 0.995163]}),
    ([1, -1, 1, -1], 0.999, 1.0, {
        "normal": [1, 3.98942e-4, 0.382661, 6.90643e-4],
        "bft": [1, 3.99400e-4, 0.382940, 6.91414e-4],
    }),
    ([1, -1, 1], 0.999, 1.0, {"bfo": [1, None, 0.401286],
                              "logistic": [1, None, 0.424452]}),
    ([1, 0, 1, 0], 0.999, 1.0, {
        "normal": [1, 0.682205, 0.954338, 0.916272],
        "bft": [1, 0.682177, 0.954315, 0.916064],
    }),
    ([2, 1], 0.999, 1.0, {"normal": [1, 0.997282], "bft": [1, 0.997519]}),
]


@pytest.mark.parametrize("grads,beta,c,expected", VECTORS)
def test_scale_matches_float64_vectors(grads, beta, c, expected):
  out = scales(grads, beta, c)
  for cdf, values in expected.items():
    steps = [i for i, v in enumerate(values) if v is not None]
    assert_scales(out[cdf][np.array(steps)], [values[i] for i in steps])


def test_default_cdf_is_bft():
  grads = jnp.array([1.0, -1.0])
  tx = cprop(optax.identity(), beta=0.9)
  state = tx.init(jnp.zeros(()))
  for g in grads:
    _, state = tx.update(g, state)
  assert_scales([state.mean_scale], [0.039923])


def test_alternating_gradient_scale_settles_near_zero():  # s ≈ 0.012615
  grads = jnp.tile(jnp.array([1.0, -1.0]), 5000)
  out = scales(grads, 0.999)
  np.testing.assert_allclose(out["normal"][-1], 0.012615, rtol=2e-3)


@pytest.mark.parametrize("jit", [False, True])
def test_own_tanh_matches_float64_tanh(jit):
  tanh = jax.jit(_cprop._tanh_of_nonnegative) if jit else (
      _cprop._tanh_of_nonnegative)
  x = np.concatenate([
      [0.0], np.geomspace(1e-37, 1e-3, 2001), np.linspace(0.0, 30.0, 30001),
      [7.99, 7.9988117, 8.0, 1e13, np.float32(np.finfo(np.float32).max)],
  ]).astype(np.float32)
  actual = np.asarray(tanh(jnp.asarray(x)))
  expected = np.tanh(x.astype(np.float64))
  np.testing.assert_allclose(actual, expected, rtol=4e-7, atol=0)
  assert actual.dtype == np.float32
  # Saturation is exact 1 (s = 1 for a constant gradient); NaN stays.
  edge = np.asarray(tanh(jnp.array([8.0, 1e30, np.inf, np.nan], jnp.float32)))
  np.testing.assert_array_equal(edge[:3], 1.0)
  assert np.isnan(edge[3])


@pytest.mark.parametrize("degree", range(8))
def test_estrin_polynomial_matches_polyval(degree):
  coefficients = tuple(float(c) for c in np.arange(1, degree + 2) * 0.37)
  x = np.linspace(-2.0, 2.0, 41)
  np.testing.assert_allclose(
      _cprop._polynomial(coefficients, jnp.asarray(x, jnp.float32)),
      np.polyval(coefficients, x), rtol=2e-6, atol=1e-6)


@pytest.mark.usefixtures("x64")
def test_own_tanh_keeps_float64_precision():
  x = jnp.linspace(0.0, 10.0, 1001, dtype=jnp.float64)
  np.testing.assert_allclose(_cprop._tanh_of_nonnegative(x), np.tanh(x),
                             rtol=1e-15)


def test_step_one_is_exactly_one_for_every_beta():  # docs/cprop.md, Step 1
  g = jax.random.normal(jax.random.key(0), (100_000,))

  @jax.jit
  def first_update(g, beta):
    tx = cprop(optax.identity(), beta=beta)
    return tx.update(g, tx.init(g))

  for beta in [0.9, 0.99, 0.999, 0.9995, 0.9997, 0.9999]:
    u, state = first_update(g, jnp.float32(beta))
    np.testing.assert_array_equal(u, g, err_msg=f"beta={beta}")
    assert float(state.mean_scale) == 1.0


def test_noise_floor():  # E[s] ≈ 0.39 (c=1), 0.857 (c=5), docs/cprop.md
  coords, steps, tail = 1000, 20_000, 10_000
  txs = [cprop(optax.identity(), c=c) for c in (1.0, 5.0)]

  @jax.jit
  def run(key):
    def step(states, t):
      g = jax.random.normal(jax.random.fold_in(key, t), (coords,))
      states = [tx.update(g, s)[1] for tx, s in zip(txs, states, strict=True)]
      keep = t >= steps - tail
      return states, jnp.stack([s.mean_scale * keep for s in states])

    init = [tx.init(jnp.zeros(coords)) for tx in txs]
    _, means = jax.lax.scan(step, init, jnp.arange(steps))
    return means.sum(0) / tail

  mean_c1, mean_c5 = np.asarray(run(jax.random.key(1)))
  assert abs(mean_c1 - 0.39) < 0.01, mean_c1
  assert abs(mean_c5 - 0.857) < 0.02, mean_c5


# -------------------------------------------------------- wrapper semantics


def _run(tx, grads_seq, params):
  state = tx.init(params)
  update = jax.jit(tx.update)
  updates = []
  for g in grads_seq:
    u, state = update(g, state, params)
    updates.append(u)
  return updates, state


def _grads_seq(n=5, seed=0):
  return [random_tree(k) for k in jax.random.split(jax.random.key(seed), n)]


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_buffer_matches_plain_sgd(nesterov):
  params = random_tree(jax.random.key(9))
  grads = _grads_seq()
  sgd = optax.sgd(0.1, momentum=0.9, nesterov=nesterov)
  plain_updates, plain_state = _run(sgd, grads, params)
  for tx in (cprop(sgd), cprop_sgd(0.1, momentum=0.9, nesterov=nesterov)):
    updates, state = _run(tx, grads, params)
    buffers = jax.tree.leaves(state.inner_state, is_leaf=lambda x: isinstance(
        x, optax.TraceState))
    trace = next(b for b in buffers if isinstance(b, optax.TraceState))
    assert_trees_all_equal(trace, plain_state[0])
    # The scaled update is the plain update times s in [0, 1].
    ratio = jax.tree.map(lambda u, p: u / p, updates[-1], plain_updates[-1])
    assert all(np.all((r >= 0) & (r <= 1)) for r in jax.tree.leaves(ratio))


def test_cprop_sgd_statistics_ignore_weight_decay():
  params = random_tree(jax.random.key(3))
  grads = _grads_seq(3)
  _, with_wd = _run(cprop_sgd(0.1, weight_decay=0.5), grads, params)
  _, without = _run(cprop_sgd(0.1), grads, params)
  assert_trees_all_equal(with_wd.m, without.m)
  assert_trees_all_equal(with_wd.v, without.v)
  # No momentum buffer for a concrete momentum == 0.
  assert len(jax.tree.leaves(with_wd.inner_state)) == 0


def test_cprop_sgd_equals_its_definition():
  params = random_tree(jax.random.key(4))
  grads = _grads_seq(4)
  inner = optax.chain(optax.add_decayed_weights(0.01),
                      optax.sgd(0.05, momentum=0.9))
  expected, _ = _run(cprop(inner, beta=0.99, c=2.0, cdf="normal"), grads,
                     params)
  actual, _ = _run(cprop_sgd(0.05, 0.9, weight_decay=0.01, beta=0.99, c=2.0,
                             cdf="normal"), grads, params)
  assert_trees_all_equal(actual, expected)


def test_extra_args_are_forwarded_to_inner():
  def update(updates, state, params=None, *, value, **extra_args):
    del params, extra_args
    return jax.tree.map(lambda u: u * value, updates), state

  inner = optax.GradientTransformationExtraArgs(
      lambda p: optax.EmptyState(), update)
  tx = cprop(inner)
  g = jnp.ones(3)
  u, _ = tx.update(g, tx.init(g), value=2.0, unrelated=1)
  np.testing.assert_allclose(u, 2.0)  # s = 1 at step 1
  with pytest.raises(TypeError):
    tx.update(g, tx.init(g))


# --------------------------------------------------------------- fused


def _leaf_slots(state, params):
  n = len(jax.tree.leaves(params))
  shapes = {x.shape for x in jax.tree.leaves(params)}
  big = [x for x in jax.tree.leaves(state) if x.shape in shapes]
  return len(big) / n


def test_fused_matches_wrapped_when_not_shared():
  params = random_tree(jax.random.key(5))
  grads = _grads_seq(20, seed=1)
  kw = dict(b1=0.8, b2=0.99, eps=1e-7)
  wrapped = optax.chain(
      optax.add_decayed_weights(0.01),
      cprop(optax.adam(0.01, **kw), beta=0.999, c=2.0, eps=1e-6))
  fused = cprop_adam(0.01, weight_decay=0.01, beta=0.999, c=2.0,
                     cprop_eps=1e-6, **kw)
  exp_u, exp_s = _run(wrapped, grads, params)
  act_u, act_s = _run(fused, grads, params)
  assert_trees_all_close(act_u, exp_u, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(act_s.mean_scale, exp_s[1].mean_scale, rtol=1e-6)
  assert _leaf_slots(act_s, params) == 4
  assert _leaf_slots(exp_s, params) == 4


def test_fused_shares_second_moment_by_default():
  params = random_tree(jax.random.key(6))
  grads = _grads_seq(20, seed=2)
  act_u, act_s = _run(cprop_adam(0.01), grads, params)
  exp_u, exp_s = _run(cprop(optax.adam(0.01)), grads, params)
  assert isinstance(act_s, CPropAdamState) and act_s.v is None
  assert _leaf_slots(act_s, params) == 3
  assert_trees_all_close(act_u, exp_u, rtol=1e-5, atol=1e-9)
  assert_trees_all_close(act_s.nu, exp_s.v, rtol=1e-6)
  np.testing.assert_allclose(act_s.mean_scale, exp_s.mean_scale, rtol=1e-6)


def test_fused_sharing_is_structural_under_inject_hyperparams():
  # beta=None shares Adam's ν whatever inject_hyperparams traces, so the
  # injected optimizer has the plain one's state layout and values.
  params = random_tree(jax.random.key(7))
  grads = _grads_seq(3)
  plain_u, plain_s = _run(cprop_adam(0.01), grads, params)
  injected = optax.inject_hyperparams(cprop_adam)(learning_rate=0.01)
  u, state = _run(injected, grads, params)
  assert state.inner_state.v is None
  assert (jax.tree.structure(state.inner_state)
          == jax.tree.structure(plain_s))
  assert_trees_all_close(u, plain_u, rtol=1e-6, atol=0)
  assert_trees_all_close(state.inner_state, plain_s, rtol=1e-6, atol=0)


def test_fused_explicit_beta_keeps_its_own_second_moment():
  params = random_tree(jax.random.key(7))
  grads = _grads_seq(5)
  shared_u, shared_s = _run(cprop_adam(0.01), grads, params)
  own_u, own_s = _run(cprop_adam(0.01, beta=0.999), grads, params)
  assert shared_s.v is None and _leaf_slots(own_s, params) == 4
  assert_trees_all_close(own_s.v, shared_s.nu, rtol=1e-6, atol=0)
  assert_trees_all_close(own_u, shared_u, rtol=1e-6, atol=0)
  injected = optax.inject_hyperparams(cprop_adam)(learning_rate=0.01,
                                                  beta=0.999)
  u, state = _run(injected, grads, params)
  assert jax.tree.structure(state.inner_state) == jax.tree.structure(own_s)
  assert_trees_all_close(u, own_u, rtol=1e-6, atol=0)


@pytest.mark.parametrize("make", [lambda: cprop_adam(1e-3),
                                  lambda: cprop(optax.sgd(0.1))],
                         ids=["cprop_adam", "cprop"])
def test_nan_gradient_makes_mean_scale_nan_on_large_leaves(make):
  # XLA:CPU reduces large arrays in one YNNPACK fusion whose minimum maps
  # NaN to a number depending on the operand order (docs/cprop.md).
  params = {"w": jnp.ones((40_000,), jnp.float32)}
  grads = {"w": jnp.full((40_000,), 0.1, jnp.float32).at[5].set(jnp.nan)}
  tx = make()
  _, state = jax.jit(tx.update)(grads, tx.init(params), params)
  assert np.isnan(float(state.mean_scale))
  clean = {"w": grads["w"].at[5].set(0.1)}
  _, state = jax.jit(tx.update)(clean, tx.init(params), params)
  np.testing.assert_allclose(float(state.mean_scale), 1.0, rtol=1e-6)


@pytest.mark.parametrize("axis_name", [None, "model"])
def test_shard_map_model_parallel_mean_scale(axis_name):
  # Default shard_map (check_vma=True); params split over 8 devices. With
  # axis_name the mean scale is the global one; without, each shard's own.
  from jax.sharding import PartitionSpec as P
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices")
  mesh = jax.make_mesh((8,), ("model",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(8, 64)), jnp.float32)}
  grads = [jax.tree.map(lambda p, i=i: jnp.asarray(
      rng.normal(size=p.shape) + (i % 3) * (p > 0), jnp.float32), params)
           for i in range(3)]
  tx = cprop_adam(0.01, axis_name=axis_name)
  single = cprop_adam(0.01)

  def run(tx, params, grads):
    state = tx.init(params)
    for g in grads:
      updates, state = tx.update(g, state, params)
    return updates, state.mean_scale

  spec = {"w": P("model")}
  sharded = jax.jit(jax.shard_map(
      lambda p, gs: run(tx, p, gs)[0] if axis_name is None else run(tx, p, gs),
      mesh=mesh, in_specs=(spec, [spec] * 3),
      out_specs=spec if axis_name is None else (spec, P())))
  run_single = jax.jit(lambda p, gs: run(single, p, gs))
  expected_u, expected_mean = run_single(params, grads)
  out = sharded(params, grads)
  got_u = out if axis_name is None else out[0]
  assert_trees_all_close(got_u, expected_u, rtol=1e-5, atol=1e-9)
  if axis_name is not None:
    np.testing.assert_allclose(float(out[1]), float(expected_mean), rtol=1e-6)
    return
  row_means = [float(run_single({"w": params["w"][i:i + 1]},
                                [{"w": g["w"][i:i + 1]} for g in grads])[1])
               for i in range(8)]
  per_shard = jax.jit(jax.shard_map(
      lambda p, gs: run(tx, p, gs)[1][None], mesh=mesh,
      in_specs=(spec, [spec] * 3), out_specs=P("model")))(params, grads)
  np.testing.assert_allclose(np.asarray(per_shard), row_means, rtol=1e-6)


def test_fused_schedule_and_missing_params():
  params = random_tree(jax.random.key(8))
  grads = _grads_seq(3)
  sched = optax.constant_schedule(0.01)
  assert_trees_all_equal(_run(cprop_adam(sched), grads, params)[0],
                         _run(cprop_adam(0.01), grads, params)[0])
  tx = cprop_adam(weight_decay=0.1)
  with pytest.raises(ValueError, match="params"):
    tx.update(grads[0], tx.init(params))


# --------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("make", [
    lambda: cprop(optax.sgd(0.1, momentum=0.9)),
    lambda: cprop_adam(1e-3),
])
def test_low_precision_params(dtype, make):
  tx = make()
  params = random_tree(jax.random.key(0), dtype)
  grads = _grads_seq(4)
  grads = [jax.tree.map(lambda g: g.astype(dtype), g) for g in grads]
  grads.append(jax.tree.map(jnp.zeros_like, grads[0]))  # zero grads too
  update = jax.jit(tx.update)
  state = tx.init(params)
  for g in grads:
    u, state = update(g, state, params)
    assert all(x.dtype == dtype for x in jax.tree.leaves(u))
    assert_tree_all_finite(u)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.m))
  assert state.mean_scale.dtype == jnp.float32
  assert_tree_all_finite(state)


def test_float16_eps_underflow_keeps_finite():
  params = jnp.zeros(4, jnp.float16)
  tx = cprop(optax.sgd(0.1), eps=1e-8)
  state = tx.init(params)
  for g in ([0.0, 1e-4, -1.0, 0.0], [0.0, 1e-4, 1.0, 0.0]):
    u, state = tx.update(jnp.array(g, jnp.float16), state, params)
    assert_tree_all_finite(u)
  assert float(u[0]) == 0.0 and float(u[3]) == 0.0


@pytest.mark.usefixtures("x64")
def test_float64_params_keep_float64_statistics():
  params = {"w": jnp.ones(3, jnp.float64)}
  for tx in (cprop(optax.sgd(0.1)), cprop_adam(0.1, b2=0.99)):
    state = tx.init(params)
    u, state = tx.update({"w": jnp.array([1.0, -2.0, 0.0])}, state, params)
    assert state.m["w"].dtype == jnp.float64
    assert u["w"].dtype == jnp.float64
    assert state.mean_scale.dtype == jnp.float64


def _numpy_mean_scale(grads, beta, c, eps):
  """The mean of s after each step, in NumPy float64 (normal CDF)."""
  import math
  m = v = np.zeros_like(grads[0])
  means = []
  for t, g in enumerate(grads, start=1):
    m, v = beta * m + (1 - beta) * g, beta * v + (1 - beta) * g * g
    b = 1 - beta**t
    m_hat, v_hat = m / b, v / b
    variance = np.maximum(v_hat - m_hat**2, 0) if t > 1 else 0 * m
    n_minus_1 = beta * (1 - beta ** (t - 1)) / (1 - beta)
    se = np.sqrt(variance / (n_minus_1 + eps)) + eps
    z = np.abs(m_hat) / se
    s = np.minimum(1, c * np.vectorize(math.erf)(z / math.sqrt(2)))
    means.append(s.mean())
  return means


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("make", [
    lambda: cprop(optax.sgd(0.1), beta=0.9, c=1.5, eps=1e-6, cdf="normal"),
    lambda: cprop_adam(0.1, b2=0.9, c=1.5, cprop_eps=1e-6, cdf="normal"),
], ids=["cprop", "cprop_adam"])
def test_float64_mean_scale_matches_numpy(make):
  rng = np.random.default_rng(3)
  grads = [rng.normal(size=64) + 0.3 for _ in range(5)]
  params = jnp.zeros(64, jnp.float64)
  tx = make()
  state = tx.init(params)
  for g, expected in zip(grads, _numpy_mean_scale(grads, 0.9, 1.5, 1e-6)):
    _, state = jax.jit(tx.update)(jnp.asarray(g), state, params)
    np.testing.assert_allclose(float(state.mean_scale), expected, rtol=1e-12)


def test_zero_eps_zero_gradient_is_not_nan():
  tx = cprop(optax.identity(), eps=0.0)
  g = jnp.array([0.0, 1.0, -2.0])
  state = tx.init(g)
  for _ in range(3):
    u, state = tx.update(g, state)
  np.testing.assert_array_equal(u, g)  # s = 0 on the zero entry, 1 elsewhere


# ----------------------------------------------------------- mean_scale


def test_mean_scale_is_element_weighted_mean():
  params = {"a": jnp.ones((2, 3)), "b": jnp.ones(7)}
  tx = cprop(optax.identity(), beta=0.9)
  state = tx.init(params)
  assert state.mean_scale.dtype == jnp.float32 and state.mean_scale == 1.0
  update = jax.jit(tx.update)
  for key in jax.random.split(jax.random.key(2), 4):
    g = jax.tree.map(lambda p, k=key: jax.random.normal(k, p.shape) + 0.3,
                     params)
    u, state = update(g, state)
  s = jnp.concatenate([(u[k] / g[k]).ravel() for k in ("a", "b")])
  np.testing.assert_allclose(state.mean_scale, jnp.mean(s), rtol=1e-5)
  assert 0.0 < float(state.mean_scale) < 1.0


def _default_branch(*args, default, **per_platform):
  del per_platform
  return default(*args)


@pytest.mark.parametrize("make", [
    lambda: cprop(optax.sgd(0.1)),
    lambda: cprop(optax.adam(1e-2), cdf="normal"),
    lambda: cprop_adam(1e-2),
    lambda: cprop_adam(1e-2, b2=0.99, weight_decay=0.1),
], ids=["cprop", "cprop_normal", "cprop_adam", "cprop_adam_separate_decay"])
def test_mean_scale_reduction_is_the_same_on_every_backend(make, monkeypatch):
  # XLA:CPU sums the materialised CDF; other backends (XLA:GPU) recompute s
  # from the step's inputs as row sums. Run the GPU formulation here too.
  params = {"conv": jnp.ones((3, 3, 4, 8), jnp.bfloat16),
            "bias": jnp.ones((7,)), "long": jnp.ones((2048,)),
            "empty": jnp.ones((0, 3))}

  def run():
    tx = make()
    state = tx.init(params)
    for i, key in enumerate(jax.random.split(jax.random.key(5), 3)):
      g = jax.tree.map(
          lambda p, k=key: (jax.random.normal(k, p.shape) + 0.2 * i
                            ).astype(p.dtype), params)
      _, state = jax.jit(tx.update)(g, state, params)
    return state.mean_scale

  on_cpu = run()
  monkeypatch.setattr(jax.lax, "platform_dependent", _default_branch)
  elsewhere = run()
  np.testing.assert_allclose(elsewhere, on_cpu, rtol=1e-6)
  assert 0.0 < float(on_cpu) < 1.0


@pytest.mark.parametrize("backend", ["cpu", "other"])
def test_mean_scale_under_explicit_sharding(backend, monkeypatch):
  # Leaves sharded along different axes: the reduction must not combine
  # them elementwise (concatenating row sums is a ShardingTypeError).
  from jax.sharding import PartitionSpec as P
  n = jax.device_count()
  mesh = jax.make_mesh((n,), ("data",))
  rng = np.random.default_rng(0)
  host = {"w1": rng.normal(size=(4, 8 * n)).astype(np.float32),
          "w2": rng.normal(size=(8 * n, 1)).astype(np.float32),
          "conv": rng.normal(size=(3, 2 * n, 3, 4)).astype(np.float32),
          "long": rng.normal(size=(1024 * n,)).astype(np.float32),
          "short": rng.normal(size=(1024,)).astype(np.float32),
          "b": rng.normal(size=(3,)).astype(np.float32),
          "scalar": np.float32(0.5)}
  specs = {"w1": P(None, "data"), "w2": P("data", None),
           "conv": P(None, "data", None, None), "long": P("data"),
           "short": P(), "b": P(), "scalar": P()}
  if backend == "other":
    monkeypatch.setattr(jax.lax, "platform_dependent", _default_branch)
  grads = [jax.tree.map(lambda p, i=i: p + 0.3 * i, host) for i in range(3)]
  for tx in (cprop_adam(1e-2), cprop(optax.sgd(0.1))):
    update = jax.jit(tx.update)
    expected = tx.init(host)
    for g in grads:
      expected = update(g, expected, host)[1]
    with jax.set_mesh(mesh):
      params = {k: jax.device_put(v, specs[k]) for k, v in host.items()}
      state = tx.init(params)
      for g in grads:
        g = {k: jax.device_put(v, specs[k]) for k, v in g.items()}
        _, state = update(g, state, params)
    assert 0.0 < float(expected.mean_scale) < 1.0
    # Sharded sums add in another order: float32 rounding of a mean of ~12k
    # terms.
    np.testing.assert_allclose(state.mean_scale, expected.mean_scale,
                               rtol=1e-5)


@pytest.mark.parametrize("make", [
    lambda track: cprop(optax.adam(1e-2), track_mean_scale=track),
    lambda track: cprop_sgd(0.1, momentum=0.9, track_mean_scale=track),
    lambda track: cprop_adam(1e-2, track_mean_scale=track),
    lambda track: cprop_adam(1e-2, b2=0.99, track_mean_scale=track),
], ids=["cprop", "cprop_sgd", "cprop_adam", "cprop_adam_separate"])
def test_untracked_mean_scale_changes_nothing_else(make):
  params = random_tree(jax.random.key(3))
  tracked, untracked = make(True), make(False)
  s_on, s_off = tracked.init(params), untracked.init(params)
  assert s_off.mean_scale is None
  for key in jax.random.split(jax.random.key(4), 3):
    g = jax.tree.map(lambda p, k=key: jax.random.normal(k, p.shape, p.dtype),
                     params)
    u_on, s_on = jax.jit(tracked.update)(g, s_on, params)
    u_off, s_off = jax.jit(untracked.update)(g, s_off, params)
    # Equal up to the last bit: XLA fuses the two programs differently.
    assert_trees_all_close(u_off, u_on, rtol=1e-6)
  assert s_off.mean_scale is None
  assert_trees_all_close(s_off._replace(mean_scale=None),
                         s_on._replace(mean_scale=None), rtol=1e-6)
  assert "cprop/mean_scale" not in oa.diagnostics(s_off)
  assert "cprop/mean_scale" in oa.diagnostics(s_on)


@pytest.mark.parametrize("make", [
    lambda: cprop(optax.adam(1e-3)), lambda: cprop_adam(1e-3),
    lambda: cprop_sgd(0.1, momentum=0.9)], ids=["cprop", "adam", "sgd"])
def test_gradients_beyond_float32_square_give_no_nan(make):
  # g² overflows float32 above ~1.8e19: v̂ - m̂² was inf - inf = NaN.
  tx = make()
  params = jnp.zeros(3)
  state = tx.init(params)
  for g in ([1e20, -3e19, 1.0], [1e20, 1e19, 2.0], [1.0, 1.0, 1.0]):
    u, state = jax.jit(tx.update)(jnp.array(g, jnp.float32), state, params)
    assert_tree_all_finite(u)
    assert np.isfinite(float(state.mean_scale))


def test_state_types_are_stable_under_jit():
  params = random_tree(jax.random.key(1))
  for tx in (cprop(optax.adam(1e-3)), cprop_adam(1e-3)):
    state = tx.init(params)
    _, new_state = jax.jit(tx.update)(params, state, params)
    assert (jax.tree.map(jax.typeof, state)
            == jax.tree.map(jax.typeof, new_state))
    assert isinstance(new_state, (CPropState, CPropAdamState))
    abstract = jax.eval_shape(
        tx.init, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                              params))
    assert jax.tree.structure(abstract) == jax.tree.structure(state)


# ------------------------------------------------------------ validation


@pytest.mark.parametrize("factory,kwargs,name", [
    (lambda **k: cprop(optax.sgd(0.1), **k), {"beta": 1.0}, "beta"),
    (lambda **k: cprop(optax.sgd(0.1), **k), {"beta": -0.1}, "beta"),
    (lambda **k: cprop(optax.sgd(0.1), **k), {"c": -1.0}, "c"),
    (lambda **k: cprop(optax.sgd(0.1), **k), {"eps": -1e-8}, "eps"),
    (lambda **k: cprop(optax.sgd(0.1), **k), {"cdf": "student"}, "cdf"),
    (lambda **k: cprop_sgd(0.1, **k), {"momentum": -0.5}, "momentum"),
    (lambda **k: cprop_sgd(0.1, **k), {"weight_decay": -1.0}, "weight_decay"),
    (cprop_adam, {"b1": 1.0}, "b1"),
    (cprop_adam, {"b2": 1.5}, "b2"),
    (cprop_adam, {"cprop_eps": -1.0}, "cprop_eps"),
    (cprop_adam, {"beta": 1.0}, "beta"),
    (cprop_adam, {"cdf": "t"}, "cdf"),
])
def test_invalid_hyperparameters_name_the_parameter(factory, kwargs, name):
  with pytest.raises(ValueError, match=f"`{name}`"):
    factory(**kwargs)


def test_traced_hyperparameters_are_not_validated():
  tx = optax.inject_hyperparams(cprop)(
      inner=optax.sgd(0.1), beta=0.99, c=2.0, eps=1e-8)
  g = jnp.ones(2)
  u, state = jax.jit(tx.update)(g, tx.init(g))
  np.testing.assert_allclose(u, -0.1)
  assert state.hyperparams["beta"].dtype == jnp.float32


# ------------------------------------------------------------------ flax


class _Tiny(nnx.Module):

  def __init__(self, rngs):
    self.l1 = nnx.Linear(4, 16, rngs=rngs)
    self.l2 = nnx.Linear(16, 1, rngs=rngs)

  def __call__(self, x):
    return self.l2(nnx.relu(self.l1(x)))


@pytest.mark.parametrize("make", [
    lambda: cprop(optax.sgd(0.05, momentum=0.9)),
    lambda: cprop_adam(0.01),
])
def test_flax_nnx_training_loop(make):
  x = jax.random.normal(jax.random.key(0), (64, 4))
  y = jnp.sin(x.sum(-1, keepdims=True))
  model = _Tiny(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, make(), wrt=nnx.Param)

  def loss_fn(model):
    return jnp.mean((model(x) - y) ** 2)

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  first = float(loss_fn(model))
  for _ in range(60):
    train_step(model, optimizer)
  assert float(loss_fn(model)) < 0.5 * first
  mean_scale = optax.tree.get(optimizer.opt_state, "mean_scale")
  assert 0.0 <= float(mean_scale) <= 1.0
