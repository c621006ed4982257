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
"""PAL's and LABPAL's cost per weight update against plain SGD.

Full jitted train steps of the mnist1d CNN
(:class:`benchmarks.harness.models.CNN1D`, batch 128), timed interleaved
with an ``optax.sgd`` step:

* PAL: 1 forward-backward + 1 forward pass per update (shown next to an SGD
  step that also evaluates the loss at one moved point, the floor of any
  method with one extra forward pass);
* LABPAL training step, in both modes: 1 forward-backward (the measurement
  branch of the ``lax.cond`` is not executed; ``approx_batch`` is an index
  array, so no extra data moves);
* LABPAL measuring step (forced on every call with ``reuse_steps=1``):
  1 forward-backward + 3M forwards (M = 10 mini-batches);
* LABPAL amortised over ``reuse_steps=1000`` updates, computed from the two.

Every row is printed twice: wall time per step and process CPU time per step
(alternating single calls), which stays meaningful on a shared machine. The
wall-time ratios are medians of per-round ratios
(:func:`benchmarks.overhead._timing.paired_ratios`, interquartile range in
parentheses), and a first row times the SGD step against an identical copy
of itself: the noise floor of the comparison.

Run through ``python -m benchmarks.overhead --methods labpal``.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_adaptive as oa
from benchmarks.harness import data
from benchmarks.overhead import _timing

PAL_TARGET = 1.4
LABPAL_AMORTISED_TARGET = 1.05
APPROX_BATCHES = 10
REUSE_STEPS = 1000


def _pal_kwargs(params, batch, loss, grads, loss_fn):
  del params
  return dict(value=loss, grad=grads, value_fn=loss_fn, batch=batch)


def _consume_value() -> optax.GradientTransformationExtraArgs:
  """Identity on the updates that depends on ``value`` (so XLA keeps it)."""

  def update_fn(updates, state, params=None, *, value, **extra_args):
    del params, extra_args
    return jax.tree.map(lambda u: u * (1 + 0 * value), updates), state

  return optax.GradientTransformationExtraArgs(
      lambda params: optax.EmptyState(), update_fn)


def _extra_forward_kwargs(params, batch, loss, grads, loss_fn):
  """The loss at a moved point: SGD plus exactly one forward pass."""
  del loss
  moved = jax.tree.map(lambda p, g: p - 0.01 * g, params, grads)
  return dict(value=loss_fn(moved, batch))


def _labpal_kwargs_fn(batch_size: int, seed: int = 1):
  """LABPAL's kwargs: the step's batch followed by M - 1 other batches.

  As docs/labpal.md recommends, ``approx_batch`` holds only the indices
  0..M-1 and ``value_fn`` gathers mini-batch i from device-resident data
  inside the measurement, so a training step moves no extra data: index 0
  is the step's own batch (as in the authors' code), the others are fixed
  batches.
  """
  ds = data.mnist1d()
  idx = np.random.default_rng(seed).permutation(len(ds.y_train))
  idx = idx[: (APPROX_BATCHES - 1) * batch_size].reshape(
      APPROX_BATCHES - 1, batch_size)
  other_x = jax.device_put(ds.x_train[idx])
  other_y = jax.device_put(ds.y_train[idx])

  def kwargs_fn(params, batch, loss, grads, loss_fn):
    del params

    def value_fn(p, i, batch):
      other = jnp.maximum(i - 1, 0)
      x = jnp.where(i == 0, batch[0], other_x[other])
      y = jnp.where(i == 0, batch[1], other_y[other])
      return loss_fn(p, (x, y))

    return dict(value=loss, grad=grads, value_fn=value_fn, batch=batch,
                approx_batch={"i": jnp.arange(APPROX_BATCHES)})

  return kwargs_fn


def _cpu_time_ms(fns, calls: int) -> dict[str, float]:
  """Process CPU milliseconds per call, alternating single blocked calls.

  On a machine shared with other jobs, wall time mostly measures waiting
  for a core (runs of the interleaved wall timing moved by ±20-40%); the CPU
  time this process (all its threads) spends per step does not depend on
  the load. Mean of the middle 80% of ``calls`` samples per closure; the
  closures were already compiled and warmed up by the wall timing.
  """
  names = list(fns)
  samples = {name: [] for name in names}
  for i in range(calls):
    for name in names if i % 2 == 0 else names[::-1]:
      start = time.process_time()
      jax.block_until_ready(fns[name]())
      samples[name].append((time.process_time() - start) * 1e3)
  trim = max(1, calls // 10)
  return {name: float(np.mean(sorted(v)[trim:-trim]))
          for name, v in samples.items()}


def rows(quick: bool) -> list[dict]:
  batch_size = 128
  labpal_kwargs = _labpal_kwargs_fn(batch_size)
  fns = {
      "optax.sgd": _timing.mnist1d_train_step(optax.sgd(0.1), batch_size),
      "optax.sgd copy": _timing.mnist1d_train_step(optax.sgd(0.1),
                                                   batch_size),
      "sgd + 1 F": _timing.mnist1d_train_step(
          optax.chain(optax.sgd(0.1), _consume_value()), batch_size,
          update_kwargs_fn=_extra_forward_kwargs),
      "pal": _timing.mnist1d_train_step(
          oa.pal(), batch_size, update_kwargs_fn=_pal_kwargs),
      "labpal train": _timing.mnist1d_train_step(
          oa.labpal(reuse_steps=REUSE_STEPS), batch_size,
          update_kwargs_fn=labpal_kwargs),
      "labpal train sgd": _timing.mnist1d_train_step(
          oa.labpal(mode="sgd", reuse_steps=REUSE_STEPS), batch_size,
          update_kwargs_fn=labpal_kwargs),
      "labpal measure": _timing.mnist1d_train_step(
          oa.labpal(reuse_steps=1), batch_size,
          update_kwargs_fn=labpal_kwargs),
  }
  stats = _timing.paired_ratios(fns, "optax.sgd", rounds=11 if quick else 61,
                                min_turn_s=0.02 if quick else 0.05)
  cpu = _cpu_time_ms(fns, calls=30 if quick else 150)
  m = APPROX_BATCHES
  task = f"mnist1d CNN1D b={batch_size}"

  def amortised(train, measure):
    return ((REUSE_STEPS - 1) * train + measure) / REUSE_STEPS

  def row(method, case, time_ms, base_ms, ratio, target, quartiles=None):
    out = {"method": method, "case": f"{case}, {task}", "time_ms": time_ms,
           "base": "optax.sgd", "base_ms": base_ms, "ratio": ratio,
           "target": target}
    if quartiles is not None:
      out["ratio_q1"], out["ratio_q3"] = quartiles
    return out

  def wall(method, case, name, target=None):
    st = stats[name]
    return row(method, case, st.ms, stats["optax.sgd"].ms, st.median, target,
               st.quartiles)

  amortised_stats = _timing.RatioStats(
      ratios=amortised(stats["labpal train"].ratios,
                       stats["labpal measure"].ratios),
      ms=amortised(stats["labpal train"].ms, stats["labpal measure"].ms))
  stats["labpal amortised"] = amortised_stats
  cases = [
      ("pal", "reference: SGD step + 1 forward (1 FB + 1 F)", "sgd + 1 F",
       None),
      ("pal", "train step (1 FB + 1 F)", "pal", PAL_TARGET),
      ("labpal", "training step (1 FB)", "labpal train", None),
      ("labpal", "training step, mode='sgd' (1 FB)", "labpal train sgd",
       None),
      ("labpal", f"measuring step (1 FB + {3 * m} F, M={m})",
       "labpal measure", None),
      ("labpal", f"amortised over {REUSE_STEPS} updates", "labpal amortised",
       LABPAL_AMORTISED_TARGET),
  ]
  wall_rows = [wall("pal", "noise floor: the SGD step against an identical"
                    " copy of itself", "optax.sgd copy")]
  wall_rows += [wall(*case) for case in cases]
  cpu["labpal amortised"] = amortised(cpu["labpal train"],
                                      cpu["labpal measure"])
  base = cpu["optax.sgd"]
  cpu_rows = [
      row(method, f"{case}, process CPU time", cpu[name], base,
          cpu[name] / base, target)
      for method, case, name, target in cases
  ]
  return wall_rows + cpu_rows
