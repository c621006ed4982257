"""Tests of PAL (`scale_by_pal`, `pal`) and the Flax value_fn builders.

Expected numbers are closed forms on quadratics (worked out in the
docstrings, checked with NumPy in float64).
"""

import doctest
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_adaptive
from optax_adaptive import PalCase, _flax_utils, _labpal, _pal, _parabola
from optax_adaptive._flax_utils import linen_value_fn, nnx_value_fn
from optax_adaptive._pal import pal, scale_by_pal
from tests._utils import (
    BatchNormNet,
    assert_tree_all_finite,
    assert_trees_all_close,
    assert_trees_all_equal,
    log_compilations,
)


def _square(x):
  return jnp.sum(x**2)


def _pal_state(state):
  """The ScaleByPalState inside a `pal` chain state."""
  return optax.tree.get(state, "ScaleByPalState")


def _one_step(tx, loss, x0, **data):
  """One jitted PAL step from x0: (x1, ScaleByPalState)."""

  @jax.jit
  def step(x0, data):
    state = tx.init(x0)
    value, grad = jax.value_and_grad(loss)(x0, **data)
    updates, state = tx.update(
        grad, state, x0, value=value, grad=grad, value_fn=loss, **data
    )
    return optax.apply_updates(x0, updates), _pal_state(state)

  return step(x0, data)


# --------------------------------------------------- steps on quadratics


@pytest.mark.parametrize("mu", [1.0, 0.1])
def test_lands_on_minimum_of_1d_quadratic(mu, x64):
  """f = x², x0 = 3, α = 1: x1 = 0 exactly, lr = 1/a = 0.5."""
  del x64
  tx = pal(measuring_step=mu, update_step_adaptation=1.0, max_step=10.0,
           momentum=0.0)
  x1, state = _one_step(tx, _square, jnp.array([3.0]))
  assert x1.dtype == jnp.float64
  np.testing.assert_allclose(x1, [0.0], atol=1e-12)
  np.testing.assert_allclose(state.pal_learning_rate, 0.5, rtol=1e-12)
  np.testing.assert_allclose(state.pal_step_length, 3.0, rtol=1e-12)
  np.testing.assert_allclose(state.info.curvature, 1.0, rtol=1e-12)
  np.testing.assert_allclose(state.info.slope, -6.0, rtol=1e-6)
  assert int(state.info.case) == PalCase.MINIMUM
  assert not bool(state.info.fit_failed)


def test_lands_on_minimum_float32():
  """PAL with μ = 1 is robust in float32."""
  tx = pal(update_step_adaptation=1.0, max_step=10.0, momentum=0.0)
  x1, _ = _one_step(tx, _square, jnp.array([3.0]))
  np.testing.assert_allclose(x1, [0.0], atol=1e-6)


def test_defaults_cap_after_alpha():
  """Defaults α = 1/0.6, s_max = 3.16: s = 5 capped, x1 = -0.16."""
  x1, state = _one_step(pal(momentum=0.0), _square, jnp.array([3.0]))
  np.testing.assert_allclose(x1, [-0.16], rtol=1e-5)
  np.testing.assert_allclose(state.pal_learning_rate, 0.52667, rtol=1e-4)


def test_cap():
  """a = 2, x0 = 3, α = 1, s_max = 2: s = 2, x1 = 1."""
  tx = pal(update_step_adaptation=1.0, max_step=2.0, momentum=0.0)
  x1, _ = _one_step(tx, _square, jnp.array([3.0]))
  np.testing.assert_allclose(x1, [1.0], rtol=1e-6)


