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
"""Sphinx configuration of the optax_adaptive documentation.

Build (warnings are errors)::

  python -m sphinx -W --keep-going -b html docs docs/_build/html

The stack follows optax's own docs (autodoc + autosummary + napoleon, MyST
markdown with dollarmath/amsmath, sphinx-book-theme). Everything here works
offline: no intersphinx inventories are fetched unless
``OPTAX_ADAPTIVE_DOCS_INTERSPHINX=1`` is set.
"""

import os
import sys

# Importing jax inside autodoc: keep it on the CPU and quiet.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_DOCS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_DOCS, "_ext"))
sys.path.insert(0, os.path.dirname(_DOCS))

import short_typehints  # noqa: E402  (docs/_ext)

import optax_adaptive  # noqa: E402

# -- Project -----------------------------------------------------------------

project = "optax_adaptive"
author = "The optax_adaptive Authors"
copyright = "2026, The optax_adaptive Authors"
version = release = optax_adaptive.__version__

# -- General -----------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
    "myst_parser",
    "coverage_check",
    "namedtuple_fields",
    "optional_pages",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "README.md",  # how to build the docs; not a page of the site
    "examples/**",
    "**/.pytest_cache",
]
templates_path = ["_templates"]
nitpicky = False

# Pages written by other people, possibly later than index.md: while one does
# not exist its toctree entry is dropped (docs/_ext/optional_pages.py). Any
# other broken entry, or a page in no toctree, still fails the build.
optional_pages = (
    "cprop", "adas", "autodrop", "labpal",
    "flax", "multi_device", "checkpointing", "diagnostics", "results",
)

# -- autodoc / autosummary / napoleon ----------------------------------------

autosummary_generate = True
autosummary_imported_members = True
# Functions need no members; classes (all NamedTuples: states, results) are
# documented by docs/_templates/autosummary/class.rst and namedtuple_fields.
autodoc_default_options = {}
autodoc_member_order = "bysource"
# Type hints go into the parameter descriptions, as in optax's docs.
autodoc_typehints = "description"
typehints_document_rtype = True
typehints_use_signature = False
always_document_param_types = False
# jax.typing.ArrayLike, optax.Params ... by name instead of expanded unions.
# A function cannot be pickled with the environment; Sphinx then only says it
# cannot cache this value ("config.cache"), which is silenced below.
typehints_formatter = short_typehints.format_alias
# Private helper types (e.g. ``optax._src.base.Params``) are shown by their
# public name.
autodoc_type_aliases = {
    "Params": "optax.Params",
    "Updates": "optax.Updates",
    "OptState": "optax.OptState",
    "ScalarOrSchedule": "optax.ScalarOrSchedule",
}
# optax.OptState is chex.ArrayTree, a recursive alias holding
# ForwardRef('ArrayTree') that no module namespace resolves; the type is then
# shown as written, which is all this warning reports (e.g. for the dataclass
# fields TrainState inherits from flax).
suppress_warnings = [
    "sphinx_autodoc_typehints.forward_reference",
    "config.cache",
]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- MyST (markdown pages) ---------------------------------------------------

myst_enable_extensions = [
    "amsmath",
    "dollarmath",
    "colon_fence",
    "deflist",
]
myst_heading_anchors = 3

# -- Intersphinx (opt-in, needs network) -------------------------------------

if os.environ.get("OPTAX_ADAPTIVE_DOCS_INTERSPHINX") == "1":
  extensions.append("sphinx.ext.intersphinx")
  intersphinx_mapping = {
      "python": ("https://docs.python.org/3", None),
      "jax": ("https://docs.jax.dev/en/latest/", None),
      "optax": ("https://optax.readthedocs.io/en/latest/", None),
      "flax": ("https://flax.readthedocs.io/en/latest/", None),
  }

# -- HTML ----------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = "optax_adaptive"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": False,
}
html_static_path = []

# -- coverage_check (docs/_ext/coverage_check.py) ----------------------------

# Every name of ``optax_adaptive.__all__`` must be documented in the API
# reference; this one is metadata, not an API object.
coverage_check_module = "optax_adaptive"
coverage_check_exempt = ("__version__",)
