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

Section numbers (``§``) refer to ``spec/adas.md``.

References:
  Hosseini & Plataniotis, `AdaS: Adaptive Scheduling of Stochastic Gradients
  <https://arxiv.org/abs/2006.06587>`_, 2020.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_adaptive import _common, _spectral

INIT = "init"  # label: the parameter keeps the initial rate
FC = "fc"  # label: the fully connected rate, driven by the last conv


class LayerGroup(NamedTuple):
  """A label returned by a ``layer_groups`` callable for a conv group member.

  A plain string ``name`` means ``LayerGroup(name)``. ``"init"`` (or
  ``None``) and ``"fc"`` are reserved.

  Attributes:
    name: leaves with the same name share one rate.
    kernel: this leaf's knowledge gain drives the group's rate. If no member
      is marked, the unique member with ``ndim >= 3`` is the kernel.
    stack_dims: for a kernel, the number of leading axes that stack layers
      (``nn.scan``/``nnx.vmap``); each stacked layer gets its own rate and
      every member of the group must have these leading axes too.
  """

  name: str
  kernel: bool = False
  stack_dims: int = 0


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static settings of :func:`adas`, carried in the state.

  A pytree node without leaves, so :func:`adas_end_epoch` needs nothing but
  the state and the params. It does not depend on the params (the
  leaf -> layer map is rebuilt from their paths and shapes while tracing),
  so ``optax.tree.map_params`` sees the same state structure.
  """

  layer_groups: Callable[..., Any] | None
  p: Any
  solver: str
  spectrum: str
  transpose_tall: bool
  hold_lr_while_zero_gain: bool


jax.tree_util.register_pytree_node(
    _Config, lambda config: ((), config), lambda config, _: config)


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Static leaf -> rate map derived from parameter paths (§6.2)."""

  n_leaves: int
  leaf_group: tuple[int, ...]  # -2: init, -1: fc, g >= 0: conv group g
  kernel_leaf: tuple[int, ...]  # leaf index of each group's kernel
  stack_shape: tuple[tuple[int, ...], ...]  # per group
  offset: tuple[int, ...]  # per group, into the per-layer vectors
  n_layers: int
  layer_names: tuple[str, ...]


class AdasState(NamedTuple):
  """State of :func:`adas`; small fields are replicated.

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
  init_lr: jax.Array  # shape=(), float; eta_0 (refreshed by `update`)
  beta: jax.Array  # shape=(), float
  zeta: jax.Array  # shape=(), float
  min_lr: jax.Array  # shape=(), float
  trace: optax.Params  # momentum buffer, like params (float32 for bf16)
  config: _Config  # static settings (no leaves)


# ------------------------------------------------------------ layer groups


def _key_name(key) -> str | int:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return getattr(key, attr)
  return str(key)


def _normalized_path(path) -> tuple[str | int, ...]:
  """Path as a tuple of names; drops nnx's trailing ``.value``."""
  names = tuple(_key_name(k) for k in path)
  if names and names[-1] == "value" and type(path[-1]).__name__ == (
      "GetAttrKey"):
    names = names[:-1]
  return names


def _path_string(path) -> str:
  return "/".join(str(k) for k in path)


_TRAILING_ID = re.compile(r"^(.*?)(\d*)$")


def _module_id(module: tuple) -> tuple:
  """(parent, id) where id is a list index or a name's trailing digits."""
  if not module:
    return ((), "")
  last = module[-1]
  if isinstance(last, int):
    return (module[:-2], last)
  return (module[:-1], _TRAILING_ID.match(str(last)).group(2))


def _stack_dims(kernel_shape, companion_shape) -> int:
  """Leading stacked axes of a kernel, read off a per-channel leaf (§6.1).

  ``nn.scan``/``nnx.vmap``/``nnx.scan`` stack every leaf of a layer along
  the same leading axes, so a bias (or norm scale) of shape
  ``(*stack, out)`` next to a kernel of shape ``(*stack, ..., out)`` tells
  how many leading kernel axes stack layers; an unstacked layer has a 1-D
  bias.
  """
  dims = len(companion_shape) - 1
  if (dims > 0 and companion_shape[-1] == kernel_shape[-1]
      and tuple(companion_shape[:dims]) == tuple(kernel_shape[:dims])
      and len(kernel_shape) - dims >= 2):
    return dims
  return 0


