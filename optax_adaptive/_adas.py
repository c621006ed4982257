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
"""AdaS: SGD with momentum and per-layer rates driven by knowledge gain.

The knowledge gain (unfoldings, EVBMF) is in ``_spectral.py`` and the
leaf -> layer map in ``_adas_layers.py``; this module runs the SGD step and,
at the end of each epoch, the rate recurrence. docs/adas.md explains the
method and its defaults.

References:
  Hosseini & Plataniotis, `AdaS: Adaptive Scheduling of Stochastic Gradients
  <https://arxiv.org/abs/2006.06587>`_, 2020.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_adaptive import _common, _spectral
from optax_adaptive._adas_layers import _build_layout, _Layout


class _Settings(NamedTuple):
  """The arguments of :func:`adas` that the epoch end reads."""

  learning_rate: Any
  beta: Any
  zeta: Any
  min_lr: Any
  p: Any
  solver: str
  spectrum: str
  transpose_tall: bool
  hold_lr_while_zero_gain: bool


@dataclasses.dataclass(frozen=True)
class _Config:
  """The arguments of :func:`adas` at ``init``, a pytree node without leaves.

  ``update`` never reads it (it has its own arguments). It serves
  :func:`adas_layer_names` (``layer_groups``) and the deprecated
  :func:`adas_end_epoch` (``settings``; None where ``init`` saw traced
  values), and goes with the latter. It must not depend on the params, so
  that ``optax.tree.map_params`` sees one state structure.
  """

  layer_groups: Callable[..., Any] | None
  settings: _Settings | None


jax.tree_util.register_pytree_node(
    _Config, lambda config: ((), config), lambda config, _: config)


class AdasState(NamedTuple):
  """State of :func:`adas`.

  ``n`` below is the number of conv layers (a stacked kernel counts once per
  stacked layer), in the order of :func:`adas_layer_names`. A model without
  conv layers has ``None`` in the eight per-layer fields rather than arrays
  of size 0, which checkpointers such as orbax's refuse.
  """

  count: jax.Array  # shape=(), dtype=jnp.int32; optimizer steps
  epoch: jax.Array  # shape=(), dtype=jnp.int32; epoch ends performed
  layer_lr: jax.Array | None  # shape=(n,), float; rate of each conv layer
  fc_lr: jax.Array  # shape=(), float; the fully connected rate R_fc
  gain: jax.Array | None  # shape=(n,), float; G-bar of the last epoch
  input_gain: jax.Array | None  # shape=(n,), float; G_3
  output_gain: jax.Array | None  # shape=(n,), float; G_4
  input_condition: jax.Array | None  # shape=(n,), float; kappa_3
  output_condition: jax.Array | None  # shape=(n,), float; kappa_4
  input_rank: jax.Array | None  # shape=(n,), dtype=jnp.int32
  output_rank: jax.Array | None  # shape=(n,), dtype=jnp.int32
  ready: jax.Array  # shape=(n + 1,), bool; gain seen non-zero (fc last)
  trace: optax.Params  # momentum buffer, like params (float32 for bf16)
  config: _Config  # no leaves: see _Config


def adas_layer_names(
    state: AdasState, params: optax.Params | None = None
) -> tuple[str, ...]:
  """Names of the conv layers, in the order of ``state.layer_lr``.

  The names follow from the parameter paths and shapes, which the momentum
  buffer ``state.trace`` shares with the params, and ``layer_groups``.

  Args:
    state: an :class:`AdasState` (of :func:`adas`'s ``init`` or ``update``).
    params: optional; the parameters (by default the momentum buffer).

  Returns:
    One name per conv layer, e.g. ``"conv1"`` or ``"blocks/Conv_0[2]"`` for
    the third layer of a stacked kernel.
  """
  if not isinstance(state, AdasState):
    raise TypeError(
        f"adas_layer_names: `state` must be an AdasState; got {type(state)}.")
  tree = state.trace if params is None else params
  return _build_layout(tree, state.config.layer_groups).layer_names


# ------------------------------------------------------------- epoch end

# The fields of AdasState with one entry per conv layer.
_PER_LAYER = ("layer_lr", "gain", "input_gain", "output_gain",
              "input_condition", "output_condition", "input_rank",
              "output_rank")


def _per_layer_zeros(n: int, fdt: jnp.dtype, *,
                     none_if_empty: bool = True) -> dict[str, Any]:
  """The per-layer fields, zeros; None when ``n == 0`` (for the state)."""
  if not n and none_if_empty:
    return dict.fromkeys(_PER_LAYER)
  return {name: jnp.zeros((n,), jnp.int32 if name.endswith("rank") else fdt)
          for name in _PER_LAYER}


def _replicated(x: jax.Array) -> jax.Array:
  """Gathers an explicitly sharded kernel: the SVD needs all of it."""
  if not _common.explicitly_sharded(x):
    return x
  return jax.sharding.reshard(x, jax.sharding.PartitionSpec())


def _n_layers(state: AdasState) -> int:
  return 0 if state.layer_lr is None else state.layer_lr.shape[0]


def _measure(layout: _Layout, s: _Settings,
             params) -> _spectral.KnowledgeGain:
  """Knowledge gains of every conv layer, one vector per field."""
  leaves = jax.tree.leaves(params)
  kernels = []
  for leaf, stack in zip(layout.kernel_leaf, layout.stack_shape):
    kernel = _replicated(leaves[leaf])
    layers = int(np.prod(stack, dtype=np.int64))  # not -1: size may be 0
    kernels.append(kernel.reshape((layers, *kernel.shape[len(stack):])))
  gains = _spectral.knowledge_gains(
      kernels, s.p, s.solver, transpose_tall=s.transpose_tall,
      spectrum=s.spectrum)
  return jax.tree.map(lambda *xs: jnp.concatenate(xs), *gains)


def _end_epoch(state: AdasState, params, s: _Settings,
               layer_groups) -> AdasState:
  """Epoch end on the updated ``params``: measure the gains, set the rates."""
  layout = _build_layout(params, layer_groups)
  if layout.n_layers != _n_layers(state):
    raise ValueError(
        f"adas: `params` has {layout.n_layers} conv layers; the state was"
        f" built for {_n_layers(state)}.")
  kg = _measure(layout, s, params) if layout.n_layers else None
  return _update_rates(state, kg, s)


def _measured(state: AdasState, kg) -> dict[str, jax.Array]:
  """The gains, conditions and ranks; a non-finite measurement of a layer
  keeps its previous values (the reference's fallback for a failed EVBMF)."""
  keep = lambda new, old: jnp.where(jnp.isfinite(new), new, old).astype(
      old.dtype)
  gain_ok = jnp.isfinite(kg.input_gain) & jnp.isfinite(kg.output_gain)
  return dict(
      input_gain=keep(kg.input_gain, state.input_gain),
      output_gain=keep(kg.output_gain, state.output_gain),
      input_condition=keep(kg.input_condition, state.input_condition),
      output_condition=keep(kg.output_condition, state.output_condition),
      input_rank=jnp.where(gain_ok, kg.input_rank, state.input_rank),
      output_rank=jnp.where(gain_ok, kg.output_rank, state.output_rank))


def _update_rates(state: AdasState, kg, s: _Settings) -> AdasState:
  """R <- max(beta R + zeta Delta, eta_min) for every conv layer and fc."""
  fdt = state.fc_lr.dtype
  init_lr, beta, zeta, min_lr = (jnp.asarray(x, fdt) for x in (
      s.learning_rate, s.beta, s.zeta, s.min_lr))
  no_layers = state.layer_lr is None
  if no_layers:  # computed with empty vectors, stored as None
    state = state._replace(**_per_layer_zeros(0, fdt, none_if_empty=False))
  if kg is not None:
    new = _measured(state, kg)
    gain = 0.5 * (new["input_gain"] + new["output_gain"])  # G-bar
    g4_last, g4_last_prev = new["output_gain"][-1], state.output_gain[-1]
  else:
    new = {k: getattr(state, k) for k in _PER_LAYER[2:]}
    gain = state.gain
    g4_last = g4_last_prev = jnp.zeros((), fdt)
  first = state.epoch == 0
  layer_gain = jnp.append(gain, g4_last)
  layer_delta = jnp.append(gain - state.gain, g4_last - g4_last_prev)
  rate = jnp.append(state.layer_lr, state.fc_lr)
  previous = jnp.where(first, 0.0, rate)  # R starts at 0
  delta = jnp.where(first, init_lr, layer_delta)  # Delta(0) = eta_0
  new_rate = jnp.maximum(beta * previous + zeta * delta, min_lr)
  ready = state.ready | (layer_gain != 0)
  if s.hold_lr_while_zero_gain:  # the PyPI package's rule: eta_0 until G > 0
    new_rate = jnp.where(ready, new_rate, init_lr)
  new_rate = new_rate.astype(fdt)
  state = state._replace(
      epoch=optax.safe_int32_increment(state.epoch),
      layer_lr=new_rate[:-1], fc_lr=new_rate[-1], gain=gain.astype(fdt),
      ready=ready, **{**new, "input_rank": new["input_rank"].astype(jnp.int32),
                      "output_rank": new["output_rank"].astype(jnp.int32)})
  if no_layers:
    state = state._replace(**dict.fromkeys(_PER_LAYER))
  return state


def _legacy_end_epoch(state: AdasState, params) -> AdasState:
  settings = state.config.settings
  if settings is None:
    raise ValueError(
        "adas_end_epoch: the state's `init` saw traced hyperparameters; end"
        " epochs with `tx.update(..., end_of_epoch=...)` instead.")
  return _end_epoch(state, params, settings, state.config.layer_groups)


_legacy_end_epoch_jit = jax.jit(_legacy_end_epoch)


def adas_end_epoch(state: Any, params: optax.Params) -> Any:
  """Deprecated: pass ``end_of_epoch=True`` to ``update`` instead.

  Ends an epoch from outside ``update`` for every :class:`AdasState` inside
  ``state``, with the hyperparameters :func:`adas` had at ``init``.

  Args:
    state: an :class:`AdasState`, or any optimizer state containing one.
    params: the parameters after the epoch's last update.

  Returns:
    The state with the new per-layer rates, gains, conditions and ranks.
  """
  warnings.warn(
      "adas_end_epoch is deprecated: end the epoch in its last step with"
      " `tx.update(grads, state, params, end_of_epoch=True)`"
      " (docs/adas.md, Epoch ends).", DeprecationWarning, stacklevel=2)
  _common.require_params(params, "adas_end_epoch")
  is_adas = lambda x: isinstance(x, AdasState)
  found = [x for x in jax.tree.leaves(state, is_leaf=is_adas) if is_adas(x)]
  if not found:
    raise ValueError("adas_end_epoch: `state` holds no AdasState.")
  return jax.tree.map(
      lambda x: _legacy_end_epoch_jit(x, params) if is_adas(x) else x, state,
      is_leaf=is_adas)


# -------------------------------------------------------------- optimizer


def _leaf_rate(state: AdasState, layout: _Layout, group: int, ndim: int,
               init_lr: jax.Array):
  if group == -2:
    return init_lr
  if group == -1:
    return state.fc_lr
  stack = layout.stack_shape[group]
  start = layout.offset[group]
  size = int(np.prod(stack, dtype=np.int64))
  rate = state.layer_lr[start:start + size]
  return rate.reshape(stack + (1,) * (ndim - len(stack)))


def _sgd_step(updates, state: AdasState, params, layout: _Layout, init_lr,
              momentum, weight_decay):
  """PyTorch SGD with L2 decay at each leaf's rate: returns (updates, trace)."""
  grad_leaves, treedef = jax.tree.flatten(updates)
  trace_leaves = treedef.flatten_up_to(state.trace)
  param_leaves = (treedef.flatten_up_to(params) if params is not None
                  else [None] * len(grad_leaves))
  new_trace, new_updates = [], []
  for index, (g, b, w) in enumerate(
      zip(grad_leaves, trace_leaves, param_leaves)):
    decayed = g.astype(b.dtype)
    if w is not None:
      decayed = decayed + weight_decay * w.astype(b.dtype)  # g + lambda theta
    b = (momentum * b + decayed).astype(b.dtype)  # b <- mu b + g~; b_1 = g~
    rate = _leaf_rate(state, layout, layout.leaf_group[index], g.ndim, init_lr)
    out_dtype = g.dtype if w is None else w.dtype
    new_trace.append(b)
    new_updates.append((-rate * b).astype(out_dtype))  # theta -= eta b
  return (jax.tree.unflatten(treedef, new_updates),
          jax.tree.unflatten(treedef, new_trace))


def _epoch_done(count, steps_per_epoch, end_of_epoch):
  """Whether this step ends an epoch: a Python bool or a traced bool."""
  if steps_per_epoch is not None:
    if end_of_epoch is not None:
      raise ValueError(
          "adas: pass either `steps_per_epoch` to adas or `end_of_epoch` to"
          " update, not both.")
    return count % steps_per_epoch == 0
  if end_of_epoch is None:
    return False
  if isinstance(end_of_epoch, (bool, np.bool_)):
    return bool(end_of_epoch)
  end_of_epoch = jnp.asarray(end_of_epoch)
  if end_of_epoch.shape != () or end_of_epoch.dtype != jnp.bool_:
    raise TypeError(
        "adas: `end_of_epoch` must be a boolean scalar; got"
        f" {end_of_epoch.dtype}{list(end_of_epoch.shape)}.")
  return end_of_epoch


def _concrete(settings: _Settings) -> _Settings | None:
  """The settings, or None if any is traced (a tracer must not outlive
  ``init`` in the state)."""
  if any(isinstance(v, jax.core.Tracer) for v in settings):
    return None
  return settings


class _Sgd(NamedTuple):
  """The arguments of :func:`adas` that every step reads."""

  momentum: Any
  weight_decay: Any
  steps_per_epoch: Any
  layer_groups: Callable[..., Any] | None


def _update(updates, state: AdasState, params, end_of_epoch,
            settings: _Settings, sgd: _Sgd):
  """One SGD step, then the epoch end if this step ends an epoch."""
  count = optax.safe_int32_increment(state.count)
  done = _epoch_done(count, sgd.steps_per_epoch, end_of_epoch)
  decays = not (_common.is_concrete_number(sgd.weight_decay)
                and sgd.weight_decay == 0)
  if decays or done is not False:
    _common.require_params(params, "adas")
  init_lr = jnp.asarray(settings.learning_rate, state.fc_lr.dtype)
  layout = _build_layout(updates, sgd.layer_groups)
  updates, trace = _sgd_step(updates, state, params, layout, init_lr,
                             sgd.momentum, sgd.weight_decay)
  state = state._replace(count=count, trace=trace)
  if done is False:
    return updates, state
  new_params = optax.apply_updates(params, updates)  # measured after
  end = lambda s: _end_epoch(s, new_params, settings, sgd.layer_groups)
  if done is True:
    return updates, end(state)
  # Only the small fields pass through the loop, so that steps that end no
  # epoch copy nothing; under vmap it runs when any lane ends an epoch.
  state = _common.run_if(done, end, state._replace(trace=None))
  return updates, state._replace(trace=trace)


def _init_state(params, learning_rate, config: _Config) -> AdasState:
  _common.check_float_leaves(params, "adas")
  n = _build_layout(params, config.layer_groups).n_layers
  fdt = _common.widest_float_dtype(params)
  per_layer = _per_layer_zeros(n, fdt)
  if n:
    per_layer["layer_lr"] = jnp.full((n,), learning_rate, fdt)
  return AdasState(
      count=jnp.zeros((), jnp.int32), epoch=jnp.zeros((), jnp.int32),
      fc_lr=jnp.asarray(learning_rate, fdt), ready=jnp.zeros((n + 1,), bool),
      trace=_common.stats_zeros_like(params), config=config, **per_layer)


def _check_adas_args(learning_rate, beta, zeta, min_lr, momentum,
                     weight_decay, steps_per_epoch, settings: _Settings,
                     layer_groups) -> None:
  if callable(learning_rate):
    raise TypeError("`learning_rate` must be a number: AdaS sets the rates.")
  _common.check_range("learning_rate", learning_rate, lower=0.0)
  _common.check_range("beta", beta, lower=0.0, upper=1.0,
                      upper_inclusive=False)
  _common.check_range("zeta", zeta, lower=0.0)
  _common.check_range("min_lr", min_lr, lower=0.0)
  _common.check_range("momentum", momentum, lower=0.0, upper=1.0)
  _common.check_range("weight_decay", weight_decay, lower=0.0)
  _spectral.check_p(settings.p)
  if steps_per_epoch is not None and not isinstance(steps_per_epoch,
                                                    jax.Array):
    _common.check_positive_int("steps_per_epoch", steps_per_epoch)
  _common.check_choice("solver", settings.solver, _spectral.SOLVERS)
  _common.check_choice("spectrum", settings.spectrum, _spectral.SPECTRA)
  _common.check_callable("layer_groups", layer_groups, allow_none=True)


def adas(
    learning_rate: float = 0.03,
    beta: float = 0.8,
    zeta: float = 1.0,
    min_lr: float = 1e-20,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    steps_per_epoch: int | None = None,
    p: int = 1,
    solver: str = "brent_ref",
    layer_groups: Callable[..., Any] | None = None,
    *,
    transpose_tall: bool = False,
    hold_lr_while_zero_gain: bool = False,
    spectrum: str = "gram",
) -> optax.GradientTransformationExtraArgs:
  r"""AdaS: SGD with momentum and per-layer rates set by knowledge gain.

  Every step is PyTorch-style SGD with momentum and L2 weight decay on all
  parameters, with the rate :math:`\eta_i` of the parameter's layer group:

  .. math::

    b \leftarrow \mu b + (g + \lambda\theta), \qquad
    \theta \leftarrow \theta - \eta_i b.

  At the end of epoch :math:`k` the knowledge gain :math:`\bar G(k, \ell)`
  of every conv layer (see :func:`knowledge_gain`) is measured on the
  updated weights, and each rate follows the paper's rule, clipped below:

  .. math::

    R_\ell \leftarrow \max\big(\beta R_\ell + \zeta \Delta_\ell(k),\,
      \eta_{\min}\big), \quad
    \Delta_\ell(0) = \eta_0, \quad
    \Delta_\ell(k) = \bar G(k, \ell) - \bar G(k-1, \ell),

  with :math:`R_\ell = 0` before epoch 0, so epochs 0 and 1 both run at
  :math:`\eta_0`. The fully connected rate uses the increment of the output
  gain :math:`G_4` of the last conv layer. Leaves in no group keep
  :math:`\eta_0`.

  An epoch ends after the ``update`` called with ``end_of_epoch=True`` (a
  boolean scalar, possibly traced; docs/adas.md, "Epoch ends"), or after
  every ``steps_per_epoch``-th ``update``; those updates need ``params``.

  Args:
    learning_rate: initial rate :math:`\eta_0`, a number (not a schedule:
      AdaS is the schedule). Changed mid-run (``inject_hyperparams``), it
      changes only the leaves in no group and a :math:`\Delta(0)` not yet
      applied, never the rates in force, ``state.layer_lr`` and
      ``state.fc_lr`` (docs/adas.md, "When to use it", shows how to scale
      them).
    beta: gain factor :math:`\beta \in [0, 1)`.
    zeta: scale :math:`\zeta` of the knowledge-gain increment.
    min_lr: lower clip :math:`\eta_{\min}` of every rate (``0.0`` for the
      clip of the authors' PyPI package).
    momentum: :math:`\mu`.
    weight_decay: L2 coefficient :math:`\lambda`, applied to every leaf.
    steps_per_epoch: static epoch length for epoch ends counted by
      ``update``, or ``None`` (default) for ``end_of_epoch`` flags.
    p: exponent of the knowledge gain, 1 or 2.
    solver: ``"brent_ref"`` (reference parity) or ``"golden_log"``.
    layer_groups: optional ``fn(path, leaf) -> label`` overriding the
      default grouping (:func:`adas_layer_groups`): a group name, a
      :class:`LayerGroup`, ``"fc"`` or ``"init"``/``None``.
    transpose_tall: transpose tall unfoldings (the PyPI package's rule).
    hold_lr_while_zero_gain: keep :math:`\eta_0` for a layer until its gain
      is first non-zero (the PyPI package's rule).
    spectrum: ``"gram"`` (default) or ``"svd"`` for the singular values.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is an
    :class:`AdasState`, and its ``update`` takes the keyword argument
    ``end_of_epoch``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optax_adaptive import adas
    >>> params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4)) * 0.1,
    ...                    "bias": jnp.zeros(4)},
    ...           "head": {"kernel": jnp.ones((4, 2)) * 0.1}}
    >>> tx = adas(learning_rate=0.05)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> for step in range(2):
    ...   updates, state = tx.update(grads, state, params,
    ...                              end_of_epoch=step == 1)
    ...   params = optax.apply_updates(params, updates)
    >>> int(state.epoch), round(float(state.fc_lr), 6)
    (1, 0.05)

  References:
    Hosseini & Plataniotis, `AdaS: Adaptive Scheduling of Stochastic
    Gradients <https://arxiv.org/abs/2006.06587>`_, 2020.
  """
  settings = _Settings(learning_rate, beta, zeta, min_lr, p, solver,
                       spectrum, transpose_tall, hold_lr_while_zero_gain)
  _check_adas_args(learning_rate, beta, zeta, min_lr, momentum, weight_decay,
                   steps_per_epoch, settings, layer_groups)
  sgd = _Sgd(momentum, weight_decay, steps_per_epoch, layer_groups)

  def init_fn(params):
    config = _Config(layer_groups, _concrete(settings))
    return _init_state(params, learning_rate, config)

  def update_fn(updates, state, params=None, *, end_of_epoch=None,
                **extra_args):
    del extra_args
    return _update(updates, state, params, end_of_epoch, settings, sgd)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
