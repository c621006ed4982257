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
"""AdaS's layer groups: which leaves share a rate, and which kernel drives it.

The map is static: ``init`` derives it once from the parameter paths and
shapes (docs/adas.md, "Layer groups").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

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
class _Layout:
  """Static leaf -> rate map, built by ``init`` from the parameter paths."""

  n_leaves: int
  leaf_group: tuple[int, ...]  # -2: init, -1: fc, g >= 0: conv group g
  kernel_leaf: tuple[int, ...]  # leaf index of each group's kernel
  stack_shape: tuple[tuple[int, ...], ...]  # per group
  offset: tuple[int, ...]  # per group, into the per-layer vectors
  n_layers: int
  layer_names: tuple[str, ...]


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
  """Leading stacked axes of a kernel, read off a per-channel leaf.

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
  """Default leaf -> label map from Flax paths (docs/adas.md, Layer groups).

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
  groups.sort(key=lambda g: g[0])  # the last conv drives the fc rate
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
    >>> from optax_adaptive import adas_layer_groups
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