def test_2d_quadratic_line_minimum(x64):
  """H = diag(1, 4), x0 = (1, 1): Cauchy step, x1 = (48, -3)/65."""
  del x64
  h = jnp.array([1.0, 4.0])
  loss = lambda x: 0.5 * jnp.sum(h * x**2)
  tx = pal(update_step_adaptation=1.0, max_step=10.0, momentum=0.0)
  x1, state = _one_step(tx, loss, jnp.array([1.0, 1.0]))
  np.testing.assert_allclose(x1, [48 / 65, -3 / 65], rtol=1e-12)
  np.testing.assert_allclose(loss(x1), 18 / 65, rtol=1e-12)
  np.testing.assert_allclose(state.pal_learning_rate, 17 / 65, rtol=1e-12)
  np.testing.assert_allclose(state.info.curvature, 65 / 34, rtol=1e-12)
  np.testing.assert_allclose(state.pal_step_length, 1.0783507, rtol=1e-7)
  np.testing.assert_allclose(state.info.slope, -np.sqrt(17), rtol=1e-12)


def test_float64_steps_with_momentum_match_numpy_float64(x64):
  """Five default PAL steps (β = 0.4, μ = 1) in float64, as in NumPy."""
  del x64
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(16, 3)), rng.normal(size=16)
  loss = lambda p, x, y: jnp.mean((x @ p - y) ** 2)
  tx = pal()
  params, state = jnp.zeros(3), tx.init(jnp.zeros(3))
  theta, trace = np.zeros(3), np.zeros(3)
  mse = lambda q: np.mean((x @ q - y) ** 2)
  for _ in range(5):
    value, grad = jax.value_and_grad(loss)(params, x, y)
    updates, state = tx.update(grad, state, params, value=value, grad=grad,
                               value_fn=loss, x=x, y=y)
    params = optax.apply_updates(params, updates)
    g = 2 * x.T @ (x @ theta - y) / len(y)
    trace = 0.4 * trace + g
    unit = -trace / np.linalg.norm(trace)
    b = g @ unit
    a = mse(theta + unit) - mse(theta) - b  # μ = 1
    s = 0.0 if b >= 0 else min(-b / (2 * a) / 0.6 if a > 0 else 1.0, 3.16)
    theta = theta + s * unit
    assert params.dtype == _pal_state(state).pal_step_length.dtype
    assert params.dtype == jnp.float64
    np.testing.assert_allclose(params, theta, rtol=1e-13)
    np.testing.assert_allclose(_pal_state(state).pal_step_length, s,
                               rtol=1e-13)


# ----------------------------------------------------- degenerate lines


def test_negative_curvature_steps_to_mu():
  """f = -x²/2, x0 = 1: a = -0.5, PAL takes s = μ = 1, x1 = 2."""
  loss = lambda x: -0.5 * jnp.sum(x**2)
  x1, state = _one_step(pal(momentum=0.0), loss, jnp.array([1.0]))
  np.testing.assert_allclose(x1, [2.0], rtol=1e-6)
  np.testing.assert_allclose(state.info.curvature, -0.5, rtol=1e-6)
  assert int(state.info.case) == PalCase.CONCAVE
  assert bool(state.info.fit_failed)


@pytest.mark.parametrize("mu", [1.0, 0.5, 0.1])
def test_linear_loss_steps_to_mu(mu):
  """A linear loss (a = 0 up to rounding) gives s = μ."""
  loss = lambda x: jnp.sum(jnp.array([2.0, -0.3, 1.1]) * x) + 5.0
  tx = pal(measuring_step=mu, momentum=0.0)
  x0 = jnp.array([1.0, -1.0, 0.3])
  x1, state = _one_step(tx, loss, x0)
  np.testing.assert_allclose(jnp.linalg.norm(x1 - x0), mu, rtol=1e-5)
  assert int(state.info.case) == PalCase.CONCAVE


def test_ascent_direction_gives_no_step():
  """b >= 0 (an uphill direction) gives s = 0, x1 = x0."""
  tx = scale_by_pal()
  x0 = jnp.array([3.0])
  value, grad = jax.value_and_grad(_square)(x0)
  updates, state = tx.update(grad, tx.init(x0), x0, value=value, grad=grad,
                             value_fn=_square)  # +grad is uphill
  assert_trees_all_equal(updates, jnp.zeros(1))
  assert int(state.info.case) == PalCase.NOT_DESCENT


