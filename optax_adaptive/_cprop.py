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
Gradient Conformity <https://arxiv.org/abs/1912.11493>`_, 2019.

Spec: ``/work/shared/spec/cprop.md`` (section numbers below refer to it).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
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


# ------------------------------------------------------------ validation


def _check_cprop_hyperparams(beta: Any, c: Any, eps: Any, eps_name: str,
                             cdf: Any) -> None:
  _common.check_range("beta", beta, lower=0.0, upper=1.0,
                      upper_inclusive=False)
  _common.check_range("c", c, lower=0.0)
  _common.check_range(eps_name, eps, lower=0.0)
  _common.check_choice("cdf", cdf, CDFS)


# ---------------------------------------------------------- the scale s


class _Constants(NamedTuple):
  """Per-step scalars of §1.2, computed once per dtype instead of per entry.

  The literals of the formulas live here too, so that the mean-scale
  reduction can use copies that XLA does not share with the update loop: on
  CPU, a scalar broadcast shared by a loop fusion and a reduction fusion is
  materialised at full size.
  """

  beta: jax.Array
  one_minus_beta: jax.Array
  inv_bias_correction: jax.Array  # 1 / (1 - β^t)
  inv_dof: jax.Array  # 1 / (max(n_t - 1, 0) + ε), or 0 while n_t - 1 == 0
  eps: jax.Array
  c: jax.Array
  zero: jax.Array
  one: jax.Array
  cdf_a: jax.Array  # 2|P - ½| = F(|z| (cdf_a z² + cdf_b)), F = erf or tanh
  cdf_b: jax.Array


# (cdf_a, cdf_b) per CDF (§1.3): bft is tanh((0.07056 z³ + 1.5976 z) / 2).
_CDF_COEFFICIENTS = {
    "normal": (0.0, 1 / math.sqrt(2)),  # erf(z / √2)
    "bft": (0.07056 / 2, 1.5976 / 2),
    "bfo": (0.0, 1.702 / 2),
    "logistic": (0.0, math.pi / (2 * math.sqrt(3))),
}


def _constants(count: jax.Array, beta: Any, c: Any, eps: Any, cdf: str,
               dtype: jnp.dtype) -> _Constants:
  """Bias correction and the Bessel divisor with the step-1 guards of §5.2.

  ``count`` is the step number t >= 1 (already incremented). Every power of β
  comes from the same β in ``dtype`` (never bfloat16, §5.3), so that
  n_1 - 1 is exactly zero.
  """
  beta = jnp.asarray(beta).astype(dtype)
  one = jnp.ones((), dtype)
  one_minus_beta = one - beta
  bias_correction = one - beta**count  # b_t = 1 - β^t, §1.2
  # n_t - 1 = β (1 - β^{t-1}) / (1 - β) = Σ_{k=1}^{t-1} β^k, §5.2 (b).
  n_minus_1 = beta * (one - beta ** (count - 1)) / one_minus_beta
  eps = jnp.asarray(eps).astype(dtype)
  dof = jnp.maximum(n_minus_1, 0) + eps  # max(n - 1, 0) + ε, §5.2
  # §5.2 (a): σ̂² := 0 at t = 1 (and whenever n - 1 == 0, i.e. β == 0).
  has_spread = (count > 1) & (n_minus_1 > 0)
  inv_dof = jnp.where(has_spread, one / jnp.where(has_spread, dof, one), 0)
  # se >= ε > 0; the floor only matters for eps == 0, where it turns the
  # 0/0 of an all-zero gradient into z = 0 (s = 0) instead of NaN.
  se_eps = jnp.maximum(eps, jnp.finfo(dtype).tiny)
  cdf_a, cdf_b = (jnp.asarray(x, dtype) for x in _CDF_COEFFICIENTS[cdf])
  return _Constants(
      beta=beta, one_minus_beta=one_minus_beta,
      inv_bias_correction=one / bias_correction, inv_dof=inv_dof, eps=se_eps,
      c=jnp.asarray(c).astype(dtype), zero=jnp.zeros((), dtype), one=one,
      cdf_a=cdf_a, cdf_b=cdf_b)


