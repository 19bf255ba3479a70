"""The package skeleton: public namespaces import and the test environment is as promised."""

import jax

import jaxdiff
import optim


def test_public_namespaces_import():
  for mod in (optim.curvature, optim.losses, optim.schedules):
    assert hasattr(mod, "__all__")
  for mod in (jaxdiff.schedules, jaxdiff.solvers, jaxdiff.guidance, jaxdiff.testing):
    assert hasattr(mod, "__all__")
  for name in optim.__all__:
    assert hasattr(optim, name), name
  for name in jaxdiff.__all__:
    assert hasattr(jaxdiff, name), name


def test_eight_virtual_devices(mesh8):
  assert mesh8.devices.size == 8
  assert all(d.platform == "cpu" for d in jax.devices())


def test_x64_fixture_switches_dtype(x64):
  assert jax.numpy.ones(()).dtype == jax.numpy.float64
