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
"""AutoDrop's overhead on top of SGD with momentum.

Run through ``python -m benchmarks.overhead --methods autodrop``. Cases: the
update of a 10M-parameter tree on an ordinary step and on a window-end step
(the window position is pinned inside the jitted step), the two amortised
over a 64-step window, and the full mnist1d train step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_adaptive as oa
from benchmarks.overhead import _timing

WINDOW = 64
ORDINARY_TARGET = 1.6
AMORTISED_TARGET = 1.7
TRAIN_STEP_TARGET = 1.05


def _base() -> optax.GradientTransformation:
  return optax.sgd(0.1, momentum=0.9)


def _chain() -> optax.GradientTransformation:
  return optax.chain(_base(), oa.autodrop(window_size=WINDOW))


def _pinned_update_closure(
    tx: optax.GradientTransformation, params: Any, grads: Any, position: int
) -> Callable[[], Any]:
  """Like ``_timing.update_closure``, with the window position pinned."""

  def update_fn(state, g, p):
    base_state, drop_state = state
    state = (base_state,
             drop_state._replace(window_step=jnp.asarray(position, jnp.int32)))
    updates, state = tx.update(g, state, p)
    return state, updates

  update = jax.jit(update_fn, donate_argnums=0)
  carry = {"state": jax.jit(tx.init)(params)}

  def step():
    carry["state"], updates = update(carry["state"], grads, params)
    return updates

  return step


def extra_state_bytes_per_param(params: Any) -> float:
  """Bytes of AutoDrop's state per parameter (its params-shaped buffers)."""
  state = jax.eval_shape(oa.autodrop(window_size=WINDOW).init, params)
  total = sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
              for x in jax.tree.leaves(state))
  return total / _timing.tree_size(params)


def update_rows(quick: bool) -> list[dict]:
  params = _timing.param_tree_10m()
  grads = jax.tree.map(lambda p: p * 0.01 + 1e-3, params)
  size = _timing.tree_size(params)
  fns = {
      "sgd": _timing.update_closure(_base(), params, grads),
      "ordinary": _pinned_update_closure(_chain(), params, grads, 1),
      "window_end": _pinned_update_closure(_chain(), params, grads,
                                           WINDOW - 1),
      "natural": _timing.update_closure(_chain(), params, grads),
  }
  stats = _timing.paired_ratios(fns, "sgd", **_timing.paired_rounds(quick))
  stats["amortised"] = _timing.RatioStats(
      ratios=((WINDOW - 1) * stats["ordinary"].ratios
              + stats["window_end"].ratios) / WINDOW,
      ms=((WINDOW - 1) * stats["ordinary"].ms + stats["window_end"].ms)
      / WINDOW)
  memory = extra_state_bytes_per_param(params)
  label = f"{size / 1e6:.1f}M params, +{memory:.0f} B/param state"
  cases = [
      ("ordinary step", "ordinary", ORDINARY_TARGET),
      ("window-end step", "window_end", None),
      (f"amortised over k={WINDOW} (from the two above)", "amortised",
       AMORTISED_TARGET),
      (f"consecutive steps, k={WINDOW}", "natural", AMORTISED_TARGET),
  ]
  return [
      _timing.ratio_row("autodrop", f"update, {case}, {label}", stats[name],
                        stats["sgd"], "sgd(momentum=0.9)", target)
      for case, name, target in cases
  ]


def _train_step_rows(quick: bool) -> list[dict]:
  fns = {
      "sgd": _timing.mnist1d_train_step(_base()),
      "autodrop": _timing.mnist1d_train_step(_chain()),
  }
  stats = _timing.paired_ratios(fns, "sgd", **_timing.paired_rounds(quick))
  return [_timing.ratio_row(
      "autodrop",
      f"train step, chain(sgd, autodrop(k={WINDOW})), mnist1d CNN1D b=128",
      stats["autodrop"], stats["sgd"], "sgd(momentum=0.9)",
      TRAIN_STEP_TARGET)]


def rows(quick: bool) -> list[dict]:
  return update_rows(quick) + _train_step_rows(quick)
