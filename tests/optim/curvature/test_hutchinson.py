"""Hutchinson / Hutch++ trace and diagonal estimators against dense float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from optim import curvature
from tests.optim.curvature import _mlp


@jax.jit
def _mlp_trace(params, batch, key):
  op = curvature.hessian_matvec(_mlp.loss, params, batch)
  return curvature.hutchinson_trace(op, key=key, num_probes=1000)


def test_trace_of_mlp_hessian_within_three_standard_errors_at_1000_probes(x64, mlp_problem):
  params, batch, hess, _ = mlp_problem
  est = _mlp_trace(params, batch, jax.random.key(0))
  exact = np.trace(hess)
  assert est.stderr > 0
  assert abs(est.trace - exact) <= 3 * est.stderr, (est.trace, exact, est.stderr)
  # The standard error matches theory for Rademacher probes: Var = 2 sum_{i != j} H_ij^2.
  off = hess - np.diag(np.diag(hess))
  np.testing.assert_allclose(est.stderr, np.sqrt(2 * np.sum(off**2) / 1000), rtol=0.15)
  # Layer-wise traces: they sum to the total, and each is within 4 standard errors of the
  # trace of its diagonal block.
  leaves = jax.tree.leaves(est.per_leaf)
  np.testing.assert_allclose(sum(leaves), est.trace, rtol=1e-12)
  sizes = [x.size for x in jax.tree.leaves(params)]
  bounds = np.cumsum([0, *sizes])
  blocks = [np.trace(hess[a:b, a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
  for got, se, want in zip(leaves, jax.tree.leaves(est.per_leaf_stderr), blocks):
    assert abs(got - want) <= 4 * se + 1e-12, (got, want, se)


def test_hutchpp_beats_hutchinson_on_a_low_rank_psd_operator(x64):
  # A = U diag(s) U^T with s_i = 100 * 2^-i: the 10-column sketch of a 30-product budget
  # captures the top directions exactly and only a tail of Frobenius norm ~0.1 is left to
  # the stochastic part, while plain Hutchinson pays for ||A||_F ~ 115 (Meyer et al.,
  # Thm. 1.1: the error scales with the tail, not the whole matrix).
  key_u, key_a = jax.random.split(jax.random.key(1))
  dim = 200
  u, _ = jnp.linalg.qr(jax.random.normal(key_u, (dim, dim), jnp.float64))
  s = 100.0 * 0.5 ** jnp.arange(dim)
  a = (u * s) @ u.T
  op = curvature.LinearOperator(lambda v: a @ v, jax.ShapeDtypeStruct((dim,), jnp.float64))
  exact = float(jnp.sum(s))

  @jax.jit
  def errors(key):
    h = curvature.hutchinson_trace(op, key=key, num_probes=30)
    pp = curvature.hutchinson_trace(op, key=key, num_probes=30, variant="hutch++")
    return jnp.abs(h.trace - exact), jnp.abs(pp.trace - exact), pp.stderr

  err_h, err_pp, se_pp = jax.vmap(errors)(jax.random.split(key_a, 10))
  assert np.median(err_pp) < 0.01 * np.median(err_h), (np.median(err_pp), np.median(err_h))
  # The (conditional) standard error is finite and of the right size.
  assert np.all(np.isfinite(se_pp))
  assert np.mean(err_pp <= 3 * se_pp) >= 0.8


def test_rademacher_diag_is_exact_on_diagonal_quadratic(x64):
  d = {"a": jnp.array([3.0, -1.0, 0.5]), "b": jnp.array([[2.0, 0.0], [7.0, -4.0]])}
  f = lambda p: (
    0.5 * sum(jnp.sum(di * pi**2) for di, pi in zip(jax.tree.leaves(d), jax.tree.leaves(p)))
  )
  params = jax.tree.map(jnp.ones_like, d)
  op = curvature.hessian_matvec(f, params)
  est = curvature.hutchinson_diag(op, key=jax.random.key(2), num_probes=3)
  for got, want, se in zip(
    jax.tree.leaves(est.diag), jax.tree.leaves(d), jax.tree.leaves(est.stderr)
  ):
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(se, 0.0)
  # Single probe: exact value, undefined (infinite) standard error rather than NaN.
  one = curvature.hutchinson_diag(op, key=jax.random.key(3), num_probes=1)
  np.testing.assert_array_equal(one.diag["a"], d["a"])
  assert np.all(np.isinf(one.stderr["a"]))


def test_diag_of_mlp_hessian_within_standard_errors(x64, mlp_problem):
  params, batch, hess, _ = mlp_problem

  @jax.jit
  def run(params, batch):
    op = curvature.hessian_matvec(_mlp.loss, params, batch)
    return curvature.hutchinson_diag(op, key=jax.random.key(4), num_probes=400)

  est = run(params, batch)
  got, se = ravel_pytree(est.diag)[0], ravel_pytree(est.stderr)[0]
  z = (np.asarray(got) - np.diag(hess)) / np.maximum(np.asarray(se), 1e-300)
  # Bonferroni over 235 coordinates (see test_operators' Fisher test for the derivation);
  # coordinates with zero standard error must be exact.
  exact = np.asarray(se) == 0
  np.testing.assert_allclose(np.asarray(got)[exact], np.diag(hess)[exact], atol=1e-12)
  assert np.max(np.abs(z[~exact])) < 5.0


def test_gaussian_probes_trace_is_unbiased_and_dtype_is_preserved():
  d = jnp.linspace(1.0, 2.0, 16, dtype=jnp.float32)
  op = curvature.LinearOperator(lambda v: d * v, jax.ShapeDtypeStruct((16,), jnp.float32))
  est = curvature.hutchinson_trace(op, key=jax.random.key(5), num_probes=2000, probe="gaussian")
  assert est.trace.dtype == jnp.float32
  assert abs(est.trace - jnp.sum(d)) <= 4 * est.stderr
  diag = curvature.hutchinson_diag(op, key=jax.random.key(6), num_probes=8, probe="gaussian")
  assert diag.diag.dtype == jnp.float32
