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
"""Overhead of each method against its base optimizer, as one table.

Usage::

  python -m benchmarks.overhead [--methods cprop,...] [--quick] [--json PATH]
                                [--updates] [--check]

Each method contributes a module ``benchmarks/overhead/<method>.py`` with
``def rows(quick: bool) -> list[dict]`` and, where it times an optimizer
update on its own, ``def update_rows(quick: bool)`` with those rows only
(``--updates``); every row has the keys ``method,
case, time_ms, base, base_ms, ratio, target`` (``target`` is the largest
acceptable ratio, or None). Times within one module are measured in one
interleaved run (:func:`benchmarks.overhead._timing.interleaved_ms` or,
for rows that print the interquartile range of per-round ratios after the
ratio, :func:`benchmarks.overhead._timing.paired_ratios`), so the ratios
cancel machine drift; absolute times depend on the machine printed below
the table. ``_timing`` and ``gpu_suite`` (the same rows and train steps on
a GPU) live beside the method modules.

``--check`` makes the exit status the verdict: 1 when a row's ratio exceeds
``CHECK_FACTOR`` times its target. The targets are what a change must keep;
the factor keeps this shared machine's run-to-run noise (docs/results.md,
"How to read the ratios") from failing a run, while a regression that
doubles a row's cost still does. CI runs ``--updates --check``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib

from benchmarks.overhead import _timing

ROW_KEYS = ("method", "case", "time_ms", "base", "base_ms", "ratio", "target")
# Optional: the interquartile range of per-round ratios
# (benchmarks.overhead._timing.paired_ratios), printed next to the ratio.
OPTIONAL_KEYS = ("ratio_q1", "ratio_q3")
CHECK_FACTOR = 1.25


# Modules of this package that are not a method's rows.
_NOT_METHODS = ("gpu_suite",)


def available_methods() -> list[str]:
  here = pathlib.Path(__file__).parent
  return sorted(p.stem for p in here.glob("*.py")
                if not p.stem.startswith("_") and p.stem not in _NOT_METHODS)


def collect(methods: list[str], quick: bool,
            updates_only: bool = False) -> list[dict]:
  rows = []
  for method in methods:
    module = importlib.import_module(f"benchmarks.overhead.{method}")
    if updates_only and not hasattr(module, "update_rows"):
      continue
    make_rows = module.update_rows if updates_only else module.rows
    for row in make_rows(quick):
      missing = set(ROW_KEYS) - set(row)
      if missing:
        raise ValueError(f"overhead.{method}: row lacks {sorted(missing)}")
      rows.append({key: row[key] for key in ROW_KEYS + OPTIONAL_KEYS
                   if key in row})
  return rows


def _verdict(row: dict) -> str:
  if row["target"] is None:
    return ""
  return "yes" if row["ratio"] <= row["target"] else "NO"


def check_failures(rows: list[dict],
                   factor: float = CHECK_FACTOR) -> list[str]:
  """One line per row whose ratio exceeds ``factor`` times its target."""
  return [
      f"{r['method']}, {r['case']}: {r['ratio']:.2f}x > {factor:g} x"
      f" target {r['target']:.2f}x = {factor * r['target']:.2f}x"
      for r in rows
      if r["target"] is not None and r["ratio"] > factor * r["target"]
  ]


def markdown_table(rows: list[dict]) -> str:
  lines = [
      "| method | case | time (ms) | baseline | baseline (ms) | ratio |"
      " target | met |",
      "|---|---|---:|---|---:|---:|---:|:---:|",
  ]
  for r in rows:
    target = "" if r["target"] is None else f"≤ {r['target']:.2f}x"
    ratio = f"{r['ratio']:.2f}x"
    if "ratio_q1" in r:
      ratio += f" ({r['ratio_q1']:.2f}-{r['ratio_q3']:.2f})"
    lines.append(
        f"| {r['method']} | {r['case']} | {r['time_ms']:.2f} | {r['base']} |"
        f" {r['base_ms']:.2f} | {ratio} | {target} |"
        f" {_verdict(r)} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.overhead",
      description=__doc__.splitlines()[0])
  parser.add_argument("--methods", default=",".join(available_methods()),
                      help="comma-separated methods (default: all found)")
  parser.add_argument("--quick", action="store_true",
                      help="fewer rounds, for a smoke test")
  parser.add_argument("--json", type=pathlib.Path, default=None,
                      help="also write the rows to this JSON file")
  parser.add_argument("--updates", action="store_true",
                      help="only the rows that time an update on its own")
  parser.add_argument("--check", action="store_true",
                      help=f"exit with status 1 when a ratio exceeds"
                      f" {CHECK_FACTOR:g}x its target")
  args = parser.parse_args(argv)
  methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  unknown = sorted(set(methods) - set(available_methods()))
  if unknown:
    parser.error(f"no benchmarks/overhead/<method>.py for {unknown}; "
                 f"available: {available_methods()}")
  rows = collect(methods, args.quick, updates_only=args.updates)
  print(markdown_table(rows))
  print()
  print(f"Machine: {_timing.machine_info()}")
  if args.json is not None:
    args.json.write_text(json.dumps(
        {"machine": _timing.machine_info(), "rows": rows}, indent=2))
  if not args.check:
    return 0
  failures = check_failures(rows)
  for line in failures:
    print(f"CHECK FAILED: {line}")
  if not failures:
    print(f"Check passed: every ratio within {CHECK_FACTOR:g}x its target.")
  return 1 if failures else 0

