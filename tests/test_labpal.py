"""Tests of LABPAL (`scale_by_labpal`, `labpal`).

Expected numbers are closed forms on quadratics (checked with NumPy in
float64); the fit tests run in float64, since in float32 the loss
differences over fd_step = 1.77e-4 carry rounding error of the order of the
curvature term.
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optax_adaptive
import optax_adaptive as oa
from optax_adaptive._flax_utils import nnx_value_fn
from optax_adaptive._labpal import labpal, scale_by_labpal
from optax_adaptive._labpal_measure import LabpalStatus
from tests._utils import (
    BatchNormNet,
    assert_tree_all_finite,
    assert_trees_all_close,
    assert_trees_all_equal,
    log_compilations,
)

_NO_DATA = {}  # approx_batch of a deterministic objective (one evaluation)


def _square(x):
  return jnp.sum(x**2)


@functools.cache
def _jitted_step(tx, loss):

  @jax.jit
  def run(params, state, approx_batch, kwargs):
    grad = jax.grad(loss)(params)
    updates, state = tx.update(grad, state, params, grad=grad,
                               value_fn=loss, approx_batch=approx_batch,
                               **kwargs)
    return optax.apply_updates(params, updates), state

  return run


def _step(tx, loss, params, state=None, approx_batch=_NO_DATA, **kwargs):
  """One jitted LABPAL update: (new params, new state)."""
  state = tx.init(params) if state is None else state
  kwargs = jax.tree.map(jnp.asarray, kwargs)
  return _jitted_step(tx, loss)(params, state, approx_batch, kwargs)


def _trusted(state):
  """A state past the untrusted warm-up (`untrusted_updates`)."""
  return state._replace(updates_done=jnp.array(10**6, jnp.int32))


# ------------------------------------------------ one measurement's fit


@pytest.mark.parametrize(
    "fit, alpha, max_step, x1, lr",
    [
        ("exact", 1.0, np.inf, 0.0, 0.5),
        ("reference", 1.0, np.inf, -2.999823, 0.9999705),
        ("reference", 1.8, 1.0, 1.2, 0.3),  # the defaults
    ],
)
def test_measurement_on_1d_quadratic(x64, fit, alpha, max_step, x1, lr):
  """f = x², x0 = 3, samples L = (9, 8.998938031329, 8.9401)."""
  del x64
  tx = labpal(mode="sgd", fit=fit, update_step_adaptation=alpha,
              max_step=max_step)
  new, state = _step(tx, _square, jnp.array([3.0]))
  assert new.dtype == jnp.float64
  np.testing.assert_allclose(new, [x1], rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(state.labpal_learning_rate, lr, rtol=1e-6)
  info = state.info
  np.testing.assert_allclose(
      [info.value0, info.value_h, info.value_mu],
      [9.0, 8.998938031329, 8.9401], rtol=1e-12)
  if fit == "reference":
    np.testing.assert_allclose([info.curvature, info.slope],
                               [0.5, -5.999823], rtol=1e-7)
  else:
    np.testing.assert_allclose([info.curvature, info.slope], [1.0, -6.0],
                               rtol=1e-7)
  assert int(info.status) == LabpalStatus.OK
  assert not bool(info.fit_failed)
  assert not bool(state.pending)
  assert int(state.updates_done) == 0


@pytest.mark.parametrize("fit, step", [("exact", 1.0783507),
                                       ("reference", 2.1565244)])
def test_measurement_on_2d_quadratic(x64, fit, step):
  """n-D: exact = PAL's line minimum, reference = 2 s* - h."""
  del x64
  h = jnp.array([1.0, 4.0])
  loss = lambda x: 0.5 * jnp.sum(h * x**2)
  tx = labpal(fit=fit, update_step_adaptation=1.0, max_step=np.inf)
  x0 = jnp.array([1.0, 1.0])
  new, state = _step(tx, loss, x0)
  np.testing.assert_allclose(state.labpal_step_length, step, rtol=1e-6)
  if fit == "exact":
    np.testing.assert_allclose(new, [48 / 65, -3 / 65], rtol=1e-6)
    np.testing.assert_allclose(state.labpal_learning_rate, 17 / 65,
                               rtol=1e-6)


def test_float32_small_loss_instance():
  """a = 1, x0 = 0.1 in float32: exact ≈ 0.1, reference ≈ 0.199823."""
  loss = lambda x: 0.5 * jnp.sum(x**2)
  for fit, expected, rtol in (("exact", 0.1, 1e-3),
                              ("reference", 0.199823, 2e-3)):
    tx = labpal(fit=fit, update_step_adaptation=1.0, max_step=np.inf)
    _, state = _step(tx, loss, jnp.array([0.1]))
    assert state.labpal_step_length.dtype == jnp.float32
    np.testing.assert_allclose(state.labpal_step_length, expected,
                               rtol=rtol)


# ---------------------------------------------- degenerate fits and caps


@pytest.mark.parametrize("alpha, x1", [(1.0, 1.0), (1.8, -0.6)])
def test_cap_applies_before_alpha(x64, alpha, x1):
  """Reference fit, s_max = 2: min(5.999823, 2)·α."""
  del x64
  tx = labpal(update_step_adaptation=alpha, max_step=2.0)
  new, _ = _step(tx, _square, jnp.array([3.0]))
  np.testing.assert_allclose(new, [x1], rtol=1e-6)


