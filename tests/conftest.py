"""Test-wide setup: 8 virtual CPU devices, a float64 switch, deterministic hypothesis, and
JAX's persistent compilation cache.

The XLA flag must be set before JAX initialises its backends, hence at import time here.

The compilation cache (``$XDG_CACHE_HOME/optim-jaxdiff/jax``, by default
``~/.cache/optim-jaxdiff/jax``; ``make clean-cache`` removes it) lives outside the checkout,
so that every clone on a machine reuses it: a fresh clone that CI tests after a developer's
run compiles only what changed (JAX keys each entry by the program, the JAX and XLA
versions and the flags, so a stale entry is never loaded). It is shared by both xdist
workers and by the subprocesses the tests start (the notebooks, the CLI, the two-process
run), which inherit its ``JAX_*`` variables: a
program that one of them compiled is loaded, not compiled again, by the others and by the
next run. Every program is cached, however small or quick to compile (compilation is most
of what the small-size tests spend). Set ``JAX_COMPILATION_CACHE_DIR`` to move it, or
``JAX_ENABLE_COMPILATION_CACHE=false`` to run without it.
"""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
_CACHE_HOME = os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
_JAX_CACHE = pathlib.Path(_CACHE_HOME) / "optim-jaxdiff" / "jax"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_JAX_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Also through jax.config, in case a plugin imported jax before the variables were set.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
  "jax_persistent_cache_min_compile_time_secs",
  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)
jax.config.update(
  "jax_persistent_cache_min_entry_size_bytes",
  int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]),
)

settings.register_profile(
  "ci",
  deadline=None,
  derandomize=True,
  max_examples=25,
  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def x64():
  """Runs the test body with float64 enabled (reference comparisons)."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="session")
def mesh8():
  """A 1-D mesh over the 8 virtual CPU devices, axis name ``'d'``."""
  devices = jax.devices()
  if len(devices) < 8:
    pytest.fail(
      f"expected 8 virtual devices, found {len(devices)}; XLA_FLAGS={os.environ.get('XLA_FLAGS')}"
    )
  return jax.sharding.Mesh(devices[:8], ("d",))


# Docstring examples that run a whole pipeline join the integration tier, with the tests of
# the same pipeline (the small curvature tour trains an MLP: tests/optim/curvature/test_tour.py).
INTEGRATION_DOCTESTS = {"optim.curvature._tour.run_tour"}


def pytest_collection_modifyitems(config, items):
  for item in items:
    if type(item).__name__ == "DoctestItem" and item.name in INTEGRATION_DOCTESTS:
      item.add_marker(pytest.mark.integration)
