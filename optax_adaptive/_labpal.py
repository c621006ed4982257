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
"""Parabolic line searches PAL and LABPAL.

PAL: Mutschler & Zell, `Parabolic Approximation Line Search for DNNs
<https://arxiv.org/abs/1903.11991>`_, NeurIPS 2020.

LABPAL: Mutschler, Laube & Zell, `Using a one dimensional parabolic model of the
full-batch loss to estimate learning rates during training
<https://arxiv.org/abs/2108.13880>`_, 2021.

Both follow optax's line-search convention (``value``, ``grad``, ``value_fn``
and data keyword arguments routed to ``value_fn`` by name) and must be the
outermost transformation (the last link of a top-level ``optax.chain``).
Section numbers (``§``) refer to the package's ``labpal.md`` specification.
"""

from __future__ import annotations

import enum
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_adaptive import _common

# ------------------------------------------------------- shared line helpers


def _data_params(value_fn: Callable[..., Any]) -> list[inspect.Parameter]:
  """``value_fn``'s parameters after the first (params) that take data by name.

  Mirrors optax's ``_extract_fns_kwargs``: only explicitly named parameters
  receive data; ``*args``/``**kwargs`` catch-alls receive nothing.
  """
  kinds = (
      inspect.Parameter.POSITIONAL_OR_KEYWORD,
      inspect.Parameter.KEYWORD_ONLY,
  )
  params = list(inspect.signature(value_fn).parameters.values())
  return [p for p in params[1:] if p.kind in kinds]


def _value_fn_arg_names(value_fn: Callable[..., Any]) -> frozenset[str]:
  """Keyword names ``value_fn`` accepts after its first (params) argument."""
  return frozenset(p.name for p in _data_params(value_fn))


def _value_fn_kwargs(
    value_fn: Callable[..., Any],
    extra_args: Mapping[str, Any],
    method: str,
    batched: frozenset[str] = frozenset(),
) -> dict[str, Any]:
  """The data arguments of ``value_fn`` among ``update``'s extra arguments.

  As optax's line searches do, a keyword that ``value_fn`` does not take
  (a misspelt data argument) is an error rather than silently dropped. A
  required data argument of ``value_fn`` that is neither given nor in
  ``batched`` (LABPAL's ``approx_batch`` keys) is named too, instead of
  surfacing as a positional-argument error inside ``value_fn``.

  Raises:
    TypeError: naming the unconsumed or missing keywords and ``value_fn``'s
      signature.
  """
  data = _data_params(value_fn)
  names = {p.name for p in data}
  where = f"`value_fn{inspect.signature(value_fn)}`"
  unused = sorted(set(extra_args) - names)
  if unused:
    raise TypeError(
        f"{method}.update got keyword arguments {unused} that {where} does"
        " not take. Extra keyword arguments of `update` are data for"
        " `value_fn`, routed to it by name (as in optax's line searches):"
        " rename them to match its parameters or drop them."
    )
  missing = [
      p.name for p in data
      if p.default is inspect.Parameter.empty
      and p.name not in extra_args and p.name not in batched
  ]
  if missing:
    example = ", ".join(f"{name}=..." for name in missing)
    per_batch = (
        " (or, stacked per mini-batch, as keys of `approx_batch`)"
        if method == "scale_by_labpal" else "")
    raise TypeError(
        f"{method}: {where} needs {missing}, which were not given. Data"
        " arguments are passed to `update` by name, e.g."
        f" `tx.update(updates, state, params, ..., {example})`{per_batch}."
    )
  return {k: v for k, v in extra_args.items() if k in names}


def _fit_dtype() -> jnp.dtype:
  """float64 when ``jax_enable_x64`` is on, else float32 (spec §7.6.3)."""
  return jnp.dtype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)


def _scalar_dtype(params: optax.Params) -> jnp.dtype:
  """Dtype of scalar state: float64 for float64 params, else float32."""
  return _common.widest_float_dtype(params)


def _tree_cast_stats(tree: optax.Params) -> optax.Params:
  """Casts every leaf to its statistics dtype (float32 for bf16/f16)."""
  return jax.tree.map(lambda x: x.astype(_common.stats_dtype(x.dtype)), tree)


def _move_along(
    params: optax.Params, direction: optax.Params, distance: jax.Array
) -> optax.Params:
  """``params + distance * direction`` leaf-wise, in each param's dtype."""
  return jax.tree.map(
      lambda p, d: (p + distance.astype(d.dtype) * d).astype(p.dtype),
      params,
      direction,
  )


def _scaled_like(
    direction: optax.Params, distance: jax.Array, like: optax.Params
) -> optax.Params:
  """``distance * direction`` with the dtypes of ``like`` (the params)."""
  return jax.tree.map(
      lambda d, ref: (distance.astype(d.dtype) * d).astype(ref.dtype),
      direction,
      like,
  )


def _zero_unless(moved: jax.Array, updates: optax.Updates) -> optax.Updates:
  """``updates`` where ``moved``, else exact zeros (even for NaN entries)."""
  return jax.tree.map(
      lambda u: jnp.where(moved, u, jnp.zeros_like(u)), updates)


def _loss_scalar(loss: Any, dtype: jnp.dtype) -> jax.Array:
  return jnp.asarray(loss).astype(dtype).reshape(())


def _rounding_eps(*losses: Any) -> float:
  """Machine epsilon of the widest floating dtype among ``losses``."""
  dtypes = [jnp.result_type(x) for x in losses]
  dtypes = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
  return max((float(jnp.finfo(d).eps) for d in dtypes), default=0.0)


