"""Fixtures of the guidance tests: a float64 batch and the unguided reference trajectories."""

import pytest

from tests.jaxdiff.guidance.testbed import make_batch, unguided_refs


@pytest.fixture(scope="module")
def batch():
  return make_batch()


@pytest.fixture(scope="module")
def refs(batch):
  """Conditional and unconditional DDIM trajectories (no guidance rule)."""
  return unguided_refs(batch)