def test_negative_curvature_without_estimate_retries(x64):
  """f = -x²/2: failed fit, no estimate: x1 = x0, still pending."""
  del x64
  loss = lambda x: -0.5 * jnp.sum(x**2)
  new, state = _step(labpal(), loss, jnp.array([1.0]))
  np.testing.assert_allclose(new, [1.0])
  assert bool(state.pending) and not bool(state.have_estimate)
  assert int(state.info.status) == LabpalStatus.RETRY
  assert bool(state.info.fit_failed)
  assert int(state.updates_done) == -1


def test_negative_curvature_with_estimate_moves_by_old_step(x64):
  """A previous estimate s̄ is kept and used: x1 = 1 + s̄."""
  del x64
  tx = labpal(fit="exact", update_step_adaptation=1.0, max_step=np.inf)
  _, state = _step(tx, _square, jnp.array([0.25]))
  np.testing.assert_allclose(state.labpal_step_length, 0.25, rtol=1e-6)
  loss = lambda x: -0.5 * jnp.sum(x**2)
  new, state = _step(tx, loss, jnp.array([1.0]), state,
                     force_measure=True)
  np.testing.assert_allclose(new, [1.25], rtol=1e-6)
  np.testing.assert_allclose(state.labpal_step_length, 0.25, rtol=1e-6)
  assert int(state.info.status) == LabpalStatus.FIT_FAILED
  assert not bool(state.pending)


@pytest.mark.parametrize("fit", ["reference", "exact"])
def test_linear_loss_fails_fit(fit):
  """A = 0 is a failed fit, also when rounding makes A = ±1e-9."""
  loss = lambda x: jnp.sum(3.0 * x) + 7.0
  for x0 in ([1.0, 2.0], [0.3, -0.7], [5.0, 0.1]):
    new, state = _step(labpal(fit=fit), loss, jnp.array(x0))
    assert_trees_all_equal(new, jnp.array(x0))
    assert bool(state.info.fit_failed) and bool(state.pending)


@pytest.mark.parametrize("x0", [0.0, 1e-5, 1e3])
def test_direction_guard_retries_without_nan(x0):
  """||d|| outside [1e-3, 100] (incl. g = 0) retries."""
  new, state = _step(labpal(), _square, jnp.array([x0]))
  assert_trees_all_equal(new, jnp.array([x0], jnp.float32))
  assert bool(state.pending) and not bool(state.have_estimate)
  assert int(state.info.status) == LabpalStatus.RETRY
  assert_tree_all_finite(state)


def test_norm_bounds_are_configurable():
  tx = labpal(norm_bounds=(0.0, 1e4), fit="exact", update_step_adaptation=1.0,
              max_step=np.inf)
  new, state = _step(tx, _square, jnp.array([1e-5]))
  assert int(state.info.status) == LabpalStatus.OK
  assert abs(float(new[0])) < 1e-5


def test_nan_batch_is_skipped(x64):
  """NaN losses of one mini-batch are dropped (the reference's nanmean)."""
  del x64
  loss = lambda x, c: jnp.sum(x**2) * c
  approx = {"c": jnp.array([1.0, jnp.nan, 1.0, 1.0])}
  tx = labpal(fit="exact", update_step_adaptation=1.0, max_step=np.inf,
              approx_batches=2)

  @jax.jit
  def run(params):
    grad = jax.grad(loss)(params, 1.0)
    return tx.update(grad, tx.init(params), params, grad=grad,
                     value_fn=loss, approx_batch=approx)

  updates, state = run(jnp.array([3.0]))
  np.testing.assert_allclose(updates, [-3.0], rtol=1e-7)
  assert int(state.info.status) == LabpalStatus.OK


# ---------------------------------------------------- averaging, schedule


def test_trusted_measurements_are_averaged(x64):
  """Trusted raw steps 0.2 and 0.4 give s̄ = 0.3; failures keep it."""
  del x64
  tx = labpal(fit="exact", update_step_adaptation=1.0, max_step=np.inf)
  state = _trusted(tx.init(jnp.zeros(1)))
  _, state = _step(tx, _square, jnp.array([0.2]), state)
  np.testing.assert_allclose(state.labpal_step_length, 0.2, rtol=1e-6)
  _, state = _step(tx, _square, jnp.array([0.4]), state, force_measure=True)
  np.testing.assert_allclose(state.labpal_step_length, 0.3, rtol=1e-6)
  np.testing.assert_allclose(state.labpal_learning_rate,
                             (0.2 / 0.4 + 0.4 / 0.8) / 2, rtol=1e-6)
  assert int(state.hist_count) == 2
  loss = lambda x: -0.5 * jnp.sum(x**2)
  _, state = _step(tx, loss, jnp.array([1.0]), state, force_measure=True)
  np.testing.assert_allclose(state.labpal_step_length, 0.3, rtol=1e-6)
  assert int(state.hist_count) == 2


def test_untrusted_measurements_are_raw_and_not_recorded(x64):
  del x64
  tx = labpal(fit="exact", update_step_adaptation=1.0, max_step=np.inf)
  _, state = _step(tx, _square, jnp.array([0.2]))
  _, state = _step(tx, _square, jnp.array([0.4]), state, force_measure=True)
  np.testing.assert_allclose(state.labpal_step_length, 0.4, rtol=1e-6)
  assert int(state.hist_count) == 0


def test_ring_buffer_keeps_last_window(x64):
  del x64
  tx = labpal(fit="exact", update_step_adaptation=1.0, max_step=np.inf,
              avg_window=2)
  state = _trusted(tx.init(jnp.zeros(1)))
  for x0 in (0.1, 0.2, 0.4):
    _, state = _step(tx, _square, jnp.array([x0]), state, force_measure=True)
  np.testing.assert_allclose(state.labpal_step_length, 0.3, rtol=1e-6)
  assert int(state.hist_count) == 2 and int(state.hist_index) == 1


