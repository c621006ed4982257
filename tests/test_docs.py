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
"""Tests of the documentation in ``docs/`` and ``README.md``.

(a) Every fenced ``python`` block of every markdown page runs: a page's
    blocks in order, in one namespace, in a fresh temporary working
    directory. A block opts out only with a marker on the line just above
    its fence, ``<!-- skip-test: <reason> -->``; the reason is reported as a
    pytest skip (``pytest -rs`` prints it) and an empty reason fails.
    A block whose first line starts with ``>>>`` runs as a doctest.
    Pages in ``SLOW_PAGES`` (compile-heavy) run with the slow tests.
    A fenced ``text`` block is the printed output of the python block
    before it (no other fenced block between them) and must match what
    that block prints: numbers written with a decimal point or an exponent
    to within ``OUTPUT_RTOL`` or one unit of their last digit, whichever is
    larger, everything else exactly (docs/README.md states the rule for
    authors). ``OPTAX_ADAPTIVE_UPDATE_DOC_OUTPUTS=1`` rewrites the output
    blocks that do not match with what the blocks printed.
(b) Every public name of ``optax_adaptive.__all__`` has an API entry in
    ``docs/api/*.rst``, and every entry there is public.
(c) The Sphinx build with warnings as errors succeeds (slow), and every
    script in ``docs/examples/`` runs (slow; skipped for a script that
    another test file already runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import doctest
import importlib.util
import inspect
import io
import os
import pathlib
import re
import runpy
import subprocess
import sys
import time

import jax
import optax
import pytest

import optax_adaptive

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import coverage_check  # noqa: E402  (docs/_ext, put on the path above)
import namedtuple_fields  # noqa: E402
import optional_pages  # noqa: E402
import short_typehints  # noqa: E402

PYTHON_LANGS = frozenset({"python", "py", "python3"})
OUTPUT_LANG = "text"  # a ```text block shows the output of the block above
SKIP_MARKER = re.compile(r"^\s*<!--\s*skip-test:(.*?)-->\s*$")
FENCE_OPEN = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*"
                        r"(?P<info>.*)$")
# MyST directives whose body is not markdown (code, math, raw text, tables).
NON_MARKDOWN_DIRECTIVES = frozenset({
    "code-block", "code", "sourcecode", "code-cell", "literalinclude",
    "math", "eval-rst", "toctree", "raw", "csv-table", "mermaid",
    "graphviz", "include", "image", "figure",
})
# Directories under docs/ whose markdown is not a docs page.
EXCLUDED_DIRS = frozenset({"_build", "generated", ".pytest_cache"})


# ------------------------------------------------------------------ parsing


@dataclasses.dataclass(frozen=True)
class CodeBlock:
  path: pathlib.Path
  line: int  # 1-based line of the first code line in the markdown file
  code: str
  skip_reason: str | None  # None: run it; a string: the marker's reason
  output: str | None = None  # the ```text block shown after it, if any
  output_line: int | None = None  # 1-based line of its first output line

  @property
  def where(self) -> str:
    return f"{_rel(self.path)}:{self.line}"


def _rel(path: pathlib.Path) -> str:
  try:
    return str(path.relative_to(ROOT))
  except ValueError:
    return str(path)


def _language(info: str) -> str:
  """``python`` for the info strings ``python``, ``{code-block} python`` ..."""
  words = info.strip().split()
  if not words:
    return ""
  if words[0] in ("{code-block}", "{code}", "{sourcecode}"):
    return words[1].lower() if len(words) > 1 else ""
  return words[0].lower()


def _strip_directive_options(lines: list[str]) -> tuple[list[str], int]:
  """Drops MyST ``:option: value`` lines that open a directive body."""
  dropped = 0
  while dropped < len(lines) and re.match(r"^\s*:[\w-]+:", lines[dropped]):
    dropped += 1
  if dropped and dropped < len(lines) and not lines[dropped].strip():
    dropped += 1
  return lines[dropped:], dropped


def parse_blocks(text: str, path: pathlib.Path,
                 first_line: int = 1) -> list[CodeBlock]:
  """The python blocks of a markdown text, in order, with their outputs.

  Fences follow CommonMark: a block closes at a fence of the same character
  at least as long as the opening one, so ``python`` fences shown inside a
  longer (e.g. ````markdown) fence are not code of the page. The body of a
  MyST directive whose content is markdown (````{note}``, ``{dropdown}``
  ...) is searched too. ``first_line`` is the file line of ``text``'s first.
  A ``text`` fence that follows a python block, with no other fence in
  between, is that block's ``output``.
  """
  return _parse(text, path, first_line)[0]


def orphan_outputs(text: str) -> list[int]:
  """File lines of ``text`` fences that follow no python block."""
  return _parse(text, pathlib.Path("page.md"))[1]


def _parse(text: str, path: pathlib.Path,
           first_line: int = 1) -> tuple[list[CodeBlock], list[int]]:
  """``parse_blocks`` and ``orphan_outputs`` in one pass."""
  lines = text.splitlines()
  blocks, orphans = [], []
  owner = None  # index in `blocks` of a python block awaiting its output
  i = 0
  while i < len(lines):
    match = FENCE_OPEN.match(lines[i])
    if not match:
      i += 1
      continue
    fence, indent = match.group("fence"), len(match.group("indent"))
    info = match.group("info")
    if fence[0] == "`" and "`" in info:
      i += 1  # not a fence: inline code with backticks
      continue
    start = i + 1
    end = start
    close = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
    while end < len(lines) and not close.match(lines[end]):
      end += 1
    body = [_dedent_line(line, indent) for line in lines[start:end]]
    language = _language(info)
    if language in PYTHON_LANGS:
      dropped = 0
      if info.strip().startswith("{"):
        body, dropped = _strip_directive_options(body)
      blocks.append(CodeBlock(path=path, line=first_line + start + dropped,
                              code="\n".join(body) + "\n",
                              skip_reason=_skip_reason(lines, i)))
      owner = len(blocks) - 1
      i = end + 1
      continue
    if language == OUTPUT_LANG and owner is not None:
      blocks[owner] = dataclasses.replace(
          blocks[owner], output="\n".join(body) + "\n",
          output_line=first_line + start)
    elif language == OUTPUT_LANG:
      orphans.append(first_line + i)
    elif _is_markdown_directive(info):
      nested, nested_orphans = _parse("\n".join(body), path,
                                      first_line + start)
      blocks += nested
      orphans += nested_orphans
    owner = None
    i = end + 1
  return blocks, orphans


def _is_markdown_directive(info: str) -> bool:
  match = re.match(r"^\{([\w-]+)\}", info.strip())
  return bool(match) and match.group(1) not in NON_MARKDOWN_DIRECTIVES


def _dedent_line(line: str, indent: int) -> str:
  spaces = len(line) - len(line.lstrip(" "))
  return line[min(indent, spaces):]


def _skip_reason(lines: list[str], fence_index: int) -> str | None:
  j = fence_index - 1
  while j >= 0 and not lines[j].strip():
    j -= 1
  if j >= 0 and (match := SKIP_MARKER.match(lines[j])):
    return match.group(1).strip()
  return None


def markdown_pages() -> list[pathlib.Path]:
  pages = [path for path in sorted(DOCS.rglob("*.md"))
           if not EXCLUDED_DIRS.intersection(path.relative_to(DOCS).parts)]
  readme = ROOT / "README.md"
  if readme.exists():
    pages.insert(0, readme)
  return pages


def _blocks_of(path: pathlib.Path) -> list[CodeBlock]:
  return parse_blocks(path.read_text(encoding="utf-8"), path)


PAGES = [page for page in markdown_pages() if _blocks_of(page)]
# Pages whose blocks compile for half a minute (AdaS's EVBMF loops) run with
# the slow tests, which CI runs too, to keep the default suite near 10 min.
SLOW_PAGES = {"docs/adas.md"}
SKIPPED = [block for page in PAGES for block in _blocks_of(page)
           if block.skip_reason is not None]


# ---------------------------------------------------------------- running


def run_block(block: CodeBlock, namespace: dict) -> str:
  """Runs one block in ``namespace`` and returns what it printed.

  Errors point at the markdown line. The printed text is echoed to the real
  stdout too (``pytest -s`` shows it). A doctest block compares its own
  output and returns "".
  """
  if block.code.lstrip().startswith(">>>"):
    test = doctest.DocTestParser().get_doctest(
        block.code, namespace, block.where, str(block.path), block.line - 1)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, clear_globs=False)
    if runner.failures:
      raise AssertionError(f"{runner.failures} doctest example(s) failed in "
                           f"{block.where} (output above)")
    return ""
  # Leading newlines make tracebacks report the line of the markdown file.
  source = "\n" * (block.line - 1) + block.code
  printed = io.StringIO()
  try:
    with contextlib.redirect_stdout(printed):
      exec(compile(source, str(block.path), "exec"), namespace)
  finally:
    sys.stdout.write(printed.getvalue())
  return printed.getvalue()


# Printed numbers may differ across CPUs and jax versions in their last
# digits; docs/README.md states this tolerance for authors.
OUTPUT_RTOL = 1e-3
_NUMBER = re.compile(
    r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w]|\.\d)")


def _last_digit_unit(number: str) -> float:
  """10**k of the last digit written: 1e-4 for 0.0060, 1e-8 for 9.5e-07."""
  mantissa, _, exponent = number.lower().partition("e")
  decimals = len(mantissa.partition(".")[2])
  return 10.0 ** (int(exponent or 0) - decimals)


def _line_matches(expected: str, actual: str) -> bool:
  e_numbers, a_numbers = _NUMBER.findall(expected), _NUMBER.findall(actual)
  if (_NUMBER.split(expected) != _NUMBER.split(actual)
      or len(e_numbers) != len(a_numbers)):
    return False
  for e, a in zip(e_numbers, a_numbers):
    if not re.search(r"[.eE]", e):  # an integer: exactly
      if e != a:
        return False
    elif abs(float(a) - float(e)) > max(OUTPUT_RTOL * abs(float(e)),
                                        _last_digit_unit(e)):
      return False
  return True


def _output_lines(text: str) -> list[str]:
  return [line.rstrip() for line in text.strip("\n").splitlines()]


def output_mismatch(expected: str, actual: str) -> str | None:
  """None if ``actual`` matches the shown ``expected``, else the first
  differing line. Trailing spaces and surrounding blank lines are ignored."""
  e_lines, a_lines = _output_lines(expected), _output_lines(actual)
  for number, (e, a) in enumerate(zip(e_lines, a_lines), start=1):
    if not _line_matches(e, a):
      return f"line {number}: shown {e!r}, printed {a!r}"
  if len(e_lines) != len(a_lines):
    return (f"the page shows {len(e_lines)} line(s), the block printed "
            f"{len(a_lines)}")
  return None


def rewrite_outputs(path: pathlib.Path,
                    outputs: list[tuple[CodeBlock, str]]) -> None:
  """Replaces the output blocks of ``path`` with what their blocks printed.

  The output fence keeps its indentation (e.g. inside a list item)."""
  lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
  for block, printed in sorted(outputs, key=lambda o: -o[0].output_line):
    start = block.output_line - 1
    shown = len(block.output.splitlines())
    fence = lines[start - 1]
    indent = fence[:len(fence) - len(fence.lstrip(" "))]
    lines[start:start + shown] = [
        f"{indent}{line}\n" if line else "\n"
        for line in _output_lines(printed)]
  path.write_text("".join(lines), encoding="utf-8")


@pytest.fixture
def page_sandbox(tmp_path, monkeypatch):
  """A temporary cwd and non-interactive plots; restores jax's x64 flag."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("MPLBACKEND", "Agg")
  x64 = jax.config.jax_enable_x64
  yield tmp_path
  jax.config.update("jax_enable_x64", x64)
  if "matplotlib.pyplot" in sys.modules:
    sys.modules["matplotlib.pyplot"].close("all")


