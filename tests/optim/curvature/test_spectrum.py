"""Power iteration, Lanczos and SLQ against the dense float64 spectrum of an MLP Hessian."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from optim import curvature
from optim._tree import tree_probe
from tests.optim.curvature import _mlp


@pytest.fixture(scope="module")
def spectrum_runs(mlp_problem):
  """One compilation: top-3 eigenpairs, a full-dimension Lanczos run and an SLQ density."""
  params, batch, hess, _ = mlp_problem
  dim = hess.shape[0]

  @jax.jit
  def run(params, batch):
    op = curvature.hessian_matvec(_mlp.loss, params, batch)
    top = curvature.top_eigenvalues(op, key=jax.random.key(0), k=3, max_iterations=3000, tol=1e-5)
    full = curvature.lanczos(op, key=jax.random.key(1), num_iterations=dim)
    slq = curvature.slq_density(op, key=jax.random.key(2), num_iterations=30, num_probes=3)
    return top, full, slq

  with jax.enable_x64(True):
    return run(params, batch)


def test_top3_eigenvalues_match_dense_to_1e6_relative(x64, mlp_problem, spectrum_runs):
  params, _, hess, evals = mlp_problem
  top = spectrum_runs[0]
  want = evals[np.argsort(-np.abs(evals))[:3]]  # power iteration ranks by magnitude
  assert bool(np.all(top.converged)), (top.residuals, top.n_iters)
  np.testing.assert_allclose(top.eigenvalues, want, rtol=1e-6)
  vecs = np.asarray(jax.vmap(lambda v: ravel_pytree(v)[0])(top.eigenvectors))
  np.testing.assert_allclose(vecs @ vecs.T, np.eye(3), atol=1e-8)
  resid = np.linalg.norm(vecs @ hess - top.eigenvalues[:, None] * vecs, axis=1)
  # The first residual is the reported one; later ones are reported for the deflated
  # operator, and the true residual adds the (tiny) error of the earlier eigenvectors.
  np.testing.assert_allclose(resid[0], top.residuals[0], rtol=1e-3)
  assert np.all(top.residuals <= 1e-5 * np.abs(top.eigenvalues))
  assert np.all(resid <= 1e-4 * np.abs(top.eigenvalues))


def test_power_iteration_reports_nonconvergence_and_handles_zero_operator():
  d = jnp.array([2.0, -2.0, 1.0])  # +-2 tie in magnitude: power iteration cannot separate
  op = curvature.LinearOperator(lambda v: d * v, jax.ShapeDtypeStruct((3,), jnp.float32))
  res = curvature.top_eigenvalues(op, key=jax.random.key(0), k=1, max_iterations=50)
  assert not bool(res.converged[0]) and int(res.n_iters[0]) == 50
  zero = curvature.LinearOperator(lambda v: 0 * v, jax.ShapeDtypeStruct((3,), jnp.float32))
  res = curvature.top_eigenvalues(zero, key=jax.random.key(0), k=2)
  np.testing.assert_array_equal(res.eigenvalues, 0.0)
  assert bool(np.all(res.converged)) and np.all(np.isfinite(res.eigenvectors))


def test_full_dimension_lanczos_reproduces_trace_of_powers_1_to_4(x64, mlp_problem, spectrum_runs):
  _, _, hess, evals = mlp_problem
  full = spectrum_runs[1]
  ritz = np.linalg.eigvalsh(np.asarray(curvature.tridiagonal(full)))
  for k in range(1, 5):
    want = np.trace(np.linalg.matrix_power(hess, k))
    # Relative to sum |lambda|^k: tr(H) of an indefinite H can cancel far below its terms.
    scale = np.sum(np.abs(evals) ** k)
    assert abs(np.sum(ritz**k) - want) <= 1e-6 * scale, (k, np.sum(ritz**k), want)
  basis = np.asarray(jax.vmap(lambda v: ravel_pytree(v)[0])(full.basis))
  steps = int(full.n_iters)
  np.testing.assert_allclose(basis[:steps] @ basis[:steps].T, np.eye(steps), atol=1e-10)


def test_slq_quadrature_reproduces_probe_moments_and_density_normalizes(
  x64, mlp_problem, spectrum_runs
):
  params, _, hess, evals = mlp_problem
  slq = spectrum_runs[2]
  np.testing.assert_allclose(slq.weights.sum(-1), 1.0, rtol=1e-10)
  np.testing.assert_allclose(np.trapezoid(slq.density, slq.grid), 1.0, atol=1e-3)
  # Gauss quadrature with m = 30 nodes is exact for degree <= 59: the probe moments
  # v^T H^k v / v^T v are reproduced; the start vector is the same Gaussian probe.
  for i, key in enumerate(jax.random.split(jax.random.key(2), 3)):
    v = np.asarray(ravel_pytree(tree_probe(key, params, "gaussian"))[0])
    v = v / np.linalg.norm(v)
    for k in range(1, 5):
      want = v @ np.linalg.matrix_power(hess, k) @ v
      got = np.sum(slq.weights[i] * slq.nodes[i] ** k)
      assert abs(got - want) <= 1e-9 * (np.abs(evals).max() ** k), (i, k, got, want)
  # Nodes lie inside the spectrum; the broadening follows the documented width rule.
  assert slq.nodes.min() >= evals.min() - 1e-9 and slq.nodes.max() <= evals.max() + 1e-9
  np.testing.assert_allclose(slq.sigma, 0.01 * (slq.nodes.max() - slq.nodes.min()), rtol=1e-12)


def test_lanczos_breakdown_on_invariant_subspace_stays_consistent():
  # Three distinct eigenvalues: the Krylov space has dimension 3, so steps 4.. must stop.
  d = jnp.repeat(jnp.array([1.0, 2.0, 5.0]), 4)
  op = curvature.LinearOperator(lambda v: d * v, jax.ShapeDtypeStruct((12,), jnp.float32))
  res = curvature.lanczos(op, key=jax.random.key(3), num_iterations=8)
  assert int(res.n_iters) == 3
  assert np.all(np.isfinite(res.alphas)) and np.all(np.isfinite(res.betas))
  np.testing.assert_array_equal(res.alphas[3:], 0.0)
  np.testing.assert_array_equal(res.betas[2:], 0.0)
  ritz = np.linalg.eigvalsh(np.asarray(curvature.tridiagonal(res))[:3, :3])
  np.testing.assert_allclose(ritz, [1.0, 2.0, 5.0], rtol=1e-5)
  slq = curvature.slq_density(op, key=jax.random.key(3), num_iterations=8)
  assert np.all(np.isfinite(slq.density))
  live = slq.weights[0] > 1e-6
  np.testing.assert_allclose(np.sort(slq.nodes[0][live]), [1.0, 2.0, 5.0], rtol=1e-5)


def test_slq_width_rule_is_well_defined_for_zero_spectral_range():
  # A multiple of the identity: all nodes coincide, sigma falls back to 0.01 * max(|c|, 1).
  for c, sigma in ((3.0, 0.03), (0.0, 0.01)):
    op = curvature.LinearOperator(lambda v, c=c: c * v, jax.ShapeDtypeStruct((6,), jnp.float32))
    res = curvature.slq_density(op, key=jax.random.key(0), num_iterations=4, num_points=256)
    np.testing.assert_allclose(res.sigma, sigma, rtol=1e-6)
    assert np.all(np.isfinite(res.density))
    assert abs(res.grid[np.argmax(res.density)] - c) <= 0.1 * sigma + 1e-6


def test_plot_density_uses_log_scale(tmp_path):
  import matplotlib

  matplotlib.use("Agg")
  d = jnp.linspace(0.0, 1.0, 20)
  op = curvature.LinearOperator(lambda v: d * v, jax.ShapeDtypeStruct((20,), jnp.float32))
  ax = curvature.plot_density(curvature.slq_density(op, key=jax.random.key(0), num_iterations=10))
  assert ax.get_yscale() == "log"
  ax.figure.savefig(tmp_path / "density.png")
  assert (tmp_path / "density.png").stat().st_size > 0
