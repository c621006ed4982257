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
"""Spectral metrics of AdaS: unfoldings, EVBMF and the knowledge gain.

Everything here is a pure function of arrays with static shapes: the rank
that EVBMF retains is data dependent, so it is carried as a mask and a count,
never as a shape. The functions jit, vmap and run on any backend.

References:
  Hosseini & Plataniotis, `AdaS: Adaptive Scheduling of Stochastic Gradients
  <https://arxiv.org/abs/2006.06587>`_, 2020.

  Nakajima, Tomioka, Sugiyama & Babacan, `Global Analytic Solution of
  Fully-observed Variational Bayesian Matrix Factorization
  <https://jmlr.org/papers/v14/nakajima13a.html>`_, JMLR 2013.
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from optax_adaptive import _common, _minimize_scalar

SOLVERS = ("brent_ref", "golden_log")
SPECTRA = ("gram", "svd")

# The reference's fixed approximation of Nakajima et al.'s tau_bar.
_TAU_BAR_FACTOR = 2.5129  # tau_bar = 2.5129 sqrt(alpha)


class EVBMFResult(NamedTuple):
  """Result of :func:`evbmf` (leading batch axes, if any, are kept).

  Attributes:
    sigma2: the estimated noise variance; shape=(...), float.
    rank: the number of retained components; shape=(...), int32.
    singular_values: the shrunk singular values, descending and zero beyond
      ``rank``; shape=(..., min(L, M)), float.
  """

  sigma2: jax.Array
  rank: jax.Array
  singular_values: jax.Array


class KnowledgeGain(NamedTuple):
  """Knowledge gain of one conv kernel (see :func:`knowledge_gain`).

  Attributes:
    input_gain: G of the mode-3 (input-channel) unfolding; shape=(...).
    output_gain: G of the mode-4 (output-channel) unfolding; shape=(...).
    input_condition: mapping condition kappa of mode 3 (0 at rank 0).
    output_condition: mapping condition kappa of mode 4 (0 at rank 0).
    input_rank: EVBMF rank of mode 3; int32.
    output_rank: EVBMF rank of mode 4; int32.
    gain: the layer score G-bar, the mean of the two gains.
  """

  input_gain: jax.Array
  output_gain: jax.Array
  input_condition: jax.Array
  output_condition: jax.Array
  input_rank: jax.Array
  output_rank: jax.Array
  gain: jax.Array


# -------------------------------------------------------------- unfoldings


def _unfold(kernel: jax.Array, axis: int) -> jax.Array:
  """``axis`` first, the rest flattened; explicit sizes, so that a kernel
  with a zero-sized axis unfolds too (a ``-1`` would be ambiguous)."""
  moved = jnp.moveaxis(kernel, axis, 0)
  return moved.reshape(moved.shape[0], math.prod(moved.shape[1:]))


def input_unfolding(kernel: jax.Array) -> jax.Array:
  """Mode-3 unfolding of a Flax ``(spatial..., in, out)`` kernel.

  Row ``i`` holds every weight that reads input channel ``i``; the result
  has shape ``(in, prod(spatial) * out)``. Extra leading axes are not
  allowed: vmap over them.
  """
  return _unfold(kernel, -2)


def output_unfolding(kernel: jax.Array) -> jax.Array:
  """Mode-4 unfolding of a Flax ``(spatial..., in, out)`` kernel.

  Row ``o`` holds the weights of output filter ``o``; the result has shape
  ``(out, prod(spatial) * in)``.
  """
  return _unfold(kernel, -1)


# ---------------------------------------------------------------- spectrum


def squared_singular_values(
    matrix: jax.Array, spectrum: str = "gram"
) -> jax.Array:
  """Squared singular values of ``(..., L, M)`` matrices, descending.

  ``spectrum="gram"`` takes the eigenvalues of the smaller Gram matrix (one
  matrix product and one symmetric eigensolve, several times cheaper than an
  SVD on CPU); ``"svd"`` squares ``jnp.linalg.svd(..., compute_uv=False)``.
  EVBMF only needs squared values, and the Gram route has an absolute
  error of about ``eps * gamma_1**2`` in each of them, i.e. the same order
  as an SVD's for every value above ``sqrt(eps) * gamma_1`` (docs/adas.md,
  "Numerics and the solver", discusses the small ones).
  """
  _common.check_choice("spectrum", spectrum, SPECTRA)
  matrix = matrix.astype(_common.stats_dtype(matrix.dtype))
  rows, cols = matrix.shape[-2:]
  if spectrum == "svd":
    return jnp.square(jnp.linalg.svd(matrix, compute_uv=False))
  if rows <= cols:
    gram = jnp.einsum("...ij,...kj->...ik", matrix, matrix,
                      precision=jax.lax.Precision.HIGHEST)
  else:
    gram = jnp.einsum("...ji,...jk->...ik", matrix, matrix,
                      precision=jax.lax.Precision.HIGHEST)
  eigenvalues = jnp.linalg.eigvalsh(gram)  # ascending
  return jnp.maximum(jnp.flip(eigenvalues, axis=-1), 0.0)


# ------------------------------------------------------------------ EVBMF


class _Geometry(NamedTuple):
  """Static (Python) constants of EVBMF for an L x M input."""

  rows: int  # L
  cols: int  # M
  n: int  # min(L, M)
  alpha: float  # L / M
  xubar: float  # (1 + tau_bar)(1 + alpha / tau_bar)
  k: int  # static upper bound on the EVB rank


def _geometry(rows: int, cols: int) -> _Geometry:
  alpha = rows / cols
  tau_bar = _TAU_BAR_FACTOR * math.sqrt(alpha)
  xubar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)  # x-bar
  k = min(math.ceil(rows / (1.0 + alpha)) - 1, rows)  # max rank H = L
  return _Geometry(rows, cols, min(rows, cols), alpha, xubar, k)


def _objective(sigma2, s2, geo: _Geometry):
  """The EVB free energy Omega(sigma^2) - n (see :func:`evbmf`)."""
  tiny = jnp.finfo(s2.dtype).tiny
  x = jnp.maximum(s2 / (geo.cols * sigma2), tiny)  # clamped: no log(0)
  above = x > geo.xubar
  shifted = x - (1.0 + geo.alpha)
  root = jnp.sqrt(jnp.maximum(shifted * shifted - 4.0 * geo.alpha, 0.0))
  tau = 0.5 * (shifted + root)  # tau(x)
  psi_above = ((x - tau) + jnp.log((tau + 1.0) / x)
               + geo.alpha * jnp.log(tau / geo.alpha + 1.0))  # psi0 + psi1
  # psi0 - 1 = (x - 1) - ln x, written with log1p so that the many terms
  # near x = 1 (the noise bulk) keep their precision in float32. The
  # constant n dropped from the sum does not move the minimiser.
  near_one = x > 0.5
  psi_below = jnp.where(
      near_one, (x - 1.0) - jnp.log1p(jnp.where(near_one, x - 1.0, 0.0)),
      x - 1.0 - jnp.log(x))
  total = jnp.sum(jnp.where(above, psi_above - 1.0, psi_below), axis=-1)
  return total + (geo.rows - geo.n) * jnp.log(sigma2)


def _bounds(s2, geo: _Geometry):
  """The reference's sigma^2 bracket (0-based: s[K] and s[K:])."""
  tiny = jnp.finfo(s2.dtype).tiny
  upper = jnp.sum(s2, axis=-1) / (geo.rows * geo.cols)
  lower = jnp.maximum(s2[..., geo.k] / (geo.cols * geo.xubar),
                      jnp.mean(s2[..., geo.k:], axis=-1) / geo.cols)
  return jnp.maximum(lower, tiny), upper  # lower >= tiny: no log(0)