@pytest.mark.parametrize("page", [
    pytest.param(p, marks=pytest.mark.slow) if _rel(p) in SLOW_PAGES else p
    for p in PAGES], ids=[_rel(p) for p in PAGES])
def test_page_code_blocks_run(page, page_sandbox):
  del page_sandbox
  namespace = {"__name__": "__main__", "__file__": str(page)}
  ran = 0
  mismatches, stale = [], []
  for block in _blocks_of(page):
    if block.skip_reason is not None:
      assert block.output is None, (
          f"{block.where}: the output shown under a skipped block cannot be "
          "checked; show it in a block that runs, or drop it")
      continue  # reported by test_skipped_block_has_reason
    start = time.perf_counter()
    try:
      printed = run_block(block, namespace)
    except Exception as e:
      raise AssertionError(
          f"python block at {block.where} failed: {type(e).__name__}: {e}"
      ) from e
    ran += 1
    print(f"{block.where}: ran in {time.perf_counter() - start:.1f} s")
    if block.output is not None and (
        problem := output_mismatch(block.output, printed)):
      mismatches.append(
          f"{block.where}: the output shown at {_rel(page)}:"
          f"{block.output_line} differs ({problem}); it printed:\n{printed}")
      stale.append((block, printed))
  if stale and os.environ.get("OPTAX_ADAPTIVE_UPDATE_DOC_OUTPUTS") == "1":
    rewrite_outputs(page, stale)
    print(f"rewrote {len(stale)} output block(s) of {_rel(page)}")
  else:
    assert not mismatches, "\n".join(mismatches)
  if not ran:
    pytest.skip(f"every python block of {_rel(page)} has a skip-test marker")


