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
"""Bounded scalar minimisers for EVBMF's noise variance (jit- and vmap-able).

``brent_bounded`` reproduces scipy's ``fminbound`` step for step (reference
parity); ``golden_log`` is a fixed-length golden-section search.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_GOLDEN = 0.5 * (3.0 - math.sqrt(5.0))  # 0.381966..., scipy's golden_mean
_SCIPY_SQRT_EPS = math.sqrt(2.2e-16)  # scipy's hard-coded sqrt_eps
_BRENT_XATOL = 1e-5  # scipy's default absolute tolerance, as the reference
_BRENT_MAXITER = 500
_GOLDEN_LOG_ITERS = 80  # fixed iterations on ln sigma^2


def brent_bounded(fun, lower, upper, xatol=_BRENT_XATOL,
                  maxiter=_BRENT_MAXITER):
  """Brent's bounded minimiser, step for step as scipy's ``fminbound``.

  Golden-section steps with parabolic interpolation, as
  ``scipy.optimize.minimize_scalar(method="bounded")``, which AdaS's
  reference EVBMF calls, including its fast path: when ``upper - lower`` is
  below about ``1.08e-5`` the first golden point
  ``lower + 0.381966 (upper - lower)`` is returned after one evaluation.
  Runs in a ``lax.while_loop`` on scalars, so it jits and vmaps.

  Args:
    fun: scalar function of a scalar.
    lower: lower end of the bracket (scalar array).
    upper: upper end of the bracket, ``>= lower``.
    xatol: absolute tolerance on the minimiser.
    maxiter: maximum number of function evaluations.

  Returns:
    The minimiser found, with the dtype of ``lower``.
  """
  a, b = jnp.asarray(lower), jnp.asarray(upper, jnp.asarray(lower).dtype)
  dtype = a.dtype
  xf = a + _GOLDEN * (b - a)
  fx = fun(xf)
  zero = jnp.zeros((), dtype)

  def tolerances(xf):
    tol1 = _SCIPY_SQRT_EPS * jnp.abs(xf) + xatol / 3.0
    return tol1, 2.0 * tol1

  def unconverged(c):
    a, b, xf, num = c[0], c[1], c[2], c[10]
    _, tol2 = tolerances(xf)
    xm = 0.5 * (a + b)
    return (jnp.abs(xf - xm) > tol2 - 0.5 * (b - a)) & (num < maxiter)

  def step(c):
    a, b, xf, fx, nfc, fnfc, fulc, ffulc, e, rat, num = c
    tol1, tol2 = tolerances(xf)
    xm = 0.5 * (a + b)
    try_parabola = jnp.abs(e) > tol1
    r = (xf - nfc) * (fx - ffulc)
    q = (xf - fulc) * (fx - fnfc)
    p = (xf - fulc) * q - (xf - nfc) * r
    q = 2.0 * (q - r)
    p = jnp.where(q > 0.0, -p, p)
    q = jnp.abs(q)
    parabola_ok = (try_parabola & (jnp.abs(p) < jnp.abs(0.5 * q * e))
                   & (p > q * (a - xf)) & (p < q * (b - xf)))
    rat_parabola = p / jnp.where(q == 0.0, 1.0, q)
    x_parabola = xf + rat_parabola
    near_edge = ((x_parabola - a) < tol2) | ((b - x_parabola) < tol2)
    toward_mid = jnp.sign(xm - xf) + ((xm - xf) == 0)
    rat_parabola = jnp.where(near_edge, tol1 * toward_mid, rat_parabola)
    e_golden = jnp.where(xf >= xm, a - xf, b - xf)
    new_e = jnp.where(parabola_ok, rat, e_golden)
    new_rat = jnp.where(parabola_ok, rat_parabola, _GOLDEN * e_golden)
    si = jnp.sign(new_rat) + (new_rat == 0)
    x = xf + si * jnp.maximum(jnp.abs(new_rat), tol1)
    fu = fun(x)
    better = fu <= fx
    # The branch where the new point is not better.
    a_worse = jnp.where(x < xf, x, a)
    b_worse = jnp.where(x < xf, b, x)
    to_second = (fu <= fnfc) | (nfc == xf)
    to_third = ~to_second & ((fu <= ffulc) | (fulc == xf) | (fulc == nfc))
    w_fulc = jnp.where(to_second, nfc, jnp.where(to_third, x, fulc))
    w_ffulc = jnp.where(to_second, fnfc, jnp.where(to_third, fu, ffulc))
    w_nfc = jnp.where(to_second, x, nfc)
    w_fnfc = jnp.where(to_second, fu, fnfc)
    pick = lambda good, bad: jnp.where(better, good, bad)
    return (
        pick(jnp.where(x >= xf, xf, a), a_worse),
        pick(jnp.where(x >= xf, b, xf), b_worse),
        pick(x, xf), pick(fu, fx),
        pick(xf, w_nfc), pick(fx, w_fnfc),
        pick(nfc, w_fulc), pick(fnfc, w_ffulc),
        new_e, new_rat, num + 1,
    )

  init = (a, b, xf, fx, xf, fx, xf, fx, zero, zero, jnp.ones((), jnp.int32))
  return jax.lax.while_loop(unconverged, step, init)[2]


def golden_log(fun, lower, upper, iterations=_GOLDEN_LOG_ITERS):
  """Golden-section search on ``ln x`` over ``[lower, upper]``.

  A fixed number of iterations, relative precision ``0.618**iterations``
  of the log-bracket; no while loop.
  """
  lo, hi = jnp.log(lower), jnp.log(jnp.maximum(upper, lower))
  inner_lo = lo + _GOLDEN * (hi - lo)
  inner_hi = hi - _GOLDEN * (hi - lo)
  f_lo, f_hi = fun(jnp.exp(inner_lo)), fun(jnp.exp(inner_hi))

  def step(_, c):
    lo, hi, inner_lo, inner_hi, f_lo, f_hi = c
    keep_left = f_lo <= f_hi
    new_lo = jnp.where(keep_left, lo, inner_lo)
    new_hi = jnp.where(keep_left, inner_hi, hi)
    probe = jnp.where(keep_left, new_lo + _GOLDEN * (new_hi - new_lo),
                      new_hi - _GOLDEN * (new_hi - new_lo))
    f_probe = fun(jnp.exp(probe))
    return (new_lo, new_hi,
            jnp.where(keep_left, probe, inner_hi),
            jnp.where(keep_left, inner_lo, probe),
            jnp.where(keep_left, f_probe, f_hi),
            jnp.where(keep_left, f_lo, f_probe))

  lo, hi, *_ = jax.lax.fori_loop(
      0, iterations, step, (lo, hi, inner_lo, inner_hi, f_lo, f_hi))
  return jnp.exp(0.5 * (lo + hi))