def test_reuse_schedule_and_warmup_trigger():
  """Measure at call 0, after U+1 updates, then every `reuse_steps`.

  With reuse_steps = 5 and U = 1: calls 0 (a), 3 (c: 2 training updates
  after the first), 8 and 13 (b: 4 training updates + the measurement);
  `force_measure` adds call 10 and restarts the count.
  """
  tx = labpal(reuse_steps=5, untrusted_updates=1)
  params = jnp.array([1.0, -0.5])
  state = tx.init(params)
  measured = []
  for call in range(17):
    measured.append(bool(state.pending) or call == 10)
    params, state = _step(tx, _square, params, state,
                          force_measure=call == 10)
  assert [i for i, m in enumerate(measured) if m] == [0, 3, 8, 10, 15]
  assert int(state.updates_done) == 16


def _linreg_loss(params, x, y):
  return jnp.mean((x @ params - y) ** 2)


def _k_batch_step(tx, k):
  """A train step on k accumulated batches, k static (docs/labpal.md,
  "Feeding the extra mini-batches")."""

  @jax.jit
  def step(params, state, xs, ys, approx_x, approx_y, force):
    def add_grad(total, xy):
      return total + jax.grad(_linreg_loss)(params, *xy) / k, None

    grad, _ = jax.lax.scan(add_grad, jnp.zeros_like(params), (xs, ys))
    updates, state = tx.update(
        grad, state, params, grad=grad, value_fn=_linreg_loss,
        approx_batch={"x": approx_x, "y": approx_y}, force_measure=force)
    return optax.apply_updates(params, updates), state, grad

  return step


def _line_minimum(params, unit, xs, ys):
  """argmin_t of the mean over batches of a least-squares loss on θ - t û."""
  resid = np.einsum("mbi,i->mb", xs, params) - ys
  along = np.einsum("mbi,i->mb", xs, unit)
  return np.sum(resid * along) / np.sum(along * along)


def test_batch_size_schedule_measures_over_k_times_m_batches(x64):
  """k 1 -> 2 at a schedule boundary (host dispatch, force_measure).

  The k = 2 measurement takes its direction from the mean gradient of the
  step's 2 batches, its losses from all M = 2 m_a batches (the first 2 being
  the step's own), and with the exact fit, α = 1 and no cap it lands on the
  minimum of their mean loss along the line (a least-squares loss is a
  parabola along any line). The following k = 2 training steps reuse s̄.
  """
  del x64
  m_a, b = 3, 8
  rng = np.random.default_rng(3)
  pool_x = rng.normal(size=(40, b, 3))
  pool_y = pool_x @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=(40, b))
  tx = labpal(reuse_steps=100, untrusted_updates=100, approx_batches=m_a,
              fit="exact", update_step_adaptation=1.0, max_step=1e9)
  steps = {1: _k_batch_step(tx, 1), 2: _k_batch_step(tx, 2)}
  schedule = [(0, 1), (3, 2)]  # (call, k), calls counted as updates
  params = jnp.array([0.3, 0.1, -0.2])
  state = tx.init(params)
  nxt = 0  # next unused pool batch
  for call in range(6):
    k = max(kk for start, kk in schedule if call >= start)
    boundary = any(call == start for start, _ in schedule[1:])
    own = slice(nxt, nxt + k)
    extra = slice(nxt + k, nxt + m_a * k)
    measuring = bool(state.pending) or boundary
    approx_x = np.concatenate([pool_x[own], pool_x[extra]])
    approx_y = np.concatenate([pool_y[own], pool_y[extra]])
    before = np.asarray(params)
    params, state, grad = steps[k](
        params, state, pool_x[own], pool_y[own], approx_x, approx_y,
        boundary)
    direction = np.asarray(grad)
    unit = direction / np.linalg.norm(direction)
    nxt += m_a * k if measuring else k
    if call == 3:  # the k = 2 measurement
      assert approx_x.shape[0] == 2 * m_a
      np.testing.assert_allclose(
          np.asarray(grad),
          np.mean([jax.grad(_linreg_loss)(before, x, y)
                   for x, y in zip(pool_x[own], pool_y[own])], axis=0),
          rtol=1e-12)
      step = _line_minimum(before, unit, approx_x, approx_y)
      np.testing.assert_allclose(np.asarray(params), before - step * unit,
                                 rtol=1e-9, atol=1e-12)
      np.testing.assert_allclose(
          float(state.info.value0),
          np.mean([_linreg_loss(before, x, y)
                   for x, y in zip(approx_x, approx_y)]), rtol=1e-12)
      np.testing.assert_allclose(float(state.labpal_step_length), step,
                                 rtol=1e-9)
      assert int(state.info.status) == LabpalStatus.OK
      assert int(state.since_measure) == 0 and not bool(state.pending)
    if call > 3:  # k = 2 training (NSGD): -s̄ d/||d||
      s_bar = float(state.labpal_step_length)
      np.testing.assert_allclose(np.asarray(params), before - s_bar * unit,
                                 rtol=1e-12)
  assert nxt == 3 + 1 + 1 + 6 + 2 + 2  # batches loaded: M per measurement
  assert int(state.updates_done) == 5 and int(state.since_measure) == 2
  assert [f._cache_size() for f in steps.values()] == [1, 1]


