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
"""Sphinx extension: every public name must have an API entry.

After reading all documents, the extension compares ``<module>.__all__``
(minus ``coverage_check_exempt``) with the objects that the Python domain
actually documented (``autosummary`` stubs, ``autofunction`` ...). A missing
name is a warning, so ``sphinx -W`` fails. Like optax's
``docs/ext/coverage_check.py``.

:func:`documented_in_sources` is the same check done on the ``.rst`` sources
without building; ``tests/test_docs.py`` uses it so that the fast test suite
fails as soon as a name is added to ``__all__`` without an API entry.
"""

from __future__ import annotations

import importlib
import pathlib
import re
from collections.abc import Iterable

_AUTO_DIRECTIVE = re.compile(
    r"^\s*\.\.\s+auto(?:function|class|data|attribute|exception|module)"
    r"::\s*(\S+)\s*$")
_CURRENT_MODULE = re.compile(r"^\s*\.\.\s+(?:current|py:current)?module::"
                             r"\s*(\S+)\s*$")
_AUTOSUMMARY = re.compile(r"^(\s*)\.\.\s+autosummary::\s*$")


def public_names(module_name: str, exempt: Iterable[str] = ()) -> list[str]:
  """``module.__all__`` minus ``exempt``, fully qualified, sorted."""
  module = importlib.import_module(module_name)
  exempt = set(exempt)
  return sorted(f"{module_name}.{name}" for name in module.__all__
                if name not in exempt)


def _qualify(name: str, current_module: str | None) -> str:
  name = name.lstrip("~")
  if current_module and not name.startswith(current_module + "."):
    return f"{current_module}.{name}"
  return name


def documented_in_source(text: str) -> set[str]:
  """Fully qualified names that one ``.rst`` source documents.

  Understands ``.. currentmodule::``, ``.. autosummary::`` blocks (their
  indented entries, options skipped) and ``.. auto<kind>:: name``.
  """
  names: set[str] = set()
  current_module = None
  lines = text.splitlines()
  i = 0
  while i < len(lines):
    line = lines[i]
    if match := _CURRENT_MODULE.match(line):
      current_module = match.group(1)
    elif match := _AUTO_DIRECTIVE.match(line):
      names.add(_qualify(match.group(1), current_module))
    elif match := _AUTOSUMMARY.match(line):
      indent = len(match.group(1))
      i += 1
      while i < len(lines):
        entry = lines[i]
        stripped = entry.strip()
        if stripped and len(entry) - len(entry.lstrip()) <= indent:
          i -= 1
          break
        if stripped and not stripped.startswith(":"):
          names.add(_qualify(stripped.split()[0], current_module))
        i += 1
    i += 1
  return names


def documented_in_sources(api_dir: str | pathlib.Path) -> set[str]:
  """Union of :func:`documented_in_source` over ``api_dir/**/*.rst``."""
  names: set[str] = set()
  for path in sorted(pathlib.Path(api_dir).rglob("*.rst")):
    if "generated" in path.parts:
      continue
    names |= documented_in_source(path.read_text(encoding="utf-8"))
  return names


def _check_coverage(app, env) -> None:
  from sphinx.util import logging  # lazy: the tests import this module

  logger = logging.getLogger(__name__)
  documented = set(env.get_domain("py").objects)
  missing = [name for name in public_names(app.config.coverage_check_module,
                                           app.config.coverage_check_exempt)
             if name not in documented]
  for name in missing:
    logger.warning(
        "public name %s (in %s.__all__) has no API entry; add it to an "
        ".. autosummary:: block in docs/api/", name,
        app.config.coverage_check_module, type="coverage_check",
        subtype="missing")


def setup(app):
  app.add_config_value("coverage_check_module", "", "env")
  app.add_config_value("coverage_check_exempt", (), "env")
  app.connect("env-check-consistency", _check_coverage)
  return {"version": "1.0", "parallel_read_safe": True,
          "parallel_write_safe": True}
