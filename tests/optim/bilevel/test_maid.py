"""optim.bilevel.maid: a float64 NumPy transcription of MAID (Salehi et al., arXiv:2308.10098;
rules and constants of the official code's MAID.py) and the exact quadratic testbed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim.bilevel import maid


def _quadratic(seed=0, n=3, m=5, p=12):
  """f(y) = |A1 y - b1|^2 / 2, g(x, y) = |A2 y + A3 x - b2|^2 / 2 (the official Quadratic.py,
  small): F is a convex quadratic with a closed-form minimizer."""
  rng = np.random.default_rng(seed)
  a1, a2, a3 = rng.normal(size=(p, m)), rng.normal(size=(p + 2, m)), rng.normal(size=(p + 2, n))
  b1, b2 = rng.normal(size=p), rng.normal(size=p + 2)
  h = a2.T @ a2
  jac = -np.linalg.solve(h, a2.T @ a3)  # dy*/dx
  c = np.linalg.solve(h, a2.T @ b2)  # y*(x) = c + jac x
  ev = np.linalg.eigvalsh(h)
  consts = dict(
    mu=ev[0],
    lg=ev[-1],
    lf=np.linalg.eigvalsh(a1.T @ a1)[-1],
    bnorm=np.linalg.norm(a3.T @ a2, 2),
  )
  m_ = a1 @ jac
  x_star = np.linalg.solve(m_.T @ m_, -m_.T @ (a1 @ c - b1))
  np_ = dict(a1=a1, b1=b1, a2=a2, a3=a3, b2=b2)

  def outer(x, y):
    return 0.5 * jnp.sum((a1 @ y - b1) ** 2)

  def inner(x, y):
    return 0.5 * jnp.sum((a2 @ y + a3 @ x - b2) ** 2)

  def grad_f(x):  # the exact hypergradient
    return jac.T @ (a1.T @ (a1 @ (c + jac @ x) - b1))

  def y_star(x):
    return c + jac @ x

  return outer, inner, np_, consts, x_star, grad_f, y_star


def _cg(mat, b, tol, cap):
  """Hestenes-Stiefel CG from zero, stopped at |r| <= tol |b| (optim.curvature's rule)."""
  x, r = np.zeros_like(b), b.copy()
  p, rr, k = r.copy(), r @ r, 0
  scale = np.sqrt(b @ b) if np.sqrt(b @ b) > 0 else 1.0
  while k < cap and np.sqrt(rr) / scale > tol:
    ap = mat @ p
    alpha = rr / (p @ ap)
    x, r = x + alpha * p, r - alpha * ap
    rr_new = r @ r
    p, rr, k = r + rr_new / rr * p, rr_new, k + 1
  return x, k


def _reference(prob, consts, x0, y0, *, iters, eps, dlt, beta, rho, tau, nu, eta, la, lb,
               lr_in, adaptive=True, ls_base=10, retries=3, tol=0.0):  # fmt: skip
  """MAID transcribed in plain NumPy (Python loops), recording every iterate."""
  a1, b1, a2, a3, b2 = (prob[k] for k in ("a1", "b1", "a2", "a3", "b2"))
  mu, lf, bn = consts["mu"], consts["lf"], consts["bnorm"]
  h = a2.T @ a2
  gy = lambda x, y: a2.T @ (a2 @ y + a3 @ x - b2)  # noqa: E731
  fval = lambda y: 0.5 * np.sum((a1 @ y - b1) ** 2)  # noqa: E731
  fy = lambda y: a1.T @ (a1 @ y - b1)  # noqa: E731

  def solve(x, y, e):
    n = 0
    while np.linalg.norm(gy(x, y)) / mu > e and n < 10_000:
      y, n = y - lr_in * gy(x, y), n + 1
    return y, n

  def hypergrad(x, y, e, d):
    y, n_in = solve(x, y, e)
    gf = np.linalg.norm(fy(y))
    q, n_cg = _cg(h, fy(y), d / gf if gf > 0 else 1.0, 1000)
    z = -(a3.T @ (a2 @ q))
    om = bn / mu * d + (lf * bn / mu + la * bn * gf / mu**2 + lb * gf / mu) * e
    om += lb * lf / mu * e**2
    return y, z, om, fval(y), gf, n_in, n_cg

  x, y, n_in, n_cg, rec = x0.copy(), y0.copy(), 0, 0, []
  for _k in range(iters):
    conv = False
    for j in range(retries):
      y, z, om, fv, gf, a, b = hypergrad(x, y, eps, dlt)
      n_in, n_cg, t = n_in + a, n_cg + b, 0
      while adaptive and om > (1 - eta) * np.linalg.norm(z) and np.linalg.norm(z) > tol and t < 60:
        eps, dlt, t = tau * eps, tau * dlt, t + 1
        y, z, om, fv, gf, a, b = hypergrad(x, y, eps, dlt)
        n_in, n_cg = n_in + a, n_cg + b
      entry = dict(x=x.copy(), y=y.copy(), z=z, bound=om, eps=eps, delta=dlt, loss=fv)
      if np.linalg.norm(z) <= tol:
        conv = True
        entry["step"] = 0.0
        break
      ok = False
      for i in range(ls_base + j):
        alpha = beta * rho**i
        xn = x - alpha * z
        yn, a = solve(xn, y, eps)
        n_in += a
        lhs = fval(yn) + np.linalg.norm(fy(yn)) * eps + lf * eps**2 / 2 - fv + gf * eps
        if lhs <= -alpha * eta * eta * (z @ z):
          ok = True
          break
      entry["step"] = alpha if ok else 0.0
      if ok:
        x, y, beta = xn, yn, alpha * 10 / 9
        if adaptive:
          eps, dlt = eps * nu, dlt * nu
        break
      if adaptive:
        eps, dlt = eps * tau, dlt * tau
    entry["work"] = n_in + n_cg
    rec.append(entry)
    if conv:
      break
  return x, rec, n_in, n_cg


@pytest.mark.parametrize("adaptive", [True, False])
def test_float64_transcription_of_maid_over_15_iterations(adaptive):
  with jax.enable_x64(True):
    outer, inner, prob, consts, *_ = _quadratic()
    x0, y0 = np.ones(3), np.zeros(5)
    # A large first accuracy and step exercise every rule: tightening to a certified
    # descent direction, failed and accepted backtracking, relaxing after success.
    kw = dict(eps=0.5, dlt=0.5, beta=5.0, rho=0.5, tau=0.5, nu=1.25, eta=0.3, la=0.1, lb=0.2)
    lr_in = 1.0 / consts["lg"]
    x_ref, rec, n_in, n_cg = _reference(
      prob, consts, x0, y0, iters=15, lr_in=lr_in, adaptive=adaptive,
      ls_base=10 if adaptive else 5, **kw,
    )  # fmt: skip
    res = maid(
      outer, inner, jnp.asarray(x0), jnp.asarray(y0), mu=consts["mu"], max_iterations=15,
      tol=0.0, epsilon=0.5, delta=0.5, learning_rate=5.0, rho=0.5, tau=0.5, nu=1.25, eta=0.3,
      outer_smoothness=consts["lf"], hessian_lipschitz=0.1, cross_lipschitz=0.2,
      cross_norm=consts["bnorm"], inner_learning_rate=lr_in, adaptive=adaptive,
    )  # fmt: skip
    assert int(res.n_iters) == len(rec) == 15
    col = lambda key: np.array([r[key] for r in rec], dtype=float)  # noqa: E731
    np.testing.assert_allclose(res.errors, [np.linalg.norm(r["z"]) for r in rec], rtol=1e-9)
    np.testing.assert_allclose(res.bounds, col("bound"), rtol=1e-9)
    np.testing.assert_allclose(res.epsilons, col("eps"), rtol=1e-12)
    np.testing.assert_allclose(res.deltas, col("delta"), rtol=1e-12)
    np.testing.assert_allclose(res.step_sizes, col("step"), rtol=1e-12)
    np.testing.assert_allclose(res.losses, col("loss"), rtol=1e-9)
    np.testing.assert_array_equal(res.work, col("work"))
    assert (int(res.total_inner_iters), int(res.total_cg_iters)) == (n_in, n_cg)
    np.testing.assert_allclose(res.x, x_ref, rtol=1e-9, atol=1e-12)
    if adaptive:  # the run saw tightening, failures and relaxing
      e = col("eps")
      assert (np.diff(e) < 0).any() and (np.diff(e) > 0).any() and e[0] < 0.5
    else:
      assert (col("eps") == 0.5).all()


def test_quadratic_testbed_converges_to_the_closed_form_and_the_bound_holds():
  with jax.enable_x64(True):
    outer, inner, prob, consts, x_star, grad_f, y_star = _quadratic(seed=1)
    x0, y0 = np.zeros(3), np.zeros(5)
    kw = dict(epsilon=0.1, delta=0.1, learning_rate=1.0, rho=0.5, tau=0.5, nu=1.25, eta=1e-2)
    res = maid(
      outer, inner, jnp.asarray(x0), jnp.asarray(y0), mu=consts["mu"], max_iterations=300,
      tol=1e-6, outer_smoothness=consts["lf"], cross_norm=consts["bnorm"],
      inner_learning_rate=1.0 / consts["lg"], **kw,
    )  # fmt: skip
    assert bool(res.converged)
    np.testing.assert_allclose(res.x, x_star, atol=1e-5)
    np.testing.assert_allclose(res.y, y_star(np.asarray(res.x)), atol=1e-6)
    # The a-posteriori bound ||z_k - grad F(x_k)|| <= omega_k at every iterate (of the
    # transcription, which is maid's sequence: the test above), and omega_k certifies a
    # descent direction: omega_k <= (1 - eta) ||z_k||.
    _, rec, *_ = _reference(
      prob, consts, x0, y0, iters=int(res.n_iters), lr_in=1.0 / consts["lg"],
      eps=0.1, dlt=0.1, beta=1.0, rho=0.5, tau=0.5, nu=1.25, eta=1e-2, la=0.0, lb=0.0,
      tol=1e-6,
    )  # fmt: skip
    n = int(res.n_iters)
    assert len(rec) == n
    np.testing.assert_allclose(res.errors[:n], [np.linalg.norm(r["z"]) for r in rec], rtol=1e-7)
    for r in rec:
      err = np.linalg.norm(r["z"] - grad_f(r["x"]))
      assert err <= r["bound"] * (1 + 1e-9) + 1e-14
      assert np.linalg.norm(r["y"] - y_star(r["x"])) <= r["eps"]
      if np.linalg.norm(r["z"]) > 1e-6:
        assert r["bound"] <= (1 - 1e-2) * np.linalg.norm(r["z"])
    # F decreases monotonically along the accepted steps (a descent method).
    fx = [0.5 * np.sum((prob["a1"] @ y_star(r["x"]) - prob["b1"]) ** 2) for r in rec]
    assert np.all(np.diff(fx) <= 1e-12)
    assert int(res.work[n - 1]) == int(res.total_inner_iters) + int(res.total_cg_iters)
    assert np.isnan(res.errors[n:]).all()


def test_power_iteration_estimate_and_pytrees():
  with jax.enable_x64(True):
    outer, inner, prob, consts, x_star, *_ = _quadratic(seed=13)
    # Split x into a dict pytree; cross_norm=None estimates ||B|| by power iteration.
    o = lambda x, y: outer(jnp.concatenate([x["a"], x["b"]]), y)  # noqa: E731
    i = lambda x, y: inner(jnp.concatenate([x["a"], x["b"]]), y)  # noqa: E731
    x0 = {"a": jnp.zeros(1), "b": jnp.zeros(2)}
    res = maid(
      o, i, x0, jnp.zeros(5), mu=consts["mu"], max_iterations=300, tol=1e-7,
      learning_rate=1.0, rho=0.5, nu=1.25, eta=1e-2, outer_smoothness=consts["lf"],
      inner_learning_rate=1.0 / consts["lg"],
    )  # fmt: skip
    assert bool(res.converged)
    np.testing.assert_allclose(np.concatenate([res.x["a"], res.x["b"]]), x_star, atol=1e-4)
    # The estimated ||B|| is the exact one here (a constant matrix, 20 power steps).
    b_mu = consts["bnorm"] / consts["mu"]
    ratio = res.bounds[0] / (b_mu * res.deltas[0] + consts["lf"] * b_mu * res.epsilons[0])
    np.testing.assert_allclose(ratio, 1.0, rtol=1e-6)


def test_a_custom_inner_solver_is_used_and_counted():
  with jax.enable_x64(True):
    outer, inner, prob, consts, x_star, _, y_star = _quadratic(seed=14)
    a2, a3, b2 = (jnp.asarray(prob[k]) for k in ("a2", "a3", "b2"))

    def exact(x, y, eps):  # a direct solve: one "iteration"
      return jnp.linalg.solve(a2.T @ a2, a2.T @ (b2 - a3 @ x)), jnp.int32(1)

    res = maid(
      outer, inner, jnp.zeros(3), jnp.zeros(5), mu=consts["mu"], max_iterations=300,
      tol=1e-6, learning_rate=1.0, rho=0.5, eta=1e-2, outer_smoothness=consts["lf"],
      cross_norm=consts["bnorm"], inner_solver=exact,
    )  # fmt: skip
    assert bool(res.converged)
    np.testing.assert_allclose(res.x, x_star, atol=1e-4)
    assert int(res.total_inner_iters) >= int(res.n_iters)
