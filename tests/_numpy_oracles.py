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
"""NumPy/SciPy oracles of AdaS's spectral metrics, for the tests.

The straightforward computation of the AdaS reference code: one
``numpy.linalg.svd`` and one ``scipy.optimize.minimize_scalar(
method="bounded")`` per unfolding, in float64. The benchmark
``benchmarks/studies/adas_knowledge_gain.py`` times its own copy, which
also builds the singular vectors as the reference does.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.optimize


def numpy_evbmf(y: np.ndarray):
  """EVBMF (Nakajima et al. 2013, with the AdaS reference's approximations)
  in NumPy/SciPy: returns (sigma2, rank, shrunk singular values)."""
  big_l, big_m = y.shape
  alpha = big_l / big_m
  tauubar = 2.5129 * math.sqrt(alpha)
  xubar = (1 + tauubar) * (1 + alpha / tauubar)
  s = np.linalg.svd(y, compute_uv=False)
  n = s.shape[0]
  k = min(math.ceil(big_l / (1 + alpha)) - 1, big_l)
  upper = np.sum(s**2) / (big_l * big_m)
  lower = max(s[k] ** 2 / (big_m * xubar), np.mean(s[k:] ** 2) / big_m)

  def objective(sigma2):
    x = s**2 / (big_m * sigma2)
    z1 = x[x > xubar]
    z2 = x[x <= xubar]
    tau_z1 = 0.5 * (z1 - (1 + alpha)
                    + np.sqrt((z1 - (1 + alpha)) ** 2 - 4 * alpha))
    return (np.sum(z2 - np.log(z2)) + np.sum(z1 - tau_z1)
            + np.sum(np.log((tau_z1 + 1) / z1))
            + alpha * np.sum(np.log(tau_z1 / alpha + 1))
            + (big_l - n) * np.log(sigma2))

  if lower > upper:  # scipy raises; the reference records rank 0
    return lower, 0, np.zeros((0,), s.dtype)
  sigma2 = scipy.optimize.minimize_scalar(
      objective, bounds=[lower, upper], method="bounded").x
  threshold = math.sqrt(big_m * sigma2 * xubar)
  rank = int(np.sum(s > threshold))
  g = s[:rank]
  q = 1 - (big_l + big_m) * sigma2 / g**2
  shrunk = g / 2 * (q + np.sqrt(q**2 - 4 * big_l * big_m * sigma2**2 / g**4))
  return sigma2, rank, shrunk


def numpy_gain(y: np.ndarray, p: int = 1):
  """(G, kappa, rank) of one unfolding (N = rows of ``y``)."""
  _, rank, d = numpy_evbmf(y)
  if rank == 0:
    return 0.0, 0.0, 0
  gain = float(np.sum((d / d.max()) ** p) / y.shape[0])
  return gain, float((d[0] / d[-1]) ** p), rank


def numpy_knowledge_gain(kernel: np.ndarray, p: int = 1):
  """(G, kappa, rank) of both unfoldings of a ``(spatial..., in, out)``
  kernel: mode 3 (input channels), then mode 4 (output channels)."""
  mode3 = np.moveaxis(kernel, -2, 0).reshape(kernel.shape[-2], -1)
  mode4 = np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1)
  return numpy_gain(mode3, p), numpy_gain(mode4, p)
