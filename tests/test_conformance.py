"""One conformance battery for every public transformation of optax_adaptive.

Modelled on the checks optax applies to its contributed optimizers
(``optax/contrib/_common_test.py``) and on its sharding tests. Every public
factory is registered in ``tests/_registry.py`` (``CASES``) with the extra
arguments its ``update`` needs; a new public factory that is not fails
``test_every_public_transformation_is_registered``. A case that cannot meet
a check lists the check's letter in ``skips`` with the reason, which pytest
reports as the skip message.

Checks (the letters name them in test names and ``skips``):
  a. unknown extra keyword arguments are accepted and ignored (line searches:
     rejected with a TypeError naming them, as optax's line searches do);
  b. a jitted update does not recompile on its second call;
  c. ``optax.tree.map_params`` works on the state;
  d. minimises a parabola, Rosenbrock, a matrix parabola and a mixed target;
  e. ``optax.inject_hyperparams`` gives the same updates and state;
  f. updates keep the params' dtype (bfloat16, float32);
  g. works inside ``optax.MultiSteps``;
  h. state shapes/dtypes/shardings stable under ``lax.cond`` (f16..f64);
  i. a schedule is accepted wherever ``learning_rate`` is ScalarOrSchedule;
  j. ``init`` works on abstract params (``eval_shape``, ShapeDtypeStruct);
  k. jit and non-jit give the same results;
  l. ``pmap`` over 8 devices with pmean-ed gradients equals one device;
  m. jit over an 8-device mesh gives the same result and keeps shardings.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests import _registry as R
from tests import _utils

# --------------------------------------------------------------- fixtures


def _parabola(dtype):
  init = jnp.array([-1.0, 10.0, 1.0], dtype)
  final = jnp.array([1.0, -1.0, 1.0], dtype)
  return init, final, lambda p: jnp.sum(jnp.square(p - final))


def _rosenbrock(dtype):
  init = jnp.array([0.0, 0.0], dtype)
  final = jnp.array([1.0, 1.0], dtype)

  def objective(p):
    return jnp.square(1.0 - p[0]) + 100.0 * jnp.square(p[1] - p[0] ** 2)

  return init, final, objective


def _matrix_parabola(dtype):
  init = jnp.zeros((2, 2), dtype)
  final = jnp.array([[3.0, -2.0], [1.0, 4.0]], dtype)
  return init, final, lambda p: jnp.sum(jnp.square(p - final))


def _mixed_target(dtype):
  final_1d = jnp.array([1.0, -1.0, 2.0], dtype)
  final_2d = jnp.array([[1.0, 0.0], [-1.0, 1.0]], dtype)

  def objective(params):
    p1, p2 = params
    return jnp.sum(jnp.square(p1 - final_1d)) + jnp.sum(
        jnp.square(p2 - final_2d))

  init = (jnp.zeros((3,), dtype), jnp.zeros((2, 2), dtype))
  return init, (final_1d, final_2d), objective


TARGETS = {
    "parabola": _parabola,
    "rosenbrock": _rosenbrock,
    "matrix_parabola": _matrix_parabola,
    "mixed": _mixed_target,
}


def _skip_if(case, check):
  if check in case.skips:
    pytest.skip(f"{case.name} cannot meet check ({check}): "
                f"{case.skips[check]}")


def _strip_inject(tree):
  """Replaces every inject_hyperparams state by its inner state."""
  is_inject = lambda x: isinstance(x, optax.InjectStatefulHyperparamsState)
  return jax.tree.map(
      lambda x: _strip_inject(x.inner_state) if is_inject(x) else x,
      tree, is_leaf=is_inject)


def _library_states(tree):
  """The NamedTuple states defined by optax_adaptive inside ``tree``."""
  found = []

  def visit(node):
    if type(node).__module__.startswith("optax_adaptive"):
      found.append(node)
      return  # its nested NamedTuples (e.g. info records) are its own
    if isinstance(node, tuple | list):
      for child in node:
        visit(child)
    elif isinstance(node, dict):
      for child in node.values():
        visit(child)

  visit(tree)
  return found


parametrize_cases = pytest.mark.parametrize("case", R.params(R.CASES))


def parametrize_cases_and(name, values, fast):
  """Cases x ``values``; the default tier runs the ``fast`` values."""
  return pytest.mark.parametrize(
      ("case", name), R.params(R.CASES, values, fast_values=fast))

# ------------------------------------------------------------------ checks


def test_every_public_transformation_is_registered():
  missing = R.missing_factories(R.factory_name(c) for c in R.CASES)
  assert not missing, f"unregistered in tests/_registry.py: {missing}"


@parametrize_cases
def test_a_b_extra_args_ignored_and_no_recompile(case):
  _skip_if(case, "a")
  tx = case.build()
  params, _, objective = _rosenbrock(jnp.float32)
  unexpected = {"unexpected_extra_args_your_optimizer_doesnt_expect": 1}
  if case.line_search:
    with pytest.raises(TypeError, match="unexpected_extra_args"):
      R.make_step(case, tx, objective, extra=unexpected)(
          params, tx.init(params))
    unexpected = {}
  step = jax.jit(R.make_step(case, tx, objective, extra=unexpected))
  state = tx.init(params)
  for _ in range(2):
    params, state, _ = step(params, state)
  _utils.assert_tree_all_finite((params, state))

  _skip_if(case, "b")
  params = _rosenbrock(jnp.float32)[0]
  state = tx.init(params)
  params, state, _ = step(params, state)
  with _utils.log_compilations() as compilations:
    step(params, state)
  assert not compilations, "update recompiles on its second call"


@parametrize_cases
def test_c_map_params(case):
  _skip_if(case, "c")
  tx = case.build()
  params = (jnp.ones((3,)), jnp.ones((2, 2)))
  state = tx.init(params)
  mapped = optax.tree.map_params(tx, lambda v: v + 1, state)
  assert jax.tree.structure(mapped) == jax.tree.structure(state)
  # Only param-shaped leaves may be mapped; scalars and counters are not.
  param_shapes = {(3,), (2, 2)}
  for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(mapped)):
    if not np.array_equal(np.asarray(after), np.asarray(before)):
      assert before.shape in param_shapes, f"mapped a {before.shape} leaf"


@parametrize_cases_and("target", list(TARGETS), fast=("mixed",))
def test_d_minimises(case, target):
  _skip_if(case, "d")
  _skip_if(case, f"d-{target}")
  tx = case.build(**(case.converge_kwargs or {}))
  params, final, objective = TARGETS[target](jnp.float32)
  step = R.make_step(case, tx, objective)

  def body(carry, _):
    params, state = carry
    params, state, _ = step(params, state)
    return (params, state), None

  (params, _), _ = jax.jit(
      lambda c: jax.lax.scan(body, c, length=case.converge_steps))(
          (params, tx.init(params)))
  _utils.assert_trees_all_close(params, final, rtol=3e-2, atol=3e-2)


@parametrize_cases
def test_e_static_args_are_only_the_structural_ones(case):
  """(e) injects every hyperparameter but those that fix the structure."""
  name = R.factory_name(case)
  allowed = R.SHAPE_ARGS.get(name, ()) + R.STRUCTURE_ARGS.get(name, ())
  assert set(case.static_args) <= set(allowed)
  assert set(R.SHAPE_ARGS.get(name, ())) <= set(case.static_args)


@parametrize_cases
def test_e_inject_hyperparams(case):
  """The injected factory has the plain one's state structure and values.

  Every numeric hyperparameter, the factory's defaults included, becomes an
  array under ``inject_hyperparams``; only ``case.static_args`` stay Python
  values.
  """
  _skip_if(case, "e")
  injectable = optax.inject_hyperparams(
      case.factory, static_args=case.static_args)
  tx = case.build()
  tx_inject = case.compose(injectable(**case.kwargs))
  params = [-jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
  objective = lambda p: sum(jnp.sum(jnp.sin(x) * x) for x in p)
  step = jax.jit(R.make_step(case, tx, objective))
  step_inject = jax.jit(R.make_step(case, tx_inject, objective))
  state, state_inject = tx.init(params), tx_inject.init(params)
  structure = lambda s: jax.tree.structure(_strip_inject(s))
  assert structure(state_inject) == structure(state), "after init"
  p, p_inject = params, params
  for i in range(3):
    p, state, updates = step(p, state)
    p_inject, state_inject, updates_inject = step_inject(
        p_inject, state_inject)
    assert structure(state_inject) == structure(state), f"after step {i}"
    _utils.assert_trees_all_close(updates_inject, updates, rtol=1e-5,
                                  atol=1e-7, err_msg=f"updates, step {i}")
    _utils.assert_trees_all_close(
        _strip_inject(state_inject), state, rtol=1e-5, atol=1e-6,
        err_msg=f"state, step {i}")


_SHAPE_CASES = [(c, arg) for c in R.CASES
                for arg in R.SHAPE_ARGS.get(R.factory_name(c), ())]


@pytest.mark.parametrize(
    "case,arg", _SHAPE_CASES, ids=[f"{c.name}-{a}" for c, a in _SHAPE_CASES])
def test_e_injecting_a_shape_arg_names_the_fix(case, arg):
  """A shape-setting count that inject turns into an array: a clear error.

  Also when the user never passed it (its default is injected too).
  """
  static = tuple(a for a in case.static_args if a != arg)
  kwargs = {k: v for k, v in case.kwargs.items() if k != arg}
  tx = case.compose(
      optax.inject_hyperparams(case.factory, static_args=static)(**kwargs))
  with pytest.raises(TypeError) as error:
    tx.init(jnp.zeros(3))
  message = str(error.value)
  assert f"`{arg}` sets the shape of an array" in message
  assert "cannot be injected" in message
  assert f'static_args=("{arg}",)' in message


@parametrize_cases_and("dtype", ["bfloat16", "float32"], fast=("bfloat16",))
def test_f_preserves_dtype(case, dtype):
  _skip_if(case, "f")
  tx = case.build()
  params = jnp.array([1.0, 2.0], dtype)
  objective = lambda x: jnp.sum(x ** 2)
  step = jax.jit(R.make_step(case, tx, objective))
  state = jax.jit(tx.init)(params)
  for _ in range(2):
    params, state, updates = step(params, state)
    assert updates.dtype == jnp.dtype(dtype)
    assert params.dtype == jnp.dtype(dtype)
  _utils.assert_tree_all_finite(updates)


@parametrize_cases_and("dtype", ["bfloat16", "float32"], fast=("bfloat16",))
def test_g_multisteps(case, dtype):
  _skip_if(case, "g")
  tx = case.build()
  accumulated = optax.MultiSteps(tx, every_k_schedule=4)
  params = jnp.array([1.0, 2.0], dtype)
  objective = lambda x: jnp.sum(x ** 2)
  step = jax.jit(R.make_step(case, accumulated, objective))
  state = jax.jit(accumulated.init)(params)
  params1, state, updates = step(params, state)
  _utils.assert_trees_all_equal(updates, jnp.zeros_like(params))
  for _ in range(3):
    params1, state, updates = step(params1, state)
  assert updates.dtype == jnp.dtype(dtype)
  assert not np.array_equal(np.asarray(params1), np.asarray(params))
  _utils.assert_tree_all_finite(params1)


@parametrize_cases_and("dtype", ["float16", "bfloat16", "float32", "float64"],
                       fast=("bfloat16",))
def test_h_state_stable_under_cond(case, dtype):
  _skip_if(case, "h")
  with jax.enable_x64(dtype == "float64"):
    dtype = jnp.dtype(dtype)
    tx = case.build()
    params, _, objective = _parabola(dtype)

    @jax.jit
    def step(params, state):
      value, grad = jax.value_and_grad(objective)(params)
      # A value of a deliberately different dtype, as optax's test does.
      value = value.astype(
          jnp.float16 if dtype != jnp.float16 else jnp.bfloat16)
      kwargs = R.extra_kwargs(case, objective, params, value, grad)
      cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
      updates, state = jax.lax.cond(
          cond, lambda: tx.update(grad, state, params, **kwargs),
          lambda: (jax.tree.map(jnp.zeros_like, params), state))
      return optax.apply_updates(params, updates), state

    state = tx.init(params)
    types0 = jax.tree.map(jax.typeof, state)
    for _ in range(2):
      params, state = step(params, state)
      assert jax.tree.leaves(params)[0].dtype == dtype
      assert jax.tree.map(jax.typeof, state) == types0


@parametrize_cases
def test_i_accepts_learning_rate_schedule(case):
  _skip_if(case, "i")
  parameter = inspect.signature(case.factory).parameters.get("learning_rate")
  if parameter is None or parameter.annotation not in (
      optax.ScalarOrSchedule, "optax.ScalarOrSchedule",
      "base.ScalarOrSchedule"):
    pytest.skip(f"{case.name} has no learning_rate typed ScalarOrSchedule")
  tx_schedule = case.build(learning_rate=optax.constant_schedule(1e-3))
  tx_constant = case.build(learning_rate=1e-3)
  params, _, objective = _parabola(jnp.float32)
  results = []
  for tx in (tx_schedule, tx_constant):
    step = jax.jit(R.make_step(case, tx, objective))
    p, state = params, tx.init(params)
    for _ in range(10):
      p, state, _ = step(p, state)
    results.append(p)
  _utils.assert_trees_all_close(results[0], results[1])
  assert not np.allclose(np.asarray(results[1]), np.asarray(params))


@parametrize_cases
def test_j_init_on_abstract_params(case):
  _skip_if(case, "j")
  tx = case.build()
  params = {"w": jax.ShapeDtypeStruct((2, 4, 8), jnp.float32),
            "b": jax.ShapeDtypeStruct((8,), jnp.bfloat16)}
  concrete = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
  abstract_state = jax.eval_shape(tx.init, params)
  concrete_state = tx.init(concrete)
  assert jax.tree.structure(abstract_state) == jax.tree.structure(
      concrete_state)
  for a, c in zip(jax.tree.leaves(abstract_state),
                  jax.tree.leaves(concrete_state)):
    assert (a.shape, a.dtype) == (c.shape, c.dtype)
  direct = tx.init(params)  # ShapeDtypeStruct directly, as optax tests do
  assert jax.tree.structure(direct) == jax.tree.structure(concrete_state)


@parametrize_cases
def test_k_jit_matches_eager(case):
  _skip_if(case, "k")
  tx = case.build()
  params = {"a": jnp.array([0.5, -1.5, 2.0]),
            "b": jnp.array([[1.0, -2.0], [0.3, 0.7]])}
  objective = lambda p: jnp.sum(jnp.cos(p["a"]) * p["a"] ** 2) + jnp.sum(
      p["b"] ** 4)
  step = R.make_step(case, tx, objective)
  jitted = jax.jit(step)
  p_eager, s_eager = params, tx.init(params)
  p_jit, s_jit = params, jax.jit(tx.init)(params)
  for _ in range(4):
    p_eager, s_eager, _ = step(p_eager, s_eager)
    p_jit, s_jit, _ = jitted(p_jit, s_jit)
  _utils.assert_trees_all_close(p_jit, p_eager, rtol=1e-5, atol=1e-6)
  _utils.assert_trees_all_close(s_jit, s_eager, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------- multi-device checks

_N_DEVICES = 8


def _regression_problem(seed=0):
  """Linear regression with 32 examples, shardable over 8 devices."""
  rng = np.random.default_rng(seed)
  params = {"w": jnp.asarray(rng.normal(size=(4, 16)), jnp.float32),
            "b": jnp.zeros((16,), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(32, 4)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(32, 16)), jnp.float32)

  def loss(params, x, y):
    return jnp.mean(jnp.square(x @ params["w"] + params["b"] - y))

  return params, x, y, loss


def _needs_devices():
  if jax.device_count() < _N_DEVICES:
    pytest.skip(f"needs {_N_DEVICES} devices, found {jax.device_count()}")


_STEPS = 5


@functools.cache
def _reference_run(name):
  """Params and state after ``_STEPS`` single-device steps, shared by (l)
  and both axis types of (m)."""
  case = next(c for c in R.CASES if c.name == name)
  params, x, y, loss = _regression_problem()
  tx = case.build(**case.multi_device_overrides)
  return _single_device_run(case, tx, params, x, y, loss, _STEPS)


def _single_device_run(case, tx, params, x, y, loss, steps):
  @jax.jit
  def step(params, state):
    value, grad = jax.value_and_grad(loss)(params, x, y)
    kwargs = R.extra_kwargs(case, lambda p, x, y: loss(p, x, y), params,
                           value, grad, x=x, y=y)
    updates, state = tx.update(grad, state, params, **kwargs)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params, state


# Under pmap a transformation sees only its device's replica: the default
# tier runs (l) for the cases that communicate across devices themselves
# (axis_name); for the others each replica computes the same thing.
@pytest.mark.parametrize("case", R.params(
    R.CASES, slow_if=lambda case: not case.multi_device_kwargs))
def test_l_pmap_matches_single_device(case):
  _skip_if(case, "l")
  _needs_devices()
  params, x, y, loss = _regression_problem()
  expected, _ = _reference_run(case.name)
  tx = case.build(**case.multi_device_overrides, **case.multi_device_kwargs)

  def step(params, state, x, y):
    value, grad = jax.value_and_grad(loss)(params, x, y)
    grad = jax.lax.pmean(grad, "batch")
    value = jax.lax.pmean(value, "batch")
    kwargs = R.extra_kwargs(case, lambda p, x, y: loss(p, x, y), params,
                           value, grad, x=x, y=y)
    updates, state = tx.update(grad, state, params, **kwargs)
    return optax.apply_updates(params, updates), state

  replicate = lambda tree: jax.tree.map(
      lambda a: jnp.stack([a] * _N_DEVICES), tree)
  p_step = jax.pmap(step, axis_name="batch")
  rep_params = replicate(params)
  rep_state = replicate(tx.init(params))
  xs = x.reshape(_N_DEVICES, -1, *x.shape[1:])
  ys = y.reshape(_N_DEVICES, -1, *y.shape[1:])
  for _ in range(_STEPS):
    rep_params, rep_state = p_step(rep_params, rep_state, xs, ys)
  rtol, atol = case.multi_device_tol
  for device in range(_N_DEVICES):
    _utils.assert_trees_all_close(
        jax.tree.map(lambda a: a[device], rep_params), expected,
        rtol=rtol, atol=atol)


def _param_shardings(mesh):
  return {"w": NamedSharding(mesh, P(None, "x")),
          "b": NamedSharding(mesh, P("x"))}


@parametrize_cases_and("axis_type", ["explicit", "auto"], fast=("explicit",))
def test_m_sharded_jit_matches_and_keeps_sharding(case, axis_type):
  _skip_if(case, "m")
  _skip_if(case, f"m-{axis_type}")
  _needs_devices()
  params, x, y, loss = _regression_problem()
  tx = case.build(**case.multi_device_overrides)
  expected, expected_state = _reference_run(case.name)

  kind = {"explicit": jax.sharding.AxisType.Explicit,
          "auto": jax.sharding.AxisType.Auto}[axis_type]
  mesh = jax.make_mesh((_N_DEVICES,), ("x",), axis_types=(kind,))
  with jax.set_mesh(mesh):
    shardings = _param_shardings(mesh)
    sharded = jax.tree.map(jax.device_put, params, shardings)
    state = tx.init(sharded)
    types0 = jax.tree.map(jax.typeof, state)

    @jax.jit
    def step(params, state):
      value, grad = jax.value_and_grad(loss)(params, x, y)
      kwargs = R.extra_kwargs(case, lambda p, x, y: loss(p, x, y), params,
                             value, grad, x=x, y=y)
      updates, state = tx.update(grad, state, params, **kwargs)
      return optax.apply_updates(params, updates), state

    for _ in range(_STEPS):
      sharded, state = step(sharded, state)
    assert jax.tree.map(jax.typeof, state) == types0
    for name, sharding in shardings.items():
      assert sharded[name].sharding.is_equivalent_to(sharding, 2)
    # Param-shaped state keeps the params' sharding.
    for leaf in jax.tree.leaves(state):
      for name, sharding in shardings.items():
        if leaf.shape == params[name].shape and leaf.ndim:
          assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (
              f"state leaf {leaf.shape} lost the sharding of {name}")
  rtol, atol = case.multi_device_tol
  _utils.assert_trees_all_close(sharded, expected, rtol=rtol, atol=atol)
  _utils.assert_trees_all_close(state, expected_state, rtol=rtol, atol=atol)


@parametrize_cases
def test_library_state_is_named(case):
  """The library's own state is a NamedTuple ending in ``State``."""
  tx = case.build()
  states = _library_states(tx.init(jnp.zeros((3,))))
  assert states, "no optax_adaptive state found in the transformation state"
  for state in states:
    assert type(state).__name__.endswith("State")
    assert hasattr(state, "_fields")


