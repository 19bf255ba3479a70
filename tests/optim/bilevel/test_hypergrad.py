"""optim.bilevel.implicit_hypergradient on a quadratic bilevel problem with a closed form."""

import jax
import jax.numpy as jnp
import numpy as np

from optim.bilevel import implicit_hypergradient


def _problem(seed=0, n=4, m=6, k=5, lam=0.3):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(m, m)))
  a = q @ np.diag(np.linspace(1.0, 8.0, m)) @ q.T
  b, c, d = rng.normal(size=(m, n)), rng.normal(size=(k, m)), rng.normal(size=k)

  def outer(x, y):
    return 0.5 * jnp.sum((c @ y - d) ** 2) + 0.5 * lam * jnp.sum(x**2)

  def inner(x, y):
    return 0.5 * y @ (a @ y) - y @ (b @ x)

  def exact(x):
    m_ = c @ np.linalg.solve(a, b)
    return m_.T @ (m_ @ x - d) + lam * x

  return outer, inner, a, b, exact


def test_exact_at_the_lower_level_solution_in_float64():
  with jax.enable_x64(True):
    outer, inner, a, b, exact = _problem()
    x = np.random.default_rng(9).normal(size=4)
    y_star = np.linalg.solve(a, b @ x)
    res = implicit_hypergradient(outer, inner, jnp.asarray(x), jnp.asarray(y_star), tol=1e-12)
    assert bool(res.converged)
    np.testing.assert_allclose(res.grad, exact(x), rtol=1e-9, atol=1e-11)
    # Matches autodiff through the closed-form solution map.
    f_total = lambda x_: outer(x_, jnp.linalg.solve(jnp.asarray(a), jnp.asarray(b) @ x_))  # noqa: E731
    np.testing.assert_allclose(res.grad, jax.grad(f_total)(jnp.asarray(x)), rtol=1e-9)


def test_pytree_variables_and_warm_start():
  with jax.enable_x64(True):
    outer, inner, a, b, exact = _problem(seed=2)
    x = np.random.default_rng(3).normal(size=4)
    y_star = np.linalg.solve(a, b @ x)
    # Split both levels into dict pytrees.
    xo = {"u": jnp.asarray(x[:2]), "w": jnp.asarray(x[2:])}
    yo = {"p": jnp.asarray(y_star[:3]), "q": jnp.asarray(y_star[3:])}
    cat_x = lambda t: jnp.concatenate([t["u"], t["w"]])  # noqa: E731
    cat_y = lambda t: jnp.concatenate([t["p"], t["q"]])  # noqa: E731
    o = lambda xx, yy: outer(cat_x(xx), cat_y(yy))  # noqa: E731
    i = lambda xx, yy: inner(cat_x(xx), cat_y(yy))  # noqa: E731
    res = implicit_hypergradient(o, i, xo, yo, tol=1e-12)
    np.testing.assert_allclose(cat_x(res.grad), exact(x), rtol=1e-9, atol=1e-11)
    warm = implicit_hypergradient(o, i, xo, yo, tol=1e-12, init=res.v)
    assert int(warm.n_iters) <= 1 < int(res.n_iters)


def test_error_shrinks_with_the_lower_level_error():
  with jax.enable_x64(True):
    outer, inner, a, b, exact = _problem(seed=4)
    x = np.random.default_rng(5).normal(size=4)
    y_star = np.linalg.solve(a, b @ x)
    errs = []
    for eps in (1e-1, 1e-2, 1e-3):
      y = y_star + eps * np.ones_like(y_star)
      res = implicit_hypergradient(outer, inner, jnp.asarray(x), jnp.asarray(y), tol=1e-12)
      errs.append(np.linalg.norm(np.asarray(res.grad) - exact(x)))
    # Linear in ||y - y*|| (quadratic problem): ten times smaller each time.
    assert errs[0] > 5 * errs[1] > 25 * errs[2] > 0
