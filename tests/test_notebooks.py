"""The Colab notebooks: each is a jupytext pair whose two sides agree (``NAME.ipynb``, what
Colab opens, shipped without outputs; ``NAME.py``, percent format, what reviews read;
``make notebooks`` re-syncs a pair after an edit to either side), and its first code cell
installs the package from the repository.

The ``integration`` tier runs each ``.ipynb`` as a Colab user does, cell by cell in IPython
(magics included), in a fresh virtual environment: the first cell's ``%pip install`` runs
as written, with only the repository URL replaced by this checkout, so the cell a user runs
is the cell CI runs; the notebook then runs at small size on what that cell installed."""

import json
import os
import pathlib
import re
import subprocess
import sys

import jupytext
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
# The install cell: the repository URL as a constant (what the test replaces), then the
# install of the package with its demo extra from that URL.
REPO_LINE = re.compile(r'^REPO = "(git\+https://github\.com/[\w.-]+/[\w.-]+)"$', re.M)
INSTALL_LINE = '%pip install -q "optim-jaxdiff[demo] @ {REPO}"'


def test_the_three_notebooks_exist():
  names = [p.stem for p in NOTEBOOKS]
  assert names == ["01_optimizers", "02_guided_sampling", "03_curvature"]


def _cells(nb):
  return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_ipynb_and_py_sides_are_in_sync(path):
  ipynb = path.with_suffix(".ipynb")
  assert ipynb.is_file(), f"{ipynb.name} missing: run `make notebooks`"
  py_side, nb_side = jupytext.read(path), jupytext.read(ipynb)
  assert _cells(nb_side) == _cells(py_side), f"{path.stem}: sides differ; run `make notebooks`"
  for nb in (py_side, nb_side):
    assert nb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
  # Shipped clean: no outputs or execution counts in the repository.
  raw = nbformat.read(ipynb, as_version=4)
  for cell in raw.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, f"{ipynb.name} has outputs"


def _install_cell(nb) -> str:
  return next(c for c in nb.cells if c.cell_type == "code").source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_pairs_with_jupytext_and_first_code_cell_installs(path):
  nb = jupytext.read(path)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert nb.cells[0].cell_type == "markdown"
  # jupytext turns the commented magic back into a real one in the .ipynb
  cell = _install_cell(nbformat.read(path.with_suffix(".ipynb"), as_version=4))
  assert len(REPO_LINE.findall(cell)) == 1, cell
  assert INSTALL_LINE in cell.splitlines(), cell
  assert "@v" in cell and "commit" in cell, "the cell says how to pin a tag or a commit"
  assert "%pip" not in "".join(c.source for c in code[1:])


# --- integration: the notebooks as a Colab user runs them ----------------------------

# Runs a notebook's code cells in order in one IPython shell (as a Colab kernel does, magics
# included) and stops at the first cell that raises or whose shell command fails.
_RUN_CELLS = """
import json, sys
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
cells = [c for c in json.load(open(sys.argv[1]))["cells"] if c["cell_type"] == "code"]
for i, cell in enumerate(cells):
  shell.user_ns["_exit_code"] = 0
  shell.run_cell("".join(cell["source"])).raise_error()
  if shell.user_ns["_exit_code"]:
    sys.exit(f"code cell {i}: a shell command exited with {shell.user_ns['_exit_code']}")
print("WHERE", json.dumps({m: sys.modules[m].__file__ for m in ("optim", "jaxdiff")}))
"""


def _run(argv, **kw):
  proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, **kw)
  assert proc.returncode == 0, f"{argv}:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
  return proc.stdout


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
  """A fresh virtual environment with only what a Colab runtime brings that the notebooks
  rely on (IPython), at this environment's versions; the notebooks install the rest."""
  from tests.test_packaging import pinned_constraints

  root = tmp_path_factory.mktemp("colab")
  _run([sys.executable, "-m", "venv", str(root / "venv")])
  python = root / "venv" / "bin" / "python"
  constraints = pinned_constraints(root / "constraints.txt")
  _run([python, "-m", "pip", "install", "--quiet", "-c", constraints, "ipython"])
  # pip inside the notebook's %pip gets the same pins, through its environment.
  return python, constraints


@pytest.mark.integration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_as_a_colab_user_runs_it(path, colab, tmp_path):
  python, constraints = colab
  nb = json.loads(path.with_suffix(".ipynb").read_text())
  install = next(c for c in nb["cells"] if c["cell_type"] == "code")
  source = "".join(install["source"])
  (url,) = REPO_LINE.findall(source)
  # The one change: the repository URL becomes this checkout (the URL cannot be reached here).
  install["source"] = source.replace(url, ROOT.as_uri())
  notebook = tmp_path / path.with_suffix(".ipynb").name
  notebook.write_text(json.dumps(nb))
  env = {
    **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    "PIP_CONSTRAINT": str(constraints),
    "JAXDIFF_NOTEBOOK_SMALL": "1",
    "JAXDIFF_CACHE_DIR": str(tmp_path / "cache"),
    "MPLBACKEND": "Agg",
    "JAX_PLATFORMS": "cpu",
    # At small size compilation is all the work: XLA's cheapest CPU optimisation level.
    "XLA_FLAGS": "--xla_backend_optimization_level=0",
  }
  out = _run([python, "-c", _RUN_CELLS, notebook], cwd=tmp_path, env=env)
  # The notebook imported what its first cell installed, not this checkout.
  where = json.loads(out.split("WHERE ", 1)[1].splitlines()[0])
  venv = python.parent.parent
  assert all(pathlib.Path(f).is_relative_to(venv) for f in where.values()), where
