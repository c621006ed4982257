"""Training-quality comparison of optax_adaptive against optax baselines.

Usage::

  python -m benchmarks.compare                  # quick table, mnist1d, the
                                                # quick set of optimizers
  python -m benchmarks.compare --full           # published table: all tasks,
                                                # 5 seeds, 40 epochs
  python -m benchmarks.compare --task digits --optimizers sgd-step,adas
  python -m benchmarks.compare --tune           # grid for the SGD baselines
  python -m benchmarks.compare --list           # the registry
  python -m benchmarks.compare --full --report  # tables and plots again,
                                                # from the stored run JSONs

Writes ``<out>/<task>/<optimizer>_seed<k>.json`` per run,
``<out>/<task>/table.md`` (mean ± std over seeds), ``summary.json`` and PNG
plots. Deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np
import optax
from tqdm import tqdm

from benchmarks.harness import optimizers as opt_registry
from benchmarks.harness import tasks as task_registry
from benchmarks.harness import train

DEFAULT_SEEDS = 2
FULL_SEEDS = 5


# ----------------------------------------------------------------- tables


def _mean_std(values, fmt="{:.2f}", scale=1.0) -> str:
  values = [v * scale for v in values if v is not None]
  if not values:
    return "–"
  if len(values) == 1:
    return fmt.format(values[0])
  return f"{fmt.format(np.mean(values))} ± {fmt.format(np.std(values))}"


def _steps(values) -> str:
  reached = [v for v in values if v is not None]
  if not reached:
    return f"never (0/{len(values)})"
  text = f"{np.mean(reached):.0f}"
  if len(reached) < len(values):
    text += f" ({len(reached)}/{len(values)})"
  return text


def summarize(task: task_registry.Task, records: dict[str, list[dict]],
              skipped: dict[str, str], epochs: int, seeds: int) -> str:
  """The markdown table of one task (mean ± std over seeds)."""
  lines = [
      f"### {task.name}: {task.description}",
      "",
      f"{epochs} epochs, seeds 0..{seeds - 1}; accuracies in %, mean ± std "
      f"over seeds. Steps to target: first epoch end where the epoch-mean "
      f"training loss ≤ {task.target_loss} / test accuracy ≥ "
      f"{task.target_acc:.0%} (mean over the seeds that reach it).",
      "",
      "| optimizer | family | final test acc | best test acc | final train "
      "loss | steps to loss | steps to acc | s / run | compile s |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for name, runs in records.items():
    spec = opt_registry.get(name)
    diverged = sum(r["diverged"] for r in runs)
    note = f" (diverged {diverged}/{len(runs)})" if diverged else ""
    lines.append(
        f"| {name}{note} | {spec.family} | "
        f"{_mean_std([r['final_test_acc'] for r in runs], scale=100)} | "
        f"{_mean_std([r['best_test_acc'] for r in runs], scale=100)} | "
        f"{_mean_std([r['final_train_loss'] for r in runs], '{:.4f}')} | "
        f"{_steps([r['steps_to_target_loss'] for r in runs])} | "
        f"{_steps([r['steps_to_target_acc'] for r in runs])} | "
        f"{np.mean([r['wall_s'] for r in runs]):.1f} | "
        f"{runs[0]['compile_s']:.1f} |")
  for name, reason in skipped.items():
    spec = opt_registry.get(name)
    lines.append(f"| {name} | {spec.family} | skipped: {reason} "
                 "| | | | | | |")
  return "\n".join(lines) + "\n"


def _mean_of(runs, key):
  values = [r[key] for r in runs if r[key] is not None]
  return (float(np.mean(values)), len(values)) if values else (None, 0)


def _acc(runs):
  values = 100 * np.array([r["final_test_acc"] for r in runs])
  return values.mean(), values.std()


def claims(records: dict[str, list[dict]]) -> str:
  """The papers' claims (docs/results.md) next to what these runs show."""
  lines = []

  def have(*names):
    return all(n in records for n in names)

  for base, cp in (("sgd", "cprop-sgd"), ("adam", "cprop-adam")):
    if not have(base, cp):
      continue
    b, nb = _mean_of(records[base], "steps_to_target_loss")
    c, nc = _mean_of(records[cp], "steps_to_target_loss")
    n = len(records[base])
    if b is None or c is None:
      lines.append(f"- CProp ({cp} vs {base}): target loss reached by "
                   f"{nb}/{n} {base} runs and {nc}/{n} {cp} runs; no ratio.")
    else:
      lines.append(f"- CProp ({cp} vs {base}): {c:.0f} vs {b:.0f} steps to "
                   f"the target training loss, {b / c:.2f}x fewer "
                   f"(paper: about 1.35-1.45x).")
  tuned = records.get("sgd-step")
  if tuned is not None:
    ref, ref_std = _acc(tuned)
    ref_steps, _ = _mean_of(tuned, "steps_to_target_acc")
    for name, claim in (
        ("adas", "matches or beats the tuned step schedule"),
        ("autodrop-sgd", "within 0.5 points of the tuned step schedule"),
        ("autodrop-adam", "within 0.5 points of the tuned step schedule"),
        ("labpal", "on par with tuned SGD"),
        ("labpal-ref", "(no claim; the authors' code's growing cap)"),
        ("pal", "(no claim; PAL for reference)"),
    ):
      if name not in records:
        continue
      acc, std = _acc(records[name])
      steps, reached = _mean_of(records[name], "steps_to_target_acc")
      when = ("never reaches the target accuracy" if steps is None else
              f"reaches the target accuracy after {steps:.0f} steps "
              f"({reached}/{len(records[name])} seeds)")
      ref_when = ("never" if ref_steps is None else f"{ref_steps:.0f}")
      lines.append(
          f"- {name}: claim {claim}. Final test accuracy {acc:.2f} ± "
          f"{std:.2f} vs sgd-step {ref:.2f} ± {ref_std:.2f} "
          f"(difference {acc - ref:+.2f} points); {when} (sgd-step: "
          f"{ref_when}).")
  lines += _combination_lines(records)
  if not lines:
    return ""
  return "\nClaims checked on this task:\n\n" + "\n".join(lines) + "\n"


