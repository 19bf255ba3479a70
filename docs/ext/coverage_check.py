"""Every public name has an API entry (after optax's docs/ext/coverage_check.py).

The public names are ``module.name`` for every name in the ``__all__`` of each module in the
``coverage_modules`` config value; an entry is any object the Python domain records (an
``auto*`` or ``py:*`` directive without ``:no-index:``, a ``py:module``). Two ways to run it:

- ``sphinx-build -b coverage_check docs OUT`` reads the sources only (no HTML), writes
  ``OUT/coverage.json`` (documented and missing names) and warns per missing name;
- every other build (``make docs``) warns the same way. Under ``-W`` a warning fails the build.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pathlib
from typing import Any

from sphinx.application import Sphinx
from sphinx.builders import Builder
from sphinx.util import logging

logger = logging.getLogger(__name__)


def public_modules(modules) -> list[str]:
  """The given modules and every module of ours reachable through their ``__all__``."""
  found = list(modules)
  for modname in found:  # grows while it is walked
    module = importlib.import_module(modname)
    for name in module.__all__:
      obj = getattr(module, name)
      if inspect.ismodule(obj) and obj.__name__.split(".")[0] in ("optim", "jaxdiff"):
        if obj.__name__ not in found:
          found.append(obj.__name__)
  return found


def public_names(modules) -> set[str]:
  """``module.name`` for every name in the ``__all__`` of every public module."""
  names = set()
  for modname in public_modules(modules):
    module = importlib.import_module(modname)
    names.update(f"{modname}.{name}" for name in module.__all__)
  return names


def _documented(env) -> set[str]:
  return set(env.get_domain("py").objects)


def _missing(app: Sphinx) -> list[str]:
  return sorted(public_names(app.config.coverage_modules) - _documented(app.env))


class CoverageCheck(Builder):
  """Reads every source, writes nothing but the report."""

  name = "coverage_check"
  epilog = "API coverage report in %(outdir)s/coverage.json."

  def get_outdated_docs(self):
    return self.env.found_docs

  def get_target_uri(self, docname: str, typ: str | None = None) -> str:
    return ""

  def prepare_writing(self, docnames) -> None:
    pass

  def write_doc(self, docname: str, doctree) -> None:
    pass

  def finish(self) -> None:
    missing = _missing(self.app)
    report = {"documented": sorted(_documented(self.env)), "missing": missing}
    out = pathlib.Path(self.outdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coverage.json").write_text(json.dumps(report, indent=1) + "\n")
    for name in missing:  # an error under -W: the build exits non-zero
      logger.warning("public name without an API entry in docs/api/: %s", name)


def _warn_missing(app: Sphinx, env) -> None:
  if app.builder.name == CoverageCheck.name:
    return
  for name in _missing(app):
    logger.warning("public name without an API entry in docs/api/: %s", name)


def setup(app: Sphinx) -> dict[str, Any]:
  app.add_config_value("coverage_modules", [], "env", types=frozenset({list, tuple}))
  app.add_builder(CoverageCheck)
  app.connect("env-check-consistency", _warn_missing)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
