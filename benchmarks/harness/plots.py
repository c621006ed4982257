"""PNG plots of one task's runs: loss, accuracy and the adapted rates."""

from __future__ import annotations

import math
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

_STYLE = {"baseline": "-", "lr-free": "--", "library": "-"}
_WIDTH = {"baseline": 1.0, "lr-free": 1.0, "library": 1.8}
DPI = 90
# Trace keys drawn in the per-method panels (the JSON keeps every key).
PLOTTED = ("learning_rate", "effective_lr", "mean_scale", "lr_scale",
           "pal_learning_rate", "labpal_learning_rate", "labpal_step_length",
           "lr", "lr.mean", "gain", "gain.mean", "layer_lr.mean", "fc_lr")


def _colors(names):
  cmap = plt.get_cmap("tab20")
  return {n: cmap(i % 20) for i, n in enumerate(names)}


def _curves(runs, key):
  values = np.array([r["curves"][key] for r in runs], dtype=float)
  return np.arange(1, values.shape[1] + 1), values


def _plot_metric(task, records, key, ylabel, path, *, log=False,
                 scale=1.0, ylim=None):
  colors = _colors(records)
  fig, ax = plt.subplots(figsize=(9, 5.5))
  for name, runs in records.items():
    family = runs[0]["family"]
    epochs, values = _curves(runs, key)
    values = values * scale
    mean = np.nanmean(values, axis=0)
    ax.plot(epochs, mean, _STYLE[family], lw=_WIDTH[family],
            color=colors[name], label=name)
    if len(runs) > 1:
      ax.fill_between(epochs, np.nanmin(values, 0), np.nanmax(values, 0),
                      color=colors[name], alpha=0.12, lw=0)
  if log:
    ax.set_yscale("log")
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.set_xlabel("epoch")
  ax.set_ylabel(ylabel)
  ax.set_title(f"{task.name}: {ylabel} (mean over seeds, band = min..max)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


def _plot_traces(task, records, path):
  """One panel per optimizer: its learning rate / scale / gain (seed 0)."""
  traced = {n: runs[0] for n, runs in records.items() if runs[0]["trace"]}
  if not traced:
    return
  cols = 4
  rows = math.ceil(len(traced) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows),
                           squeeze=False)
  for ax, (name, run) in zip(axes.flat, traced.items()):
    spe = run["steps_per_epoch"]
    for key, trace in run["trace"].items():
      if key.split("/")[-1] not in PLOTTED:
        continue
      values = np.asarray(trace["value"], dtype=float)
      positive = values[np.isfinite(values)]
      if positive.size == 0:
        continue
      ax.plot(np.asarray(trace["step"]) / spe, values, lw=1,
              label=key.split("/")[-1])
      base = key.removesuffix(".mean")
      if f"{base}.min" in run["trace"]:
        ax.fill_between(np.asarray(trace["step"]) / spe,
                        run["trace"][f"{base}.min"]["value"],
                        run["trace"][f"{base}.max"]["value"], alpha=0.15)
    if ax.lines and all(np.all(np.asarray(line.get_ydata()) > 0)
                        for line in ax.lines):
      ax.set_yscale("log")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("epoch", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=6, loc="best")
  for ax in list(axes.flat)[len(traced):]:
    ax.axis("off")
  fig.suptitle(f"{task.name}: learning rate / scale / gain read from each "
               "optimizer's state (seed 0)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


def plot_task(task, records: dict[str, list[dict]],
              out: pathlib.Path) -> list[pathlib.Path]:
  """Writes ``train_loss.png``, ``test_acc.png`` and ``traces.png``."""
  paths = [out / "train_loss.png", out / "test_acc.png", out / "traces.png"]
  _plot_metric(task, records, "epoch_train_loss", "training loss",
               paths[0], log=True)
  best = max(max(r["best_test_acc"] for r in runs)
             for runs in records.values())
  _plot_metric(task, records, "epoch_test_acc", "test accuracy (%)",
               paths[1], scale=100,
               ylim=(max(0, 100 * best - 25), 100 * best + 1))
  _plot_traces(task, records, paths[2])
  return [p for p in paths if p.exists()]
