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
"""Per-layer AdaS rates and knowledge gains over an mnist1d training run.

Trains :class:`benchmarks.harness.models.CNN1D` on mnist1d with
``adas(...)``, each epoch's last update flagged with ``end_of_epoch=True``,
and writes
``adas_layers.png`` (rates, gains, conditions per conv layer and the fc rate
against the epoch) and ``adas_layers.json`` (the numbers) into ``--out``.

Run::

  python -m benchmarks.studies.adas_plot --epochs 30 --out results/adas
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.harness import data, models
from optax_adaptive import _adas


def train(epochs: int, learning_rate: float, beta: float, batch: int = 128,
          seed: int = 0) -> dict:
  """Trains and returns per-epoch rates, gains, losses and accuracy."""
  ds = data.mnist1d()
  model = models.CNN1D(rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)
  params = nnx.as_pure(params)
  tx = _adas.adas(learning_rate=learning_rate, beta=beta)
  state = tx.init(params)
  n_batches = len(ds.y_train) // batch

  def loss_fn(p, x, y):
    logits = nnx.merge(graphdef, p)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def epoch(p, state, xs, ys):
    def step(carry, b):
      p, state = carry
      x, y, last = b
      loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
      updates, state = tx.update(grads, state, p, end_of_epoch=last)
      return (optax.apply_updates(p, updates), state), loss
    last = jnp.arange(xs.shape[0]) == xs.shape[0] - 1
    (p, state), losses = jax.lax.scan(step, (p, state), (xs, ys, last))
    return p, state, losses.mean()

  @jax.jit
  def accuracy(p, x, y):
    return (nnx.merge(graphdef, p)(x).argmax(-1) == y).mean()

  rng = np.random.default_rng(seed)
  history = {"layers": list(_adas.adas_layer_names(state)), "epoch": [],
             "layer_lr": [], "fc_lr": [], "gain": [], "input_condition": [],
             "output_condition": [], "train_loss": [], "test_accuracy": []}
  for k in range(epochs):
    order = rng.permutation(len(ds.y_train))[: n_batches * batch]
    order = order.reshape(n_batches, batch)
    params, state, loss = epoch(params, state, ds.x_train[order],
                                ds.y_train[order])
    history["epoch"].append(k)
    history["layer_lr"].append(np.asarray(state.layer_lr).tolist())
    history["fc_lr"].append(float(state.fc_lr))
    history["gain"].append(np.asarray(state.gain).tolist())
    history["input_condition"].append(
        np.asarray(state.input_condition).tolist())
    history["output_condition"].append(
        np.asarray(state.output_condition).tolist())
    history["train_loss"].append(float(loss))
    history["test_accuracy"].append(
        float(accuracy(params, ds.x_test, ds.y_test)))
  return history


def plot(history: dict, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  epochs = np.asarray(history["epoch"])
  fig, axes = plt.subplots(1, 4, figsize=(18, 4))
  lr, gain = np.asarray(history["layer_lr"]), np.asarray(history["gain"])
  cond = np.asarray(history["output_condition"])
  for i, name in enumerate(history["layers"]):
    axes[0].plot(epochs, lr[:, i], label=name)
    axes[1].plot(epochs, gain[:, i], label=name)
    axes[2].plot(epochs, cond[:, i], label=name)
  axes[0].plot(epochs, history["fc_lr"], "k--", label="fc")
  axes[0].set(yscale="log", title="rate set at the end of the epoch",
              xlabel="epoch")
  axes[1].set(title="knowledge gain (layer mean)", xlabel="epoch")
  axes[2].set(title="output mapping condition", xlabel="epoch",
              yscale="log")
  axes[3].plot(epochs, history["train_loss"], label="train loss")
  axes[3].plot(epochs, history["test_accuracy"], label="test accuracy")
  axes[3].set(title="training", xlabel="epoch")
  for ax in axes:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument("--learning-rate", type=float, default=0.03)
  parser.add_argument("--beta", type=float, default=0.8)
  parser.add_argument("--out", default="results/adas", help="output folder")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  history = train(args.epochs, args.learning_rate, args.beta)
  (out / "adas_layers.json").write_text(json.dumps(history, indent=1))
  plot(history, out / "adas_layers.png")
  last = {k: history[k][-1] for k in ("layer_lr", "fc_lr", "gain",
                                        "train_loss", "test_accuracy")}
  print(f"wrote {out / 'adas_layers.png'}; last epoch: {last}")


if __name__ == "__main__":
  main()
