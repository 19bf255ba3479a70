"""Packaging: one version for both packages, a core import that pulls in nothing of the
``demo`` extra, a clear ImportError naming the extra where a call needs it, and (the
``integration`` tier) the built wheel and sdist: ``twine check``, then the wheel alone in a
fresh virtual environment runs the README's quick tour."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from packaging.version import Version

import jaxdiff
import optim
from jaxdiff import demo
from jaxdiff.demo import _figures
from jaxdiff.models import classifier_loss, load_digits, train
from optim import curvature
from optim._validation import import_extra

try:
  import tomllib
except ModuleNotFoundError:  # Python 3.10
  tomllib = pytest.importorskip("tomli")

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEMO_EXTRA = ("matplotlib", "tqdm", "sklearn")  # import names of the `demo` extra
INSTALL = "pip install 'optim-jaxdiff[demo]'"


def quick_tour(readme: str) -> str:
  """The README's quick tour: the first ```python block under the "## Quick tour" heading."""
  section = re.search(r"^## Quick tour\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
  assert section, 'README.md has no "## Quick tour" section'
  block = re.search(r"^```python\n(.*?)^```", section.group(1), re.M | re.S)
  assert block, 'README.md: no ```python block under "## Quick tour"'
  return block.group(1)


# The quick tour prints what its comment promises.
QUICK_TOUR_PRINTS = "(64, 2) 40"


def test_one_version_for_both_packages_from_one_file():
  from optim._version import __version__

  assert optim.__version__ == jaxdiff.__version__ == __version__
  Version(__version__)  # PEP 440, or InvalidVersion
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())
  assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
  assert project["tool"]["hatch"]["version"]["path"] == "optim/_version.py"


def test_changelog_has_the_unreleased_section_of_this_version():
  changelog = (ROOT / "CHANGELOG.md").read_text()
  release = Version(optim.__version__).base_version
  assert re.search(rf"^## {re.escape(release)} \(unreleased\)$", changelog, re.M), release
  for heading in ("### Added", "### Changed", "### Deprecated"):
    assert heading in changelog


def test_license_and_type_markers_ship():
  assert "Apache License" in (ROOT / "LICENSE").read_text().splitlines()[0]
  assert (ROOT / "optim" / "py.typed").is_file() and (ROOT / "jaxdiff" / "py.typed").is_file()


def test_the_demo_extra_is_not_a_core_dependency():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  core = " ".join(project["dependencies"])
  for dist in ("matplotlib", "tqdm", "scikit-learn"):
    assert dist not in core, dist
    assert any(r.startswith(dist) for r in project["optional-dependencies"]["demo"]), dist


def test_importing_the_packages_pulls_in_no_demo_extra():
  # A fresh interpreter: this one has matplotlib & co. loaded by other tests.
  code = textwrap.dedent(f"""
    import json, sys
    extra = {DEMO_EXTRA!r}
    loaded = lambda: sorted(m for m in extra if m in sys.modules)
    import optim, jaxdiff
    core = loaded()
    import jaxdiff.cli, jaxdiff.demo, jaxdiff.models, optim.curvature
    print(json.dumps({{"core": core, "all": loaded()}}))
  """)
  proc = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.splitlines()[-1]) == {"core": [], "all": []}


def _hide(monkeypatch, top: str) -> None:
  """``import top`` (and of any submodule) fails as if ``top`` were not installed."""
  for name in [m for m in sys.modules if m == top or m.startswith(top + ".")] + [top]:
    monkeypatch.setitem(sys.modules, name, None)


def _tiny_train():
  net = nnx.Sequential(lambda x: x.reshape(x.shape[0], -1), nnx.Linear(64, 10, rngs=nnx.Rngs(0)))
  data = (jnp.zeros((8, 8, 8)), jnp.arange(8) % 10)
  train(net, classifier_loss(), optax.sgd(0.1), data, steps=1, batch_size=4, progress=True)


def _tiny_density():
  grid = np.linspace(0.0, 1.0, 5)
  return curvature.SpectralDensity(grid, np.ones(5), grid[None], np.full((1, 5), 0.2), 0.1)