# Each combination (or control) on a learning-rate-free optimizer
# and the optimizer it is built on.
COMBINATIONS = (
    ("autodrop-prodigy", "prodigy"),
    ("cprop-prodigy", "prodigy"),
    ("cprop-autodrop-prodigy", "prodigy"),
    ("prodigy-linear", "prodigy"),
    ("stairs-prodigy", "prodigy"),
    ("autodrop-dadapt-adamw", "dadapt-adamw"),
    ("cprop-dadapt-adamw", "dadapt-adamw"),
)


def _paired(runs, ref_runs) -> str:
  """Final-accuracy difference seed by seed (same init and data order)."""
  by_seed = {r["seed"]: r["final_test_acc"] for r in ref_runs}
  diffs = 100 * np.array([r["final_test_acc"] - by_seed[r["seed"]]
                          for r in runs if r["seed"] in by_seed])
  if not diffs.size:
    return "no common seeds"
  return (f"paired by seed {diffs.mean():+.2f} ± {diffs.std():.2f}, ahead on "
          f"{int(np.sum(diffs > 0))}/{diffs.size}")


def _combination_lines(records) -> list[str]:
  lines = []
  for name, base in COMBINATIONS:
    if name not in records:
      continue
    acc, std = _acc(records[name])
    parts = []
    # prodigy's combinations also against prodigy with its recommended
    # schedule, the control that knows the run length.
    refs = (base, "prodigy-linear", "sgd-step") if base == "prodigy" else (
        base, "sgd-step")
    for ref in refs:
      if ref in records and ref != name:
        ref_acc, ref_std = _acc(records[ref])
        parts.append(f"vs {ref} {ref_acc:.2f} ± {ref_std:.2f}: "
                     f"{acc - ref_acc:+.2f} points, "
                     f"{_paired(records[name], records[ref])}")
    if parts:
      lines.append(f"- {name} (on {base}): final test accuracy {acc:.2f} ± "
                   f"{std:.2f}; " + "; ".join(parts) + ".")
  return lines


def _machine() -> str:
  import jax

  device = jax.devices()[0]
  return (f"{platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU cores visible, {jax.default_backend()} "
          f"device {device.device_kind} x{jax.device_count()}, python "
          f"{platform.python_version()}, jax {_version('jax')}, "
          f"optax {optax.__version__}, flax {_version('flax')}")


def _version(module: str) -> str:
  return getattr(sys.modules.get(module) or __import__(module),
                 "__version__", "?")


# ------------------------------------------------------------------- runs


def _partition(names):
  """(available spec names, {unavailable name: reason})."""
  available, skipped = [], {}
  for name in names:
    reason = opt_registry.availability(opt_registry.get(name))
    if reason is None:
      available.append(name)
    else:
      skipped[name] = reason
  return available, skipped