def _evbmf_from_spectrum(s2, geo: _Geometry, solver: str) -> EVBMFResult:
  """EVBMF of one matrix given its squared singular values."""
  lower, upper = _bounds(s2, geo)
  valid = lower <= upper  # inverted bracket: rank 0, as the reference
  upper = jnp.maximum(upper, lower)
  fun = lambda sigma2: _objective(sigma2, s2, geo)
  if solver == "brent_ref":
    sigma2 = _minimize_scalar.brent_bounded(fun, lower, upper)
  else:
    sigma2 = _minimize_scalar.golden_log(fun, lower, upper)
  gamma = jnp.sqrt(s2)
  threshold = jnp.sqrt(geo.cols * sigma2 * geo.xubar)  # gamma_EVB
  kept = (gamma > threshold) & valid
  safe_gamma = jnp.where(kept, gamma, 1.0)
  q = 1.0 - (geo.rows + geo.cols) * sigma2 / safe_gamma**2
  disc = q * q - 4.0 * geo.rows * geo.cols * sigma2**2 / safe_gamma**4
  shrunk = 0.5 * safe_gamma * (q + jnp.sqrt(jnp.maximum(disc, 0.0)))
  shrunk = jnp.where(kept, shrunk, 0.0)
  return EVBMFResult(sigma2, jnp.sum(kept, dtype=jnp.int32), shrunk)


