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
"""CProp: adaptive learning-rate scaling from past gradient conformity.

Preechakul & Kijsirikul, `CProp: Adaptive Learning Rate Scaling from Past
Gradient Conformity <https://arxiv.org/abs/1912.11493>`_, 2019. The formulas
(those of the reference implementation) and their numerical guards are in
docs/cprop.md, "Algorithm"; how the update suits XLA, in its "Overhead".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_adaptive import _common

CDFS = ("normal", "bft", "bfo", "logistic")


class CPropState(NamedTuple):
  """State of :func:`cprop`."""

  count: jax.typing.ArrayLike  # shape=(), dtype=jnp.int32
  m: optax.Updates  # EMA of raw gradients; float32, or float64 for f64 params
  v: optax.Updates  # EMA of squared raw gradients; same dtype as ``m``
  inner_state: optax.OptState  # the state of ``inner``
  # shape=(), float32 (float64 if a param is): the mean of the scale s over
  # all parameter entries after the last update (1 before the first); None
  # with track_mean_scale=False
  mean_scale: jax.typing.ArrayLike | None


class CPropAdamState(NamedTuple):
  """State of :func:`cprop_adam` (Adam and CProp fused)."""

  count: jax.typing.ArrayLike  # shape=(), dtype=jnp.int32
  mu: optax.Updates  # Adam's first moment (decay b1), stats dtype
  nu: optax.Updates  # Adam's second moment (decay b2), stats dtype
  m: optax.Updates  # CProp's first moment (decay beta), stats dtype
  v: optax.Updates | None  # CProp's second moment; None when it is ``nu``
  # shape=(), float32 (float64 if a param is): the mean of the scale s over
  # all parameter entries after the last update (1 before the first); None
  # with track_mean_scale=False
  mean_scale: jax.typing.ArrayLike | None


def _check_cprop_hyperparams(beta: Any, c: Any, eps: Any, eps_name: str,
                             cdf: Any) -> None:
  _common.check_range("beta", beta, lower=0.0, upper=1.0,
                      upper_inclusive=False)
  _common.check_range("c", c, lower=0.0)
  _common.check_range(eps_name, eps, lower=0.0)
  _common.check_choice("cdf", cdf, CDFS)


# ------------------------------------------------------- per-step scalars


class _Ema(NamedTuple):
  """The per-step scalars of one EMA, in the statistics dtype."""

  decay: jax.Array
  one_minus_decay: jax.Array
  inv_bias_correction: jax.Array  # 1 / b_t, b_t = 1 - decay^t


def _ema_scalars(decay: Any, count: jax.Array, dtype: jnp.dtype) -> _Ema:
  # The decay is cast to the statistics dtype (never to bfloat16, where
  # 0.999 == 1) and every power of it comes from that one value.
  decay = jnp.asarray(decay).astype(dtype)
  one = jnp.ones((), dtype)
  return _Ema(decay, one - decay, one / (one - decay**count))


def _ema(moment: jax.Array, value: jax.Array, e: _Ema) -> jax.Array:
  """decay·moment + (1 - decay)·value, in optax's operand order."""
  return e.one_minus_decay * value + e.decay * moment


def _update_moment(values: Any, moments: Any, e: dict[Any, _Ema],
                   order: int) -> Any:
  """``optax.tree.update_moment`` with ``e`` of each moment's dtype."""
  return jax.tree.map(
      lambda g, t: _ema(t, g if order == 1 else g * g, e[t.dtype]), values,
      moments)


class _Constants(NamedTuple):
  """CProp's scalars of one step in one dtype (literals too, see _scale_sum).

  The first three fields are those of :class:`_Ema` (decay beta).
  """

  decay: jax.Array
  one_minus_decay: jax.Array
  inv_bias_correction: jax.Array
  inv_dof: jax.Array  # 1 / (max(n_t - 1, 0) + eps), 0 while n_t - 1 == 0
  eps: jax.Array
  c: jax.Array
  zero: jax.Array
  one: jax.Array
  cdf_a: jax.Array  # 2|P - 1/2| = F(|z| (cdf_a z² + cdf_b)), F = erf or tanh
  cdf_b: jax.Array


