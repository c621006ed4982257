"""One conformance battery for every public transformation of optax_adaptive.

Modelled on the checks optax applies to its contributed optimizers
(``optax/contrib/_common_test.py``) and on its sharding tests. Every public
factory is registered in ``CASES`` below with the extra arguments its
``update`` needs; ``test_every_public_transformation_is_registered`` fails when
a new public factory is not. A case that cannot meet a check lists the check
in ``skips`` with the reason, which pytest reports as the skip message.

Checks (the letters follow issue 2):
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

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optax_adaptive as oa
from tests import _utils

# ----------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class Case:
  """One public transformation under test.

  Attributes:
    name: test id.
    factory: the public factory of optax_adaptive.
    kwargs: hyperparameters passed to ``factory``.
    compose: places the library transformation in context (e.g. after a
      base optimizer); identity by default.
    needs: extra ``update`` arguments to supply: any of ``"value"``,
      ``"grad"``, ``"value_fn"``.
    multi_device_kwargs: hyperparameters added under pmap (e.g. axis_name).
    multi_device_overrides: hyperparameters of both runs of (l) and (m),
      the reference and the multi-device one.
    multi_device_tol: (rtol, atol) of (l) and (m), which compare a mean of
      per-device losses/gradients with the global-batch one: equal up to
      float32 reduction order, which methods that divide by small loss
      differences amplify.
    static_args: names passed to ``inject_hyperparams`` as static: only
      those that fix the state's structure, i.e. the counts that set an
      array shape (``SHAPE_ARGS``) and the documented switches where a
      Python 0 means "no buffer" (``STRUCTURE_ARGS``). Every other
      numeric hyperparameter, defaults included, is injected by (e).
    converge_kwargs: hyperparameters used instead of ``kwargs`` for (d).
    converge_steps: scan length for (d).
    skips: check letter -> reason the case cannot meet it.
    extra: builds the extra ``update`` arguments from
      ``(objective, value, grad, batch)`` where ``needs`` is not enough.
    line_search: extra keyword arguments are data for ``value_fn``, and one
      that it does not take is an error (checked instead of (a)).
  """

  name: str
  factory: Callable[..., optax.GradientTransformationExtraArgs]
  kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  compose: Callable[[Any], Any] = lambda tx: tx
  needs: frozenset[str] = frozenset()
  multi_device_kwargs: dict[str, Any] = dataclasses.field(
      default_factory=dict)
  multi_device_overrides: dict[str, Any] = dataclasses.field(
      default_factory=dict)
  multi_device_tol: tuple[float, float] = (2e-5, 2e-6)
  static_args: tuple[str, ...] = ()
  converge_kwargs: dict[str, Any] | None = None
  converge_steps: int = 10_000
  skips: dict[str, str] = dataclasses.field(default_factory=dict)
  extra: Callable[..., dict[str, Any]] | None = None
  line_search: bool = False

  def build(self, **overrides):
    return self.compose(self.factory(**{**self.kwargs, **overrides}))

  def __repr__(self):
    return self.name


def _bind_inner(factory, inner):
  """``factory`` with ``inner`` bound, keeping a signature inject can read."""
  bound = functools.partial(factory, inner)
  bound.__signature__ = inspect.signature(bound)
  return bound


CASES = [
    Case(
        "cprop_sgd_wrapper",
        _bind_inner(oa.cprop, optax.sgd(3e-3, momentum=0.9)),
        dict(beta=0.999, c=1.0),
    ),
    Case(
        "cprop_adam_wrapper",
        _bind_inner(oa.cprop, optax.adam(0.01)),
        dict(beta=0.99, cdf="normal"),
    ),
    Case(
        "cprop_sgd",
        oa.cprop_sgd,
        dict(learning_rate=2e-3, momentum=0.9, c=3.0),
    ),
    Case(
        "cprop_adam_shared",
        oa.cprop_adam,
        dict(learning_rate=0.01),
    ),
    Case(
        "cprop_adam_separate",
        oa.cprop_adam,
        dict(learning_rate=0.01, b2=0.99, beta=0.999, weight_decay=1e-4),
    ),
]

_LABPAL_BATCHES = 10


def _labpal_extra(objective, value, grad, batch):
  """LABPAL's arguments: ``batch`` repeated as the stacked approx batches.

  Objectives without data get a dummy per-batch index so that
  ``approx_batch`` still has its leading axis of mini-batches.
  """
  del value
  if batch:
    approx = {k: jnp.stack([v] * _LABPAL_BATCHES) for k, v in batch.items()}
    return dict(grad=grad, value_fn=objective, approx_batch=approx)
  return dict(
      grad=grad, value_fn=lambda params, index: objective(params),
      approx_batch={"index": jnp.arange(_LABPAL_BATCHES)})


# Why the parabola cases use fd_step=1e-2, measuring_step=0.1 and the exact
# fit: at the defaults (h=1.77e-4) the float32 finite differences of a loss
# of ~125 are below its rounding, every fit fails and LABPAL retries without
# moving; the reference fit's step 2s*-h times alpha=1.8 overshoots a
# noise-free quadratic (it is tuned for mini-batch noise).
_LABPAL_ROSENBROCK = (
    "LABPAL reuses one learning rate for reuse_steps steps without"
    " backtracking; a rate measured in one part of Rosenbrock's curved"
    " valley diverges in the next")
# momentum is static: a Python 0 means "no momentum buffer" in the state.
_LABPAL_STATIC = ("avg_window", "momentum")
_AUTODROP_STATIC = ("buffer_size",)
_PAL_NEEDS = frozenset({"value", "grad", "value_fn"})
# (l) and (m) compare per-device means of the loss with the global-batch
# mean; they differ by reduction-order rounding, δL ≈ 4u·L ≈ 1e-6 on the
# regression problem (u = 2^-24). PAL's step then moves by about
# 2δL / (a μ²) ≈ 3e-5 per step (a μ² ≈ 0.075), ~1.4e-4 over 5 steps; LABPAL's
# finite-difference fit by about 2δL / (h μ A), 100 times more at its
# battery settings (h = 1e-2, μ = 0.1), hence larger steps there. A missing
# pmean changes the steps by tens of percent, far outside these tolerances.
_PAL_TOL = (5e-4, 2e-6)
_LABPAL_MULTI_DEVICE = dict(fd_step=0.1, measuring_step=1.0)
_LABPAL_TOL = (1e-3, 2e-6)
_NOT_NESTABLE = (
    "line searches are outermost transformations and evaluate value_fn on"
    " the full parameters; MultiSteps calls them on partial accumulators"
    " (optax-conventions.md §0.7)")

CASES += [
    Case(
        "autodrop_after_sgd",
        oa.autodrop,
        dict(window_size=8, buffer_size=4),
        compose=lambda tx: optax.chain(optax.sgd(3e-3, momentum=0.9), tx),
        static_args=_AUTODROP_STATIC,
    ),
    Case(
        "autodrop_after_adam",
        oa.autodrop,
        dict(window_size=16, drop_factor=0.5, min_scale=0.01),
        compose=lambda tx: optax.chain(optax.adam(0.01), tx),
        static_args=_AUTODROP_STATIC,
        # Adam's straight-line path to a parabola's minimum has a constant
        # angular velocity, which AutoDrop reads as saturation: halving the
        # rate every window stalls it; the default factor 0.95 converges.
        converge_kwargs=dict(window_size=16, drop_factor=0.95,
                             min_scale=0.0),
    ),
    Case(
        "autodrop_v1_after_sgd",
        oa.autodrop_v1,
        dict(steps_per_epoch=10, patience_epochs=2),
        compose=lambda tx: optax.chain(optax.sgd(3e-3, momentum=0.9), tx),
        converge_kwargs=dict(steps_per_epoch=100, patience_epochs=2),
    ),
    Case(
        "pal",
        oa.pal,
        dict(),
        needs=_PAL_NEEDS,
        multi_device_kwargs=dict(axis_name="batch"),
        multi_device_tol=_PAL_TOL,
        skips=dict(g=_NOT_NESTABLE),
        line_search=True,
    ),
    Case(
        "scale_by_pal",
        oa.scale_by_pal,
        dict(max_step=1.0),
        compose=lambda tx: optax.chain(optax.scale(-1.0), tx),
        needs=_PAL_NEEDS,
        multi_device_kwargs=dict(axis_name="batch"),
        multi_device_tol=_PAL_TOL,
        skips=dict(g=_NOT_NESTABLE),
        line_search=True,
    ),
    Case(
        "labpal",
        oa.labpal,
        dict(mode="sgd", fit="exact", fd_step=1e-2, measuring_step=0.1,
             reuse_steps=20, untrusted_updates=40),
        multi_device_kwargs=dict(axis_name="batch"),
        multi_device_overrides=_LABPAL_MULTI_DEVICE,
        multi_device_tol=_LABPAL_TOL,
        static_args=_LABPAL_STATIC,
        extra=_labpal_extra,
        skips={"g": _NOT_NESTABLE, "d-rosenbrock": _LABPAL_ROSENBROCK},
        line_search=True,
    ),
    Case(
        "scale_by_labpal",
        oa.scale_by_labpal,
        dict(reuse_steps=20, untrusted_updates=40, fd_step=1e-2,
             measuring_step=0.1),
        static_args=_LABPAL_STATIC,
        multi_device_kwargs=dict(axis_name="batch"),
        multi_device_overrides=_LABPAL_MULTI_DEVICE,
        multi_device_tol=_LABPAL_TOL,
        extra=_labpal_extra,
        converge_kwargs=dict(mode="sgd", fit="exact", fd_step=1e-2,
                             measuring_step=0.1),
        skips={"g": _NOT_NESTABLE, "d-rosenbrock": _LABPAL_ROSENBROCK},
        line_search=True,
    ),
]

# The rates go through an SVD and EVBMF's noise-variance search; a rounding
# difference in the weights moves a knowledge gain by ~1e-5 relative (seen:
# 5.5e-5 in one param entry after 5 steps on a 16-core Xeon).
_ADAS_MULTI_DEVICE_TOL = (2e-4, 2e-6)

CASES += [
    Case(
        "adas_explicit_epochs",
        oa.adas,
        dict(learning_rate=0.01, weight_decay=0.0),
        multi_device_tol=_ADAS_MULTI_DEVICE_TOL,
        converge_kwargs=dict(learning_rate=2e-3),
    ),
    Case(
        "adas_steps_per_epoch",
        oa.adas,
        dict(learning_rate=0.01, steps_per_epoch=5),
        multi_device_tol=_ADAS_MULTI_DEVICE_TOL,
        converge_kwargs=dict(learning_rate=2e-3, weight_decay=0.0),
    ),
]

# Integer hyperparameters that set an array shape in the state, per factory:
# they must be Python ints, so optax.inject_hyperparams needs them static.
SHAPE_ARGS = {
    "autodrop": ("buffer_size",),
    "labpal": ("avg_window",),
    "scale_by_labpal": ("avg_window",),
}
# Documented switches where a Python 0 means "no buffer" in the state.
STRUCTURE_ARGS = {
    "labpal": ("momentum",),
    "scale_by_labpal": ("momentum",),
}

# ------------------------------------ recipes on learning-rate-free optimizers
# Issue 19: the combinations docs/choosing.md recommends go through the same
# battery as the public transformations, each twice: with the inner
# optimizer as the factory, so that (e) injects the inner optimizer's
# hyperparameters and (i) gives it a schedule, and with our transformation
# as the factory.
_RECIPE_AUTODROP = dict(window_size=4, buffer_size=3)
# On a noise-free objective the path is straight, AutoDrop keeps dropping
# (docs/autodrop.md, "Failure modes") and needs a floor to converge.
_RECIPE_CONVERGE = dict(window_size=50, min_scale=0.1)
# Limits of optax.contrib.prodigy itself (prodigy alone fails them too):
_PRODIGY_SKIPS = {
    # Its init reads the params' dtype through jnp.asarray, which a
    # ShapeDtypeStruct is not; jax.eval_shape(tx.init, ...) works
    # (test_recipe_init_under_eval_shape).
    "j": "optax.contrib.prodigy's init fails on ShapeDtypeStruct params",
    # Its numerator is an optax.tree.vdot without out_sharding, which
    # explicit sharding rejects (ShardingTypeError); Auto axes work.
    "m-explicit": "optax.contrib.prodigy's tree.vdot fails under explicit"
                  " sharding",
}

RECIPE_CASES = [
    Case(
        "autodrop_prodigy_inner",
        optax.contrib.prodigy,
        # d0 = 1e-6 (the default) moves nothing in the few steps of (g) in
        # bfloat16 and of (i) at learning_rate=1e-3; the other case keeps it.
        dict(learning_rate=1.0, estim_lr0=0.1),
        compose=lambda tx: optax.chain(tx, oa.autodrop(**_RECIPE_CONVERGE)),
        skips=_PRODIGY_SKIPS,
    ),
    Case(
        "autodrop_prodigy",
        oa.autodrop,
        _RECIPE_AUTODROP,
        compose=lambda tx: optax.chain(optax.contrib.prodigy(), tx),
        static_args=_AUTODROP_STATIC,
        converge_kwargs=_RECIPE_CONVERGE,
        skips={**_PRODIGY_SKIPS,
               "g": "prodigy's first steps at d0 = 1e-6 do not move bfloat16"
                    " params; autodrop_prodigy_inner runs (g) with d0 = 0.1"},
    ),
]
CASES += RECIPE_CASES

# Public names that are not transformations (states, pure functions, helpers).
NOT_TRANSFORMATIONS = frozenset({
    "__version__", "diagnostics", "linen_value_fn", "nnx_value_fn",
    "adas_early_stop", "adas_early_stop_init", "adas_end_epoch",
    "adas_layer_groups", "adas_layer_names", "evbmf", "knowledge_gain"})

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


def _extra_kwargs(case, objective, params, value, grad, **batch):
  """The extra ``update`` arguments a case needs, for ``objective``."""
  if case.extra is not None:
    return case.extra(objective, value, grad, batch)
  kwargs = {}
  if "value" in case.needs:
    kwargs["value"] = value
  if "grad" in case.needs:
    kwargs["grad"] = grad
  if "value_fn" in case.needs:
    kwargs["value_fn"] = objective
    kwargs.update(batch)
  del params
  return kwargs


def _make_step(case, tx, objective, extra=None):
  """A train step ``(params, state) -> (params, state, updates)``."""

  def step(params, state):
    value, grad = jax.value_and_grad(objective)(params)
    kwargs = _extra_kwargs(case, objective, params, value, grad)
    kwargs.update(extra or {})
    updates, state = tx.update(grad, state, params, **kwargs)
    return optax.apply_updates(params, updates), state, updates

  return step


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


ids = [c.name for c in CASES]
parametrize_cases = pytest.mark.parametrize("case", CASES, ids=ids)

# ------------------------------------------------------------------ checks


def test_every_public_transformation_is_registered():
  registered = {
      getattr(c.factory, "func", c.factory).__name__ for c in CASES}
  public = {
      name for name in oa.__all__
      if name not in NOT_TRANSFORMATIONS and not name[0].isupper()}
  assert public <= registered, f"unregistered: {sorted(public - registered)}"


@parametrize_cases
def test_a_b_extra_args_ignored_and_no_recompile(case):
  _skip_if(case, "a")
  tx = case.build()
  params, _, objective = _rosenbrock(jnp.float32)
  unexpected = {"unexpected_extra_args_your_optimizer_doesnt_expect": 1}
  if case.line_search:
    with pytest.raises(TypeError, match="unexpected_extra_args"):
      _make_step(case, tx, objective, extra=unexpected)(
          params, tx.init(params))
    unexpected = {}
  step = jax.jit(_make_step(case, tx, objective, extra=unexpected))
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


@parametrize_cases
@pytest.mark.parametrize("target", list(TARGETS))
def test_d_minimises(case, target):
  _skip_if(case, "d")
  _skip_if(case, f"d-{target}")
  tx = case.build(**(case.converge_kwargs or {}))
  params, final, objective = TARGETS[target](jnp.float32)
  step = _make_step(case, tx, objective)

  def body(carry, _):
    params, state = carry
    params, state, _ = step(params, state)
    return (params, state), None

  (params, _), _ = jax.jit(
      lambda c: jax.lax.scan(body, c, length=case.converge_steps))(
          (params, tx.init(params)))
  _utils.assert_trees_all_close(params, final, rtol=3e-2, atol=3e-2)


def _factory_name(case):
  return getattr(case.factory, "func", case.factory).__name__


@parametrize_cases
def test_e_static_args_are_only_the_structural_ones(case):
  """(e) injects every hyperparameter but those that fix the structure."""
  name = _factory_name(case)
  allowed = SHAPE_ARGS.get(name, ()) + STRUCTURE_ARGS.get(name, ())
  assert set(case.static_args) <= set(allowed)
  assert set(SHAPE_ARGS.get(name, ())) <= set(case.static_args)


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
  step = jax.jit(_make_step(case, tx, objective))
  step_inject = jax.jit(_make_step(case, tx_inject, objective))
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


_SHAPE_CASES = [(c, arg) for c in CASES
                for arg in SHAPE_ARGS.get(_factory_name(c), ())]


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


@parametrize_cases
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_f_preserves_dtype(case, dtype):
  _skip_if(case, "f")
  tx = case.build()
  params = jnp.array([1.0, 2.0], dtype)
  objective = lambda x: jnp.sum(x ** 2)
  step = jax.jit(_make_step(case, tx, objective))
  state = jax.jit(tx.init)(params)
  for _ in range(2):
    params, state, updates = step(params, state)
    assert updates.dtype == jnp.dtype(dtype)
    assert params.dtype == jnp.dtype(dtype)
  _utils.assert_tree_all_finite(updates)


@parametrize_cases
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_g_multisteps(case, dtype):
  _skip_if(case, "g")
  tx = case.build()
  accumulated = optax.MultiSteps(tx, every_k_schedule=4)
  params = jnp.array([1.0, 2.0], dtype)
  objective = lambda x: jnp.sum(x ** 2)
  step = jax.jit(_make_step(case, accumulated, objective))
  state = jax.jit(accumulated.init)(params)
  params1, state, updates = step(params, state)
  _utils.assert_trees_all_equal(updates, jnp.zeros_like(params))
  for _ in range(3):
    params1, state, updates = step(params1, state)
  assert updates.dtype == jnp.dtype(dtype)
  assert not np.array_equal(np.asarray(params1), np.asarray(params))
  _utils.assert_tree_all_finite(params1)


@parametrize_cases
@pytest.mark.parametrize(
    "dtype", ["float16", "bfloat16", "float32", "float64"])
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
      kwargs = _extra_kwargs(case, objective, params, value, grad)
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
    step = jax.jit(_make_step(case, tx, objective))
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
  step = _make_step(case, tx, objective)
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


def _single_device_run(case, tx, params, x, y, loss, steps):
  @jax.jit
  def step(params, state):
    value, grad = jax.value_and_grad(loss)(params, x, y)
    kwargs = _extra_kwargs(case, lambda p, x, y: loss(p, x, y), params,
                           value, grad, x=x, y=y)
    updates, state = tx.update(grad, state, params, **kwargs)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params, state


@parametrize_cases
def test_l_pmap_matches_single_device(case):
  _skip_if(case, "l")
  _needs_devices()
  params, x, y, loss = _regression_problem()
  steps = 5
  overrides = case.multi_device_overrides
  expected, _ = _single_device_run(case, case.build(**overrides), params, x,
                                   y, loss, steps)

  tx = case.build(**overrides, **case.multi_device_kwargs)

  def step(params, state, x, y):
    value, grad = jax.value_and_grad(loss)(params, x, y)
    grad = jax.lax.pmean(grad, "batch")
    value = jax.lax.pmean(value, "batch")
    kwargs = _extra_kwargs(case, lambda p, x, y: loss(p, x, y), params,
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
  for _ in range(steps):
    rep_params, rep_state = p_step(rep_params, rep_state, xs, ys)
  rtol, atol = case.multi_device_tol
  for device in range(_N_DEVICES):
    _utils.assert_trees_all_close(
        jax.tree.map(lambda a: a[device], rep_params), expected,
        rtol=rtol, atol=atol)


def _param_shardings(mesh):
  return {"w": NamedSharding(mesh, P(None, "x")),
          "b": NamedSharding(mesh, P("x"))}


@parametrize_cases
@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_m_sharded_jit_matches_and_keeps_sharding(case, axis_type):
  _skip_if(case, "m")
  _skip_if(case, f"m-{axis_type}")
  _needs_devices()
  params, x, y, loss = _regression_problem()
  steps = 5
  tx = case.build(**case.multi_device_overrides)
  expected, expected_state = _single_device_run(case, tx, params, x, y,
                                                loss, steps)

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
      kwargs = _extra_kwargs(case, lambda p, x, y: loss(p, x, y), params,
                             value, grad, x=x, y=y)
      updates, state = tx.update(grad, state, params, **kwargs)
      return optax.apply_updates(params, updates), state

    for _ in range(steps):
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


@pytest.mark.parametrize("case", RECIPE_CASES, ids=repr)
def test_recipe_vmap_matches_one_by_one(case):
  """``vmap`` over independent runs (params, state) equals each run alone."""
  tx = case.build()
  objective = lambda p: jnp.sum(jnp.cos(p["a"]) * p["a"] ** 2) + jnp.sum(
      p["b"] ** 4)
  step = _make_step(case, tx, objective)
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


@pytest.mark.parametrize("case", RECIPE_CASES, ids=repr)
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
