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
"""CProp's overhead: update of a 10M-parameter tree and a full train step.

Run through ``python -m benchmarks.overhead --methods cprop``. On a CPU the
updates run on the library's fused kernels where they were built
(optax_adaptive/_cpu_kernels.py); the rows marked "XLA loops" trace the same
updates without them (what an install without a C++ compiler runs), for
information, with no target.
"""

from __future__ import annotations

import jax
import optax

import optax_adaptive as oa
from benchmarks import _timing

UPDATE_TARGETS = {
    "cprop_adam (fused)": 1.5,
    "cprop(optax.adam)": 2.0,
    "cprop_adam (fused), track_mean_scale=False": 1.5,
    "cprop(optax.adam), track_mean_scale=False": 2.0,
}
TRAIN_STEP_TARGET = 1.10
XLA_LOOPS = " (XLA loops)"


def _update_rows(quick: bool) -> list[dict]:
  params = _timing.param_tree_10m()
  grads = jax.tree.map(lambda p: p * 0.01 + 1e-3, params)
  size = _timing.tree_size(params)
  fns = {
      "optax.adam": _timing.update_closure(optax.adam(1e-3), params, grads),
      "cprop(optax.adam)": _timing.update_closure(
          oa.cprop(optax.adam(1e-3)), params, grads),
      "cprop_adam (fused)": _timing.update_closure(
          oa.cprop_adam(1e-3), params, grads),
      "cprop_adam (fused), track_mean_scale=False": _timing.update_closure(
          oa.cprop_adam(1e-3, track_mean_scale=False), params, grads),
      "cprop(optax.adam), track_mean_scale=False": _timing.update_closure(
          oa.cprop(optax.adam(1e-3), track_mean_scale=False), params, grads),
  }
  if jax.default_backend() == "cpu":
    for name in ("cprop_adam (fused)", "cprop(optax.adam)"):
      tx = (oa.cprop_adam(1e-3) if name.startswith("cprop_adam")
            else oa.cprop(optax.adam(1e-3)))
      fns[name + XLA_LOOPS] = _timing.xla_loops_update_closure(
          tx, params, grads)
  stats = _timing.paired_ratios(fns, "optax.adam",
                                **_timing.paired_rounds(quick))
  targets = dict(UPDATE_TARGETS)
  targets.update({name: None for name in fns if name.endswith(XLA_LOOPS)})
  return [
      _timing.ratio_row("cprop", f"update, {name}, {size / 1e6:.1f}M params",
                        stats[name], stats["optax.adam"], "optax.adam", target)
      for name, target in targets.items()
  ]


def _train_step_rows(quick: bool) -> list[dict]:
  fns = {
      "optax.adam": _timing.mnist1d_train_step(optax.adam(1e-3)),
      "cprop_adam": _timing.mnist1d_train_step(oa.cprop_adam(1e-3)),
  }
  stats = _timing.paired_ratios(fns, "optax.adam",
                                **_timing.paired_rounds(quick))
  return [_timing.ratio_row(
      "cprop", "train step, cprop_adam, mnist1d CNN1D b=128",
      stats["cprop_adam"], stats["optax.adam"], "optax.adam",
      TRAIN_STEP_TARGET)]


def rows(quick: bool) -> list[dict]:
  return _update_rows(quick) + _train_step_rows(quick)
