"""Tests of AutoDrop (UAI 2024, Algorithm 1) and its v1 compatibility mode."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import optax_adaptive as oa
from optax_adaptive import _autodrop, _autodrop_v1, _common
from tests import _utils

autodrop = _autodrop.autodrop
autodrop_v1 = _autodrop_v1.autodrop_v1

# ------------------------------------------------------------------ helpers


def _turning_path(omegas_deg):
  """2-D points whose consecutive unit displacements turn by ``omegas``."""
  heading = np.concatenate([[0.0], np.cumsum(np.radians(omegas_deg))])
  steps = np.stack([np.cos(heading), np.sin(heading)], axis=1)
  return np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])


# ω rises 70°, 71°, ..., 99° over 30 windows, then stays at 100°.
PLATEAU_OMEGAS = np.concatenate([np.arange(70.0, 100.0), np.full(40, 100.0)])
PLATEAU_POINTS = _turning_path(PLATEAU_OMEGAS)


def _drop_record(tx, points, updates_fn=None):
  """Feeds scripted ``params``; returns per-call (n_drops, λ, ω) arrays."""
  state = tx.init({"w": jnp.zeros(2)})
  update = jax.jit(tx.update)
  drops, scales, omegas = [], [], []
  for t, point in enumerate(points):
    updates = {"w": jnp.ones(2)} if updates_fn is None else updates_fn(
        t, state)
    _, state = update(updates, state, {"w": jnp.asarray(point, jnp.float32)})
    drops.append(int(state.n_drops))
    scales.append(float(state.lr_scale))
    omegas.append(float(state.last_omega))
  return np.array(drops), np.array(scales), np.array(omegas)


def _drop_calls(drops):
  """Indices of the calls at which a drop happened."""
  return np.flatnonzero(np.diff(np.concatenate([[0], drops])) > 0)


def _nqm(dim, seed, alpha, x0, steps, tx=None, record=None):
  """GD on the noisy quadratic (UAI Sec. 3): L = ½ Σ a_i (x_i - c_i)²."""
  a = jnp.arange(1, dim + 1, dtype=jnp.float32) / 10
  tx = optax.sgd(alpha) if tx is None else tx
  params = jnp.full((dim,), x0, jnp.float32)

  def step(carry, key):
    x, state = carry
    c = jax.random.normal(key, (dim,))
    grads = a * (x - c)
    updates, state = tx.update(grads, state, x)
    x = optax.apply_updates(x, updates)
    out = (0.5 * jnp.sum(a * x**2),)
    if record is not None:
      out += record(state)
    return (x, state), out

  keys = jax.random.split(jax.random.key(seed), steps)
  _, outs = jax.jit(lambda c: jax.lax.scan(step, c, keys))(
      (params, tx.init(params)))
  return outs


def _autodrop_state(state):
  return next(s for s in state if isinstance(s, _autodrop.AutoDropState))


# ------------------------------------------------------------- the angle


def _angle(a, b, eps=1e-8):
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  return float(_autodrop.angular_velocity_degrees(
      jnp.vdot(a, b), jnp.vdot(a, a), jnp.vdot(b, b), eps))


def test_angle_of_parallel_opposite_orthogonal_and_zero_vectors():
  v = np.array([0.3, -1.2, 2.0])
  assert _angle([1.0, 0.0], [0.0, 1.0]) == pytest.approx(90.0, abs=1e-4)
  assert _angle(v, v) == pytest.approx(0.0, abs=0.1)  # arccos near 1
  assert _angle(v, -v) == pytest.approx(180.0, abs=0.1)
  assert _angle(np.zeros(3), v) == pytest.approx(90.0)  # ε guard
  assert _angle(np.zeros(3), np.zeros(3), eps=0.0) == pytest.approx(90.0)


def test_angle_of_pytrees_equals_angle_of_flat_vectors():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=7), rng.normal(size=7)
  tree_a = {"x": jnp.asarray(a[:3]), "y": jnp.asarray(a[3:].reshape(2, 2))}
  tree_b = {"x": jnp.asarray(b[:3]), "y": jnp.asarray(b[3:].reshape(2, 2))}
  dot = _common.tree_vdot_f32(tree_a, tree_b)
  sq_a = _common.tree_vdot_f32(tree_a, tree_a)
  sq_b = _common.tree_vdot_f32(tree_b, tree_b)
  tree = float(_autodrop.angular_velocity_degrees(dot, sq_a, sq_b, 1e-8))
  assert tree == pytest.approx(_angle(a, b), abs=1e-3)


def test_smoothing_of_constant_buffer_is_finite():
  buffer = jnp.full((10,), 100.0)
  for kernel in ("range", "time"):
    for center in ("middle", "newest"):
      c = _autodrop.smooth_buffer(buffer, kernel=kernel, center=center)
      assert float(c) == pytest.approx(100.0)


def test_smoothing_matches_numpy():
  buffer = np.array([90.0, 91.5, 93.0, 92.0, 95.0, 99.0, 97.0, 96.5])
  sigma = min(buffer.std(), len(buffer) / 2)
  weights = np.exp(-((buffer - buffer[4]) ** 2) / (2 * sigma**2))
  expected = np.sum(weights * buffer) / np.sum(weights)
  got = _autodrop.smooth_buffer(jnp.asarray(buffer, jnp.float32))
  assert float(got) == pytest.approx(expected, rel=1e-6)


# -------------------------------------------- scripted trajectory (k = 1)


@pytest.mark.parametrize("variant", [
    {}, {"kernel": "time"}, {"center": "newest"}, {"two_sided": True},
    {"reset_c_after_drop": True},
])
def test_first_drop_when_the_rising_angle_levels_off(variant):
  tx = autodrop(window_size=1, buffer_size=10, threshold_deg=0.1,
                drop_factor=0.5, **variant)
  drops, scales, omegas = _drop_record(tx, PLATEAU_POINTS)
  omega_index = _drop_calls(drops) - 2  # ω-index j is computed at call j+2
  assert omega_index[0] == 37  # the same for every variant
  assert 30 <= omega_index[0] < 41
  # ω is measured exactly, and nothing drops while it is rising.
  np.testing.assert_allclose(omegas[2:], PLATEAU_OMEGAS, atol=1e-3)
  assert np.all(drops[: 2 + 30] == 0)
  assert np.all(np.isfinite(scales))  # std(B) -> 0 on the plateau


@pytest.mark.parametrize("reset, expected", [
    (False, [37, 47, 57, 67]), (True, [37, 48, 59]),
])
def test_later_drops_one_buffer_apart_and_scale_floor(reset, expected):
  tx = autodrop(window_size=1, buffer_size=10, threshold_deg=0.1,
                drop_factor=0.5, min_scale=0.1, reset_c_after_drop=reset)
  drops, scales, _ = _drop_record(tx, PLATEAU_POINTS)
  assert list(_drop_calls(drops) - 2) == expected
  np.testing.assert_allclose(
      scales, np.maximum(0.5 ** drops, 0.1), rtol=1e-6)  # λ = max(ρⁿ, min)


def test_window_means_give_the_same_drops_in_window_units():
  """Each point repeated k = 4 times; the base updates are the true steps."""
  k = 4
  points = np.repeat(PLATEAU_POINTS, k, axis=0)
  steps = np.diff(points, axis=0, append=points[-1:])

  def updates_fn(t, state):  # output λ·u equals the scripted displacement
    return {"w": jnp.asarray(steps[t] / state.lr_scale, jnp.float32)}

  tx = autodrop(window_size=k, buffer_size=10, threshold_deg=0.1,
                drop_factor=0.5)
  drops, _, _ = _drop_record(tx, points, updates_fn)
  calls = _drop_calls(drops)
  assert np.all(calls % k == k - 1)  # decisions at window ends only
  assert list((calls + 1) // k - 3) == [37, 47, 57, 67]


# ------------------------------------------- NumPy reference (Algorithm 1)


def _reference(params_seq, k, m, tau, rho, min_scale, eps=1e-8):
  """Algorithm 1 step by step in NumPy, with the window means of Def. 3.3.

  The first window mean is the initial params; the first ω needs three
  window means; the buffer pops its oldest angle after each C and empties at
  a drop (docs/autodrop.md, "The algorithm").
  """
  lam, dsum, y_prev, s_prev = 1.0, 0.0, params_seq[0], None
  n_means, buffer, c_prev, has_c = 0, [], 0.0, False
  scales, omegas = [], []
  for t, x in enumerate(params_seq):
    dsum = dsum + (x - y_prev)
    if t % k == k - 1:
      s = dsum / k
      y = y_prev + s
      dsum = 0.0
      if n_means >= 2:
        cos = s @ s_prev / (np.linalg.norm(s) * np.linalg.norm(s_prev) + eps)
        omega = np.degrees(np.arccos(np.clip(cos, -1, 1)))
        omegas.append(omega)
        buffer.append(omega)
        if len(buffer) >= m:
          b = np.array(buffer)
          sigma = max(min(b.std(), m / 2), 1e-12)
          w = np.exp(-((b - b[m // 2]) ** 2) / (2 * sigma**2))
          c = np.sum(w * b) / np.sum(w)
          buffer.pop(0)
          if has_c and c - c_prev < tau:
            lam = max(rho * lam, min_scale)
            buffer = []
          c_prev, has_c = c, True
      y_prev, s_prev, n_means = y, s, min(n_means + 1, 2)
    scales.append(lam)
  return np.array(scales), np.array(omegas)


def test_matches_numpy_reference_on_a_real_training_run(x64):
  """Window means from the updates equal means of the params (k = 3)."""
  del x64
  k, m = 3, 4
  tx = optax.chain(optax.sgd(0.05, momentum=0.5),
                   autodrop(window_size=k, buffer_size=m, drop_factor=0.5,
                            threshold_deg=0.5, min_scale=0.1))
  rng = np.random.default_rng(1)
  a = np.linspace(0.5, 3.0, 12)
  x = jnp.asarray(np.ones(12))
  state = tx.init(x)
  update = jax.jit(tx.update)
  seq, scales, omegas = [], [], []
  for _ in range(240):
    seq.append(np.asarray(x))
    grads = jnp.asarray(a * (np.asarray(x) - rng.normal(size=12)))
    updates, state = update(grads, state, x)
    x = optax.apply_updates(x, updates)
    s = _autodrop_state(state)
    scales.append(float(s.lr_scale))
    if int(s.window_step) == 0 and int(s.detector.n_means) == 2:
      omegas.append(float(s.last_omega))
  ref_scales, ref_omegas = _reference(seq, k, m, 0.5, 0.5, 0.1)
  assert int(_autodrop_state(state).n_drops) >= 3
  np.testing.assert_allclose(omegas[-len(ref_omegas):], ref_omegas,
                             atol=1e-6)
  np.testing.assert_allclose(scales, ref_scales)


def test_float64_matches_numpy_float64(x64):
  """With float64 params every scalar is float64: λ, ω and the updates.

  ρ = 0.2 is not a float32 number; a float32 λ (0.20000000298) put the
  float64 updates off by 1.5e-8 relative.
  """
  del x64
  k, m, lr, beta = 3, 4, 0.05, 0.5
  tx = optax.chain(optax.sgd(lr, momentum=beta),
                   autodrop(window_size=k, buffer_size=m, drop_factor=0.2,
                            threshold_deg=0.5, min_scale=1e-3))
  rng = np.random.default_rng(1)
  a = np.linspace(0.5, 3.0, 12)
  x = jnp.asarray(np.ones(12))
  state = tx.init(x)
  assert _autodrop_state(state).lr_scale.dtype == jnp.float64
  update = jax.jit(tx.update)
  seq, grads_seq, updates_seq, omegas = [], [], [], []
  for _ in range(240):
    seq.append(np.asarray(x))
    grads = a * (np.asarray(x) - rng.normal(size=12))
    updates, state = update(jnp.asarray(grads), state, x)
    x = optax.apply_updates(x, updates)
    grads_seq.append(grads)
    updates_seq.append(np.asarray(updates))
    s = _autodrop_state(state)
    assert s.lr_scale.dtype == s.last_omega.dtype == jnp.float64
    if int(s.window_step) == 0 and int(s.detector.n_means) == 2:
      omegas.append(float(s.last_omega))
  ref_scales, ref_omegas = _reference(seq, k, m, 0.5, 0.2, 1e-3)
  assert int(_autodrop_state(state).n_drops) >= 3
  np.testing.assert_allclose(omegas[-len(ref_omegas):], ref_omegas,
                             rtol=0, atol=1e-9)
  # SGD with momentum in NumPy float64, scaled by λ decided one step earlier.
  trace, scale = np.zeros(12), 1.0
  for t, grads in enumerate(grads_seq):
    trace = grads + beta * trace
    np.testing.assert_allclose(updates_seq[t], -lr * trace * scale,
                               rtol=1e-14, err_msg=f"step {t}")
    scale = ref_scales[t]
  np.testing.assert_allclose(float(_autodrop_state(state).lr_scale),
                             ref_scales[-1], rtol=1e-15)


def test_endpoint_mode_uses_window_end_params():
  k = 4
  points = np.repeat(PLATEAU_POINTS, k, axis=0)
  tx = autodrop(window_size=k, buffer_size=10, drop_factor=0.5,
                average_window=False)
  drops, _, _ = _drop_record(tx, points)
  assert list((_drop_calls(drops) + 1) // k - 3) == [37, 47, 57, 67]
  state = tx.init({"w": jnp.zeros(2)})
  assert state.mean_offset == ()  # 2 params-sized buffers, not 3


# ---------------------------------------- saturation level (Theorem 3.2)


def test_settled_angle_on_noisy_quadratic_matches_theorem():
  """d = 20, α = 0.2: predicted 98.94°, simulated 98.81° (std 17°)."""
  tx = optax.chain(optax.sgd(0.2),
                   autodrop(window_size=1, min_scale=1.0))  # never drops
  _, omegas = _nqm(20, 0, 0.2, 0.0, 40_000, tx,
                   record=lambda s: (s[1].last_omega,))
  assert float(jnp.mean(omegas[20_000:])) == pytest.approx(98.94, abs=2.0)


@pytest.mark.slow
@pytest.mark.parametrize("alpha, predicted", [
    (0.06, 118.23), (0.03, 103.28), (0.01, 94.33), (0.001, 90.43),
])
def test_settled_angle_d200_matches_theorem(alpha, predicted):
  tx = optax.chain(optax.sgd(alpha), autodrop(window_size=1, min_scale=1.0))
  _, omegas = _nqm(200, 0, alpha, 0.0, 20_000, tx,
                   record=lambda s: (s[1].last_omega,))
  assert float(jnp.mean(omegas[10_000:])) == pytest.approx(predicted, abs=1.0)


# -------------------------------------------- end-to-end noisy quadratic


def _noisy_quadratic_run(seed, k, two_sided=False):
  alpha, alpha_min = 0.06, 0.001
  tx = optax.chain(optax.sgd(alpha),
                   autodrop(window_size=k, drop_factor=0.5,
                            min_scale=alpha_min / alpha, two_sided=two_sided))
  record = lambda s: (s[1].lr_scale, s[1].n_drops)
  loss, scale, drops = _nqm(200, seed, alpha, 1.0, 20_000, tx, record)
  return (np.asarray(loss), np.asarray(scale), np.asarray(drops),
          _constant_alpha_final_loss(seed, alpha),
          _constant_alpha_final_loss(seed, alpha_min))


@functools.cache
def _constant_alpha_final_loss(seed, alpha):
  (loss,) = _nqm(200, seed, alpha, 1.0, 20_000)
  return float(np.mean(loss[-2000:]))


@pytest.mark.parametrize("k", [1, 5])
def test_noisy_quadratic_reaches_the_floor_loss(k):
  m = 10
  loss, scale, drops, loss_const, loss_min = _noisy_quadratic_run(0, k)
  first_drop_window = _drop_calls(drops)[0] // k
  assert first_drop_window < 15
  assert scale[-1] == pytest.approx(0.001 / 0.06, rel=1e-5)
  final = float(np.mean(loss[-2000:]))
  assert final < 0.05 * loss_const
  assert final < 1.5 * loss_min
  # Spacing, monotonicity and the floor.
  gaps = np.diff(_drop_calls(drops))
  assert np.all(gaps >= m * k)
  assert np.all(np.diff(scale) <= 0)
  assert np.all(scale >= np.float32(0.001 / 0.06))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("two_sided", [False, True])
def test_noisy_quadratic_more_seeds_and_two_sided(seed, two_sided):
  loss, scale, _, loss_const, loss_min = _noisy_quadratic_run(
      seed, 1, two_sided)
  assert scale[-1] == pytest.approx(0.001 / 0.06, rel=1e-5)
  final = float(np.mean(loss[-2000:]))
  assert final < 0.05 * loss_const
  assert final < 1.5 * loss_min


# ---------------------------------------------------- functional properties


def test_compiles_once_state_invariant_and_scan_bitwise():
  tx = optax.chain(optax.sgd(0.1, momentum=0.9),
                   autodrop(window_size=3, buffer_size=3, drop_factor=0.5))
  params = {"a": jnp.ones((3, 2)), "b": jnp.arange(4.0)}
  state = tx.init(params)
  types = jax.tree.map(jax.typeof, state)
  key = jax.random.key(0)

  def step(p, s, i):
    g = jax.tree.map(
        lambda x: x + jax.random.normal(jax.random.fold_in(key, i), x.shape), p)
    u, s = tx.update(g, s, p, value=i.astype(jnp.float32))  # value ignored
    return optax.apply_updates(p, u), s

  jit_step = jax.jit(step)
  loop_params, loop_state = params, state
  with _utils.log_compilations() as compiles:
    for i in range(60):
      loop_params, loop_state = jit_step(loop_params, loop_state, jnp.int32(i))
  assert len([c for c in compiles if "jit(step)" in c]) == 1
  assert jax.tree.map(jax.typeof, loop_state) == types
  assert int(_autodrop_state(loop_state).n_drops) >= 1

  def body(carry, i):
    return step(*carry, i), None

  (scan_params, scan_state), _ = jax.jit(
      lambda c: jax.lax.scan(body, c, jnp.arange(60, dtype=jnp.int32)))(
          (params, state))
  chex.assert_trees_all_equal(scan_state, loop_state, strict=True)
  chex.assert_trees_all_equal(scan_params, loop_params, strict=True)


@pytest.mark.parametrize("factory", [
    functools.partial(autodrop, window_size=2),
    functools.partial(autodrop_v1, steps_per_epoch=2),
])
def test_missing_params_raises(factory):
  tx = factory()
  state = tx.init({"w": jnp.zeros(2)})
  with pytest.raises(ValueError, match="requires `params`"):
    tx.update({"w": jnp.ones(2)}, state)


def test_init_does_not_read_params():
  params = {"w": jax.ShapeDtypeStruct((3, 4), jnp.bfloat16)}
  state = autodrop(window_size=2).init(params)
  for tree in (state.mean_offset, state.prev_mean, state.prev_displacement):
    assert tree["w"].dtype == jnp.float32
  state = autodrop_v1(steps_per_epoch=2, average_on_drop=True).init(params)
  for tree in (state.prev_snapshot, state.prev_displacement,
               state.weighted_sum):
    assert tree["w"].dtype == jnp.float32


def test_monitored_scalars_are_read_from_the_nested_detector():
  tx = optax.chain(optax.sgd(0.1), autodrop(window_size=2, buffer_size=2,
                                            threshold_deg=45.0))
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for point in PLATEAU_POINTS[:12]:
    _, state = update({"w": jnp.ones(2)}, state,
                      {"w": jnp.asarray(point, jnp.float32)})
  drop_state = _autodrop_state(state)
  assert isinstance(drop_state.detector, _autodrop.AutoDropDetector)
  assert int(drop_state.n_drops) >= 1
  logged = oa.diagnostics(state)
  for name in ("lr_scale", "last_omega", "smoothed_omega", "n_drops"):
    nested = getattr(drop_state.detector, name)
    assert getattr(drop_state, name) is nested
    assert optax.tree.get(state, name) is nested
    chex.assert_trees_all_equal(logged[f"autodrop/{name}"], nested,
                                strict=True)


def test_counters_stay_bounded():
  tx = autodrop(window_size=3, buffer_size=2, drop_factor=0.5)
  state = tx.init({"w": jnp.zeros(2)})
  state = state._replace(detector=state.detector._replace(
      n_drops=jnp.int32(np.iinfo(np.int32).max)))
  update = jax.jit(tx.update)
  for point in np.repeat(PLATEAU_POINTS, 3, axis=0)[:120]:
    _, state = update({"w": jnp.ones(2)}, state,
                      {"w": jnp.asarray(point, jnp.float32)})
    assert 0 <= int(state.window_step) < 3
    assert 0 <= int(state.detector.n_means) <= 2
    assert 0 <= int(state.detector.buffer_len) <= 2
  assert int(state.n_drops) == np.iinfo(np.int32).max  # saturates, no wrap
  assert float(state.lr_scale) < 1.0


def test_inject_hyperparams_matches_plain():
  kwargs = dict(window_size=2, buffer_size=3, drop_factor=0.5)
  plain = autodrop(**kwargs)
  injected = optax.inject_hyperparams(autodrop, static_args=("buffer_size",))(
      **kwargs)
  params = {"w": jnp.zeros(2)}
  s_plain, s_inj = plain.init(params), injected.init(params)
  for t, point in enumerate(PLATEAU_POINTS[:50]):
    p = {"w": jnp.asarray(point, jnp.float32)}
    u1, s_plain = jax.jit(plain.update)({"w": jnp.ones(2)}, s_plain, p)
    u2, s_inj = jax.jit(injected.update)({"w": jnp.ones(2)}, s_inj, p)
    chex.assert_trees_all_close(u2, u1)
    del t
  chex.assert_trees_all_close(s_inj.inner_state, s_plain, rtol=1e-5,
                                atol=1e-5)
  assert int(s_plain.n_drops) >= 1


# ------------------------------------------------------------ dtypes, bf16


def test_bf16_params_f32_state_bf16_updates():
  tx = optax.chain(optax.sgd(0.1, momentum=0.9),
                   autodrop(window_size=2, buffer_size=3))
  params = {"w": jnp.ones((4, 3), jnp.bfloat16), "b": jnp.zeros(3,
                                                               jnp.bfloat16)}
  state = tx.init(params)
  drop_state = _autodrop_state(state)
  for tree in (drop_state.mean_offset, drop_state.prev_mean,
               drop_state.prev_displacement):
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(tree))
  update = jax.jit(tx.update)
  types = jax.tree.map(jax.typeof, state)
  for i in range(40):
    grads = jax.tree.map(
        lambda p: (p + 0.1 * jax.random.normal(jax.random.key(i), p.shape))
        .astype(jnp.bfloat16), params)
    updates, state = update(grads, state, params)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    params = optax.apply_updates(params, updates)
  assert jax.tree.map(jax.typeof, state) == types
  chex.assert_tree_all_finite(state)


def test_v1_bf16_average_on_drop_keeps_dtypes():
  tx = optax.chain(optax.sgd(0.1),
                   autodrop_v1(steps_per_epoch=2, patience_epochs=2,
                               average_on_drop=True))
  params = jnp.ones(5, jnp.bfloat16)
  state = tx.init(params)
  types = jax.tree.map(jax.typeof, state)
  update = jax.jit(tx.update)
  for _ in range(20):
    updates, state = update(params, state, params)
    assert updates.dtype == jnp.bfloat16
    params = optax.apply_updates(params, updates)
  assert jax.tree.map(jax.typeof, state) == types


# ------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs, name", [
    (dict(window_size=0), "window_size"),
    (dict(window_size=2.5), "window_size"),
    (dict(window_size=2, buffer_size=0), "buffer_size"),
    (dict(window_size=2, drop_factor=0.0), "drop_factor"),
    (dict(window_size=2, drop_factor=1.5), "drop_factor"),
    (dict(window_size=2, threshold_deg=-0.1), "threshold_deg"),
    (dict(window_size=2, min_scale=1.5), "min_scale"),
    (dict(window_size=2, eps=-1.0), "eps"),
    (dict(window_size=2, kernel="box"), "kernel"),
    (dict(window_size=2, center="oldest"), "center"),
    (dict(window_size=2, state_dtype=jnp.int32), "state_dtype"),
])
def test_autodrop_validation_names_parameter(kwargs, name):
  with pytest.raises((ValueError, TypeError), match=name):
    autodrop(**kwargs)


@pytest.mark.parametrize("kwargs, name", [
    (dict(steps_per_epoch=1), "steps_per_epoch"),
    (dict(steps_per_epoch=4, patience_epochs=0), "patience_epochs"),
    (dict(steps_per_epoch=4, drop_factor=0.0), "drop_factor"),
    (dict(steps_per_epoch=4, theta0=-1.0), "theta0"),
    (dict(steps_per_epoch=4, min_scale=-0.5), "min_scale"),
])
def test_autodrop_v1_validation_names_parameter(kwargs, name):
  with pytest.raises((ValueError, TypeError), match=name):
    autodrop_v1(**kwargs)


# --------------------------------------------------------------- v1 mode


@pytest.mark.parametrize("steps_per_epoch", [2, 3])
def test_v1_drop_schedule_on_scripted_trajectory(steps_per_epoch):
  """E = 3, θ₀ = 0.01, θ̄ = 1, ρ = 0.2; one epoch per point of the path."""
  tx = autodrop_v1(steps_per_epoch=steps_per_epoch, patience_epochs=3,
                   theta0=0.01, theta_max=1.0, drop_factor=0.2,
                   min_scale=1e-3)
  points = np.repeat(PLATEAU_POINTS, steps_per_epoch, axis=0)
  state = tx.init({"w": jnp.zeros(2)})
  update = jax.jit(tx.update)
  drop_epochs, thetas, scales_used = [], [], []
  for t, point in enumerate(points):
    epoch, step = divmod(t, steps_per_epoch)
    before = int(state.n_drops)
    out, state = update({"w": jnp.ones(2)}, state,
                        {"w": jnp.asarray(point, jnp.float32)})
    scales_used.append(float(out["w"][0]))
    if int(state.n_drops) > before:
      assert step == 1  # decided right after the epoch's 2nd step
      drop_epochs.append(epoch - 2)  # ω-index
      thetas.append(float(state.theta))
  assert drop_epochs[0] == 33  # detection at ω-index 31, + E - 1
  assert drop_epochs == list(range(33, 70, 3))  # every E while ω is flat
  np.testing.assert_allclose(thetas[:4], [0.05, 0.25, 1.0, 1.0], rtol=1e-5)
  # The new scale is used from the 3rd step of the drop epoch on.
  first = (33 + 2) * steps_per_epoch + 1
  assert scales_used[first] == pytest.approx(1.0)
  assert scales_used[first + 1] == pytest.approx(0.2)
  assert min(scales_used) == pytest.approx(1e-3)


def test_v1_float64_theta_and_scale_match_numpy(x64):
  """θ ← min(θ/ρ, θ̄) and λ ← max(ρλ, λ_min) in float64, as NumPy does."""
  del x64
  rho, floor = 0.2, 1e-3
  tx = autodrop_v1(steps_per_epoch=2, patience_epochs=3, theta0=0.01,
                   theta_max=1.0, drop_factor=rho, min_scale=floor)
  state = tx.init({"w": jnp.zeros(2)})
  assert state.theta.dtype == state.lr_scale.dtype == jnp.float64
  update = jax.jit(tx.update)
  theta, scale, drops = 0.01, 1.0, 0
  for point in np.repeat(PLATEAU_POINTS, 2, axis=0):
    out, state = update({"w": jnp.ones(2)}, state,
                        {"w": jnp.asarray(point)})
    np.testing.assert_allclose(float(out["w"][0]), scale, rtol=1e-15)
    if int(state.n_drops) > drops:
      drops += 1
      theta, scale = min(theta / rho, 1.0), max(rho * scale, floor)
    # XLA may divide by the constant ρ as a multiplication by 1/ρ: 1 ulp.
    np.testing.assert_allclose(float(state.theta), theta, rtol=1e-15)
    np.testing.assert_allclose(float(state.lr_scale), scale, rtol=1e-15)
  assert drops >= 5


def test_v1_average_on_drop_moves_params_to_weighted_average():
  E = 3
  tx = autodrop_v1(steps_per_epoch=2, patience_epochs=E, theta0=0.01,
                   drop_factor=0.2, average_on_drop=True)
  state = tx.init({"w": jnp.zeros(2)})
  update = jax.jit(tx.update)
  snapshots = []  # (weight j, params after the epoch's 2nd step)
  n_checked = 0
  for t, point in enumerate(np.repeat(PLATEAU_POINTS, 2, axis=0)):
    params = {"w": jnp.asarray(point, jnp.float32)}
    before = state
    out, state = update({"w": jnp.ones(2)}, state, params)
    if t % 2 == 0:
      continue
    dropped = int(state.n_drops) > int(before.n_drops)
    weight = E if dropped else int(state.patience_count)
    if weight:  # the snapshot is taken before any overwrite: x + λ·u
      snapshots.append((weight, point + float(before.lr_scale)))
    if dropped:
      weights = np.array([j for j, _ in snapshots])
      np.testing.assert_array_equal(weights, np.arange(1, E + 1))
      average = sum(j * x for j, x in snapshots) / (E * (E + 1) / 2)
      np.testing.assert_allclose(point + np.asarray(out["w"]), average,
                                 rtol=1e-5, atol=1e-5)
      snapshots.clear()
      n_checked += 1
  assert n_checked >= 3


# ------------------------------------------------------------ multi-device


def _noisy_grads(key, x, scale):
  return x * jnp.linspace(0.5, 2.0, x.shape[-1]) + scale * jax.random.normal(
      key, x.shape)


def test_pmap_data_parallel_matches_single_device():
  n = jax.device_count()
  if n < 8:
    pytest.skip("needs 8 devices")
  tx = optax.chain(optax.sgd(0.1, momentum=0.9),
                   autodrop(window_size=2, buffer_size=3, drop_factor=0.5))
  dim, steps = 16, 60
  keys = jax.random.split(jax.random.key(0), steps * n).reshape(steps, n)

  def step(x, state, key):
    g = jax.lax.pmean(_noisy_grads(key, x, 1.0), "batch")
    u, state = tx.update(g, state, x)
    return optax.apply_updates(x, u), state

  x0 = jnp.ones(dim)
  x, state = x0, tx.init(x0)
  p_step = jax.pmap(step, axis_name="batch")
  px = jnp.stack([x0] * n)
  pstate = jax.tree.map(lambda a: jnp.stack([a] * n), state)
  single = jax.jit(
      lambda x, s, ks: tx.update(
          jnp.mean(jax.vmap(lambda k: _noisy_grads(k, x, 1.0))(ks), 0), s, x))
  drops_single, drops_pmap = [], []
  for t in range(steps):
    px, pstate = p_step(px, pstate, keys[t])
    u, state = single(x, state, keys[t])
    x = optax.apply_updates(x, u)
    drops_pmap.append(np.asarray(pstate[1].n_drops))
    drops_single.append(int(state[1].n_drops))
  drops_pmap = np.array(drops_pmap)
  assert np.all(drops_pmap == drops_pmap[:, :1])  # replicas agree
  np.testing.assert_array_equal(drops_pmap[:, 0], drops_single)
  assert drops_single[-1] >= 2
  np.testing.assert_allclose(pstate[1].lr_scale, state[1].lr_scale)


@pytest.mark.parametrize("factory", [
    functools.partial(autodrop, window_size=2, buffer_size=3,
                      drop_factor=0.5),
    functools.partial(autodrop_v1, steps_per_epoch=2, patience_epochs=2,
                      theta0=1.0),
])
def test_shard_map_model_parallel_matches_single_device(factory):
  n = jax.device_count()
  if n < 8:
    pytest.skip("needs 8 devices")
  mesh = jax.make_mesh((n,), ("x",),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  tx_single = optax.chain(optax.sgd(0.1, momentum=0.9), factory())
  tx_split = optax.chain(optax.sgd(0.1, momentum=0.9), factory(axis_name="x"))
  dim, steps = 8 * n, 60
  keys = jax.random.split(jax.random.key(3), steps)

  def run(tx, update):
    x = jnp.ones(dim)
    state = tx.init(x)
    record = []
    for t in range(steps):
      x, state = update(x, state, keys[t])
      record.append((int(state[1].n_drops), float(state[1].lr_scale),
                     float(state[1].last_omega)))
    return np.array(record)

  def step(tx, x, state, key):
    u, state = tx.update(_noisy_grads(key, x, 1.0), state, x)
    return optax.apply_updates(x, u), state

  single = run(tx_single, jax.jit(functools.partial(step, tx_single)))

  def local_step(x, state, key):
    # Each device holds a slice of x; the same global noise is sliced.
    idx = jax.lax.axis_index("x")
    g_full = _noisy_grads(key, jnp.ones(dim), 1.0) - jnp.linspace(
        0.5, 2.0, dim)  # the noise part only
    noise = jax.lax.dynamic_slice(g_full, (idx * (dim // n),), (dim // n,))
    scale = jax.lax.dynamic_slice(jnp.linspace(0.5, 2.0, dim),
                                  (idx * (dim // n),), (dim // n,))
    u, state = tx_split.update(x * scale + noise, state, x)
    return optax.apply_updates(x, u), state

  state_specs = jax.tree.map(
      lambda a: P("x") if a.ndim == 1 and a.shape[0] == dim else P(),
      tx_split.init(jnp.ones(dim)))
  sharded = jax.jit(jax.shard_map(
      local_step, mesh=mesh, in_specs=(P("x"), state_specs, P()),
      out_specs=(P("x"), state_specs)))

  def split_update(x, state, key):
    with jax.set_mesh(mesh):
      x = jax.sharding.reshard(x, P("x"))
      state = jax.tree.map(jax.sharding.reshard, state, state_specs)
      return sharded(x, state, key)

  with jax.set_mesh(mesh):
    split = run(tx_split, split_update)
  np.testing.assert_array_equal(split[:, 0], single[:, 0])
  np.testing.assert_allclose(split[:, 1], single[:, 1])
  np.testing.assert_allclose(split[:, 2], single[:, 2], atol=1e-3)
  assert single[-1, 0] >= 1


# ----------------------------------------------------------------- flax nnx


def test_flax_nnx_training_loop():
  from flax import nnx

  class Model(nnx.Module):

    def __init__(self, rngs):
      self.dense = nnx.Linear(4, 1, rngs=rngs)

    def __call__(self, x):
      return self.dense(x)[..., 0]

  model = Model(nnx.Rngs(0))
  optimizer = nnx.Optimizer(
      model,
      optax.chain(optax.sgd(0.1, momentum=0.9),
                  autodrop(window_size=2, buffer_size=3, drop_factor=0.5)),
      wrt=nnx.Param)
  w_true = jnp.array([1.0, -2.0, 0.5, 3.0])

  @nnx.jit
  def train_step(model, optimizer, x, y):
    def loss_fn(model):
      return jnp.mean((model(x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads, value=loss)  # value is ignored
    return loss

  key = jax.random.key(0)
  losses = []
  for i in range(80):
    kx, ky = jax.random.split(jax.random.fold_in(key, i))
    x = jax.random.normal(kx, (32, 4))
    y = x @ w_true + 0.5 * jax.random.normal(ky, (32,))
    losses.append(float(train_step(model, optimizer, x, y)))
  lr_scale = optax.tree.get(optimizer.opt_state, "lr_scale")
  n_drops = optax.tree.get(optimizer.opt_state, "n_drops")
  assert int(n_drops) >= 1
  assert float(lr_scale) == pytest.approx(0.5 ** int(n_drops))
  assert np.mean(losses[-20:]) < 0.1 * np.mean(losses[:5])
