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
"""AdaS: per-layer SGD rates from the knowledge gain of conv kernels.

``oa.adas(..., steps_per_epoch=n)`` is SGD with momentum whose rate per conv
layer is re-set at every epoch end from the layers' knowledge gain (a
low-rank factorisation of each kernel, https://arxiv.org/abs/2006.06587).
The per-layer rates, gains and mapping conditions are logged with
``oa.diagnostics``; ``oa.adas_layer_names(state)`` names the layers.

Run: ``python docs/examples/adas.py``.
"""

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_adaptive as oa


def make_task(seed=0, n=512, size=8, classes=4):
  """Random 8x8x3 images labelled by the sign pattern of two filters."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, size, size, 3)).astype(np.float32)
  filters = rng.normal(size=(3, classes))
  y = np.argmax(x.mean(axis=(1, 2)) @ filters, axis=1).astype(np.int32)
  return x, y


class CNN(nnx.Module):

  def __init__(self, *, rngs):
    self.conv1 = nnx.Conv(3, 16, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(16, 16, (3, 3), rngs=rngs)
    self.head = nnx.Linear(16, 4, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.conv1(x))
    h = nnx.relu(self.conv2(h))
    return self.head(jnp.mean(h, axis=(1, 2)))


def loss_fn(model, x, y):
  logits = model(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def main(steps: int = 160, batch_size: int = 32, steps_per_epoch: int = 16):
  x, y = make_task()
  model = CNN(rngs=nnx.Rngs(0))
  tx = oa.adas(learning_rate=0.03, steps_per_epoch=steps_per_epoch)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  names = oa.adas_layer_names(optimizer.opt_state)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss, oa.diagnostics(optimizer.opt_state)

  rng = np.random.default_rng(1)
  losses = []
  for step in range(steps):
    idx = rng.integers(0, len(x), batch_size)
    loss, logs = train_step(model, optimizer, x[idx], y[idx])
    losses.append(float(loss))
    if step % steps_per_epoch == 0 or step == steps - 1:
      rates = ", ".join(
          f"{name} {lr:.4f}"
          for name, lr in zip(names, np.asarray(logs["adas/layer_lr"])))
      print(f"step {step}: loss {loss:.4f}, epoch {int(logs['adas/epoch'])},"
            f" layer rates: {rates}, gains {np.asarray(logs['adas/gain'])}")
  full = float(nnx.jit(loss_fn)(model, jnp.asarray(x), jnp.asarray(y)))
  print(f"full-batch loss after {steps} steps: {full:.4f}")
  return {"losses": losses, "diagnostics": logs}


if __name__ == "__main__":
  main()
