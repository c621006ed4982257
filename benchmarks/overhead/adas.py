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
"""AdaS's overhead: one mnist1d CNN epoch, with and without the epoch end.

An epoch is every batch of the mnist1d training split (batch 128) through
a jitted train step of :class:`benchmarks.harness.models.CNN1D`. The base is the
same epoch with optax's SGD-momentum (the per-step optimizer AdaS uses);
AdaS adds its per-layer rates to each step and, once per epoch, the
knowledge gain of every conv kernel (in the epoch's last ``update``, flagged
with ``end_of_epoch`` or counted with ``steps_per_epoch``).

Run through ``python -m benchmarks.overhead --methods adas``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.harness import data, models
from benchmarks.overhead import _timing
from optax_adaptive import _adas

TARGET = 1.03  # epoch end at most 3% of an epoch
BATCH = 128


def _epoch_closure(tx, flag_last: bool):
  """Zero-argument closure training one epoch; ``flag_last`` passes
  ``end_of_epoch`` to every update, True on the last."""
  ds = data.mnist1d()
  model = models.CNN1D(rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  params = nnx.as_pure(params)
  n_batches = len(ds.y_train) // BATCH
  order = np.random.default_rng(0).permutation(len(ds.y_train))
  order = order[: n_batches * BATCH].reshape(n_batches, BATCH)
  xs = jax.device_put(ds.x_train[order])
  ys = jax.device_put(ds.y_train[order])

  def loss_fn(p, x, y):
    logits = nnx.merge(graphdef, p)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  last = jnp.arange(n_batches) == n_batches - 1

  @jax.jit
  def epoch(p, state):
    def step(carry, batch):
      p, state = carry
      x, y, is_last = batch
      grads = jax.grad(loss_fn)(p, x, y)
      flag = {"end_of_epoch": is_last} if flag_last else {}
      updates, state = tx.update(grads, state, p, **flag)
      return (optax.apply_updates(p, updates), state), None
    (p, state), _ = jax.lax.scan(step, (p, state), (xs, ys, last))
    return p, state

  carry = {"params": params, "state": tx.init(params)}

  def run():
    carry["params"], carry["state"] = epoch(carry["params"], carry["state"])
    return carry["params"]

  return run, n_batches


def rows(quick: bool) -> list[dict]:
  sgd = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.03, 0.9))
  base, n_batches = _epoch_closure(sgd, flag_last=False)
  fns = {
      "optax sgd-momentum epoch": base,
      "adas, update(end_of_epoch=)": _epoch_closure(_adas.adas(), True)[0],
      "adas(steps_per_epoch)": _epoch_closure(
          _adas.adas(steps_per_epoch=n_batches), False)[0],
  }
  base = "optax sgd-momentum epoch"
  stats = _timing.paired_ratios(fns, base, **_timing.paired_rounds(quick))
  return [
      _timing.ratio_row(
          "adas", f"mnist1d CNN1D epoch ({n_batches} steps, b={BATCH}), {name}",
          stats[name], stats[base], base, TARGET)
      for name in ("adas, update(end_of_epoch=)", "adas(steps_per_epoch)")
  ]


def _end_epoch_share(quick: bool) -> dict:
  """The epoch end alone, as a share of the same AdaS epoch."""
  tx = _adas.adas()
  train, _ = _epoch_closure(tx, flag_last=False)
  params = train()
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)  # the epoch end alone
  end = jax.jit(lambda s, p: tx.update(zeros, s, p, end_of_epoch=True)[1])
  ms = _timing.interleaved_ms(
      {"epoch": train, "end": lambda: end(state, params)},
      rounds=5 if quick else 15, min_round_s=0.1 if quick else 0.3)
  return {"epoch_ms": ms["epoch"], "end_ms": ms["end"],
          "share": ms["end"] / ms["epoch"]}


if __name__ == "__main__":
  for row in rows(quick=True):
    print(row)
  print(_end_epoch_share(quick=True))