def test_zero_gradient_no_nan():
  """g = 0: n = eps, x1 = x0, nothing is NaN."""
  x0 = jnp.zeros(3)
  x1, state = _one_step(pal(), _square, x0)
  assert_trees_all_equal(x1, x0)
  assert_tree_all_finite(state)


def test_non_finite_measurement_returns_to_theta():
  """A NaN extra loss gives s = 0 (the reference stays at θ + μû)."""
  x0 = jnp.array([3.0])
  tx = pal(momentum=0.0)
  state = tx.init(x0)
  value, grad = jax.value_and_grad(_square)(x0)
  nan_fn = lambda x: jnp.sum(x) * jnp.nan
  updates, state = tx.update(grad, state, x0, value=value, grad=grad,
                             value_fn=nan_fn)
  assert_trees_all_equal(updates, jnp.zeros(1))
  assert int(_pal_state(state).info.case) == PalCase.NOT_FINITE
  assert float(_pal_state(state).pal_learning_rate) == 0.0


def test_slope_from_norm_without_grad():
  """exact_directional_derivative=False: b = -||u||, `grad` not needed."""
  tx = optax.chain(optax.sgd(1.0),
                   scale_by_pal(update_step_adaptation=1.0, max_step=10.0,
                                exact_directional_derivative=False))
  x0 = jnp.array([3.0])
  value, grad = jax.value_and_grad(_square)(x0)
  updates, _ = tx.update(grad, tx.init(x0), x0, value=value,
                         value_fn=_square)
  np.testing.assert_allclose(x0 + updates, [0.0], atol=1e-5)


# --------------------------------------------------------- API conventions


@pytest.mark.parametrize("missing", ["value", "grad", "value_fn"])
def test_missing_extra_arg_is_named(missing):
  x0 = jnp.array([3.0])
  tx = pal()
  kwargs = dict(value=jnp.array(9.0), grad=jnp.array([6.0]),
                value_fn=_square)
  del kwargs[missing]
  with pytest.raises(TypeError, match=f"`{missing}=`"):
    tx.update(jnp.array([6.0]), tx.init(x0), x0, **kwargs)


def test_missing_params_is_named():
  tx = scale_by_pal()
  with pytest.raises(ValueError, match="params"):
    tx.update(jnp.ones(1), tx.init(jnp.ones(1)), None, value=1.0,
              grad=jnp.ones(1), value_fn=_square)


@pytest.mark.parametrize(
    "name, value",
    [("measuring_step", 0.0), ("update_step_adaptation", -1.0),
     ("max_step", -1.0), ("eps", 0.0), ("momentum", 1.0)],
)
def test_bad_hyperparameters_are_named(name, value):
  with pytest.raises(ValueError, match=name):
    pal(**{name: value})


def test_bad_axis_name():
  with pytest.raises(TypeError, match="axis_name"):
    scale_by_pal(axis_name=0)


def test_momentum_is_heavy_ball_trace():
  """pal = chain(trace(β), scale(-1), scale_by_pal) (docs/labpal.md, "PAL")."""
  loss = lambda p, a: a * (jnp.sum(p["w"] ** 2) + p["b"] ** 2)
  manual = optax.chain(optax.trace(decay=0.4), optax.scale(-1.0),
                       scale_by_pal())
  params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
  results = []
  for tx in (pal(momentum=0.4), manual):
    p, state = params, tx.init(params)
    for a in (1.0, 3.0, 0.5):
      value, grad = jax.value_and_grad(loss)(p, a)
      upd, state = tx.update(grad, state, p, value=value, grad=grad,
                             value_fn=loss, a=a)
      p = optax.apply_updates(p, upd)
    results.append(p)
  assert_trees_all_equal(results[0], results[1])


