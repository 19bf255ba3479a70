"""Fixtures of the guidance tests: a float64 batch and the unguided reference trajectories."""

import jax
import jax.numpy as jnp
import pytest

from tests.jaxdiff.guidance.testbed import B, run


@pytest.fixture(scope="module")
def batch():
  with jax.enable_x64(True):
    x_T = jax.random.normal(jax.random.key(0), (B, 2), jnp.float64)
    cond = jnp.arange(B, dtype=jnp.int32) % 3
  return x_T, cond


@pytest.fixture(scope="module")
def refs(batch):
  """Conditional and unconditional DDIM trajectories (no guidance rule)."""
  x_T, cond = batch
  with jax.enable_x64(True):
    cond_traj, _ = run(None, batch)
    uncond_traj, _ = run(None, (x_T, -jnp.ones_like(cond)))
  return cond_traj, uncond_traj