def test_every_output_block_follows_a_python_block():
  orphans = [f"{_rel(page)}:{line}" for page in markdown_pages()
             for line in orphan_outputs(page.read_text(encoding="utf-8"))]
  assert not orphans, (
      f"```{OUTPUT_LANG} blocks that follow no python block: {orphans}; "
      f"```{OUTPUT_LANG} is reserved for the output of the python block above "
      "it (no other fence in between)")


@pytest.mark.parametrize("block", SKIPPED, ids=[b.where for b in SKIPPED])
def test_skipped_block_has_reason(block):
  assert block.skip_reason, (
      f"{block.where}: a skip-test marker needs a reason: "
      "<!-- skip-test: why this block cannot run in the tests -->")
  pytest.skip(f"{block.where} not executed: {block.skip_reason}")


# ------------------------------------------------------- parser self-tests


def test_parse_blocks_order_lines_markers_and_nesting():
  text = "\n".join([
      "# Title",                       # 1
      "```python",                     # 2
      "a = 1",                         # 3
      "```",                           # 4
      "<!-- skip-test: needs a TPU -->",  # 5
      "",                              # 6
      "```py",                         # 7
      "b = 2",                         # 8
      "```",                           # 9
      "````markdown",                  # 10
      "```python",                     # 11
      "not_code = 1",                  # 12
      "```",                           # 13
      "````",                          # 14
      "```bash",                       # 15
      "ls",                            # 16
      "```",                           # 17
      "- item",                        # 18
      "  ```python",                   # 19
      "  c = a + 1",                   # 20
      "    d = 0",                     # 21
      "  ```",                         # 22
      "```{code-block} python",        # 23
      ":caption: x",                   # 24
      "",                              # 25
      "e = 3",                         # 26
      "```",                           # 27
      "````{note}",                    # 28
      "A note with code:",             # 29
      "```python",                     # 30
      "f = 4",                         # 31
      "```",                           # 32
      "````",                          # 33
      "```{math}",                     # 34
      "```python",                     # 35 (not a fence inside math)
      "```",                           # 36
  ])
  blocks = parse_blocks(text, pathlib.Path("page.md"))
  assert [(b.line, b.code, b.skip_reason) for b in blocks] == [
      (3, "a = 1\n", None),
      (8, "b = 2\n", "needs a TPU"),
      (20, "c = a + 1\n  d = 0\n", None),
      (26, "e = 3\n", None),
      (31, "f = 4\n", None),
  ]


