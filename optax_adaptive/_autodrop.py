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
"""AutoDrop: automatic learning-rate drops from the trajectory's angle.

J. Wang, Y. Teng, A. Choromanska, *AutoDrop: Training Deep Learning Models
with Automatic Learning Rate Drop*, UAI 2024 (PMLR 244:3603-3629), and its
earlier version https://arxiv.org/abs/2111.15317 (v1, with the authors' code).

:func:`autodrop` follows Algorithm 1 and Definition 3.3 of the UAI paper.
How the places where the paper is ambiguous are read, and why the window end
runs in loops, is told in docs/autodrop.md. The angle and the drop are shared
with v1's detector, :mod:`optax_adaptive._autodrop_v1`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_adaptive import _common

_SIGMA_FLOOR = 1e-12  # the σ of a constant buffer (std = 0) must not be 0.


# ----------------------------------------------------------------- helpers


def _check_state_dtype(state_dtype: Any) -> None:
  if state_dtype is None:
    return
  try:
    dtype = jnp.dtype(state_dtype)
  except TypeError as e:
    raise TypeError(
        f"`state_dtype` must be None or a floating dtype; got {state_dtype!r}."
    ) from e
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f"`state_dtype` must be a floating dtype; got {dtype}."
    )


def _state_zeros_like(params: optax.Params, state_dtype: Any) -> optax.Params:
  """Param-shaped zeros in the statistics dtype, keeping the sharding."""
  if state_dtype is None:
    return _common.stats_zeros_like(params)
  return optax.tree.zeros_like(params, dtype=state_dtype)


def _scalar_dtype(params: optax.Params, state_dtype: Any) -> jnp.dtype:
  """The dtype of the scalar state: float64 for float64 buffers, else f32.

  |s|², the angles, the smoothed angle, θ and the scale λ. A float32 |s|²
  of float64 buffers would overflow for |s| > 1.8e19 and round the angle's
  cosine to float32; a float32 λ would round ρ = 0.2 to 0.20000000298.
  """
  if state_dtype is None:
    return _common.widest_float_dtype(params)
  return jnp.promote_types(state_dtype, jnp.float32)


def angular_velocity_degrees(
    dot: jax.Array, sq_norm_a: jax.Array, sq_norm_b: jax.Array, eps: Any
) -> jax.Array:
  """Angle in degrees with ``eps`` added to the product of the norms.

  The angle of the paper's Definition 1.1. Unlike a plain clipped arccos
  (0° for a zero vector), its ε puts the angle with a zero displacement at
  90°:

  .. math::
    \\angle(a, b) = \\tfrac{180}{\\pi} \\arccos \\mathrm{clip}\\Big(
      \\frac{\\langle a, b\\rangle}{\\|a\\| \\|b\\| + \\epsilon},
      -1, 1\\Big)
  """
  denom = jnp.sqrt(sq_norm_a) * jnp.sqrt(sq_norm_b) + eps
  cosine = jnp.clip(_common.safe_divide(dot, denom, 0.0), -1.0, 1.0)
  return jnp.degrees(jnp.arccos(cosine))


def smooth_buffer(
    buffer: jax.Array, *, kernel: str = "range", center: str = "middle"
) -> jax.Array:
  """Gaussian-weighted mean ``C`` of a full buffer of angles (UAI Sec. 4).

  ``σ = max(min(std(B), m/2), 1e-12)`` with ``ddof=0``; the weights are
  ``exp(-(B_j - B_c)² / 2σ²)`` (``kernel='range'``) or
  ``exp(-(j - c)² / 2σ²)`` (``kernel='time'``), centred on the middle
  (``c = ⌊m/2⌋``) or the newest element (``c = m - 1``).
  """
  m = buffer.shape[0]
  c = m // 2 if center == "middle" else m - 1
  sigma = jnp.minimum(jnp.std(buffer), m / 2)
  sigma = jnp.maximum(sigma, _SIGMA_FLOOR)
  if kernel == "range":
    distance = buffer - buffer[c]
  else:
    distance = jnp.arange(m, dtype=buffer.dtype) - c
  weights = jnp.exp(-(distance**2) / (2 * sigma**2))
  return jnp.sum(weights * buffer) / jnp.sum(weights)  # centre weight is 1


def _push(buffer: jax.Array, value: jax.Array) -> jax.Array:
  """Shift register: drops the oldest entry, appends ``value`` as newest."""
  return jnp.concatenate([buffer[1:], value[None].astype(buffer.dtype)])


def _scale_updates(updates: optax.Updates, lr_scale: jax.Array):
  """``λ · u`` in the dtype of ``u``."""
  return optax.tree.cast_like(optax.tree.scale(lr_scale, updates), updates)


def _drop(drop, lr_scale, n_drops, drop_factor, min_scale):
  """``λ ← max(ρλ, λ_min)`` and one more drop, where ``drop`` (both versions).

  Returns:
    The new ``(lr_scale, n_drops)``; the count saturates instead of wrapping.
  """
  scaled = jnp.where(drop, jnp.maximum(drop_factor * lr_scale, min_scale),
                     lr_scale)
  return (scaled.astype(lr_scale.dtype),
          jnp.where(drop, optax.safe_int32_increment(n_drops), n_drops))


# -------------------------------------------------------- autodrop (UAI 24)


class AutoDropDetector(NamedTuple):
  """The scalars of Algorithm 1 in :class:`AutoDropState`.

  They change only at window ends. The floating ones are float32, float64
  for float64 buffers.
  """

  n_means: jax.Array  # shape=(), dtype=jnp.int32; window means seen, ≤ 2
  prev_sq_norm: jax.Array  # shape=(); |s_{i-1}|²
  omega_buffer: jax.Array  # shape=(buffer_size,); B, the newest angle last
  buffer_len: jax.Array  # shape=(), dtype=jnp.int32; angles in B
  smoothed_omega: jax.Array  # shape=(); the last C, in degrees
  has_smoothed: jax.Array  # shape=(), dtype=jnp.bool_; a C to compare with
  last_omega: jax.Array  # shape=(); the last ω_i, in degrees
  lr_scale: jax.Array  # shape=(); λ
  n_drops: jax.Array  # shape=(), dtype=jnp.int32


class AutoDropState(NamedTuple):
  """State of :func:`autodrop`.

  ``lr_scale``, ``last_omega``, ``smoothed_omega`` and ``n_drops`` read the
  fields of the same name of ``detector``.
  """

  window_step: jax.Array  # shape=(), dtype=jnp.int32; in [0, window_size)
  mean_offset: optax.Updates  # params-shaped f32 (or ()): x_last - y_i
  prev_mean: optax.Params  # params-shaped f32: y_{i-1}
  prev_displacement: optax.Updates  # params-shaped f32: s_{i-1}
  detector: AutoDropDetector  # the scalars of Algorithm 1

  @property
  def lr_scale(self) -> jax.Array:
    """λ, the scale applied to the updates."""
    return self.detector.lr_scale

  @property
  def last_omega(self) -> jax.Array:
    """The last angular velocity ω_i in degrees (0 before the first)."""
    return self.detector.last_omega

  @property
  def smoothed_omega(self) -> jax.Array:
    """The last smoothed angle C_i in degrees."""
    return self.detector.smoothed_omega

  @property
  def n_drops(self) -> jax.Array:
    """The number of drops decided so far."""
    return self.detector.n_drops


@dataclasses.dataclass(frozen=True)
class _Config:
  """The arguments of :func:`autodrop` (see there)."""

  window_size: Any
  drop_factor: Any
  buffer_size: int
  threshold_deg: Any
  min_scale: Any
  two_sided: bool
  kernel: str
  center: str
  reset_c_after_drop: bool
  average_window: bool
  eps: Any
  state_dtype: Any
  axis_name: Hashable | None


def autodrop(
    window_size: int,
    drop_factor: jax.typing.ArrayLike = 0.95,
    buffer_size: int = 10,
    threshold_deg: jax.typing.ArrayLike = 0.1,
    min_scale: jax.typing.ArrayLike = 0.0,
    two_sided: bool = False,
    kernel: str = "range",
    center: str = "middle",
    reset_c_after_drop: bool = False,
    average_window: bool = True,
    eps: jax.typing.ArrayLike = 1e-8,
    state_dtype: Any = None,
    axis_name: Hashable | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Drops the learning rate when the trajectory's angular velocity saturates.

  AutoDrop (UAI 2024, Algorithm 1) multiplies the final updates of the base
  optimizer by a scale :math:`\lambda` (initially 1) and lowers it when the
  angle between consecutive displacements of the windowed mean of the
  parameters stops growing. With window size :math:`k` (Definition 3.3)

  .. math::
    y_i = \frac{1}{k}\sum_{t=ik}^{(i+1)k-1} x_t, \qquad
    s_i = y_i - y_{i-1}, \qquad
    \omega_i = \tfrac{180}{\pi}\arccos\frac{\langle s_i, s_{i-1}\rangle}
      {\|s_i\|\,\|s_{i-1}\| + \epsilon}.

  Each :math:`\omega_i` enters a FIFO buffer :math:`B`. Once it holds
  :math:`m` values, their Gaussian-smoothed mean :math:`C_i` is compared
  with the previous one and the oldest value leaves the buffer; then

  .. math::
    C_i - C_{i-1} < \tau \;\Rightarrow\;
    \lambda \leftarrow \max(\rho\lambda, \lambda_{\min}),\quad B \leftarrow
    \emptyset .

  ``x_t`` are the ``params`` passed to ``update``; a scale decided at a
  window's last step applies from the next step on. The window mean is
  accumulated from this transformation's own output updates, so AutoDrop
  must be the **last** link of the chain, its output applied to ``params``
  unchanged. Details and failure modes: :doc:`/autodrop`.

  Args:
    window_size: Window length :math:`k` in optimizer steps (the paper uses
      64 for CIFAR at 391 steps/epoch and 640 for ImageNet).
    drop_factor: Factor :math:`\rho \in (0, 1]` applied at a drop.
    buffer_size: Buffer width :math:`m` (static Python int; pass it in
      ``static_args`` of :func:`optax.inject_hyperparams`).
    threshold_deg: Saturation threshold :math:`\tau` in degrees.
    min_scale: Floor :math:`\lambda_{\min} = \alpha_{\min}/\alpha_0` of the
      scale, in ``[0, 1]``.
    two_sided: Test ``|C_i - C_{i-1}| < τ`` instead of the signed test.
    kernel: ``'range'`` (weights by distance in value, default) or
      ``'time'`` (by distance in buffer position).
    center: Kernel centre, ``'middle'`` (default) or ``'newest'`` element.
    reset_c_after_drop: Forget :math:`C_{i-1}` at a drop, so the first
      smoothed value after a drop is not tested (default: keep it, as
      Algorithm 1 reads literally).
    average_window: Use window means (default). If False, use the endpoint
      parameters of each window instead (2 params-sized buffers, not 3).
    eps: :math:`\epsilon` added to the product of the norms.
    state_dtype: dtype of the params-shaped buffers; None keeps float32
      (float64 for float64 params). Scalars such as the scale are float64
      for float64 buffers, else float32.
    axis_name: Mapped axis (``pmap``/``shard_map``) over which the params are
      split model-parallel; the dot products are ``psum``-ed over it.
      Leave None for data-parallel training with reduced gradients.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`. ``update`` requires
    ``params`` and ignores extra keyword arguments (e.g. ``value``). The
    scale, last angle, smoothed angle and drop count are in the state as
    ``lr_scale``, ``last_omega``, ``smoothed_omega`` and ``n_drops``.
    ``update`` runs the window end in loops, so it cannot be differentiated
    in reverse mode; donate the state to the jitted step.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from optax_adaptive import autodrop
    >>> tx = optax.chain(optax.sgd(0.1, momentum=0.9), autodrop(window_size=4))
    >>> params = {'w': jnp.ones(3)}
    >>> state = tx.init(params)
    >>> for _ in range(8):
    ...   grads = {'w': 2 * params['w']}
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> float(optax.tree.get(state, 'lr_scale'))
    1.0

  References:
    Wang, Teng, Choromanska, `AutoDrop: Training Deep Learning Models with
    Automatic Learning Rate Drop <https://proceedings.mlr.press/v244/wang24e.html>`_,
    UAI 2024; earlier version: Teng, Wang, Choromanska,
    `arXiv:2111.15317 <https://arxiv.org/abs/2111.15317>`_, 2021.
  """
  _common.check_count("window_size", window_size, lower=1)
  _common.check_positive_int("buffer_size", buffer_size)
  _common.check_range("drop_factor", drop_factor, lower=0.0, upper=1.0,
                      lower_inclusive=False)
  _common.check_range("threshold_deg", threshold_deg, lower=0.0)
  _common.check_range("min_scale", min_scale, lower=0.0, upper=1.0)
  _common.check_range("eps", eps, lower=0.0)
  _common.check_choice("kernel", kernel, ("range", "time"))
  _common.check_choice("center", center, ("middle", "newest"))
  _check_state_dtype(state_dtype)
  cfg = _Config(window_size, drop_factor, buffer_size, threshold_deg,
                min_scale, two_sided, kernel, center, reset_c_after_drop,
                average_window, eps, state_dtype, axis_name)
  return optax.GradientTransformationExtraArgs(
      functools.partial(_init, cfg), functools.partial(_update, cfg))


