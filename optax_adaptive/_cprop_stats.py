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
"""CProp's conformity statistics, the math of :mod:`optax_adaptive._cprop`.

Preechakul & Kijsirikul, `CProp: Adaptive Learning Rate Scaling from Past
Gradient Conformity <https://arxiv.org/abs/1912.11493>`_, 2019, in the order
of docs/cprop.md, "Algorithm": the per-step scalars of the EMAs (b_t, n_t - 1)
in each statistics dtype, the z-statistic and the CDF (own tanh and Estrin
polynomials for float32), the scale s, and the mean of s over all parameters
(``mean_scale``) in the form each backend fuses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optax_adaptive import _common

CDFS = ("normal", "bft", "bfo", "logistic")

# ------------------------------------------------------- per-step scalars


class Ema(NamedTuple):
  """The per-step scalars of one EMA, in the statistics dtype."""

  decay: jax.Array
  one_minus_decay: jax.Array
  inv_bias_correction: jax.Array  # 1 / b_t, b_t = 1 - decay^t


def ema_scalars(decay: Any, count: jax.Array, dtype: jnp.dtype) -> Ema:
  # The decay is cast to the statistics dtype (never to bfloat16, where
  # 0.999 == 1) and every power of it comes from that one value.
  decay = jnp.asarray(decay).astype(dtype)
  one = jnp.ones((), dtype)
  return Ema(decay, one - decay, one / (one - decay**count))


def ema(moment: jax.Array, value: jax.Array, e: Ema) -> jax.Array:
  """decay·moment + (1 - decay)·value, in optax's operand order."""
  return e.one_minus_decay * value + e.decay * moment


def update_moment(values: Any, moments: Any, e: dict[Any, Ema],
                  order: int) -> Any:
  """``optax.tree.update_moment`` with ``e`` of each moment's dtype."""
  return jax.tree.map(
      lambda g, t: ema(t, g if order == 1 else g * g, e[t.dtype]), values,
      moments)


class Constants(NamedTuple):
  """CProp's scalars of one step in one dtype (literals too, see _scale_sum).

  The first three fields are those of :class:`Ema` (decay beta).
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


def constants(count: jax.Array, beta: Any, c: Any, eps: Any, cdf: str,
              dtype: jnp.dtype) -> Constants:
  """The scalars of step ``count`` >= 1, with the guards of docs/cprop.md.

  n_t - 1 comes from the same beta as b_t, so it is exactly 0 at t = 1,
  where σ̂² is taken as 0: s_1 = min(1, c) exactly ("Step 1").
  """
  e = ema_scalars(beta, count, dtype)
  beta, one = e.decay, jnp.ones((), dtype)
  # n_t - 1 = β (1 - β^{t-1}) / (1 - β) = Σ_{k=1}^{t-1} β^k
  n_minus_1 = beta * (one - beta ** (count - 1)) / e.one_minus_decay
  eps = jnp.asarray(eps).astype(dtype)
  dof = jnp.maximum(n_minus_1, 0) + eps
  has_spread = (count > 1) & (n_minus_1 > 0)
  inv_dof = jnp.where(has_spread, one / jnp.where(has_spread, dof, one), 0)
  # se >= ε > 0; the floor only matters for eps == 0, where it turns the 0/0
  # of an all-zero gradient into z = 0 (s = 0) instead of NaN.
  se_eps = jnp.maximum(eps, jnp.finfo(dtype).tiny)
  cdf_a, cdf_b = (jnp.asarray(x, dtype) for x in _CDF_COEFFICIENTS[cdf])
  return Constants(
      *e, inv_dof=inv_dof, eps=se_eps, c=jnp.asarray(c).astype(dtype),
      zero=jnp.zeros((), dtype), one=one, cdf_a=cdf_a, cdf_b=cdf_b)


def per_dtype(tree: Any, fn: Callable[[Any], Any]) -> dict[Any, Any]:
  """``{dtype: fn(dtype)}`` for the dtypes of ``tree``'s leaves."""
  dtypes = dict.fromkeys(x.dtype for x in jax.tree.leaves(tree))
  return {dtype: fn(dtype) for dtype in dtypes}