def run_task(task, names, *, seeds, epochs, out, plots=True, log=print):
  available, skipped = _partition(names)
  for name, reason in skipped.items():
    log(f"[{task.name}] SKIPPED {name}: {reason}")
  task_dir = out / task.name
  task_dir.mkdir(parents=True, exist_ok=True)
  records: dict[str, list[dict]] = {}
  start = time.perf_counter()
  total = len(available) * seeds * epochs
  with tqdm(total=total, desc=task.name, unit="epoch", file=sys.stderr,
            dynamic_ncols=True) as bar:
    for name in available:
      spec = opt_registry.get(name)
      bar.set_postfix_str(f"{name}: compiling")
      done_before = bar.n
      try:
        trainer = train.Trainer(task, spec, epochs)
        runs = []
        for seed in range(seeds):
          def on_epoch(epoch, metrics, name=name, seed=seed):
            bar.update(1)
            bar.set_postfix_str(
                f"{name} seed {seed} loss {metrics['loss']:.3f} "
                f"acc {metrics['acc']:.3f}")
          record = trainer.run(seed, on_epoch)
          (task_dir / f"{name}_seed{seed}.json").write_text(
              json.dumps(record))
          runs.append(record)
        records[name] = runs
      except Exception as e:  # a failing method must not hide the others
        skipped[name] = f"failed: {type(e).__name__}: {e}".splitlines()[0]
        log(f"[{task.name}] FAILED {name}: {skipped[name]}")
        bar.update(done_before + seeds * epochs - bar.n)
  elapsed = time.perf_counter() - start
  table = _write_outputs(task, records, skipped, epochs, seeds, task_dir,
                         plots=plots, elapsed=elapsed, machine=_machine())
  return table, elapsed


def _write_outputs(task, records, skipped, epochs, seeds, task_dir, *,
                   plots, elapsed, machine) -> str:
  """table.md, summary.json and the plots of one task; returns the table."""
  table = summarize(task, records, skipped, epochs, seeds) + claims(records)
  (task_dir / "table.md").write_text(table)
  (task_dir / "summary.json").write_text(json.dumps({
      "task": task.name, "epochs": epochs, "seeds": seeds,
      "elapsed_s": elapsed, "machine": machine,
      "skipped": skipped,
      "runs": {n: [{k: v for k, v in r.items() if k not in ("curves", "trace")}
                   for r in rs] for n, rs in records.items()},
  }, indent=1))
  if plots and records:
    from benchmarks.harness import plots as plot_lib
    plot_lib.plot_task(task, records, task_dir)
  return table


def report_task(task, names, *, seeds, epochs, out, plots=True):
  """Rebuilds a task's table and plots from the run JSON files in ``out``.

  Runs are read from ``<out>/<task>/<optimizer>_seed<k>.json``; an optimizer
  with fewer than ``seeds`` runs of ``epochs`` epochs is listed as skipped,
  never averaged over fewer seeds silently.
  """
  task_dir = out / task.name
  records, skipped = {}, {}
  for name in names:
    paths = [task_dir / f"{name}_seed{k}.json" for k in range(seeds)]
    runs = [json.loads(p.read_text()) for p in paths if p.exists()]
    runs = [r for r in runs if r["epochs"] == epochs]
    if len(runs) == seeds:
      records[name] = runs
    else:
      skipped[name] = (f"{len(runs)}/{seeds} runs of {epochs} epochs in "
                       f"{task_dir}")
  machine = f"rendered from stored runs on {_machine()}"
  table = _write_outputs(task, records, skipped, epochs, seeds, task_dir,
                         plots=plots, elapsed=0.0, machine=machine)
  return table


# ------------------------------------------------------------------ tuning