@pytest.mark.parametrize("mode", ["sgd", "nsgd"])
def test_training_step_reuses_estimate(mode):
  """SGD: -λ̄ g; NSGD: -s̄ g/||g||; value_fn is not needed."""
  tx = labpal(mode=mode, reuse_steps=100)
  state = tx.init(jnp.zeros(2))._replace(
      pending=jnp.array(False), have_estimate=jnp.array(True),
      labpal_step_length=jnp.array(0.5), labpal_learning_rate=jnp.array(0.1),
      updates_done=jnp.array(7, jnp.int32))
  grad = jnp.array([3.0, 4.0])
  updates, new_state = tx.update(grad, state, jnp.zeros(2), grad=grad,
                                 value_fn=_square, approx_batch=_NO_DATA)
  expected = -0.1 * grad if mode == "sgd" else -0.5 * grad / 5.0
  np.testing.assert_allclose(updates, expected, rtol=1e-6)
  assert int(new_state.updates_done) == 8
  assert int(new_state.since_measure) == 1


def test_momentum_buffer(x64):
  """d = β m + ḡ; the buffer exists only for nonzero momentum."""
  del x64
  assert labpal().init(jnp.zeros(2)).momentum is None
  tx = labpal(mode="sgd", momentum=0.5, reuse_steps=100)
  state = tx.init(jnp.zeros(2))._replace(
      pending=jnp.array(False), have_estimate=jnp.array(True),
      labpal_learning_rate=jnp.array(1.0),
      momentum=jnp.array([2.0, 0.0]))
  grad = jnp.array([1.0, 1.0])
  updates, state = tx.update(grad, state, jnp.zeros(2), grad=grad,
                             value_fn=_square, approx_batch=_NO_DATA)
  np.testing.assert_allclose(updates, [-2.0, -1.0])
  np.testing.assert_allclose(state.momentum, [2.0, 1.0])


# ------------------------------------- one jitted update, measuring cost


def test_one_compilation_and_value_fn_runs_only_when_measuring():
  """lax.cond: training steps evaluate nothing; measuring steps 3M times."""
  try:
    jax.devices("cpu")
  except RuntimeError:
    pytest.skip("jax.debug.callback needs the CPU backend, which "
                "JAX_PLATFORMS excludes (use e.g. JAX_PLATFORMS=cuda,cpu)")
  calls = []
  num_batches = 4

  def loss(params, x):
    jax.debug.callback(lambda: calls.append(1))
    return jnp.mean((x @ params - 1.0) ** 2)

  xs = jnp.asarray(np.random.default_rng(0).normal(size=(num_batches, 8, 3)),
                   jnp.float32)
  tx = labpal(reuse_steps=3, untrusted_updates=100, approx_batches=4)

  @jax.jit
  def step(params, state, i):
    x = xs[i % num_batches]
    grad = jax.grad(loss)(params, x)
    updates, state = tx.update(grad, state, params, grad=grad,
                               value_fn=loss,
                               approx_batch={"x": jnp.roll(xs, -i, 0)})
    return optax.apply_updates(params, updates), state

  params = jnp.array([0.1, 0.2, 0.3])
  state = tx.init(params)
  per_call = []
  with log_compilations() as compiles:
    for i in range(7):
      measuring = bool(state.pending)
      before = len(calls)
      params, state = step(params, state, i)
      jax.effects_barrier()
      per_call.append((measuring, len(calls) - before))
  assert len([c for c in compiles if "step" in c]) == 1
  # 1 call = the gradient's forward; + 3M for a measurement.
  for measuring, count in per_call:
    assert count == (1 + 3 * num_batches if measuring else 1), per_call
  assert [m for m, _ in per_call] == [True, False, False, True, False,
                                      False, True]


# ------------------------------------------------------------ API checks


@pytest.mark.parametrize("missing", ["grad", "value_fn", "approx_batch"])
def test_missing_extra_arg_is_named(missing):
  tx = labpal()
  kwargs = dict(grad=jnp.ones(2), value_fn=_square, approx_batch=_NO_DATA)
  del kwargs[missing]
  with pytest.raises(TypeError, match=f"`{missing}=`"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)), jnp.ones(2), **kwargs)


def test_missing_params_is_named():
  tx = labpal()
  with pytest.raises(ValueError, match="params"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)), None, grad=jnp.ones(2),
              value_fn=_square, approx_batch=_NO_DATA)


def test_bad_approx_batch():
  tx = labpal()
  loss = lambda p, x: jnp.sum(p * x)
  args = (jnp.ones(2), tx.init(jnp.ones(2)), jnp.ones(2))
  kw = dict(grad=jnp.ones(2), value_fn=loss)
  with pytest.raises(TypeError, match="not arguments of `value_fn`"):
    tx.update(*args, approx_batch={"z": jnp.ones((10, 2))}, **kw)
  with pytest.raises(ValueError, match="approx_batches"):
    tx.update(*args, approx_batch={"x": jnp.ones((7, 2))}, **kw)
  with pytest.raises(TypeError, match="mapping"):
    tx.update(*args, approx_batch=jnp.ones((10, 2)), **kw)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(mode="adam"), ValueError, "mode"),
        (dict(fit="cubic"), ValueError, "fit"),
        (dict(avg_window=0), ValueError, "avg_window"),
        (dict(avg_window=2.5), TypeError, "avg_window"),
        (dict(approx_batches=0), ValueError, "approx_batches"),
        (dict(measuring_step=0.0), ValueError, "measuring_step"),
        (dict(cap="growing"), ValueError, "cap"),
        (dict(fd_step=0.1), ValueError, "fd_step"),
        (dict(update_step_adaptation=0.0), ValueError,
         "update_step_adaptation"),
        (dict(max_step=0.0), ValueError, "max_step"),
        (dict(reuse_steps=0), ValueError, "reuse_steps"),
        (dict(momentum=1.0), ValueError, "momentum"),
        (dict(norm_bounds=(1.0, 0.5)), ValueError, "norm_bounds"),
        (dict(axis_name=3), TypeError, "axis_name"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, error, name):
  with pytest.raises(error, match=name):
    labpal(**kwargs)