# (cdf_a, cdf_b) per CDF (docs/cprop.md, table of `cdf`): bft is
# tanh((0.07056 |z|³ + 1.5976 |z|) / 2).
_CDF_COEFFICIENTS = {
    "normal": (0.0, 1 / math.sqrt(2)),  # erf(|z| / √2)
    "bft": (0.07056 / 2, 1.5976 / 2),
    "bfo": (0.0, 1.702 / 2),
    "logistic": (0.0, math.pi / (2 * math.sqrt(3))),
}


def _constants(count: jax.Array, beta: Any, c: Any, eps: Any, cdf: str,
               dtype: jnp.dtype) -> _Constants:
  """The scalars of step ``count`` >= 1, with the guards of docs/cprop.md.

  n_t - 1 comes from the same beta as b_t, so it is exactly 0 at t = 1,
  where σ̂² is taken as 0: s_1 = min(1, c) exactly ("Step 1").
  """
  ema = _ema_scalars(beta, count, dtype)
  beta, one = ema.decay, jnp.ones((), dtype)
  # n_t - 1 = β (1 - β^{t-1}) / (1 - β) = Σ_{k=1}^{t-1} β^k
  n_minus_1 = beta * (one - beta ** (count - 1)) / ema.one_minus_decay
  eps = jnp.asarray(eps).astype(dtype)
  dof = jnp.maximum(n_minus_1, 0) + eps
  has_spread = (count > 1) & (n_minus_1 > 0)
  inv_dof = jnp.where(has_spread, one / jnp.where(has_spread, dof, one), 0)
  # se >= ε > 0; the floor only matters for eps == 0, where it turns the 0/0
  # of an all-zero gradient into z = 0 (s = 0) instead of NaN.
  se_eps = jnp.maximum(eps, jnp.finfo(dtype).tiny)
  cdf_a, cdf_b = (jnp.asarray(x, dtype) for x in _CDF_COEFFICIENTS[cdf])
  return _Constants(
      *ema, inv_dof=inv_dof, eps=se_eps, c=jnp.asarray(c).astype(dtype),
      zero=jnp.zeros((), dtype), one=one, cdf_a=cdf_a, cdf_b=cdf_b)


def _per_dtype(tree: Any, fn: Callable[[Any], Any]) -> dict[Any, Any]:
  """``{dtype: fn(dtype)}`` for the dtypes of ``tree``'s leaves."""
  dtypes = dict.fromkeys(x.dtype for x in jax.tree.leaves(tree))
  return {dtype: fn(dtype) for dtype in dtypes}


def _cast(x: Any, like: jax.Array) -> jax.Array:
  return jnp.asarray(x).astype(like.dtype)


# ------------------------------------------------------------ the scale s


def _conformity(m: jax.Array, v: jax.Array, k: _Constants,
                cdf: str) -> jax.Array:
  """2|P - 1/2| from the already updated EMAs m, v, evaluated at |z|.

  |z| = |m̂| · (1/se): XLA:CPU would not fuse a division whose result is
  used twice (|z| is, in the cubic of ``bft``).
  """
  m_hat = m * k.inv_bias_correction
  v_hat = v * k.inv_bias_correction
  # σ̂² = max(v̂ - m̂², 0) as a select, so that inf - inf (gradients beyond
  # sqrt(float32 max) ~ 1.8e19) gives σ̂² = 0 instead of NaN.
  spread = v_hat - m_hat * m_hat
  variance = jnp.where(spread > k.zero, spread, k.zero)
  inv_se = k.one / (jnp.sqrt(variance * k.inv_dof) + k.eps)  # 1 / se
  abs_z = jnp.abs(m_hat) * inv_se
  if cdf == "bft":  # (0.07056 |z|³ + 1.5976 |z|) / 2; tanh(inf) = 1
    arg = abs_z * (k.cdf_a * (abs_z * abs_z) + k.cdf_b)
  else:
    arg = abs_z * k.cdf_b
  return jax.lax.erf(arg) if cdf == "normal" else _tanh_of_nonnegative(arg)


# Eigen's rational approximation of tanh on [0, _TANH_CLAMP], the one that
# XLA:CPU emits for float32 tanh: x P(x²) / Q(x²), coefficients highest
# power first. Its relative error is below 4e-7 on [0, inf).
_TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13,
           -8.60467152213735e-11, 5.12229709037114e-08,
           1.48572235717979e-05, 6.37261928875436e-04,
           4.89352455891786e-03)
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04,
           2.26843463243900e-03, 4.89352518554385e-03)
