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
"""The cost of the recipes of docs/choosing.md over their inner optimizer.

Run through ``python -m benchmarks.overhead --methods recipes``. Cases:
``chain(prodigy(), autodrop(k))`` against ``prodigy()`` alone, on the update
of the 10M-parameter tree (consecutive steps, window ends included) and on
the full mnist1d train step; and ``prodigy()`` against ``optax.adam``, for
scale. No targets: these rows are what the choice costs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import contrib

import optax_adaptive as oa
from benchmarks.overhead import _timing

WINDOW = 64


def _recipe() -> optax.GradientTransformation:
  return optax.chain(contrib.prodigy(), oa.autodrop(window_size=WINDOW))


def state_bytes_per_param(tx: optax.GradientTransformation,
                          params) -> float:
  """Bytes of the optimizer state per parameter (all leaves)."""
  state = jax.eval_shape(tx.init, params)
  total = sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
              for x in jax.tree.leaves(state))
  return total / _timing.tree_size(params)


def _update_rows(quick: bool) -> list[dict]:
  params = _timing.param_tree_10m()
  grads = jax.tree.map(lambda p: p * 0.01 + 1e-3, params)
  txs = {"adam": optax.adam(1e-3), "prodigy": contrib.prodigy(),
         "recipe": _recipe()}
  fns = {n: _timing.update_closure(tx, params, grads) for n, tx in txs.items()}
  stats = _timing.paired_ratios(fns, "prodigy",
                                **_timing.paired_rounds(quick))
  adam_stats = _timing.paired_ratios(
      {"adam": fns["adam"], "prodigy": fns["prodigy"]}, "adam",
      **_timing.paired_rounds(quick))
  size = f"{_timing.tree_size(params) / 1e6:.1f}M params"
  memory = {n: state_bytes_per_param(tx, params) for n, tx in txs.items()}
  return [
      _timing.ratio_row(
          "recipes", f"update, prodigy(), {size}, {memory['prodigy']:.0f} "
          f"B/param state (adam: {memory['adam']:.0f})",
          adam_stats["prodigy"], adam_stats["adam"], "optax.adam", None),
      _timing.ratio_row(
          "recipes", f"update, chain(prodigy(), autodrop(k={WINDOW})), "
          f"consecutive steps, {size}, {memory['recipe']:.0f} B/param state",
          stats["recipe"], stats["prodigy"], "prodigy()", None),
  ]


def _train_step_rows(quick: bool) -> list[dict]:
  fns = {"prodigy": _timing.mnist1d_train_step(contrib.prodigy()),
         "recipe": _timing.mnist1d_train_step(_recipe())}
  stats = _timing.paired_ratios(fns, "prodigy",
                                **_timing.paired_rounds(quick))
  return [_timing.ratio_row(
      "recipes", f"train step, chain(prodigy(), autodrop(k={WINDOW})), "
      "mnist1d CNN1D b=128", stats["recipe"], stats["prodigy"], "prodigy()",
      None)]


def rows(quick: bool) -> list[dict]:
  return _update_rows(quick) + _train_step_rows(quick)
