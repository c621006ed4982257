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
"""Where the time of the fused ``cprop_adam`` update goes.

Usage::

  python -m benchmarks.cprop_breakdown

Times ``optax.adam``, the library's ``cprop_adam`` and three stripped-down
copies of its update on the 9.9M-parameter tree of ``benchmarks.overhead``,
interleaved in one run:

* ``no mean scale``: the same update without the ``mean_scale`` reduction;
* ``no CDF``: also without the z-test (scale = min(1, |m| / sqrt(nu)));
* ``scale 1``: only the memory traffic of the third moment (scale = 1).

The stripped copies are diagnostics, not optimizers: they show how much of
the overhead is memory traffic, how much the CDF and how much the reduction.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import optax

import optax_adaptive as oa
from benchmarks import _timing
from optax_adaptive import _cprop

VARIANTS = ("no mean scale", "no CDF", "scale 1")


def stripped_cprop_adam(variant: str, learning_rate: float = 1e-3,
                        eps: float = 1e-8) -> optax.GradientTransformation:
  """``cprop_adam`` at its defaults with parts of the update removed."""
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  base = oa.cprop_adam(learning_rate)

  def update_fn(grads, state, params=None):
    del params
    count = optax.safe_int32_increment(state.count)
    k = _cprop._constants(count, 0.999, 1.0, 1e-8, "bft", jnp.float32)
    k1 = _cprop._constants(count, 0.9, 0.0, 0.0, "bft", jnp.float32)
    k2 = _cprop._constants(count, 0.999, 0.0, 0.0, "bft", jnp.float32)

    def leaf(g, mu, nu, m):
      mu = _cprop._ema(mu, g, k1.beta, k1.one_minus_beta)
      nu = _cprop._ema(nu, g * g, k2.beta, k2.one_minus_beta)
      m = _cprop._ema(m, g, k.beta, k.one_minus_beta)
      if variant == "scale 1":
        s = jnp.ones_like(m)
      elif variant == "no CDF":
        s = jnp.minimum(jnp.abs(m) * jax.lax.rsqrt(nu + eps), 1.0)
      else:
        s = _cprop._scale(_cprop._conformity(m, nu, k, "bft"), k)
      adam = (mu * k1.inv_bias_correction) / (
          jnp.sqrt(nu * k2.inv_bias_correction) + eps)
      return -learning_rate * adam * s, mu, nu, m

    treedef = jax.tree.structure(grads)
    flat = treedef.flatten_up_to
    out = [leaf(*args) for args in zip(
        flat(grads), flat(state.mu), flat(state.nu), flat(state.m),
        strict=True)]
    updates, mu, nu, m = (treedef.unflatten([o[i] for o in out])
                          for i in range(4))
    return updates, state._replace(count=count, mu=mu, nu=nu, m=m)

  return optax.GradientTransformation(base.init, update_fn)


def main() -> int:
  params = _timing.param_tree_10m()
  grads = jax.tree.map(
      lambda p: jax.random.normal(jax.random.key(1), p.shape, p.dtype),
      params)
  fns = {
      "optax.adam": _timing.update_closure(optax.adam(1e-3), params, grads),
      "cprop_adam": _timing.update_closure(oa.cprop_adam(1e-3), params,
                                           grads),
  }
  for variant in VARIANTS:
    fns[variant] = _timing.update_closure(stripped_cprop_adam(variant),
                                          params, grads)
  ms = _timing.interleaved_ms(fns, rounds=9, min_round_s=0.25)
  print("| update (9.9M params) | time (ms) | vs optax.adam |")
  print("|---|---:|---:|")
  for name, t in ms.items():
    print(f"| {name} | {t:.2f} | {t / ms['optax.adam']:.2f}x |")
  print(f"\nMachine: {_timing.machine_info()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
