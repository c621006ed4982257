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
"""LABPAL with a linen model and ``optax_adaptive.TrainState``.

LABPAL (https://arxiv.org/abs/2108.13880) measures the full-batch loss along
the gradient direction on ``M`` mini-batches every ``reuse_steps`` updates,
fits a parabola, and reuses the resulting step between measurements. It
needs ``grad``, ``value_fn`` and ``approx_batch``: a mapping from
``value_fn`` argument names to arrays stacked along a leading axis of ``M``
mini-batches. Here the data stay on the device and ``value_fn`` gathers the
examples from an index array, so a measurement moves only ``M x batch``
integers. ``oa.TrainState.apply_gradients`` forwards the extra arguments to
``tx.update`` (flax's own ``TrainState`` drops them).

Run: ``python docs/examples/labpal.py``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_adaptive as oa


def make_task(seed=0, n=1024, dim=16, classes=4):
  """Gaussian inputs labelled by a random linear teacher."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  y = np.argmax(x @ rng.normal(size=(dim, classes)), axis=1).astype(np.int32)
  return x, y


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(4)(nn.relu(nn.Dense(64)(x)))


def main(steps: int = 300, batch_size: int = 64, approx_batches: int = 5,
         log_every: int = 50):
  x_host, y_host = make_task()
  x, y = jnp.asarray(x_host), jnp.asarray(y_host)  # on the device, once
  model = MLP()
  tx = oa.labpal(reuse_steps=50, approx_batches=approx_batches,
                 untrusted_updates=50, avg_window=5)
  state = oa.TrainState.create(
      apply_fn=model.apply,
      params=model.init(jax.random.key(0), x[:1])["params"], tx=tx)

  def loss_fn(params, idx):
    logits = state.apply_fn({"params": params}, x[idx])
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, y[idx]).mean()

  @jax.jit
  def train_step(state, idx, approx_idx):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, idx)
    state = state.apply_gradients(
        grads=grads, value=loss, grad=grads, value_fn=loss_fn,
        approx_batch={"idx": approx_idx})
    return state, loss, oa.diagnostics(state.opt_state)

  rng = np.random.default_rng(1)
  losses = []
  for step in range(steps):
    # The step's own batch first, then M - 1 fresh ones (spec: first entries
    # are the training batches of the step).
    approx_idx = rng.integers(0, len(x_host), (approx_batches, batch_size))
    state, loss, logs = train_step(state, approx_idx[0], approx_idx)
    losses.append(float(loss))
    if step % log_every == 0 or step == steps - 1:
      print(f"step {step}: loss {loss:.4f}, "
            f"step length {float(logs['labpal/labpal_step_length']):.4f}, "
            f"status {int(logs['labpal/info.status'])}")
  full = float(jax.jit(loss_fn)(state.params, np.arange(len(x_host))))
  print(f"full-batch loss after {steps} steps: {full:.4f}")
  return {"losses": losses, "diagnostics": logs}


if __name__ == "__main__":
  main()
