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

Section numbers (``spec §x``) refer to the project's specification
``spec/autodrop.md``.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_adaptive import _common

_SIGMA_FLOOR = 1e-12  # spec §1.2 step 3: guards a constant buffer (std = 0).


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
  return jax.tree.map(lambda x: jnp.zeros_like(x, dtype=state_dtype), params)


def _scalar_dtype(params: optax.Params, state_dtype: Any) -> jnp.dtype:
  """The dtype of the scalar state: float64 for float64 buffers, else f32.

  |s|², the angles, the smoothed angle, θ and the scale λ. A float32 |s|²
  of float64 buffers would overflow for |s| > 1.8e19 and round the angle's
  cosine to float32; a float32 λ would round ρ = 0.2 to 0.20000000298.
  """
  if state_dtype is None:
    return _common.widest_float_dtype(params)
  return jnp.promote_types(state_dtype, jnp.float32)


def _tree_sum_products(
    a: optax.Updates, b: optax.Updates, axis_name: Hashable | None
) -> jax.Array:
  """``<a, b>`` over all leaves (≥ float32), summed over ``axis_name``.

  A multiply-reduce per leaf that XLA fuses with the computation of ``a``.
  """
  parts = [
      jnp.sum(x * y, dtype=_common.stats_dtype(x.dtype))
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  ]
  total = sum(parts[1:], parts[0]) if parts else jnp.zeros([], jnp.float32)
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)  # spec §5 (model-parallel shards)
  return total


def _displacement_dots(
    s: optax.Updates, s_prev: optax.Updates, axis_name: Hashable | None
) -> tuple[jax.Array, jax.Array]:
  """``<s, s_prev>`` and ``|s|²``, summed over ``axis_name`` if given."""
  return (_tree_sum_products(s, s_prev, axis_name),
          _tree_sum_products(s, s, axis_name))


def angular_velocity_degrees(
    dot: jax.Array, sq_norm_a: jax.Array, sq_norm_b: jax.Array, eps: Any
) -> jax.Array:
  """Angle in degrees with ``eps`` added to the product of the norms.

  Unlike a plain clipped arccos (0° for a zero vector),
  the paper's ε puts the angle with a zero displacement at 90° (spec §1.1):

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
  """Gaussian-weighted mean of a full buffer of angles (spec §1.2 step 3).

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
  return jax.tree.map(lambda u: (u * lr_scale).astype(u.dtype), updates)


# -------------------------------------------------------- autodrop (UAI 24)


class AutoDropState(NamedTuple):
  """State of :func:`autodrop`."""

  window_step: jax.Array  # shape=(), dtype=jnp.int32; in [0, window_size)
  n_means: jax.Array  # shape=(), dtype=jnp.int32; window means seen, ≤ 2
  mean_offset: optax.Updates  # params-shaped f32 (or ()): x_last - y_i
  prev_mean: optax.Params  # params-shaped f32: y_{i-1}
  prev_displacement: optax.Updates  # params-shaped f32: s_{i-1}
  # The floating scalars below are float32, float64 for float64 buffers.
  prev_sq_norm: jax.Array  # shape=()
  omega_buffer: jax.Array  # shape=(buffer_size,)
  buffer_len: jax.Array  # shape=(), dtype=jnp.int32
  smoothed_omega: jax.Array  # shape=(); last C
  has_smoothed: jax.Array  # shape=(), dtype=jnp.bool_
  last_omega: jax.Array  # shape=(); degrees
  lr_scale: jax.Array  # shape=(); λ
  n_drops: jax.Array  # shape=(), dtype=jnp.int32


