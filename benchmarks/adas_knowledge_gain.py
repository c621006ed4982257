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
"""Knowledge gain of every conv kernel of a CIFAR ResNet-34: JAX vs NumPy.

The NumPy/SciPy side is the straightforward computation the AdaS reference
performs (adas.md §1.3-1.4): per unfolding one ``numpy.linalg.svd`` and one
``scipy.optimize.minimize_scalar(method="bounded")``. It doubles as the
reference implementation that ``tests/test_spectral.py`` compares against.

Run::

  python -m benchmarks.adas_knowledge_gain            # timing, ratio
  python -m benchmarks.adas_knowledge_gain --repeats 5
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import scipy.optimize

# ------------------------------------------------- NumPy/SciPy reference


def numpy_evbmf(y: np.ndarray, *, full_svd: bool = False):
  """EVBMF of adas.md §1.3 in NumPy/SciPy; returns (sigma2, rank, shrunk).

  ``full_svd=True`` also computes U and V as the reference code does (and
  throws them away); the default computes singular values only.
  """
  big_l, big_m = y.shape
  alpha = big_l / big_m
  tauubar = 2.5129 * math.sqrt(alpha)
  xubar = (1 + tauubar) * (1 + alpha / tauubar)
  if full_svd:
    s = np.linalg.svd(y, full_matrices=False)[1]
  else:
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

  if lower > upper:  # scipy raises; the reference records rank 0 (§1.3)
    return lower, 0, np.zeros((0,), s.dtype)
  sigma2 = scipy.optimize.minimize_scalar(
      objective, bounds=[lower, upper], method="bounded").x
  threshold = math.sqrt(big_m * sigma2 * xubar)
  rank = int(np.sum(s > threshold))
  g = s[:rank]
  q = 1 - (big_l + big_m) * sigma2 / g**2
  shrunk = g / 2 * (q + np.sqrt(q**2 - 4 * big_l * big_m * sigma2**2 / g**4))
  return sigma2, rank, shrunk


def numpy_gain(y: np.ndarray, p: int = 1, *, full_svd: bool = False):
  """(G, kappa, rank) of one unfolding, adas.md §1.4 (N = rows of ``y``)."""
  _, rank, d = numpy_evbmf(y, full_svd=full_svd)
  if rank == 0:
    return 0.0, 0.0, 0
  gain = float(np.sum((d / d.max()) ** p) / y.shape[0])
  return gain, float((d[0] / d[-1]) ** p), rank


def numpy_knowledge_gain(kernel: np.ndarray, p: int = 1, *,
                         full_svd: bool = False):
  """Both unfoldings of a Flax (spatial..., in, out) kernel, §1.2."""
  mode3 = np.moveaxis(kernel, -2, 0).reshape(kernel.shape[-2], -1)
  mode4 = np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1)
  return (numpy_gain(mode3, p, full_svd=full_svd),
          numpy_gain(mode4, p, full_svd=full_svd))
