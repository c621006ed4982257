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
"""LABPAL: a parabolic model of the full-batch loss, measured rarely.

Mutschler, Laube & Zell, `Using a one dimensional parabolic model of the
full-batch loss to estimate learning rates during training
<https://arxiv.org/abs/2108.13880>`_, 2021. The algorithm, its schedule and
the differences from the authors' code are on the docs page "PAL and LABPAL"
(docs/labpal.md).

One ``update`` is either a training step (``_train_step``: reuse the
estimate) or a measurement (``_labpal_measure.measure_step``: probe the line,
fit, decide, average), both functions of a frozen ``_LabpalConfig``. Follows
optax's line-search convention (``grad``, ``value_fn`` and data keyword
arguments routed to ``value_fn`` by name) and must be the outermost
transformation.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, ParamSpec, TypeVar

import jax
import jax.numpy as jnp
import optax

from optax_adaptive import _common, _labpal_measure, _pal, _parabola
from optax_adaptive._labpal_measure import LabpalInfo


class ScaleByLabpalState(NamedTuple):
  """State of :func:`scale_by_labpal`."""

  updates_done: jax.Array  # shape=(), dtype=jnp.int32, starts at -1.
  since_measure: jax.Array  # shape=(), dtype=jnp.int32
  pending: jax.Array  # shape=(), dtype=jnp.int32, 1: measure next update.
  have_estimate: jax.Array  # shape=(), dtype=jnp.bool_
  retries: jax.Array  # shape=(), dtype=jnp.int32, calls since last move.
  labpal_step_length: jax.Array  # shape=(), s-bar (used in 'nsgd' mode).
  labpal_learning_rate: jax.Array  # shape=(), lambda-bar ('sgd' mode).
  cap_scale: jax.Array | None  # shape=(), cap / max_step if cap="reference".
  hist_step: jax.Array  # shape=(avg_window,), trusted raw steps (ring).
  hist_lr: jax.Array  # shape=(avg_window,), trusted raw learning rates.
  hist_count: jax.Array  # shape=(), dtype=jnp.int32, valid ring entries.
  hist_index: jax.Array  # shape=(), dtype=jnp.int32, next ring slot.
  momentum: optax.Updates | None  # like params (stats dtype) or None.
  info: LabpalInfo  # the last measurement and its ``status``.


# ------------------------------------------------------- configuration

_MODES = ("nsgd", "sgd")
_FITS = ("reference", "exact")
_CAPS = ("fixed", "reference")
_MEASURING_STEP_DEFAULT = 0.01


@dataclasses.dataclass(frozen=True)
class _LabpalConfig:
  """The hyperparameters of :func:`scale_by_labpal`, checked (see its Args).

  Numbers may be arrays (``optax.inject_hyperparams``); only concrete Python
  numbers are range-checked.
  """

  mode: str
  reuse_steps: Any
  approx_batches: Any
  measuring_step: Any
  fd_step: Any
  update_step_adaptation: Any
  max_step: Any
  untrusted_updates: Any
  avg_window: int
  eps: Any
  norm_bounds: tuple[float, float]
  momentum: Any
  fit: str
  cap: str
  axis_name: str | None

  def __post_init__(self):
    _check_config(self)

  @property
  def use_momentum(self) -> bool:
    """Whether the state holds a momentum buffer (not for a Python 0)."""
    return not (_common.is_concrete_number(self.momentum)
                and float(self.momentum) == 0.0)


def _check_config(c: _LabpalConfig) -> None:
  """ValueError/TypeError naming the first bad hyperparameter."""
  _common.check_choice("mode", c.mode, _MODES)
  _common.check_choice("fit", c.fit, _FITS)
  _common.check_choice("cap", c.cap, _CAPS)
  _common.check_positive_int("avg_window", c.avg_window)
  if not isinstance(c.approx_batches, jax.Array):
    _common.check_positive_int("approx_batches", c.approx_batches)
  _common.check_count("reuse_steps", c.reuse_steps, lower=1)
  _common.check_count("untrusted_updates", c.untrusted_updates, lower=0)
  positive = dict(lower=0.0, lower_inclusive=False)
  _common.check_range("measuring_step", c.measuring_step, **positive)
  _common.check_range("fd_step", c.fd_step, **positive)
  if (_common.is_concrete_number(c.fd_step)
      and _common.is_concrete_number(c.measuring_step)
      and c.fd_step >= c.measuring_step):
    raise ValueError(
        f"`fd_step` ({c.fd_step}) must be smaller than `measuring_step` "
        f"({c.measuring_step})."
    )
  _common.check_range("update_step_adaptation", c.update_step_adaptation,
                      **positive)
  _common.check_range("max_step", c.max_step, **positive)
  _common.check_range("eps", c.eps, **positive)
  _common.check_range("momentum", c.momentum, lower=0.0, upper=1.0,
                      upper_inclusive=False)
  bounds = c.norm_bounds
  if not (isinstance(bounds, tuple) and len(bounds) == 2):
    raise TypeError(
        f"`norm_bounds` must be a tuple (low, high); got {bounds!r}."
    )
  for bound in bounds:
    _common.check_number_type("norm_bounds", bound)
  if all(_common.is_concrete_number(b) for b in bounds) and not (
      0 <= bounds[0] < bounds[1]
  ):
    raise ValueError(
        f"`norm_bounds` must satisfy 0 <= low < high; got {bounds}."
    )
  _parabola.check_axis_name(c.axis_name)


def _warning_stacklevel() -> int:
  """``stacklevel`` of the first caller outside this module (the user)."""
  frame, level = inspect.currentframe().f_back, 1
  while frame is not None and frame.f_globals.get("__name__") == __name__:
    frame, level = frame.f_back, level + 1
  return level


def _renamed_measuring_step(measuring_step: Any, measure_step: Any) -> Any:
  """``measuring_step``, or the deprecated ``measure_step`` if given."""
  if measure_step is None:
    return measuring_step
  # Under inject_hyperparams both arrive as arrays; only a concrete,
  # non-default measuring_step is known to be a second value.
  if (_common.is_concrete_number(measuring_step)
      and measuring_step != _MEASURING_STEP_DEFAULT):
    raise TypeError(
        "Pass only `measuring_step`; `measure_step` is its deprecated name"
        f" (got measuring_step={measuring_step}, measure_step={measure_step})."
    )
  warnings.warn(
      "`measure_step` is deprecated and will be removed in the next release;"
      " use `measuring_step` (the name PAL uses for the same μ).",
      DeprecationWarning, stacklevel=_warning_stacklevel())
  return measure_step


# --------------------------------------------------------------- state


def _init(config: _LabpalConfig, params: optax.Params) -> ScaleByLabpalState:
  _common.check_float_leaves(params, "scale_by_labpal", maskable=False)
  dtype = _parabola.scalar_dtype(params)
  # A fresh buffer per field, so that the state can be donated.
  zero = lambda: jnp.zeros((), dtype)
  int_zero = lambda: jnp.zeros((), jnp.int32)
  window = config.avg_window
  return ScaleByLabpalState(
      updates_done=jnp.full((), -1, jnp.int32),
      since_measure=int_zero(),
      pending=jnp.ones((), jnp.int32),
      have_estimate=jnp.zeros((), jnp.bool_),
      retries=int_zero(),
      labpal_step_length=zero(),
      labpal_learning_rate=zero(),
      cap_scale=jnp.ones((), dtype) if config.cap == "reference" else None,
      hist_step=jnp.zeros((window,), dtype),
      hist_lr=jnp.zeros((window,), dtype),
      hist_count=int_zero(),
      hist_index=int_zero(),
      momentum=(_common.stats_zeros_like(params) if config.use_momentum
                else None),
      info=LabpalInfo(
          value0=zero(),
          value_h=zero(),
          value_mu=zero(),
          curvature=zero(),
          slope=zero(),
          raw_step=zero(),
          status=int_zero(),
          fit_failed=jnp.zeros((), jnp.bool_),
      ),
  )


def _direction(
    config: _LabpalConfig, updates: optax.Updates, momentum: optax.Updates
) -> optax.Updates:
  """d = β m + u from the incoming updates u, in the statistics dtype."""
  updates = _parabola.tree_cast_stats(updates)
  if not config.use_momentum:
    return updates
  return jax.tree.map(lambda m, u: config.momentum * m + u, momentum, updates)


# --------------------------------------------------------- training step


def _train_step(
    config: _LabpalConfig, state: ScaleByLabpalState, norm: jax.Array | None
) -> tuple[jax.Array, jax.Array, ScaleByLabpalState]:
  """SGD (-λ̄ d) or normalised SGD (-s̄ d/‖d‖) with the reused estimate.

  Returns ``(coef, moved, new_state)``: the update is ``coef * d``.
  """
  dtype = state.labpal_step_length.dtype
  if config.mode == "sgd":
    coef = -state.labpal_learning_rate
  else:
    coef = -state.labpal_step_length / jnp.maximum(
        norm.astype(dtype), jnp.asarray(config.eps, dtype)
    )
  done = optax.safe_int32_increment(state.updates_done)
  since = optax.safe_int32_increment(state.since_measure)
  new_state = state._replace(
      updates_done=done,
      since_measure=since,
      pending=_labpal_measure.schedule_pending(config, since, done),
      retries=jnp.zeros((), jnp.int32),
  )
  return coef, jnp.ones((), jnp.bool_), new_state


# ----------------------------------------------------------------- update


def _update(
    config: _LabpalConfig,
    updates: optax.Updates,
    state: ScaleByLabpalState,
    params: optax.Params | None = None,
    *,
    value: jax.typing.ArrayLike | None = None,
    grad: optax.Updates | None = None,
    value_fn: Callable[..., jax.typing.ArrayLike] | None = None,
    approx_batch: Mapping[str, Any] | None = None,
    force_measure: jax.typing.ArrayLike = False,
    **extra_args: Any,
) -> tuple[optax.Updates, ScaleByLabpalState]:
  del value  # L0 is re-measured with the other points (same rounding).
  _common.require_params(params, "scale_by_labpal")
  _common.reject_masked_nodes(params, "scale_by_labpal")
  _common.require_extra_arg(grad, "grad", "scale_by_labpal")
  _common.require_extra_arg(value_fn, "value_fn", "scale_by_labpal")
  _common.check_callable("value_fn", value_fn)
  _common.require_extra_arg(approx_batch, "approx_batch", "scale_by_labpal")
  _parabola.check_approx_batch(approx_batch, value_fn, config.approx_batches)
  fn_kwargs = _parabola.value_fn_kwargs(
      value_fn, extra_args, "scale_by_labpal", batched=frozenset(approx_batch))

  direction = _direction(config, updates, state.momentum)
  norm = _common.tree_norm_f32(direction) if config.mode == "nsgd" else None
  measure = (state.pending > 0) | jnp.asarray(force_measure, jnp.bool_)
  # Both kinds of step return scalars only (the update is coef * d in
  # either), so no params-sized buffer crosses the control flow and the
  # update fuses with the caller's apply_updates; the momentum is selected
  # outside. The training step always runs; a measurement replaces its
  # result in a zero- or one-trip loop (_common.run_if), free when not taken.
  scalar_state = state._replace(momentum=None)
  coef, moved, new_state = _common.run_if(
      measure,
      lambda _: _labpal_measure.measure_step(
          config, grad, direction, norm, scalar_state, params, value_fn,
          fn_kwargs, approx_batch,
      ),
      _train_step(config, scalar_state, norm),
  )
  if config.use_momentum:
    new_state = new_state._replace(
        momentum=jax.tree.map(
            lambda d, m: jnp.where(moved, d, m), direction, state.momentum
        )
    )
  # A rejected (e.g. non-finite) direction does not move: 0 * NaN is NaN.
  updates = _parabola.zero_unless(
      moved, _parabola.scaled_like(direction, coef, params))
  return updates, new_state


# ------------------------------------------------------------- public API


def scale_by_labpal(
    mode: str = "nsgd",
    reuse_steps: jax.typing.ArrayLike = 1000,
    approx_batches: int = 10,
    measuring_step: jax.typing.ArrayLike = _MEASURING_STEP_DEFAULT,
    fd_step: jax.typing.ArrayLike = 1.77e-4,
    update_step_adaptation: jax.typing.ArrayLike = 1.8,
    max_step: jax.typing.ArrayLike = 1.0,
    untrusted_updates: jax.typing.ArrayLike = 400,
    avg_window: int = 25,
    eps: jax.typing.ArrayLike = 1e-6,
    norm_bounds: tuple[float, float] = (1e-3, 100.0),
    momentum: jax.typing.ArrayLike = 0.0,
    fit: str = "reference",
    cap: str = "fixed",
    axis_name: str | None = None,
    *,
    measure_step: jax.typing.ArrayLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""LABPAL's transformation; see :func:`labpal` for the full description.

  :func:`labpal` takes the same parameters and returns the same
  transformation.

  Args:
    mode: ``"nsgd"`` (reuse the step length :math:`\bar s`, default) or
      ``"sgd"`` (reuse the learning rate :math:`\bar\lambda`).
    reuse_steps: weight updates per measurement (the measurement included).
    approx_batches: :math:`m_a`; ``approx_batch`` holds :math:`m_a k`
      mini-batches (a multiple of :math:`m_a`).
    measuring_step: :math:`\mu`, the measuring step: third sample point
      along the line.
    fd_step: :math:`h`, second sample point along the line.
    update_step_adaptation: :math:`\alpha`.
    max_step: :math:`s_{\max}`, cap applied *before* :math:`\alpha`.
    untrusted_updates: :math:`U`, updates during which the estimates are
      not averaged.
    avg_window: :math:`W`, trusted measurements averaged (static Python
      int).
    eps: floor of steps and learning rates; replaces a zero norm.
    norm_bounds: ``(low, high)`` accepted range of :math:`\|d\|`; a
      measurement whose direction norm lies outside is rejected and retried.
    momentum: :math:`\beta` of the direction's heavy-ball buffer. The buffer
      exists (1 params copy) unless ``momentum`` is a Python 0.
    fit: ``"reference"`` (faithful to the authors' code, default) or
      ``"exact"``.
    cap: ``"fixed"`` (the paper's cap :math:`s_{\max}`, default) or
      ``"reference"`` (the authors' code: the cap is multiplied by
      :math:`\alpha` each time it binds).
    axis_name: if set, the :math:`3M` measured losses are averaged with
      :func:`jax.lax.pmean` over this axis; pass ``grad`` already averaged.
    measure_step: deprecated name of ``measuring_step`` (removed in the next
      release).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.
  """
  config = _LabpalConfig(
      mode=mode,
      reuse_steps=reuse_steps,
      approx_batches=approx_batches,
      measuring_step=_renamed_measuring_step(measuring_step, measure_step),
      fd_step=fd_step,
      update_step_adaptation=update_step_adaptation,
      max_step=max_step,
      untrusted_updates=untrusted_updates,
      avg_window=avg_window,
      eps=eps,
      norm_bounds=norm_bounds,
      momentum=momentum,
      fit=fit,
      cap=cap,
      axis_name=axis_name,
  )
  return optax.GradientTransformationExtraArgs(
      functools.partial(_init, config), functools.partial(_update, config))


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _signature_of(
    core: Callable[_P, _R],
) -> Callable[[Callable[..., _R]], Callable[_P, _R]]:
  """Gives a forwarding function ``core``'s signature, for
  :func:`inspect.signature` (Sphinx, ``optax.inject_hyperparams``) and, via
  the ParamSpec, for type checkers; its name and docstring stay its own."""

  def decorate(fn: Callable[..., _R]) -> Callable[_P, _R]:
    fn.__signature__ = inspect.signature(core)
    return fn

  return decorate