class _Detector(NamedTuple):
  """The scalars of :class:`AutoDropState` that change at window ends."""

  n_means: jax.Array
  prev_sq_norm: jax.Array
  omega_buffer: jax.Array
  buffer_len: jax.Array
  smoothed_omega: jax.Array
  has_smoothed: jax.Array
  last_omega: jax.Array
  lr_scale: jax.Array
  n_drops: jax.Array


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
  parameters stops growing. With window size :math:`k`, window :math:`i`'s
  mean and the angular velocity are (spec §1.1-1.2)

  .. math::
    y_i = \frac{1}{k}\sum_{t=ik}^{(i+1)k-1} x_t, \qquad
    s_i = y_i - y_{i-1}, \qquad
    \omega_i = \tfrac{180}{\pi}\arccos\frac{\langle s_i, s_{i-1}\rangle}
      {\|s_i\|\,\|s_{i-1}\| + \epsilon}.

  Each :math:`\omega_i` enters a FIFO buffer :math:`B`. Once it holds
  :math:`m` values, its Gaussian-smoothed mean :math:`C_i` (value-domain
  kernel with :math:`\sigma = \min(\mathrm{std}\,B, m/2)`) is compared with
  the previous one; the oldest value then leaves the buffer. On saturation

  .. math::
    C_i - C_{i-1} < \tau \;\Rightarrow\;
    \lambda \leftarrow \max(\rho\lambda, \lambda_{\min}),\quad B \leftarrow
    \emptyset,

  so consecutive drops are at least ``buffer_size`` windows apart. ``x_t``
  are the ``params`` passed to ``update``; the scale decided at a window's
  last step applies from the next step on. The window mean is accumulated
  from the transformation's own output updates (weights
  :math:`(p+1)/k` for the step at window position :math:`p`) and anchored to
  the real parameters at each window end, so AutoDrop must be the **last**
  link of the chain whose output is applied to ``params`` unchanged.

  Args:
    window_size: Window length :math:`k` in optimizer steps (the paper uses
      64 for CIFAR at 391 steps/epoch and 640 for ImageNet).
    drop_factor: Factor :math:`\rho \in (0, 1]` applied at a drop.
    buffer_size: Buffer width :math:`m` (static Python int; pass it in
      ``static_args`` of :func:`optax.inject_hyperparams`).
    threshold_deg: Saturation threshold :math:`\tau` in degrees.
    min_scale: Floor :math:`\lambda_{\min} = \alpha_{\min}/\alpha_0` of the
      scale, in ``[0, 1]``.
    two_sided: Test ``|C_i - C_{i-1}| < τ`` instead of the paper's signed
      test.
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
      split model-parallel; the three dot products are ``psum``-ed over it.
      Leave None for data-parallel training with reduced gradients.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`. ``update`` requires
    ``params``; extra keyword arguments (e.g. ``value``) are ignored. The
    scale, last angle, smoothed angle and drop count are in the state as
    ``lr_scale``, ``last_omega``, ``smoothed_omega`` and ``n_drops``.

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

  .. note::
    For optimizers whose state depends on the learning rate (Prodigy,
    schedule-free, mechanize, lr-scaled velocity) scaling the final update is
    not the same as lowering their learning rate. Inside
    :class:`optax.MultiSteps`, put AutoDrop inside the wrapped chain. Donate
    the optimizer state to the jitted step: the window-end work updates the
    buffers in place (zero- or one-trip while loops, so ``update`` cannot be
    differentiated in reverse mode).
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

  def init_fn(params):
    _common.check_float_leaves(params, "autodrop")
    zeros = lambda: _state_zeros_like(params, state_dtype)
    sdt = _scalar_dtype(params, state_dtype)
    return AutoDropState(
        window_step=jnp.zeros([], jnp.int32),
        n_means=jnp.zeros([], jnp.int32),
        mean_offset=zeros() if average_window else (),
        prev_mean=zeros(),
        prev_displacement=zeros(),
        prev_sq_norm=jnp.zeros([], sdt),
        omega_buffer=jnp.zeros([buffer_size], sdt),
        buffer_len=jnp.zeros([], jnp.int32),
        smoothed_omega=jnp.zeros([], sdt),
        has_smoothed=jnp.zeros([], jnp.bool_),
        last_omega=jnp.zeros([], sdt),
        lr_scale=jnp.ones([], sdt),
        n_drops=jnp.zeros([], jnp.int32),
    )

  def centred_mean(params, mean_offset, prev_mean):
    """``s_i = y_i - y_{i-1}`` with ``y_i = x_last - offset`` (Def. 3.3)."""
    if not average_window:  # endpoint snapshots
      return jax.tree.map(lambda x, y: x.astype(y.dtype) - y, params,
                          prev_mean)
    return jax.tree.map(lambda x, o, y: (x.astype(y.dtype) - o) - y,
                        params, mean_offset, prev_mean)

  def detect(det: _Detector, dot, sq_norm) -> _Detector:
    """Angle, smoothing and the drop test at a window end (spec §1.2)."""
    valid = det.n_means >= 2  # s_{i-1} is a mean-to-mean displacement
    omega = angular_velocity_degrees(dot, sq_norm, det.prev_sq_norm, eps)
    buffer = jnp.where(valid, _push(det.omega_buffer, omega), det.omega_buffer)
    buffer_len = det.buffer_len + valid.astype(jnp.int32)
    smoothed = valid & (buffer_len >= buffer_size)  # ≥ m (spec §1.5)
    c = smooth_buffer(buffer, kernel=kernel, center=center)
    change = c - det.smoothed_omega
    saturated = (jnp.abs(change) if two_sided else change) < threshold_deg
    drop = smoothed & det.has_smoothed & saturated  # Alg. 1 test
    lr_scale = jnp.where(
        drop,
        jnp.maximum(drop_factor * det.lr_scale, min_scale),
        det.lr_scale,
    ).astype(det.lr_scale.dtype)
    buffer_len = jnp.where(
        drop, 0, jnp.where(smoothed, buffer_size - 1, buffer_len)
    ).astype(jnp.int32)  # pop the oldest; empty at a drop
    has_smoothed = det.has_smoothed | smoothed
    if reset_c_after_drop:
      has_smoothed &= ~drop
    return _Detector(
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
        n_drops=jnp.where(drop, optax.safe_int32_increment(det.n_drops),
                          det.n_drops),
    )

  def update_fn(updates, state, params=None, **extra_args):
    # Complies with the signature of GradientTransformationExtraArgs but
    # ignores the extra_args.
    del extra_args
    _common.require_params(params, "autodrop")
    step = state.window_step
    is_end = step == window_size - 1
    updates = _scale_updates(updates, state.lr_scale)  # pre-decision λ
    if average_window:
      # x_last - y_i = Σ_p (p + 1)/k · u_p over the window's first k-1 steps;
      # the offset restarts at the window's first step.
      # (int32 / int is float32 even under x64: divide in the scalar dtype.)
      weight = jnp.where(
          is_end, 0.0,
          (step + 1).astype(state.lr_scale.dtype) / window_size)
      restart = step == 0
      mean_offset = jax.tree.map(
          lambda o, u: jnp.where(restart, jnp.zeros_like(o), o)
          + weight.astype(o.dtype) * u.astype(o.dtype),
          state.mean_offset, updates)
    else:
      mean_offset = ()
    # Window end, in two in-place passes over the buffers (a lax.cond would
    # copy them on every step): the first only reads them, for <s_i, s_{i-1}>;
    # the second writes s_i and y_i in place, then takes |s_i|² and decides.
    # Depending on the first's result orders the two, so XLA needs no
    # params-sized copies.
    dot = _common.run_if(
        is_end,
        lambda _: _tree_sum_products(
            centred_mean(params, mean_offset, state.prev_mean),
            state.prev_displacement, axis_name),
        jnp.zeros([], _common.widest_float_dtype(state.prev_mean)))

    def advance(carry):
      det, (prev_mean, _) = carry
      disp = centred_mean(params, mean_offset, prev_mean)  # s_i
      sq_norm = _tree_sum_products(disp, disp, axis_name)
      mean = jax.tree.map(jnp.add, prev_mean, disp)  # y_i
      return detect(det, dot, sq_norm), (mean, disp)

    det = _Detector(*(getattr(state, f) for f in _Detector._fields))
    det, (prev_mean, prev_disp) = _common.run_if(
        is_end, advance, (det, (state.prev_mean, state.prev_displacement)))
    new_state = state._replace(
        window_step=jnp.where(is_end, 0, step + 1).astype(jnp.int32),
        mean_offset=mean_offset,
        prev_mean=prev_mean,
        prev_displacement=prev_disp,
        **det._asdict(),
    )
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ------------------------------------------------------ autodrop_v1 (2021)


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

  Compatibility mode (spec §1.3). Once per epoch, the parameters
  :math:`x_e` after the epoch's first optimizer step are snapshotted, and the
  angle :math:`\omega_e = \angle(x_e - x_{e-1}, x_{e-1} - x_{e-2})` is
  compared with the previous one:

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
  _check_state_dtype(state_dtype)

  def init_fn(params):
    _common.check_float_leaves(params, "autodrop_v1")
    zeros = lambda: _state_zeros_like(params, state_dtype)
    sdt = _scalar_dtype(params, state_dtype)
    return AutoDropV1State(
        epoch_step=jnp.zeros([], jnp.int32),
        n_snapshots=jnp.zeros([], jnp.int32),
        prev_snapshot=zeros(),
        prev_displacement=zeros(),
        prev_sq_norm=jnp.zeros([], sdt),
        weighted_sum=zeros() if average_on_drop else (),
        prev_omega=jnp.zeros([], sdt),
        last_omega=jnp.zeros([], sdt),
        theta=jnp.asarray(theta0, sdt),
        enabled=jnp.zeros([], jnp.bool_),
        patience_count=jnp.zeros([], jnp.int32),
        lr_scale=jnp.ones([], sdt),
        n_drops=jnp.zeros([], jnp.int32),
    )

  def epoch_check(state: AutoDropV1State, params, updates):
    """Snapshot, angle, detector, drop (spec §1.3), at an epoch's 2nd step."""
    snap = jax.tree.map(lambda x, y: x.astype(y.dtype), params,
                        state.prev_snapshot)  # x_e
    disp = jax.tree.map(jnp.subtract, snap, state.prev_snapshot)  # s_e
    has_omega = state.n_snapshots >= 2
    has_delta = state.n_snapshots >= 3
    dot, sq_norm = _displacement_dots(disp, state.prev_displacement,
                                      axis_name)
    omega = angular_velocity_degrees(dot, sq_norm, state.prev_sq_norm, eps)
    delta = omega - state.prev_omega
    saturated = has_delta & (-state.theta < delta) & (delta < state.theta)
    enabled = state.enabled | saturated  # latches
    count = state.patience_count + enabled.astype(jnp.int32)
    drop = enabled & (count >= patience_epochs)
    new_theta = jnp.minimum(state.theta / drop_factor, theta_max)
    theta = jnp.where(drop & auto_theta, new_theta, state.theta)
    lr_scale = jnp.where(
        drop, jnp.maximum(drop_factor * state.lr_scale, min_scale),
        state.lr_scale)
    weighted_sum = state.weighted_sum
    if average_on_drop:
      weight = jnp.where(enabled, count, 0)
      weighted_sum = jax.tree.map(
          lambda w, x, u: w + weight.astype(w.dtype) * (
              x.astype(w.dtype) + u.astype(w.dtype)),
          weighted_sum, params, updates)  # snapshot after the 2nd step
      total = patience_epochs * (patience_epochs + 1) / 2
      updates = jax.tree.map(
          lambda u, w, x: jnp.where(drop, w / total - x.astype(w.dtype),
                                    u).astype(u.dtype),
          updates, weighted_sum, params)  # params + updates = average
      weighted_sum = jax.tree.map(
          lambda w: jnp.where(drop, jnp.zeros_like(w), w), weighted_sum)
    new_state = state._replace(
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
        lr_scale=lr_scale.astype(state.lr_scale.dtype),
        n_drops=jnp.where(drop, optax.safe_int32_increment(state.n_drops),
                          state.n_drops),
    )
    return updates, new_state

  def update_fn(updates, state, params=None, **extra_args):
    # Complies with the signature of GradientTransformationExtraArgs but
    # ignores the extra_args.
    del extra_args
    _common.require_params(params, "autodrop_v1")
    step = state.epoch_step
    updates = _scale_updates(updates, state.lr_scale)  # pre-decision λ
    if average_on_drop:  # a drop rewrites this step's updates
      updates, state = _common.run_if(
          step == 1, lambda us: epoch_check(us[1], params, us[0]),
          (updates, state))
    else:
      state = _common.run_if(
          step == 1, lambda s: epoch_check(s, params, None)[1], state)
    last = step == steps_per_epoch - 1
    state = state._replace(
        epoch_step=jnp.where(last, 0, step + 1).astype(jnp.int32))
    return updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