# ------------------------------------------------------------ the scale s


def conformity(m: jax.Array, v: jax.Array, k: Constants,
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
  return jax.lax.erf(arg) if cdf == "normal" else tanh_of_nonnegative(arg)


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


def polynomial(coefficients: tuple[float, ...], x: jax.Array) -> jax.Array:
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


def tanh_of_nonnegative(x: jax.Array) -> jax.Array:
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
  rational = x * (polynomial(_TANH_P, x2) / polynomial(_TANH_Q, x2))
  # Exactly 1 when saturated also without fused multiply-adds (op by op).
  return jnp.where(saturated, 1.0, rational)


def scale(conformity: jax.Array, k: Constants) -> jax.Array:
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


def _scale_sum(conf: jax.Array, d: jax.Array, m_prev: jax.Array,
               v_prev: jax.Array, k: Constants, unit: jax.Array,
               cdf: str) -> jax.Array:
  """Σ s over one leaf (statistics dtype), in the form each backend fuses.

  XLA:CPU sums the conformity ``conf`` that the update materialises
  (recomputing the CDF in a reduction is several times slower there);
  elsewhere s is recomputed from the step's inputs (``d``, the EMAs before
  it) as row sums, which XLA:GPU fuses with the update into one kernel
  (measurements: docs/results.md). The constants are multiplied by
  ``unit``, a runtime True, so that XLA does not share them with the
  update: on CPU a shared scalar broadcast is materialised at full size.
  """

  def unshared(k):
    return jax.tree.map(lambda x: x * unit.astype(x.dtype), k)

  def materialised_sum(conf, d, m_prev, v_prev):  # XLA:CPU
    del d, m_prev, v_prev
    k1 = unshared(k)
    # Constant first: XLA:CPU's YNNPACK reduction fuses a minimum (not a
    # select), and its minimum returns the second operand, here the NaN.
    return jnp.sum(jnp.minimum(k1.one, k1.c * conf))

  def recomputed_sum(conf, d, m_prev, v_prev):
    del conf
    k1 = unshared(k)
    d, m_prev, v_prev = (_as_rows(x) for x in (d, m_prev, v_prev))
    m, v = ema(m_prev, d, k1), ema(v_prev, d * d, k1)
    s = scale(conformity(m, v, k1, cdf), k1)
    return jnp.sum(jnp.sum(s, axis=-1, dtype=k1.one.dtype))

  if d.size == 0:
    return jnp.zeros((), k.one.dtype)
  return jax.lax.platform_dependent(
      conf, d, m_prev, v_prev, cpu=materialised_sum,
      default=recomputed_sum)


def mean_scale(conf: Any, d: Any, m_prev: Any, v_prev: Any,
               k: dict[Any, Constants], count: jax.Array, cdf: str,
               axis_name: Hashable | None, dtype: jnp.dtype) -> jax.Array:
  """Element-weighted mean of s over all leaves, in ``dtype``.

  ``conf`` is the conformity of each leaf, ``d`` the step's gradient and
  ``m_prev``, ``v_prev`` the EMAs before the step (see _scale_sum).

  With ``axis_name`` the sums and sizes of every shard along that mapped
  axis are added up first, so that model-parallel shards agree on the mean.
  """
  unit = count > 0  # a runtime True, see _scale_sum
  sums = jax.tree.leaves(jax.tree.map(
      lambda x, *args: _scale_sum(x, *args, k[x.dtype], unit, cdf),
      conf, d, m_prev, v_prev))
  size = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(conf))
  total = (sum(sums) if sums else jnp.zeros((), dtype)).astype(dtype)
  if axis_name is not None:
    total, size = jax.lax.psum((total, jnp.asarray(size, dtype)), axis_name)
  elif size == 0:
    return jnp.ones((), dtype)
  return jnp.where(size > 0, total / jnp.maximum(size, 1), 1).astype(dtype)
