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
"""Each method's cost on realistic models, in one run on an accelerator.

Usage::

  python -m benchmarks.overhead.gpu_suite [--out results/gpu_suite.jsonl]
      [--budget-s 420] [--sections resnet18,single_leaf,gpt,overhead]
      [--quick]
  python -m benchmarks.overhead.gpu_suite --report results/gpu_suite.jsonl

Sections, most important first; each is one or more groups of rows, and a
group whose estimated time no longer fits in ``--budget-s`` is skipped
(with a record saying so):

* ``resnet18``: full jitted train steps of a CIFAR-style ResNet-18
  (:class:`benchmarks.harness.models.ResNet`, 11.2M parameters, batch norm) on
  synthetic 32x32x3 images, batch 256;
* ``single_leaf``: updates of one leaf of 100M and 10M floats
  (``benchmarks.studies.cprop_single_leaf``), where only memory traffic counts
  (short, so before the longest section);
* ``gpt``: train steps of a GPT-2-small-shaped decoder
  (:class:`benchmarks.harness.models.GPT`, 124M parameters, 12 scanned
  layers) on random tokens, batch 8 x 1024;
* ``overhead``: the rows of ``benchmarks.overhead``, one method module at a
  time.

Both models train in the usual mixed precision: float32 parameters,
gradients and optimizer state, bfloat16 activations (Flax ``dtype=bfloat16``
layers); normalisation statistics and the loss are float32. Against their
bases (a second copy of each base gives the noise floor):

* ``cprop_adam`` against ``optax.adam``;
* against SGD (momentum 0.9, weight decay 5e-4): ``cprop(sgd)``,
  ``chain(sgd, autodrop(window_size=64))`` (its ordinary and window-end
  steps, amortised over the window), AdaS (its step, its epoch end, and an
  epoch of 195 steps with its end amortised per step; ResNet only: AdaS
  rates conv layers; the end is timed on the weights of a few steps from
  initialisation), PAL (1 forward-backward + 1 forward), and LABPAL
  (training and measuring step, amortised over ``reuse_steps=1000``).

The window position of AutoDrop and LABPAL's ``force_measure`` are
arguments of the one compiled step, so both kinds of step run the
executable a user runs. Ratios are medians of per-round ratios
(:func:`benchmarks.overhead._timing.paired_ratios`). Each train step's row also
gives the kernels of its compiled executable (:func:`count_kernels`).

The output is JSON lines: a header (device, driver, versions), then the rows
of each group, appended and flushed as soon as they are measured, so that a
run stopped by a time limit keeps what it measured. ``--quick`` runs tiny
shapes and few rounds on any backend (a smoke test, in the test suite).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_adaptive as oa
from benchmarks import overhead
from benchmarks.harness import models
from benchmarks.overhead import _timing
from benchmarks.studies import cprop_single_leaf

SECTIONS = ("resnet18", "single_leaf", "gpt", "overhead")
TRAIN_STEP_TARGET = 1.05  # CProp, AutoDrop, AdaS (amortised), LABPAL (am.)
PAL_TARGET = 1.40  # one extra forward pass is inherent
LEAF_TARGETS = {"cprop_adam": 1.40, "cprop(adam)": 1.75}  # 100M floats
WINDOW = 64  # AutoDrop's window (the paper's CIFAR setting)
REUSE_STEPS = 1000  # LABPAL's default
APPROX_BATCHES = 10  # LABPAL's M
N_BATCHES = APPROX_BATCHES  # synthetic batches on the device
QUICK_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0,
                          "xla_llvm_disable_expensive_passes": True}


# ------------------------------------------------------------------ tasks


@dataclasses.dataclass(frozen=True)
class Task:
  """A model on synthetic data; ``steps_per_epoch`` > 0 also runs AdaS."""

  name: str
  make_model: Callable[[nnx.Rngs], nnx.Module]
  make_batches: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]
  loss: Callable[[jax.Array, jax.Array], jax.Array]
  steps_per_epoch: int = 0


def _classification_loss(logits, labels):
  logits = logits.astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def resnet_task(quick: bool) -> Task:
  """ResNet-18 on 32x32x3 images, batch 256, bfloat16 activations (quick:
  one tiny block, float32, which XLA:CPU compiles faster)."""
  size, batch = (8, 4) if quick else (32, 256)
  kwargs = dict(widths=(4,), blocks=(1,), dtype=jnp.float32) \
      if quick else {}

  def make_batches(rng):
    x = rng.standard_normal((N_BATCHES, batch, size, size, 3), np.float32)
    return x, rng.integers(0, 10, (N_BATCHES, batch), np.int32)

  return Task(
      name=f"ResNet-18{' (tiny)' if quick else ''} {size}x{size}x3 b={batch}",
      make_model=lambda rngs: models.ResNet(rngs=rngs, **kwargs),
      make_batches=make_batches, loss=_classification_loss,
      steps_per_epoch=50_000 // 256)  # a CIFAR-10 epoch at batch 256


def gpt_task(quick: bool) -> Task:
  """GPT-2 small on random tokens, batch 8 x 1024, bfloat16 activations
  (quick: 2 tiny layers, float32)."""
  shape = dict(vocab=16, context=8, layers=2, dim=8, heads=1,
               dtype=jnp.float32) if quick else \
      dict(vocab=50304, context=1024, layers=12, dim=768, heads=12)
  batch = 2 if quick else 8

  def make_batches(rng):
    tokens = rng.integers(0, shape["vocab"],
                          (N_BATCHES, batch, shape["context"] + 1), np.int32)
    return tokens[..., :-1], tokens[..., 1:]

  return Task(
      name=f"GPT {shape['layers']}x{shape['dim']}{' (tiny)' if quick else ''}"
      f" b={batch}x{shape['context']}",
      make_model=lambda rngs: models.GPT(rngs=rngs, **shape),
      make_batches=make_batches, loss=_classification_loss)


# ------------------------------------------------------------- train step


class Variant(NamedTuple):
  """An optimizer and how a train step calls it.

  ``kwargs_fn(ctx)`` returns the extra keyword arguments of ``tx.update``;
  ``state_fn(opt_state, ctl)`` edits the state before the update. ``ctl`` is
  an int32 argument of the compiled step (a window position, a flag).
  """

  tx: optax.GradientTransformation
  kwargs_fn: Callable[[dict], dict] | None = None
  state_fn: Callable[[Any, jax.Array], Any] | None = None


def _pal_kwargs(ctx):
  return dict(value=ctx["loss"], grad=ctx["grads"],
              value_fn=ctx["value_fn"], x=ctx["x"], y=ctx["y"])


def _labpal_kwargs(ctx):
  """The step's batch and M - 1 device-resident batches, passed as indices,
  so that a training step moves no extra data (docs/labpal.md)."""
  data_x, data_y = ctx["data"]

  def value_fn(params, i, x, y):
    other = jnp.maximum(i - 1, 0)
    x = jnp.where(i == 0, x, data_x[other])
    y = jnp.where(i == 0, y, data_y[other])
    return ctx["value_fn"](params, x, y)

  return dict(value=ctx["loss"], grad=ctx["grads"], value_fn=value_fn,
              x=ctx["x"], y=ctx["y"],
              approx_batch={"i": jnp.arange(APPROX_BATCHES)},
              force_measure=ctx["ctl"] > 0)


def _pin_window(state, ctl):
  return optax.tree.set(state, window_step=ctl)


def variants(task: Task) -> dict[str, Variant]:
  """The optimizers compared on ``task``, bases first."""

  def sgd():
    return optax.chain(optax.add_decayed_weights(5e-4),
                       optax.sgd(0.05, momentum=0.9))

  out = {
      "adam": Variant(optax.adam(3e-4)),
      "cprop_adam": Variant(oa.cprop_adam(3e-4)),
      "sgd": Variant(sgd()),
      "cprop(sgd)": Variant(oa.cprop(sgd())),
      "autodrop": Variant(optax.chain(sgd(), oa.autodrop(window_size=WINDOW)),
                          state_fn=_pin_window),
      "pal": Variant(oa.pal(), kwargs_fn=_pal_kwargs),
      "labpal": Variant(oa.labpal(reuse_steps=REUSE_STEPS),
                        kwargs_fn=_labpal_kwargs),
  }
  if task.steps_per_epoch:
    out["adas"] = Variant(oa.adas(learning_rate=0.05))
  return out


def _train_step_fn(task: Task, graphdef, variant: Variant):
  """``step(params, opt_state, stats, x, y, data, ctl)`` of one variant."""

  def loss_fn(params, stats, x, y):
    model = nnx.merge(graphdef, params, stats)
    loss = task.loss(model(x), y)
    return loss, nnx.as_pure(nnx.state(model, nnx.BatchStat))

  def step(params, opt_state, stats, x, y, data, ctl):
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, stats, x, y)
    if variant.state_fn is not None:
      opt_state = variant.state_fn(opt_state, ctl)
    kwargs = {}
    if variant.kwargs_fn is not None:
      kwargs = variant.kwargs_fn(dict(
          loss=loss, grads=grads, x=x, y=y, data=data, ctl=ctl,
          value_fn=lambda p, x, y: loss_fn(p, stats, x, y)[0]))
    updates, opt_state = variant.tx.update(grads, opt_state, params,
                                           **kwargs)
    return optax.apply_updates(params, updates), opt_state, new_stats, loss

  return step


class Compiled(NamedTuple):
  executable: Any
  kernels: dict[str, int]
  compile_s: float


def _compile_all(lowered: dict[str, Any],
                 options: dict[str, Any]) -> dict[str, Compiled]:
  """Compiles lowered computations on parallel threads (XLA releases the
  GIL while compiling), reading each one's kernels."""

  def compile_one(low):
    start = time.perf_counter()
    executable = low.compile(compiler_options=options)
    elapsed = time.perf_counter() - start
    return Compiled(executable, count_kernels(executable.as_text()), elapsed)

  workers = max(1, min(len(lowered), os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    futures = {name: pool.submit(compile_one, low)
               for name, low in lowered.items()}
    return {name: f.result() for name, f in futures.items()}


class ModelBench:
  """A task's train steps, compiled on demand, and closures running them.

  Every closure carries its own params, optimizer state and batch-norm
  statistics (donated from call to call) and cycles through the synthetic
  batches already on the device. The model is initialised by Flax inside
  one jitted function, with an RBG key (XLA's random bit generator
  compiles much faster than threefry on a CPU).
  """

  def __init__(self, task: Task, quick: bool = False):
    self.task = task
    # A smoke test needs no optimised machine code (CPU compiles ~2x faster).
    self.compiler_options = QUICK_COMPILER_OPTIONS if quick else {}

    def make():
      return task.make_model(nnx.Rngs(jax.random.key(0, impl="rbg")))

    self.graphdef = nnx.split(nnx.eval_shape(make), nnx.Param,
                              nnx.BatchStat)[0]
    self.params, self.stats = jax.jit(lambda: nnx.as_pure(
        nnx.split(make(), nnx.Param, nnx.BatchStat)[1:]))()
    self.n_params = _timing.tree_size(self.params)
    x, y = task.make_batches(np.random.default_rng(1))
    self.data = (jax.device_put(x), jax.device_put(y))
    self.batches = [(jax.device_put(x[i]), jax.device_put(y[i]))
                    for i in range(N_BATCHES)]
    self.variants = variants(task)
    self.compiled: dict[str, Compiled] = {}
    self.compile_wall_s = 0.0

    @jax.jit
    def fresh(params, stats):
      copy = jax.tree.map(jnp.copy, (params, stats))
      return copy, {name: v.tx.init(params)
                    for name, v in self.variants.items()}

    self._fresh = fresh

  def compile(self, names: list[str]) -> None:
    """Compiles what ``names`` lists (train steps by variant name, and
    "adas end") and is not compiled yet: the first (the base) alone, then
    the others on parallel
    threads. XLA caches autotuning results per process, so every variant
    then runs the convolution and matmul algorithms the base chose (tuned
    concurrently, they could differ and bias the ratios)."""
    names = [name for name in names if name not in self.compiled]
    start = time.perf_counter()
    for batch in (names[:1], names[1:]):
      lowered = {name: self._lower(name) for name in batch}
      self.compiled.update(_compile_all(lowered, self.compiler_options))
    self.compile_wall_s += time.perf_counter() - start

  def _lower(self, name: str):
    if name == "adas end":
      tx = self.variants["adas"].tx
      state = jax.eval_shape(tx.init, self.params)
      end = lambda s, p: tx.update(  # zero gradients: the epoch end alone
          jax.tree.map(jnp.zeros_like, p), s, p, end_of_epoch=True)[1]
      return jax.jit(end).lower(state, self.params)
    variant = self.variants[name]
    step = jax.jit(_train_step_fn(self.task, self.graphdef, variant),
                   donate_argnums=(0, 1, 2))
    opt_state = jax.eval_shape(variant.tx.init, self.params)
    x, y = self.batches[0]
    return step.lower(self.params, opt_state, self.stats, x, y, self.data,
                      jnp.int32(0))

  def closure(self, name: str, ctl: int = 0) -> Callable[[], Any]:
    """Runs one train step of variant ``name`` per call; returns the loss.

    The closure's ``carry`` attribute holds its params, state and batch.
    """
    self.compile([name])
    run = self.compiled[name].executable
    (params, stats), states = self._fresh(self.params, self.stats)
    carry = {"params": params, "stats": stats, "state": states[name], "i": 0}
    del states
    ctl = jnp.int32(ctl)

    def step():
      i = carry["i"]
      x, y = self.batches[i]
      carry["params"], carry["state"], carry["stats"], loss = run(
          carry["params"], carry["state"], carry["stats"], x, y, self.data,
          ctl)
      carry["i"] = (i + 1) % N_BATCHES
      return loss

    step.carry = carry
    return step

  def adas_end_closure(self) -> Callable[[], Any]:
    """AdaS's epoch end, on the params and state after a few AdaS steps."""
    self.compile(["adas end"])
    train = self.closure("adas")
    for _ in range(3):
      train()
    end = self.compiled["adas end"].executable
    return lambda: end(train.carry["state"], train.carry["params"])


# ------------------------------------------------------------------ rows


def _rounds(quick: bool) -> dict[str, Any]:
  if quick:
    return {"rounds": 3, "min_turn_s": 0.0}
  return _timing.paired_rounds(quick=False)


def _weighted(stats: dict[str, _timing.RatioStats],
              weights: dict[str, float]) -> _timing.RatioStats:
  """Per-round weighted sum of closures' ratios and times: an amortised
  step made of several kinds of step."""
  return _timing.RatioStats(
      ratios=sum(w * stats[name].ratios for name, w in weights.items()),
      ms=sum(w * stats[name].ms for name, w in weights.items()))


class _Rows:
  """Builds the rows of one paired measurement of a model's train steps."""

  def __init__(self, section: str, bench: ModelBench,
               stats: dict[str, _timing.RatioStats], base: str,
               base_label: str):
    self.section, self.bench, self.stats = section, bench, stats
    self.base, self.base_label = base, base_label

  def __call__(self, method: str, case: str, name: str,
               target: float | None, executable: str | None = None) -> dict:
    """A row for closure ``name``, with the kernels of ``executable``
    (default: the variant the closure runs)."""
    row = _timing.ratio_row(
        method, f"{case}, {self.bench.task.name}", self.stats[name],
        self.stats[self.base], self.base_label, target)
    row["section"] = self.section
    executable = executable or name.split(" ")[0]
    if executable in self.bench.compiled:
      kernels = self.bench.compiled[executable].kernels
      row["kernels"] = kernels["kernels"]
      row["loops"] = kernels["while"] + kernels["conditional"]
      row["base_kernels"] = self.bench.compiled[self.base].kernels["kernels"]
    return row


def adam_rows(section: str, bench: ModelBench, quick: bool) -> list[dict]:
  """``cprop_adam`` against ``optax.adam`` (and Adam against itself)."""
  bench.compile(["adam", "cprop_adam"])
  fns = {"adam": bench.closure("adam"), "adam copy": bench.closure("adam"),
         "cprop_adam": bench.closure("cprop_adam")}
  row = _Rows(section, bench,
              _timing.paired_ratios(fns, "adam", **_rounds(quick)),
              "adam", "optax.adam")
  return [row("adam", "noise floor: train step against a copy of itself",
              "adam copy", None),
          row("cprop", "train step, cprop_adam", "cprop_adam",
              TRAIN_STEP_TARGET)]


def sgd_rows(section: str, bench: ModelBench, quick: bool) -> list[dict]:
  """CProp, AutoDrop, AdaS, PAL and LABPAL against SGD."""
  adas = "adas" in bench.variants
  bench.compile(["sgd", "cprop(sgd)", "autodrop", "pal", "labpal"]
                + (["adas", "adas end"] if adas else []))
  fns = {"sgd": bench.closure("sgd"), "sgd copy": bench.closure("sgd"),
         "cprop(sgd)": bench.closure("cprop(sgd)"),
         "autodrop ordinary": bench.closure("autodrop", ctl=1),
         "autodrop window-end": bench.closure("autodrop", ctl=WINDOW - 1),
         "pal": bench.closure("pal"),
         "labpal train": bench.closure("labpal", ctl=0),
         "labpal measure": bench.closure("labpal", ctl=1)}
  if adas:
    fns["adas"] = bench.closure("adas")
    fns["adas end"] = bench.adas_end_closure()
  stats = _timing.paired_ratios(fns, "sgd", **_rounds(quick))
  k, r, s = WINDOW, REUSE_STEPS, bench.task.steps_per_epoch
  stats["autodrop amortised"] = _weighted(
      stats, {"autodrop ordinary": (k - 1) / k, "autodrop window-end": 1 / k})
  stats["labpal amortised"] = _weighted(
      stats, {"labpal train": (r - 1) / r, "labpal measure": 1 / r})
  row = _Rows(section, bench, stats, "sgd", "sgd(0.9), wd 5e-4")
  rows = [
      row("sgd", "noise floor: train step against a copy of itself",
          "sgd copy", None),
      row("cprop", "train step, cprop(sgd)", "cprop(sgd)", TRAIN_STEP_TARGET),
      row("autodrop", "train step, ordinary", "autodrop ordinary", None),
      row("autodrop", "train step, window end", "autodrop window-end", None),
      row("autodrop", f"train step, amortised over k={k}",
          "autodrop amortised", TRAIN_STEP_TARGET),
  ]
  if adas:
    stats["adas epoch"] = _weighted(stats, {"adas": 1, "adas end": 1 / s})
    rows += [
        row("adas", "train step", "adas", None),
        row("adas", "epoch end alone (in SGD steps)", "adas end", None,
            executable="adas end"),
        row("adas", f"epoch of {s} steps with its end, per step",
            "adas epoch", TRAIN_STEP_TARGET, executable="adas"),
    ]
  rows += [
      row("pal", "train step (1 FB + 1 F)", "pal", PAL_TARGET),
      row("labpal", "training step (1 FB)", "labpal train", None),
      row("labpal", f"measuring step (1 FB + {3 * APPROX_BATCHES} F)",
          "labpal measure", None),
      row("labpal", f"amortised over {r} updates", "labpal amortised",
          TRAIN_STEP_TARGET),
  ]
  return rows


def single_leaf_rows(n: int, quick: bool) -> list[dict]:
  """Updates of one leaf of ``n`` floats against ``optax.adam``."""
  stats = _timing.paired_ratios(cprop_single_leaf.closures(n), "adam",
                                **_rounds(quick))
  targets = LEAF_TARGETS if n >= 100_000_000 else {}
  return [
      dict(_timing.ratio_row("cprop", f"update, {name}, one leaf of {n:,}"
                             " floats", stats[name], stats["adam"],
                             "optax.adam", targets.get(name)),
           section="single_leaf")
      for name in stats if name != "adam"
  ]


def overhead_rows(method: str, quick: bool) -> list[dict]:
  """The rows of ``benchmarks/overhead/<method>.py``."""
  return [dict(row, section="overhead")
          for row in overhead.collect([method], quick)]


# ---------------------------------------------------------------- kernels

# Instructions that launch nothing: they name, group or alias buffers.
_FREE_OPCODES = frozenset({
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast",
    "after-all", "add-dependency", "opt-barrier", "partition-id",
    "replica-id"})
_COMPUTATION = re.compile(r"^(?P<entry>ENTRY\s+)?%?(?P<name>[\w.\-]+)\s+.*\{$")
_OPCODE = re.compile(r"=\s*(?:\(.*?\)|\S+)\s+(?P<opcode>[a-z][\w\-]*)\(")
_CALLED = re.compile(
    r"\b(?P<key>condition|body|to_apply|true_computation|false_computation)"
    r"=%?(?P<name>[\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{(?P<names>[^}]*)\}")


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str]:
  """Instruction lines of each computation, and the entry's name."""
  computations, entry, current = {}, None, None
  for line in hlo_text.splitlines():
    stripped = line.strip()
    if current is None:
      match = _COMPUTATION.match(stripped)
      if match:
        current = match["name"]
        computations[current] = []
        if match["entry"]:
          entry = current
    elif stripped == "}":
      current = None
    elif stripped:
      computations[current].append(stripped)
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return computations, entry


def count_kernels(hlo_text: str) -> dict[str, int]:
  """Kernels a compiled executable launches, counted in its HLO text.

  Every instruction of the entry computation except those in
  ``_FREE_OPCODES`` counts as one kernel (a fusion, a library call, or an
  unfused operation), and so does every instruction of the computations
  that ``while``, ``conditional`` and ``call`` run (recursively, each once:
  a static count, whatever the trip count). Fused and reduction
  computations are not entered: a fusion is one kernel.

  Returns:
    ``{"kernels": ..., "while": ..., "conditional": ...}``: the kernel count
    and the number of loops and conditionals (on a GPU each one reads its
    predicate back to the host).
  """
  computations, entry = _computations(hlo_text)
  counts = {"kernels": 0, "while": 0, "conditional": 0}

  def walk(name):
    for line in computations[name]:
      match = _OPCODE.search(line)
      if match is None or match["opcode"] in _FREE_OPCODES:
        continue
      opcode = match["opcode"]
      if opcode in ("while", "conditional", "call"):
        counts[opcode] = counts.get(opcode, 0) + 1
        called = [m["name"] for m in _CALLED.finditer(line)]
        branches = _BRANCHES.search(line)
        if branches:
          called += [b.strip().lstrip("%")
                     for b in branches["names"].split(",")]
        for computation in called:
          walk(computation)
      else:
        counts["kernels"] += 1

  walk(entry)
  counts.pop("call", None)
  return counts


# ---------------------------------------------------------- run and report


class Group(NamedTuple):
  """Rows measured together; run only if ``estimate_s`` fits the budget."""

  section: str
  name: str
  estimate_s: float  # rough wall time on an H100, compiles included
  run: Callable[[], list[dict]]


def _model_groups(section: str, task: Task, quick: bool) -> Iterator[Group]:
  benches: list[ModelBench] = []

  def with_bench(rows_fn):
    def run():
      if not benches:
        benches.append(ModelBench(task, quick))
      bench = benches[0]
      compiled, wall = set(bench.compiled), bench.compile_wall_s
      rows = rows_fn(section, bench, quick)
      info = {"section": section, "info": "compiled", "task": task.name,
              "params": bench.n_params,
              "compile_wall_s": bench.compile_wall_s - wall,
              "compile_s": {name: c.compile_s
                            for name, c in bench.compiled.items()
                            if name not in compiled}}
      return [info, *rows]
    return run

  estimates = (0, 0) if quick else (
      {"resnet18": (60, 60), "gpt": (80, 70)}[section])
  yield Group(section, "adam", estimates[0], with_bench(adam_rows))
  yield Group(section, "sgd", estimates[1], with_bench(sgd_rows))
  benches.clear()  # frees the device memory before the next section


def groups(sections: list[str], quick: bool) -> Iterator[Group]:
  """The suite's groups in order, most important first."""
  tasks = {"resnet18": resnet_task, "gpt": gpt_task}
  for section in sections:
    if section in tasks:
      yield from _model_groups(section, tasks[section](quick), quick)
    elif section == "single_leaf":
      sizes = ((10_000, 0),) if quick else ((100_000_000, 20),
                                             (10_000_000, 10))
      for n, estimate in sizes:
        yield Group(section, f"{n} floats", estimate,
                    lambda n=n: single_leaf_rows(n, quick))
    elif section == "overhead":
      for method, estimate in (("cprop", 30), ("autodrop", 30),
                               ("labpal", 50), ("adas", 20)):
        yield Group(section, method, 0 if quick else estimate,
                    lambda method=method: overhead_rows(method, quick))
    else:
      raise ValueError(f"unknown section {section!r}; known: {SECTIONS}")


def _driver() -> str:
  try:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
         "--format=csv,noheader"], capture_output=True, text=True,
        timeout=30, check=True)
  except (OSError, subprocess.SubprocessError):
    return "n/a"
  return out.stdout.strip() or "n/a"


