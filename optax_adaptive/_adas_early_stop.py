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
"""AdaS's early stop on the training loss alone.

The paper's claim (b): with AdaS, training may stop when the training loss
plateaus, without a validation set (docs/adas.md, "Early stop").

References:
  Hosseini & Plataniotis, `AdaS: Adaptive Scheduling of Stochastic Gradients
  <https://arxiv.org/abs/2006.06587>`_, 2020.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optax_adaptive import _common


class AdasEarlyStopState(NamedTuple):
  """State of :func:`adas_early_stop`."""

  best_loss: jax.Array  # shape=(); +inf at start; float64 under x64
  wait: jax.Array  # shape=(), dtype=jnp.int32; epochs without improvement


def adas_early_stop_init(dtype: Any = None) -> AdasEarlyStopState:
  """A fresh early-stop state: ``best_loss = inf``, ``wait = 0``.

  Args:
    dtype: dtype of ``best_loss``; by default jax's default float (float64
      under ``jax_enable_x64``, float32 otherwise), at least float32.
  """
  if dtype is None:
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
  dtype = jnp.promote_types(dtype, jnp.float32)
  return AdasEarlyStopState(jnp.full((), jnp.inf, dtype),
                            jnp.zeros((), jnp.int32))


def adas_early_stop(
    mean_loss: jax.Array,
    state: AdasEarlyStopState | None = None,
    *,
    threshold: float = 1e-3,
    patience: int = 10,
) -> tuple[AdasEarlyStopState, jax.Array]:
  r"""The reference's validation-free early stop on the training loss.

  Call once per epoch with the epoch's mean mini-batch training loss:

  .. math::

    \text{if } L_k - L_{best} < -\varepsilon: L_{best} \leftarrow L_k,\
    w \leftarrow 0; \quad \text{else } w \leftarrow w + 1; \quad
    \text{stop} = (w \ge \text{patience}).

  Args:
    mean_loss: the epoch's mean training loss (scalar). The comparison runs
      in its dtype or the state's, whichever is wider (float64 for a Python
      float under ``jax_enable_x64``).
    state: the previous :class:`AdasEarlyStopState`, or ``None`` to start
      one in the loss's dtype (at least float32).
    threshold: absolute improvement :math:`\varepsilon`; negative disables
      stopping.
    patience: epochs without improvement before stopping.

  Returns:
    ``(new_state, stop)`` with ``stop`` a boolean scalar.

  Examples:
    >>> from optax_adaptive import adas_early_stop
    >>> state, stop = adas_early_stop(2.0)
    >>> state, stop = adas_early_stop(1.9995, state, patience=1)
    >>> bool(stop)
    True
  """
  _common.check_count("patience", patience, lower=1)
  _common.check_number_type("threshold", threshold)
  loss = jnp.asarray(mean_loss)
  if not jnp.issubdtype(loss.dtype, jnp.floating):
    loss = loss.astype(jnp.float32)
  if state is None:
    state = adas_early_stop_init(loss.dtype)
  # Compared in the wider of the loss's and the state's dtypes (float64
  # under x64: 0.999 - 1.0 < -1e-3 there, not in float32); stored in the
  # state's, so that its type never changes.
  dtype = jnp.promote_types(loss.dtype, state.best_loss.dtype)
  loss, best = loss.astype(dtype), state.best_loss.astype(dtype)
  improved = loss - best < -jnp.asarray(threshold, dtype)
  best = jnp.where(improved, loss, best).astype(state.best_loss.dtype)
  wait = jnp.where(improved, 0, state.wait + 1).astype(jnp.int32)
  stop = (wait >= patience) & (jnp.asarray(threshold) >= 0)
  return AdasEarlyStopState(best, wait), stop