def _default_labels(paths, leaves) -> list[Any]:
  """Default leaf -> label map from Flax paths (§6.2).

  A conv kernel (``kernel`` with ``ndim >= 3`` once stacked axes are
  removed) and the other leaves of its module form a group; a
  normalisation module (only ``scale``/``bias``) joins the conv of the same
  parent with the same index (``conv1``/``bn1``, ``Conv_0``/``BatchNorm_0``,
  ``convs[i]``/``norms[i]``); dense modules (2-D ``kernel``) and their
  biases go to ``"fc"``; the rest keeps the initial rate. Stacked layers
  are detected from the module's bias, or else its norm's scale: leading
  axes shared with the kernel are stack axes (:func:`_stack_dims`).
  """
  module_leaves = {}
  for path, leaf in zip(paths, leaves):
    module, name = path[:-1], path[-1] if path else ""
    module_leaves.setdefault(module, {})[name] = tuple(leaf.shape)
  norms_by_id = {}
  for module, named in module_leaves.items():
    if module and set(named) <= {"scale", "bias"}:
      norms_by_id.setdefault(_module_id(module), []).append(module)
  conv_modules, dense_modules = {}, set()
  for module, named in module_leaves.items():
    kernel = named.get("kernel")
    if kernel is None or len(kernel) < 2:
      continue
    companion = named.get("bias")
    norms = norms_by_id.get(_module_id(module), [])
    if companion is None and len(norms) == 1:
      norm = module_leaves[norms[0]]
      companion = norm.get("scale", norm.get("bias"))
    stack = _stack_dims(kernel, companion) if companion else 0
    if len(kernel) - stack >= 3:
      conv_modules[module] = (_path_string(module), stack)
    elif len(kernel) - stack == 2:
      dense_modules.add(module)
  convs_by_id = {}
  for module in conv_modules:
    convs_by_id.setdefault(_module_id(module), []).append(module)
  labels = []
  for path in paths:
    module = path[:-1]
    if module in conv_modules:
      name, stack = conv_modules[module]
      labels.append(LayerGroup(name, kernel=path[-1] == "kernel",
                               stack_dims=stack))
    elif module in dense_modules:
      labels.append(FC)
    elif module and set(module_leaves[module]) <= {"scale", "bias"}:
      match = convs_by_id.get(_module_id(module), [])
      labels.append(LayerGroup(conv_modules[match[0]][0]) if len(match) == 1
                    else INIT)
    else:
      labels.append(INIT)
  return labels


def _natural_key(name: str):
  return [(0, int(t), "") if t.isdigit() else (1, 0, t)
          for t in re.findall(r"\d+|\D+", name)]


