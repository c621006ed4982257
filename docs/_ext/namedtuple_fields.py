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
"""Sphinx extension: document NamedTuple fields from their source comments.

optax_adaptive writes the layout of every state field as a trailing comment,
``count: jax.Array  # shape=(), dtype=jnp.int32``, or, where that line would
be too long, as comment lines just above the field. autodoc ignores such
comments and would print "Alias for field number 0" instead, so this
extension turns them into ``:param <field>: <comment>`` lines of the class
docstring (sphinx-autodoc-typehints then adds the annotated type).
"""

from __future__ import annotations

import inspect
import re

_FIELD = re.compile(r"^\s+(\w+)\s*:\s*[^#=]+?(?:=[^#]+?)?\s*(?:#\s*(.+?))?\s*$")
_COMMENT = re.compile(r"^\s+#\s*(.+?)\s*$")


def is_namedtuple_class(obj) -> bool:
  return (inspect.isclass(obj) and issubclass(obj, tuple)
          and hasattr(obj, "_fields"))


def field_comments(cls) -> dict[str, str]:
  """``{field: trailing comment}`` for the fields of a NamedTuple class."""
  try:
    source = inspect.getsource(cls)
  except (OSError, TypeError):
    return {}
  comments: dict[str, str] = {}
  above: list[str] = []  # comment lines since the last field
  for line in source.splitlines()[1:]:
    if comment := _COMMENT.match(line):
      above.append(comment.group(1))
      continue
    match = _FIELD.match(line)
    if match and match.group(1) in cls._fields:
      text = " ".join([*above, match.group(2) or ""]).strip()
      if text:
        comments.setdefault(match.group(1), text)
    above = []
  return comments


def _add_field_params(app, what, name, obj, options, lines) -> None:
  del app, name, options
  if what != "class" or not is_namedtuple_class(obj):
    return
  comments = field_comments(obj)
  if not comments:
    return
  if lines and lines[-1].strip():
    lines.append("")
  for field in obj._fields:
    if field in comments:
      lines.append(f":param {field}: {_escape(comments[field])}")


def _escape(text: str) -> str:
  """Keeps reST from reading `*`, `|` or `name_` in a plain comment as markup.

  Double-backtick literal spans are left as they are.
  """
  parts = re.split(r"(``.+?``)", text)
  for i in range(0, len(parts), 2):
    part = re.sub(r"([*|])", r"\\\1", parts[i])
    parts[i] = re.sub(r"(?<=\w)_(?=\W|$)", r"\\_", part)
  return "".join(parts)


def setup(app):
  # Before sphinx-autodoc-typehints (priority 500) adds the `:type:` lines.
  app.connect("autodoc-process-docstring", _add_field_params, priority=400)
  return {"version": "1.0", "parallel_read_safe": True,
          "parallel_write_safe": True}