@_signature_of(scale_by_labpal)
def labpal(*args: Any, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
  r"""LABPAL: a parabolic model of the full-batch loss, measured rarely.

  Every ``reuse_steps`` weight updates (and once more after the
  ``untrusted_updates`` warm-up) LABPAL *measures*: with the direction
  :math:`d = \beta m + u` (``updates``: the mean gradient :math:`\bar g` of
  the step's :math:`k` training batches, or what transformations before
  LABPAL made of it), :math:`n = \|d\|`, :math:`\hat u = d/n`, it
  evaluates the mean loss over the :math:`M` mini-batches of
  ``approx_batch`` at :math:`t \in \{0, h, \mu\}`, on the line
  :math:`\theta - t\hat u`, and fits :math:`p(t) = A t^2 + B t + L_0`:

  .. math::

    A = \frac{1}{\mu}\Bigl[\frac{L_\mu - L_h}{\mu - h}
        - \frac{L_h - L_0}{h}\Bigr], \qquad
    B = \frac{L_h - L_0}{h} - A h .

  ``fit="exact"`` uses :math:`(a, b) = (A, B)`. ``fit="reference"`` (default,
  faithful to the reference code, which differentiates with ``np.gradient``
  twice) uses :math:`(a, b) = (A/2,\ B + A h)`, i.e. the step
  :math:`2 s^* - h`; its tuned :math:`\alpha = 1.8` assumes this. A fit
  succeeds when :math:`a > 0 > b`; then

  .. math::

    s_{\mathrm{raw}} = \max\bigl(\alpha \min(-b/(2a),\ s_{\max}),\
    \epsilon\bigr), \qquad
    \lambda_{\mathrm{raw}} = \max(s_{\mathrm{raw}}/n,\ \epsilon).

  ``cap="reference"`` reproduces the authors' code, in which the cap
  :math:`s_{\max}` is multiplied by :math:`\alpha` each time it binds
  (:math:`s_{\max}\alpha^j` after :math:`j` binding measurements); the
  default ``cap="fixed"`` keeps :math:`s_{\max}`, as the paper states.

  During the first ``untrusted_updates`` updates the estimates are the raw
  values; afterwards :math:`\bar s, \bar\lambda` are the means of the last
  ``avg_window`` successful measurements. A failed fit keeps the old
  estimates. The measuring update moves :math:`\theta - \bar s \hat u`.
  Between measurements LABPAL trains with the reused estimate:
  :math:`\theta - \bar\lambda d` (``mode="sgd"``) or
  :math:`\theta - \bar s\, d/\|d\|` (``mode="nsgd"``). A direction with
  :math:`n \notin` ``norm_bounds`` or a first fit that fails is retried on
  the next call without moving.

  ``update(updates, state, params, *, grad, value_fn, approx_batch,
  force_measure=False, value=None, **data)`` takes its direction from
  ``updates`` (the gradient, or its clipped or weight-decayed form from
  transformations chained before LABPAL); ``grad`` only checks that
  :math:`\langle g, d\rangle > 0` (the reference's guard); ``value`` is not
  used (:math:`L_0` is measured with the other two points). ``approx_batch``
  maps ``value_fn`` argument names to arrays stacked along a leading axis of
  :math:`M` mini-batches (a multiple of ``approx_batches``, the step's own
  training batches first); other data keywords are passed to ``value_fn``
  by name and shared by the :math:`M` evaluations, and a keyword that
  ``value_fn`` does not take is an error, as in optax's line searches.
  ``force_measure=True`` triggers a measurement (e.g. at a batch-size
  boundary). One jitted ``update`` serves both kinds of step: training steps
  cost nothing extra, a measurement :math:`3M` forward passes (see the docs
  page "PAL and LABPAL" for feeding the batches and the cost). ``update`` is
  not reverse-mode differentiable.

  LABPAL is a complete optimizer: use it alone, at the top level (never in
  ``optax.partition``, ``optax.masked`` or ``optax.MultiSteps``; accumulate
  the :math:`k` gradients yourself). Its state exposes
  ``labpal_step_length`` (:math:`\bar s`), ``labpal_learning_rate``
  (:math:`\bar\lambda`), ``retries`` (calls in a row without a weight
  update) and ``info`` (the last measurement's losses, coefficients, raw
  step and ``status``, a :class:`LabpalStatus`).

  Its parameters, defaults and checks are those of :func:`scale_by_labpal`,
  which documents them (one signature for both names).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optax_adaptive import labpal
    >>> def loss(params, x, y):
    ...   return jnp.mean((x @ params - y) ** 2)
    >>> keys = jax.random.split(jax.random.key(0), 3)
    >>> xs = jax.random.normal(keys[0], (10, 16, 3))  # M = 10 mini-batches
    >>> w_true = jnp.array([1.0, -2.0, 0.5])
    >>> ys = xs @ w_true
    >>> tx = labpal(mode="sgd", reuse_steps=5, untrusted_updates=0,
    ...             fit="exact", update_step_adaptation=1.0)
    >>> params = jnp.zeros(3)
    >>> state = tx.init(params)
    >>> @jax.jit
    ... def step(params, state, i):
    ...   x, y = xs[i % 10], ys[i % 10]
    ...   value, grad = jax.value_and_grad(loss)(params, x, y)
    ...   approx = {"x": jnp.roll(xs, -i, 0), "y": jnp.roll(ys, -i, 0)}
    ...   updates, state = tx.update(grad, state, params, value=value,
    ...                              grad=grad, value_fn=loss,
    ...                              approx_batch=approx)
    ...   return optax.apply_updates(params, updates), state
    >>> for i in range(20):
    ...   params, state = step(params, state, i)
    >>> full_loss = jnp.mean(jax.vmap(loss, (None, 0, 0))(params, xs, ys))
    >>> print(bool(full_loss < 1e-4), bool(state.labpal_learning_rate > 0))
    True True

  References:
    Mutschler, Laube & Zell, `Using a one dimensional parabolic model of the
    full-batch loss to estimate learning rates during training
    <https://arxiv.org/abs/2108.13880>`_, 2021.

    Mutschler & Zell, `Parabolic Approximation Line Search for DNNs
    <https://arxiv.org/abs/1903.11991>`_, NeurIPS 2020.

  .. warning::
    Under :func:`jax.vmap` over seeds, a step measures whenever any seed
    does and every seed pays for it. Loop or ``pmap``/``shard_map`` over
    seeds.
  """
  return scale_by_labpal(*args, **kwargs)


def __getattr__(name: str) -> Any:
  """PAL's state types, which this module held before PAL got its own:
  states pickled then name them here."""
  if name in _PAL_STATE_TYPES:
    return getattr(_pal, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_PAL_STATE_TYPES = ("PalCase", "PalInfo", "ScaleByPalState")
