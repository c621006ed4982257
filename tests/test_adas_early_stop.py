"""Tests of AdaS's early stop on the training loss (docs/adas.md)."""

import jax
import jax.numpy as jnp
import numpy as np

from optax_adaptive._adas_early_stop import (
    adas_early_stop,
    adas_early_stop_init,
)
from tests import _utils


def test_early_stop_after_patience_epochs_without_improvement():
  losses = [2.0, 1.0, 0.9995, 0.9991, 0.9989, 0.9989, 0.9989, 0.9989]
  state, waits, stops = None, [], []
  step = jax.jit(lambda loss, s: adas_early_stop(loss, s, patience=3))
  state = adas_early_stop_init()
  for loss in losses:
    state, stop = step(jnp.float32(loss), state)
    waits.append(int(state.wait))
    stops.append(bool(stop))
  assert waits == [0, 0, 1, 2, 0, 1, 2, 3]
  assert stops == [False] * 7 + [True]


def test_early_stop_disabled_by_negative_threshold():
  state, stop = adas_early_stop(1.0, threshold=-1.0, patience=1)
  for _ in range(3):
    state, stop = adas_early_stop(1.0, state, threshold=-1.0, patience=1)
  assert not bool(stop)


def _numpy_early_stop(losses, threshold, patience):
  """The rule in NumPy float64: (best, wait, stop) after each epoch."""
  best, wait, out = np.inf, 0, []
  for loss in np.asarray(losses, np.float64):
    if loss - best < -threshold:
      best, wait = loss, 0
    else:
      wait += 1
    out.append((best, wait, wait >= patience))
  return out


def test_early_stop_float64_matches_numpy_float64(x64):
  """Under x64 the best loss is float64: 0.999 after 1.0 improves by 1e-3.

  In float32, 0.999 - 1.0 = -0.00099999 is no improvement of 1e-3.
  """
  del x64
  losses = [1.0, 0.999, 0.998, 0.9975, 0.9965, 0.9965000001, 0.9955]
  expected = _numpy_early_stop(losses, 1e-3, 2)
  for init in (None, adas_early_stop_init()):
    state = init
    for loss, (best, wait, stop) in zip(losses, expected):
      state, stopped = adas_early_stop(loss, state, threshold=1e-3,
                                       patience=2)
      assert state.best_loss.dtype == jnp.float64
      assert (float(state.best_loss), int(state.wait), bool(stopped)) == (
          best, wait, stop)
  assert [w for _, w, _ in expected] == [0, 0, 0, 1, 0, 1, 0]


def test_early_stop_state_dtype_is_stable_under_jit():
  """A float16 loss keeps a float32 state; jit compiles once."""
  state = adas_early_stop_init()
  assert state.best_loss.dtype == jnp.float32
  step = jax.jit(lambda loss, s: adas_early_stop(loss, s, patience=3))
  losses = [jnp.float16(loss) for loss in (2.0, 1.5, 1.4)]
  with _utils.log_compilations() as compilations:
    for loss in losses:
      state, _ = step(loss, state)
  assert state.best_loss.dtype == jnp.float32
  assert len(compilations) == 1, compilations
  fresh, _ = adas_early_stop(jnp.bfloat16(1.0))
  assert fresh.best_loss.dtype == jnp.float32
