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
"""AutoDrop's per-epoch detector of arXiv 2111.15317 v1 (compatibility mode).

Y. Teng, J. Wang, A. Choromanska, https://arxiv.org/abs/2111.15317 (v1,
2021), as the authors' code (github.com/yunfei-teng/AutoDrop) runs it. The
angle and the drop are shared with :mod:`optax_adaptive._autodrop`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_adaptive import _autodrop, _common


class AutoDropV1State(NamedTuple):
  """State of :func:`autodrop_v1`."""

  epoch_step: jax.Array  # shape=(), dtype=jnp.int32; in [0, steps_per_epoch)
  n_snapshots: jax.Array  # shape=(), dtype=jnp.int32; ≤ 3
  prev_snapshot: optax.Params  # params-shaped f32: x_{e-1}
  prev_displacement: optax.Updates  # params-shaped f32: s_{e-1}
  # The floating scalars below are float32, float64 for float64 buffers.
  prev_sq_norm: jax.Array  # shape=()
  weighted_sum: optax.Params  # params-shaped f32 (or ()): Σ j·x^(j)
  prev_omega: jax.Array  # shape=(); ω_{e-1}
  last_omega: jax.Array  # shape=(); degrees
  theta: jax.Array  # shape=(); θ in degrees
  enabled: jax.Array  # shape=(), dtype=jnp.bool_
  patience_count: jax.Array  # shape=(), dtype=jnp.int32
  lr_scale: jax.Array  # shape=(); λ
  n_drops: jax.Array  # shape=(), dtype=jnp.int32


@dataclasses.dataclass(frozen=True)
class _Config:
  """The arguments of :func:`autodrop_v1` (see there)."""

  steps_per_epoch: Any
  drop_factor: Any
  theta0: Any
  theta_max: Any
  patience_epochs: Any
  min_scale: Any
  average_on_drop: bool
  auto_theta: bool
  eps: Any
  state_dtype: Any
  axis_name: Hashable | None


def autodrop_v1(
    steps_per_epoch: int,
    drop_factor: jax.typing.ArrayLike = 0.2,
    theta0: jax.typing.ArrayLike = 0.01,
    theta_max: jax.typing.ArrayLike = 1.0,
    patience_epochs: int = 20,
    min_scale: jax.typing.ArrayLike = 0.0,
    average_on_drop: bool = False,
    auto_theta: bool = True,
    eps: jax.typing.ArrayLike = 1e-8,
    state_dtype: Any = None,
    axis_name: Hashable | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AutoDrop's per-epoch detector of arXiv v1 and the authors' code.

  Compatibility mode. Once per epoch, the parameters :math:`x_e` after the
  epoch's first optimizer step are snapshotted, and the angle
  :math:`\omega_e = \angle(x_e - x_{e-1}, x_{e-1} - x_{e-2})` is compared
  with the previous one:

  .. math::
    \Delta_e = \omega_e - \omega_{e-1}, \qquad
    \text{saturated} \iff -\theta < \Delta_e < \theta .

  Detection latches; a counter then runs 1, 2, ... once per epoch from the
  detection epoch on, and when it reaches :math:`E` (``patience_epochs``)

  .. math::
    \lambda \leftarrow \max(\rho\lambda, \lambda_{\min}), \qquad
    \theta \leftarrow \min(\theta/\rho, \bar\theta),

  and, with ``average_on_drop``, the parameters are replaced by the linearly
  weighted average :math:`\sum_{j=1}^{E} j\,x^{(j)} / (E(E+1)/2)` of the
  per-epoch snapshots taken (after the epoch's 2nd step) during the wait.
  The angle and the decision run with the ``params`` of the epoch's 2nd
  ``update`` call; a new scale applies from the 3rd step on. The parameter
  replacement is expressed as the 2nd step's update
  ``average - params``, so it is exact only when AutoDrop is the last link
  of the chain and its output is applied to ``params`` unchanged.

  Args:
    steps_per_epoch: Optimizer steps per epoch (int ≥ 2).
    drop_factor: Factor :math:`\rho \in (0, 1]` for the scale and θ.
    theta0: Initial two-sided threshold θ in degrees.
    theta_max: Cap :math:`\bar\theta` of θ in degrees.
    patience_epochs: :math:`E`, the epochs from detection to drop (the
      detection epoch counts as 1).
    min_scale: Floor of the scale in ``[0, 1]`` (the code's
      ``lower_lr / lr0``).
    average_on_drop: Replace the parameters by the weighted average of the
      wait's snapshots at a drop (the code's ``var_rd``; +1 params buffer).
    auto_theta: Grow θ at each drop (the code's ``auto_theta``).
    eps: :math:`\epsilon` added to the product of the norms.
    state_dtype: dtype of the params-shaped buffers; None keeps float32
      (float64 for float64 params). Scalars such as the scale are float64
      for float64 buffers, else float32.
    axis_name: Mapped axis over which params are split model-parallel (the
      dot products are ``psum``-ed over it), or None.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` that requires
    ``params`` and ignores extra keyword arguments.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from optax_adaptive import autodrop_v1
    >>> tx = optax.chain(optax.sgd(0.1, momentum=0.9),
    ...                  autodrop_v1(steps_per_epoch=4, patience_epochs=3))
    >>> params = {'w': jnp.ones(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({'w': jnp.ones(3)}, state, params)
    >>> int(optax.tree.get(state, 'n_drops'))
    0

  References:
    Teng, Wang, Choromanska, `AutoDrop: Training Deep Learning Models with
    Automatic Learning Rate Drop <https://arxiv.org/abs/2111.15317>`_, 2021
    (v1), and github.com/yunfei-teng/AutoDrop.
  """
  _common.check_count("steps_per_epoch", steps_per_epoch, lower=2)
  _common.check_count("patience_epochs", patience_epochs, lower=1)
  _common.check_range("drop_factor", drop_factor, lower=0.0, upper=1.0,
                      lower_inclusive=False)
  _common.check_range("theta0", theta0, lower=0.0)
  _common.check_range("theta_max", theta_max, lower=0.0)
  if (_common.is_concrete_number(theta0)
      and _common.is_concrete_number(theta_max) and theta0 > theta_max):
    raise ValueError(
        f"`theta0` must be <= `theta_max`; got theta0={theta0},"
        f" theta_max={theta_max}.")
  _common.check_range("min_scale", min_scale, lower=0.0, upper=1.0)
  _common.check_range("eps", eps, lower=0.0)
  _autodrop._check_state_dtype(state_dtype)
  cfg = _Config(steps_per_epoch, drop_factor, theta0, theta_max,
                  patience_epochs, min_scale, average_on_drop, auto_theta,
                  eps, state_dtype, axis_name)
  return optax.GradientTransformationExtraArgs(
      functools.partial(_init, cfg), functools.partial(_update, cfg))


