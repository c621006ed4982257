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
"""CProp against Adam on one large leaf: the memory-bandwidth-bound regime.

Usage::

  python -m benchmarks.studies.cprop_single_leaf [--sizes 10000000,100000000]

The realistic 10M-parameter tree of ``benchmarks.overhead`` has ~40 leaves,
so on a GPU its update time is mostly kernel launches. One large leaf shows
what the fused update costs when only memory traffic counts: Adam moves 6
parameter-sized arrays per step (reads g, mu, nu; writes mu, nu, update),
the fused ``cprop_adam`` at least 8 (also reads and writes CProp's ``m``),
so 8 / 6 = 1.33x is the floor there.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import optax_adaptive as oa
from benchmarks.overhead import _timing


def closures(n: int) -> dict[str, Callable[[], Any]]:
  """One update per call of each optimizer on one leaf of ``n`` floats
  (:func:`benchmarks.overhead._timing.update_closure`)."""
  params = {"w": jax.random.normal(jax.random.key(0), (n,), jnp.float32)}
  grads = {"w": jax.random.normal(jax.random.key(1), (n,), jnp.float32)}
  return {
      "adam": _timing.update_closure(optax.adam(1e-3), params, grads),
      "cprop_adam": _timing.update_closure(oa.cprop_adam(1e-3), params,
                                           grads),
      "cprop(adam)": _timing.update_closure(oa.cprop(optax.adam(1e-3)),
                                            params, grads),
  }


def ratios(n: int, rounds: int = 9) -> dict[str, float]:
  """Milliseconds per update of each optimizer on one leaf of ``n`` floats."""
  return _timing.interleaved_ms(closures(n), rounds=rounds, min_round_s=0.1)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="10000000,100000000",
                      help="comma-separated leaf sizes")
  args = parser.parse_args(argv)
  for n in (int(s) for s in args.sizes.split(",")):
    ms = ratios(n)
    print(f"n={n}: " + ", ".join(
        f"{name} {t:.3f} ms ({t / ms['adam']:.2f}x)"
        for name, t in ms.items()))
  print(f"Machine: {_timing.machine_info()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