def test_data_kwargs_routed_by_name_without_recompile():
  loss = lambda p, x, y: jnp.mean((x @ p - y) ** 2)
  tx = pal()
  x, y = jnp.ones((4, 2)), jnp.arange(4.0)
  params = jnp.zeros(2)

  @jax.jit
  def step(params, state):
    value, grad = jax.value_and_grad(loss)(params, x, y)
    return tx.update(grad, state, params, value=value, grad=grad,
                     value_fn=loss, x=x, y=y)

  state = tx.init(params)
  updates, state = step(params, state)
  with log_compilations() as compiles:
    step(optax.apply_updates(params, updates), state)
  assert not compiles
  assert float(loss(optax.apply_updates(params, updates), x, y)) < float(
      loss(params, x, y))


def _xy_loss(params, x, y):
  return jnp.mean((x @ params - y) ** 2)


@pytest.mark.parametrize("tx", [pal(), scale_by_pal()], ids=["pal",
                                                            "scale_by_pal"])
def test_unconsumed_keyword_is_an_error(tx):
  """A misspelt data keyword is rejected, as optax's line searches do."""
  x, y = jnp.ones((4, 2)), jnp.arange(4.0)
  params = jnp.zeros(2)
  value, grad = jax.value_and_grad(_xy_loss)(params, x, y)
  with pytest.raises(TypeError, match=r"\['yy'\].*value_fn\(params, x, y\)"):
    tx.update(grad, tx.init(params), params, value=value, grad=grad,
              value_fn=_xy_loss, x=x, yy=y)


def test_missing_data_keyword_is_named():
  params = jnp.zeros(2)
  tx = pal()
  with pytest.raises(TypeError,
                     match=r"\['x', 'y'\].*passed to `update` by name"):
    tx.update(params, tx.init(params), params, value=jnp.array(1.0),
              grad=params, value_fn=_xy_loss)
  # A parameter with a default may be left out.
  loss = lambda p, x, scale=2.0: scale * jnp.sum((x * p) ** 2)
  tx.update(params, tx.init(params), params, value=jnp.array(0.0),
            grad=params, value_fn=loss, x=jnp.ones(2))


def test_chains_with_optax_line_search():
  """Same kwargs as optax's line searches, and both in one chain.

  PAL normalises its incoming direction, so a backtracking search before it
  (any positive learning rate) leaves PAL's step unchanged.
  """
  loss = lambda p, x, y: jnp.mean((x @ p - y) ** 2)
  x = jnp.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
  y = jnp.array([1.0, 0.0, 2.0])
  params = jnp.array([0.3, -0.2])
  value, grad = jax.value_and_grad(loss)(params, x, y)
  kwargs = dict(value=value, grad=grad, value_fn=loss, x=x, y=y)
  backtracking = optax.scale_by_backtracking_linesearch(
      max_backtracking_steps=15)
  outs = {}
  for name, tx in {
      "optax": optax.chain(optax.sgd(1.0), backtracking),
      "pal": optax.chain(optax.sgd(1.0), scale_by_pal()),
      "both": optax.chain(optax.sgd(1.0), backtracking, scale_by_pal()),
  }.items():
    updates, _ = tx.update(grad, tx.init(params), params, **kwargs)
    outs[name] = optax.apply_updates(params, updates)
  assert float(loss(outs["optax"], x, y)) < float(value)
  assert_trees_all_close(outs["both"], outs["pal"], rtol=1e-5)


def test_bf16_params_keep_dtype_and_f32_stats():
  params = {"w": jnp.array([1.0, -2.0], jnp.bfloat16)}
  loss = lambda p: jnp.sum(p["w"].astype(jnp.float32) ** 2)
  tx = pal()
  state = tx.init(params)
  value, grad = jax.value_and_grad(loss)(params)
  updates, state = tx.update(grad, state, params, value=value, grad=grad,
                             value_fn=loss)
  assert updates["w"].dtype == jnp.bfloat16
  assert _pal_state(state).pal_learning_rate.dtype == jnp.float32
  assert_tree_all_finite(updates)


