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
"""A linen ``TrainState`` that forwards extra arguments to the optimizer.

:meth:`flax.training.train_state.TrainState.apply_gradients` calls
``tx.update(grads, opt_state, params)`` with no extra arguments, so a
transformation that needs ``value``, ``grad`` or ``value_fn`` (PAL, LABPAL,
optax's line searches, ``reduce_on_plateau``) cannot be used through it
(flax PR #4471, open). :class:`TrainState` closes that gap.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optax
from flax.training import train_state
from flax.training.train_state import OVERWRITE_WITH_GRADIENT

# Fields that ``apply_gradients`` computes itself and must not be replaced.
_COMPUTED_FIELDS = frozenset({"step", "params", "opt_state"})


class TrainState(train_state.TrainState):
  """:class:`flax.training.train_state.TrainState` forwarding ``tx`` kwargs.

  ``apply_gradients(grads=..., **kwargs)`` splits ``kwargs`` in two: names
  of dataclass fields of the state (e.g. ``batch_stats`` of a subclass) are
  ``.replace()``-d, as in the parent class; every other keyword argument is
  passed to ``tx.update`` (``value=loss``, ``grad=grads``,
  ``value_fn=...``, data arguments of ``value_fn``, ``approx_batch=...``).
  Transformations ignore the extra arguments they do not use, so the same
  train step serves every optimizer. Parameters marked
  ``OVERWRITE_WITH_GRADIENT`` (fp8) are handled as in the parent class.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import flax.linen as nn
    >>> import optax_adaptive as oa
    >>> model = nn.Dense(1)
    >>> x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
    >>> state = oa.TrainState.create(
    ...     apply_fn=model.apply,
    ...     params=model.init(jax.random.key(0), x)["params"],
    ...     tx=oa.pal())
    >>> def loss_fn(params, x, y):
    ...   return jnp.mean((state.apply_fn({"params": params}, x) - y) ** 2)
    >>> loss, grads = jax.value_and_grad(loss_fn)(state.params, x, y)
    >>> state = state.apply_gradients(
    ...     grads=grads, value=loss, grad=grads, value_fn=loss_fn, x=x, y=y)
    >>> print(int(state.step), bool(loss_fn(state.params, x, y) < loss))
    1 True
  """

  def apply_gradients(self, *, grads: Any, **kwargs: Any) -> TrainState:
    """One optimizer step: ``step + 1``, new ``params`` and ``opt_state``.

    Args:
      grads: gradients with the structure of ``params``.
      **kwargs: dataclass fields of this state to ``.replace()``; all other
        names are forwarded to ``tx.update`` as extra arguments.

    Returns:
      The updated state.

    Raises:
      TypeError: if ``kwargs`` names ``step``, ``params`` or ``opt_state``.
    """
    field_names = {f.name for f in dataclasses.fields(self)}
    clashes = _COMPUTED_FIELDS & set(kwargs)
    if clashes:
      raise TypeError(
          f"apply_gradients computes {sorted(clashes)} itself; do not pass"
          " them as keyword arguments."
      )
    replace_kwargs = {k: v for k, v in kwargs.items() if k in field_names}
    tx_kwargs = {k: v for k, v in kwargs.items() if k not in field_names}

    overwrite = OVERWRITE_WITH_GRADIENT in grads
    grads_with_opt = grads["params"] if overwrite else grads
    params_with_opt = self.params["params"] if overwrite else self.params
    update = optax.with_extra_args_support(self.tx).update
    updates, new_opt_state = update(
        grads_with_opt, self.opt_state, params_with_opt, **tx_kwargs
    )
    new_params = optax.apply_updates(params_with_opt, updates)
    if overwrite:
      new_params = {
          "params": new_params,
          OVERWRITE_WITH_GRADIENT: grads[OVERWRITE_WITH_GRADIENT],
      }
    return self.replace(
        step=self.step + 1,
        params=new_params,
        opt_state=new_opt_state,
        **replace_kwargs,
    )