def _conformity(m: jax.Array, v: jax.Array, k: _Constants,
                cdf: str) -> jax.Array:
  """2|P - ½| from the already updated EMAs m, v (§1.2, §1.3).

  P = Pr[X < 0] for X ~ N(m̂, se²); 2|P - ½| is |erf(z/√2)| for the normal
  CDF and |tanh(h(z)/2)| for its logistic approximations. Both are odd, so
  they are evaluated at |z|, which keeps relative accuracy for tiny z
  (§5.4). The standard error is inverted once and |z| = |m̂| · (1/se): XLA
  on CPU does not fuse a division whose result is used twice (|z| is, in
  the cubic of ``bft``) and would materialise |z| instead.
  """
  m_hat = m * k.inv_bias_correction  # m̂ = m / b_t
  v_hat = v * k.inv_bias_correction  # v̂ = v / b_t
  # σ̂² = max(v̂ - m̂², 0), §1.2. A select, not jnp.maximum, so that the
  # inf - inf of gradients beyond sqrt(float32 max) ~ 1.8e19 (v̂ and m̂²
  # both overflow) gives σ̂² = 0 instead of NaN.
  spread = v_hat - m_hat * m_hat
  variance = jnp.where(spread > k.zero, spread, k.zero)
  # se = sqrt(σ̂² / (n - 1 + ε)) + ε, §1.2
  inv_se = k.one / (jnp.sqrt(variance * k.inv_dof) + k.eps)
  abs_z = jnp.abs(m_hat) * inv_se  # |z| = |m̂| / se
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

  Pairs of terms are combined with x, x², x⁴, ..., so the chain of
  dependent multiply-adds is log2(n) deep instead of Horner's n - 1. The
  CPU update loop is bound by that chain (the core overlaps only a few
  iterations), not by the number of operations.
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

  A general tanh also handles the sign, tiny arguments and saturation with
  selects around the rational; the conformity's argument is |z|-based, so
  one clamp and one saturation select are enough. On a 2-core CPU the
  update without the mean scale is about 4 % faster than with ``jnp.tanh``
  (``python -m benchmarks.cprop_breakdown``, "own tanh / jnp.tanh"; 0.94-0.98
  in five runs), and CProp's scale no longer depends on the backend's tanh.
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
  """s = min(1, c · 2|P - ½|), §1.2, with NaN staying NaN.

  A select, whose NaN handling does not depend on how a backend implements
  ``minimum`` (see the CPU branch of :func:`_scale_sum`).
  """
  scaled = k.c * conformity
  return jnp.where(scaled > k.one, k.one, scaled)


def _scale_from_moments(m: jax.Array, v: jax.Array, k: _Constants,
                        cdf: str) -> jax.Array:
  """s = min(1, c · 2|P - ½|) from the already updated EMAs m, v (§1.2)."""
  return _scale(_conformity(m, v, k, cdf), k)


def _ema(moment: jax.Array, value: jax.Array, decay: jax.Array,
         one_minus_decay: jax.Array) -> jax.Array:
  """β·moment + (1 - β)·value, the EMA of §1.2 in optax's operand order."""
  return one_minus_decay * value + decay * moment


class _ScaleSumInputs(NamedTuple):
  """What the mean-scale reduction of one leaf may read (see _scale_sum)."""

  conformity: jax.Array  # 2|P - ½| of the update, from the new EMAs
  k: _Constants
  d: jax.Array  # the gradient the statistics saw this step, stats dtype
  m_prev: jax.Array  # the EMAs before this step
  v_prev: jax.Array