def _numpy_pal(xs, ys, theta, *, mu=1.0, alpha=1 / 0.6, max_step=3.16,
               beta=0.4):
  """pal() at its defaults written out in NumPy float64, one batch a step."""
  loss = lambda p, x, y: np.mean((x @ p - y) ** 2)
  buf = np.zeros_like(theta)
  for x, y in zip(xs, ys):
    grad = 2 * x.T @ (x @ theta - y) / len(y)
    buf = beta * buf + grad  # optax.trace
    unit = -buf / np.linalg.norm(buf)
    slope = grad @ unit
    value, value_mu = loss(theta, x, y), loss(theta + mu * unit, x, y)
    curv = (value_mu - value - slope * mu) / mu**2
    assert curv > 0 > slope
    step = min(alpha * -slope / (2 * curv), max_step)
    theta = theta + step * unit
  return theta, step / np.linalg.norm(buf)


def test_float64_matches_numpy(x64):
  """All scalar state and arithmetic in float64 for float64 params."""
  del x64
  rng = np.random.default_rng(2)
  xs = rng.normal(size=(6, 16, 3))
  ys = xs @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.normal(size=(6, 16))
  theta0 = np.array([0.2, 0.1, -0.3])
  loss = lambda p, x, y: jnp.mean((x @ p - y) ** 2)
  tx = pal()
  params = jnp.asarray(theta0)
  state = tx.init(params)
  for leaf in jax.tree.leaves(state):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float64
  step = jax.jit(lambda p, s, x, y: _step_with(tx, loss, p, s, x=x, y=y))
  for x, y in zip(xs, ys):
    params, state = step(params, state, x, y)
  theta, lr = _numpy_pal(xs, ys, theta0)
  assert params.dtype == jnp.float64
  np.testing.assert_allclose(params, theta, rtol=1e-12)
  np.testing.assert_allclose(_pal_state(state).pal_learning_rate, lr,
                             rtol=1e-12)


def _step_with(tx, loss, params, state, **data):
  value, grad = jax.value_and_grad(loss)(params, **data)
  updates, state = tx.update(grad, state, params, value=value, grad=grad,
                             value_fn=loss, **data)
  return optax.apply_updates(params, updates), state


def test_state_types_stable_and_eval_shape_init():
  params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  tx = pal()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          params)
  state = tx.init(params)
  assert jax.tree.map(jax.typeof, tx.init(abstract)) == jax.tree.map(
      jax.typeof, state)
  loss = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum((p["b"] - 1) ** 2)
  value, grad = jax.value_and_grad(loss)(params)
  _, new_state = jax.jit(
      lambda s: tx.update(grad, s, params, value=value, grad=grad,
                          value_fn=loss))(state)
  assert jax.tree.map(jax.typeof, new_state) == jax.tree.map(
      jax.typeof, state)


def test_inject_hyperparams():
  tx = optax.inject_hyperparams(pal)(measuring_step=0.5)
  plain = pal(measuring_step=0.5)
  x0 = jnp.array([3.0, 1.0])
  value, grad = jax.value_and_grad(_square)(x0)
  kw = dict(value=value, grad=grad, value_fn=_square)
  u1, s1 = tx.update(grad, tx.init(x0), x0, **kw)
  u2, s2 = plain.update(grad, plain.init(x0), x0, **kw)
  assert_trees_all_close(u1, u2, rtol=1e-6)
  assert_trees_all_close(s1.inner_state, s2, rtol=1e-6)


# ------------------------------------------------------------ multi-device