def _build_layout(params, layer_groups) -> _Layout:
  path_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  paths = [_normalized_path(path) for path, _ in path_leaves]
  leaves = [leaf for _, leaf in path_leaves]
  if layer_groups is None:
    labels = _default_labels(paths, leaves)
  else:
    labels = [layer_groups(path, leaf) for path, leaf in zip(paths, leaves)]
  labels = [LayerGroup(x) if isinstance(x, str) else x for x in labels]
  members = {}
  for index, label in enumerate(labels):
    if label is not None and not isinstance(label, LayerGroup):
      raise TypeError(
          "`layer_groups` must return a str, a LayerGroup or None; got"
          f" {label!r} for {_path_string(paths[index])}.")
    if label is not None and label.name not in (INIT, FC):
      members.setdefault(label.name, []).append(index)
  groups = []
  for name, indices in members.items():
    marked = [i for i in indices if labels[i].kernel]
    if not marked:
      marked = [i for i in indices if len(leaves[i].shape) >= 3]
    if len(marked) != 1:
      raise ValueError(
          f"`layer_groups`: group {name!r} needs exactly one kernel leaf"
          f" (marked or with ndim >= 3); found {len(marked)}.")
    kernel = marked[0]
    stack = tuple(leaves[kernel].shape[:labels[kernel].stack_dims])
    if len(leaves[kernel].shape) - len(stack) < 2:
      raise ValueError(f"`layer_groups`: kernel of {name!r} is not a matrix.")
    for i in indices:
      if tuple(leaves[i].shape[:len(stack)]) != stack:
        raise ValueError(
            f"`layer_groups`: {_path_string(paths[i])} lacks the stacked"
            f" axes {stack} of group {name!r}.")
    groups.append((_natural_key(_path_string(paths[kernel])), name, kernel,
                   stack, indices))
  groups.sort(key=lambda g: g[0])  # the last conv drives the fc rate, §1.6
  leaf_group = [-1 if label is not None and label.name == FC else -2
                for label in labels]
  kernel_leaf, stack_shape, offset, names = [], [], [], []
  n_layers = 0
  for g, (_, name, kernel, stack, indices) in enumerate(groups):
    for i in indices:
      leaf_group[i] = g
    kernel_leaf.append(kernel)
    stack_shape.append(stack)
    offset.append(n_layers)
    size = int(np.prod(stack, dtype=np.int64))
    names.extend([name] if not stack else
                 [f"{name}[{i}]" for i in range(size)])
    n_layers += size
  return _Layout(len(leaves), tuple(leaf_group), tuple(kernel_leaf),
                 tuple(stack_shape), tuple(offset), n_layers, tuple(names))


def adas_layer_groups(
    params: optax.Params,
    layer_groups: Callable[..., Any] | None = None,
) -> optax.Params:
  """The label :func:`adas` gives each leaf: a group name, "fc" or "init".

  Use it to check the default grouping of a model before training.

  Args:
    params: the parameter tree (nnx ``State`` or linen dict).
    layer_groups: the same override :func:`adas` accepts.

  Returns:
    A tree like ``params`` of strings.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_adaptive._adas import adas_layer_groups
    >>> params = {"Conv_0": {"kernel": jnp.zeros((3, 3, 1, 4)),
    ...                      "bias": jnp.zeros(4)},
    ...           "BatchNorm_0": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
    ...           "Dense_0": {"kernel": jnp.zeros((4, 2))}}
    >>> adas_layer_groups(params)["BatchNorm_0"]["scale"]
    'Conv_0'
  """
  layout = _build_layout(params, layer_groups)
  names = [INIT if g == -2 else FC if g == -1 else None
           for g in layout.leaf_group]
  group_names = [n.split("[")[0] for n in layout.layer_names]
  for leaf, g in enumerate(layout.leaf_group):
    if g >= 0:
      names[leaf] = group_names[layout.offset[g]]
  return jax.tree.unflatten(jax.tree.structure(params), names)


# Layer names recorded by `init`, for `adas_layer_names(state)` without
# params; keyed by the (value-compared) settings and the layer count.
_NAMES_AT_INIT: dict[tuple[Any, int], tuple[str, ...]] = {}


def adas_layer_names(
    state: AdasState, params: optax.Params | None = None
) -> tuple[str, ...]:
  """Names of the conv layers, in the order of ``state.layer_lr``.

  Args:
    state: an :class:`AdasState` (of :func:`adas`'s ``init`` or ``update``).
    params: the parameters the state was built for. The names are derived
      from their paths and shapes. Without them, the names recorded by the
      last ``init`` with the same ``layer_groups`` and layer count in this
      Python process are returned: the record is process-global, so after
      ``init`` of another model with as many conv layers it returns that
      model's names. Pass ``params`` when two models may share both.

  Returns:
    One name per conv layer, e.g. ``"conv1"`` or ``"blocks/Conv_0[2]"`` for
    the third layer of a stacked kernel.

  Raises:
    ValueError: without ``params`` when no ``init`` recorded the names.
  """
  if params is not None:
    return _build_layout(params, state.config.layer_groups).layer_names
  key = (state.config.layer_groups, _n_layers(state))
  if key not in _NAMES_AT_INIT:
    raise ValueError("adas_layer_names: pass `params` (no init recorded).")
  return _NAMES_AT_INIT[key]


# ------------------------------------------------------------- epoch end

