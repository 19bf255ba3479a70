"""Fixtures shared by the jaxdiff tests (built once a session: the objects are immutable)."""

import numpy as np
import pytest

from jaxdiff.testing import GaussianMixture


@pytest.fixture(scope="session")
def gmm():
  """Three components in 2-D, two classes (component 2 is a second mode of class 1)."""
  return GaussianMixture(np.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]]), 0.2, classes=[0, 1, 1])
