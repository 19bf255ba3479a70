"""Test-wide setup: 8 virtual CPU devices, a float64 switch, deterministic hypothesis.

The XLA flag must be set before JAX initialises its backends, hence at import time here.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

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