def evbmf(
    matrix: jax.Array,
    solver: str = "brent_ref",
    *,
    spectrum: str = "gram",
) -> EVBMFResult:
  r"""Empirical variational Bayes matrix factorisation (EVBMF) of a matrix.

  Estimates the noise variance :math:`\hat\sigma^2` of :math:`Y \in
  \mathbb{R}^{L \times M}` by minimising the EVB free energy (Nakajima et al.
  2013, with the reference's approximation of :math:`\bar x`)

  .. math::

    \Omega(\sigma^2) = \sum_h \psi_0(x_h) + \sum_{x_h > \bar x} \psi_1(x_h)
      + (L - n) \ln \sigma^2, \qquad x_h = \frac{\gamma_h^2}{M \sigma^2},

  over the reference's bracket, keeps the singular values above
  :math:`\gamma^{EVB} = \sqrt{M \hat\sigma^2 \bar x}` and shrinks them:

  .. math::

    \hat\gamma_h = \frac{\gamma_h}{2}\Big(1 - \frac{(L+M)\hat\sigma^2}
      {\gamma_h^2} + \sqrt{\Big(1 - \frac{(L+M)\hat\sigma^2}{\gamma_h^2}
      \Big)^2 - \frac{4 L M \hat\sigma^4}{\gamma_h^4}}\Big).

  Tall inputs are not transposed (the reference does not); where the
  bracket is inverted the rank is 0, as in the reference.

  Args:
    matrix: a ``(..., L, M)`` array; leading axes are batch axes.
    solver: ``"brent_ref"`` reproduces the reference's bounded Brent search
      (scipy's ``minimize_scalar(method="bounded")``, absolute tolerance
      ``1e-5``, fast path included); ``"golden_log"`` is a fixed 80-step
      golden-section search on :math:`\ln\sigma^2` with relative precision.
    spectrum: ``"gram"`` (default, fast) or ``"svd"``, see
      :func:`squared_singular_values`.

  Returns:
    An :class:`EVBMFResult` with the noise variance, the rank (int32) and
    the shrunk singular values, zero beyond the rank.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_adaptive._spectral import evbmf
    >>> y = jnp.zeros((4, 16)).at[jnp.arange(4), jnp.arange(4)].set(
    ...     jnp.array([20., 10., 5., 1.]))
    >>> result = evbmf(y)
    >>> int(result.rank), round(float(result.sigma2), 3)
    (2, 1.138)

  References:
    Nakajima, Tomioka, Sugiyama & Babacan, `Global Analytic Solution of
    Fully-observed Variational Bayesian Matrix Factorization
    <https://jmlr.org/papers/v14/nakajima13a.html>`_, JMLR 2013.
  """
  _common.check_choice("solver", solver, SOLVERS)
  _common.check_choice("spectrum", spectrum, SPECTRA)
  return _evbmf_jit(jnp.asarray(matrix), solver, spectrum)


