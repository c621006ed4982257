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
"""PAL: a parabolic line search on each mini-batch.

Mutschler & Zell, `Parabolic Approximation Line Search for DNNs
<https://arxiv.org/abs/1903.11991>`_, NeurIPS 2020. The maths, its cases and
the differences from the authors' code are on the docs page "PAL and LABPAL"
(docs/labpal.md). Follows optax's line-search convention (``value``,
``grad``, ``value_fn`` and data keyword arguments routed to ``value_fn`` by
name) and must be the outermost transformation.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_adaptive import _common, _parabola


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


def _move_along(
    params: optax.Params, direction: optax.Params, distance: jax.Array
) -> optax.Params:
  """``params + distance * direction`` leaf-wise, in each param's dtype."""
  return jax.tree.map(
      lambda p, d: (p + distance.astype(d.dtype) * d).astype(p.dtype),
      params,
      direction,
  )


def _pal_step(
    value: jax.Array,
    value_mu: jax.Array,
    slope: jax.Array,
    measuring_step: jax.Array,
    update_step_adaptation: jax.Array,
    max_step: jax.Array,
    loss_eps: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """PAL's step rule: (step length, curvature, case); see :func:`pal`.

  A curvature whose contribution ``a μ²`` is below the rounding error of the
  losses counts as zero (a linear loss), so rounding noise never decides
  between "step to the minimum" and "stay at μ".
  """
  mu = measuring_step
  curvature = (value_mu - value - slope * mu) / mu**2  # a of p(t)
  finite = jnp.isfinite(curvature) & jnp.isfinite(slope)
  descent = slope < 0
  noise = loss_eps * (jnp.abs(value) + jnp.abs(value_mu) + jnp.abs(slope * mu))
  convex = curvature * mu**2 > noise
  safe_curv = jnp.where(convex & finite, curvature, jnp.ones_like(curvature))
  minimum = update_step_adaptation * (-slope / (2 * safe_curv))  # α s*
  step = jnp.where(descent, jnp.where(convex, minimum, mu), 0.0)
  step = jnp.minimum(step, max_step)  # the cap applies after α
  step = jnp.where(finite, step, 0.0)  # return to θ (docs: "Failure modes")
  case = jnp.where(
      ~finite,
      PalCase.NOT_FINITE,
      jnp.where(
          ~descent,
          PalCase.NOT_DESCENT,
          jnp.where(convex, PalCase.MINIMUM, PalCase.CONCAVE),
      ),
  ).astype(jnp.int32)
  return step, curvature, case


@dataclasses.dataclass(frozen=True)
class _PalConfig:
  """The hyperparameters of :func:`scale_by_pal` (see its Args)."""

  measuring_step: Any
  update_step_adaptation: Any
  max_step: Any
  exact_directional_derivative: bool
  eps: Any
  axis_name: str | None


def _init(params: optax.Params) -> ScaleByPalState:
  _common.check_float_leaves(params, "scale_by_pal", maskable=False)
  dtype = _parabola.scalar_dtype(params)
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


def _update(
    config: _PalConfig,
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
  if config.exact_directional_derivative:
    _common.require_extra_arg(grad, "grad", "scale_by_pal")
  fn_kwargs = _parabola.value_fn_kwargs(value_fn, extra_args,
                                       "scale_by_pal")

  dtype = state.pal_learning_rate.dtype
  direction = _parabola.tree_cast_stats(updates)
  norm = _common.tree_norm_f32(direction).astype(dtype)
  norm = jnp.maximum(norm, jnp.asarray(config.eps, dtype))
  # û = d/n is never materialised: each use scales d by a scalar, so the
  # moves fuse into their consumers (one kernel fewer per leaf).
  if config.exact_directional_derivative:
    # <g, d>/n rather than <g, û>: a sibling of ||d|| (one pass over d).
    slope = (_common.tree_vdot_f32(grad, direction).astype(dtype) / norm)
  else:
    slope = -norm
  mu = jnp.asarray(config.measuring_step, dtype)
  value_mu = value_fn(_move_along(params, direction, mu / norm),
                      **fn_kwargs)
  loss_eps = _parabola.rounding_eps(value, value_mu)
  value_mu = _parabola.maybe_pmean(
      _parabola.loss_scalar(value_mu, dtype), config.axis_name)
  step, curvature, case = _pal_step(
      _parabola.loss_scalar(value, dtype),
      value_mu,
      slope,
      mu,
      jnp.asarray(config.update_step_adaptation, dtype),
      jnp.asarray(config.max_step, dtype),
      loss_eps,
  )
  # A non-finite direction is a zero step: 0 * NaN is not 0.
  moved = step > 0
  new_updates = _parabola.zero_unless(  # s û = (s / n) d
      moved, _parabola.scaled_like(direction, step / norm, params))
  new_state = ScaleByPalState(
      pal_learning_rate=jnp.where(moved, step / norm, 0.0).astype(dtype),
      pal_step_length=step,
      info=PalInfo(
          value_mu=value_mu,
          curvature=curvature,
          slope=slope,
          case=case,
          fit_failed=case != PalCase.MINIMUM,
      ),
  )
  return new_updates, new_state


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
  _parabola.check_axis_name(axis_name)

  config = _PalConfig(
      measuring_step=measuring_step,
      update_step_adaptation=update_step_adaptation,
      max_step=max_step,
      exact_directional_derivative=exact_directional_derivative,
      eps=eps,
      axis_name=axis_name,
  )
  return optax.GradientTransformationExtraArgs(
      _init, functools.partial(_update, config))


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