def _as_rows(x: jax.Array) -> jax.Array:
  """``x`` with at least 2 axes (a free reshape), for a row reduction.

  XLA:GPU fuses a reduction over the last axis with the update's
  elementwise outputs into a faster kernel than a reduction to a scalar
  (H100, one 1e8-float leaf: 1.51x instead of 1.81x of Adam's update for
  ``cprop_adam``). Arrays with 2 or more axes are reduced over their own last
  axis; a 1-D leaf is split into rows unless it is explicitly sharded (a
  reshape of sharded axes can be a ``ShardingTypeError``).
  """
  if x.ndim >= 2:
    return x
  if x.ndim == 1 and not _common.explicitly_sharded(x):
    width = next((w for w in (1024, 512, 256, 128) if x.size % w == 0), None)
    if width is not None:
      return x.reshape(x.size // width, width)
  return x.reshape(1, 1) if x.ndim == 0 else x[None]


def _scale_sum(entry: _ScaleSumInputs, unit: jax.Array,
               cdf: str) -> jax.Array:
  """Σ s over one leaf, in the leaf's statistics dtype (for the mean scale).

  How the reduction reads s decides how XLA fuses it with the update, and
  the best choice differs per backend (``jax.lax.platform_dependent`` picks
  it at lowering, so the compiler sees one of them):

  * XLA:CPU does not fuse an elementwise output and a reduction into one
    loop, and a reduction that recomputes the CDF runs several times slower
    than the elementwise loop. The reduction therefore takes the
    materialised 2|P - ½| (XLA materialises it because two loops consume
    it) and repeats only the cheap clip.
  * Elsewhere the reduction recomputes s from the update's own inputs
    (d, previous m and v), as row sums. A reduction that reads only what
    the update reads is fused with it as a sibling: on XLA:GPU the whole
    update is then one kernel, instead of two around a materialised s.

  Both multiply the constants by ``unit``, a runtime True, which keeps XLA
  from sharing them, and so the intermediates, with the update loop (on
  CPU a shared scalar broadcast is materialised at full size, see
  :class:`_Constants`).
  """

  def unshared(k):
    return jax.tree.map(lambda x: x * unit.astype(x.dtype), k)

  def materialised_sum(e):  # XLA:CPU
    k = unshared(e.k)
    # jnp.minimum, not the select of _scale: XLA:CPU runs this sum as one
    # YNNPACK reduction, which takes a minimum but not a select (a select
    # materialises s first, doubling the update's time). Its minimum returns
    # the second operand when one is NaN, so the product goes second and a
    # NaN gradient still shows in the mean scale (docs/cprop.md, "Overhead").
    return jnp.sum(jnp.minimum(k.one, k.c * e.conformity))

  def recomputed_sum(e):
    k = unshared(e.k)
    d, m_prev, v_prev = (_as_rows(x) for x in (e.d, e.m_prev, e.v_prev))
    m = _ema(m_prev, d, k.beta, k.one_minus_beta)
    v = _ema(v_prev, d * d, k.beta, k.one_minus_beta)
    return jnp.sum(jnp.sum(_scale_from_moments(m, v, k, cdf), axis=-1,
                           dtype=k.one.dtype))

  if entry.d.size == 0:
    return jnp.zeros((), entry.k.one.dtype)
  return jax.lax.platform_dependent(
      entry, cpu=materialised_sum, default=recomputed_sum)


def _mean_scale(sums: list[jax.Array], leaves: list[Any],
                axis_name: Hashable | None, dtype: jnp.dtype) -> jax.Array:
  """Element-weighted mean of s over all leaves, in ``dtype``.

  With ``axis_name`` the sums and sizes of every shard along that mapped
  axis are added up first, so that model-parallel shards agree on the mean.
  """
  size = sum(int(np.prod(x.shape)) for x in leaves)
  total = (sum(sums) if sums else jnp.zeros((), dtype)).astype(dtype)
  if axis_name is not None:
    total, size = jax.lax.psum((total, jnp.asarray(size, dtype)), axis_name)
  elif size == 0:
    return jnp.ones((), dtype)
  return jnp.where(size > 0, total / jnp.maximum(size, 1), 1).astype(dtype)


# ------------------------------------------------- one leaf's update


class _AdamScalars(NamedTuple):
  """The per-step scalars of the fused update besides CProp's own."""

  k1: _Constants  # Adam's first moment (decay b1)
  k2: _Constants  # Adam's second moment (decay b2)
  eps: jax.Array
  learning_rate: jax.Array
  weight_decay: jax.Array


def _adam_leaf(d, mu, nu, m, v, k: _Constants, adam: _AdamScalars,
               cdf: str):
  """The fused update of one leaf from d = g (+ λθ), §1.4.

  ``v`` is None when CProp's second moment is Adam's ν (§5.5). Returns the
  update (statistics dtype), the new μ, ν, m, v, and the scale-sum inputs.
  """
  dd = d * d
  m_prev, v_prev = m, nu if v is None else v  # CProp's moments before
  mu = _ema(mu, d, adam.k1.beta, adam.k1.one_minus_beta)
  nu = _ema(nu, dd, adam.k2.beta, adam.k2.one_minus_beta)
  m = _ema(m, d, k.beta, k.one_minus_beta)
  v = None if v is None else _ema(v, dd, k.beta, k.one_minus_beta)
  conformity = _conformity(m, nu if v is None else v, k, cdf)
  s = _scale(conformity, k)
  nu_hat = nu * adam.k2.inv_bias_correction
  step = (mu * adam.k1.inv_bias_correction) / (jnp.sqrt(nu_hat) + adam.eps)
  u = -adam.learning_rate * step * s
  return u, mu, nu, m, v, _ScaleSumInputs(conformity, k, d, m_prev, v_prev)


def _wrapper_leaf(g, u, m_prev, v_prev, k: _Constants, cdf: str):
  """The scaled update and new EMAs of one leaf of :func:`cprop` (§1.2)."""
  m = _ema(m_prev, g, k.beta, k.one_minus_beta)
  v = _ema(v_prev, g * g, k.beta, k.one_minus_beta)
  conformity = _conformity(m, v, k, cdf)
  s = _scale(conformity, k)
  scaled = (u.astype(s.dtype) * s).astype(u.dtype)
  return scaled, m, v, _ScaleSumInputs(conformity, k, g, m_prev, v_prev)


class _ConstantsCache:
  """One :class:`_Constants` per statistics dtype of a tree."""

  def __init__(self, count, beta, c, eps, cdf):
    self._args = (count, beta, c, eps, cdf)
    self._cache = {}

  def __call__(self, dtype) -> _Constants:
    dtype = jnp.dtype(dtype)
    if dtype not in self._cache:
      self._cache[dtype] = _constants(*self._args, dtype)
    return self._cache[dtype]


# ------------------------------------------------------------- wrapper


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

  where :math:`F` is the normal CDF or one of its approximations (``cdf``).
  :math:`\hat\sigma_1^2` is forced to 0, so that :math:`s_1 = \min(1, c)` for
  every non-zero gradient. The statistics see the gradients passed to this
  wrapper; the scale multiplies the *output* of ``inner``, so the inner state
  (e.g. a momentum buffer) accumulates unscaled quantities, as in the
  reference implementation.

  Statistics are kept in float32 for bfloat16/float16 params and in the
  params' dtype otherwise (float64 stays float64). ``state.mean_scale`` holds
  the element-weighted mean of :math:`s_t` over all parameters (the quantity
  plotted in the paper; 1 before the first update).

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
    Place the wrapper around the optimizer, not inside a chain:
    ``chain(cprop_like, adam)`` would rescale the gradients Adam normalises,
    and ``chain(adam, cprop_like)`` would take statistics of Adam's smoothed
    updates instead of the raw gradients (spec §5.1).
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
        mean_scale=(jnp.ones([], _common.widest_float_dtype(params))
                    if track_mean_scale else None),
    )

  def update_fn(updates, state, params=None, **extra_args):
    inner_updates, inner_state = inner_update(
        updates, state.inner_state, params, **extra_args)
    count = optax.safe_int32_increment(state.count)
    constants = _ConstantsCache(count, beta, c, eps, cdf)
    unit = count > 0  # a runtime True, see _scale_sum
    def leaf(g, u, m_prev, v_prev):
      scaled, m, v, sum_inputs = _wrapper_leaf(
          g.astype(m_prev.dtype), u, m_prev, v_prev, constants(m_prev.dtype),
          cdf)
      return scaled, m, v, _scale_sum(sum_inputs, unit, cdf)

    treedef = jax.tree.structure(updates)
    out = [leaf(*args) for args in zip(
        treedef.flatten_up_to(updates), treedef.flatten_up_to(inner_updates),
        treedef.flatten_up_to(state.m), treedef.flatten_up_to(state.v),
        strict=True)]
    new_updates, m, v, sums = ([o[i] for o in out] for i in range(4))
    new_state = CPropState(
        count=count,
        m=treedef.unflatten(m),
        v=treedef.unflatten(v),
        inner_state=inner_state,
        mean_scale=(_mean_scale(sums, m, axis_name, state.mean_scale.dtype)
                    if track_mean_scale else None),
    )
    return treedef.unflatten(new_updates), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ------------------------------------------------------------- aliases


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

  The reference CPropSGD:

  .. math::

    d_t = g_t + \lambda \theta_t, \quad
    b_t = \mu b_{t-1} + d_t, \quad
    \theta_{t+1} = \theta_t - \eta \, s_t \odot b_t

  (Nesterov: :math:`d_t + \mu b_t` instead of :math:`b_t`), where
  :math:`s_t` is the CProp scale of :func:`cprop` computed from the raw
  gradient :math:`g_t`, i.e. *before* weight decay. It is exactly
  ``cprop(optax.chain(optax.add_decayed_weights(weight_decay),
  optax.sgd(learning_rate, momentum, nesterov)), beta, c, eps, cdf)``.

  A concrete ``momentum == 0`` maps to ``optax.sgd(momentum=None)``: no
  momentum buffer is allocated (2 CProp slots per parameter). A non-zero or
  traced ``momentum`` (e.g. under :func:`optax.inject_hyperparams`, which
  calls the factory with traced numbers) keeps a momentum buffer, so the
  state structure never depends on a traced value; pass
  ``static_args=("momentum",)`` to inject to keep the buffer-free layout.

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

  The reference CPropAdam (L2-style weight decay, seen by both Adam and
  CProp):

  .. math::

    d_t &= g_t + \lambda \theta_t, \quad
    \mu_t = b_1 \mu_{t-1} + (1 - b_1) d_t, \quad
    \nu_t = b_2 \nu_{t-1} + (1 - b_2) d_t^2 \\
    u_t &= -\eta_t \, s_t \odot
      \frac{\mu_t / (1 - b_1^t)}{\sqrt{\nu_t / (1 - b_2^t)} + \epsilon}

  where :math:`s_t` is the CProp scale of :func:`cprop` computed from
  :math:`d_t`. With ``beta=None`` (the default) CProp's decay is ``b2`` and
  its second moment *is* :math:`\nu_t`, so the state holds 3 slots per
  parameter (μ, ν, CProp's m) instead of the 4 of ``cprop(optax.adam(...))``.
  An explicit ``beta`` gives CProp its own second moment (4 slots), and the
  update matches ``optax.chain(optax.add_decayed_weights(weight_decay),
  cprop(optax.adam(learning_rate, b1, b2, eps), beta, c, cprop_eps, cdf))``
  to float rounding. The layout depends only on whether ``beta`` is given,
  so it is the same under :func:`optax.inject_hyperparams`. All slots are
  float32 for bfloat16/float16 params.

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
  for name, value in (("b1", b1), ("b2", b2)):
    _common.check_range(name, value, lower=0.0, upper=1.0,
                        upper_inclusive=False)
  share = beta is None
  _check_cprop_hyperparams(b2 if share else beta, c, cprop_eps, "cprop_eps",
                           cdf)
  _common.check_range("learning_rate", learning_rate, lower=0.0)
  _common.check_range("eps", eps, lower=0.0)
  _common.check_range("weight_decay", weight_decay, lower=0.0)
  cprop_beta = b2 if share else beta

  def init_fn(params):
    _common.check_float_leaves(params, "cprop_adam")
    zeros = lambda: _common.stats_zeros_like(params)
    return CPropAdamState(
        count=jnp.zeros([], jnp.int32),
        mu=zeros(),
        nu=zeros(),
        m=zeros(),
        v=None if share else zeros(),
        mean_scale=(jnp.ones([], _common.widest_float_dtype(params))
                    if track_mean_scale else None),
    )

  def update_fn(updates, state, params=None, **extra_args):
    # complies with signature of GradientTransformationExtraArgs but ignores
    # the extra_args
    del extra_args
    no_decay = (_common.is_concrete_number(weight_decay)
                and weight_decay == 0)
    if not no_decay:
      _common.require_params(params, "cprop_adam with weight_decay")
    step_size = _common.value_at(learning_rate, state.count)
    count = optax.safe_int32_increment(state.count)
    unit = count > 0  # a runtime True, see _scale_sum
    cprop_constants = _ConstantsCache(count, cprop_beta, c, cprop_eps, cdf)
    adam_constants = _ConstantsCache(count, b1, 0.0, 0.0, cdf)
    nu_constants = _ConstantsCache(count, b2, 0.0, 0.0, cdf)

    def adam_scalars(dtype):
      return _AdamScalars(
          k1=adam_constants(dtype), k2=nu_constants(dtype),
          eps=jnp.asarray(eps).astype(dtype),
          learning_rate=jnp.asarray(step_size).astype(dtype),
          weight_decay=jnp.asarray(weight_decay).astype(dtype))

    def leaf(g, p, mu, nu, m, v):
      k, adam = cprop_constants(mu.dtype), adam_scalars(mu.dtype)
      d = g.astype(mu.dtype)
      if p is not None:  # L2 term, seen by Adam and CProp (§1.4)
        d = d + adam.weight_decay * p.astype(mu.dtype)
      u, mu, nu, m, v, sum_inputs = _adam_leaf(d, mu, nu, m, v, k, adam, cdf)
      return (u.astype(g.dtype), mu, nu, m, v,
              _scale_sum(sum_inputs, unit, cdf))

    treedef = jax.tree.structure(updates)
    flat = lambda tree: treedef.flatten_up_to(tree)
    flat_params = ([None] * treedef.num_leaves if no_decay
                   else flat(params))
    flat_v = flat(state.v) if not share else [None] * treedef.num_leaves
    out = [leaf(*args) for args in zip(
        flat(updates), flat_params, flat(state.mu), flat(state.nu),
        flat(state.m), flat_v, strict=True)]
    u, mu, nu, m, v, sums = ([o[i] for o in out] for i in range(6))
    new_state = CPropAdamState(
        count=count,
        mu=treedef.unflatten(mu),
        nu=treedef.unflatten(nu),
        m=treedef.unflatten(m),
        v=None if share else treedef.unflatten(v),
        mean_scale=(_mean_scale(sums, mu, axis_name, state.mean_scale.dtype)
                    if track_mean_scale else None),
    )
    return treedef.unflatten(u), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
