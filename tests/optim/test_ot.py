"""Sinkhorn-Newton-Sparse (Tang et al., arXiv:2401.12253) against ott-jax's Sinkhorn (the
reference, float64, tight threshold) and a float64 NumPy transcription of Algorithm 1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from optim.ot import sinkhorn_newton_sparse, sq_euclidean_cost

EPS = 0.3


@pytest.fixture(scope="module")
def problem():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 2)), rng.normal(size=(9, 2)) + 0.5
    a, b = rng.uniform(0.5, 1.5, 12), rng.uniform(0.5, 1.5, 9)
    a, b = a / a.sum(), b / b.sum()
    cost = np.asarray(sq_euclidean_cost(jnp.asarray(x), jnp.asarray(y)))
    geom = geometry.Geometry(cost_matrix=jnp.asarray(cost), epsilon=EPS)
    ref = sinkhorn.Sinkhorn(threshold=1e-14, max_iterations=20000)(
      linear_problem.LinearProblem(geom, jnp.asarray(a), jnp.asarray(b))
    )
    assert bool(ref.converged)
    return cost, a, b, jax.tree.map(np.asarray, (ref.f, ref.g, ref.matrix, ref.reg_ot_cost))


@pytest.mark.slow
@pytest.mark.parametrize("rho", [1.0, 0.3])
def test_matches_ott_sinkhorn_in_float64(x64, problem, rho):
  cost, a, b, (f, g, plan, reg) = problem
  out = sinkhorn_newton_sparse(cost, a, b, epsilon=EPS, rho=rho, tol=1e-10, max_iterations=60)
  assert bool(out.converged)
  np.testing.assert_allclose(np.asarray(out.plan), plan, rtol=1e-8, atol=1e-14)
  # Potentials are unique up to (f + c, g - c).
  shift = float(out.f[0] - f[0])
  np.testing.assert_allclose(np.asarray(out.f) - shift, f, atol=1e-8)
  np.testing.assert_allclose(np.asarray(out.g) + shift, g, atol=1e-8)
  assert float(out.reg_ot_cost) == pytest.approx(float(reg), rel=1e-9)


def _transcription(cost, a, b, eps, n1, n2):
  """Algorithm 1, float64 NumPy: log-domain Sinkhorn, then dense Newton (rho = 1) + Armijo."""
  from scipy.special import logsumexp

  f, g = np.zeros(len(a)), np.zeros(len(b))
  plan = lambda f, g: np.exp((f[:, None] + g[None] - cost) / eps)
  marginal = lambda p: np.abs(p.sum(1) - a).sum() + np.abs(p.sum(0) - b).sum()
  errs = []
  for _ in range(n1):
    errs.append(marginal(plan(f, g)))
    f = eps * np.log(a) - eps * logsumexp((g[None] - cost) / eps, axis=1)
    g = eps * np.log(b) - eps * logsumexp((f[:, None] - cost) / eps, axis=0)
  lyap = lambda f, g: a @ f + b @ g - eps * plan(f, g).sum()
  for _ in range(n2):
    p = plan(f, g)
    r, c = p.sum(1), p.sum(0)
    grad = np.concatenate([a - r, b - c])
    errs.append(np.abs(grad).sum())
    m = np.block([[np.diag(r), p], [p.T, np.diag(c)]]) / eps
    d = np.linalg.lstsq(m, grad, rcond=1e-14)[0]
    alpha, l0 = 1.0, lyap(f, g)
    while lyap(f + alpha * d[: len(a)], g + alpha * d[len(a) :]) < l0 + 1e-4 * alpha * grad @ d:
      alpha /= 2
    f, g = f + alpha * d[: len(a)], g + alpha * d[len(a) :]
  return f, g, np.array(errs)


def test_matches_transcription_over_20_iterations_then_ott(x64, problem):
  # One compilation for both checks: 16 Sinkhorn + 4 Newton iterations against the NumPy
  # transcription (after which the errors are round-off), then the converged result
  # against ott-jax.
  cost, a, b, (f, g, plan, reg) = problem
  _, _, errs = _transcription(cost, a, b, EPS, 16, 4)
  out = sinkhorn_newton_sparse(
    cost,
    a,
    b,
    epsilon=EPS,
    sinkhorn_num_iterations=16,
    max_iterations=60,
    rho=1.0,
    tol=1e-10,
    cg_tol=1e-10,
  )
  np.testing.assert_allclose(np.asarray(out.errors[:20]), errs, rtol=1e-6)
  assert bool(out.converged)
  np.testing.assert_allclose(np.asarray(out.plan), plan, rtol=1e-8, atol=1e-14)
  shift = float(out.f[0] - f[0])
  np.testing.assert_allclose(np.asarray(out.f) - shift, f, atol=1e-8)
  np.testing.assert_allclose(np.asarray(out.g) + shift, g, atol=1e-8)
  assert float(out.reg_ot_cost) == pytest.approx(float(reg), rel=1e-9)


@pytest.mark.slow
def test_error_history_and_no_retrace(x64, problem):
  cost, a, b, _ = problem
  out = sinkhorn_newton_sparse(
    cost, a, b, epsilon=EPS, sinkhorn_num_iterations=5, max_iterations=30, rho=0.3
  )
  errs = np.asarray(out.errors)
  k = int(out.n_iters)
  assert np.isfinite(errs[: 5 + k + 1]).all() and np.isnan(errs[5 + k + 1 :]).all()
  assert errs[5 + k] < 1e-6 <= errs[5 + k - 1]
  from optim import _sinkhorn_newton

  before = _sinkhorn_newton._solve._cache_size()
  sinkhorn_newton_sparse(
    cost + 1e-3, a, b, epsilon=EPS, sinkhorn_num_iterations=5, max_iterations=30, rho=0.3
  )
  assert _sinkhorn_newton._solve._cache_size() == before