_TANH_CLAMP = 7.99881172180175781  # tanh rounds to 1.0 from here on


def _polynomial(coefficients: tuple[float, ...], x: jax.Array) -> jax.Array:
  """Σ c_i x^(n-i) by Estrin's scheme (coefficients highest power first).

  Its chain of dependent multiply-adds is log2(n) deep instead of Horner's
  n - 1: the CPU update loop is bound by that chain.
  """
  terms = [jnp.asarray(c, x.dtype) for c in reversed(coefficients)]
  power = x
  while len(terms) > 1:
    pairs = [terms[i:i + 2] for i in range(0, len(terms), 2)]
    terms = [p[0] + p[1] * power if len(p) == 2 else p[0] for p in pairs]
    power = power * power
  return jnp.broadcast_to(terms[0], x.shape)


def _tanh_of_nonnegative(x: jax.Array) -> jax.Array:
  """tanh(x) for x >= 0 (NaN stays NaN); float64 uses ``jnp.tanh``.

  A general tanh's sign, tiny-argument and saturation branches are not
  needed at |z|-based arguments; dropping them makes the CPU update faster
  (docs/results.md, "CProp on XLA's loops").
  """
  if x.dtype != jnp.float32:
    return jnp.tanh(x)
  saturated = x > _TANH_CLAMP  # False for NaN, which stays NaN
  x = jnp.where(saturated, _TANH_CLAMP, x)
  x2 = x * x
  # x times the ratio, not the ratio of x P: x P would flush to zero
  # for x below ~2e-36, losing tanh(x) = x.
  rational = x * (_polynomial(_TANH_P, x2) / _polynomial(_TANH_Q, x2))
  # Exactly 1 when saturated also without fused multiply-adds (op by op).
  return jnp.where(saturated, 1.0, rational)


def _scale(conformity: jax.Array, k: _Constants) -> jax.Array:
  """s = min(1, c · 2|P - 1/2|) as a select, so that NaN stays NaN."""
  scaled = k.c * conformity
  return jnp.where(scaled > k.one, k.one, scaled)


# ---------------------------------------------------------- the mean scale


def _as_rows(x: jax.Array) -> jax.Array:
  """``x`` with at least 2 axes, for a row reduction (a free reshape).

  A 1-D leaf is split into rows unless it is explicitly sharded (reshaping
  sharded axes can be a ``ShardingTypeError``).
  """
  if x.ndim >= 2:
    return x
  if x.ndim == 1 and not _common.explicitly_sharded(x):
    width = next((w for w in (1024, 512, 256, 128) if x.size % w == 0), None)
    if width is not None:
      return x.reshape(x.size // width, width)
  return x.reshape(1, 1) if x.ndim == 0 else x[None]


def _scale_sum(conformity: jax.Array, d: jax.Array, m_prev: jax.Array,
               v_prev: jax.Array, k: _Constants, unit: jax.Array,
               cdf: str) -> jax.Array:
  """Σ s over one leaf (statistics dtype), in the form each backend fuses.

  XLA:CPU sums the conformity that the update materialises (recomputing
  the CDF in a reduction is several times slower there); elsewhere s is
  recomputed from the step's inputs (``d``, the EMAs before it) as row
  sums, which XLA:GPU fuses with the update into one kernel (measurements:
  docs/results.md). The constants are multiplied by ``unit``, a runtime
  True, so that XLA does not share them with the update: on CPU a shared
  scalar broadcast is materialised at full size.
  """

  def unshared(k):
    return jax.tree.map(lambda x: x * unit.astype(x.dtype), k)

  def materialised_sum(conformity, d, m_prev, v_prev):  # XLA:CPU
    del d, m_prev, v_prev
    k1 = unshared(k)
    # Constant first: XLA:CPU's YNNPACK reduction fuses a minimum (not a
    # select), and its minimum returns the second operand, here the NaN.
    return jnp.sum(jnp.minimum(k1.one, k1.c * conformity))

  def recomputed_sum(conformity, d, m_prev, v_prev):
    del conformity
    k1 = unshared(k)
    d, m_prev, v_prev = (_as_rows(x) for x in (d, m_prev, v_prev))
    m, v = _ema(m_prev, d, k1), _ema(v_prev, d * d, k1)
    s = _scale(_conformity(m, v, k1, cdf), k1)
    return jnp.sum(jnp.sum(s, axis=-1, dtype=k1.one.dtype))

  if d.size == 0:
    return jnp.zeros((), k.one.dtype)
  return jax.lax.platform_dependent(
      conformity, d, m_prev, v_prev, cpu=materialised_sum,
      default=recomputed_sum)


def _mean_scale(conformity: Any, d: Any, m_prev: Any, v_prev: Any,
                k: dict[Any, _Constants], count: jax.Array, cdf: str,
                axis_name: Hashable | None, dtype: jnp.dtype) -> jax.Array:
  """Element-weighted mean of s over all leaves, in ``dtype``.

  With ``axis_name`` the sums and sizes of every shard along that mapped
  axis are added up first, so that model-parallel shards agree on the mean.
  """
  unit = count > 0  # a runtime True, see _scale_sum
  sums = jax.tree.leaves(jax.tree.map(
      lambda x, *args: _scale_sum(x, *args, k[x.dtype], unit, cdf),
      conformity, d, m_prev, v_prev))
  size = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(conformity))
  total = (sum(sums) if sums else jnp.zeros((), dtype)).astype(dtype)
  if axis_name is not None:
    total, size = jax.lax.psum((total, jnp.asarray(size, dtype)), axis_name)
  elif size == 0:
    return jnp.ones((), dtype)
  return jnp.where(size > 0, total / jnp.maximum(size, 1), 1).astype(dtype)