# The fields of AdasState with one entry per conv layer.
_PER_LAYER = ("layer_lr", "gain", "input_gain", "output_gain",
              "input_condition", "output_condition", "input_rank",
              "output_rank")


def _n_layers(state: AdasState) -> int:
  return 0 if state.layer_lr is None else state.layer_lr.shape[0]


def _per_layer_zeros(n: int, fdt: jnp.dtype, *,
                     none_if_empty: bool = True) -> dict[str, Any]:
  """The per-layer fields, zeros; None when ``n == 0`` (for the state)."""
  if not n and none_if_empty:
    return dict.fromkeys(_PER_LAYER)
  return {name: jnp.zeros((n,), jnp.int32 if name.endswith("rank") else fdt)
          for name in _PER_LAYER}


def _replicated(x: jax.Array) -> jax.Array:
  """Gathers an explicitly sharded array for the SVD (conventions §0.6)."""
  spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
  if spec is None or all(axis is None for axis in spec):
    return x
  return jax.sharding.reshard(x, jax.sharding.PartitionSpec())


def _measure(layout: _Layout, config: _Config,
             params) -> _spectral.KnowledgeGain:
  """Knowledge gains of every conv layer, one vector per field."""
  leaves = jax.tree.leaves(params)
  kernels = []
  for leaf, stack in zip(layout.kernel_leaf, layout.stack_shape):
    kernel = _replicated(leaves[leaf])
    layers = int(np.prod(stack, dtype=np.int64))  # not -1: size may be 0
    kernels.append(kernel.reshape((layers, *kernel.shape[len(stack):])))
  gains = _spectral.knowledge_gains(
      kernels, config.p, config.solver, transpose_tall=config.transpose_tall,
      spectrum=config.spectrum)
  return jax.tree.map(lambda *xs: jnp.concatenate(xs), *gains)


def _end_epoch(state: AdasState, params) -> AdasState:
  """Epoch-end update: measure the gains, then set the rates."""
  layout = _build_layout(params, state.config.layer_groups)
  if layout.n_layers != _n_layers(state):
    raise ValueError(
        f"adas: `params` has {layout.n_layers} conv layers; the state was"
        f" built for {_n_layers(state)}.")
  kg = _measure(layout, state.config, params) if layout.n_layers else None
  return _update_rates(state, kg)


def _update_rates(state: AdasState, kg) -> AdasState:
  """The rate recurrence of §1.6 (with the §1.7 flags and §1.10 fallback)."""
  fdt = state.fc_lr.dtype
  no_layers = state.layer_lr is None
  if no_layers:  # computed with empty vectors, stored as None
    state = state._replace(**_per_layer_zeros(0, fdt, none_if_empty=False))
  first = state.epoch == 0
  if kg is not None:
    # §1.10: a non-finite measurement keeps the previous value.
    keep = lambda new, old: jnp.where(
        jnp.isfinite(new), new, old).astype(old.dtype)
    g3 = keep(kg.input_gain, state.input_gain)
    g4 = keep(kg.output_gain, state.output_gain)
    gain_ok = jnp.isfinite(kg.input_gain) & jnp.isfinite(kg.output_gain)
    k3 = keep(kg.input_condition, state.input_condition)
    k4 = keep(kg.output_condition, state.output_condition)
    r3 = jnp.where(gain_ok, kg.input_rank, state.input_rank)
    r4 = jnp.where(gain_ok, kg.output_rank, state.output_rank)
    gain = 0.5 * (g3 + g4)  # §1.5
    g4_last, g4_last_prev = g4[-1], state.output_gain[-1]
  else:
    g3, g4, k3, k4 = (state.input_gain, state.output_gain,
                      state.input_condition, state.output_condition)
    r3, r4, gain = state.input_rank, state.output_rank, state.gain
    g4_last = g4_last_prev = jnp.zeros((), fdt)
  layer_gain = jnp.append(gain, g4_last)
  layer_delta = jnp.append(gain - state.gain, g4_last - g4_last_prev)  # §1.6
  rate = jnp.append(state.layer_lr, state.fc_lr)
  previous = jnp.where(first, 0.0, rate)  # R starts at 0, §1.6
  delta = jnp.where(first, state.init_lr, layer_delta)  # Delta(0) = eta_0
  new_rate = jnp.maximum(state.beta * previous + state.zeta * delta,
                         state.min_lr)  # §1.6
  ready = state.ready | (layer_gain != 0)
  if state.config.hold_lr_while_zero_gain:  # §1.7 [1.1.3]: hold eta_0
    new_rate = jnp.where(ready, new_rate, state.init_lr)
  new_rate = new_rate.astype(fdt)
  state = state._replace(
      epoch=optax.safe_int32_increment(state.epoch),
      layer_lr=new_rate[:-1], fc_lr=new_rate[-1], gain=gain.astype(fdt),
      input_gain=g3, output_gain=g4, input_condition=k3,
      output_condition=k4, input_rank=r3.astype(jnp.int32),
      output_rank=r4.astype(jnp.int32), ready=ready)
  if no_layers:
    state = state._replace(**dict.fromkeys(_PER_LAYER))
  return state