def _init(cfg: _Config, params: optax.Params) -> AutoDropState:
  """λ = 1, empty buffers; ``params`` are read for shapes and dtypes only."""
  _common.check_float_leaves(params, "autodrop")
  zeros = lambda: _state_zeros_like(params, cfg.state_dtype)
  sdt = _scalar_dtype(params, cfg.state_dtype)
  return AutoDropState(
      window_step=jnp.zeros([], jnp.int32),
      mean_offset=zeros() if cfg.average_window else (),
      prev_mean=zeros(),
      prev_displacement=zeros(),
      detector=AutoDropDetector(
          n_means=jnp.zeros([], jnp.int32),
          prev_sq_norm=jnp.zeros([], sdt),
          omega_buffer=jnp.zeros([cfg.buffer_size], sdt),
          buffer_len=jnp.zeros([], jnp.int32),
          smoothed_omega=jnp.zeros([], sdt),
          has_smoothed=jnp.zeros([], jnp.bool_),
          last_omega=jnp.zeros([], sdt),
          lr_scale=jnp.ones([], sdt),
          n_drops=jnp.zeros([], jnp.int32),
      ),
  )


def _update(cfg: _Config, updates, state: AutoDropState, params=None,
            **extra_args):
  """``λ·u``, the window mean's offset and, at a window end, Algorithm 1."""
  del extra_args  # accepted as GradientTransformationExtraArgs, unused
  _common.require_params(params, "autodrop")
  step, det = state.window_step, state.detector
  is_end = step == cfg.window_size - 1
  updates = _scale_updates(updates, det.lr_scale)  # pre-decision λ
  mean_offset = ()
  if cfg.average_window:
    mean_offset = _mean_offset(cfg, state.mean_offset, updates, step, is_end,
                               det.lr_scale.dtype)
  # Window end, in two in-place passes over the buffers (a lax.cond would
  # copy them on every step): the first only reads them, for <s_i, s_{i-1}>;
  # the second writes s_i and y_i in place, then takes |s_i|² and decides.
  # Depending on the first's result orders the two, so XLA needs no
  # params-sized copies.
  dot = _common.run_if(
      is_end,
      lambda _: _common.tree_vdot_f32(
          _displacement(cfg, params, mean_offset, state.prev_mean),
          state.prev_displacement, cfg.axis_name),
      jnp.zeros([], _common.widest_float_dtype(state.prev_mean)))

  def advance(carry):
    detector, prev_mean, _ = carry
    disp = _displacement(cfg, params, mean_offset, prev_mean)  # s_i
    sq_norm = _common.tree_vdot_f32(disp, disp, cfg.axis_name)
    mean = jax.tree.map(jnp.add, prev_mean, disp)  # y_i = y_{i-1} + s_i
    return _detect(cfg, detector, dot, sq_norm), mean, disp

  det, prev_mean, prev_disp = _common.run_if(
      is_end, advance, (det, state.prev_mean, state.prev_displacement))
  return updates, AutoDropState(
      window_step=jnp.where(is_end, 0, step + 1).astype(jnp.int32),
      mean_offset=mean_offset,
      prev_mean=prev_mean,
      prev_displacement=prev_disp,
      detector=det,
  )


