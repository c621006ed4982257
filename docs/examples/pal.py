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
"""PAL, a parabolic line search on each mini-batch, with an nnx model.

``oa.pal()`` needs the loss ``value``, the gradient ``grad``, a ``value_fn``
that evaluates the loss at other parameters, and ``value_fn``'s data
arguments by name (https://arxiv.org/abs/1903.11991). ``nnx.Optimizer``
forwards them to the transformation; ``oa.nnx_value_fn`` builds a pure
``value_fn`` from the model (extra forward passes never touch the live
model's state). The chosen learning rate is logged with ``oa.diagnostics``.

Run: ``python docs/examples/pal.py``.
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
  optimizer = nnx.Optimizer(model, oa.pal(), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    # Built inside the step, from the model as it is before the update.
    value_fn = oa.nnx_value_fn(model, loss_fn)
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads, value=loss, grad=grads,
                     value_fn=value_fn, x=x, y=y)
    return loss, oa.diagnostics(optimizer.opt_state)

  rng = np.random.default_rng(1)
  losses = []
  for step in range(steps):
    idx = rng.integers(0, len(x), batch_size)
    loss, logs = train_step(model, optimizer, x[idx], y[idx])
    losses.append(float(loss))
    if step % log_every == 0 or step == steps - 1:
      print(f"step {step}: loss {loss:.4f}, "
            f"lr {float(logs['pal/pal_learning_rate']):.4f}, "
            f"step length {float(logs['pal/pal_step_length']):.4f}")
  full = float(nnx.jit(loss_fn)(model, jnp.asarray(x), jnp.asarray(y)))
  print(f"full-batch loss after {steps} steps: {full:.4f}")
  return {"losses": losses, "diagnostics": logs}


if __name__ == "__main__":
  main()
