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
"""Array passes of CProp's and Adam's updates, read from the compiled HLO.

Usage::

  python -m benchmarks.studies.cprop_passes [--size 8388608] [--loops] [--time]

Compiles one jitted update of a single float32 leaf per optimizer, with the
state donated as in a training loop, and reads the optimised HLO of the
backend it runs on. Every top-level operation that touches leaf-sized arrays
is one loop (CPU) or kernel (GPU) over the leaf; the script counts the
leaf-sized arrays each one reads and writes. Their sum is the update's
memory traffic in units of the leaf, and its ratio to Adam's is the floor of
the time ratio where memory bandwidth is the limit. XLA:CPU writes each
output array in its own loop (no multi-output loop fusion), so intermediates
that several outputs share are read again by every loop that needs them;
XLA:GPU fuses sibling outputs into one kernel.

The last row is an experiment, not a library optimizer: Adam written as one
variadic ``lax.reduce_window`` with 1-element windows, the only way found to
make XLA:CPU compute several outputs in one loop. XLA cannot run that loop in
place on the donated state, so it writes fresh buffers and copies them into
the state (``--loops`` lists the copies; ``--time`` measures the cost).

``--time`` also counts minor page faults per call: on a leaf of more than a
few MB each call's fresh output buffers are mapped page by page, a cost
shared by all rows that compresses their ratios (the 10M-parameter tree of
``benchmarks.overhead`` has leaves small enough to reuse memory).
"""

from __future__ import annotations

import argparse
import math
import re
import resource
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

import optax_adaptive as oa
from benchmarks.overhead import _timing

# Instructions that move no data themselves.
_FREE_OPCODES = frozenset(
    {"parameter", "constant", "bitcast", "get-tuple-element", "tuple"})
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%(?P<name>[\w.\-]+)\s*=\s*(?P<shape>\(.*?\)|\S+)\s+"
    r"(?P<opcode>[\w\-]+)\((?P<operands>[^)]*)\)")
_ARRAY_SHAPE = re.compile(r"[a-z]\w*\[([\d,]*)\]")


class Loop(NamedTuple):
  """One top-level operation over leaf-sized arrays."""

  name: str
  opcode: str
  reads: int  # distinct leaf-sized operands
  writes: int  # leaf-sized outputs (tuple elements counted one by one)


def _element_counts(shape: str) -> list[int]:
  return [math.prod(int(d) for d in dims.split(",") if d)
          for dims in _ARRAY_SHAPE.findall(shape)]


def _entry_lines(hlo_text: str) -> list[str]:
  start = hlo_text.index("\nENTRY")
  end = hlo_text.index("\n}", start)
  return hlo_text[start:end].splitlines()[1:]


def leaf_loops(hlo_text: str, size: int) -> list[Loop]:
  """The entry computation's operations that read or write ``size``-element
  arrays, with how many of each they read and write."""
  sizes: dict[str, list[int]] = {}
  loops = []
  for line in _entry_lines(hlo_text):
    match = _INSTRUCTION.match(line)
    if match is None:
      continue
    counts = _element_counts(match["shape"])
    sizes[match["name"]] = counts
    if match["opcode"] in _FREE_OPCODES:
      continue
    operands = dict.fromkeys(re.findall(r"%([\w.\-]+)", match["operands"]))
    reads = sum(1 for op in operands if sizes.get(op) == [size])
    writes = counts.count(size)
    if reads or writes:
      loops.append(Loop(match["name"], match["opcode"], reads, writes))
  return loops


def adam_as_one_loop(learning_rate: float = 1e-3, b1: float = 0.9,
                     b2: float = 0.999,
                     eps: float = 1e-8) -> optax.GradientTransformation:
  """Adam whose update and moments come out of one multi-output loop.

  A variadic ``lax.reduce_window`` with 1-element windows applies its
  computation once per element, to (init values, element), and returns one
  array per operand. The per-step scalars ride in the init values, because
  the computation cannot close over traced values.
  """
  base = optax.adam(learning_rate, b1, b2, eps)

  def element(scalars, values):
    step_scale, inv_correction2, _ = scalars
    g, mu, nu = values
    mu = b1 * mu + (1 - b1) * g
    nu = b2 * nu + (1 - b2) * g * g
    update = -step_scale * mu / (jnp.sqrt(nu * inv_correction2) + eps)
    return update, mu, nu

  def update_fn(updates, state, params=None):
    del params
    adam_state = state[0]
    count = optax.safe_int32_increment(adam_state.count)
    step_scale = learning_rate / (1 - b1 ** count.astype(jnp.float32))
    inv_correction2 = 1 / (1 - b2 ** count.astype(jnp.float32))
    scalars = (step_scale, inv_correction2, jnp.zeros((), jnp.float32))
    out = jax.tree.map(
        lambda g, mu, nu: jax.lax.reduce_window(
            (g, mu, nu), scalars, element, (1,) * g.ndim, (1,) * g.ndim,
            "VALID"),
        updates, adam_state.mu, adam_state.nu)
    pick = lambda i: jax.tree.map(lambda _, o: o[i], updates, out)
    new_adam_state = adam_state._replace(count=count, mu=pick(1),
                                         nu=pick(2))
    new_state = (new_adam_state, *state[1:])
    return pick(0), new_state

  return optax.GradientTransformation(base.init, update_fn)


