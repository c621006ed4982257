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

Run through ``python -m benchmarks.overhead --methods cprop``. The update
targets are those of XLA:CPU's loops, which write each output array in its
own loop (docs/results.md, "CProp on XLA's loops").
"""

from __future__ import annotations

import jax
import optax

import optax_adaptive as oa
from benchmarks.overhead import _timing

UPDATE_TARGETS = {
    "cprop_adam (fused)": 2.0,
    "cprop(optax.adam)": 2.3,
    "cprop_adam (fused), track_mean_scale=False": 2.0,
    "cprop(optax.adam), track_mean_scale=False": 2.3,
}
TRAIN_STEP_TARGET = 1.10


def update_rows(quick: bool) -> list[dict]:
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
  stats = _timing.paired_ratios(fns, "optax.adam",
                                **_timing.paired_rounds(quick))
  return [
      _timing.ratio_row("cprop", f"update, {name}, {size / 1e6:.1f}M params",
                        stats[name], stats["optax.adam"], "optax.adam", target)
      for name, target in UPDATE_TARGETS.items()
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
  return update_rows(quick) + _train_step_rows(quick)
