"""optim.curvature.conjugate_gradient against a dense float64 solve."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim.curvature import conjugate_gradient


def _spd(n, cond, seed=0):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  return q @ np.diag(np.geomspace(1.0, cond, n)) @ q.T


def test_matches_dense_solve_in_float64():
  with jax.enable_x64(True):
    a = jnp.asarray(_spd(12, 50.0))
    b = jnp.asarray(np.random.default_rng(1).normal(size=12))
    res = conjugate_gradient(lambda v: a @ v, b, tol=1e-12, max_iterations=200)
    assert bool(res.converged)
    np.testing.assert_allclose(res.x, np.linalg.solve(np.asarray(a), np.asarray(b)), rtol=1e-10)
    # Exact arithmetic ends in n steps; float64 with condition 50 needs about n.
    assert int(res.n_iters) <= 14
    errs = np.asarray(res.errors)
    assert np.isclose(errs[0], 1.0)  # x0 = 0: relative residual 1
    assert np.all(np.isnan(errs[int(res.n_iters) + 1 :]))
    assert errs[int(res.n_iters)] <= 1e-12


def test_transcription_of_the_recurrence_over_ten_iterations():
  """Each iterate equals a plain NumPy float64 transcription of Hestenes-Stiefel."""
  with jax.enable_x64(True):
    a = _spd(30, 1e4, seed=3)
    b = np.random.default_rng(4).normal(size=30)
    x0 = np.random.default_rng(5).normal(size=30)
    x, r = x0.copy(), b - a @ x0
    p, xs = r.copy(), []
    for _ in range(10):
      alpha = (r @ r) / (p @ a @ p)
      x = x + alpha * p
      r_new = r - alpha * (a @ p)
      p = r_new + (r_new @ r_new) / (r @ r) * p
      r = r_new
      xs.append(x.copy())
    res = conjugate_gradient(
      lambda v: jnp.asarray(a) @ v,
      jnp.asarray(b),
      init=jnp.asarray(x0),
      tol=1e-30,
      max_iterations=10,
    )
    assert int(res.n_iters) == 10 and not bool(res.converged)
    np.testing.assert_allclose(res.x, xs[-1], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(
      res.errors[10], np.linalg.norm(b - a @ xs[-1]) / np.linalg.norm(b), rtol=1e-8
    )


def test_pytree_rhs_and_jit():
  d = {"a": jnp.array([2.0, 3.0]), "b": jnp.array([[4.0]])}
  matvec = lambda v: jax.tree.map(lambda s, x: s * x, d, v)  # noqa: E731
  rhs = {"a": jnp.array([1.0, 1.0]), "b": jnp.array([[2.0]])}
  res = jax.jit(lambda r: conjugate_gradient(matvec, r, tol=1e-6))(rhs)
  np.testing.assert_allclose(res.x["a"], [0.5, 1 / 3], rtol=1e-5)
  np.testing.assert_allclose(res.x["b"], [[0.5]], rtol=1e-5)


def test_indefinite_operator_stops_without_nan():
  a = jnp.diag(jnp.array([1.0, -1.0]))
  res = conjugate_gradient(lambda v: a @ v, jnp.array([1.0, 1.0]), max_iterations=10)
  assert not bool(res.converged)
  assert bool(jnp.all(jnp.isfinite(res.x)))


def test_zero_rhs_is_converged_at_zero():
  res = conjugate_gradient(lambda v: 2.0 * v, jnp.zeros(3))
  assert bool(res.converged) and int(res.n_iters) == 0
  np.testing.assert_array_equal(res.x, jnp.zeros(3))


@pytest.mark.parametrize("tol", [0.5, 1e-2, 1e-6])
def test_tolerance_is_what_stops_it(tol):
  with jax.enable_x64(True):
    a = jnp.asarray(_spd(20, 1e3, seed=7))
    res = conjugate_gradient(lambda v: a @ v, jnp.ones(20), tol=tol, max_iterations=100)
    k = int(res.n_iters)
    assert bool(res.converged) and float(res.errors[k]) <= tol < float(res.errors[k - 1])