def test_bf16_params_keep_dtype():
  params = {"w": jnp.array([0.5, -0.25], jnp.bfloat16)}
  loss = lambda p: jnp.sum(p["w"].astype(jnp.float32) ** 2)
  tx = labpal()

  @jax.jit
  def run(params, state):
    grad = jax.grad(loss)(params)
    return tx.update(grad, state, params, grad=grad, value_fn=loss,
                     approx_batch=_NO_DATA)

  state = tx.init(params)
  updates, new_state = run(params, state)
  assert updates["w"].dtype == jnp.bfloat16
  assert new_state.labpal_step_length.dtype == jnp.float32
  assert jax.tree.map(jax.typeof, new_state) == jax.tree.map(
      jax.typeof, state)
  assert_tree_all_finite((updates, new_state))


def test_eval_shape_init_and_inject_hyperparams():
  params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          params)
  tx = labpal(momentum=0.5)
  assert jax.tree.map(jax.typeof, tx.init(abstract)) == jax.tree.map(
      jax.typeof, tx.init(params))
  loss = lambda p: jnp.sum((p["w"] - 1) ** 2) + jnp.sum(p["b"] ** 2)
  grad = jax.grad(loss)(params)
  kw = dict(grad=grad, value_fn=loss, approx_batch=_NO_DATA)
  injected = optax.inject_hyperparams(
      labpal, static_args=("avg_window", "momentum"))(measuring_step=0.02)
  plain = labpal(measuring_step=0.02)
  u1, s1 = injected.update(grad, injected.init(params), params, **kw)
  u2, s2 = plain.update(grad, plain.init(params), params, **kw)
  assert_trees_all_close(u1, u2, rtol=1e-6)
  assert_trees_all_close(s1.inner_state, s2, rtol=1e-6)


# ---------------------------------------------------------- multi-device


def test_shard_map_axis_name_matches_global_batch(x64):
  """8 devices, each with 1/8 of every mini-batch, pmean'd == one device.

  float64, because in float32 the fit itself differs by rounding.
  """
  del x64
  n = jax.device_count()
  if n != 8:  # conftest.py gives 8 virtual CPU devices; a GPU host has 1
    pytest.skip(f"needs 8 devices (the CPU test setup); found {n}")
  rng = np.random.default_rng(1)
  num_batches, per_device = 4, 2
  xs = jnp.asarray(rng.normal(size=(num_batches, n * per_device, 3)))
  ys = jnp.asarray(rng.normal(size=(num_batches, n * per_device)))
  loss = lambda p, x, y: jnp.mean((jnp.tanh(x @ p) - y) ** 2)
  kw = dict(approx_batches=4, reuse_steps=2, untrusted_updates=0)

  def run(tx, params, xs, ys, axis):
    state = tx.init(params)
    for i in range(3):
      grad = jax.grad(loss)(params, xs[i], ys[i])
      if axis:
        grad = jax.lax.pmean(grad, axis)
      updates, state = tx.update(grad, state, params, grad=grad,
                                 value_fn=loss,
                                 approx_batch={"x": xs, "y": ys})
      params = optax.apply_updates(params, updates)
    return params, state.labpal_step_length, state.info.value0

  params = jnp.array([0.5, -1.0, 2.0])
  single = jax.jit(functools.partial(run, labpal(**kw)))(
      params, xs, ys, None)
  mesh = jax.make_mesh((n,), ("d",))
  sharded = jax.jit(jax.shard_map(
      functools.partial(run, labpal(axis_name="d", **kw), axis="d"),
      mesh=mesh, in_specs=(P(), P(None, "d"), P(None, "d")),
      out_specs=P(), check_vma=False))
  with jax.set_mesh(mesh):
    put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))
    multi = sharded(put(params, P()), put(xs, P(None, "d")),
                    put(ys, P(None, "d")))
  assert int(np.asarray(single[2] != 0))
  assert single[0].dtype == jnp.float64
  assert_trees_all_close(multi, single, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ Flax



def _mse(model, x, y):
  return jnp.mean((model(x) - y) ** 2)


def test_nnx_loop_under_nnx_jit_keeps_batchnorm_stats():
  """labpal in nnx.Optimizer under nnx.jit with value, grad, value_fn and
  a stacked approx_batch; the 3M extra forwards leave BatchStat alone."""
  rng = np.random.default_rng(0)
  num_batches, b = 10, 16
  xs = jnp.asarray(rng.normal(size=(num_batches, b, 3)), jnp.float32)
  ys = jnp.sin(xs[..., 0]) + 0.5 * xs[..., 1]
  model = BatchNormNet(nnx.Rngs(0))
  # The exact line minimum (α = 1): the reference fit's default 3.6 s*
  # overshoots on this small model.
  tx = labpal(reuse_steps=4, untrusted_updates=3, fit="exact",
              update_step_adaptation=1.0)
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, opt, i):
    x, y = xs[i % num_batches], ys[i % num_batches]
    value_fn = nnx_value_fn(model, _mse)
    value, grads = nnx.value_and_grad(_mse)(model, x, y)
    approx = {"x": jnp.roll(xs, -i, 0), "y": jnp.roll(ys, -i, 0)}
    opt.update(model, grads, value=value, grad=grads, value_fn=value_fn,
               approx_batch=approx)
    return value

  @nnx.jit
  def measure_only(model, opt):
    # Gradients of the pure value_fn: only LABPAL's forwards could touch
    # the statistics.
    value_fn = nnx_value_fn(model, _mse)
    params = nnx.state(model, nnx.Param)
    grads = jax.grad(value_fn)(params, xs[0], ys[0])
    opt.update(model, grads, grad=grads, value_fn=value_fn,
               approx_batch={"x": xs, "y": ys}, force_measure=True)

  @nnx.jit
  def full_loss(model):
    value_fn = nnx_value_fn(model, _mse)
    params = nnx.state(model, nnx.Param)
    return jnp.mean(jax.vmap(value_fn, (None, 0, 0))(params, xs, ys))

  full = lambda: float(full_loss(model))
  start = full()

  stats = jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat))
  measure_only(model, opt)
  assert_trees_all_equal(nnx.state(model, nnx.BatchStat), stats)
  assert int(optax.tree.get(opt.opt_state, "info").status) == (
      LabpalStatus.OK)
  for i in range(24):
    train_step(model, opt, i)
  assert full() < 0.3 * start
  step_length = optax.tree.get(opt.opt_state, "labpal_step_length")
  assert float(step_length) > 0