def _empty_evbmf(matrix: jax.Array) -> EVBMFResult:
  """EVBMF of ``(..., L, M)`` matrices with L or M zero: nothing retained."""
  batch = matrix.shape[:-2]
  dtype = _common.stats_dtype(matrix.dtype)
  return EVBMFResult(jnp.zeros(batch, dtype), jnp.zeros(batch, jnp.int32),
                     jnp.zeros((*batch, min(matrix.shape[-2:])), dtype))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _evbmf_jit(matrix, solver, spectrum):
  if 0 in matrix.shape[-2:]:  # an empty matrix has no components: rank 0
    return _empty_evbmf(matrix)
  geo = _geometry(*matrix.shape[-2:])
  s2 = squared_singular_values(matrix, spectrum)
  core = lambda v: _evbmf_from_spectrum(v, geo, solver)
  for _ in range(s2.ndim - 1):
    core = jax.vmap(core)
  return core(s2)


def gain_and_condition(shrunk, rank, normaliser, p=1):
  """G and kappa of one unfolding from its shrunk values.

  Both are 0 at rank 0 (the reference's sentinel); every division is
  guarded so the unselected lanes carry no NaN either.
  """
  kept = jnp.arange(shrunk.shape[-1]) < rank[..., None]
  powered = jnp.where(kept, shrunk, 0.0) ** p
  top = jnp.max(powered, axis=-1)
  gain = _common.safe_divide(jnp.sum(powered, axis=-1), normaliser * top)
  smallest = jnp.min(jnp.where(kept, shrunk, jnp.inf), axis=-1)
  first = shrunk[..., 0]
  condition = _common.safe_divide(
      first, jnp.where(rank > 0, smallest, 0.0)) ** p
  has_rank = rank > 0
  return jnp.where(has_rank, gain, 0.0), jnp.where(has_rank, condition, 0.0)


# --------------------------------------------------------- knowledge gain


def check_p(p) -> None:
  """The exponent of G and kappa is 1 or 2 (arrays pass unchecked)."""
  _common.check_number_type("p", p)
  if _common.is_concrete_number(p) and p not in (1, 2):
    raise ValueError(f"`p` must be 1 or 2; got {p}.")


def _unfoldings_of(kernels: jax.Array):
  """Mode-3 and mode-4 unfoldings of ``(B, spatial..., in, out)`` kernels."""
  return jax.vmap(input_unfolding)(kernels), jax.vmap(output_unfolding)(
      kernels)


def knowledge_gains(
    kernels: Sequence[jax.Array],
    p: int = 1,
    solver: str = "brent_ref",
    *,
    transpose_tall: bool = False,
    spectrum: str = "gram",
) -> list[KnowledgeGain]:
  """Knowledge gains of many stacks of kernels, batched by unfolding shape.

  Each element of ``kernels`` has shape ``(B, spatial..., in, out)`` (``B``
  layers of the same shape). All unfoldings of equal (effective) shape,
  across kernels and modes, go through one batched spectrum and one
  vmapped EVBMF, so compile and run time grow with the number of distinct
  shapes, not with the number of layers.

  Args:
    kernels: sequence of ``(B, spatial..., in, out)`` arrays.
    p: the exponent of G and kappa (1 or 2).
    solver: ``"brent_ref"`` or ``"golden_log"``, see :func:`evbmf`.
    transpose_tall: transpose unfoldings with more rows than columns before
      EVBMF, keeping the row-count normaliser (the PyPI package's rule).
    spectrum: ``"gram"`` or ``"svd"``, see :func:`squared_singular_values`.

  Returns:
    One :class:`KnowledgeGain` per element of ``kernels``, each field of
    shape ``(B,)``.
  """
  _common.check_choice("solver", solver, SOLVERS)
  _common.check_choice("spectrum", spectrum, SPECTRA)
  kernels = [jnp.asarray(k) for k in kernels]
  if isinstance(p, int):
    return _knowledge_gains_jit(kernels, p, solver, transpose_tall, spectrum)
  return _knowledge_gains(kernels, p, solver, transpose_tall, spectrum)