def _maybe_pmean(x: jax.Array, axis_name: str | None) -> jax.Array:
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def _check_axis_name(axis_name: Any) -> None:
  if axis_name is not None and not isinstance(axis_name, str):
    raise TypeError(
        f"`axis_name` must be None or a string; got {axis_name!r}."
    )


# ======================================================================= PAL

class PalCase(enum.IntEnum):
  r"""Values of ``PalInfo.case``: which branch of PAL's step rule ran.

  :math:`a` and :math:`b` are the curvature and slope of the parabola
  :math:`p(t) = a t^2 + b t + \ell(0)` fitted along the unit direction
  (Mutschler & Zell 2020, arXiv:1903.11991). The state stores the int32
  value; members compare equal to it, and ``PalCase(int(case)).name`` names
  it. Every step is capped at ``max_step``.
  """

  #: Step :math:`\alpha` times the distance to the minimum
  #: (:math:`a > 0,\ b < 0`).
  MINIMUM = 0
  #: Step :math:`\mu` (:math:`a \le 0,\ b < 0`, concave or linear).
  CONCAVE = 1
  #: No step (:math:`b \ge 0`, not a descent direction).
  NOT_DESCENT = 2
  #: No step (:math:`a` or :math:`b` is NaN or infinite).
  NOT_FINITE = 3


# The names used by the code below and by the tests.
PAL_CASE_MINIMUM = PalCase.MINIMUM
PAL_CASE_CONCAVE = PalCase.CONCAVE
PAL_CASE_NOT_DESCENT = PalCase.NOT_DESCENT
PAL_CASE_NOT_FINITE = PalCase.NOT_FINITE


class PalInfo(NamedTuple):
  """The last parabola of :func:`scale_by_pal`, for monitoring."""

  value_mu: jax.Array  # shape=(), loss at params + mu * u_hat.
  curvature: jax.Array  # shape=(), a in p(t) = a t^2 + b t + value.
  slope: jax.Array  # shape=(), b = <grad, u_hat>.
  case: jax.Array  # shape=(), dtype=jnp.int32, a ``PalCase`` value.
  fit_failed: jax.Array  # shape=(), dtype=jnp.bool_, case != minimum.


class ScaleByPalState(NamedTuple):
  """State of :func:`scale_by_pal`."""

  pal_learning_rate: jax.Array  # shape=(), s / ||u||, applied to `updates`.
  pal_step_length: jax.Array  # shape=(), s, distance moved in param space.
  info: PalInfo  # the last parabola and its ``case``.


