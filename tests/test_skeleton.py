"""The package skeleton: public namespaces import, the documents are in the repository and
link only inside it, and the test environment is as promised."""

import pathlib
import re

import jax
import pytest

import jaxdiff
import jaxdiff.models
import optim

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", "docs/design.md", "docs/extending.md"]


def test_public_namespaces_import():
  for mod in (optim.curvature, optim.losses, optim.schedules):
    assert hasattr(mod, "__all__")
  for mod in (
    jaxdiff.schedules,
    jaxdiff.solvers,
    jaxdiff.guidance,
    jaxdiff.testing,
    jaxdiff.metrics,
    jaxdiff.parameterization,
    jaxdiff.models,
  ):
    assert hasattr(mod, "__all__")
  for name in optim.__all__:
    assert hasattr(optim, name), name
  for name in jaxdiff.__all__:
    assert hasattr(jaxdiff, name), name


def test_layout():
  # The layout docs/design.md describes: one module per guidance rule, the demo package,
  # the registries.
  for path in DOCUMENTS:
    assert (ROOT / path).is_file(), path
  assert (ROOT / "jaxdiff" / "guidance" / "__init__.py").is_file()
  assert (ROOT / "jaxdiff" / "demo" / "__init__.py").is_file()
  assert sorted((ROOT / "jaxdiff" / "guidance").glob("_cfg*.py")), "one module per rule"
  assert jaxdiff.guidance.REGISTRY and jaxdiff.solvers.REGISTRY


def _slug(heading: str) -> str:
  """GitHub's anchor for a Markdown heading."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: pathlib.Path) -> set[str]:
  return {_slug(h) for h in re.findall(r"^#+ (.*)$", path.read_text(), re.M)}


@pytest.mark.parametrize("path", DOCUMENTS)
def test_documents_link_only_inside_the_repository(path):
  text = (ROOT / path).read_text()
  links = re.findall(r"\]\(([^)\s]+)\)", text)
  for link in links:
    assert not re.match(r"[A-Za-z][\w+.-]*:", link), f"{path}: link outside the repository: {link}"
    file, _, anchor = link.partition("#")
    target = ((ROOT / path).parent / file).resolve() if file else (ROOT / path)
    assert target.is_relative_to(ROOT), f"{path}: {link} leaves the repository"
    assert target.exists(), f"{path}: {link} does not exist"
    if anchor:
      assert anchor in _anchors(target), f"{path}: {link}: no heading #{anchor}"
  # Plain-text pointers outside the repository (the old design-document path).
  assert not re.search(r"\.\./\w", text), f"{path} points outside the repository"


def test_eight_virtual_devices(mesh8):
  assert mesh8.devices.size == 8
  assert all(d.platform == "cpu" for d in jax.devices())


def test_x64_fixture_switches_dtype(x64):
  assert jax.numpy.ones(()).dtype == jax.numpy.float64