def optimizers() -> dict[str, optax.GradientTransformation]:
  """The rows: Adam, CProp's updates, and the reduce_window experiment."""
  cprop_rows = {
      "cprop_adam, track_mean_scale=False": lambda: oa.cprop_adam(
          1e-3, track_mean_scale=False),
      "cprop_adam": lambda: oa.cprop_adam(1e-3),
      "cprop(optax.adam), track_mean_scale=False": lambda: oa.cprop(
          optax.adam(1e-3), track_mean_scale=False),
      "cprop(optax.adam)": lambda: oa.cprop(optax.adam(1e-3)),
  }
  rows = {"optax.adam": optax.adam(1e-3)}
  rows.update({name: make() for name, make in cprop_rows.items()})
  rows["experiment: Adam as one reduce_window loop"] = adam_as_one_loop(1e-3)
  return rows


def compiled_update_hlo(tx: optax.GradientTransformation, size: int) -> str:
  """Optimised HLO of a jitted ``tx.update`` of one leaf, state donated."""
  params = {"w": jnp.ones((size,), jnp.float32)}
  grads = {"w": jnp.full((size,), 0.01, jnp.float32)}

  def update_fn(state, g, p):
    updates, state = tx.update(g, state, p)
    return state, updates  # state first, as in _timing.update_closure

  state = jax.eval_shape(tx.init, params)
  return (jax.jit(update_fn, donate_argnums=0)
          .lower(state, grads, params).compile().as_text())


class Timing(NamedTuple):
  ratio: _timing.RatioStats  # paired time ratio to Adam's update
  page_faults: float  # minor page faults per call (fresh output buffers)


def _page_faults_per_call(fn, calls: int = 10) -> float:
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(calls):
    jax.block_until_ready(fn())
  return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def update_times(size: int, rounds: int) -> dict[str, Timing]:
  """Each optimizer's donated update against Adam's, and its page faults."""
  params = {"w": jax.random.normal(jax.random.key(0), (size,), jnp.float32)}
  grads = {"w": jax.random.normal(jax.random.key(1), (size,), jnp.float32)}
  fns = {name: _timing.update_closure(tx, params, grads)
         for name, tx in optimizers().items()}
  ratios = _timing.paired_ratios(fns, "optax.adam", rounds=rounds)
  return {name: Timing(ratios[name], _page_faults_per_call(fn))
          for name, fn in fns.items()}


def markdown_table(size: int, list_loops: bool = False,
                   times: dict[str, Timing] | None = None) -> str:
  rows, details = [], []
  for name, tx in optimizers().items():
    loops = leaf_loops(compiled_update_hlo(tx, size), size)
    passes = sum(loop.reads + loop.writes for loop in loops)
    rows.append((name, len(loops), sum(loop.reads for loop in loops),
                 sum(loop.writes for loop in loops), passes))
    details.append(f"{name}: " + "; ".join(
        f"{loop.opcode} {loop.name} (reads {loop.reads}, writes"
        f" {loop.writes})" for loop in loops))
  adam_passes = rows[0][-1]
  header = "| optimizer | loops | reads | writes | passes | / Adam |"
  rule = "|---|---:|---:|---:|---:|---:|"
  if times is not None:
    header += " time / Adam (quartiles) | page faults / call |"
    rule += "---:|---:|"
  lines = [header, rule]
  for name, n, r, w, p in rows:
    line = f"| {name} | {n} | {r} | {w} | {p} | {p / adam_passes:.2f}x |"
    if times is not None:
      ratio = times[name].ratio
      low, high = ratio.quartiles
      line += (f" {ratio.median:.2f}x ({low:.2f}-{high:.2f}) |"
               f" {times[name].page_faults:.0f} |")
    lines.append(line)
  if list_loops:
    lines += ["", *details]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=1 << 23,
                      help="elements of the single float32 leaf")
  parser.add_argument("--loops", action="store_true",
                      help="also list each loop with its reads and writes")
  parser.add_argument("--time", action="store_true",
                      help="also time each update against Adam's (paired)")
  parser.add_argument("--rounds", type=int, default=21,
                      help="paired timing rounds (with --time)")
  args = parser.parse_args(argv)
  times = update_times(args.size, args.rounds) if args.time else None
  print(markdown_table(args.size, args.loops, times))
  print(f"\nBackend: {jax.default_backend()}; {_timing.machine_info()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
