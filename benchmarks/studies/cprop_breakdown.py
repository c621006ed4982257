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

  python -m benchmarks.studies.cprop_breakdown [--rounds 41]

Times ``optax.adam``, the library's ``cprop_adam`` and stripped-down
copies of its update on the 9.9M-parameter tree of ``benchmarks.overhead``
as paired per-round ratios (``benchmarks.overhead._timing.paired_ratios``):

* ``no mean scale``: the same update without the ``mean_scale`` reduction;
* ``no mean scale, jnp.tanh``: that, with XLA's general ``tanh`` instead of
  the library's tanh for non-negative arguments (what the library's own
  tanh saves);
* ``no CDF``: also without the z-test (scale = min(1, |m| / sqrt(nu)));
* ``scale 1``: only the memory traffic of the third moment (scale = 1).

The stripped copies are diagnostics, not optimizers: they show how much of
the update's overhead is memory traffic, how much the CDF and how much the
reduction (docs/results.md, "CProp on XLA's loops").
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_adaptive as oa
from benchmarks.overhead import _timing
from optax_adaptive import _cprop_stats

VARIANTS = ("no mean scale", "no mean scale, jnp.tanh", "no CDF", "scale 1")


@contextlib.contextmanager
def _general_tanh():
  """Traces CProp's conformity with ``jnp.tanh`` instead of its own tanh."""
  own = _cprop_stats.tanh_of_nonnegative
  _cprop_stats.tanh_of_nonnegative = jnp.tanh
  try:
    yield
  finally:
    _cprop_stats.tanh_of_nonnegative = own


def stripped_cprop_adam(variant: str, learning_rate: float = 1e-3,
                        eps: float = 1e-8) -> optax.GradientTransformation:
  """``cprop_adam`` at its defaults with parts of the update removed."""
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  base = oa.cprop_adam(learning_rate)

  def update_fn(grads, state, params=None):
    del params
    count = optax.safe_int32_increment(state.count)
    k = _cprop_stats.constants(count, 0.999, 1.0, 1e-8, "bft", jnp.float32)
    k1 = _cprop_stats.ema_scalars(0.9, count, jnp.float32)
    k2 = _cprop_stats.ema_scalars(0.999, count, jnp.float32)

    def leaf(g, mu, nu, m):
      mu = _cprop_stats.ema(mu, g, k1)
      nu = _cprop_stats.ema(nu, g * g, k2)
      m = _cprop_stats.ema(m, g, k)
      if variant == "scale 1":
        s = jnp.ones_like(m)
      elif variant == "no CDF":
        s = jnp.minimum(jnp.abs(m) * jax.lax.rsqrt(nu + eps), 1.0)
      elif variant == "no mean scale, jnp.tanh":
        with _general_tanh():
          s = _cprop_stats.scale(_cprop_stats.conformity(m, nu, k, "bft"), k)
      else:
        s = _cprop_stats.scale(_cprop_stats.conformity(m, nu, k, "bft"), k)
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


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=41,
                      help="paired rounds"
                      " (benchmarks.overhead._timing.paired_ratios)")
  rounds = parser.parse_args(argv).rounds
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
  stats = _timing.paired_ratios(fns, "optax.adam", rounds=rounds)
  print("| update (9.9M params) | time (ms) | vs optax.adam (q1-q3) |")
  print("|---|---:|---:|")
  for name, st in stats.items():
    q1, q3 = st.quartiles
    print(f"| {name} | {st.ms:.2f} | {st.median:.2f}x ({q1:.2f}-{q3:.2f}) |")
  own_vs_general = (stats["no mean scale"].ratios
                    / stats["no mean scale, jnp.tanh"].ratios)
  q1, q3 = np.percentile(own_vs_general, [25, 75])
  print(f"\nown tanh / jnp.tanh, paired: {np.median(own_vs_general):.3f}"
        f" ({q1:.3f}-{q3:.3f})")
  print(f"\nMachine: {_timing.machine_info()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
