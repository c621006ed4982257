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
"""One LABPAL measurement: probe the line, fit, decide, average.

The measuring step of :func:`optax_adaptive.labpal` (Mutschler, Laube & Zell
2021, arXiv:2108.13880; docs/labpal.md, "LABPAL"), its record
(:class:`LabpalInfo`, :class:`LabpalStatus`) and the schedule of
measurements. Functions of the frozen ``_LabpalConfig`` and the state of
``_labpal``; the training step and ``update`` are there.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_adaptive import _common, _parabola

if TYPE_CHECKING:
  from optax_adaptive._labpal import ScaleByLabpalState, _LabpalConfig


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


# ------------------------------------------------------------ schedule


def schedule_pending(
    config: _LabpalConfig, since: jax.Array, done: jax.Array
) -> jax.Array:
  """1 if the next update measures: ``reuse_steps`` updates since the last
  measurement, or the end of the ``untrusted_updates`` warm-up."""
  reuse_due = since >= jnp.asarray(config.reuse_steps, jnp.int32) - 1
  warmup_end = done == jnp.asarray(config.untrusted_updates, jnp.int32) + 1
  return (reuse_due | warmup_end).astype(jnp.int32)


# ------------------------------------------------------------ measurement


def _masked_mean(hist: jax.Array, count: jax.Array) -> jax.Array:
  valid = jnp.arange(hist.shape[0]) < count
  total = jnp.sum(jnp.where(valid, hist, 0.0))
  return total / jnp.maximum(count, 1).astype(hist.dtype)


class _Line(NamedTuple):
  unit: optax.Params  # û = d / n
  norm: jax.Array  # n (zero replaced by eps), fit dtype
  ok: jax.Array  # the direction passes the guard


def _line(
    config: _LabpalConfig,
    grad: optax.Updates,
    direction: optax.Updates,
    norm: jax.Array | None,
) -> _Line:
  """û and the guard: ⟨g, d⟩ > 0 and ‖d‖ finite within ``norm_bounds``.

  ``grad`` only checks that ``direction`` is an ascent direction of the
  loss, as the reference's guard on the directional derivative does.
  """
  fdt = _parabola.fit_dtype()
  if norm is None:  # 'sgd' mode needs ||d|| only when measuring
    norm = _common.tree_norm_f32(direction)
  norm_f = norm.astype(fdt)
  safe_norm = jnp.where(norm_f == 0, jnp.asarray(config.eps, fdt), norm_f)
  unit = jax.tree.map(lambda d: d / safe_norm.astype(d.dtype), direction)
  slope_dir = -_common.tree_vdot_f32(grad, direction).astype(fdt) / safe_norm
  low, high = config.norm_bounds
  ok = (
      (slope_dir < 0)
      & jnp.isfinite(norm_f)
      & (norm_f >= low)
      & (norm_f <= high)
  )
  return _Line(unit, safe_norm, ok)


def _raw_estimates(
    config: _LabpalConfig,
    cap_scale: jax.Array | None,
    fitted: _parabola.Fit,
    line: _Line,
    dtype: jnp.dtype,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
  """s_raw = max(α min(s_fit, s_max), ε), λ_raw = max(s_raw / n, ε).

  Returns ``(raw_step, raw_lr, ok_fit, cap_scale)``; both are 0 where the
  fit failed. The cap applies before α (docs/labpal.md, "LABPAL").
  """
  fdt = fitted.step.dtype
  alpha = jnp.asarray(config.update_step_adaptation, fdt)
  floor = jnp.asarray(config.eps, fdt)
  step_cap = jnp.asarray(config.max_step, fdt)
  if config.cap == "reference":
    step_cap = step_cap * cap_scale.astype(fdt)
  raw_step = alpha * jnp.minimum(fitted.step, step_cap)
  raw_step = jnp.maximum(raw_step, floor)
  raw_lr = jnp.maximum(raw_step / jnp.maximum(line.norm, floor), floor)
  ok_fit = (line.ok & fitted.ok & jnp.isfinite(raw_step)
            & jnp.isfinite(raw_lr))
  if config.cap == "reference":
    # The authors' code caps with `step = max_step_size` and then scales
    # `step *= alpha` in place: the cap tensor itself grows by α each time
    # it binds (torch aliasing), so the j-th binding cap is s_max·α^j.
    binds = ok_fit & (fitted.step > step_cap)
    cap_scale = jnp.where(binds, cap_scale * alpha, cap_scale).astype(dtype)
  raw_step = jnp.where(ok_fit, raw_step, 0.0).astype(dtype)
  raw_lr = jnp.where(ok_fit, raw_lr, 0.0).astype(dtype)
  return raw_step, raw_lr, ok_fit, cap_scale


def _averaged(
    config: _LabpalConfig,
    state: ScaleByLabpalState,
    raw_step: jax.Array,
    raw_lr: jax.Array,
    ok_fit: jax.Array,
) -> ScaleByLabpalState:
  """The estimates s̄, λ̄ after a fit, and the ring buffer behind them.

  During the warm-up (``untrusted_updates``) the estimates are the raw
  values and are not recorded; afterwards they are the means of the last
  ``avg_window`` successful measurements. A failed fit keeps them.
  """
  trusted = state.updates_done > jnp.asarray(config.untrusted_updates,
                                             jnp.int32)
  push = ok_fit & trusted
  slot = state.hist_index
  hist_step = jnp.where(
      push, state.hist_step.at[slot].set(raw_step), state.hist_step
  )
  hist_lr = jnp.where(push, state.hist_lr.at[slot].set(raw_lr),
                      state.hist_lr)
  hist_count = jnp.where(
      push, jnp.minimum(state.hist_count + 1, config.avg_window),
      state.hist_count
  )
  hist_index = jnp.where(push, (slot + 1) % config.avg_window, slot)
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
  return state._replace(
      labpal_step_length=new_step,
      labpal_learning_rate=new_lr,
      hist_step=hist_step,
      hist_lr=hist_lr,
      hist_count=hist_count,
      hist_index=hist_index,
  )


def measure_step(
    config: _LabpalConfig,
    grad: optax.Updates,
    direction: optax.Updates,
    norm: jax.Array | None,
    state: ScaleByLabpalState,
    params: optax.Params,
    value_fn: Callable[..., Any],
    fn_kwargs: dict[str, Any],
    approx_batch: Mapping[str, Any],
) -> tuple[jax.Array, jax.Array, ScaleByLabpalState]:
  """One measurement; returns like ``_labpal._train_step``.

  Probes the line θ - t û at t = 0, h, μ, fits the parabola, updates the
  estimates and moves θ - s̄ û; without an estimate (or with a rejected
  direction) it does not move and measures again at the next call.
  """
  dtype = state.labpal_step_length.dtype
  line = _line(config, grad, direction, norm)
  fdt = line.norm.dtype
  points = (0.0, config.fd_step, config.measuring_step)

  def measure():
    losses, loss_eps = _parabola.line_losses(
        params, line.unit, points, value_fn, fn_kwargs, approx_batch, fdt)
    return _parabola.maybe_pmean(losses, config.axis_name), loss_eps

  num_batches = max(_parabola.leading_size(approx_batch) or 1, 1)
  losses, loss_eps = jax.lax.cond(
      line.ok,
      measure,
      lambda: (jnp.zeros((num_batches, 3), fdt), jnp.zeros((), fdt)),
  )
  fitted, valid = _parabola.fit_mean_losses(
      losses, loss_eps, config.fd_step, config.measuring_step, config.fit)
  raw_step, raw_lr, ok_fit, cap_scale = _raw_estimates(
      config, state.cap_scale, fitted, line, dtype)
  averaged = _averaged(config, state, raw_step, raw_lr, ok_fit)
  have_estimate = state.have_estimate | ok_fit
  move = line.ok & have_estimate
  coef = jnp.where(move, -averaged.labpal_step_length / line.norm, 0.0)
  done = jnp.where(
      move, optax.safe_int32_increment(state.updates_done),
      state.updates_done,
  )
  since = jnp.where(move, 0, state.since_measure).astype(jnp.int32)
  retry = ~move & ((state.pending > 0) | ~have_estimate)
  pending = jnp.where(move, schedule_pending(config, since, done), retry)
  retries = jnp.where(move, 0, optax.safe_int32_increment(state.retries))
  status = jnp.where(
      ok_fit,
      LabpalStatus.OK,
      jnp.where(move, LabpalStatus.FIT_FAILED, LabpalStatus.RETRY),
  ).astype(jnp.int32)
  info = LabpalInfo(
      value0=_parabola.nanmean_rows(losses[:, 0], valid).astype(dtype),
      value_h=_parabola.nanmean_rows(losses[:, 1], valid).astype(dtype),
      value_mu=_parabola.nanmean_rows(losses[:, 2], valid).astype(dtype),
      curvature=fitted.curvature.astype(dtype),
      slope=fitted.slope.astype(dtype),
      raw_step=raw_step,
      status=status,
      fit_failed=~ok_fit,
  )
  new_state = averaged._replace(
      updates_done=done,
      since_measure=since,
      pending=pending.astype(jnp.int32),
      have_estimate=have_estimate,
      retries=retries.astype(jnp.int32),
      labpal_step_length=averaged.labpal_step_length.astype(dtype),
      labpal_learning_rate=averaged.labpal_learning_rate.astype(dtype),
      cap_scale=cap_scale,
      hist_count=averaged.hist_count.astype(jnp.int32),
      hist_index=averaged.hist_index.astype(jnp.int32),
      momentum=None,
      info=info,
  )
  return coef.astype(dtype), move, new_state