def _pal_step(
    value: jax.Array,
    value_mu: jax.Array,
    slope: jax.Array,
    measuring_step: jax.Array,
    update_step_adaptation: jax.Array,
    max_step: jax.Array,
    loss_eps: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """PAL's decision (spec §2.5-§2.7, §7.2): (step length, curvature, case).

  A curvature whose contribution ``a μ²`` is below the rounding error of the
  losses counts as zero (a linear loss, spec §8.5), so rounding noise never
  decides between "step to the minimum" and "stay at μ".
  """
  mu = measuring_step
  curvature = (value_mu - value - slope * mu) / mu**2  # spec §2.5
  finite = jnp.isfinite(curvature) & jnp.isfinite(slope)
  descent = slope < 0
  noise = loss_eps * (jnp.abs(value) + jnp.abs(value_mu) + jnp.abs(slope * mu))
  convex = curvature * mu**2 > noise
  safe_curv = jnp.where(convex & finite, curvature, jnp.ones_like(curvature))
  minimum = update_step_adaptation * (-slope / (2 * safe_curv))  # spec §2.7
  step = jnp.where(descent, jnp.where(convex, minimum, mu), 0.0)
  step = jnp.minimum(step, max_step)  # cap after alpha (spec §2.7)
  step = jnp.where(finite, step, 0.0)  # spec §7.2: return to theta
  case = jnp.where(
      ~finite,
      PAL_CASE_NOT_FINITE,
      jnp.where(
          ~descent,
          PAL_CASE_NOT_DESCENT,
          jnp.where(convex, PAL_CASE_MINIMUM, PAL_CASE_CONCAVE),
      ),
  ).astype(jnp.int32)
  return step, curvature, case


def scale_by_pal(
    measuring_step: jax.typing.ArrayLike = 1.0,
    update_step_adaptation: jax.typing.ArrayLike = 1 / 0.6,
    max_step: jax.typing.ArrayLike = 3.16,
    exact_directional_derivative: bool = True,
    eps: jax.typing.ArrayLike = 1e-10,
    axis_name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Parabolic approximation line search along the incoming direction.

  Takes ``updates`` as the descent direction :math:`u`, fits a parabola to the
  loss along :math:`\hat u = u/\|u\|` from ``value``, the slope
  :math:`b = \langle \nabla L, \hat u\rangle` and one extra loss at
  :math:`\mu \hat u`, and returns :math:`s \hat u` with :math:`s` the
  (scaled, capped) parabola minimum. See :func:`pal` for the maths and an
  example; this core is the last link of a top-level :func:`optax.chain`.

  Args:
    measuring_step: :math:`\mu`, distance of the extra measurement.
    update_step_adaptation: :math:`\alpha`, multiplies the parabola minimum.
    max_step: :math:`s_{\max}`, cap on the step length (applied after
      :math:`\alpha`).
    exact_directional_derivative: use :math:`b = \langle g, \hat u\rangle`
      (needs ``grad``); otherwise :math:`b = -\|u\|`.
    eps: replaces a zero direction norm.
    axis_name: if set, the extra loss is averaged with
      :func:`jax.lax.pmean` over this mapped axis (``pmap``/``shard_map``).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` whose ``update`` takes
    the keyword arguments ``value``, ``grad`` (only when
    ``exact_directional_derivative``), ``value_fn`` and the data arguments of
    ``value_fn`` by name.
  """
  _common.check_range("measuring_step", measuring_step, lower=0.0,
                      lower_inclusive=False)
  _common.check_range("update_step_adaptation", update_step_adaptation,
                      lower=0.0, lower_inclusive=False)
  _common.check_range("max_step", max_step, lower=0.0)
  _common.check_range("eps", eps, lower=0.0, lower_inclusive=False)
  _check_axis_name(axis_name)

  def init_fn(params: optax.Params) -> ScaleByPalState:
    _common.check_float_leaves(params, "scale_by_pal", maskable=False)
    dtype = _scalar_dtype(params)
    # A fresh buffer per field, so that the state can be donated.
    zero = lambda: jnp.zeros((), dtype)
    return ScaleByPalState(
        pal_learning_rate=zero(),
        pal_step_length=zero(),
        info=PalInfo(
            value_mu=zero(),
            curvature=zero(),
            slope=zero(),
            case=jnp.zeros((), jnp.int32),
            fit_failed=jnp.zeros((), jnp.bool_),
        ),
    )

  def update_fn(
      updates: optax.Updates,
      state: ScaleByPalState,
      params: optax.Params | None = None,
      *,
      value: jax.typing.ArrayLike | None = None,
      grad: optax.Updates | None = None,
      value_fn: Callable[..., jax.typing.ArrayLike] | None = None,
      **extra_args: Any,
  ) -> tuple[optax.Updates, ScaleByPalState]:
    _common.require_params(params, "scale_by_pal")
    _common.reject_masked_nodes(params, "scale_by_pal")
    _common.require_extra_arg(value, "value", "scale_by_pal")
    _common.require_extra_arg(value_fn, "value_fn", "scale_by_pal")
    _common.check_callable("value_fn", value_fn)
    if exact_directional_derivative:
      _common.require_extra_arg(grad, "grad", "scale_by_pal")
    fn_kwargs = _value_fn_kwargs(value_fn, extra_args, "scale_by_pal")

    dtype = state.pal_learning_rate.dtype
    direction = _tree_cast_stats(updates)
    norm = _common.tree_norm_f32(direction).astype(dtype)  # spec §2.3
    norm = jnp.maximum(norm, jnp.asarray(eps, dtype))
    # û = d/n is never materialised: each use scales d by a scalar, so the
    # moves fuse into their consumers (one kernel fewer per leaf).
    if exact_directional_derivative:
      # <g, d>/n rather than <g, û>: a sibling of ||d|| (one pass over d).
      slope = (_common.tree_vdot_f32(grad, direction).astype(dtype) / norm)
    else:
      slope = -norm
    mu = jnp.asarray(measuring_step, dtype)
    value_mu = value_fn(_move_along(params, direction, mu / norm),
                        **fn_kwargs)
    loss_eps = _rounding_eps(value, value_mu)
    value_mu = _maybe_pmean(_loss_scalar(value_mu, dtype), axis_name)
    step, curvature, case = _pal_step(
        _loss_scalar(value, dtype),
        value_mu,
        slope,
        mu,
        jnp.asarray(update_step_adaptation, dtype),
        jnp.asarray(max_step, dtype),
        loss_eps,
    )
    # A non-finite direction is a zero step (spec §7.2): 0 * NaN is not 0.
    moved = step > 0
    new_updates = _zero_unless(
        moved, _scaled_like(direction, step / norm, params))  # spec §2.8
    new_state = ScaleByPalState(
        pal_learning_rate=jnp.where(moved, step / norm, 0.0).astype(dtype),
        pal_step_length=step,
        info=PalInfo(
            value_mu=value_mu,
            curvature=curvature,
            slope=slope,
            case=case,
            fit_failed=case != PAL_CASE_MINIMUM,
        ),
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def pal(
    measuring_step: jax.typing.ArrayLike = 1.0,
    update_step_adaptation: jax.typing.ArrayLike = 1 / 0.6,
    max_step: jax.typing.ArrayLike = 3.16,
    momentum: jax.typing.ArrayLike = 0.4,
    exact_directional_derivative: bool = True,
    eps: jax.typing.ArrayLike = 1e-10,
    axis_name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""PAL: a parabolic line search on each mini-batch.

  With the heavy-ball direction :math:`d_t = \beta d_{t-1} + g_t`
  (:func:`optax.trace`), unit vector :math:`\hat u = -d/\|d\|` and the loss
  :math:`\ell(t) = L_B(\theta + t\hat u)` of the *current* batch :math:`B`,
  PAL measures :math:`\ell(0)` (``value``), the slope
  :math:`b = \langle g, \hat u\rangle` and :math:`\ell(\mu)` (one extra
  forward pass), fits the parabola :math:`p(t) = a t^2 + b t + \ell(0)`
  and steps

  .. math::

    a = \frac{\ell(\mu) - \ell(0) - b\mu}{\mu^2}, \qquad
    s = \min\Bigl(s_{\max},\;
      \begin{cases}
        \alpha\,\frac{-b}{2a} & a > 0,\ b < 0 \\
        \mu & a \le 0,\ b < 0 \\
        0 & b \ge 0
      \end{cases}\Bigr), \qquad
    \theta_{t+1} = \theta_t + s\,\hat u .

  A non-finite :math:`a` or :math:`b` gives :math:`s = 0`. The learning rate
  :math:`s/\|d\|` is in ``state.pal_learning_rate`` (read it with
  ``optax.tree.get(state, 'pal_learning_rate')``), the parabola in
  ``state.info``.

  ``pal`` is ``chain(trace(momentum), scale(-1), scale_by_pal(...))`` (the
  trace is omitted when ``momentum`` is a Python 0). It must be used at the
  top level, never inside ``optax.partition``, ``optax.masked`` or
  ``optax.MultiSteps``, and it needs the keyword arguments ``value`` (loss
  at ``params``), ``grad``, ``value_fn`` and ``value_fn``'s data arguments by
  name. ``value`` and ``value_fn`` must see the same batch and the same
  dropout key. Cost per step: one forward-backward pass (yours) plus one
  forward pass.

  Args:
    measuring_step: :math:`\mu`, distance of the extra measurement.
    update_step_adaptation: :math:`\alpha`, multiplies the parabola minimum.
    max_step: :math:`s_{\max}`, cap on the step length.
    momentum: :math:`\beta` (the reference's "conjugate gradient factor").
    exact_directional_derivative: use :math:`b = \langle g, \hat u\rangle`
      rather than :math:`-\|d\|`.
    eps: replaces a zero direction norm.
    axis_name: if set, the extra loss is averaged with
      :func:`jax.lax.pmean` over this axis (``pmap``/``shard_map``); pass
      ``value`` and ``grad`` already averaged.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optax_adaptive import pal
    >>> def loss(params, x, y):
    ...   return jnp.mean((x @ params - y) ** 2)
    >>> x = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    >>> y = jnp.array([1.0, -1.0])
    >>> params = jnp.zeros(2)
    >>> tx = pal()
    >>> state = tx.init(params)
    >>> for _ in range(5):
    ...   value, grad = jax.value_and_grad(loss)(params, x, y)
    ...   updates, state = tx.update(grad, state, params, value=value,
    ...                              grad=grad, value_fn=loss, x=x, y=y)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f"{loss(params, x, y):.4f}")
    0.5915
    0.2663
    0.1342
    0.0693
    0.0314

  References:
    Mutschler & Zell, `Parabolic Approximation Line Search for DNNs
    <https://arxiv.org/abs/1903.11991>`_, NeurIPS 2020.

  .. note::
    The reference leaves parameters at :math:`\theta + \mu\hat u` when the fit
    is not finite; this implementation returns to :math:`\theta` instead.
  """
  line_search = scale_by_pal(
      measuring_step=measuring_step,
      update_step_adaptation=update_step_adaptation,
      max_step=max_step,
      exact_directional_derivative=exact_directional_derivative,
      eps=eps,
      axis_name=axis_name,
  )
  _common.check_range("momentum", momentum, lower=0.0, upper=1.0,
                      upper_inclusive=False)
  if _common.is_concrete_number(momentum) and float(momentum) == 0.0:
    return optax.chain(optax.scale(-1.0), line_search)
  return optax.chain(
      optax.trace(decay=momentum), optax.scale(-1.0), line_search
  )


# ==================================================================== LABPAL

class LabpalStatus(enum.IntEnum):
  """Values of ``LabpalInfo.status``: the outcome of the last measurement.

  The state stores the int32 value; members compare equal to it, and
  ``LabpalStatus(int(status)).name`` names it.
  """

  #: No measurement yet.
  NONE = 0
  #: Parabola accepted; the estimates were updated.
  OK = 1
  #: Fit rejected; the step moved with the old estimate.
  FIT_FAILED = 2
  #: No usable estimate or direction; no move, measure again next call.
  RETRY = 3


# The names used by the code below.
LABPAL_STATUS_NONE = LabpalStatus.NONE
LABPAL_STATUS_OK = LabpalStatus.OK
LABPAL_STATUS_FIT_FAILED = LabpalStatus.FIT_FAILED
LABPAL_STATUS_RETRY = LabpalStatus.RETRY

_MODES = ("nsgd", "sgd")
_FITS = ("reference", "exact")
_CAPS = ("fixed", "reference")


class LabpalInfo(NamedTuple):
  """The last measurement of :func:`scale_by_labpal`, for monitoring."""

  value0: jax.Array  # shape=(), mean loss at t = 0 over approx_batch.
  value_h: jax.Array  # shape=(), mean loss at t = fd_step.
  value_mu: jax.Array  # shape=(), mean loss at t = measuring_step.
  curvature: jax.Array  # shape=(), a of the fit (a_ref = A/2 if reference).
  slope: jax.Array  # shape=(), b of the fit (b_ref = B + A h if reference).
  raw_step: jax.Array  # shape=(), alpha * min(s_fit, max_step), floored.
  status: jax.Array  # shape=(), dtype=jnp.int32, a ``LabpalStatus``.
  fit_failed: jax.Array  # shape=(), dtype=jnp.bool_


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


class _Fit(NamedTuple):
  curvature: jax.Array
  slope: jax.Array
  step: jax.Array  # distance to the fitted (or reference) minimum
  ok: jax.Array


def _parabola_through(
    diff_h: jax.Array, diff_mu: jax.Array, h: jax.Array, mu: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """(A, B) of p(t) = A t² + B t + L0 through (0,0), (h,Δh), (μ,Δμ)."""
  first = diff_h / h
  curv = ((diff_mu - diff_h) / (mu - h) - first) / mu  # spec §3.3.4
  return curv, first - curv * h


def _fit_parabola(
    diff_h: jax.Array,
    diff_mu: jax.Array,
    h: jax.Array,
    mu: jax.Array,
    fit: str,
    noise: jax.Array,
) -> _Fit:
  """The reference fit (default) or the exact one, spec §3.3.4.

  ``noise`` bounds the rounding error of ``A μ²``; a smaller curvature counts
  as zero (a linear loss fails the fit, spec §8.5) instead of letting the
  sign of rounding noise decide.
  """
  curv, slope = _parabola_through(diff_h, diff_mu, h, mu)
  significant = curv * mu**2 > noise
  if fit == "reference":
    # np.gradient twice over [0, h, mu]: b_ref = B + A h, a_ref = A / 2.
    curv, slope = curv / 2, diff_h / h
  ok = significant & (curv > 0) & (slope < 0)
  safe_curv = jnp.where(ok, curv, jnp.ones_like(curv))
  return _Fit(curv, slope, -slope / (2 * safe_curv), ok)


def _masked_mean(hist: jax.Array, count: jax.Array) -> jax.Array:
  valid = jnp.arange(hist.shape[0]) < count
  total = jnp.sum(jnp.where(valid, hist, 0.0))
  return total / jnp.maximum(count, 1).astype(hist.dtype)


def _nanmean_rows(values: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean over the valid rows (NaN when there is none)."""
  count = jnp.sum(valid).astype(values.dtype)
  total = jnp.sum(jnp.where(valid, values, 0.0))
  return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


def _leading_size(tree: Any) -> int | None:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return None
  sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
        "scale_by_labpal: every leaf of `approx_batch` needs the same leading"
        f" axis M (one entry per mini-batch); got leading sizes {sizes}."
    )
  return sizes.pop()


def _check_approx_batch(
    approx_batch: Any, value_fn: Callable[..., Any], approx_batches: Any
) -> None:
  if not isinstance(approx_batch, Mapping):
    raise TypeError(
        "scale_by_labpal: `approx_batch` must be a mapping from `value_fn`"
        " argument names to arrays stacked along a leading axis of M"
        f" mini-batches; got {type(approx_batch).__name__}."
    )
  unknown = set(approx_batch) - _value_fn_arg_names(value_fn)
  if unknown:
    raise TypeError(
        f"scale_by_labpal: `approx_batch` keys {sorted(unknown)} are not"
        " arguments of `value_fn`."
    )
  size = _leading_size(approx_batch)
  if (
      size is not None
      and isinstance(approx_batches, int)
      and size % approx_batches
  ):
    raise ValueError(
        f"scale_by_labpal: `approx_batch` holds M={size} mini-batches, which"
        f" is not a multiple of `approx_batches`={approx_batches} (M = "
        "approx_batches * k for k accumulated training batches)."
    )


_MEASURING_STEP_DEFAULT = 0.01


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
      DeprecationWarning, stacklevel=3)
  return measure_step