def _adam_step(mu: jax.Array, nu: jax.Array, e1: _Ema, e2: _Ema,
               eps: jax.Array) -> jax.Array:
  """Adam's bias-corrected step from the updated moments (before -lr)."""
  nu_hat = nu * e2.inv_bias_correction
  return (mu * e1.inv_bias_correction) / (jnp.sqrt(nu_hat) + eps)


def _initial_mean_scale(params: Any, track_mean_scale: bool) -> Any:
  if not track_mean_scale:
    return None
  return jnp.ones([], _common.widest_float_dtype(params))


# ------------------------------------------------------------- factories


def cprop(
    inner: optax.GradientTransformation,
    beta: jax.typing.ArrayLike = 0.999,
    c: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 1e-8,
    cdf: str = "bft",
    track_mean_scale: bool = True,
    axis_name: Hashable | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales the updates of ``inner`` by the conformity of past gradients.

  CProp keeps exponential moving averages of the raw gradients :math:`g_t`
  and of their squares, turns them into a z-test of "the mean gradient is
  zero" per coordinate, and multiplies the inner transformation's final update
  by a scale :math:`s_t \in [0, \min(1, c)]` that is close to 1 where past
  gradients agree in sign and close to 0 where they do not:

  .. math::

    m_t &= \beta m_{t-1} + (1 - \beta) g_t, \quad
    v_t = \beta v_{t-1} + (1 - \beta) g_t^2, \quad
    b_t = 1 - \beta^t \\
    \hat m_t &= m_t / b_t, \quad \hat v_t = v_t / b_t, \quad
    \hat\sigma_t^2 = \max(\hat v_t - \hat m_t^2, 0), \quad
    n_t - 1 = \beta (1 - \beta^{t-1}) / (1 - \beta) \\
    se_t &= \sqrt{\hat\sigma_t^2 / (n_t - 1 + \epsilon)} + \epsilon, \quad
    z_t = \hat m_t / se_t \\
    s_t &= \min\bigl(1,\; c \, |2 F(z_t) - 1|\bigr), \quad
    u_t = s_t \odot \mathrm{inner}(g_t)

  where :math:`F` is the normal CDF or an approximation (``cdf``), and
  :math:`\hat\sigma_1^2 := 0`, so that :math:`s_1 = \min(1, c)` for every
  non-zero gradient. The scale multiplies the *output* of ``inner``: its
  state (e.g. a momentum buffer) accumulates unscaled quantities, as in the
  reference implementation. Statistics are float32 for bfloat16/float16
  params and in the params' dtype otherwise. ``state.mean_scale`` is the
  element-weighted mean of :math:`s_t` over all parameters (plotted in the
  paper; 1 before the first update). Details: docs/cprop.md.

  Args:
    inner: the transformation whose updates are scaled, e.g.
      ``optax.sgd(0.1, momentum=0.9)`` or ``optax.adam(1e-3)``. Extra keyword
      arguments of ``update`` are forwarded to it.
    beta: decay of the gradient EMAs ("gradient horizon"), in [0, 1). Larger
      values (0.9997, 0.9999) suit longer training.
    c: overconfidence coefficient, >= 0. Larger ``c`` (3, 5) pushes the scale
      towards 1; with ``c < 1`` the scale never exceeds ``c``.
    eps: added to the Bessel divisor and to the standard error, >= 0.
    cdf: ``"bft"`` (default, Bowling et al.'s two-term logistic approximation
      of the normal CDF), ``"normal"`` (exact, via ``erf``), ``"bfo"``
      (one-term) or ``"logistic"``.
    axis_name: mapped axis (``pmap``/``shard_map``) over which the params
      are sharded model-parallel: ``mean_scale`` then averages over every
      shard. Without it each shard's ``mean_scale`` is the mean over its own
      part of the params (the update itself is per entry and needs no axis).
    track_mean_scale: keep ``state.mean_scale`` up to date (a reduction over
      all parameters every step). ``False`` sets the field to None and saves
      that reduction (its cost per backend: docs/results.md).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` with state
    :class:`CPropState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from optax_adaptive import cprop
    >>> tx = cprop(optax.sgd(0.1, momentum=0.9))
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.array([0.5, 0.5])}
    >>> updates, state = tx.update(grads, state, params)
    >>> print(updates["w"], state.mean_scale)
    [-0.05 -0.05] 1.0

  References:
    Preechakul & Kijsirikul, `CProp: Adaptive Learning Rate Scaling from Past
    Gradient Conformity <https://arxiv.org/abs/1912.11493>`_, 2019.

  .. note::
    Wrap the optimizer instead of chaining CProp before or after it
    (docs/cprop.md, "Placement").
  """
  if not (callable(getattr(inner, "init", None))
          and callable(getattr(inner, "update", None))):
    raise TypeError(
        "`inner` must be an optax transformation such as"
        f" `optax.sgd(0.1)` (not the factory itself); got {inner!r}.")
  _check_cprop_hyperparams(beta, c, eps, "eps", cdf)
  inner_update = _common.inner_update_fn(inner)

  def init_fn(params):
    _common.check_float_leaves(params, "cprop")
    return CPropState(
        count=jnp.zeros([], jnp.int32),
        m=_common.stats_zeros_like(params),
        v=_common.stats_zeros_like(params),
        inner_state=inner.init(params),
        mean_scale=_initial_mean_scale(params, track_mean_scale),
    )

  def update_fn(updates, state, params=None, **extra_args):
    inner_updates, inner_state = inner_update(
        updates, state.inner_state, params, **extra_args)
    count = optax.safe_int32_increment(state.count)
    k = _per_dtype(state.m, lambda dtype: _constants(
        count, beta, c, eps, cdf, dtype))
    g = jax.tree.map(lambda g, m: g.astype(m.dtype), updates, state.m)
    m, v = _update_moment(g, state.m, k, 1), _update_moment(g, state.v, k, 2)
    conformity = jax.tree.map(
        lambda m, v: _conformity(m, v, k[m.dtype], cdf), m, v)
    new_updates = jax.tree.map(
        lambda u, x: (u.astype(x.dtype) * _scale(x, k[x.dtype])).astype(
            u.dtype), inner_updates, conformity)
    mean_scale = None
    if track_mean_scale:
      mean_scale = _mean_scale(conformity, g, state.m, state.v, k, count, cdf,
                               axis_name, state.mean_scale.dtype)
    return new_updates, CPropState(count, m, v, inner_state, mean_scale)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def cprop_sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: jax.typing.ArrayLike = 0.0,
    nesterov: bool = False,
    weight_decay: jax.typing.ArrayLike = 0.0,
    *,
    beta: jax.typing.ArrayLike = 0.999,
    c: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 1e-8,
    cdf: str = "bft",
    track_mean_scale: bool = True,
    axis_name: Hashable | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SGD (with optional momentum and L2 decay) scaled by CProp.

  The reference CPropSGD, exactly ``cprop(optax.chain(
  optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate,
  momentum, nesterov)), beta, c, eps, cdf)``:

  .. math::

    b_t = \mu b_{t-1} + g_t + \lambda \theta_t, \quad
    \theta_{t+1} = \theta_t - \eta \, s_t \odot b_t

  (Nesterov: :math:`g_t + \lambda \theta_t + \mu b_t` instead of
  :math:`b_t`), where :math:`s_t` is the scale of :func:`cprop` from the
  raw gradient :math:`g_t`, before weight decay. A concrete ``momentum == 0``
  allocates no momentum buffer; a traced one (e.g. from
  :func:`optax.inject_hyperparams`, unless ``static_args=("momentum",)``)
  keeps one, so the state structure never depends on a traced value.

  Args:
    learning_rate: a fixed learning rate or a schedule of the step count.
    momentum: heavy-ball momentum μ (dampening is 0, as in the reference).
    nesterov: use Nesterov momentum.
    weight_decay: L2 coefficient λ, added to the gradient inside SGD; the
      CProp statistics do not see it.
    beta: CProp's EMA decay, see :func:`cprop`.
    c: CProp's overconfidence coefficient, see :func:`cprop`.
    eps: CProp's epsilon, see :func:`cprop`.
    cdf: CProp's CDF, see :func:`cprop`.
    track_mean_scale: keep ``state.mean_scale``, see :func:`cprop`.
    axis_name: model-parallel axis of ``mean_scale``, see :func:`cprop`.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` with state
    :class:`CPropState`.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from optax_adaptive import cprop_sgd
    >>> f = lambda x: jnp.sum((x - 3.0) ** 2)
    >>> tx = cprop_sgd(0.1, momentum=0.5)
    >>> x = jnp.zeros(2)
    >>> state = tx.init(x)
    >>> for _ in range(50):
    ...   updates, state = tx.update(jax.grad(f)(x), state, x)
    ...   x = optax.apply_updates(x, updates)
    >>> print(jnp.round(x, 2))
    [3. 3.]

  References:
    Preechakul & Kijsirikul, `CProp: Adaptive Learning Rate Scaling from Past
    Gradient Conformity <https://arxiv.org/abs/1912.11493>`_, 2019.
  """
  _common.check_range("learning_rate", learning_rate, lower=0.0)
  _common.check_range("weight_decay", weight_decay, lower=0.0)
  _common.check_range("momentum", momentum, lower=0.0)
  no_momentum = _common.is_concrete_number(momentum) and momentum == 0
  inner = optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.sgd(learning_rate, momentum=None if no_momentum else momentum,
                nesterov=nesterov),
  )
  return cprop(inner, beta=beta, c=c, eps=eps, cdf=cdf,
               track_mean_scale=track_mean_scale, axis_name=axis_name)



