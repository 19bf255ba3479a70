"""Small-Gain Nash: the matrix-free bounds and certificate against the dense Jacobian blocks
(float64), the certified per-step factors against the observed contraction of Euler and RK4
on a quadratic game, a NumPy transcription of both flows over 15 steps, the projected flow,
and a pure bilinear game that is not certified."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim.games import (
  GameBounds,
  contraction_factor,
  game_bounds,
  nash_flow,
  pseudo_gradient,
  small_gain_certificate,
)


def _quadratic_game(seed=0, d1=3, d2=2, coupling=(2.0, 0.1)):
  """f_i = 0.5 x_i' A_i x_i + x_i' B_ij x_j + c_i' x_i; strongly convex blocks, a strong
  one-way coupling (not monotone in the Euclidean metric) that SGN certifies."""
  rng = np.random.default_rng(seed)
  q1, q2 = np.linalg.qr(rng.normal(size=(d1, d1)))[0], np.linalg.qr(rng.normal(size=(d2, d2)))[0]
  A1 = q1 @ np.diag(np.linspace(1.0, 2.0, d1)) @ q1.T
  A2 = q2 @ np.diag(np.linspace(0.8, 1.5, d2)) @ q2.T
  B12 = coupling[0] * np.linalg.qr(rng.normal(size=(d1, d1)))[0][:, :d2]
  B21 = coupling[1] * rng.normal(size=(d2, d1)) / np.sqrt(d1)
  c1, c2 = rng.normal(size=d1), rng.normal(size=d2)
  f1 = lambda p: 0.5 * p[0] @ A1 @ p[0] + p[0] @ B12 @ p[1] + c1 @ p[0]  # noqa: E731
  f2 = lambda p: 0.5 * p[1] @ A2 @ p[1] + p[1] @ B21 @ p[0] + c2 @ p[1]  # noqa: E731
  J = np.block([[A1, B12], [B21, A2]])
  xstar = np.linalg.solve(J, -np.concatenate([c1, c2]))
  return [f1, f2], (jnp.zeros(d1), jnp.zeros(d2)), J, xstar


def _dense_certificate(losses, params):
  flat = lambda p: pseudo_gradient(losses, p)  # noqa: E731
  jac = jax.jacobian(flat)(params)
  n = len(params)
  mu = np.array([np.linalg.eigvalsh(np.asarray(jac[i][i])).min() for i in range(n)])
  N = np.array([[np.linalg.norm(np.asarray(jac[i][j]), 2) for j in range(n)] for i in range(n)])
  off = N * (1 - np.eye(n))
  gain = off / mu[:, None]
  rho = np.max(np.abs(np.linalg.eigvals(gain)))
  C = np.diag(mu) - off
  w = np.linalg.solve(C.T, np.ones(n)) / np.linalg.solve(C, np.ones(n))
  w = w * n / w.sum()
  s = np.sqrt(w)
  S = s[:, None] * C / s[None, :]
  alpha = np.linalg.eigvalsh(0.5 * (S + S.T))[0]
  lw = np.linalg.norm(s[:, None] * N / s[None, :], 2)
  return mu, N, rho, w, alpha, lw


@pytest.mark.integration  # heavy (3-7 s each): CI's second tier keeps make test within 5 min
def test_bounds_and_certificate_match_the_dense_jacobian_blocks(x64):
  losses, params, J, _ = _quadratic_game()
  mu, N, rho, w, alpha, lw = _dense_certificate(losses, params)
  b = game_bounds(losses, params, key=0, num_iterations=5)
  np.testing.assert_allclose(b.curvature, mu, rtol=1e-10)
  np.testing.assert_allclose(b.block_norms, N, rtol=1e-10)
  c = small_gain_certificate(b)
  assert bool(c.certified) and rho < 1
  np.testing.assert_allclose(c.spectral_radius, rho, rtol=1e-10)
  np.testing.assert_allclose(c.weights, w, rtol=1e-9)
  np.testing.assert_allclose(c.rate, alpha, rtol=1e-9)
  np.testing.assert_allclose(c.lipschitz, lw, rtol=1e-9)
  assert c.rate > 0
  # The game is not monotone in the Euclidean metric: SGN certifies what Rosen's test cannot.
  assert np.linalg.eigvalsh(0.5 * (J + J.T))[0] < 0


@pytest.mark.parametrize("variant", ["euler", "rk4"])
def test_certified_factor_bounds_the_observed_contraction(x64, variant):
  losses, params, _, xstar = _quadratic_game()
  c = small_gain_certificate(game_bounds(losses, params, key=0, num_iterations=5))
  h = float(c.max_step_size) / 2 if variant == "euler" else 0.05
  q = float(contraction_factor(c, h, variant=variant))
  assert q < 1
  w = np.asarray(c.weights)
  wnorm = lambda x: np.sqrt(
    w[0] * np.sum((x[0] - xstar[:3]) ** 2) + w[1] * np.sum((x[1] - xstar[3:]) ** 2)
  )  # noqa: E731
  x = params
  d0 = wnorm(x)
  step = jax.jit(
    lambda x: nash_flow(losses, x, step_size=h, max_iterations=1, variant=variant).params
  )
  for k in range(1, 11):
    x = step(x)
    assert wnorm(x) <= q**k * d0 * (1 + 1e-12)
  res = nash_flow(losses, params, step_size=h, max_iterations=2000, tol=1e-9, variant=variant)
  assert bool(res.converged)
  np.testing.assert_allclose(np.concatenate(res.params), xstar, atol=1e-8)


def _numpy_flow(J, b, x0, h, steps, variant, lo=None):
  F = lambda x: J @ x + b  # noqa: E731
  x, out = x0.copy(), []
  for _ in range(steps):
    if variant == "euler":
      inc = F(x)
    else:
      k1 = F(x)
      k2 = F(x - h / 2 * k1)
      k3 = F(x - h / 2 * k2)
      k4 = F(x - h * k3)
      inc = (k1 + 2 * k2 + 2 * k3 + k4) / 6
    x = x - h * inc
    if lo is not None:
      x[:3] = np.maximum(x[:3], lo)
    out.append(x.copy())
  return np.array(out)


@pytest.mark.parametrize("variant", ["euler", "rk4"])
@pytest.mark.parametrize("projected", [False, True])
def test_matches_numpy_transcription_over_15_steps(x64, variant, projected):
  losses, params, J, xstar = _quadratic_game()
  b = -J @ xstar
  lo = 0.1 if projected else None
  ref = _numpy_flow(J, b, np.zeros(5), 0.1, 15, variant, lo)
  proj = [lambda x: jnp.maximum(x, 0.1), None] if projected else None
  x, ours = params, []
  step = jax.jit(
    lambda x: (
      nash_flow(losses, x, step_size=0.1, max_iterations=1, variant=variant, projection=proj).params
    )
  )
  for _ in range(15):
    x = step(x)
    ours.append(np.concatenate(x))
  np.testing.assert_allclose(np.array(ours), ref, rtol=1e-12, atol=1e-13)
  res = nash_flow(
    losses, params, step_size=0.1, max_iterations=15, variant=variant, projection=proj
  )
  np.testing.assert_allclose(np.concatenate(res.params), ref[-1], rtol=1e-12, atol=1e-13)
  assert int(res.n_iters) == 15 and res.errors.shape == (15,)
  np.testing.assert_allclose(res.errors[-1], np.linalg.norm(ref[-1] - ref[-2]) / 0.1, rtol=1e-10)


def test_pure_bilinear_game_is_not_certified(x64):
  # min_x max_y x'By: no curvature, the Euler flow spirals outwards.
  B = jnp.array([[1.0, 0.5], [0.0, 1.0]])
  losses = [lambda p: p[0] @ B @ p[1], lambda p: -(p[0] @ B @ p[1])]
  params = (jnp.ones(2), jnp.ones(2))
  b = game_bounds(losses, params, key=1, num_iterations=2)
  np.testing.assert_allclose(b.curvature, 0.0, atol=1e-12)
  c = small_gain_certificate(b)
  assert not bool(c.certified)
  assert np.isinf(c.spectral_radius) and float(c.max_step_size) == 0.0
  assert float(contraction_factor(c, 0.1)) >= 1.0
  res = nash_flow(losses, params, step_size=0.1, max_iterations=50)
  assert np.all(np.diff(np.asarray(res.errors)) > 0)


def test_weights_outside_the_band_lose_the_certificate_rate(x64):
  # Two players, mu = (1, 1), couplings L12 = 3, L21 = 0.1: rho = sqrt(0.3) < 1. Equal
  # weights give no contraction (the Euclidean metric), the M-matrix weights do.
  b = GameBounds(jnp.array([1.0, 1.0]), jnp.array([[1.0, 3.0], [0.1, 1.0]]))
  assert float(small_gain_certificate(b, weights=jnp.ones(2)).rate) < 0
  c = small_gain_certificate(b)
  assert bool(c.certified) and float(c.rate) > 0
  # Best possible rate for two players: 1 - sqrt(L12 L21) at w2 / w1 = L12 / L21.
  best = small_gain_certificate(b, weights=jnp.array([0.1, 3.0]))
  np.testing.assert_allclose(best.rate, 1 - np.sqrt(0.3), rtol=1e-12)