def _probe_point(
    params: optax.Params, unit: optax.Params, distance: jax.Array
) -> optax.Params:
  """``params + distance * unit`` in the dtype of ``unit`` (statistics dtype).

  bfloat16/float16 params are probed in float32. LABPAL's points lie
  ``fd_step`` = 1.77e-4 apart; rounded to bfloat16 (8 significant bits) a
  probe leaves the line by up to 2^-9 of each coordinate, as much as the
  move itself for coordinates above ~0.05, so the fitted curvature is
  rounding noise and fits fail (retried forever at the first measurement).
  ``value_fn`` receives the float32 points: the loss as a function of
  continuous params, equal to the bfloat16 model's at t = 0 when the model
  computes in float32 (or promotes to it).
  """
  return jax.tree.map(
      lambda p, u: p.astype(u.dtype) + distance.astype(u.dtype) * u,
      params, unit)


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

  Args:
    mode: ``"nsgd"`` (reuse the step length :math:`\bar s`) or ``"sgd"``
      (reuse the learning rate :math:`\bar\lambda`).
    reuse_steps: weight updates per measurement (the measurement included).
    approx_batches: :math:`m_a`; ``approx_batch`` must hold a multiple of it.
    measuring_step: :math:`\mu`, the measuring step: third sample point
      along the line.
    fd_step: :math:`h`, second sample point along the line.
    update_step_adaptation: :math:`\alpha`.
    max_step: :math:`s_{\max}`, cap applied *before* :math:`\alpha`.
    untrusted_updates: :math:`U`, updates before the estimates are averaged.
    avg_window: :math:`W`, trusted measurements averaged (static int).
    eps: floor of steps and learning rates, replaces a zero norm.
    norm_bounds: ``(low, high)``; a measurement whose direction norm lies
      outside is rejected and retried.
    momentum: :math:`\beta` of the direction's heavy-ball buffer. The buffer
      exists (1 params copy) unless ``momentum`` is a Python 0.
    fit: ``"reference"`` (faithful, default) or ``"exact"``.
    cap: ``"fixed"`` (the paper's cap :math:`s_{\max}`, default) or
      ``"reference"`` (the authors' code: the cap is multiplied by
      :math:`\alpha` each time it binds).
    axis_name: if set, the measured losses are averaged with
      :func:`jax.lax.pmean` over this axis.
    measure_step: deprecated name of ``measuring_step``.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.
  """
  measuring_step = _renamed_measuring_step(measuring_step, measure_step)
  _common.check_choice("mode", mode, _MODES)
  _common.check_choice("fit", fit, _FITS)
  _common.check_choice("cap", cap, _CAPS)
  _common.check_positive_int("avg_window", avg_window)
  if not isinstance(approx_batches, jax.Array):
    _common.check_positive_int("approx_batches", approx_batches)
  _common.check_count("reuse_steps", reuse_steps, lower=1)
  _common.check_count("untrusted_updates", untrusted_updates, lower=0)
  _common.check_range("measuring_step", measuring_step, lower=0.0,
                      lower_inclusive=False)
  _common.check_range("fd_step", fd_step, lower=0.0, lower_inclusive=False)
  if _common.is_concrete_number(fd_step) and _common.is_concrete_number(
      measuring_step
  ):
    if fd_step >= measuring_step:
      raise ValueError(
          f"`fd_step` ({fd_step}) must be smaller than `measuring_step` "
          f"({measuring_step})."
      )
  _common.check_range("update_step_adaptation", update_step_adaptation,
                      lower=0.0, lower_inclusive=False)
  _common.check_range("max_step", max_step, lower=0.0, lower_inclusive=False)
  _common.check_range("eps", eps, lower=0.0, lower_inclusive=False)
  _common.check_range("momentum", momentum, lower=0.0, upper=1.0,
                      upper_inclusive=False)
  if not (isinstance(norm_bounds, tuple) and len(norm_bounds) == 2):
    raise TypeError(
        f"`norm_bounds` must be a tuple (low, high); got {norm_bounds!r}."
    )
  for bound in norm_bounds:
    _common.check_number_type("norm_bounds", bound)
  if all(_common.is_concrete_number(b) for b in norm_bounds) and not (
      0 <= norm_bounds[0] < norm_bounds[1]
  ):
    raise ValueError(
        f"`norm_bounds` must satisfy 0 <= low < high; got {norm_bounds}."
    )
  _check_axis_name(axis_name)
  use_momentum = not (
      _common.is_concrete_number(momentum) and float(momentum) == 0.0
  )

  def init_fn(params: optax.Params) -> ScaleByLabpalState:
    _common.check_float_leaves(params, "scale_by_labpal", maskable=False)
    dtype = _scalar_dtype(params)
    # A fresh buffer per field, so that the state can be donated.
    zero = lambda: jnp.zeros((), dtype)
    int_zero = lambda: jnp.zeros((), jnp.int32)
    return ScaleByLabpalState(
        updates_done=jnp.full((), -1, jnp.int32),
        since_measure=int_zero(),
        pending=jnp.ones((), jnp.int32),
        have_estimate=jnp.zeros((), jnp.bool_),
        retries=int_zero(),
        labpal_step_length=zero(),
        labpal_learning_rate=zero(),
        cap_scale=jnp.ones((), dtype) if cap == "reference" else None,
        hist_step=jnp.zeros((avg_window,), dtype),
        hist_lr=jnp.zeros((avg_window,), dtype),
        hist_count=int_zero(),
        hist_index=int_zero(),
        momentum=_common.stats_zeros_like(params) if use_momentum else None,
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

  def schedule_pending(since: jax.Array, done: jax.Array) -> jax.Array:
    """Triggers (b) and (c) of spec §3.2, evaluated after an update."""
    reuse_due = since >= jnp.asarray(reuse_steps, jnp.int32) - 1
    warmup_end = done == jnp.asarray(untrusted_updates, jnp.int32) + 1
    return (reuse_due | warmup_end).astype(jnp.int32)

  def direction_of(updates, state):
    """d = β·m + u (spec §3.1) from the incoming updates u, in the
    statistics dtype."""
    updates = _tree_cast_stats(updates)
    if not use_momentum:
      return updates
    return jax.tree.map(lambda m, u: momentum * m + u, state.momentum, updates)

  def train_branch(state, norm):
    """A plain SGD / normalised SGD step with the reused estimate, §3.5.

    Returns ``(coef, moved, new_state)``: the update is ``coef * d``.
    """
    dtype = state.labpal_step_length.dtype
    if mode == "sgd":
      coef = -state.labpal_learning_rate
    else:
      coef = -state.labpal_step_length / jnp.maximum(
          norm.astype(dtype), jnp.asarray(eps, dtype)
      )
    done = optax.safe_int32_increment(state.updates_done)
    since = optax.safe_int32_increment(state.since_measure)
    new_state = state._replace(
        updates_done=done,
        since_measure=since,
        pending=schedule_pending(since, done),
        retries=jnp.zeros((), jnp.int32),
    )
    return coef, jnp.ones((), jnp.bool_), new_state

  def measure_losses(params, unit, value_fn, fn_kwargs, approx_batch, dtype):
    """Losses [M, 3] at t = 0, h, μ along -û on each mini-batch (§3.3).

    The points are in the statistics dtype (float32 for bfloat16/float16
    params), see ``_probe_point``.
    """
    points = (0.0, fd_step, measuring_step)

    loss_eps = []

    def per_batch(batch):
      kwargs = {**fn_kwargs, **batch}
      losses = [
          value_fn(_probe_point(params, unit, -jnp.asarray(t, dtype)),
                   **kwargs)
          for t in points
      ]
      loss_eps.append(_rounding_eps(*losses))
      return jnp.stack([_loss_scalar(x, dtype) for x in losses])

    if _leading_size(approx_batch) is None:
      losses = per_batch(dict(approx_batch))[None]
    else:
      losses = jax.lax.map(per_batch, dict(approx_batch))
    return _maybe_pmean(losses, axis_name), jnp.asarray(loss_eps[0], dtype)

  def measure_branch(
      grad, direction, norm, state, params, value_fn, fn_kwargs, approx_batch
  ):
    """One measurement (spec §3.3, §7.3); returns like ``train_branch``.

    ``direction`` (the incoming updates, plus momentum) sets the line;
    ``grad`` only checks that it is an ascent direction of the loss, as the
    reference's guard on the directional derivative does.
    """
    dtype = state.labpal_step_length.dtype
    fdt = _fit_dtype()
    if norm is None:  # 'sgd' mode needs ||d|| only when measuring
      norm = _common.tree_norm_f32(direction)
    norm_f = norm.astype(fdt)
    safe_norm = jnp.where(norm_f == 0, jnp.asarray(eps, fdt), norm_f)
    unit = jax.tree.map(lambda d: d / safe_norm.astype(d.dtype), direction)
    slope_dir = -_common.tree_vdot_f32(grad, direction).astype(fdt) / safe_norm
    low, high = norm_bounds
    ok_dir = (
        (slope_dir < 0)
        & jnp.isfinite(norm_f)
        & (norm_f >= low)
        & (norm_f <= high)
    )  # spec §3.3.1 guard

    losses, loss_eps = jax.lax.cond(
        ok_dir,
        lambda: measure_losses(
            params, unit, value_fn, fn_kwargs, approx_batch, fdt
        ),
        lambda: (
            jnp.zeros((max(_leading_size(approx_batch) or 1, 1), 3), fdt),
            jnp.zeros((), fdt),
        ),
    )
    # Per-batch differences, then the mean over finite batches (§7.6.3).
    valid = jnp.all(jnp.isfinite(losses), axis=1)
    diff_h = _nanmean_rows(losses[:, 1] - losses[:, 0], valid)
    diff_mu = _nanmean_rows(losses[:, 2] - losses[:, 0], valid)
    h = jnp.asarray(fd_step, fdt)
    mu = jnp.asarray(measuring_step, fdt)
    # Rounding error of A μ²: D1 enters it multiplied by μ/h.
    scale = jnp.max(jnp.where(valid[:, None], jnp.abs(losses), 0.0))
    noise = loss_eps * scale * (mu / h + 2)
    fitted = _fit_parabola(diff_h, diff_mu, h, mu, fit, noise)

    alpha = jnp.asarray(update_step_adaptation, fdt)
    floor = jnp.asarray(eps, fdt)
    step_cap = jnp.asarray(max_step, fdt)
    if cap == "reference":
      step_cap = step_cap * state.cap_scale.astype(fdt)
    raw_step = alpha * jnp.minimum(fitted.step, step_cap)  # cap before α
    raw_step = jnp.maximum(raw_step, floor)  # spec §3.3.5
    raw_lr = jnp.maximum(raw_step / jnp.maximum(safe_norm, floor), floor)
    ok_fit = ok_dir & fitted.ok & jnp.isfinite(raw_step) & jnp.isfinite(raw_lr)
    cap_scale = state.cap_scale
    if cap == "reference":
      # The authors' code caps with `step = max_step_size` and then scales
      # `step *= alpha` in place: the cap tensor itself grows by α each time
      # it binds (torch aliasing), so the j-th binding cap is s_max·α^j.
      binds = ok_fit & (fitted.step > step_cap)
      cap_scale = jnp.where(binds, cap_scale * alpha, cap_scale).astype(dtype)
    raw_step = jnp.where(ok_fit, raw_step, 0.0).astype(dtype)
    raw_lr = jnp.where(ok_fit, raw_lr, 0.0).astype(dtype)

    # Ring buffer of trusted measurements and the estimates, spec §3.3.5.
    trusted = state.updates_done > jnp.asarray(untrusted_updates, jnp.int32)
    push = ok_fit & trusted
    slot = state.hist_index
    hist_step = jnp.where(
        push, state.hist_step.at[slot].set(raw_step), state.hist_step
    )
    hist_lr = jnp.where(push, state.hist_lr.at[slot].set(raw_lr),
                        state.hist_lr)
    hist_count = jnp.where(
        push, jnp.minimum(state.hist_count + 1, avg_window), state.hist_count
    )
    hist_index = jnp.where(push, (slot + 1) % avg_window, slot)
    new_step = jnp.where(
        ok_fit,
        jnp.where(trusted, _masked_mean(hist_step, hist_count), raw_step),
        state.labpal_step_length,
    )
    new_lr = jnp.where(
        ok_fit,
        jnp.where(trusted, _masked_mean(hist_lr, hist_count), raw_lr),
        state.labpal_learning_rate,
    )
    have_estimate = state.have_estimate | ok_fit
    move = ok_dir & have_estimate  # spec §7.3, step 6
    coef = jnp.where(move, -new_step / safe_norm, 0.0)  # -s̄ û = coef d
    done = jnp.where(
        move, optax.safe_int32_increment(state.updates_done),
        state.updates_done,
    )
    since = jnp.where(move, 0, state.since_measure).astype(jnp.int32)
    retry = ~move & ((state.pending > 0) | ~have_estimate)
    pending = jnp.where(move, schedule_pending(since, done), retry)
    retries = jnp.where(move, 0, optax.safe_int32_increment(state.retries))
    status = jnp.where(
        ok_fit,
        LABPAL_STATUS_OK,
        jnp.where(move, LABPAL_STATUS_FIT_FAILED, LABPAL_STATUS_RETRY),
    ).astype(jnp.int32)
    info = LabpalInfo(
        value0=_nanmean_rows(losses[:, 0], valid).astype(dtype),
        value_h=_nanmean_rows(losses[:, 1], valid).astype(dtype),
        value_mu=_nanmean_rows(losses[:, 2], valid).astype(dtype),
        curvature=fitted.curvature.astype(dtype),
        slope=fitted.slope.astype(dtype),
        raw_step=raw_step,
        status=status,
        fit_failed=~ok_fit,
    )
    new_state = ScaleByLabpalState(
        updates_done=done,
        since_measure=since,
        pending=pending.astype(jnp.int32),
        have_estimate=have_estimate,
        retries=retries.astype(jnp.int32),
        labpal_step_length=new_step.astype(dtype),
        labpal_learning_rate=new_lr.astype(dtype),
        cap_scale=cap_scale,
        hist_step=hist_step,
        hist_lr=hist_lr,
        hist_count=hist_count.astype(jnp.int32),
        hist_index=hist_index.astype(jnp.int32),
        momentum=None,
        info=info,
    )
    return coef.astype(dtype), move, new_state

  def update_fn(
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
    _check_approx_batch(approx_batch, value_fn, approx_batches)
    fn_kwargs = _value_fn_kwargs(value_fn, extra_args, "scale_by_labpal",
                                 batched=frozenset(approx_batch))

    direction = direction_of(updates, state)
    norm = _common.tree_norm_f32(direction) if mode == "nsgd" else None
    measure = (state.pending > 0) | jnp.asarray(force_measure, jnp.bool_)
    # Both kinds of step return scalars only (the update is coef * d in
    # either), so no params-sized buffer crosses the control flow and the
    # update fuses with the caller's apply_updates; the momentum is selected
    # outside. The cheap training step always runs; a measurement replaces
    # its result in a zero- or one-trip loop, which on XLA:CPU costs nothing
    # when not taken (a lax.cond here cost ~6% of a small CNN's train step).
    scalar_state = state._replace(momentum=None)
    coef, moved, new_state = _common.run_if(
        measure,
        lambda _: measure_branch(
            grad, direction, norm, scalar_state, params, value_fn, fn_kwargs,
            approx_batch,
        ),
        train_branch(scalar_state, norm),
    )
    if use_momentum:
      new_state = new_state._replace(
          momentum=jax.tree.map(
              lambda d, m: jnp.where(moved, d, m), direction, state.momentum
          )
      )
    # A rejected (e.g. non-finite) direction does not move: 0 * NaN is NaN.
    updates = _zero_unless(moved, _scaled_like(direction, coef, params))
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def labpal(
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
  ``updates`` (the gradient, as for :func:`optax.sgd`, or its clipped or
  weight-decayed form from transformations chained before LABPAL); ``grad``,
  the gradient of the loss that ``value_fn`` measures, only checks that
  :math:`\langle g, d\rangle > 0` (the reference's guard); ``value`` is
  not used (:math:`L_0` is measured with the other two points). The line
  is probed with float32 copies of bfloat16/float16 params (``value_fn``
  receives them), whose own grid cannot resolve :math:`h`. Data keywords
  that ``value_fn`` does not take are an error, as in optax's line
  searches. ``approx_batch`` is a mapping from ``value_fn``
  argument names to arrays stacked along a leading axis of :math:`M`
  mini-batches (:math:`M` a multiple of ``approx_batches``, first entries =
  the step's own training batches); other ``value_fn`` arguments may be
  passed as plain keyword arguments and are shared by all :math:`M`
  evaluations. One jitted ``update`` serves both kinds of step: the
  measurement runs in a zero- or one-trip :func:`jax.lax.while_loop`
  (cheaper than :func:`jax.lax.cond` when not taken), so training steps
  cost nothing extra, and measuring steps cost :math:`3M` forward passes
  evaluated sequentially with :func:`jax.lax.map`. ``update`` is not
  reverse-mode differentiable. Keep the data on the device and gather inside
  ``value_fn`` from an index array in ``approx_batch`` to avoid moving
  :math:`M` batches every step. ``force_measure=True`` triggers a measurement
  (e.g. at a batch-size-schedule boundary).

  LABPAL is a complete optimizer: use it alone, at the top level (never in
  ``optax.partition``, ``optax.masked`` or ``optax.MultiSteps``; accumulate
  the :math:`k` gradients yourself). Its state exposes
  ``labpal_step_length`` (:math:`\bar s`), ``labpal_learning_rate``
  (:math:`\bar\lambda`), ``retries`` (calls in a row without a weight
  update) and ``info`` (the last measurement's losses, coefficients, raw
  step and ``status``, a :class:`LabpalStatus`).

  Args:
    mode: ``"nsgd"`` (reuse the step length, default) or ``"sgd"``.
    reuse_steps: weight updates per measurement, the measurement included.
    approx_batches: :math:`m_a`; ``approx_batch`` holds :math:`m_a k`
      mini-batches.
    measuring_step: :math:`\mu`, the measuring step (third sample point).
    fd_step: :math:`h`, second sample point.
    update_step_adaptation: :math:`\alpha`.
    max_step: :math:`s_{\max}`, applied *before* :math:`\alpha`.
    untrusted_updates: :math:`U`, updates during which estimates are not
      averaged.
    avg_window: :math:`W`, measurements averaged (static Python int).
    eps: floor of steps and learning rates; replaces a zero norm.
    norm_bounds: ``(low, high)`` accepted range of :math:`\|d\|`.
    momentum: :math:`\beta` of the direction's heavy-ball buffer (a params
      copy exists unless it is a Python 0).
    fit: ``"reference"`` or ``"exact"``.
    cap: ``"fixed"`` or ``"reference"`` (the cap grows by :math:`\alpha`
      each time it binds, as in the authors' code).
    axis_name: if set, the :math:`3M` losses are averaged with
      :func:`jax.lax.pmean` over this axis; pass ``grad`` already averaged.
    measure_step: deprecated name of ``measuring_step`` (removed in the next
      release).

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
  return scale_by_labpal(
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