def _mean_offset(cfg: _Config, offset, updates, step, is_end, dtype):
  """``x_last - y_i = Σ_p (p + 1)/k · u_p`` over the window's first k-1 steps.

  The offset restarts at the window's first step.
  """
  # (int32 / int is float32 even under x64: divide in the scalar dtype.)
  weight = jnp.where(is_end, 0.0,
                     (step + 1).astype(dtype) / cfg.window_size)
  restart = step == 0
  return jax.tree.map(
      lambda o, u: jnp.where(restart, jnp.zeros_like(o), o)
      + weight.astype(o.dtype) * u.astype(o.dtype),
      offset, updates)


def _displacement(cfg: _Config, params, mean_offset, prev_mean):
  """``s_i = y_i - y_{i-1}`` with ``y_i = x_last - (x_last - y_i)``."""
  if not cfg.average_window:  # endpoint snapshots: y_i = x_last
    return jax.tree.map(lambda x, y: x.astype(y.dtype) - y, params,
                        prev_mean)
  return jax.tree.map(lambda x, o, y: (x.astype(y.dtype) - o) - y,
                      params, mean_offset, prev_mean)


def _detect(cfg: _Config, det: AutoDropDetector, dot, sq_norm):
  """Algorithm 1 at a window end: ω_i, the buffer, C_i and the drop test."""
  valid = det.n_means >= 2  # s_{i-1} is a mean-to-mean displacement
  omega = angular_velocity_degrees(dot, sq_norm, det.prev_sq_norm, cfg.eps)
  buffer = jnp.where(valid, _push(det.omega_buffer, omega), det.omega_buffer)
  buffer_len = det.buffer_len + valid.astype(jnp.int32)
  smoothed = valid & (buffer_len >= cfg.buffer_size)  # len(B) ≥ m
  c = smooth_buffer(buffer, kernel=cfg.kernel, center=cfg.center)
  change = c - det.smoothed_omega  # C_i - C_{i-1}
  saturated = (jnp.abs(change) if cfg.two_sided else change) < (
      cfg.threshold_deg)
  drop = smoothed & det.has_smoothed & saturated
  lr_scale, n_drops = _drop(drop, det.lr_scale, det.n_drops,
                            cfg.drop_factor, cfg.min_scale)
  buffer_len = jnp.where(
      drop, 0, jnp.where(smoothed, cfg.buffer_size - 1, buffer_len)
  ).astype(jnp.int32)  # pop the oldest; B ← ∅ at a drop
  has_smoothed = det.has_smoothed | smoothed
  if cfg.reset_c_after_drop:
    has_smoothed &= ~drop
  return AutoDropDetector(
      n_means=jnp.minimum(det.n_means + 1, 2).astype(jnp.int32),
      prev_sq_norm=sq_norm.astype(det.prev_sq_norm.dtype),
      omega_buffer=buffer,
      buffer_len=buffer_len,
      smoothed_omega=jnp.where(smoothed, c, det.smoothed_omega).astype(
          det.smoothed_omega.dtype),
      has_smoothed=has_smoothed,
      last_omega=jnp.where(valid, omega, det.last_omega).astype(
          det.last_omega.dtype),
      lr_scale=lr_scale,
      n_drops=n_drops,
  )