def test_pmap_axis_name_matches_global_batch():
  """Losses averaged over 8 devices equal the single-device global batch."""
  n = jax.device_count()
  if n != 8:  # conftest.py gives 8 virtual CPU devices; a GPU host has 1
    pytest.skip(f"needs 8 devices (the CPU test setup); found {n}")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8 * 4, 3)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(8 * 4,)), jnp.float32)
  loss = lambda p, x, y: jnp.mean((jnp.tanh(x @ p) - y) ** 2)
  params = jnp.array([0.5, -1.0, 2.0])

  def run(tx, params, x, y, axis):
    state = tx.init(params)
    for _ in range(3):
      value, grad = jax.value_and_grad(loss)(params, x, y)
      if axis:
        value, grad = jax.lax.pmean((value, grad), axis)
      updates, state = tx.update(grad, state, params, value=value,
                                 grad=grad, value_fn=loss, x=x, y=y)
      params = optax.apply_updates(params, updates)
    return params, _pal_state(state).info.value_mu

  single = run(pal(), params, x, y, None)
  stacked = lambda a: jnp.stack([a] * n)
  multi = jax.pmap(
      lambda p, x, y: run(pal(axis_name="d"), p, x, y, "d"), axis_name="d"
  )(stacked(params), x.reshape(n, 4, 3), y.reshape(n, 4))
  for i in range(n):
    assert_trees_all_close(jax.tree.map(lambda a: a[i], multi), single,
                           rtol=2e-5, atol=1e-6)


# ------------------------------------------------------------------- Flax



def _regression_data(n=64, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 3)).astype(np.float32)
  y = (np.sin(x[:, 0]) + 0.5 * x[:, 1]).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(y)


def _mse(model, x, y):
  return jnp.mean((model(x) - y) ** 2)


def test_nnx_value_fn_keeps_batchnorm_statistics():
  """Extra forward passes through nnx_value_fn never touch BatchStat.

  The update uses a loss and gradient computed through the pure value_fn, so
  any change to the live statistics would come from PAL's extra forward.
  A naive value_fn (without `as_pure`) is the control: it does change them.
  """
  x, y = _regression_data()
  model = BatchNormNet(nnx.Rngs(0))
  opt = nnx.Optimizer(model, pal(), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, x, y):
    value_fn = nnx_value_fn(model, _mse)
    params = nnx.state(model, nnx.Param)
    value, grad = jax.value_and_grad(value_fn)(params, x, y)
    opt.update(model, grad, value=value, grad=grad, value_fn=value_fn,
               x=x, y=y)
    return value

  before = jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat))
  params_before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
  step(model, opt, x, y)
  assert_trees_all_equal(nnx.state(model, nnx.BatchStat), before)
  with pytest.raises(AssertionError):
    assert_trees_all_equal(nnx.state(model, nnx.Param), params_before)

  # Control: without as_pure the extra forward updates the live statistics.
  graphdef = nnx.graphdef(model)
  live_rest = nnx.state(model, nnx.Not(nnx.Param))

  def naive_value_fn(params, x, y):
    return _mse(nnx.merge(graphdef, params, live_rest), x, y)

  naive_value_fn(nnx.state(model, nnx.Param), x, y)
  with pytest.raises(AssertionError):
    assert_trees_all_equal(nnx.state(model, nnx.BatchStat), before)


def test_nnx_optimizer_training_loop():
  """nnx.Optimizer(model, pal(...), wrt=nnx.Param) under nnx.jit."""
  x, y = _regression_data(128)
  model = BatchNormNet(nnx.Rngs(1))
  opt = nnx.Optimizer(model, pal(), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, x, y):
    value_fn = nnx_value_fn(model, _mse)  # before the training forward
    value, grads = nnx.value_and_grad(_mse)(model, x, y)
    opt.update(model, grads, value=value, grad=grads, value_fn=value_fn,
               x=x, y=y)
    return value

  losses = [float(step(model, opt, x, y)) for _ in range(12)]
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.4 * losses[0]
  lr = optax.tree.get(opt.opt_state, "pal_learning_rate")
  assert float(lr) > 0


