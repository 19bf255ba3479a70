"""The Colab notebooks (jupytext percent scripts) run end to end at small size, and their
first code cell installs the package."""

import os
import pathlib
import subprocess
import sys

import jupytext
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.py"))


def test_the_three_notebooks_exist():
  names = [p.stem for p in NOTEBOOKS]
  assert names == ["01_optimizers", "02_guided_sampling", "03_curvature"]


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