CALLS = {
  "load_digits": ("sklearn", "jaxdiff.models.load_digits needs scikit-learn", load_digits),
  "train_progress": ("tqdm", "jaxdiff.models.train (progress=True) needs tqdm", _tiny_train),
  "plot_density": (
    "matplotlib",
    "optim.curvature.plot_density needs matplotlib",
    lambda: curvature.plot_density(_tiny_density()),
  ),
  "run_tour": (
    "matplotlib",
    "optim.curvature.run_tour needs matplotlib",
    lambda: curvature.run_tour("unused-out-dir", small=True),
  ),
  "demo_figures": (
    "matplotlib",
    "jaxdiff.demo (its figures) needs matplotlib",
    lambda: _figures.save_grid("unused.png", np.zeros((1, 8, 8)), 1, 1),
  ),
  **{
    f"run_demo_without_{top}": (
      top,
      f"jaxdiff.demo.run_demo needs {dist}",
      lambda: demo.run_demo(demo.DemoConfig.small(), out_dir="unused-out-dir"),
    )
    for top, dist in [("matplotlib", "matplotlib"), ("sklearn", "scikit-learn"), ("tqdm", "tqdm")]
  },
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_call_that_needs_the_demo_extra_names_the_install_command(name, monkeypatch, tmp_path):
  top, message, call = CALLS[name]
  monkeypatch.chdir(tmp_path)
  _hide(monkeypatch, top)
  with pytest.raises(ImportError) as info:
    call()
  assert str(info.value) == f"{message}, which is part of the 'demo' extra: {INSTALL}"
  assert isinstance(info.value, ModuleNotFoundError) and info.value.name.split(".")[0] == top
  assert not any(tmp_path.iterdir()), "work (or output) before the missing extra was reported"


def test_an_import_error_inside_an_installed_package_is_not_relabelled(monkeypatch, tmp_path):
  (tmp_path / "half_installed").mkdir()
  (tmp_path / "half_installed" / "__init__.py").write_text("import its_missing_dependency\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(ModuleNotFoundError, match="its_missing_dependency") as info:
    import_extra("half_installed", caller="x")
  assert "optim-jaxdiff[demo]" not in str(info.value)


def test_the_quick_tour_is_found_by_its_heading():
  tour = quick_tour((ROOT / "README.md").read_text())
  assert "import optim, jaxdiff" in tour and "print(" in tour
  with pytest.raises(AssertionError, match="Quick tour"):
    quick_tour("# Title\n\n## Install\n\n```python\nprint(1)\n```\n")


# --- integration: the distribution as a user installs it -------------------------------

# Runs in the fresh environment, outside the checkout: the installed wheel's version,
# where it was imported from, that every public module imports on the core dependencies
# with the demo extra left out, that a call needing the extra says how to install it,
# then the quick tour.
_CHECK_INSTALLED = """
import importlib.metadata, json, pathlib, sys
import optim, jaxdiff
import jaxdiff.cli, jaxdiff.demo, jaxdiff.models, optim.curvature, optim.quant
report = {
  "versions": [optim.__version__, jaxdiff.__version__,
               importlib.metadata.version("optim-jaxdiff")],
  "files": [optim.__file__, jaxdiff.__file__],
  "demo_extra": sorted(m for m in %r if m in sys.modules),
}
for name in %r:
  try:
    __import__(name)
    report.setdefault("importable", []).append(name)
  except ImportError:
    pass
try:
  jaxdiff.models.load_digits()
except ImportError as e:
  report["load_digits"] = str(e)
print("REPORT", json.dumps(report))
exec(compile(pathlib.Path(sys.argv[1]).read_text(), "README quick tour", "exec"), {})
"""


def _run(argv, **kw):
  proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, **kw)
  assert proc.returncode == 0, f"{argv}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
  return proc.stdout


def pinned_constraints(path: pathlib.Path) -> pathlib.Path:
  """This environment's versions as pip constraints, so a fresh environment gets the
  dependency versions the suite ran with (not whatever was released since)."""
  frozen = _run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"])
  pins = [ln for ln in frozen.splitlines() if "==" in ln and " @ " not in ln]
  path.write_text("\n".join(pins) + "\n")
  return path


@pytest.mark.integration
def test_wheel_and_sdist_build_pass_twine_and_the_wheel_alone_runs_the_quick_tour(
  tmp_path,
):
  dist = tmp_path / "dist"
  _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)])
  wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
  assert len(wheels) == 1 and len(sdists) == 1, sorted(dist.iterdir())
  version = optim.__version__
  assert wheels[0].name == f"optim_jaxdiff-{version}-py3-none-any.whl"
  _run([sys.executable, "-m", "twine", "check", "--strict", str(wheels[0]), str(sdists[0])])

  names = zipfile.ZipFile(wheels[0]).namelist()
  for path in ("optim/py.typed", "jaxdiff/py.typed", "jaxdiff/demo/searched_schedules.json"):
    assert path in names, path
  assert f"optim_jaxdiff-{version}.dist-info/licenses/LICENSE" in names
  metadata = zipfile.ZipFile(wheels[0]).read(f"optim_jaxdiff-{version}.dist-info/METADATA")
  core = [ln for ln in metadata.decode().splitlines() if ln.startswith("Requires-Dist:")]
  core = [ln for ln in core if "extra ==" not in ln]
  assert not [ln for ln in core if re.search(r"matplotlib|tqdm|scikit-learn|chex", ln)], core
  with tarfile.open(sdists[0]) as sdist:
    members = {m.split("/", 1)[-1] for m in sdist.getnames()}
  assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "optim/py.typed"} <= members

  # A fresh environment without the test extras: the wheel and its own dependencies only.
  venv = tmp_path / "venv"
  _run([sys.executable, "-m", "venv", str(venv)])
  python = venv / "bin" / "python"
  constraints = pinned_constraints(tmp_path / "constraints.txt")
  _run([python, "-m", "pip", "install", "--quiet", "-c", constraints, wheels[0]])
  tour = tmp_path / "quick_tour.py"
  tour.write_text(quick_tour((ROOT / "README.md").read_text()))
  work = tmp_path / "elsewhere"  # not the checkout: the installed packages are imported
  work.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  out = _run(
    [python, "-c", _CHECK_INSTALLED % (DEMO_EXTRA, DEMO_EXTRA), str(tour)], cwd=work, env=env
  )
  report = json.loads(out.split("REPORT ", 1)[1].splitlines()[0])
  assert report["versions"] == [version] * 3
  assert all(pathlib.Path(f).is_relative_to(venv) for f in report["files"]), report["files"]
  assert report["demo_extra"] == [] and "importable" not in report, report
  assert report["load_digits"].endswith(INSTALL), report
  assert QUICK_TOUR_PRINTS in out, out[-2000:]
