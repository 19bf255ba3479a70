"""Sphinx configuration of the documentation site (`make docs`).

Sources: the Markdown pages beside this file (MyST), the API pages in ``api/`` (reST with
autodoc: every public name's docstring, math included) and the notebooks of
``../notebooks`` (rendered by myst-nb as shipped, without executing them: ``make test``
executes them). The site must work offline, so MathJax is served from a local copy shipped by
the ``sphinx-mathjax-offline`` package, never from a CDN.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "ext"))

project = "optim & jaxdiff"
author = "optim-jaxdiff contributors"
copyright = "the optim-jaxdiff contributors"  # noqa: A001 - Sphinx's name

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx-mathjax-offline",  # copies MathJax 3.2.2 into _static/mathjax (no CDN)
  "myst_nb",
  "coverage_check",  # docs/ext: every public name has an API entry
]


# The public namespaces whose __all__ the API pages must cover: the MODULES of
# tests/test_api.py (read from its source: the docs build does not import the tests), and
# every module reachable through them (docs/ext/coverage_check.py).
def _test_api_modules() -> list[str]:
  tree = ast.parse((ROOT / "tests" / "test_api.py").read_text())
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(
      getattr(t, "id", "") == "MODULES" for t in node.targets
    ):
      return list(ast.literal_eval(node.value))
  raise RuntimeError("tests/test_api.py defines no MODULES")


API_MODULES = _test_api_modules()
coverage_modules = API_MODULES

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "ext", "Thumbs.db", ".DS_Store"]

# MyST: GitHub-style heading anchors, so the links written for the repository view
# (page.md#a-heading) resolve on the site too; $...$ math in the notebooks' Markdown.
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath", "amsmath"]

# Notebooks are rendered as shipped (no outputs). DOCS_EXECUTE_NOTEBOOKS=1 runs them at the
# tests' small size first, for a site with their figures (minutes on 2 cores).
EXECUTE = os.environ.get("DOCS_EXECUTE_NOTEBOOKS") == "1"
nb_execution_mode = "force" if EXECUTE else "off"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
if EXECUTE:
  os.environ.setdefault("JAXDIFF_NOTEBOOK_SMALL", "1")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

# autodoc: signatures as written, type hints in the description, Google-style sections.
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the docstrings say what each argument is
autodoc_preserve_defaults = True
autodoc_default_options = {"exclude-members": "__init__, __new__"}
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False

# Offline math: MathJax 3 from the sphinx-mathjax-offline package, copied into _static.
mathjax_path = "mathjax/tex-chtml.js"
# textmacros: \_ and friends inside \text{...} (the docstrings write \text{wd\_ratio}).
mathjax3_config = {
  "loader": {"load": ["[tex]/textmacros"]},
  "tex": {"packages": {"[+]": ["textmacros"]}},
}

html_theme = "sphinx_book_theme"
html_title = "optim & jaxdiff"
html_theme_options = {
  "show_toc_level": 2,
  "home_page_in_toc": True,
  "use_download_button": False,
  "use_fullscreen_button": False,
}
html_static_path: list[str] = []
html_last_updated_fmt = None
html_show_sourcelink = False


def _copy_notebooks(app):
  """The notebooks live in ../notebooks (Colab opens them there); the site reads a copy in
  docs/notebooks (gitignored), rewritten only when the source changed. When executing, the
  Colab install cell is tagged skip-execution: the package is already importable here."""
  out = DOCS / "notebooks"
  out.mkdir(exist_ok=True)
  for src in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
    nb = json.loads(src.read_text())
    for cell in nb["cells"]:
      if cell["cell_type"] == "code" and "%pip" in "".join(cell["source"]):
        cell.setdefault("metadata", {}).setdefault("tags", []).append("skip-execution")
    text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    dst = out / src.name
    if not dst.exists() or dst.read_text() != text:
      dst.write_text(text)


_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Attributes):\s*$")


def _join_wrapped_names(app, what, name, obj, options, lines):
  """An Args entry may name several parameters and wrap the name list onto the next line
  (``b1, b2, eps,`` / ``  mu_dtype: see ...``); napoleon reads one line per name list, so
  join them before it runs."""
  i, section = 0, None
  while i < len(lines):
    line = lines[i]
    match = _SECTION.match(line)
    if match:
      section = len(match.group(1)) + 2
    elif section is not None and line.strip() and len(line) - len(line.lstrip()) < section:
      section = None
    if (
      section is not None
      and len(line) - len(line.lstrip()) == section
      and line.rstrip().endswith(",")
      and ":" not in line
      and i + 1 < len(lines)
      and len(lines[i + 1]) - len(lines[i + 1].lstrip()) > section
    ):
      lines[i : i + 2] = [line.rstrip() + " " + lines[i + 1].strip()]
      continue
    i += 1


def setup(app):
  app.connect("builder-inited", _copy_notebooks)
  app.connect("autodoc-process-docstring", _join_wrapped_names, priority=100)  # before napoleon
