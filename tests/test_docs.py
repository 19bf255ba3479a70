"""The documentation: its links stay inside the repository and resolve, its code runs, the
README's method index matches the method pages, and every public name has an API entry
(the page sources here, fast; the built Sphinx site in the ``integration`` tier)."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import pathlib
import re
import subprocess
import sys

import pytest

from tests.test_api import MODULES

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GENERATED = ("_build", "notebooks")  # docs/_build (the site), docs/notebooks (copies)


def _pages() -> list[pathlib.Path]:
  pages = [ROOT / "README.md", ROOT / "bench" / "README.md"]
  for path in sorted(DOCS.rglob("*.md")):
    if path.relative_to(DOCS).parts[0] not in GENERATED:
      pages.append(path)
  return pages


PAGES = _pages()
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def _prose(text: str) -> str:
  """The page without its fenced code blocks (code is not linked)."""
  return _FENCE.sub("", text)


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading (MyST's myst_heading_anchors makes the same)."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: pathlib.Path) -> set[str]:
  return {_slug(h) for h in re.findall(r"^#+ (.*)$", _prose(path.read_text()), re.M)}


def _links(path: pathlib.Path) -> list[str]:
  return re.findall(r"\]\(([^)\s]+)\)", _prose(path.read_text()))


def _name(path: pathlib.Path) -> str:
  return str(path.relative_to(ROOT))


def test_pages_found():
  names = {_name(p) for p in PAGES}
  assert {"README.md", "bench/README.md", "docs/index.md", "docs/design.md"} <= names
  assert any(n.startswith("docs/methods/") for n in names)
  assert any(n.startswith("docs/studies/") for n in names)


@pytest.mark.parametrize("path", PAGES, ids=_name)
def test_no_links_outside_the_repository(path):
  text = path.read_text()
  assert not re.search(r"https?://", text), f"{_name(path)}: a URL outside the repository"
  for link in _links(path):
    assert not re.match(r"[A-Za-z][\w+.-]*:", link), f"{_name(path)}: link outside: {link}"


@pytest.mark.parametrize("path", PAGES, ids=_name)
def test_relative_links_resolve(path):
  bad = []
  for link in _links(path):
    file, _, anchor = link.partition("#")
    target = (path.parent / file).resolve() if file else path
    if not target.is_relative_to(ROOT):
      bad.append(f"{link} (leaves the repository)")
    elif not target.exists():
      bad.append(f"{link} (no such file)")
    elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
      bad.append(f"{link} (no heading #{anchor})")
  assert not bad, f"{_name(path)}: " + "; ".join(bad)


def _python_blocks(text: str) -> list[str]:
  return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


DOC_CODE = [p for p in PAGES if p.name != "README.md" and _python_blocks(p.read_text())]


def test_doc_code_found():
  assert DOC_CODE, "no ```python block in docs/ (the inverse-problems study has one)"


@pytest.mark.parametrize("path", DOC_CODE, ids=_name)
def test_doc_python_blocks_execute(path):
  # Each page's blocks run in order in one namespace, as a reader would paste them
  # (the README's are run by tests/test_readme.py).
  namespace: dict = {"__name__": "__docs__"}
  for i, block in enumerate(_python_blocks(path.read_text())):
    with contextlib.redirect_stdout(io.StringIO()):
      exec(compile(block, f"{_name(path)} block {i}", "exec"), namespace)  # noqa: S102


# ---------------------------------------------------------------------------------------
# The README's method index and the method pages.

METHODS = DOCS / "methods"
_NOT_METHODS = {"Speed figures", "Char-level transformer"}  # extra sections of a page


def _method_sections() -> set[str]:
  found = set()
  for page in sorted(METHODS.glob("*.md")):
    if page.name == "index.md":
      continue
    for head in re.findall(r"^## (.*)$", page.read_text(), re.M):
      if head not in _NOT_METHODS:
        found.add(f"docs/methods/{page.name}#{_slug(head)}")
  return found


def test_readme_indexes_every_method_section_once():
  rows = [r for r in (ROOT / "README.md").read_text().splitlines() if r.startswith("| [")]
  targets = [re.match(r"\| \[[^]]*\]\(([^)]+)\)", r).group(1) for r in rows]
  assert len(targets) == len(set(targets)), "a method is indexed twice"
  assert set(targets) == _method_sections(), "README index and docs/methods/ sections differ"


def test_every_method_section_says_how_to_reproduce_it():
  for page in sorted(METHODS.glob("*.md")):
    if page.name == "index.md":
      continue
    parts = re.split(r"^## ", page.read_text(), flags=re.M)[1:]
    for part in parts:
      head = part.splitlines()[0]
      if head in _NOT_METHODS:
        continue
      for field in ("**Public name**", "**Status**", "**Measured**", "**Reproduce**"):
        assert field in part, f"{page.name} #{head}: no {field}"


# ---------------------------------------------------------------------------------------
# Every public name has an API entry.

API = DOCS / "api"
_MODULE_DIRECTIVE = re.compile(
  r"^\.\. (?:currentmodule|py:currentmodule|module|py:module)::\s*(\S+)"
)
_AUTOMODULE = re.compile(r"^\.\. automodule::\s*(\S+)")
_ENTRY = re.compile(
  r"^\.\. (?:auto(?:function|class|data|attribute|exception)|"
  r"py:(?:function|class|data|attribute|exception))::\s*([\w.]+)"
)


def public_modules(modules) -> list[str]:
  """The given modules and every module of ours reachable through their ``__all__``."""
  found = list(modules)
  for modname in found:  # grows while it is walked
    for name in importlib.import_module(modname).__all__:
      obj = getattr(importlib.import_module(modname), name)
      if inspect.ismodule(obj) and obj.__name__.split(".")[0] in ("optim", "jaxdiff"):
        if obj.__name__ not in found:
          found.append(obj.__name__)
  return found


def public_names() -> set[str]:
  return {
    f"{modname}.{name}"
    for modname in public_modules(MODULES)
    for name in importlib.import_module(modname).__all__
  }


def api_entries(pages) -> set[str]:
  """The full names the API page sources document (entries with :no-index: excluded)."""
  names = set()
  for page in pages:
    current = None
    lines = page.read_text().splitlines()
    for i, line in enumerate(lines):
      if m := _AUTOMODULE.match(line):
        names.add(m.group(1))
        current = m.group(1)
      elif m := _MODULE_DIRECTIVE.match(line):
        current = m.group(1)
        if "module::" in line and "currentmodule" not in line:
          names.add(current)
      elif m := _ENTRY.match(line):
        options = []
        for follow in lines[i + 1 :]:
          if not follow.startswith("   :"):
            break
          options.append(follow.strip())
        if ":no-index:" in options or ":noindex:" in options:
          continue
        name = m.group(1)
        names.add(name if "." in name or current is None else f"{current}.{name}")
  return names


def test_api_pages_list_every_public_name():
  missing = sorted(public_names() - api_entries(sorted(API.glob("*.rst"))))
  assert not missing, "public names without an entry in docs/api/*.rst: " + ", ".join(missing)


def test_api_page_entries_are_public():
  # The other direction: an entry for a name that left __all__ is stale.
  public = public_names() | set(public_modules(MODULES))
  entries = api_entries(sorted(API.glob("*.rst")))
  stale = sorted(e for e in entries if e not in public and e.rsplit(".", 1)[0] in MODULES)
  assert not stale, "docs/api entries not in any __all__: " + ", ".join(stale)


def test_every_public_module_has_an_api_page_in_the_toctree():
  index = (API / "index.md").read_text()
  for modname in public_modules(MODULES):
    assert (API / f"{modname}.rst").is_file(), f"docs/api/{modname}.rst missing"
    root = modname.split(".")[0]
    assert f"\n{root}.*\n" in index or f"\n{modname}\n" in index, f"{modname} not in the toctree"


@pytest.mark.integration
def test_built_site_documents_every_public_name(tmp_path):
  # The built documentation, as Sphinx records it (after optax's docs/ext/coverage_check.py):
  # reads every page with autodoc, writes no HTML.
  pytest.importorskip("sphinx", reason="needs the docs extra: pip install -e '.[docs]'")
  pytest.importorskip("myst_nb", reason="needs the docs extra: pip install -e '.[docs]'")
  out = tmp_path / "coverage"
  proc = subprocess.run(
    [sys.executable, "-m", "sphinx", "-b", "coverage_check", "-W", "--keep-going", "-q"]
    + ["-d", str(tmp_path / "doctrees"), str(DOCS), str(out)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=900,
  )
  report = out / "coverage.json"
  assert report.is_file(), proc.stderr[-3000:]
  documented = set(json.loads(report.read_text())["documented"])
  missing = sorted(public_names() - documented)
  assert not missing, "public names the built site does not document: " + ", ".join(missing)
  assert proc.returncode == 0, proc.stderr[-3000:]