def _knowledge_gains(kernels, p, solver, transpose_tall, spectrum):
  # (kernel index, mode) -> matrices, grouped by effective shape.
  groups = collections.defaultdict(list)
  results = {}
  for index, kernel in enumerate(kernels):
    for mode, unfolded in enumerate(_unfoldings_of(kernel)):
      rows = unfolded.shape[-2]
      if 0 in unfolded.shape[-2:]:  # a zero-sized axis: rank 0, G = 0
        zeros = jnp.zeros(unfolded.shape[:1],
                          _common.stats_dtype(unfolded.dtype))
        results[index, mode] = (zeros, zeros,
                                jnp.zeros(zeros.shape, jnp.int32))
        continue
      if transpose_tall and unfolded.shape[-2] > unfolded.shape[-1]:
        unfolded = jnp.swapaxes(unfolded, -1, -2)
      groups[unfolded.shape[-2:]].append((index, mode, rows, unfolded))
  for shape, members in groups.items():
    geo = _geometry(*shape)
    stacked = jnp.concatenate([m[3] for m in members], axis=0)
    s2 = squared_singular_values(stacked, spectrum)
    out = jax.vmap(lambda v, g=geo: _evbmf_from_spectrum(v, g, solver))(s2)
    normaliser = jnp.concatenate([
        jnp.full((m[3].shape[0],), m[2], out.singular_values.dtype)
        for m in members])
    gain, condition = gain_and_condition(
        out.singular_values, out.rank, normaliser, p)
    start = 0
    for index, mode, _, unfolded in members:
      stop = start + unfolded.shape[0]
      results[index, mode] = (gain[start:stop], condition[start:stop],
                              out.rank[start:stop])
      start = stop
  gains = []
  for index in range(len(kernels)):
    (g3, k3, r3), (g4, k4, r4) = results[index, 0], results[index, 1]
    gains.append(KnowledgeGain(g3, g4, k3, k4, r3, r4, 0.5 * (g3 + g4)))
  return gains


_knowledge_gains_jit = jax.jit(_knowledge_gains, static_argnums=(1, 2, 3, 4))


def knowledge_gain(
    kernel: jax.Array,
    p: int = 1,
    solver: str = "brent_ref",
    *,
    transpose_tall: bool = False,
    spectrum: str = "gram",
) -> KnowledgeGain:
  r"""Knowledge gain, mapping condition and rank of a Flax conv kernel.

  For the mode-3 (input) and mode-4 (output) unfoldings of a
  ``(spatial..., in, out)`` kernel, with :math:`\hat\gamma` the EVBMF-shrunk
  singular values, :math:`r` the EVBMF rank and :math:`N_d` the channel
  count of the mode (the paper's knowledge gain and mapping condition):

  .. math::

    G_d = \frac{1}{N_d} \sum_{h=1}^{r} \Big(\frac{\hat\gamma_h}
      {\hat\gamma_1}\Big)^p, \qquad
    \kappa_d = \Big(\frac{\hat\gamma_1}{\hat\gamma_r}\Big)^p, \qquad
    \bar G = \tfrac12 (G_3 + G_4).

  At rank 0 both G and kappa are 0. 1-D, 2-D and 3-D kernels (and 2-D
  dense kernels) are accepted; for stacked layers vmap over the leading
  axes.

  Args:
    kernel: a ``(spatial..., in, out)`` array.
    p: exponent, 1 (default) or 2.
    solver: ``"brent_ref"`` (reference parity) or ``"golden_log"``.
    transpose_tall: the PyPI package's convention for tall unfoldings.
    spectrum: ``"gram"`` (default, fast) or ``"svd"``.

  Returns:
    A :class:`KnowledgeGain` of scalars.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from optax_adaptive._spectral import knowledge_gain
    >>> he = jax.random.normal(jax.random.key(0), (3, 3, 64, 64)) * (
    ...     2 / (9 * 64)) ** 0.5
    >>> float(knowledge_gain(he).gain)  # random init is pure noise
    0.0

  References:
    Hosseini & Plataniotis, `AdaS <https://arxiv.org/abs/2006.06587>`_, 2020.
  """
  check_p(p)
  kernel = jnp.asarray(kernel)
  if kernel.ndim < 2:
    raise ValueError(
        f"`kernel` must have at least 2 dimensions; got shape {kernel.shape}.")
  (result,) = knowledge_gains(
      [kernel[None]], p, solver, transpose_tall=transpose_tall,
      spectrum=spectrum)
  return jax.tree.map(lambda x: x[0], result)