def adas_end_epoch(state: Any, params: optax.Params) -> Any:
  """Ends an epoch: measures the knowledge gains and sets the next rates.

  Call it after the epoch's last ``apply_updates``, with the updated params,
  when :func:`adas` was built with ``steps_per_epoch=None`` (§6.3). Every
  :class:`AdasState` inside ``state`` is updated (so the state of
  ``optax.chain``, ``inject_hyperparams`` or ``MultiSteps`` can be passed
  whole). Jit it once; it runs the SVDs, batched by unfolding shape.

  .. math::

    R_\\ell \\leftarrow \\max(\\beta R_\\ell + \\zeta \\Delta_\\ell,
      \\eta_{\\min}), \\qquad \\Delta_\\ell = \\begin{cases} \\eta_0 & k = 0\\\\
      \\bar G(k, \\ell) - \\bar G(k-1, \\ell) & k \\ge 1 \\end{cases}

  Args:
    state: an :class:`AdasState`, or any optimizer state containing one.
    params: the parameters after the epoch's last update.

  Returns:
    The state with the new per-layer rates, gains, conditions and ranks.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optax_adaptive._adas import adas, adas_end_epoch
    >>> params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}}
    >>> tx = adas(learning_rate=0.1)
    >>> state = tx.init(params)
    >>> state = jax.jit(adas_end_epoch)(state, params)
    >>> round(float(state.layer_lr[0]), 6)  # epoch 0 sets R = eta_0
    0.1
  """
  _common.require_params(params, "adas_end_epoch")
  is_adas = lambda x: isinstance(x, AdasState)
  found = [x for x in jax.tree.leaves(state, is_leaf=is_adas) if is_adas(x)]
  if not found:
    raise ValueError("adas_end_epoch: `state` holds no AdasState.")
  return jax.tree.map(
      lambda x: _end_epoch_jit(x, params) if is_adas(x) else x, state,
      is_leaf=is_adas)


_end_epoch_jit = jax.jit(_end_epoch)


# -------------------------------------------------------------- optimizer


