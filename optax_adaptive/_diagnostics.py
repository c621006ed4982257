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
"""What the library's optimizers are doing, as a flat dict for logging.

:func:`diagnostics` walks an optimizer state of any shape (chains, optax
wrappers, ``inject_hyperparams``, ``nnx.Optimizer`` states), finds the states
defined by ``optax_adaptive`` and reads their monitored fields, listed once
per state type in :data:`MONITORED_FIELDS`.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

_PACKAGE = "optax_adaptive"

# State type name -> (key prefix, monitored fields). Dotted names reach into
# nested NamedTuples (``info.case``). A field missing from a state, or empty
# (e.g. ``None``, as AdaS's per-layer fields without conv layers), is
# skipped. States of the package that are not listed here report their
# floating point fields of rank <= 1 (see ``_default_fields``).
MONITORED_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "CPropState": ("cprop", ("mean_scale",)),
    "CPropAdamState": ("cprop", ("mean_scale",)),
    "AutoDropState": (
        "autodrop",
        ("lr_scale", "last_omega", "smoothed_omega", "n_drops"),
    ),
    "AutoDropV1State": (
        "autodrop",
        ("lr_scale", "last_omega", "theta", "n_drops"),
    ),
    "ScaleByPalState": (
        "pal",
        ("pal_learning_rate", "pal_step_length", "info.curvature",
         "info.case"),
    ),
    "ScaleByLabpalState": (
        "labpal",
        ("labpal_learning_rate", "labpal_step_length", "updates_done",
         "pending", "retries", "cap_scale", "info.raw_step", "info.status"),
    ),
    "AdasState": (
        "adas",
        ("epoch", "layer_lr", "fc_lr", "gain", "input_gain", "output_gain",
         "input_condition", "output_condition"),
    ),
    "AdasEarlyStopState": ("adas_early_stop", ("best_loss", "wait")),
}

# Cap on the size of an array reported by the fallback rule.
_MAX_DEFAULT_SIZE = 1024


def _is_library_state(node: Any) -> bool:
  cls = type(node)
  return (
      isinstance(node, tuple)
      and hasattr(cls, "_fields")
      and cls.__module__.split(".")[0] == _PACKAGE
      and cls.__name__.endswith("State")
  )


def _unwrap(leaf: Any) -> Any:
  """The array inside an ``nnx.Variable`` (e.g. ``OptArray``), else ``leaf``."""
  get_value = getattr(leaf, "get_value", None)
  if callable(get_value) and not isinstance(leaf, jax.Array):
    return get_value()
  return leaf


def _is_array(leaf: Any) -> bool:
  return isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)) or (
      hasattr(leaf, "shape") and hasattr(leaf, "dtype")
  )


def _lookup(state: Any, dotted: str) -> Any:
  node = state
  for name in dotted.split("."):
    node = getattr(node, name, None)
    if node is None:
      return None
  node = _unwrap(node)
  return node if _is_array(node) else None


def _default_fields(state: Any) -> tuple[str, ...]:
  """Floating point fields of rank <= 1 (also inside nested NamedTuples)."""
  names = []
  for name in state._fields:
    value = _unwrap(getattr(state, name))
    if _is_library_state(value):
      continue  # reported as a state of its own
    if isinstance(value, tuple) and hasattr(value, "_fields"):
      names.extend(f"{name}.{sub}" for sub in _default_fields(value))
    elif (
        _is_array(value)
        and value.ndim <= 1
        and value.size <= _MAX_DEFAULT_SIZE
        and jnp.issubdtype(value.dtype, jnp.floating)
    ):
      names.append(name)
  return tuple(names)


def _children(node: Any) -> list[Any]:
  """Sub-states of ``node`` in a deterministic order."""
  if isinstance(node, Mapping):
    try:
      keys = sorted(node)
    except TypeError:
      keys = list(node)
    return [node[k] for k in keys]
  if isinstance(node, (tuple, list)):
    return list(node)
  value = _unwrap(node)
  if value is not node:
    return [value]
  return []


def find_states(opt_state: Any) -> list[Any]:
  """Every ``optax_adaptive`` state inside ``opt_state``, depth first.

  Traverses tuples (so every optax ``NamedTuple`` wrapper state such as
  ``MultiStepsState``, ``MaskedState``, ``PartitionState``,
  ``InjectStatefulHyperparamsState``), lists, mappings (``named_chain``,
  ``partition``'s ``inner_states``, ``nnx.State``) and ``nnx.Variable``
  wrappers, including the fields of library states themselves (e.g. the
  ``inner_state`` of :func:`optax_adaptive.cprop`).

  Args:
    opt_state: any optimizer state.

  Returns:
    The library states, outermost first, in the order of the state's leaves.
  """
  found = []
  stack = [opt_state]
  while stack:
    node = stack.pop()
    if _is_library_state(node):
      found.append(node)
    if _is_array(node):
      continue
    stack.extend(reversed(_children(node)))
  return found


def _prefixes(states: list[Any]) -> list[str]:
  """``"cprop"``, or ``"cprop_0"``, ``"cprop_1"`` when a method repeats."""
  names = [_prefix_of(s) for s in states]
  totals = collections.Counter(names)
  seen: collections.Counter[str] = collections.Counter()
  out = []
  for name in names:
    if totals[name] == 1:
      out.append(name)
    else:
      out.append(f"{name}_{seen[name]}")
      seen[name] += 1
  return out


def _prefix_of(state: Any) -> str:
  name = type(state).__name__
  if name in MONITORED_FIELDS:
    return MONITORED_FIELDS[name][0]
  stem = name.removesuffix("State").removeprefix("ScaleBy")
  return stem.lower()


def diagnostics(opt_state: Any) -> dict[str, jax.Array]:
  """Named scalars and small arrays describing the library's optimizers.

  Finds every ``optax_adaptive`` state inside ``opt_state`` (at any depth of
  a chain, ``named_chain``, ``partition``/``multi_transform``, ``masked``,
  ``MultiSteps``, ``inject_hyperparams``, or an ``nnx.Optimizer``'s
  ``opt_state``) and returns its monitored quantities under keys
  ``"<method>/<field>"``:

  ===========================  ============================================
  method                       keys
  ===========================  ============================================
  ``cprop``, ``cprop_adam``    ``cprop/mean_scale``
  ``autodrop``                 ``autodrop/lr_scale``, ``last_omega``,
                               ``smoothed_omega`` (``theta`` for v1),
                               ``n_drops``
  ``pal``                      ``pal/pal_learning_rate``,
                               ``pal_step_length``, ``info.curvature``,
                               ``info.case``
  ``labpal``                   ``labpal/labpal_learning_rate``,
                               ``labpal_step_length``, ``updates_done``,
                               ``pending`` (0/1), ``retries``,
                               ``cap_scale`` (``cap="reference"`` only),
                               ``info.raw_step``, ``info.status``
  ``adas``                     ``adas/epoch``, ``layer_lr`` (per conv
                               layer, in the order of
                               ``adas_layer_names(state)``), ``fc_lr``,
                               ``gain``, ``input_gain``,
                               ``output_gain``, ``input_condition``,
                               ``output_condition`` (mapping
                               conditions); the per-layer keys only with
                               conv layers
  ``adas_early_stop``          ``adas_early_stop/best_loss``, ``wait``
  ===========================  ============================================

  When a method appears more than once, its keys get an index suffix in
  traversal order (``"cprop_0/mean_scale"``, ``"cprop_1/mean_scale"``). Every
  value is a non-empty integer or floating array (a boolean flag is given
  as int32 0 or 1), so ``np.round(np.asarray(v), 4)``, ``float(v)`` for
  scalars and any metric writer take it. The function only selects arrays:
  it is cheap, works under :func:`jax.jit` and inside a train step, and its
  output can go straight to TensorBoard, CLU's ``write_scalars`` (scalars)
  or ``print``.

  Args:
    opt_state: the state returned by ``tx.init``/``tx.update``, or
      ``nnx.Optimizer.opt_state``.

  Returns:
    A ``dict`` from stable string keys to arrays (empty if no library state
    is found).

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_adaptive as oa
    >>> tx = optax.chain(oa.cprop(optax.sgd(0.1)), oa.autodrop(4))
    >>> state = tx.init({"w": jnp.ones(3)})
    >>> sorted(oa.diagnostics(state))  # doctest: +NORMALIZE_WHITESPACE
    ['autodrop/last_omega', 'autodrop/lr_scale', 'autodrop/n_drops',
     'autodrop/smoothed_omega', 'cprop/mean_scale']
  """
  states = find_states(opt_state)
  out: dict[str, jax.Array] = {}
  for prefix, state in zip(_prefixes(states), states):
    name = type(state).__name__
    if name in MONITORED_FIELDS:
      fields = MONITORED_FIELDS[name][1]
    else:
      fields = _default_fields(state)
    for field in fields:
      value = _lookup(state, field)
      if value is None or value.size == 0:
        continue
      value = jnp.asarray(value)
      if value.dtype == jnp.bool_:
        value = value.astype(jnp.int32)
      out[f"{prefix}/{field}"] = value
  return out
