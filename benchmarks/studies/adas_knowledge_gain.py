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
performs (docs/adas.md, "The method"): per unfolding one ``numpy.linalg.svd``
and one ``scipy.optimize.minimize_scalar(method="bounded")``. The tests check
values against their own copy, ``tests/_numpy_oracles.py``; this one also
builds the singular vectors, as the reference does, for its cost.

Run::

  python -m benchmarks.studies.adas_knowledge_gain            # timing, ratio
  python -m benchmarks.studies.adas_knowledge_gain --repeats 5
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import scipy.optimize

# ------------------------------------------------- NumPy/SciPy reference


def numpy_evbmf(y: np.ndarray, *, full_svd: bool = False):
  """EVBMF as the AdaS reference computes it; returns (sigma2, rank, shrunk).

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


def numpy_gain(y: np.ndarray, p: int = 1, *, full_svd: bool = False):
  """(G, kappa, rank) of one unfolding (N = rows of ``y``)."""
  _, rank, d = numpy_evbmf(y, full_svd=full_svd)
  if rank == 0:
    return 0.0, 0.0, 0
  gain = float(np.sum((d / d.max()) ** p) / y.shape[0])
  return gain, float((d[0] / d[-1]) ** p), rank


def numpy_knowledge_gain(kernel: np.ndarray, p: int = 1, *,
                         full_svd: bool = False):
  """Both unfoldings of a Flax (spatial..., in, out) kernel."""
  mode3 = np.moveaxis(kernel, -2, 0).reshape(kernel.shape[-2], -1)
  mode4 = np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1)
  return (numpy_gain(mode3, p, full_svd=full_svd),
          numpy_gain(mode4, p, full_svd=full_svd))


# ------------------------------------------------------------- benchmark


def resnet34_conv_shapes() -> list[tuple[int, int, int, int]]:
  """Flax (kh, kw, in, out) shapes of the 36 convs of a CIFAR ResNet-34.

  The paper's model (kuangliu/pytorch-cifar): a 3x3 stem to 64 channels,
  then [3, 4, 6, 3] basic blocks of widths 64-512, each with two 3x3 convs,
  plus a 1x1 shortcut conv where the width or the stride changes.
  """
  shapes, width = [(3, 3, 3, 64)], 64
  for out, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2),
                              (512, 3, 2)]:
    for block in range(blocks):
      block_stride = stride if block == 0 else 1
      shapes += [(3, 3, width, out), (3, 3, out, out)]
      if block_stride != 1 or width != out:
        shapes.append((1, 1, width, out))
      width = out
  return shapes


def resnet34_kernels(seed: int = 0) -> list[np.ndarray]:
  """He-normal kernels with a rank-8 component (like partly trained ones)."""
  rng = np.random.default_rng(seed)
  kernels = []
  for shape in resnet34_conv_shapes():
    fan_in = shape[0] * shape[1] * shape[2]
    noise = rng.standard_normal(shape) * math.sqrt(2 / fan_in)
    left = rng.standard_normal((shape[0] * shape[1] * shape[2], 8))
    right = rng.standard_normal((8, shape[3]))
    structure = (left @ right).reshape(shape) * 2 / math.sqrt(fan_in * 8)
    kernels.append((noise + structure).astype(np.float32))
  return kernels


def _time(fn, repeats):
  """(median seconds, last result) of ``repeats`` calls."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times)), out


def _worst(ours, ref):
  """Largest |G - G_ref| and rank mismatches over every unfolding."""
  worst_gain, rank_mismatch = 0.0, 0
  for kg, ((g3, _, r3), (g4, _, r4)) in zip(ours, ref):
    worst_gain = max(worst_gain, abs(float(kg.input_gain[0]) - g3),
                     abs(float(kg.output_gain[0]) - g4))
    rank_mismatch += (int(kg.input_rank[0]) != r3) + (
        int(kg.output_rank[0]) != r4)
  return worst_gain, rank_mismatch


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed repeats of the JAX side (median)")
  parser.add_argument("--numpy-repeats", type=int, default=1)
  parser.add_argument("--full-svd", action="store_true",
                      help="NumPy also computes U and V, as the reference")
  parser.add_argument("--spectrum", default="gram", choices=("gram", "svd"))
  args = parser.parse_args(argv)

  import jax

  from optax_adaptive import _spectral

  kernels = resnet34_kernels()
  stacked = [jax.device_put(k[None]) for k in kernels]

  def run_jax():
    out = _spectral.knowledge_gains(stacked, spectrum=args.spectrum)
    jax.block_until_ready(out)
    return out

  def run_numpy(dtype=np.float32):
    return [numpy_knowledge_gain(k.astype(dtype), full_svd=args.full_svd)
            for k in kernels]

  start = time.perf_counter()
  ours = run_jax()
  compile_s = time.perf_counter() - start
  jax_s, ours = _time(run_jax, args.repeats)
  numpy_s, ref32 = _time(run_numpy, args.numpy_repeats)
  # The reference hands float32 singular values to scipy (a float32
  # objective); float64 (the float32 kernels cast) is the exact target.
  ref64 = run_numpy(np.float64)
  n_shapes = len({s for k in kernels for s in (
      (k.shape[-2], k.size // k.shape[-2]),
      (k.shape[-1], k.size // k.shape[-1]))})
  print(f"ResNet-34 (CIFAR): {len(kernels)} convs, {2 * len(kernels)}"
        f" unfoldings, {n_shapes} distinct unfolding shapes;"
        f" jax {jax.__version__} on {jax.devices()[0].platform}")
  print(f"optax_adaptive knowledge_gains (spectrum={args.spectrum}):"
        f" {jax_s:.3f} s (first call incl. compile {compile_s:.1f} s)")
  print(f"NumPy/SciPy ({'full SVD' if args.full_svd else 'values-only SVD'}"
        f" + minimize_scalar): {numpy_s:.3f} s")
  print(f"ratio jax/numpy: {jax_s / numpy_s:.3f}x (target <= 0.5x)")
  for name, ref in (("float32 NumPy/SciPy", ref32),
                    ("float64 NumPy/SciPy", ref64)):
    worst_gain, rank_mismatch = _worst(ours, ref)
    print(f"vs {name}: max |G - G_ref| = {worst_gain:.2e}, rank"
          f" mismatches: {rank_mismatch}/{2 * len(kernels)}")


if __name__ == "__main__":
  main()
