"""The registry of public transformations that the test batteries share.

One place lists every public transformation of optax_adaptive with the
configurations the batteries run: ``CASES`` (conformance, degenerate input,
checkpointing: one or more configurations per public factory, with the
extra ``update`` arguments each needs, the hyperparameters that must stay
static under ``optax.inject_hyperparams``, multi-device tolerances and the
checks a case cannot meet) and ``NONFINITE_CASES`` (configurations that act
within a few steps: AutoDrop drops at every window, LABPAL measures every
other step). ``PUBLIC_TRANSFORMATIONS`` is read from ``optax_adaptive.__all__``
and :func:`missing_factories` tells a battery which of them it does not run,
so that a new public factory fails every battery until it is registered.
``REQUIRED`` gives the arguments each factory cannot do without, so that the
validation battery can vary one parameter at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import optax
import pytest

import optax_adaptive as oa


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
    slow: a further configuration of a factory that another case runs in
      the default tier; the batteries run this one with ``-m slow``.
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
  slow: bool = False

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
        slow=True,
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
        slow=True,
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
    " (docs/labpal.md)")

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
        slow=True,
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

# ------------------------------------------------------------------- AdaS
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
# The combinations docs/choosing.md recommends go through the same
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
        slow=True,
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
        # autodrop_after_sgd runs the checks for autodrop by default; the
        # recipe keeps test_recipe_* there.
        slow=True,
    ),
]
CASES += RECIPE_CASES

# Public names that are not transformations (states, pure functions, helpers).
NOT_TRANSFORMATIONS = frozenset({
    "__version__", "diagnostics", "linen_value_fn", "nnx_value_fn",
    "adas_early_stop", "adas_early_stop_init", "adas_end_epoch",
    "adas_layer_groups", "adas_layer_names", "evbmf", "knowledge_gain"})

# ---------------------------------------------- configurations that act fast
# For the non-finite battery: every method changes its state within the few
# steps of a test (AutoDrop drops at every window, LABPAL measures every
# other step, AdaS ends an epoch every two steps), so that a skipped step
# has something to leave untouched.


def _scaled_approx_batches(objective, value, grad, batch):
  """LABPAL's arguments for ``objective(params, scale)``: two batches."""
  del value, batch
  return dict(grad=grad, value_fn=objective,
              approx_batch={"scale": jnp.array([0.5, 1.5])})


_LABPAL_ACTIVE = dict(approx_batches=2, reuse_steps=2, untrusted_updates=0,
                      fit="exact", fd_step=1e-2, measuring_step=0.1)
_DROP_EVERY_WINDOW = dict(window_size=2, buffer_size=2, threshold_deg=180.0)

NONFINITE_CASES = [
    Case("cprop", _bind_inner(oa.cprop, optax.sgd(0.1, momentum=0.9))),
    Case("cprop_sgd", oa.cprop_sgd,
         dict(learning_rate=0.1, momentum=0.9, weight_decay=1e-4)),
    Case("cprop_adam", oa.cprop_adam, dict(learning_rate=0.1)),
    Case("autodrop", oa.autodrop, _DROP_EVERY_WINDOW,
         compose=lambda tx: optax.chain(optax.sgd(0.1, momentum=0.9), tx)),
    Case("autodrop_v1", oa.autodrop_v1,
         dict(steps_per_epoch=2, patience_epochs=1, average_on_drop=True),
         compose=lambda tx: optax.chain(optax.sgd(0.1), tx)),
    Case("pal", oa.pal, needs=_PAL_NEEDS),
    Case("scale_by_pal", oa.scale_by_pal,
         compose=lambda tx: optax.chain(optax.scale(-1.0), tx),
         needs=_PAL_NEEDS),
    Case("labpal", oa.labpal, _LABPAL_ACTIVE, extra=_scaled_approx_batches),
    Case("scale_by_labpal", oa.scale_by_labpal,
         dict(mode="sgd", momentum=0.5, **_LABPAL_ACTIVE),
         extra=_scaled_approx_batches),
    # The recipe of docs/choosing.md.
    Case("autodrop_prodigy", oa.autodrop, _DROP_EVERY_WINDOW,
         compose=lambda tx: optax.chain(optax.contrib.prodigy(), tx)),
]
# AdaS (kept apart: its epoch-end API is being reworked).
NONFINITE_CASES += [
    Case("adas", oa.adas, dict(learning_rate=0.1, steps_per_epoch=2)),
]

# ------------------------------------------------------------- the factories


def _kernel():
  return jnp.ones((2, 2, 2, 2))


# Required arguments of each public factory (and of knowledge_gain), so that
# the validation battery can vary one parameter at a time.
REQUIRED: dict[str, dict[str, Any]] = {
    "cprop": dict(inner=optax.sgd(0.1)),
    "cprop_sgd": dict(learning_rate=0.1),
    "cprop_adam": {},
    "adas": {},
    "autodrop": dict(window_size=4),
    "autodrop_v1": dict(steps_per_epoch=4),
    "pal": {},
    "scale_by_pal": {},
    "labpal": {},
    "scale_by_labpal": {},
    "knowledge_gain": dict(kernel=_kernel()),
}

PUBLIC_TRANSFORMATIONS = frozenset(
    name for name in oa.__all__
    if name not in NOT_TRANSFORMATIONS and not name[0].isupper())


def factory_name(case: Case) -> str:
  """The public factory a case configures (through ``_bind_inner`` too)."""
  return getattr(case.factory, "func", case.factory).__name__


def missing_factories(names: Iterable[str]) -> list[str]:
  """The public transformations not among ``names`` (factory names)."""
  return sorted(PUBLIC_TRANSFORMATIONS - set(names))


def extra_kwargs(case, objective, params, value, grad, **batch):
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


def ids(cases: Iterable[Case]) -> list[str]:
  return [case.name for case in cases]


def make_step(case, tx, objective, extra=None):
  """A train step ``(params, state) -> (params, state, updates)``."""

  def step(params, state):
    value, grad = jax.value_and_grad(objective)(params)
    kwargs = extra_kwargs(case, objective, params, value, grad)
    kwargs.update(extra or {})
    updates, state = tx.update(grad, state, params, **kwargs)
    return optax.apply_updates(params, updates), state, updates

  return step


def params(cases, values=None, fast_values=None, value_ids=str,
           slow_if=lambda case: False):
  """pytest parameters ``case`` (or ``case, value`` for each of ``values``).

  A case marked ``slow`` or meeting ``slow_if`` runs in the slow tier, and
  so does every value outside ``fast_values`` (when given): the default
  tier keeps each case with one or a few values. Ids are ``case`` or
  ``value-case``.
  """
  out = []
  for case in cases:
    case_slow = case.slow or slow_if(case)
    if values is None:
      out.append(pytest.param(case, id=case.name, marks=_tier(case_slow)))
      continue
    for value in values:
      slow = case_slow or (fast_values is not None
                           and value not in fast_values)
      out.append(pytest.param(case, value, id=f"{value_ids(value)}-{case.name}",
                              marks=_tier(slow)))
  return out


def _tier(slow):
  return (pytest.mark.slow,) if slow else ()
