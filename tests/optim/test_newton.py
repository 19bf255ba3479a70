"""Gradient-regularized Newton (Semenov, Jaggi, Doikov, arXiv:2506.13710) vs a float64
NumPy transcription of Algorithm 1 (dense Hessian, Cholesky solve, the official search)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

import optim
from optim.curvature import LinearOperator

STEPS = 20


def _logreg(rng, n=40, d=5, mu=1e-3):
  x = rng.normal(size=(n, d))
  y = (rng.uniform(size=n) < 1 / (1 + np.exp(-x @ rng.normal(size=d)))).astype(float)
  s = 2 * y - 1

  def f(w, xp=jnp):
    z = -s * (x @ w)
    return xp.mean(xp.logaddexp(0.0, z)) + 0.5 * mu * w @ w

  def grad(w):
    sig = 1 / (1 + np.exp(s * (x @ w)))
    return -(x.T @ (s * sig)) / n + mu * w

  def hess(w):
    p = 1 / (1 + np.exp(-(x @ w)))
    return (x.T * (p * (1 - p))) @ x / n + mu * np.eye(d)

  return f, grad, hess, x


def _transcription(
  f, grad, hess, x0, steps, gamma0=1.0, adaptive=True, hess_fixed=None, warnings=False
):
  """Algorithm 1 as the official code runs it, float64 NumPy: ``grad_norm_smooth`` of
  github.com/epfml/grad-norm-smooth, ``src/methods.py`` lines 11-122 (search: lines 83-120),
  with its defaults ``eps=1e-8``, ``gamma_min=1e-9`` and ``warnings=False``. Its search loop
  runs ``range(40 + 1)`` and stops early at ``i == 40`` only when ``warnings`` is set, so by
  default a step makes up to 41 trials; when all fail it takes the last trial's step and
  leaves gamma halved once more (``gamma0 * 2**-41``). Returns the iterates, the gammas and
  the trials of each step."""
  x, fk, gk, gamma = x0.copy(), f(x0, np), grad(x0), gamma0
  xs, gammas, tries = [x.copy()], [gamma], []
  for _ in range(steps):
    h = hess(x) if hess_fixed is None else hess_fixed
    gnorm = np.linalg.norm(gk)
    adaptive_search_max_iter, n = 40, 0
    for i in range(adaptive_search_max_iter + 1):
      if i == adaptive_search_max_iter and warnings:
        break
      lam = gnorm / (gamma + 1e-8)
      delta = scipy.linalg.cho_solve(scipy.linalg.cho_factor(h + lam * np.eye(len(x))), -gk)
      n += 1
      fn, gn = f(x + delta, np), grad(x + delta)
      if not adaptive:
        break
      if fk - fn >= gn @ gn / (8 * lam):
        gamma = max(gamma * 2.0, 1e-9)
        break
      gamma *= 0.5
    x, fk, gk = x + delta, fn, gn
    xs.append(x.copy())
    gammas.append(gamma)
    tries.append(n)
  return np.array(xs), np.array(gammas), np.array(tries)


@pytest.mark.parametrize(
  "variant,gamma0",
  [
    # The fast suite runs the optax form's step-by-step transcription below instead.
    pytest.param("adaptive", 1.0, marks=pytest.mark.slow),
    pytest.param("adaptive", 50.0, marks=pytest.mark.slow),
    pytest.param("fixed", 0.5, marks=pytest.mark.slow),
  ],
)
def test_minimize_matches_float64_transcription_over_20_steps(x64, variant, gamma0):
  rng = np.random.default_rng(0)
  f, grad, hess, _ = _logreg(rng)
  x0 = rng.normal(size=5) * 3
  want, want_gamma, _ = _transcription(f, grad, hess, x0, STEPS, gamma0, variant == "adaptive")
  res = optim.loops.reg_newton_minimize(
    f, jnp.asarray(x0), max_iterations=STEPS, gamma=gamma0, variant=variant, cg_tol=1e-14
  )
  assert int(res.n_iters) == STEPS
  # Compare the path while it is far from round-off (the last steps sit at the optimum).
  err = np.abs(np.asarray(res.params) - want[-1]).max() / np.abs(want[-1]).max()
  assert err <= 1e-6
  # Once the gradient is at round-off level, acceptance is decided by round-off: compare
  # the gamma path up to there only.
  live = np.array([np.linalg.norm(grad(w)) > 1e-8 for w in want])
  k = int(np.argmin(live)) if not live.all() else len(live)
  assert k >= 5
  np.testing.assert_allclose(np.asarray(res.gammas)[:k], want_gamma[:k], rtol=1e-6)


def test_optax_form_follows_the_same_path_with_approximate_hessian(x64):
  rng = np.random.default_rng(1)
  f, grad, hess, x = _logreg(rng)
  bound = x.T @ x / (4 * len(x)) + 1e-3 * np.eye(5)  # the fixed logistic-loss upper bound
  op = lambda p: LinearOperator(lambda v: jnp.asarray(bound) @ v, p)
  x0 = rng.normal(size=5)
  want, want_gamma, _ = _transcription(f, grad, hess, x0, STEPS, hess_fixed=bound)
  opt = optim.reg_newton(1.0, cg_tol=1e-14)
  step = jax.jit(lambda p, s: opt.update(jax.grad(f)(p), s, p, obj_fn=f, hessian_fn=op))
  p, state = jnp.asarray(x0), opt.init(jnp.asarray(x0))
  for k in range(STEPS):
    u, state = step(p, state)
    p = optax.apply_updates(p, u)
    np.testing.assert_allclose(np.asarray(p), want[k + 1], rtol=1e-6, atol=1e-9)
    if np.linalg.norm(grad(want[k])) > 1e-6:
      assert float(state[0].gamma) == pytest.approx(want_gamma[k + 1], rel=1e-6)
  assert step._cache_size() == 1


@pytest.mark.slow
def test_converges_faster_than_gradient_descent_on_softmax_regression():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(60, 4)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, 60))
  f = lambda w: (
    optax.softmax_cross_entropy_with_integer_labels(x @ w, y).mean() + 1e-3 * jnp.sum(w**2)
  )
  res = optim.loops.reg_newton_minimize(f, jnp.zeros((4, 3)), max_iterations=30, tol=1e-5)
  assert bool(res.errors[res.n_iters] <= 1e-5) and int(res.n_iters) < 30
  w = jnp.zeros((4, 3))
  for _ in range(int(res.n_iters)):
    w = w - 0.5 * jax.grad(f)(w)
  assert float(jnp.linalg.norm(jax.grad(f)(w))) > 10 * 1e-5


@pytest.mark.slow
def test_zero_gradient_takes_the_zero_step():
  f = lambda p: jnp.sum((p - 1.0) ** 2)
  res = optim.loops.reg_newton_minimize(f, jnp.ones(3), max_iterations=3)
  np.testing.assert_array_equal(np.asarray(res.params), np.ones(3))
  assert np.isfinite(np.asarray(res.values[: int(res.n_iters) + 1])).all()


def _exhausted_search_problem():
  """f = ||x||^2 / 2 with the zero matrix as its approximate Hessian and gamma0 = 1e15: the
  step -gamma g / ||g|| overshoots for every gamma in [1e15 * 2**-40, 1e15], so the first
  search fails all its trials; the later steps are accepted."""
  f = lambda w, xp=jnp: 0.5 * xp.sum(w**2)
  grad, hess = lambda w: w, lambda w: np.zeros((len(w), len(w)))
  return f, grad, hess, np.array([0.6, -0.8]), 1e15


def test_exhausted_search_makes_the_official_41_trials_and_takes_the_last(x64):
  f, grad, hess, x0, gamma0 = _exhausted_search_problem()
  want, want_gamma, want_tries = _transcription(f, grad, hess, x0, 6, gamma0)
  assert want_tries[0] == 41 and want_gamma[1] == gamma0 * 2.0**-41
  # The official code with warnings=True stops at 40 (this module's behaviour before).
  _, old_gamma, old_tries = _transcription(f, grad, hess, x0, 1, gamma0, warnings=True)
  assert old_tries[0] == 40 and old_gamma[1] == gamma0 * 2.0**-40
  zero = lambda p: LinearOperator(lambda v: 0.0 * v, p)
  res = optim.loops.reg_newton_minimize(
    f, jnp.asarray(x0), max_iterations=6, gamma=gamma0, hessian_fn=zero
  )
  np.testing.assert_array_equal(np.asarray(res.tries)[:6], want_tries)
  np.testing.assert_allclose(np.asarray(res.gammas), want_gamma, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(res.params), want[-1], rtol=1e-10)
  # The optax form: the same first step, trial count and gamma.
  opt = optim.scale_by_reg_newton(gamma=gamma0)
  p = jnp.asarray(x0)
  u, state = opt.update(p, opt.init(p), p, obj_fn=f, hessian_fn=zero)
  np.testing.assert_allclose(np.asarray(p + u), want[1], rtol=1e-12)
  assert int(state.tries) == 41 and float(state.gamma) == gamma0 * 2.0**-41