def test_scale_by_labpal_is_labpal():
  a, b = labpal(mode="sgd"), scale_by_labpal(mode="sgd")
  params = jnp.array([1.0, 2.0])
  assert jax.tree.map(jax.typeof, a.init(params)) == jax.tree.map(
      jax.typeof, b.init(params))


def test_labpal_shows_the_signature_of_scale_by_labpal():
  """One signature for both names (docs, inject_hyperparams), and errors
  that name the parameter whichever name is called."""
  assert inspect.signature(labpal) == inspect.signature(scale_by_labpal)
  assert labpal.__name__ == "labpal"
  assert "Examples" in labpal.__doc__ and "Args" in scale_by_labpal.__doc__
  with pytest.raises(ValueError, match="fd_step"):
    labpal(fd_step=0.1, measuring_step=0.01)
  with pytest.raises(TypeError, match="unexpected keyword argument 'mu'"):
    labpal(mu=0.1)
  tx = optax.inject_hyperparams(labpal, static_args=("avg_window",))(
      mode="sgd", max_step=0.5)
  assert tx.init(jnp.zeros(2)).hyperparams["max_step"] == 0.5


@pytest.mark.parametrize("factory", [labpal, scale_by_labpal])
def test_measure_step_warning_points_at_the_caller(factory):
  """The deprecation warning names the user's line (so that Python's
  default filter shows it in ``__main__``), not a line of the package."""
  with pytest.warns(DeprecationWarning) as record:
    factory(measure_step=0.02)
  assert record[0].filename == __file__


def test_status_is_a_value_of_the_public_enum():
  """``info.status`` is an int32 that ``optax_adaptive.LabpalStatus`` names."""
  status = optax_adaptive.LabpalStatus
  assert [(s.name, int(s)) for s in status] == [
      ("NONE", 0), ("OK", 1), ("FIT_FAILED", 2), ("RETRY", 3)]
  assert LabpalStatus.RETRY is status.RETRY
  state = labpal().init(jnp.zeros(2))
  assert state.info.status.dtype == jnp.int32
  assert status(int(state.info.status)) is status.NONE


# ------------------------------------- data keywords of value_fn (optax)


def _xy_loss(params, x, y):
  return jnp.mean((x @ params - y) ** 2)


def _xy_update(tx, **kwargs):
  xs = jnp.ones((10, 4, 2))
  params = jnp.array([0.5, -0.5])
  grad = jax.grad(_xy_loss)(params, xs[0], xs[0, :, 0])
  return tx.update(grad, tx.init(params), params, grad=grad,
                   value_fn=_xy_loss, **kwargs)


def test_unconsumed_keyword_is_an_error():
  """A misspelt data keyword is rejected, as optax's line searches do."""
  xs, ys = jnp.ones((10, 4, 2)), jnp.ones((10, 4))
  with pytest.raises(TypeError, match=r"\['yy'\].*value_fn\(params, x, y\)"):
    _xy_update(labpal(), approx_batch={"x": xs}, yy=ys)


def test_missing_data_keyword_is_named():
  with pytest.raises(TypeError,
                     match=r"\['x', 'y'\].*passed to `update` by name"):
    _xy_update(labpal(), approx_batch={})
  with pytest.raises(TypeError, match=r"\['y'\].*`approx_batch`"):
    _xy_update(labpal(), approx_batch={"x": jnp.ones((10, 4, 2))})
  # Shared keywords and per-batch keys together are complete.
  updates, _ = _xy_update(labpal(), approx_batch={"x": jnp.ones((10, 4, 2))},
                          y=jnp.ones(4))
  assert_tree_all_finite(updates)


# --------------------------------- the direction is the incoming updates


def test_zeroed_updates_before_labpal_do_not_move():
  """chain(scale(0), labpal): a zero direction is rejected (norm guard)."""
  params = jnp.array([1.0, -0.5])
  plain, _ = _step(labpal(), _square, params)
  assert not np.allclose(plain, params)
  zeroed, state = _step(optax.chain(optax.scale(0.0), scale_by_labpal()),
                        _square, params)
  assert_trees_all_equal(zeroed, params)
  assert int(state[1].info.status) == LabpalStatus.RETRY


