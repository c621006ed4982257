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
"""Two methods at once: CProp's per-parameter scale, AutoDrop's global drops.

CProp wraps the base optimizer (it must see the raw gradients) and AutoDrop
comes last in the chain (it must see the final updates that reach the
params):

    optax.chain(oa.cprop(optax.sgd(...)), oa.autodrop(...))

Both states are found by one ``oa.diagnostics`` call.

Run: ``python docs/examples/cprop_autodrop.py``.
"""

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_adaptive as oa


def make_task(seed=0, n=1024, dim=16, classes=4):
  """Gaussian inputs labelled by a random linear teacher."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  y = np.argmax(x @ rng.normal(size=(dim, classes)), axis=1).astype(np.int32)
  return x, y


class MLP(nnx.Module):

  def __init__(self, din, dhidden, dout, *, rngs):
    self.hidden = nnx.Linear(din, dhidden, rngs=rngs)
    self.out = nnx.Linear(dhidden, dout, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def loss_fn(model, x, y):
  logits = model(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def main(steps: int = 400, batch_size: int = 64, log_every: int = 50):
  x, y = make_task()
  model = MLP(x.shape[1], 64, 4, rngs=nnx.Rngs(0))
  tx = optax.chain(
      oa.cprop(optax.sgd(0.1, momentum=0.9), beta=0.999),
      oa.autodrop(window_size=10, buffer_size=5, drop_factor=0.5),
  )
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

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
    if step % log_every == 0 or step == steps - 1:
      print(f"step {step}: loss {loss:.4f}, " + ", ".join(
          f"{k} {float(v):.3g}" for k, v in sorted(logs.items())))
  full = float(nnx.jit(loss_fn)(model, jnp.asarray(x), jnp.asarray(y)))
  print(f"full-batch loss after {steps} steps: {full:.4f}")
  return {"losses": losses, "diagnostics": logs}


if __name__ == "__main__":
  main()