def cprop_adam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
    *,
    beta: jax.typing.ArrayLike | None = None,
    c: jax.typing.ArrayLike = 1.0,
    cprop_eps: jax.typing.ArrayLike = 1e-8,
    cdf: str = "bft",
    track_mean_scale: bool = True,
    axis_name: Hashable | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam scaled by CProp, fused so that both share the second moment.

  The reference CPropAdam (L2-style weight decay, seen by Adam and CProp):

  .. math::

    d_t &= g_t + \lambda \theta_t, \quad
    \mu_t = b_1 \mu_{t-1} + (1 - b_1) d_t, \quad
    \nu_t = b_2 \nu_{t-1} + (1 - b_2) d_t^2 \\
    u_t &= -\eta_t \, s_t \odot
      \frac{\mu_t / (1 - b_1^t)}{\sqrt{\nu_t / (1 - b_2^t)} + \epsilon}

  where :math:`s_t` is the scale of :func:`cprop` computed from
  :math:`d_t`. With ``beta=None`` (the default) CProp's decay is ``b2`` and
  its second moment *is* :math:`\nu_t`: 3 slots per parameter (μ, ν,
  CProp's m) instead of the 4 of ``cprop(optax.adam(...))``. An explicit
  ``beta`` gives CProp its own second moment, and the update matches
  ``optax.chain(optax.add_decayed_weights(weight_decay),
  cprop(optax.adam(learning_rate, b1, b2, eps), beta, c, cprop_eps, cdf))``
  to float rounding. The layout depends only on whether ``beta`` is given,
  so :func:`optax.inject_hyperparams` keeps it.

  Args:
    learning_rate: a fixed learning rate or a schedule of the step count.
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: Adam's epsilon (added to the root of the second moment).
    weight_decay: L2 coefficient λ added to the gradient first.
    beta: CProp's EMA decay, see :func:`cprop`; None (the default) uses
      ``b2`` and shares Adam's second moment.
    c: CProp's overconfidence coefficient, see :func:`cprop`.
    cprop_eps: CProp's epsilon (``eps`` of :func:`cprop`); fp16 training
      wants a larger value than Adam's, e.g. 1e-5.
    cdf: CProp's CDF, see :func:`cprop`.
    track_mean_scale: keep ``state.mean_scale``, see :func:`cprop`.
    axis_name: model-parallel axis of ``mean_scale``, see :func:`cprop`.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` with state
    :class:`CPropAdamState`.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from optax_adaptive import cprop_adam
    >>> f = lambda x: jnp.sum((x - 3.0) ** 2)
    >>> tx = cprop_adam(learning_rate=0.1)
    >>> x = jnp.zeros(2)
    >>> state = tx.init(x)
    >>> for _ in range(200):
    ...   updates, state = tx.update(jax.grad(f)(x), state, x)
    ...   x = optax.apply_updates(x, updates)
    >>> print(jnp.round(x, 1), state.v is None)
    [3. 3.] True

  References:
    Preechakul & Kijsirikul, `CProp: Adaptive Learning Rate Scaling from Past
    Gradient Conformity <https://arxiv.org/abs/1912.11493>`_, 2019.

    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2014.
  """
  for name, value in (("b1", b1), ("b2", b2)):  # a bad b2 is named b2
    _common.check_range(name, value, lower=0.0, upper=1.0,
                        upper_inclusive=False)
  share = beta is None  # CProp's v is then Adam's ν
  cprop_beta = b2 if share else beta
  _check_cprop_hyperparams(cprop_beta, c, cprop_eps, "cprop_eps", cdf)
  for name, value in (("learning_rate", learning_rate), ("eps", eps),
                      ("weight_decay", weight_decay)):
    _common.check_range(name, value, lower=0.0)
  no_decay = _common.is_concrete_number(weight_decay) and weight_decay == 0

  def init_fn(params):
    _common.check_float_leaves(params, "cprop_adam")
    zeros = lambda: _common.stats_zeros_like(params)
    return CPropAdamState(
        count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros(), m=zeros(),
        v=None if share else zeros(),
        mean_scale=_initial_mean_scale(params, track_mean_scale))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    step_size = _common.value_at(learning_rate, state.count)
    count = optax.safe_int32_increment(state.count)
    k = _per_dtype(state.mu, lambda dtype: _constants(
        count, cprop_beta, c, cprop_eps, cdf, dtype))
    k1 = _per_dtype(state.mu, lambda dtype: _ema_scalars(b1, count, dtype))
    k2 = _per_dtype(state.mu, lambda dtype: _ema_scalars(b2, count, dtype))
    d = jax.tree.map(lambda g, mu: g.astype(mu.dtype), updates, state.mu)
    if not no_decay:  # the L2 term, seen by Adam and CProp
      _common.require_params(params, "cprop_adam with weight_decay")
      d = jax.tree.map(lambda d, p: d + _cast(weight_decay, d) * p.astype(
          d.dtype), d, params)
    mu, nu = _update_moment(d, state.mu, k1, 1), _update_moment(
        d, state.nu, k2, 2)
    m = _update_moment(d, state.m, k, 1)
    v = nu if share else _update_moment(d, state.v, k, 2)
    conformity = jax.tree.map(
        lambda m, v: _conformity(m, v, k[m.dtype], cdf), m, v)

    def scaled_step(g, mu, nu, x):  # -lr · Adam's step · s
      step = _adam_step(mu, nu, k1[x.dtype], k2[x.dtype], _cast(eps, x))
      u = -_cast(step_size, x) * step * _scale(x, k[x.dtype])
      return u.astype(g.dtype)

    new_updates = jax.tree.map(scaled_step, updates, mu, nu, conformity)
    mean_scale = None
    if track_mean_scale:
      mean_scale = _mean_scale(
          conformity, d, state.m, state.nu if share else state.v, k, count,
          cdf, axis_name, state.mean_scale.dtype)
    return new_updates, CPropAdamState(
        count, mu, nu, m, None if share else v, mean_scale)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