def test_weight_decay_before_labpal_sets_the_direction(x64):
  """d = g + w θ from add_decayed_weights; the line is θ - t d/||d||.

  value_fn is the undecayed quadratic ½ θᵀHθ, H = diag(1, 4); with the
  exact fit, α = 1 and no cap the step is that loss's minimum along û.
  """
  del x64
  hess = jnp.array([1.0, 4.0])
  loss = lambda x: 0.5 * jnp.sum(hess * x**2)
  x0 = jnp.array([1.0, 1.0])
  tx = optax.chain(
      optax.add_decayed_weights(1.0),
      labpal(fit="exact", update_step_adaptation=1.0, max_step=np.inf))
  new, state = _step(tx, loss, x0)
  d = np.array([1.0 + 1.0, 4.0 + 1.0])  # g + w θ
  unit = d / np.linalg.norm(d)
  step = np.dot(np.array([1.0, 4.0]), unit) / np.dot(np.array(hess) * unit,
                                                      unit)
  np.testing.assert_allclose(new, x0 - step * unit, rtol=1e-9)
  np.testing.assert_allclose(state[1].labpal_learning_rate,
                             step / np.linalg.norm(d), rtol=1e-9)


@pytest.mark.parametrize("mode", ["sgd", "nsgd"])
def test_clipping_before_labpal_takes_effect(mode):
  """Training steps use the clipped updates: -λ̄ c or -s̄ c/||c||."""
  tx = optax.chain(optax.clip(1.0), labpal(mode=mode, reuse_steps=100))
  state = tx.init(jnp.zeros(2))
  state = (state[0], state[1]._replace(
      pending=jnp.zeros_like(state[1].pending),
      have_estimate=jnp.array(True),
      labpal_step_length=jnp.array(0.5), labpal_learning_rate=jnp.array(0.1),
      updates_done=jnp.array(7, jnp.int32)))
  grad = jnp.array([3.0, 0.5])
  clipped = np.array([1.0, 0.5])
  updates, _ = tx.update(grad, state, jnp.zeros(2), grad=grad,
                         value_fn=_square, approx_batch=_NO_DATA)
  expected = (-0.1 * clipped if mode == "sgd"
              else -0.5 * clipped / np.linalg.norm(clipped))
  np.testing.assert_allclose(updates, expected, rtol=1e-6)


# ------------------------------------------------- measuring_step (μ) name


def test_measuring_step_is_the_name_and_measure_step_is_deprecated(x64):
  """PAL's name `measuring_step`; LABPAL's old `measure_step` still works."""
  del x64
  new, state = _step(labpal(measuring_step=0.02), _square, jnp.array([3.0]))
  with pytest.warns(DeprecationWarning, match="measuring_step"):
    old_tx = labpal(measure_step=0.02)
  old, old_state = _step(old_tx, _square, jnp.array([3.0]))
  assert_trees_all_equal((old, old_state), (new, state))
  np.testing.assert_allclose(state.info.value_mu, (3.0 - 0.02) ** 2,
                             rtol=1e-12)
  with pytest.raises(TypeError, match=r"measure_step.*measuring_step"):
    labpal(measuring_step=0.02, measure_step=0.02)


# ------------------------------------------------ low-precision params


def _least_squares_run(dtype, steps=20, **kwargs):
  """params zeros(3) in `dtype`, loss in float32, 4 approximation batches,
  the step's own batch fixed (the first of them)."""
  rng = np.random.default_rng(0)
  xs = jnp.asarray(rng.normal(size=(4, 16, 3)), jnp.float32)
  ys = xs @ jnp.array([1.0, -2.0, 0.5])
  loss = lambda p, x, y: jnp.mean((x @ p.astype(jnp.float32) - y) ** 2)
  tx = labpal(approx_batches=4, **kwargs)

  @jax.jit
  def step(params, state):
    value, grad = jax.value_and_grad(loss)(params, xs[0], ys[0])
    updates, state = tx.update(grad, state, params, value=value, grad=grad,
                               value_fn=loss,
                               approx_batch={"x": xs, "y": ys})
    return optax.apply_updates(params, updates), state

  params = jnp.zeros(3, dtype)
  state = tx.init(params)
  start = float(loss(params, xs[0], ys[0]))
  for _ in range(steps):
    params, state = step(params, state)
  return params, state, start, float(loss(params, xs[0], ys[0]))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_low_precision_params_train_at_defaults(dtype):
  """The line is probed in float32: bf16 cannot represent θ - h û."""
  params, state, start, end = _least_squares_run(dtype)
  assert params.dtype == dtype
  assert int(state.info.status) == LabpalStatus.OK
  assert int(state.updates_done) == 19
  assert end < 0.5 * start
  assert int(oa.diagnostics(state)["labpal/retries"]) == 0


def test_retries_are_counted_in_diagnostics():
  """A run that keeps retrying shows it: `labpal/retries` counts the
  consecutive calls without a weight update; a move resets it."""
  tx = labpal()
  params = jnp.array([0.0, 0.0])  # g = 0: the direction guard rejects
  state = None
  for calls in range(1, 4):
    params, state = _step(tx, _square, params, state)
    assert int(oa.diagnostics(state)["labpal/retries"]) == calls
    assert int(state.updates_done) == -1
  _, state = _step(tx, _square, jnp.array([0.3, -0.2]), state)
  assert int(oa.diagnostics(state)["labpal/retries"]) == 0
  assert int(state.updates_done) == 0