def test_parse_output_blocks():
  text = "\n".join([
      "```python",        # 1
      "print(1)",         # 2
      "```",              # 3
      "It prints:",       # 4
      "```text",          # 5
      "1",                # 6
      "```",              # 7
      "```text",          # 8  orphan: the block above already has one
      "2",                # 9
      "```",              # 10
      "```python",        # 11
      "x = 1",            # 12
      "```",              # 13
      "```bash",          # 14
      "ls",               # 15
      "```",              # 16
      "```text",          # 17 orphan: a bash block is in between
      "3",                # 18
      "```",              # 19
  ])
  blocks = parse_blocks(text, pathlib.Path("page.md"))
  assert [(b.line, b.output, b.output_line) for b in blocks] == [
      (2, "1\n", 6), (12, None, None)]
  assert orphan_outputs(text) == [8, 17]


@pytest.mark.parametrize("shown, printed, matches", [
    ("loss 0.1287", "loss 0.1288", True),  # one unit of the last digit
    ("loss 0.1287", "loss 0.1290", False),
    ("lr 0.510, error 9.5e-07", "lr 0.512, error 8.9e-07", False),
    ("error 9.5e-07", "error 9.6e-07", True),
    ("big 1234.5", "big 1235.6", True),  # 1e-3 relative
    ("big 1234.5", "big 1236.0", False),
    ("epoch 20", "epoch 21", False),  # integers exactly
    ("('Conv_0', 'b[1]')", "('Conv_0', 'b[2]')", False),
    ("(4,)", "(4,)  ", True),  # trailing spaces are ignored
    ("True", "False", False),
    ("a 1.0\nb 2.0", "a 1.0", False),  # line count
    ("x 1.5.", "x 1.5.", True),
])
def test_output_comparison(shown, printed, matches):
  assert (output_mismatch(shown, printed) is None) == matches


