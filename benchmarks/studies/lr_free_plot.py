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
"""Prodigy's step-size estimate beside AutoDrop's scale and drop points.

Reads the run JSON files that ``python -m benchmarks.compare`` wrote for
``prodigy`` and its combinations (``autodrop-prodigy``, ``cprop-prodigy``,
``cprop-autodrop-prodigy``) and controls (``prodigy-linear``,
``stairs-prodigy``), draws one seed, and prints, for every seed found,
AutoDrop's drops: how many, the final scale, and the spacing between drops
in windows (10 windows is the fastest AutoDrop's buffer allows).

Run::

  python -m benchmarks.compare --task mnist1d --seeds 5 --epochs 40 \\
      --optimizers prodigy,autodrop-prodigy,cprop-prodigy,\\
cprop-autodrop-prodigy,prodigy-linear,stairs-prodigy --out results
  python -m benchmarks.studies.lr_free_plot --results results --task mnist1d \\
      --out docs/images/lr_free_mnist1d.png
"""

from __future__ import annotations

import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from benchmarks.harness import optimizers

NAMES = ("prodigy", "prodigy-linear", "stairs-prodigy", "autodrop-prodigy",
         "cprop-prodigy", "cprop-autodrop-prodigy")
AUTODROP = ("autodrop-prodigy", "cprop-autodrop-prodigy")
BUFFER_SIZE = 10  # AutoDrop's default buffer_size
DROP_FACTOR = 0.95  # AutoDrop's default drop_factor


def load(folders: list[pathlib.Path], task: str, name: str, seed: int):
  for folder in folders:
    path = folder / task / f"{name}_seed{seed}.json"
    if path.exists():
      return json.loads(path.read_text())
  return None


def _trace(run, key):
  trace = run["trace"][key]
  return np.asarray(trace["step"]), np.asarray(trace["value"], float)


def update_scale(run):
  """(steps, the factor applied on top of prodigy's own d) of ``run``."""
  steps, d = _trace(run, "learning_rate")
  name, total = run["optimizer"], run["epochs"] * run["steps_per_epoch"]
  if name in AUTODROP:
    return _trace(run, "autodrop/lr_scale")
  if name == "prodigy-linear":
    return steps, 1.0 - steps / total
  if name == "stairs-prodigy":
    every = BUFFER_SIZE * optimizers.autodrop_window(run["steps_per_epoch"])
    return steps, DROP_FACTOR ** (steps // every)
  return steps, np.ones_like(d)


def drop_steps(run) -> np.ndarray:
  """Steps (of the stored, thinned trace) at which ``n_drops`` grew."""
  steps, n = _trace(run, "autodrop/n_drops")
  return steps[1:][np.diff(n) > 0]


def drop_summary(run) -> str:
  window = optimizers.autodrop_window(run["steps_per_epoch"])
  drops = drop_steps(run)
  gaps = np.diff(drops) / window
  _, scale = _trace(run, "autodrop/lr_scale")
  text = (f"{run['optimizer']} seed {run['seed']}: {len(drops)} drops, "
          f"final scale {scale[-1]:.3f}, first drop at window "
          f"{drops[0] / window:.0f}" if len(drops) else
          f"{run['optimizer']} seed {run['seed']}: no drop")
  if len(gaps):
    text += (f", gaps in windows: median {np.median(gaps):.1f}, min "
             f"{gaps.min():.1f}, max {gaps.max():.1f}")
  return text


def plot(runs: dict[str, dict], task: str, path: pathlib.Path):
  fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
  colors = {n: plt.get_cmap("tab10")(i) for i, n in enumerate(NAMES)}
  spe = next(iter(runs.values()))["steps_per_epoch"]
  for name, run in runs.items():
    steps, d = _trace(run, "learning_rate")
    _, factor = update_scale(run)
    epochs = steps / spe
    axes[0].plot(epochs, d, color=colors[name], lw=1.2, label=f"{name}: d")
    if name != "prodigy" and name != "cprop-prodigy":
      axes[0].plot(epochs, d * np.maximum(factor, 1e-12), "--",
                   color=colors[name], lw=1, label=f"{name}: d x scale")
      axes[1].plot(epochs, factor, color=colors[name], lw=1.2, label=name)
    if name in AUTODROP:
      for i, step in enumerate(drop_steps(run)):
        axes[1].axvline(step / spe, color=colors[name], lw=0.4, alpha=0.5,
                        label=f"{name}: drops" if i == 0 else None)
    curves = run["curves"]
    ep = np.arange(1, len(curves["epoch_test_acc"]) + 1)
    axes[2].plot(ep, 100 * np.asarray(curves["epoch_test_acc"]),
                 color=colors[name], lw=1.2, label=name)
    axes[3].plot(ep, curves["epoch_train_loss"], color=colors[name], lw=1.2,
                 label=name)
  axes[0].set_yscale("log")
  axes[0].set_ylim(3e-7, 0.2)  # prodigy-linear's d x scale ends at 0
  axes[0].set_ylabel("prodigy's d (x lr = 1)")
  axes[1].set_ylabel("factor on the update")
  axes[2].set_ylabel("test accuracy (%)")
  best = max(100 * r["best_test_acc"] for r in runs.values())
  axes[2].set_ylim(best - 6, best + 0.5)
  axes[3].set_yscale("log")
  axes[3].set_ylabel("epoch-mean train loss")
  axes[3].set_xlabel("epoch")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="best")
  seed = next(iter(runs.values()))["seed"]
  fig.suptitle(f"{task}, seed {seed}: prodigy's step-size estimate d, the "
               "factors applied on top of it, and AutoDrop's drops",
               fontsize=10)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--results", action="append", required=True,
                      help="compare's --out folder (repeatable)")
  parser.add_argument("--task", default="mnist1d")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--seeds", type=int, default=5,
                      help="seeds to summarise")
  parser.add_argument("--out", default="lr_free.png")
  args = parser.parse_args(argv)
  folders = [pathlib.Path(f) for f in args.results]
  runs = {n: r for n in NAMES
          if (r := load(folders, args.task, n, args.seed)) is not None}
  if not runs:
    raise SystemExit(f"no runs of {NAMES} for {args.task} in {folders}")
  plot(runs, args.task, pathlib.Path(args.out))
  print(f"wrote {args.out} ({', '.join(runs)})")
  for name in AUTODROP:
    for seed in range(args.seeds):
      run = load(folders, args.task, name, seed)
      if run is not None:
        print(drop_summary(run))
  for name in NAMES:
    finals = [r["trace"]["learning_rate"]["value"][-1]
              for s in range(args.seeds)
              if (r := load(folders, args.task, name, s)) is not None]
    if finals:
      print(f"{name}: final d over {len(finals)} seeds "
            f"{np.mean(finals):.4g} (min {np.min(finals):.4g}, max "
            f"{np.max(finals):.4g})")


if __name__ == "__main__":
  main()