def _init(cfg: _Config, params: optax.Params) -> AutoDropV1State:
  """λ = 1, θ = θ₀; ``params`` are read for shapes and dtypes only."""
  _common.check_float_leaves(params, "autodrop_v1")
  zeros = lambda: _autodrop._state_zeros_like(params, cfg.state_dtype)
  sdt = _autodrop._scalar_dtype(params, cfg.state_dtype)
  return AutoDropV1State(
      epoch_step=jnp.zeros([], jnp.int32),
      n_snapshots=jnp.zeros([], jnp.int32),
      prev_snapshot=zeros(),
      prev_displacement=zeros(),
      prev_sq_norm=jnp.zeros([], sdt),
      weighted_sum=zeros() if cfg.average_on_drop else (),
      prev_omega=jnp.zeros([], sdt),
      last_omega=jnp.zeros([], sdt),
      theta=jnp.asarray(cfg.theta0, sdt),
      enabled=jnp.zeros([], jnp.bool_),
      patience_count=jnp.zeros([], jnp.int32),
      lr_scale=jnp.ones([], sdt),
      n_drops=jnp.zeros([], jnp.int32),
  )


def _update(cfg: _Config, updates, state: AutoDropV1State, params=None,
            **extra_args):
  """``λ·u``; the epoch's check runs at its 2nd step (``epoch_step == 1``)."""
  del extra_args  # accepted as GradientTransformationExtraArgs, unused
  _common.require_params(params, "autodrop_v1")
  step = state.epoch_step
  updates = _autodrop._scale_updates(updates, state.lr_scale)  # λ so far
  check = functools.partial(_epoch_check, cfg, params)
  if cfg.average_on_drop:  # a drop rewrites this step's updates
    updates, state = _common.run_if(
        step == 1, lambda us: check(us[1], us[0]), (updates, state))
  else:
    state = _common.run_if(step == 1, lambda s: check(s, None)[1], state)
  last = step == cfg.steps_per_epoch - 1
  return updates, state._replace(
      epoch_step=jnp.where(last, 0, step + 1).astype(jnp.int32))


