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
"""Builders of ``value_fn`` for Flax models (nnx and linen).

Line searches (:func:`optax_adaptive.pal`, :func:`optax_adaptive.labpal` and
optax's own) call ``value_fn(params, **data)`` on parameters other than the
model's. These helpers turn a Flax model and a loss into such a function that
is *pure*: extra forward passes never change the live model's BatchNorm
statistics, RNG counters or other non-parameter state.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from typing import Any

import jax
from flax import nnx

from optax_adaptive import _common


def _with_params_signature(
    value_fn: Callable[..., Any], loss_fn: Callable[..., Any]
) -> Callable[..., Any]:
  """Gives ``value_fn`` the signature ``(params, <loss_fn args but first>)``.

  Line searches route data keyword arguments to ``value_fn`` by the names in
  its signature (optax's ``_extract_fns_kwargs``), so the names of
  ``loss_fn``'s data arguments must be visible on ``value_fn``.
  """
  rest = list(inspect.signature(loss_fn).parameters.values())[1:]
  params = inspect.Parameter(
      "params", inspect.Parameter.POSITIONAL_OR_KEYWORD
  )
  value_fn.__signature__ = inspect.Signature([params, *rest])
  value_fn.__doc__ = (
      f"``{getattr(loss_fn, '__name__', 'loss_fn')}`` evaluated at ``params``"
      " on a pure copy of the model."
  )
  return value_fn


def nnx_value_fn(
    model: nnx.Module,
    loss_fn: Callable[..., Any],
    *,
    wrt: Any = nnx.Param,
) -> Callable[..., jax.Array]:
  """A pure ``value_fn(params, *data)`` for an nnx model.

  Snapshots everything of ``model`` that is not selected by ``wrt``
  (BatchNorm statistics, RNG state, ...) with :func:`flax.nnx.as_pure`, and
  returns ``value_fn(params, ...) = loss_fn(nnx.merge(graphdef, params,
  snapshot), ...)``. Each call builds a fresh model, so a train-mode forward
  pass inside it updates only that throw-away copy: the live ``model`` is
  never modified.

  Build it inside the jitted train step *before* the forward-backward pass
  of the step. Then ``value_fn`` replays the step's RNG state, so dropout
  masks match those of ``value`` and every point along the line sees the
  same mask (see :doc:`/flax`).

  Args:
    model: the nnx module being trained.
    loss_fn: ``loss_fn(model, *data) -> scalar``, e.g. ``loss_fn(model, x,
      y)``. The names of its data arguments become ``value_fn``'s, so a line
      search can route ``x=..., y=...`` to it.
    wrt: the filter of the optimised variables, the same as
      ``nnx.Optimizer(..., wrt=wrt)``.

  Returns:
    ``value_fn(params, *data)`` taking the ``nnx.State`` of ``wrt``
    variables (what :class:`flax.nnx.Optimizer` passes to the
    transformation).

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from optax_adaptive import nnx_value_fn
    >>> model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
    ...                        nnx.BatchNorm(4, rngs=nnx.Rngs(0)))
    >>> def loss_fn(model, x):
    ...   return jnp.mean(model(x) ** 2)
    >>> value_fn = nnx_value_fn(model, loss_fn)
    >>> params = nnx.state(model, nnx.Param)
    >>> before = nnx.state(model, nnx.BatchStat)
    >>> _ = value_fn(params, x=jnp.ones((8, 3)))
    >>> after = nnx.state(model, nnx.BatchStat)
    >>> print(all(bool((a == b).all()) for a, b in
    ...           zip(jax.tree.leaves(before), jax.tree.leaves(after))))
    True
  """
  _common.check_callable("loss_fn", loss_fn)
  graphdef = nnx.graphdef(model)
  rest = nnx.as_pure(nnx.state(model, nnx.Not(wrt)))

  def value_fn(params, *args, **kwargs):
    return loss_fn(nnx.merge(graphdef, params, rest), *args, **kwargs)

  return _with_params_signature(value_fn, loss_fn)


def linen_value_fn(
    apply_fn: Callable[..., Any],
    loss_fn: Callable[..., Any],
    variables_without_params: dict[str, Any] | None = None,
    *,
    mutable: bool | str | Collection[str] = False,
) -> Callable[..., jax.Array]:
  """A pure ``value_fn(params, *data)`` for a linen apply function.

  Returns ``value_fn(params, ...) = loss_fn(apply, ...)`` where
  ``apply(*inputs, **kw)`` runs ``apply_fn({'params': params,
  **variables_without_params}, *inputs, mutable=mutable, **kw)`` and returns
  only the model output. Updated collections (e.g. ``batch_stats`` when
  ``mutable=['batch_stats']`` for a train-mode BatchNorm) are discarded, so
  extra forward passes never change the training state.

  Args:
    apply_fn: the module's ``apply`` (e.g. ``TrainState.apply_fn``).
    loss_fn: ``loss_fn(apply, *data) -> scalar``, e.g. ``lambda apply, x, y:
      xent(apply(x, train=True), y)``. Pass dropout RNGs through ``apply(x,
      rngs={'dropout': key})``. The names of its data arguments become
      ``value_fn``'s.
    variables_without_params: the other variable collections, e.g.
      ``{'batch_stats': state.batch_stats}``.
    mutable: forwarded to ``apply_fn``; the collections listed here are
      computed and thrown away.

  Returns:
    ``value_fn(params, *data)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from optax_adaptive import linen_value_fn
    >>> module = nn.Dense(2)
    >>> variables = module.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> def loss_fn(apply, x, y):
    ...   return jnp.mean((apply(x) - y) ** 2)
    >>> value_fn = linen_value_fn(module.apply, loss_fn)
    >>> loss = value_fn(variables["params"], x=jnp.ones((4, 3)),
    ...                 y=jnp.zeros((4, 2)))
    >>> print(loss.shape)
    ()
  """
  _common.check_callable("apply_fn", apply_fn)
  _common.check_callable("loss_fn", loss_fn)
  others = dict(variables_without_params or {})
  if "params" in others:
    raise ValueError(
        "`variables_without_params` must not contain 'params'; they are the"
        " argument of the returned value_fn."
    )

  def value_fn(params, *args, **kwargs):
    variables = {"params": params, **others}

    def apply(*inputs, **apply_kwargs):
      out = apply_fn(variables, *inputs, mutable=mutable, **apply_kwargs)
      return out[0] if mutable else out

    return loss_fn(apply, *args, **kwargs)

  return _with_params_signature(value_fn, loss_fn)
