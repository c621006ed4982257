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
"""Float32 knowledge gains against the float64 NumPy/SciPy reference.

Random rank-1..5 plus noise matrices (noise std 0.1, 0.03 or 0.01, the
matrices of ``tests/test_spectral.py``), 40 per shape. For each shape it
prints the largest |G - G_ref| and the rank mismatches of three float32
pipelines, to separate the two error sources:

* ``gram32``: the default (Gram eigenvalues, float32 Brent search);
* ``svd32``: ``spectrum="svd"`` (float32 SVD, float32 Brent search);
* ``s64->32``: the float64 spectrum rounded to float32, float32 Brent
  search: the error of the scalar stage alone.

Run::

  python -m benchmarks.studies.adas_float32_accuracy
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.studies.adas_knowledge_gain import numpy_evbmf
from optax_adaptive import _spectral

SHAPES = [(8, 72), (24, 24), (16, 48), (48, 16), (32, 288), (64, 576),
          (64, 27)]


def _random_matrix(rng, rows, cols):
  rank = int(rng.integers(1, 6))
  std = float(rng.choice([0.1, 0.03, 0.01]))
  return (rng.standard_normal((rows, rank)) @ rng.standard_normal(
      (rank, cols)) / np.sqrt(cols) + std * rng.standard_normal((rows, cols)))


def _gains(s2, shape):
  geo = _spectral._geometry(*shape)
  evbmf = jax.vmap(
      lambda v: _spectral._evbmf_from_spectrum(v, geo, "brent_ref"))
  out = evbmf(s2)
  gain, _ = _spectral.gain_and_condition(out.singular_values, out.rank,
                                         shape[0])
  return np.asarray(gain), np.asarray(out.rank)


def main():
  worst = {}
  for shape in SHAPES:
    rng = np.random.default_rng(7 * shape[0] + shape[1])
    matrices = np.stack([_random_matrix(rng, *shape) for _ in range(40)])
    y32 = jnp.asarray(matrices, jnp.float32)
    spectra = {
        "gram32": _spectral.squared_singular_values(y32, "gram"),
        "svd32": _spectral.squared_singular_values(y32, "svd"),
        "s64->32": jnp.asarray(
            np.linalg.svd(matrices, compute_uv=False) ** 2, jnp.float32),
    }
    ours = {name: _gains(s2, shape) for name, s2 in spectra.items()}
    ref = []
    for y in matrices:
      _, rank, shrunk = numpy_evbmf(y)
      ref.append((shrunk.sum() / shrunk.max() / shape[0] if rank else 0.0,
                  rank))
    ref_gain = np.asarray([g for g, _ in ref])
    ref_rank = np.asarray([r for _, r in ref])
    line = []
    for name, (gain, rank) in ours.items():
      err = float(np.max(np.abs(gain - ref_gain)))
      worst[name] = max(worst.get(name, 0.0), err)
      off = int(np.sum(rank != ref_rank))
      line.append(f"{name} {err:.1e} (ranks off {off})")
    print(f"{shape}: " + ", ".join(line), flush=True)
  print("worst: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))


if __name__ == "__main__":
  main()
