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
"""A tuning-free recipe: AutoDrop's drops on top of Prodigy's step size.

Prodigy (``optax.contrib.prodigy``) estimates the step size ``d`` but, at
its default constant learning rate, never decays it; AutoDrop, last in the
chain, scales the final update down whenever the parameter trajectory's
angular velocity stops rising. Both run at their defaults; the only number
set is AutoDrop's window, about a sixth of an epoch (the paper's 64 steps
at 391 steps per epoch)::

    optax.chain(optax.contrib.prodigy(), oa.autodrop(window_size=k))

What it gains and costs on our benchmarks: docs/choosing.md and
docs/results.md. Prodigy's ``d`` is read with ``optax.tree.get``, AutoDrop's
scale and drops with ``oa.diagnostics``.

Run: ``python docs/examples/autodrop_prodigy.py``.
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


def main(steps: int = 800, batch_size: int = 64, log_every: int = 100):
  x, y = make_task()
  steps_per_epoch = len(x) // batch_size
  window_size = max(1, round(steps_per_epoch * 64 / 391))
  model = MLP(x.shape[1], 64, 4, rngs=nnx.Rngs(0))
  tx = optax.chain(optax.contrib.prodigy(),
                   oa.autodrop(window_size=window_size))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    d = optax.tree.get(nnx.as_pure(optimizer.opt_state), "estim_lr")
    return loss, d, oa.diagnostics(optimizer.opt_state)

  rng = np.random.default_rng(1)
  losses = []
  for step in range(steps):
    idx = rng.integers(0, len(x), batch_size)
    loss, d, logs = train_step(model, optimizer, x[idx], y[idx])
    losses.append(float(loss))
    if step % log_every == 0 or step == steps - 1:
      scale = float(logs["autodrop/lr_scale"])
      print(f"step {step}: loss {loss:.4f}, prodigy d {float(d):.3g}, "
            f"autodrop scale {scale:.3f} "
            f"({int(logs['autodrop/n_drops'])} drops), step size d x scale "
            f"{float(d) * scale:.3g}")
  full = float(nnx.jit(loss_fn)(model, jnp.asarray(x), jnp.asarray(y)))
  print(f"full-batch loss after {steps} steps: {full:.4f}")
  return {"losses": losses, "diagnostics": logs}


if __name__ == "__main__":
  main()
