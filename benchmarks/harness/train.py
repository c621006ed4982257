"""Training loop shared by every optimizer of the comparison.

One epoch is one jitted call: ``lax.scan`` over the epoch's mini-batches,
with the training set kept on the device and each batch gathered by index
inside the scan (fast on CPU, no host round trip per step). The model is a
Flax nnx module split once into ``(graphdef, params, rest)``; ``rest`` holds
non-trainable state such as batch-norm statistics.

A run is deterministic given its seed: the initialisation comes from
``nnx.Rngs(seed)`` and the data order from ``numpy.random.default_rng``
seeded with ``(seed, epoch)``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.harness.optimizers import OptimizerSpec
from benchmarks.harness.tasks import Task

# Curves stored in the JSON are thinned to at most this many points.
MAX_TRACE_POINTS = 500


def _split(model: nnx.Module):
  return nnx.split(model, nnx.Param, ...)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


@dataclasses.dataclass
class _Model:
  """Pure functions of one task's model (train and eval mode)."""

  train_def: Any
  eval_def: Any

  def forward(self, params, rest, x, *, train: bool):
    # copy=True: fresh Variables at this trace level, so that batch norm may
    # update its statistics inside grad/scan.
    model = nnx.merge(self.train_def if train else self.eval_def, params,
                      rest, copy=True)
    logits = model(x)
    _, _, new_rest = _split(model)
    return logits, new_rest

  def loss(self, params, rest, x, y):
    logits, new_rest = self.forward(params, rest, x, train=True)
    return _cross_entropy(logits, y), new_rest


def _init_model(task: Task, seed: int):
  model = task.make_model(nnx.Rngs(seed))
  model.train()
  train_def, params, rest = _split(model)
  model.eval()
  eval_def = _split(model)[0]
  return _Model(train_def, eval_def), params, rest


def _thin(values: np.ndarray, max_points: int = MAX_TRACE_POINTS):
  """(step indices, values) with at most ``max_points`` evenly spaced rows."""
  n = len(values)
  stride = max(1, math.ceil(n / max_points))
  idx = np.arange(0, n, stride)
  if idx[-1] != n - 1:
    idx = np.append(idx, n - 1)
  return idx, values[idx]


def _first_reach(values, target, *, above: bool) -> int | None:
  for i, v in enumerate(values):
    if (v >= target) if above else (v <= target):
      return i
  return None