def tune(task, *, seeds, epochs, out, log=print):
  """Grid for sgd-step (lr x drops) and sgd-cosine (lr) on validation."""
  grid = []
  for lr in opt_registry.TUNE_LRS:
    for drops in opt_registry.TUNE_DROPS:
      grid.append(("sgd-step", {"lr": lr, "drops": drops},
                   opt_registry.sgd_step(lr, drops)))
  for lr in opt_registry.TUNE_LRS:
    grid.append(("sgd-cosine", {"lr": lr}, opt_registry.sgd_cosine(lr)))
  rows = []
  with tqdm(total=len(grid) * seeds * epochs, desc=f"tune {task.name}",
            unit="epoch", file=sys.stderr, dynamic_ncols=True) as bar:
    for name, config, factory in grid:
      spec = dataclasses.replace(opt_registry.get(name), make=factory)
      trainer = train.Trainer(task, spec, epochs)
      runs = [trainer.run(s, lambda *_: bar.update(1)) for s in range(seeds)]
      rows.append({
          "optimizer": name, **config,
          "final_val_acc": float(np.mean([r["final_val_acc"] for r in runs])),
          "best_val_acc": float(np.mean([r["best_val_acc"] for r in runs])),
          "final_test_acc": float(np.mean([r["final_test_acc"]
                                           for r in runs])),
      })
  lines = [f"### tuning on {task.name} (validation split, {epochs} epochs, "
           f"seeds 0..{seeds - 1})", "",
           "| optimizer | lr | drops | final val acc | best val acc |",
           "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['optimizer']} | {r['lr']} | {r.get('drops', '–')} "
                 f"| {100 * r['final_val_acc']:.2f} | "
                 f"{100 * r['best_val_acc']:.2f} |")
  winners = {}
  for name in ("sgd-step", "sgd-cosine"):
    candidates = [r for r in rows if r["optimizer"] == name]
    winners[name] = max(candidates, key=lambda r: (r["final_val_acc"],
                                                   r["best_val_acc"]))
    lines.append(f"\nwinner {name}: {winners[name]}")
  text = "\n".join(lines) + "\n"
  (out / task.name).mkdir(parents=True, exist_ok=True)
  (out / task.name / "tune.md").write_text(text)
  (out / task.name / "tune.json").write_text(json.dumps(
      {"rows": rows, "winners": winners}, indent=1))
  log(text)
  return winners


# --------------------------------------------------------------------- cli


def _parse(argv):
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.compare", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", default="mnist1d",
                      help="task name or 'all': "
                      f"{', '.join(task_registry.TASKS)}")
  parser.add_argument("--optimizers", default=None,
                      help="comma-separated names, or 'all' (default: the "
                      "quick set; with --full, all)")
  parser.add_argument("--seeds", type=int, default=None,
                      help=f"seeds per optimizer (default {DEFAULT_SEEDS}, "
                      f"--full {FULL_SEEDS})")
  parser.add_argument("--epochs", type=int, default=None,
                      help="epochs (default: the task's quick setting; "
                      "--full: the task's full setting)")
  parser.add_argument("--full", action="store_true",
                      help="the published table: all tasks, 5 seeds, "
                      "full epochs")
  parser.add_argument("--out", default="results", help="output folder")
  parser.add_argument("--tune", action="store_true",
                      help="run the SGD tuning grid on the validation split")
  parser.add_argument("--no-plots", action="store_true")
  parser.add_argument("--report", action="store_true",
                      help="train nothing: rebuild tables and plots from the "
                      "run JSON files already in --out")
  parser.add_argument("--list", action="store_true",
                      help="print the registry with availability and exit")
  return parser.parse_args(argv)


def _optimizer_names(optimizers: str | None, *, full: bool) -> list[str]:
  """``--optimizers``: names, ``'all'``, or (unset) the quick set."""
  if optimizers is None:
    optimizers = "all" if full else ",".join(opt_registry.QUICK)
  if optimizers == "all":
    return list(opt_registry.REGISTRY)
  return [n.strip() for n in optimizers.split(",") if n.strip()]


def main(argv=None) -> int:
  args = _parse(argv)
  if args.list:
    for spec in opt_registry.REGISTRY.values():
      reason = opt_registry.availability(spec)
      status = "ok" if reason is None else f"UNAVAILABLE ({reason})"
      if not spec.quick:
        status += ", not in the quick run"
      print(f"{spec.name:22s} {spec.family:9s} {status}\n"
            f"{'':32s} {spec.description}")
    return 0
  task_names = (list(task_registry.TASKS)
                if args.full or args.task == "all" else args.task.split(","))
  tasks = [task_registry.get_task(t) for t in task_names]
  names = _optimizer_names(args.optimizers, full=args.full)
  for name in names:
    opt_registry.get(name)  # fail early on a typo
  seeds = args.seeds or (FULL_SEEDS if args.full else DEFAULT_SEEDS)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  for task in tasks:
    epochs = args.epochs or (task.epochs if args.full or args.tune
                             else task.default_epochs)
    if args.tune:
      tune(task, seeds=seeds, epochs=epochs, out=out)
      continue
    if args.report:
      print(report_task(task, names, seeds=seeds, epochs=epochs, out=out,
                        plots=not args.no_plots))
      continue
    table, elapsed = run_task(task, names, seeds=seeds, epochs=epochs,
                              out=out, plots=not args.no_plots)
    print()
    print(table)
    print(f"[{task.name}] {elapsed:.0f} s; results in {out / task.name}")
  print(f"total {time.perf_counter() - start:.0f} s on {_machine()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