def _commit() -> str:
  """The checkout's commit, or "n/a" (a copied working tree has no .git)."""
  try:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, timeout=10,
                         check=True, cwd=pathlib.Path(__file__).parent)
  except (OSError, subprocess.SubprocessError):
    return "n/a"
  return out.stdout.strip()


def header(args: argparse.Namespace) -> dict:
  """Where and with what the suite ran."""
  device = jax.devices()[0]
  versions = {name: importlib.metadata.version(name)
              for name in ("jax", "jaxlib", "optax", "flax")}
  return {"header": "benchmarks.overhead.gpu_suite",
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec="seconds"),
          "device_kind": device.device_kind, "platform": device.platform,
          "device_count": jax.device_count(), "driver": _driver(),
          **versions, "python": sys.version.split()[0],
          "machine": _timing.machine_info(),
          "commit": args.commit or _commit(),
          "args": {k: str(v) for k, v in vars(args).items()}}


class JsonLines:
  """Appends one JSON record per line, flushed at once."""

  def __init__(self, path: pathlib.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    self._file = path.open("w")

  def write(self, record: dict) -> None:
    self._file.write(json.dumps(record, default=float) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def run(args: argparse.Namespace, out: JsonLines) -> None:
  """Runs the groups that fit ``args.budget_s``, writing rows as it goes."""
  start = time.monotonic()
  out.write(header(args))
  for group in groups(args.sections, args.quick):
    where = {"section": group.section, "group": group.name}
    elapsed = time.monotonic() - start
    if elapsed + group.estimate_s > args.budget_s:
      out.write({**where, "skipped": f"budget: {elapsed:.0f} s spent, about "
                 f"{group.estimate_s:.0f} s needed, {args.budget_s:.0f} s"
                 " allowed"})
      continue
    group_start = time.monotonic()
    try:
      rows = group.run()
    except Exception as error:  # the next groups still run
      if args.quick:
        raise
      out.write({**where, "error": f"{type(error).__name__}: {error}"})
      continue
    for row in rows:
      out.write(row)
    out.write({**where, "wall_s": time.monotonic() - group_start})
  out.write({"end": True, "elapsed_s": time.monotonic() - start})


def load(path: pathlib.Path) -> list[dict]:
  with path.open() as f:
    return [json.loads(line) for line in f if line.strip()]


def report(records: list[dict]) -> str:
  """The ratio table, the kernel counts and what was skipped or failed."""
  lines = []
  for record in records:
    if "header" in record:
      lines.append(f"{record['device_kind']} ({record['platform']}), driver "
                   f"{record['driver']}, jax {record['jax']}, jaxlib "
                   f"{record['jaxlib']}, commit {record['commit']}")
  rows = [r for r in records if "ratio" in r]
  lines += ["", overhead.markdown_table(rows), ""]
  kernel_rows = [r for r in rows if "kernels" in r]
  if kernel_rows:
    lines += ["| section | method | case | kernels | base kernels | loops |",
              "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['section']} | {r['method']} | {r['case']} | "
              f"{r['kernels']} | {r['base_kernels']} | {r['loops']} |"
              for r in kernel_rows]
    lines.append("")
  for r in records:
    if "info" in r:
      lines.append(f"{r['section']}: {r['task']}, {r['params']:,} params, "
                   f"compiled in {r['compile_wall_s']:.1f} s")
    elif "skipped" in r or "error" in r:
      lines.append(f"{r['section']} {r['group']}: "
                   f"{r.get('skipped') or 'ERROR ' + r['error']}")
    elif "wall_s" in r:
      lines.append(f"{r['section']} {r['group']}: {r['wall_s']:.1f} s")
    elif "end" in r:
      lines.append(f"total {r['elapsed_s']:.1f} s")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path("results/gpu_suite.jsonl"),
                      help="JSON-lines file, written row by row")
  parser.add_argument("--budget-s", type=float, default=420.0,
                      help="skip groups that would end later than this")
  parser.add_argument("--sections", default=None,
                      help=f"comma-separated subset of {','.join(SECTIONS)}"
                      " (default: all; with --quick all but overhead)")
  parser.add_argument("--quick", action="store_true",
                      help="tiny shapes and 3 rounds: a smoke test")
  parser.add_argument("--commit", default=None,
                      help="the code's commit, for the header (default: git's"
                      " HEAD, where there is a .git)")
  parser.add_argument("--report", type=pathlib.Path, default=None,
                      help="only print the tables of this JSON-lines file")
  args = parser.parse_args(argv)
  if args.report is not None:
    print(report(load(args.report)))
    return 0
  if args.sections is None:
    args.sections = [s for s in SECTIONS
                     if not (args.quick and s == "overhead")]
  else:
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
      parser.error(f"unknown sections {unknown}; known: {list(SECTIONS)}")
  out = JsonLines(args.out)
  try:
    run(args, out)
  finally:
    out.close()
  print(report(load(args.out)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