class Trainer:
  """Compiles one optimizer's epoch function for one task, then runs seeds.

  The compiled epoch is reused across seeds (same shapes), so the compile
  time is paid once per optimizer and task and reported separately.
  """

  def __init__(self, task: Task, spec: OptimizerSpec, epochs: int):
    self.task = task
    self.spec = spec
    self.epochs = epochs
    self.dataset = task.load()
    n_train = len(self.dataset.y_train)
    self.steps_per_epoch = n_train // task.batch_size
    self.total_steps = self.steps_per_epoch * epochs
    self.tx = spec.make(self.steps_per_epoch, self.total_steps)
    self._x_train = jnp.asarray(self.dataset.x_train)
    self._y_train = jnp.asarray(self.dataset.y_train)
    # Validation and test are evaluated in one call per epoch.
    self._n_val = len(self.dataset.y_val)
    self._x_eval = jnp.asarray(
        np.concatenate([self.dataset.x_val, self.dataset.x_test]))
    self._y_eval = jnp.asarray(
        np.concatenate([self.dataset.y_val, self.dataset.y_test]))
    self._model, params, rest = _init_model(task, 0)
    start = time.perf_counter()
    self._init = jax.jit(self.tx.init).lower(params).compile()
    carry = (params, rest, self._init(params))
    idx, approx_idx = self._epoch_indices(np.random.default_rng(0))
    self._epoch = jax.jit(self._epoch_fn).lower(
        carry, idx, approx_idx, self._x_train, self._y_train).compile()
    self._evaluate = jax.jit(self._evaluate_fn).lower(
        *carry, self._x_eval, self._y_eval).compile()
    self._epoch_end = (
        jax.jit(spec.epoch_end).lower(carry[2], params).compile()
        if spec.epoch_end else None)
    self.compile_s = time.perf_counter() - start

  # ------------------------------------------------------------ jitted parts

  def _epoch_fn(self, carry, idx, approx_idx, x_all, y_all):
    model, spec, tx = self._model, self.spec, self.tx

    def step(carry, batch):
      params, rest, opt_state = carry
      batch_idx, batch_approx_idx = batch
      x, y = x_all[batch_idx], y_all[batch_idx]
      (loss, new_rest), grads = jax.value_and_grad(
          model.loss, has_aux=True)(params, rest, x, y)
      kwargs = {}
      if "value" in spec.needs:
        kwargs["value"] = loss
      if "value_fn" in spec.needs:
        kwargs.update(
            grad=grads, x=x, y=y,
            value_fn=lambda p, x, y: model.loss(p, rest, x, y)[0])
      if "approx_batch" in spec.needs:
        kwargs["approx_batch"] = {"x": x_all[batch_approx_idx],
                                  "y": y_all[batch_approx_idx]}
      updates, opt_state = tx.update(grads, opt_state, params, **kwargs)
      params = optax.apply_updates(params, updates)
      trace = {k: jnp.asarray(v, jnp.float32)
               for k, v in spec.trace(opt_state).items()}
      return (params, new_rest, opt_state), (loss, trace)

    return jax.lax.scan(step, carry, (idx, approx_idx))

  def _evaluate_fn(self, params, rest, opt_state, x, y):
    """Per-example losses and correctness on ``x`` (validation + test)."""
    if self.spec.eval_params is not None:
      params = self.spec.eval_params(opt_state, params)
    logits, _ = self._model.forward(params, rest, x, train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), y)
    return losses, jnp.argmax(logits, -1) == y

  # ------------------------------------------------------------------ host

  def _epoch_indices(self, rng: np.random.Generator):
    """Shuffled batch indices ``[S, B]`` and LABPAL's extra batches."""
    n = len(self.dataset.y_train)
    size, steps = self.task.batch_size, self.steps_per_epoch
    idx = rng.permutation(n)[:steps * size].reshape(steps, size)
    m = self.spec.approx_batches
    if m:
      # The first of the M approximation batches is the step's own batch
      # (docs/results.md, the labpal row), the others are drawn at random.
      extra = rng.integers(0, n, size=(steps, m - 1, size))
      approx_idx = np.concatenate([idx[:, None], extra], axis=1)
    else:
      approx_idx = np.zeros((steps, 0), np.int64)
    return jnp.asarray(idx, jnp.int32), jnp.asarray(approx_idx, jnp.int32)

  def run(self, seed: int,
          on_epoch: Callable[[int, dict], None] | None = None) -> dict:
    """Trains from scratch with ``seed``; returns the JSON-ready record."""
    _, params, rest = _init_model(self.task, seed)
    opt_state = self._init(params)
    carry = (params, rest, opt_state)
    epoch_loss, test_acc, test_loss, val_acc = [], [], [], []
    step_losses, traces = [], []
    start = time.perf_counter()
    for epoch in range(self.epochs):
      rng = np.random.default_rng([seed, epoch])
      idx, approx_idx = self._epoch_indices(rng)
      carry, (losses, trace) = self._epoch(
          carry, idx, approx_idx, self._x_train, self._y_train)
      params, rest, opt_state = carry
      if self._epoch_end is not None:
        opt_state = self._epoch_end(opt_state, params)
        carry = (params, rest, opt_state)
      eval_losses, correct = jax.device_get(
          self._evaluate(params, rest, opt_state, self._x_eval, self._y_eval))
      n_val = self._n_val
      t_loss = np.mean(eval_losses[n_val:])
      t_acc, v_acc = np.mean(correct[n_val:]), np.mean(correct[:n_val])
      losses = np.asarray(losses)
      step_losses.append(losses)
      traces.append(jax.tree.map(np.asarray, trace))
      epoch_loss.append(float(np.mean(losses)))
      test_loss.append(float(t_loss))
      test_acc.append(float(t_acc))
      val_acc.append(float(v_acc))
      if on_epoch is not None:
        on_epoch(epoch, {"loss": epoch_loss[-1], "acc": test_acc[-1]})
    wall_s = time.perf_counter() - start
    return self._record(seed, wall_s, epoch_loss, test_loss, test_acc,
                        val_acc, step_losses, traces)

  def _record(self, seed, wall_s, epoch_loss, test_loss, test_acc, val_acc,
              step_losses, traces) -> dict:
    spe = self.steps_per_epoch
    losses = np.concatenate(step_losses)
    step_idx, thinned_loss = _thin(losses)
    trace_record = {}
    for key in traces[0]:
      values = np.concatenate([t[key] for t in traces])
      t_idx, t_values = _thin(values)
      trace_record[key] = {"step": (t_idx + 1).tolist(),
                           "value": t_values.tolist()}
    loss_epoch = _first_reach(epoch_loss, self.task.target_loss, above=False)
    acc_epoch = _first_reach(test_acc, self.task.target_acc, above=True)
    return {
        "task": self.task.name,
        "optimizer": self.spec.name,
        "family": self.spec.family,
        "seed": seed,
        "epochs": self.epochs,
        "steps_per_epoch": spe,
        "batch_size": self.task.batch_size,
        "final_test_acc": test_acc[-1],
        "best_test_acc": max(test_acc),
        "final_train_loss": epoch_loss[-1],
        "final_val_acc": val_acc[-1],
        "best_val_acc": max(val_acc),
        "target_loss": self.task.target_loss,
        "target_acc": self.task.target_acc,
        "steps_to_target_loss":
            None if loss_epoch is None else (loss_epoch + 1) * spe,
        "steps_to_target_acc":
            None if acc_epoch is None else (acc_epoch + 1) * spe,
        "diverged": bool(not np.all(np.isfinite(losses))),
        "wall_s": wall_s,
        "compile_s": self.compile_s,
        "curves": {
            "epoch_train_loss": epoch_loss,
            "epoch_test_loss": test_loss,
            "epoch_test_acc": test_acc,
            "epoch_val_acc": val_acc,
            "step": (step_idx + 1).tolist(),
            "step_train_loss": thinned_loss.tolist(),
        },
        "trace": trace_record,
    }
