"""The Colab notebooks run end to end at small size, their first code cell installs the
package, and each is a jupytext pair whose two sides agree: ``NAME.ipynb`` (what Colab
opens, shipped without outputs) and ``NAME.py`` (percent format, what reviews and CI read).
``make notebooks`` re-syncs a pair after an edit to either side."""

import os
import pathlib
import subprocess
import sys

import jupytext
import nbformat
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.py"))


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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_pairs_with_jupytext_and_first_code_cell_installs(path):
  nb = jupytext.read(path)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert nb.cells[0].cell_type == "markdown"
  # jupytext turns the commented magic back into a real one in the .ipynb
  lines = code[0].source.splitlines()
  assert any(line.startswith("%pip install") for line in lines), code[0].source
  assert "# %pip" not in "".join(c.source for c in code[1:])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_at_small_size(path, tmp_path):
  # A fresh interpreter per notebook, as a kernel would be. At small size compilation is
  # all the work, so XLA's cheapest CPU optimisation level keeps CI fast.
  env = {
    **os.environ,
    "JAXDIFF_NOTEBOOK_SMALL": "1",
    "JAXDIFF_CACHE_DIR": str(tmp_path / "cache"),
    "MPLBACKEND": "Agg",
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_backend_optimization_level=0",
  }
  proc = subprocess.run(
    [sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