@pytest.mark.parametrize("case", R.RECIPE_CASES, ids=repr)
def test_recipe_vmap_matches_one_by_one(case):
  """``vmap`` over independent runs (params, state) equals each run alone."""
  tx = case.build()
  objective = lambda p: jnp.sum(jnp.cos(p["a"]) * p["a"] ** 2) + jnp.sum(
      p["b"] ** 4)
  step = R.make_step(case, tx, objective)
  runs = [{"a": jnp.array([0.5, -1.5, 2.0]) * (k + 1),
           "b": jnp.array([[1.0, -2.0], [0.3, 0.7]]) / (k + 1)}
          for k in range(3)]
  stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)
  params = stack(runs)
  state = jax.vmap(tx.init)(params)
  batched = jax.jit(jax.vmap(step))
  singles = [(p, tx.init(p)) for p in runs]
  single = jax.jit(step)
  for _ in range(9):  # two AutoDrop windows and a bit
    params, state, _ = batched(params, state)
    singles = [single(p, s)[:2] for p, s in singles]
  _utils.assert_trees_all_close(
      (params, state), stack(singles), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", R.RECIPE_CASES, ids=repr)
def test_recipe_init_under_eval_shape(case):
  """(j) as far as prodigy allows: abstract init through ``eval_shape``."""
  tx = case.build()
  params = {"w": jax.ShapeDtypeStruct((2, 4, 8), jnp.float32),
            "b": jax.ShapeDtypeStruct((8,), jnp.float32)}
  abstract = jax.eval_shape(tx.init, params)
  concrete = tx.init(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                  params))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == (
      jax.tree.map(lambda c: (c.shape, c.dtype), concrete))