@pytest.mark.parametrize("cap", ["fixed", "reference"])
def test_diagnostics_are_numbers_a_logger_takes(cap):
  """No booleans (np.round rejects them) and no empty arrays."""
  tx = labpal() if cap == "fixed" else labpal(cap=cap)
  state = tx.init(jnp.zeros(2))
  for _ in range(2):
    out = oa.diagnostics(state)
    assert "labpal/pending" in out
    assert ("labpal/cap_scale" in out) == (cap == "reference")
    for key, value in out.items():
      value = np.asarray(value)
      assert value.dtype != np.bool_ and value.size > 0, key
      np.round(value, 4)
    _, state = _step(tx, _square, jnp.array([0.3, 0.1]), state)


# ---------------------------------------- the reference's growing cap


def _raw_steps(tx, measurements, x0=3.0):
  """info.raw_step and cap_scale of repeated measurements from x0 on x²."""
  state, out = None, []
  for _ in range(measurements):
    _, state = _step(tx, _square, jnp.array([x0]), state, force_measure=True)
    out.append((float(state.info.raw_step), float(state.cap_scale)))
  return out


def test_reference_cap_grows_by_alpha_per_binding_measurement(x64):
  """The authors' code rescales its cap tensor in place when it binds.

  x² from x0 = 3: s_ref = 2·3 - h = 5.999823 every time. With s_max = 1 and
  α = 1.8 the cap binds while s_max·1.8^j < 5.999823, so the raw steps are
  1.8, 3.24, 5.832, 10.4976 and then α·s_ref = 10.7996814 (cap 10.4976).
  """
  del x64
  steps = _raw_steps(labpal(cap="reference"), 5)
  np.testing.assert_allclose(
      steps,
      [(1.8, 1.8), (3.24, 3.24), (5.832, 5.832), (10.4976, 10.4976),
       (1.8 * 5.999823, 10.4976)], rtol=1e-7)


def test_reference_cap_shrinks_with_alpha_below_one(x64):
  del x64
  steps = _raw_steps(labpal(cap="reference", update_step_adaptation=0.5), 3)
  np.testing.assert_allclose(steps, [(0.5, 0.5), (0.25, 0.25),
                                     (0.125, 0.125)], rtol=1e-12)


def test_fixed_cap_is_the_default_and_stays(x64):
  del x64
  tx = labpal()
  assert tx.init(jnp.zeros(1)).cap_scale is None
  state = None
  for _ in range(3):
    _, state = _step(tx, _square, jnp.array([3.0]), state, force_measure=True)
    np.testing.assert_allclose(state.info.raw_step, 1.8, rtol=1e-12)


# ------------------------------------ float64 against NumPy (x64)


def _numpy_labpal(xs, ys, theta, calls, *, reuse, untrusted, h=1.77e-4,
                  mu=0.01, alpha=1.8, max_step=1.0, eps=1e-6):
  """LABPAL (NSGD, reference fit) written out in NumPy float64."""
  loss = lambda p, x, y: np.mean((x @ p - y) ** 2)
  done, since, pending, s_bar, hist = -1, 0, True, None, []
  for call in range(calls):
    x, y = xs[call % len(xs)], ys[call % len(xs)]
    grad = 2 * x.T @ (x @ theta - y) / len(y)
    norm = np.linalg.norm(grad)
    unit = grad / norm
    if pending:
      approx = [(np.roll(xs, -call, 0)[m], np.roll(ys, -call, 0)[m])
                for m in range(len(xs))]
      losses = np.array([[loss(theta - t * unit, bx, by)
                          for t in (0.0, h, mu)] for bx, by in approx])
      d_h = np.mean(losses[:, 1] - losses[:, 0])
      d_mu = np.mean(losses[:, 2] - losses[:, 0])
      curv = ((d_mu - d_h) / (mu - h) - d_h / h) / mu
      a, b = curv / 2, d_h / h  # np.gradient twice over [0, h, μ]
      assert a > 0 > b
      raw = max(alpha * min(-b / (2 * a), max_step), eps)
      if done > untrusted:
        hist.append(raw)
        s_bar = np.mean(hist)
      else:
        s_bar = raw
      theta = theta - s_bar * unit
      since = 0
    else:
      theta = theta - s_bar * unit
      since += 1
    done += 1
    pending = since >= reuse - 1 or done == untrusted + 1
  return theta, s_bar


def test_float64_matches_numpy(x64):
  """Measurements, averaging and NSGD steps in float64 (no float32 state)."""
  del x64
  rng = np.random.default_rng(5)
  xs = rng.normal(size=(4, 16, 3))
  ys = xs @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.normal(size=(4, 16))
  theta0 = np.array([0.2, 0.1, -0.3])
  tx = labpal(reuse_steps=3, untrusted_updates=1, approx_batches=4)
  params = jnp.asarray(theta0)
  state = tx.init(params)
  for leaf in jax.tree.leaves(state):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float64

  jxs, jys = jnp.asarray(xs), jnp.asarray(ys)

  @jax.jit
  def step(params, state, call):
    grad = jax.grad(_linreg_loss)(params, jxs[call % 4], jys[call % 4])
    updates, state = tx.update(
        grad, state, params, grad=grad, value_fn=_linreg_loss,
        approx_batch={"x": jnp.roll(jxs, -call, 0),
                      "y": jnp.roll(jys, -call, 0)})
    return optax.apply_updates(params, updates), state

  for call in range(9):
    params, state = step(params, state, call)
  theta, s_bar = _numpy_labpal(xs, ys, theta0, 9, reuse=3, untrusted=1)
  assert params.dtype == jnp.float64
  assert int(state.hist_count) == 2
  np.testing.assert_allclose(params, theta, rtol=1e-9)
  np.testing.assert_allclose(state.labpal_step_length, s_bar, rtol=1e-9)