def test_rewrite_outputs(tmp_path):
  page = tmp_path / "page.md"
  page.write_text("```python\nprint('a  ')\nprint(2)\n```\n\n"
                  "- item\n  ```text\n  old\n  ```\nend\n")
  (block,) = parse_blocks(page.read_text(), page)
  rewrite_outputs(page, [(block, run_block(block, {}))])
  assert page.read_text().endswith("  ```text\n  a\n  2\n  ```\nend\n")
  (block,) = parse_blocks(page.read_text(), page)
  assert block.output == "a\n2\n"


def test_run_block_shares_namespace_and_reports_markdown_line(tmp_path):
  page = tmp_path / "page.md"
  page.write_text("```python\nx = 2\n```\n\n```python\ny = x * 3\n"
                  "raise ValueError(y)\n```\n")
  first, second = parse_blocks(page.read_text(), page)
  namespace = {}
  run_block(first, namespace)
  with pytest.raises(ValueError, match="6") as info:
    run_block(second, namespace)
  assert info.traceback[-1].lineno + 1 == 7  # 0-based in pytest's traceback


def test_doctest_block_failure_is_reported(tmp_path):
  page = tmp_path / "page.md"
  page.write_text("```python\n>>> 1 + 1\n3\n```\n")
  (block,) = parse_blocks(page.read_text(), page)
  with pytest.raises(AssertionError, match="doctest"):
    run_block(block, {})


# ------------------------------------------------------ example scripts

EXAMPLES = sorted((DOCS / "examples").glob("*.py"))


def _other_test_running(example: pathlib.Path) -> str | None:
  """The test file, other than this one, that already runs ``example``."""
  needle = f"examples/{example.name}"
  for test_file in sorted(ROOT.glob("tests/test_*.py")):
    if test_file.name != pathlib.Path(__file__).name and (
        needle in test_file.read_text(encoding="utf-8")):
      return _rel(test_file)
  return None


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES,
                         ids=[p.name for p in EXAMPLES])
