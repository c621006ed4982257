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
"""Timing helpers shared by the overhead benchmarks.

Every timed function is a zero-argument closure around an already jitted
computation that carries its own state (params, optimizer state) from call
to call. :func:`interleaved_ms` times several such closures alternately, so
that machine drift (other processes, frequency scaling) hits all of them
alike and their ratios stay meaningful on a busy machine.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _block(value: Any) -> None:
  jax.block_until_ready(value)


def interleaved_ms(
    fns: dict[str, Callable[[], Any]],
    rounds: int = 15,
    min_round_s: float = 0.2,
) -> dict[str, float]:
  """Median milliseconds per call of each zero-argument closure.

  Each closure is called twice first (compilation and warm-up, not timed).
  Then, in each of ``rounds`` rounds, every closure runs back to back for at
  least ``min_round_s`` seconds (at least once) and its time per call is
  recorded; the order of the closures is rotated from round to round. The
  result is the median over rounds, so that ratios measured in one call
  cancel slow drift of the machine.

  Args:
    fns: name -> closure; each call must return something that
      :func:`jax.block_until_ready` accepts.
    rounds: number of timed rounds.
    min_round_s: minimum time spent on one closure in one round.

  Returns:
    name -> median milliseconds per call.
  """
  samples = _round_samples_ms(fns, rounds, min_round_s)
  return {name: statistics.median(ms) for name, ms in samples.items()}


def _round_samples_ms(
    fns: dict[str, Callable[[], Any]],
    rounds: int,
    min_turn_s: float,
) -> dict[str, list[float]]:
  """Milliseconds per call of each closure in each round (rotated order).

  Each closure is called twice first (compilation and warm-up, not timed),
  then once more to fix how many calls fill ``min_turn_s`` (at least one).
  """
  names = list(fns)
  for name in names:
    for _ in range(2):
      _block(fns[name]())
  calls = {}
  for name in names:
    start = time.perf_counter()
    _block(fns[name]())
    once = max(time.perf_counter() - start, 1e-6)
    calls[name] = max(1, int(np.ceil(min_turn_s / once)))
  samples = {name: [] for name in names}
  for r in range(rounds):
    shift = r % len(names)
    for name in names[shift:] + names[:shift]:
      fn, n = fns[name], calls[name]
      start = time.perf_counter()
      for _ in range(n):
        out = fn()
      _block(out)
      samples[name].append((time.perf_counter() - start) / n * 1e3)
  return samples


class RatioStats(NamedTuple):
  """Per-round ratios of one closure's time to the baseline's."""

  ratios: np.ndarray  # one per round
  ms: float  # median milliseconds per call over rounds

  @property
  def median(self) -> float:
    return float(np.median(self.ratios))

  @property
  def quartiles(self) -> tuple[float, float]:
    q1, q3 = np.percentile(self.ratios, [25, 75])
    return float(q1), float(q3)


def ratio_stats(samples_ms: dict[str, list[float]],
                base: str) -> dict[str, RatioStats]:
  """Round-by-round ratios to ``base`` from per-round milliseconds per call."""
  base_ms = np.asarray(samples_ms[base], np.float64)
  return {
      name: RatioStats(ratios=np.asarray(ms, np.float64) / base_ms,
                       ms=float(np.median(ms)))
      for name, ms in samples_ms.items()
  }


def paired_ratios(
    fns: dict[str, Callable[[], Any]],
    base: str,
    rounds: int = 41,
    min_turn_s: float = 0.05,
) -> dict[str, RatioStats]:
  """Time of each closure relative to ``base``, paired within short rounds.

  :func:`interleaved_ms` divides medians taken over rounds of a quarter
  second per closure; on a shared machine whose speed changes within
  seconds, that ratio moves by several percent from run to run (two
  identical closures measured up to 11 % apart). Here every round runs all
  closures back to back for about ``min_turn_s`` each (order rotated from
  round to round) and forms the ratio inside the round, so that a slow
  period mostly hits both sides of a ratio; the median over many rounds is
  then stable. Put an identical copy of the baseline among ``fns`` to see
  the noise floor.

  Args:
    fns: name -> zero-argument closure (see :func:`interleaved_ms`).
    base: the name of the baseline closure.
    rounds: number of rounds.
    min_turn_s: minimum time spent on one closure in one round.

  Returns:
    name -> :class:`RatioStats` (the baseline's ratios are all 1).
  """
  samples = _round_samples_ms(fns, rounds, min_turn_s)
  return ratio_stats(samples, base)


def ratio_row(method: str, case: str, stats: RatioStats, base: RatioStats,
              base_label: str, target: float | None) -> dict:
  """One row of ``benchmarks.overhead`` from :func:`paired_ratios` output."""
  q1, q3 = stats.quartiles
  return {"method": method, "case": case, "time_ms": stats.ms,
          "base": base_label, "base_ms": base.ms, "ratio": stats.median,
          "ratio_q1": q1, "ratio_q3": q3, "target": target}


def paired_rounds(quick: bool) -> dict[str, Any]:
  """``paired_ratios`` settings of the overhead tables (quick: smoke test)."""
  return {"rounds": 11 if quick else 41,
          "min_turn_s": 0.02 if quick else 0.05}


# ------------------------------------------------------------- pytrees


def _param_shapes_10m() -> dict[str, dict[str, tuple[int, ...]]]:
  """Leaf shapes of a ResNet-style CNN plus an embedding and an MLP head."""
  shapes: dict[str, dict[str, tuple[int, ...]]] = {
      "embed": {"embedding": (8000, 256)},
      "stem": {"kernel": (7, 7, 3, 64), "scale": (64,), "bias": (64,)},
  }
  convs = [(64, 64), (64, 64), (64, 128), (128, 128), (128, 256),
           (256, 256), (256, 512), (512, 512)]
  for i, (cin, cout) in enumerate(convs):
    shapes[f"conv{i}"] = {"kernel": (3, 3, cin, cout), "scale": (cout,),
                          "bias": (cout,)}
  dense = [(256, 1024), (512, 1024), (1024, 1024), (1024, 256), (1024, 1000)]
  for i, (din, dout) in enumerate(dense):
    shapes[f"dense{i}"] = {"kernel": (din, dout), "bias": (dout,)}
  shapes["final_norm"] = {"scale": (1000,), "bias": (1000,)}
  return shapes


def param_tree_10m(dtype: Any = jnp.float32, seed: int = 0) -> dict:
  """A realistic pytree of about 10M parameters (9.9M), random values.

  Conv kernels are in Flax layout ``(kh, kw, in, out)``, dense kernels
  ``(in, out)``; there are biases, norm scales and an embedding table.
  """
  shapes = _param_shapes_10m()
  leaves, treedef = jax.tree.flatten(
      shapes, is_leaf=lambda x: isinstance(x, tuple))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  arrays = [
      (jax.random.normal(k, s, jnp.float32) / np.sqrt(max(s[-1], 1)))
      .astype(dtype) for k, s in zip(keys, leaves, strict=True)
  ]
  return jax.tree.unflatten(treedef, arrays)


def tree_size(tree: Any) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def update_closure(
    tx: optax.GradientTransformation,
    params: Any,
    grads: Any,
    **extra_args: Any,
) -> Callable[[], Any]:
  """A zero-argument closure running one jitted ``tx.update`` per call.

  The optimizer state is donated and carried from call to call, as in a
  training loop; ``params`` and ``grads`` stay fixed.
  """
  def update_fn(state, g, p):
    updates, state = tx.update(g, state, p, **extra_args)
    # The new state comes first, so that the donated state buffers alias the
    # new state's (as in a training loop) and not the updates.
    return state, updates

  update = jax.jit(update_fn, donate_argnums=0)
  carry = {"state": jax.jit(tx.init)(params)}

  def step():
    carry["state"], updates = update(carry["state"], grads, params)
    return updates

  return step


# ---------------------------------------------------------- train step


def mnist1d_train_step(
    tx: optax.GradientTransformation,
    batch_size: int = 128,
    seed: int = 0,
    update_kwargs_fn: Callable[..., dict] | None = None,
) -> Callable[[], Any]:
  """A zero-argument closure running one full jitted train step per call.

  The step is functional (nnx split/merge): forward and backward pass of
  :class:`benchmarks.harness.models.CNN1D` on a mnist1d batch, ``tx.update`` and
  ``optax.apply_updates``. Params and optimizer state are donated and
  carried from call to call; batches cycle through the training split,
  already on the device.

  Args:
    tx: the optimizer.
    batch_size: examples per step.
    seed: model initialisation and batch order.
    update_kwargs_fn: optional callable, called inside the jitted step as
      ``update_kwargs_fn(params=..., batch=(x, y), loss=..., grads=...,
      loss_fn=...)`` where ``loss_fn(params, batch)`` is the loss; returns
      the extra keyword arguments for ``tx.update`` (e.g. ``value=loss``).

  Returns:
    A closure returning the loss of the step it ran.
  """
  from flax import nnx

  from benchmarks.harness import data, models

  ds = data.mnist1d()
  model = models.CNN1D(rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)

  def loss_fn(p, batch):
    x, y = batch
    logits = nnx.merge(graphdef, p)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def train_step(p, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(p, (x, y))
    kwargs = {}
    if update_kwargs_fn is not None:
      kwargs = update_kwargs_fn(params=p, batch=(x, y), loss=loss,
                                grads=grads, loss_fn=loss_fn)
    updates, opt_state = tx.update(grads, opt_state, p, **kwargs)
    return optax.apply_updates(p, updates), opt_state, loss

  step_fn = jax.jit(train_step, donate_argnums=(0, 1))
  n_batches = len(ds.y_train) // batch_size
  order = np.random.default_rng(seed).permutation(len(ds.y_train))
  order = order[: n_batches * batch_size].reshape(n_batches, batch_size)
  xs = [jax.device_put(ds.x_train[idx]) for idx in order]
  ys = [jax.device_put(ds.y_train[idx]) for idx in order]
  # Copied: a state that keeps the initial params (prodigy's params0) would
  # otherwise share their buffer, which the donating step rejects.
  carry = {"params": params, "state": jax.tree.map(jnp.copy, tx.init(params)),
           "i": 0}

  def step():
    i = carry["i"]
    carry["params"], carry["state"], loss = step_fn(
        carry["params"], carry["state"], xs[i], ys[i])
    carry["i"] = (i + 1) % n_batches
    return loss

  return step


# -------------------------------------------------------------- machine


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_info() -> str:
  """One line: CPU count and model, jax version, backend and device."""
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
      else os.cpu_count()
  device = jax.devices()[0]
  return (f"{cpus} CPU cores ({_cpu_model()}), jax {jax.__version__}, "
          f"backend {jax.default_backend()}, device {device.device_kind} "
          f"x{jax.device_count()}")
