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
"""AutoDrop after SGD with momentum, training a linen MLP with TrainState.

``optax.chain(base, oa.autodrop(window_size))`` drops the learning rate when
the angular velocity of the parameter trajectory saturates
(https://proceedings.mlr.press/v244/wang24e.html). AutoDrop must be the last
link of the chain. The scale, last angle and number of drops are logged
with ``oa.diagnostics``.

Run: ``python docs/examples/autodrop.py``.
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


def main(steps: int = 400, batch_size: int = 64, window_size: int = 10,
         log_every: int = 50):
  x, y = make_task()
  model = MLP()
  tx = optax.chain(
      optax.sgd(0.1, momentum=0.9),
      oa.autodrop(window_size=window_size, buffer_size=5, drop_factor=0.5),
  )
  state = oa.TrainState.create(
      apply_fn=model.apply,
      params=model.init(jax.random.key(0), x[:1])["params"], tx=tx)

  def loss_fn(params, x, y):
    logits = state.apply_fn({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def train_step(state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, x, y)
    state = state.apply_gradients(grads=grads)
    return state, loss, oa.diagnostics(state.opt_state)

  rng = np.random.default_rng(1)
  losses = []
  for step in range(steps):
    idx = rng.integers(0, len(x), batch_size)
    state, loss, logs = train_step(state, x[idx], y[idx])
    losses.append(float(loss))
    if step % log_every == 0 or step == steps - 1:
      print(f"step {step}: loss {loss:.4f}, "
            f"lr_scale {float(logs['autodrop/lr_scale']):.3f}, "
            f"angle {float(logs['autodrop/last_omega']):.1f} deg, "
            f"drops {int(logs['autodrop/n_drops'])}")
  full = float(jax.jit(loss_fn)(state.params, jnp.asarray(x),
                                jnp.asarray(y)))
  print(f"full-batch loss after {steps} steps: {full:.4f}")
  return {"losses": losses, "diagnostics": logs}


if __name__ == "__main__":
  main()
