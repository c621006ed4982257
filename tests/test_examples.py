"""The runnable examples of ``docs/examples`` on a tiny budget.

Each example exposes ``main(steps=...)`` returning ``{"losses": [...],
"diagnostics": {...}}``; here every one runs a few dozen steps and must
train (finite losses, the mean of the last steps below the first step's
loss) and log through ``optax_adaptive.diagnostics``. The scripts run in
full with ``python docs/examples/<name>.py``.

Examples covered: examples/cprop.py, examples/autodrop.py,
examples/cprop_autodrop.py, examples/pal.py, examples/labpal.py,
examples/adas.py, examples/autodrop_prodigy.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "docs" / "examples"

# name -> (main()'s tiny-budget kwargs, a key its diagnostics must hold)
BUDGETS = {
    "cprop": (dict(steps=40), "cprop/mean_scale"),
    "autodrop": (dict(steps=60), "autodrop/lr_scale"),
    "cprop_autodrop": (dict(steps=60), "autodrop/n_drops"),
    "pal": (dict(steps=30), "pal/pal_learning_rate"),
    "labpal": (dict(steps=40), "labpal/labpal_step_length"),
    "adas": (dict(steps=24, steps_per_epoch=4), "adas/layer_lr"),
    "autodrop_prodigy": (dict(steps=60), "autodrop/lr_scale"),
}

def _load(name):
  path = EXAMPLES / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"example_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_example_is_tested():
  assert {p.stem for p in EXAMPLES.glob("*.py")} == set(BUDGETS)


# Examples of the default run; the others run under -m slow.
FAST = ("cprop_autodrop", "pal", "autodrop_prodigy")


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=() if name in FAST else (pytest.mark.slow,))
    for name in sorted(BUDGETS)])
def test_example_trains(name, capsys):
  if not (EXAMPLES / f"{name}.py").exists():
    pytest.skip(f"examples/{name}.py not written yet")
  try:
    module = _load(name)
  except AttributeError as e:
    pytest.skip(f"{name}: library name missing: {e}")
  kwargs, key = BUDGETS[name]
  out = module.main(**kwargs)
  losses = np.asarray(out["losses"])
  assert losses.shape == (kwargs["steps"],)
  assert np.all(np.isfinite(losses))
  assert losses[-5:].mean() < losses[0], losses
  assert key in out["diagnostics"]
  assert "step 0" in capsys.readouterr().out
