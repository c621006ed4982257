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
"""CProp around Adam, training an nnx MLP classifier.

``oa.cprop(inner)`` scales the updates of any optax optimizer by the
conformity of past gradients (https://arxiv.org/abs/1912.11493). The mean
scale is logged with ``oa.diagnostics``.

Run: ``python docs/examples/cprop.py``.
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


def main(steps: int = 300, batch_size: int = 64, log_every: int = 50):
  x, y = make_task()
  model = MLP(x.shape[1], 64, 4, rngs=nnx.Rngs(0))
  tx = oa.cprop(optax.adam(3e-3), beta=0.999, c=1.0)
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
      print(f"step {step}: loss {loss:.4f}, "
            f"cprop/mean_scale {float(logs['cprop/mean_scale']):.3f}")
  full_loss = float(nnx.jit(loss_fn)(model, jnp.asarray(x), jnp.asarray(y)))
  print(f"full-batch loss after {steps} steps: {full_loss:.4f}")
  return {"losses": losses, "diagnostics": logs}


if __name__ == "__main__":
  main()