def _epoch_check(cfg: _Config, params, state: AutoDropV1State, updates):
  """Snapshot, angle, detector and drop, after an epoch's 2nd step."""
  snap = optax.tree.cast_like(params, state.prev_snapshot)  # x_e
  disp = optax.tree.sub(snap, state.prev_snapshot)  # s_e
  has_omega = state.n_snapshots >= 2
  has_delta = state.n_snapshots >= 3
  dot = _common.tree_vdot_f32(disp, state.prev_displacement, cfg.axis_name)
  sq_norm = _common.tree_vdot_f32(disp, disp, cfg.axis_name)
  omega = _autodrop.angular_velocity_degrees(dot, sq_norm, state.prev_sq_norm,
                                             cfg.eps)
  delta = omega - state.prev_omega  # Δ_e
  saturated = has_delta & (-state.theta < delta) & (delta < state.theta)
  enabled = state.enabled | saturated  # latches
  count = state.patience_count + enabled.astype(jnp.int32)
  drop = enabled & (count >= cfg.patience_epochs)
  new_theta = jnp.minimum(state.theta / cfg.drop_factor, cfg.theta_max)
  theta = jnp.where(drop & cfg.auto_theta, new_theta, state.theta)
  lr_scale, n_drops = _autodrop._drop(drop, state.lr_scale, state.n_drops,
                                      cfg.drop_factor, cfg.min_scale)
  weighted_sum = state.weighted_sum
  if cfg.average_on_drop:
    updates, weighted_sum = _average_on_drop(
        cfg, params, updates, weighted_sum, jnp.where(enabled, count, 0),
        drop)
  return updates, state._replace(
      n_snapshots=jnp.minimum(state.n_snapshots + 1, 3).astype(jnp.int32),
      prev_snapshot=snap,
      prev_displacement=disp,
      prev_sq_norm=sq_norm.astype(state.prev_sq_norm.dtype),
      weighted_sum=weighted_sum,
      prev_omega=jnp.where(has_omega, omega, state.prev_omega).astype(
          state.prev_omega.dtype),
      last_omega=jnp.where(has_omega, omega, state.last_omega).astype(
          state.last_omega.dtype),
      theta=theta.astype(state.theta.dtype),
      enabled=enabled & ~drop,
      patience_count=jnp.where(drop, 0, count).astype(jnp.int32),
      lr_scale=lr_scale,
      n_drops=n_drops,
  )


def _average_on_drop(cfg: _Config, params, updates, weighted_sum,
                        weight, drop):
  """Adds ``j·x^(j)``; at a drop, updates that land on the weighted average.

  Returns:
    The updates (``average - params`` where ``drop``) and the weighted sum
    (zero after a drop).
  """
  weighted_sum = jax.tree.map(
      lambda w, x, u: w + weight.astype(w.dtype) * (
          x.astype(w.dtype) + u.astype(w.dtype)),
      weighted_sum, params, updates)  # snapshot after the 2nd step
  total = cfg.patience_epochs * (cfg.patience_epochs + 1) / 2
  updates = jax.tree.map(
      lambda u, w, x: jnp.where(drop, w / total - x.astype(w.dtype),
                                u).astype(u.dtype),
      updates, weighted_sum, params)  # params + updates = average
  weighted_sum = optax.tree.where(
      drop, optax.tree.zeros_like(weighted_sum), weighted_sum)
  return updates, weighted_sum
