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
"""Sphinx extension: toctree entries for pages that may not exist yet.

The method and guide pages are written by different people at different
times. ``optional_pages`` in ``conf.py`` names the pages that may be absent;
a ``{toctree}`` entry naming one of them is dropped (with an info message)
while its file does not exist, so the build with ``-W`` stays green and the
page appears as soon as it is written. Any other missing entry is still a
warning, as is a page that exists but is in no toctree.
"""

from __future__ import annotations

import re

_TOCTREE_OPEN = re.compile(r"^\s*(`{3,}|:{3,})\s*\{toctree\}")


def drop_missing_entries(text: str, optional: set[str],
                         existing: set[str]) -> tuple[str, list[str]]:
  """Removes toctree lines naming an optional page not in ``existing``."""
  out, dropped = [], []
  fence = None
  for line in text.splitlines(keepends=True):
    stripped = line.strip()
    if fence is None:
      if match := _TOCTREE_OPEN.match(line):
        fence = match.group(1)
    elif stripped.startswith(fence) and not stripped.strip(fence[0]):
      fence = None
    elif stripped in optional and stripped not in existing:
      dropped.append(stripped)
      continue
    out.append(line)
  return "".join(out), dropped


def _on_source_read(app, docname, source) -> None:
  from sphinx.util import logging  # lazy: the tests import this module

  optional = set(app.config.optional_pages)
  if not optional:
    return
  source[0], dropped = drop_missing_entries(
      source[0], optional, set(app.env.found_docs))
  for page in dropped:
    logging.getLogger(__name__).info(
        "optional page %r is not written yet; left out of %s's toctree",
        page, docname)


def setup(app):
  app.add_config_value("optional_pages", (), "env")
  app.connect("source-read", _on_source_read)
  return {"version": "1.0", "parallel_read_safe": True,
          "parallel_write_safe": True}