def test_nnx_value_fn_signature_routes_data():
  model = BatchNormNet(nnx.Rngs(0))
  value_fn = nnx_value_fn(model, _mse)
  assert _parabola.value_fn_arg_names(value_fn) == {"x", "y"}


def test_linen_value_fn_discards_mutable_state():
  class Net(nn.Module):

    @nn.compact
    def __call__(self, x, train):
      x = nn.Dense(4)(x)
      x = nn.BatchNorm(use_running_average=not train)(x)
      return nn.Dense(1)(x)[:, 0]

  x, y = _regression_data(16)
  net = Net()
  variables = net.init(jax.random.key(0), x, train=False)

  def loss_fn(apply, x, y):
    return jnp.mean((apply(x, train=True) - y) ** 2)

  value_fn = linen_value_fn(net.apply, loss_fn,
                            {"batch_stats": variables["batch_stats"]},
                            mutable=["batch_stats"])
  assert _parabola.value_fn_arg_names(value_fn) == {"x", "y"}
  expected, _ = net.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(value_fn(variables["params"], x=x, y=y),
                             jnp.mean((expected - y) ** 2), rtol=1e-6)
  tx = pal()

  @jax.jit
  def step(params):
    value, grad = jax.value_and_grad(value_fn)(params, x, y)
    updates, _ = tx.update(grad, tx.init(params), params, value=value,
                           grad=grad, value_fn=value_fn, x=x, y=y)
    return value, value_fn(optax.apply_updates(params, updates), x, y)

  before, after = step(variables["params"])
  assert float(after) < float(before)
  with pytest.raises(ValueError, match="params"):
    linen_value_fn(net.apply, loss_fn, {"params": {}})


# --------------------------------------------------------------- doctests


@pytest.mark.parametrize("module", [_pal, _labpal, _flax_utils])
def test_docstring_examples(module, monkeypatch):
  """The `>>>` examples run (with the public names they import)."""
  for name in ("pal", "scale_by_pal", "labpal", "scale_by_labpal",
               "nnx_value_fn", "linen_value_fn"):
    if hasattr(module, name) and not hasattr(optax_adaptive, name):
      monkeypatch.setattr(optax_adaptive, name, getattr(module, name),
                          raising=False)
  result = doctest.testmod(module, verbose=False)
  assert result.attempted > 0
  assert result.failed == 0


def test_case_is_a_value_of_the_public_enum():
  """``info.case`` is an int32 that ``optax_adaptive.PalCase`` names."""
  assert [(case.name, int(case)) for case in optax_adaptive.PalCase] == [
      ("MINIMUM", 0), ("CONCAVE", 1), ("NOT_DESCENT", 2), ("NOT_FINITE", 3)]
  assert _pal.PalCase is optax_adaptive.PalCase
  _, state = _one_step(pal(momentum=0.0), _square, jnp.array([0.0]))
  assert state.info.case.dtype == jnp.int32
  assert state.info.case == optax_adaptive.PalCase.NOT_DESCENT
  assert optax_adaptive.PalCase(int(state.info.case)).name == "NOT_DESCENT"


def test_states_pickled_before_the_module_split_load():
  """States pickled when PAL lived in ``_labpal`` name it there; they load."""
  state = _pal_state(pal().init(jnp.zeros(2)))
  old = pickle.dumps(state, protocol=0).replace(
      b"optax_adaptive._pal\n", b"optax_adaptive._labpal\n")
  assert b"optax_adaptive._labpal\n" in old
  loaded = pickle.loads(old)
  assert type(loaded) is optax_adaptive.ScaleByPalState
  assert type(loaded.info) is optax_adaptive.PalInfo
  assert_trees_all_equal(loaded, state)
  assert _labpal.PalCase is PalCase