def _leaf_rate(state: AdasState, layout: _Layout, group: int, ndim: int):
  init_lr = state.init_lr
  if group == -2:
    return init_lr
  if group == -1:
    return state.fc_lr
  stack = layout.stack_shape[group]
  start = layout.offset[group]
  size = int(np.prod(stack, dtype=np.int64))
  rate = state.layer_lr[start:start + size]
  return rate.reshape(stack + (1,) * (ndim - len(stack)))


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
  parameters, with the rate :math:`\eta_i` of the parameter's layer group
  (spec §1.8):

  .. math::

    b \leftarrow \mu b + (g + \lambda\theta), \qquad
    \theta \leftarrow \theta - \eta_i b.

  At the end of epoch :math:`k` the knowledge gain :math:`\bar G(k, \ell)`
  of every conv layer (see :func:`knowledge_gain`) is measured on the
  updated weights, and each rate follows (§1.6)

  .. math::

    R_\ell \leftarrow \max\big(\beta R_\ell + \zeta \Delta_\ell(k),\,
      \eta_{\min}\big), \quad
    \Delta_\ell(0) = \eta_0, \quad
    \Delta_\ell(k) = \bar G(k, \ell) - \bar G(k-1, \ell),

  with :math:`R_\ell = 0` before epoch 0, so epochs 0 and 1 both run at
  :math:`\eta_0`. The fully connected rate uses the increment of the output
  gain :math:`G_4` of the last conv layer. Leaves in no group keep
  :math:`\eta_0`.

  Epoch ends happen either inside ``update`` every ``steps_per_epoch`` steps
  (the SVDs run only on those steps, in a zero-or-one-trip
  :func:`jax.lax.while_loop`, so ``update`` is then not reverse-mode
  differentiable and needs ``params``), or when the training loop calls
  :func:`adas_end_epoch` (``steps_per_epoch=None``, the default).

  Args:
    learning_rate: initial rate :math:`\eta_0`, a number (not a schedule:
      AdaS is the schedule). Injected with
      :func:`optax.inject_hyperparams` and changed mid-run, it is still only
      :math:`\eta_0`: it changes the rate of the leaves in no group and the
      :math:`\Delta(0)` of an epoch 0 not yet ended, never the conv and fc
      rates in force, which are ``state.layer_lr`` and ``state.fc_lr``
      (also in :func:`optax_adaptive.diagnostics`). To scale every rate,
      chain ``optax.inject_hyperparams(optax.scale)(step_size=1.0)`` after
      ``adas`` and change ``step_size``.
    beta: gain factor :math:`\beta \in [0, 1)`.
    zeta: scale :math:`\zeta` of the knowledge-gain increment.
    min_lr: lower clip :math:`\eta_{\min}` of every rate (``0.0`` for the
      [1.1.3] clip).
    momentum: :math:`\mu`.
    weight_decay: L2 coefficient :math:`\lambda`, applied to every leaf.
    steps_per_epoch: static epoch length for epoch ends inside ``update``,
      or ``None`` for explicit :func:`adas_end_epoch` calls.
    p: exponent of the knowledge gain, 1 or 2.
    solver: ``"brent_ref"`` (reference parity) or ``"golden_log"``.
    layer_groups: optional ``fn(path, leaf) -> label`` overriding the
      default grouping, where ``path`` is a tuple of names and indices and
      the label is a group name, a :class:`LayerGroup`, ``"fc"`` or
      ``"init"``/``None``. Like an ``optax.partition`` label function it may
      use only structure, shape and path.
    transpose_tall: transpose tall unfoldings ([1.1.3]/[RM], §1.7).
    hold_lr_while_zero_gain: keep :math:`\eta_0` for a layer until its gain
      is first non-zero ([1.1.3], §1.7).
    spectrum: ``"gram"`` (default) or ``"svd"`` for the singular values.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is an
    :class:`AdasState`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optax_adaptive._adas import adas
    >>> params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4)) * 0.1,
    ...                    "bias": jnp.zeros(4)},
    ...           "head": {"kernel": jnp.ones((4, 2)) * 0.1}}
    >>> tx = adas(learning_rate=0.05, steps_per_epoch=2)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> int(state.epoch), round(float(state.fc_lr), 6)
    (1, 0.05)

  References:
    Hosseini & Plataniotis, `AdaS: Adaptive Scheduling of Stochastic
    Gradients <https://arxiv.org/abs/2006.06587>`_, 2020.
  """
  if callable(learning_rate):
    raise TypeError("`learning_rate` must be a number: AdaS sets the rates.")
  _common.check_range("learning_rate", learning_rate, lower=0.0)
  _common.check_range("beta", beta, lower=0.0, upper=1.0,
                      upper_inclusive=False)
  _common.check_range("zeta", zeta, lower=0.0)
  _common.check_range("min_lr", min_lr, lower=0.0)
  _common.check_range("momentum", momentum, lower=0.0, upper=1.0)
  _common.check_range("weight_decay", weight_decay, lower=0.0)
  _spectral.check_p(p)
  if steps_per_epoch is not None and not isinstance(steps_per_epoch,
                                                    jax.Array):
    _common.check_positive_int("steps_per_epoch", steps_per_epoch)
  _common.check_choice("solver", solver, _spectral.SOLVERS)
  _common.check_choice("spectrum", spectrum, _spectral.SPECTRA)
  _common.check_callable("layer_groups", layer_groups, allow_none=True)
  config = _Config(layer_groups, p, solver, spectrum, transpose_tall,
                   hold_lr_while_zero_gain)
  needs_params = steps_per_epoch is not None or not (
      _common.is_concrete_number(weight_decay) and weight_decay == 0)

  def init_fn(params):
    _common.check_float_leaves(params, "adas")
    layout = _build_layout(params, layer_groups)
    if layout.n_layers:
      # Keyed by what the names depend on; numeric settings such as ``p``
      # may be arrays under inject_hyperparams and are not hashable.
      _NAMES_AT_INIT[layer_groups, layout.n_layers] = layout.layer_names
    fdt = _common.widest_float_dtype(params)
    n = layout.n_layers
    scalar = lambda v: jnp.asarray(v, fdt)
    per_layer = _per_layer_zeros(n, fdt)
    if n:
      per_layer["layer_lr"] = jnp.full((n,), learning_rate, fdt)
    return AdasState(
        count=jnp.zeros((), jnp.int32), epoch=jnp.zeros((), jnp.int32),
        fc_lr=scalar(learning_rate), ready=jnp.zeros((n + 1,), bool),
        init_lr=scalar(learning_rate), beta=scalar(beta), zeta=scalar(zeta),
        min_lr=scalar(min_lr), trace=_common.stats_zeros_like(params),
        config=config, **per_layer)

  def update_fn(updates, state, params=None, **extra_args):
    # Complies with the signature of GradientTransformationExtraArgs but
    # ignores the extra_args.
    del extra_args
    if needs_params:
      _common.require_params(params, "adas")
    layout = _build_layout(updates, state.config.layer_groups)
    fdt = state.fc_lr.dtype
    state = state._replace(
        init_lr=jnp.asarray(learning_rate, fdt), beta=jnp.asarray(beta, fdt),
        zeta=jnp.asarray(zeta, fdt), min_lr=jnp.asarray(min_lr, fdt))
    grad_leaves, treedef = jax.tree.flatten(updates)
    trace_leaves = treedef.flatten_up_to(state.trace)
    param_leaves = (treedef.flatten_up_to(params) if params is not None
                    else [None] * len(grad_leaves))
    new_trace, new_updates = [], []
    for index, (g, b, w) in enumerate(
        zip(grad_leaves, trace_leaves, param_leaves)):
      decayed = g.astype(b.dtype)
      if w is not None:
        decayed = decayed + weight_decay * w.astype(b.dtype)  # §1.8
      b = (momentum * b + decayed).astype(b.dtype)  # §1.8, b_1 = g~
      rate = _leaf_rate(state, layout, layout.leaf_group[index], g.ndim)
      out_dtype = g.dtype if w is None else w.dtype
      new_trace.append(b)
      new_updates.append((-rate * b).astype(out_dtype))  # theta -= eta b
    updates = jax.tree.unflatten(treedef, new_updates)
    state = state._replace(
        count=optax.safe_int32_increment(state.count),
        trace=jax.tree.unflatten(treedef, new_trace))
    if steps_per_epoch is not None:
      epoch_done = state.count % steps_per_epoch == 0
      new_params = optax.apply_updates(params, updates)  # §6.3 post-update
      # Only the small fields pass through the zero-or-one-trip loop; the
      # momentum buffer stays outside, so other steps copy nothing. Under
      # vmap it runs when any lane ends an epoch (a cond runs it always).
      trace = state.trace
      state = _common.run_if(
          epoch_done, lambda s: _end_epoch(s, new_params),
          state._replace(trace=None))._replace(trace=trace)
    return updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# -------------------------------------------------------------- early stop


class AdasEarlyStopState(NamedTuple):
  """State of :func:`adas_early_stop` (§1.9)."""

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
  r"""The reference's validation-free early stop on the training loss (§1.9).

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
    >>> from optax_adaptive._adas import adas_early_stop
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
