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
This module holds the transformations and their states; the statistics
(EMA scalars, z-statistic, CDFs, the scale and its mean) are in
:mod:`optax_adaptive._cprop_stats`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_adaptive import _common
from optax_adaptive import _cprop_stats as stats
from optax_adaptive._cprop_stats import CDFS


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


def _check_cprop_adam_hyperparams(learning_rate: Any, b1: Any, b2: Any,
                                  eps: Any, weight_decay: Any, beta: Any,
                                  c: Any, cprop_eps: Any, cdf: Any) -> None:
  for name, value in (("b1", b1), ("b2", b2)):  # a bad b2 is named b2
    _common.check_range(name, value, lower=0.0, upper=1.0,
                        upper_inclusive=False)
  _check_cprop_hyperparams(beta, c, cprop_eps, "cprop_eps", cdf)
  for name, value in (("learning_rate", learning_rate), ("eps", eps),
                      ("weight_decay", weight_decay)):
    _common.check_range(name, value, lower=0.0)


def _cast(x: Any, like: jax.Array) -> jax.Array:
  return jnp.asarray(x).astype(like.dtype)


def _scaled_adam_step(g: jax.Array, mu: jax.Array, nu: jax.Array,
                      conformity: jax.Array, e1: stats.Ema, e2: stats.Ema,
                      k: stats.Constants, eps: Any, step_size: Any
                      ) -> jax.Array:
  """-lr · Adam's bias-corrected step · s, in the dtype of ``g``."""
  eps = _cast(eps, conformity)
  nu_hat = nu * e2.inv_bias_correction
  step = (mu * e1.inv_bias_correction) / (jnp.sqrt(nu_hat) + eps)
  u = -_cast(step_size, conformity) * step * stats.scale(conformity, k)
  return u.astype(g.dtype)


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
  non-zero gradient. The scale multiplies the *output* of ``inner``, whose
  state (e.g. a momentum buffer) accumulates unscaled quantities as in the
  reference implementation: wrap the optimizer, do not chain CProp before or
  after it (docs/cprop.md, "Placement"). Statistics are float32 for
  bfloat16/float16 params and in the params' dtype otherwise.
  ``state.mean_scale`` is the element-weighted mean of :math:`s_t` over all
  parameters (plotted in the paper; 1 before the first update).

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
    zeros = lambda: _common.stats_zeros_like(params)
    return CPropState(
        count=jnp.zeros([], jnp.int32), m=zeros(), v=zeros(),
        inner_state=inner.init(params),
        mean_scale=_initial_mean_scale(params, track_mean_scale))

  def update_fn(updates, state, params=None, **extra_args):
    inner_updates, inner_state = inner_update(
        updates, state.inner_state, params, **extra_args)
    count = optax.safe_int32_increment(state.count)
    k = stats.per_dtype(state.m, lambda dtype: stats.constants(
        count, beta, c, eps, cdf, dtype))
    g = jax.tree.map(lambda g, m: g.astype(m.dtype), updates, state.m)
    m = stats.update_moment(g, state.m, k, 1)
    v = stats.update_moment(g, state.v, k, 2)
    conformity = jax.tree.map(
        lambda m, v: stats.conformity(m, v, k[m.dtype], cdf), m, v)
    new_updates = jax.tree.map(
        lambda u, x: (u.astype(x.dtype) * stats.scale(x, k[x.dtype])).astype(
            u.dtype), inner_updates, conformity)
    mean_scale = None
    if track_mean_scale:
      mean_scale = stats.mean_scale(conformity, g, state.m, state.v, k, count,
                                    cdf, axis_name, state.mean_scale.dtype)
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
  ``beta`` adds CProp's own second moment; the update then equals the
  chain of docs/cprop.md, "Hyperparameters", to float rounding.

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
  share = beta is None  # CProp's v is then Adam's ν
  cprop_beta = b2 if share else beta
  _check_cprop_adam_hyperparams(learning_rate, b1, b2, eps, weight_decay,
                                cprop_beta, c, cprop_eps, cdf)
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
    k = stats.per_dtype(state.mu, lambda dtype: stats.constants(
        count, cprop_beta, c, cprop_eps, cdf, dtype))
    k1, k2 = (stats.per_dtype(state.mu, lambda dtype, b=b: stats.ema_scalars(
        b, count, dtype)) for b in (b1, b2))
    d = jax.tree.map(lambda g, mu: g.astype(mu.dtype), updates, state.mu)
    if not no_decay:  # the L2 term, seen by Adam and CProp
      _common.require_params(params, "cprop_adam with weight_decay")
      d = jax.tree.map(lambda d, p: d + _cast(weight_decay, d) * p.astype(
          d.dtype), d, params)
    mu = stats.update_moment(d, state.mu, k1, 1)
    nu = stats.update_moment(d, state.nu, k2, 2)
    m = stats.update_moment(d, state.m, k, 1)
    v = nu if share else stats.update_moment(d, state.v, k, 2)
    conformity = jax.tree.map(
        lambda m, v: stats.conformity(m, v, k[m.dtype], cdf), m, v)
    new_updates = jax.tree.map(
        lambda g, mu, nu, x: _scaled_adam_step(
            g, mu, nu, x, k1[x.dtype], k2[x.dtype], k[x.dtype], eps, step_size),
        updates, mu, nu, conformity)
    mean_scale = None
    if track_mean_scale:
      mean_scale = stats.mean_scale(
          conformity, d, state.m, state.nu if share else state.v, k, count,
          cdf, axis_name, state.mean_scale.dtype)
    return new_updates, CPropAdamState(
        count, mu, nu, m, None if share else v, mean_scale)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
