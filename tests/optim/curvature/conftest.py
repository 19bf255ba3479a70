"""Shared float64 MLP problem with its dense Hessian, computed once per session."""

import jax
import numpy as np
import pytest

from tests.optim.curvature import _mlp


@pytest.fixture(scope="session")
def mlp_problem():
  """``(params, batch, dense_hessian, eigenvalues)`` for the 235-parameter float64 MLP."""
  with jax.enable_x64(True):
    params, batch = _mlp.make_problem(seed=0)
    hess = np.asarray(_mlp.dense_hessian(_mlp.loss, params, batch))
  return params, batch, hess, np.linalg.eigvalsh(hess)
