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
"""Type hints shown by their alias names (``jax.typing.ArrayLike``).

Annotations such as ``jax.typing.ArrayLike`` or ``optax.Params`` are unions;
evaluated, they would print as ``Union[Array, ndarray, bool, number, ...]``.
:func:`format_alias` is sphinx-autodoc-typehints' ``typehints_formatter``: it
prints a known alias by name, also inside a union (``optax.Params | None``).
``optax.Params``, ``optax.Updates`` and ``optax.OptState`` are one and the
same object, ``chex.ArrayTree``, and are printed as such.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any


@functools.cache
def aliases() -> tuple[tuple[Any, str], ...]:
  """(alias, name) pairs, largest first so that nested aliases lose."""
  import jax  # lazy: conf.py and the tests import this module
  import optax

  return (
      (optax.ScalarOrSchedule, "optax.ScalarOrSchedule"),
      (optax.Params, "chex.ArrayTree"),
      (jax.typing.DTypeLike, "jax.typing.DTypeLike"),
      (jax.typing.ArrayLike, "jax.typing.ArrayLike"),
  )


def _is_union(annotation: Any) -> bool:
  return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def split_aliases(annotation: Any) -> tuple[list[str], list[Any]]:
  """Alias names found in ``annotation`` and the members left over."""
  for alias, name in aliases():
    if annotation == alias:
      return [name], []
  if not _is_union(annotation):
    return [], [annotation]
  rest = list(typing.get_args(annotation))
  names = []
  for alias, name in aliases():
    members = typing.get_args(alias) if _is_union(alias) else (alias,)
    if members and all(member in rest for member in members):
      rest = [arg for arg in rest if arg not in members]
      names.append(name)
  return names, rest


def format_alias(annotation: Any, config: Any) -> str | None:
  """``typehints_formatter``: None lets sphinx-autodoc-typehints decide."""
  names, rest = split_aliases(annotation)
  if not names:
    return None
  from sphinx_autodoc_typehints import format_annotation

  parts = [f":py:data:`{name}`" for name in names]
  parts += [format_annotation(arg, config) for arg in rest]
  return " | ".join(parts)