def test_example_script_runs(example, tmp_path):
  if runner := _other_test_running(example):
    pytest.skip(f"{_rel(example)} is run by {runner}")
  env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
  result = subprocess.run(
      [sys.executable, str(example)], cwd=tmp_path, env=env,
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, (
      f"{_rel(example)} failed:\n{result.stderr[-4000:]}")


# ------------------------------------------------------------ API coverage


def _conf_value(name: str):
  return runpy.run_path(str(DOCS / "conf.py"))[name]


def test_every_public_name_has_an_api_entry():
  public = set(coverage_check.public_names(
      "optax_adaptive", _conf_value("coverage_check_exempt")))
  documented = coverage_check.documented_in_sources(DOCS / "api")
  missing = sorted(public - documented)
  assert not missing, (
      f"public names without an API entry: {missing}; add each to an "
      "'.. autosummary::' block of docs/api/index.rst")
  stale = sorted(name for name in documented - public
                 if name.startswith("optax_adaptive."))
  assert not stale, f"API entries that are not in __all__: {stale}"


def test_every_field_of_a_public_namedtuple_is_described():
  """By a source comment (docs/_ext/namedtuple_fields.py) or in the class
  docstring's ``Attributes:`` section."""
  missing = []
  for name in optax_adaptive.__all__:
    cls = getattr(optax_adaptive, name)
    if not namedtuple_fields.is_namedtuple_class(cls):
      continue
    comments = namedtuple_fields.field_comments(cls)
    doc = inspect.getdoc(cls) or ""
    missing += [f"{name}.{field}" for field in cls._fields
                if field not in comments
                and not re.search(rf"^\s+{field}:", doc, re.MULTILINE)]
  assert not missing, f"fields without a description: {missing}"


def test_field_comments_above_and_beside_a_field():
  assert namedtuple_fields.field_comments(_CommentedState) == {
      "count": "shape=(), dtype=jnp.int32",
      "total": "a long description that goes on over two lines",
  }


class _CommentedState(tuple):  # the source that field_comments reads
  _fields = ("count", "total", "undescribed")
  count: jax.Array  # shape=(), dtype=jnp.int32
  # a long description that goes on
  # over two lines
  total: jax.Array
  undescribed: jax.Array


def test_documented_in_source_reads_autosummary_and_autodoc():
  text = "\n".join([
      ".. currentmodule:: pkg",
      "",
      ".. autosummary::",
      "   :toctree: generated/",
      "   :nosignatures:",
      "",
      "   alpha",
      "   ~pkg.Beta",
      "",
      "Text that ends the block: gamma",
      "",
      ".. autofunction:: delta",
      ".. autoclass:: other.Epsilon",
  ])
  assert coverage_check.documented_in_source(text) == {
      "pkg.alpha", "pkg.Beta", "pkg.delta", "pkg.other.Epsilon"}


def test_optional_pages_dropped_only_while_missing():
  text = ("# Home\n\ncprop\n\n```{toctree}\n:maxdepth: 2\n\ngetting_started"
          "\ncprop\nadas\nnot_optional\n```\n\nadas\n")
  new, dropped = optional_pages.drop_missing_entries(
      text, optional={"cprop", "adas"}, existing={"cprop", "getting_started"})
  assert dropped == ["adas"]
  assert new == text.replace("\nadas\nnot_optional", "\nnot_optional")


def test_optional_pages_are_in_the_index():
  index = (DOCS / "index.md").read_text(encoding="utf-8")
  optional = _conf_value("optional_pages")
  _, dropped = optional_pages.drop_missing_entries(
      index, optional=set(optional), existing=set())
  assert sorted(dropped) == sorted(optional), (
      "every page of conf.optional_pages must be listed in a toctree of "
      "docs/index.md")


def test_type_aliases_are_printed_by_name():
  split = short_typehints.split_aliases
  assert split(jax.typing.ArrayLike) == (["jax.typing.ArrayLike"], [])
  assert split(optax.ScalarOrSchedule) == (["optax.ScalarOrSchedule"], [])
  assert split(optax.Updates | None) == (["chex.ArrayTree"], [type(None)])
  assert split(jax.typing.ArrayLike | str) == (["jax.typing.ArrayLike"],
                                               [str])
  assert split(int | None) == ([], [int, type(None)])
  assert short_typehints.format_alias(int, config=None) is None


# ------------------------------------------------------------- Sphinx build

_SPHINX_PACKAGES = ("sphinx", "myst_parser", "sphinx_book_theme",
                    "sphinx_autodoc_typehints")


@pytest.mark.slow
def test_sphinx_build_without_warnings(tmp_path):
  missing = [name for name in _SPHINX_PACKAGES
             if importlib.util.find_spec(name) is None]
  if missing:
    pytest.skip(f"docs dependencies not installed ({', '.join(missing)}); "
                "pip install -e '.[docs]'")
  env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
  result = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q",
       "-b", "html", "-d", str(tmp_path / "doctrees"), str(DOCS),
       str(tmp_path / "html")],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
      check=False)
  assert result.returncode == 0, (
      f"sphinx -W failed:\n{result.stderr[-6000:]}\n{result.stdout[-2000:]}")
  assert (tmp_path / "html" / "index.html").exists()
  assert (tmp_path / "html" / "api" / "index.html").exists()
