"""optim.constrained.eal_sketch_minimize (AdaSketch-Newton, arXiv:2305.18379).

* a float64 NumPy transcription of the method (the official code's loop, with the paper's
  exact merit gradient and the true initial residual: the two documented departures),
  replaying the same sketches, matched over >= 10 Newton steps;
* exact testbeds: an equality-constrained QP whose KKT point solves a linear system, and
  Hock-Schittkowski problems 6, 7 and 28 with known solutions;
* the local rate: the KKT residual falls superlinearly (quadratically on HS7).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim._constrained_sketch import _draw_sketch, _merit_fns
from optim.constrained import EALSketchResult, eal_sketch_minimize


# Module-level functions: the solver compiles once per (objective, constraint, options),
# so tests that share a problem share its compilation.
def f6(x):
  return (1.0 - x[0]) ** 2


def c6(x):
  return jnp.array([10.0 * (x[1] - x[0] ** 2)])


def f7(x):
  return jnp.log(1.0 + x[0] ** 2) - x[1]


def c7(x):
  return jnp.array([(1.0 + x[0] ** 2) ** 2 + x[1] ** 2 - 4.0])


def f28(x):
  return (x[0] + x[1]) ** 2 + (x[1] + x[2]) ** 2


def c28(x):
  return jnp.array([x[0] + 2.0 * x[1] + 3.0 * x[2] - 1.0])


def hs6():
  return f6, c6, np.array([-1.2, 1.0]), np.array([1.0, 1.0])


def hs7():
  return f7, c7, np.array([2.0, 2.0]), np.array([0.0, np.sqrt(3.0)])


def hs28():
  return f28, c28, np.array([-4.0, 1.0, 1.0]), np.array([0.5, -0.5, 0.5])


def _qp(seed=0, n=5, m=2):
  rng = np.random.default_rng(seed)
  g = rng.normal(size=(n, n))
  q = g @ g.T + n * np.eye(n)
  p = rng.normal(size=n)
  a = rng.normal(size=(m, n))
  b = rng.normal(size=m)
  kkt = np.block([[q, a.T], [a, np.zeros((m, m))]])
  sol = np.linalg.solve(kkt, -np.concatenate([p, -b]))
  f = lambda x: 0.5 * x @ (jnp.asarray(q) @ x) + jnp.asarray(p) @ x  # noqa: E731
  c = lambda x: jnp.asarray(a) @ x - jnp.asarray(b)  # noqa: E731
  return f, c, sol[:n], sol[n:]


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _draws(key, k, count, size, sketch_size, variant):
  return jax.vmap(lambda t: _draw_sketch(key, k, t, size, sketch_size, variant))(jnp.arange(count))


def reference(
  f,
  c,
  x0,
  *,
  key,
  max_iterations,
  tol,
  sketch_size,
  variant,
  mu=1.0,
  nu=0.1,
  delta=0.1,
  xi_b=0.1,
  beta=0.1,
  rho=1.5,
  sketch_max_iterations=100_000,
  linesearch_max_iterations=60,
):
  """A NumPy float64 transcription of AdaSketchNewton{RK,GV}.jl (see the module docstring)."""
  x = np.asarray(x0, float)
  n = x.size
  m = np.asarray(c(jnp.asarray(x))).size
  lam = np.zeros(m)
  key = jax.random.key(key) if isinstance(key, int) else key
  lag = lambda x_, l_: f(x_) + l_ @ c(x_)  # noqa: E731
  d_grad, d_hess = jax.jit(jax.grad(lag)), jax.jit(jax.hessian(lag))
  d_jac, d_c, d_f = jax.jit(jax.jacobian(c)), jax.jit(c), jax.jit(f)
  grad_l = lambda x_, l_: np.asarray(d_grad(jnp.asarray(x_), jnp.asarray(l_)))  # noqa: E731
  hess_l = lambda x_, l_: np.asarray(d_hess(jnp.asarray(x_), jnp.asarray(l_)))  # noqa: E731
  jac = lambda x_: np.asarray(d_jac(jnp.asarray(x_)))  # noqa: E731
  cv = lambda x_: np.asarray(d_c(jnp.asarray(x_)))  # noqa: E731
  fv = lambda x_: float(d_f(jnp.asarray(x_)))  # noqa: E731

  def merit(x_, l_, eta1, eta2):
    c_, g_ = cv(x_), grad_l(x_, l_)
    return fv(x_) + c_ @ l_ + eta1 / 2 * c_ @ c_ + eta2 / 2 * g_ @ g_

  eta1, eta2 = mu, nu
  kkts = [np.linalg.norm(np.concatenate([grad_l(x, lam), cv(x)]))]
  sk_its, alphas = [], []
  k = 0
  while kkts[-1] > tol and k < max_iterations:
    g, c_k, gk, h = grad_l(x, lam), cv(x), jac(x), hess_l(x, lam)
    xi_g = np.linalg.eigvalsh(gk @ gk.T)[0]
    q, _ = np.linalg.qr(gk.T, mode="complete")
    z = q[:, m:]
    t_k = xi_b + np.linalg.norm(h) if m < n and np.linalg.eigvalsh(z.T @ h @ z)[0] < 1e-6 else 0
    bk = h + t_k * np.eye(n)
    psi = 20 * max(np.linalg.norm(bk) ** 2, 1) / (min(xi_g, 1) * min(xi_b, 1))
    ups = max(np.linalg.norm(gk), np.linalg.norm(h), 1)
    trial = lambda e1, e2: (0.5 - beta) * e2 / ((1 + e1 + e2) * ups**2 * psi**2)  # noqa: E731
    delta = max(min(delta, trial(eta1, eta2)), 1e-6)
    a = np.block([[bk, gk.T], [gk, np.zeros((m, m))]])
    b = -np.concatenate([g, c_k])
    sk = (
      None
      if variant == "exact"
      else np.asarray(_draws(key, k, sketch_max_iterations * 60, n + m, sketch_size, variant))
    )
    newdir, r, tt = np.zeros(n + m), -b, 0
    while True:
      if variant == "exact":
        newdir = np.linalg.solve(a, b)
      else:
        t = 0
        while np.linalg.norm(a, "fro") * psi * np.linalg.norm(r) > delta * np.linalg.norm(b) and (
          t < sketch_max_iterations
        ):
          s = sk[tt]
          w = a @ s
          wtw = w.T @ w
          if sketch_size == 1:
            y = (s.T @ r) / wtw[0, 0] if wtw[0, 0] > 0 else np.zeros(1)
          else:
            y = np.linalg.pinv(wtw, rcond=sketch_size * np.finfo(float).eps, hermitian=True) @ (
              s.T @ r
            )
          newdir = newdir - w @ y
          r = a @ newdir - b
          t += 1
          tt += 1
      grad_aug = np.concatenate([g + eta2 * h @ g + eta1 * gk.T @ c_k, c_k + eta2 * gk @ g])
      slope = grad_aug @ newdir
      if eta1 > 1e8 or eta2 < 1e-8 or not slope > -(eta2 / 2) * b @ b:
        break
      eta1, eta2 = eta1 * rho**2, eta2 / rho
      delta = max(min(delta / rho**4, trial(eta1, eta2)), 1e-6)
    m0 = merit(x, lam, eta1, eta2)
    alpha, i = 1.0, 0
    while (
      merit(x + alpha * newdir[:n], lam + alpha * newdir[n:], eta1, eta2)
      > (m0 + alpha * beta * slope)
      and i < linesearch_max_iterations
    ):
      alpha, i = alpha / 2, i + 1
    x, lam = x + alpha * newdir[:n], lam + alpha * newdir[n:]
    k += 1
    sk_its.append(tt)
    alphas.append(alpha)
    kkts.append(np.linalg.norm(np.concatenate([grad_l(x, lam), cv(x)])))
  return x, lam, np.array(kkts), np.array(sk_its), np.array(alphas), eta1, eta2


@pytest.mark.parametrize("variant,sketch_size", [("kaczmarz", 1), ("gaussian", 2), ("exact", 1)])
def test_float64_transcription_over_ten_newton_steps(variant, sketch_size):
  with jax.enable_x64(True):
    f, c, _, _ = hs7()
    x0 = np.array([5.0, 5.0])  # farther than HS7's start: >= 10 Newton steps
    kw = dict(
      key=3,
      max_iterations=12,
      tol=1e-10,
      sketch_size=sketch_size,
      variant=variant,
      sketch_max_iterations=400,
    )
    res = eal_sketch_minimize(f, c, jnp.asarray(x0), **kw)
    x, lam, kkts, sk_its, alphas, mu, nu = reference(f, c, x0, **kw)
    k = int(res.n_iters)
    assert k == len(alphas) and k >= 10
    np.testing.assert_array_equal(np.asarray(res.sketch_iterations[:k]), sk_its)
    np.testing.assert_array_equal(np.asarray(res.stepsizes[:k]), alphas)
    np.testing.assert_allclose(np.asarray(res.errors[: k + 1]), kkts, rtol=1e-8, atol=1e-13)
    np.testing.assert_allclose(np.asarray(res.x), x, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(res.multipliers), lam, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose([float(res.mu), float(res.nu)], [mu, nu], rtol=1e-12)
    assert np.all(np.isnan(np.asarray(res.errors[k + 1 :])))


def test_penalty_update_path_matches_the_transcription():
  # A small initial mu fails the descent condition: mu and nu are updated.
  with jax.enable_x64(True):
    f, c, x0, _ = hs7()
    kw = dict(
      key=0,
      max_iterations=10,
      tol=1e-10,
      sketch_size=1,
      variant="gaussian",
      sketch_max_iterations=300,
      mu=1e-3,
    )
    res = eal_sketch_minimize(f, c, jnp.asarray(x0), **kw)
    x, lam, kkts, sk_its, alphas, mu, nu = reference(f, c, x0, **kw)
    k = int(res.n_iters)
    assert mu > 1.0, "the case must exercise the penalty update"
    np.testing.assert_array_equal(np.asarray(res.sketch_iterations[:k]), sk_its)
    np.testing.assert_allclose(np.asarray(res.errors[: k + 1]), kkts, rtol=1e-8, atol=1e-13)
    np.testing.assert_allclose([float(res.mu), float(res.nu)], [mu, nu], rtol=1e-12)


@pytest.mark.parametrize("variant", ["kaczmarz", "gaussian"])
def test_qp_converges_to_its_kkt_point_at_a_superlinear_rate(variant):
  with jax.enable_x64(True):
    f, c, x_star, lam_star = _qp()
    res = eal_sketch_minimize(f, c, jnp.zeros(5), key=1, tol=1e-11, variant=variant)
    assert isinstance(res, EALSketchResult) and bool(res.converged)
    np.testing.assert_allclose(np.asarray(res.x), x_star, atol=1e-10)
    np.testing.assert_allclose(np.asarray(res.multipliers), lam_star, atol=1e-10)
    e = np.asarray(res.errors[: int(res.n_iters) + 1])
    # One inexact Newton step on a QP contracts the KKT residual by the solver's accuracy
    # (relative residual <= delta / (||K|| psi) <= 1e-6 / 20): far faster than linear.
    assert np.all(e[1:] / e[:-1] < 1e-6), e
    assert np.all(np.asarray(res.stepsizes[: int(res.n_iters)]) == 1.0)
    assert int(res.sketch_iterations[0]) > 0


@pytest.mark.parametrize("problem", [hs6, hs7, hs28], ids=["hs6", "hs7", "hs28"])
def test_hock_schittkowski_known_solutions(problem):
  with jax.enable_x64(True):
    f, c, x0, x_star = problem()
    res = eal_sketch_minimize(f, c, jnp.asarray(x0), key=0, tol=1e-9, sketch_max_iterations=20_000)
    assert bool(res.converged) and not bool(res.singular)
    np.testing.assert_allclose(np.asarray(res.x), x_star, atol=1e-7)


def test_local_rate_is_quadratic_on_hs7():
  with jax.enable_x64(True):
    f, c, x0, _ = hs7()
    res = eal_sketch_minimize(f, c, jnp.asarray(x0), key=0, tol=1e-12, variant="gaussian")
    k = int(res.n_iters)
    e = np.asarray(res.errors[: k + 1])
    tail = e[-4:]  # the unit-step phase: e_{j+1} <= C e_j^2 with a moderate C
    assert np.all(np.asarray(res.stepsizes[k - 3 : k]) == 1.0)
    assert np.all(tail[1:] <= 1.0 * tail[:-1] ** 2), tail
    assert np.all(tail[1:] / tail[:-1] < 0.1)


def test_exact_variant_takes_no_sketch_iterations_and_matches_the_sketched_path():
  with jax.enable_x64(True):
    f, c, x0, x_star = hs7()
    exact = eal_sketch_minimize(f, c, jnp.asarray(x0), key=0, tol=1e-9, variant="exact")
    sk = eal_sketch_minimize(f, c, jnp.asarray(x0), key=0, tol=1e-9, variant="gaussian")
    assert int(jnp.sum(exact.sketch_iterations)) == 0
    assert int(exact.n_iters) == int(sk.n_iters)
    np.testing.assert_allclose(np.asarray(exact.x), x_star, atol=1e-9)


@pytest.mark.integration  # heavy (3-7 s each): CI's second tier keeps make test within 5 min
def test_singular_jacobian_stops_without_a_step():
  with jax.enable_x64(True):
    f = lambda x: jnp.sum(x**2)  # noqa: E731
    c = lambda x: jnp.array([x[0] ** 2 - 1.0])  # noqa: E731  (G = 0 at x0 = 0)
    res = eal_sketch_minimize(f, c, jnp.zeros(2), key=0)
    assert bool(res.singular) and not bool(res.converged) and int(res.n_iters) == 0
    np.testing.assert_array_equal(np.asarray(res.x), np.zeros(2))


def test_jit_and_float32():
  f, c, x0, x_star = hs28()
  run = jax.jit(lambda x: eal_sketch_minimize(f, c, x, key=0, tol=1e-3, variant="gaussian"))
  res = run(jnp.asarray(x0, jnp.float32))
  assert res.x.dtype == jnp.float32 and bool(res.converged)
  np.testing.assert_allclose(np.asarray(res.x), x_star, atol=1e-3)


def test_merit_gradient_is_the_exact_gradient_of_the_augmented_lagrangian():
  # The paper's merit gradient has (Hessian of the Lagrangian) grad_x L; the official code
  # multiplies by the objective's Hessian instead (equal only for linear constraints).
  with jax.enable_x64(True):
    _, _, merit, merit_grad = _merit_fns(f7, c7)
    x, lam = jnp.array([0.7, -1.3]), jnp.array([0.4])
    auto = jax.grad(lambda z: merit(z[:2], z[2:], 2.0, 0.3))(jnp.concatenate([x, lam]))
    np.testing.assert_allclose(
      np.asarray(merit_grad(x, lam, 2.0, 0.3)), np.asarray(auto), rtol=1e-12
    )


class _Unhashable:
  """A callable objective with ``__eq__`` and no ``__hash__`` (cannot be a static jit arg)."""

  def __eq__(self, other):
    return self is other

  __hash__ = None

  def __call__(self, x):
    return f28(x)


def test_unhashable_callables_are_accepted():
  f, c, x0, x_star = hs28()
  res = eal_sketch_minimize(_Unhashable(), c, jnp.asarray(x0, jnp.float32), key=0, tol=1e-3)
  assert bool(res.converged)
  np.testing.assert_allclose(np.asarray(res.x), x_star, atol=1e-3)
