"""Values at non-default settings, where the value is known in closed form.

A test at a hyperparameter's default cannot tell the hyperparameter from a constant: a
clip fixed at 1, a probe normalisation that is only right for Rademacher probes, a
threshold hard-coded to its paper value all pass it. Each test here sets the
hyperparameter away from its default and checks the value against a formula written
out in the test (float64 NumPy), chosen so that the default's value would differ.

Covered (optimizer / estimator: hyperparameter at a non-default value):

* Sophia: ``clip_threshold`` (0.25, 2.5, inf), ``eps`` (1.0), ``probe="gaussian"``;
* Hutchinson diagonal and trace: ``probe="gaussian"`` (estimate = the ratio of sums over
  the very probes drawn, recorded from inside the operator);
* diffGrad: ``b1`` and ``eps`` (the generic transcription fixes them at the defaults);
* AdamP: ``delta`` (the projection threshold) with ``wd_ratio``;
* TrAct: ``lam`` (1.0, 3.0, 0.01);
* DIFF2: ``diff_noise_multiplier`` apart from ``noise_multiplier``;
* regularized Newton: ``search_max_iterations`` (an exhausted search).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim
from optim import curvature

# ---------------------------------------------------------------------------------------
# Sophia (Liu et al., arXiv:2305.14342, Algorithm 3) at clip_threshold != 1.

# One step from theta0 on f = sum(0.5 a theta^2 - b theta): with b1 = b2 = 0.5 and gamma = 1
# the first step has m = g / 2, h = a / 2 (the Rademacher estimate is exact on a diagonal
# Hessian), so the ratio m / max(gamma h, eps) is g / a: b is chosen to give these ratios.
_RATIOS = np.array([-6.0, -2.0, -0.5, 0.1, 1.0, 2.0, 3.0, 0.75])
_A = np.array([1.0, 2.0, 0.5, 4.0, 1.0, 3.0, 0.25, 2.0])
_THETA0 = np.array([0.3, -1.0, 2.0, 0.5, -0.2, 1.5, -0.7, 0.1])
_B = _A * _THETA0 - _RATIOS * _A  # g = a theta0 - b = ratio * a


def _sophia_first_step(rho, **kw):
  f = lambda p: jnp.sum(0.5 * jnp.asarray(_A) * p**2 - jnp.asarray(_B) * p)
  opt = optim.scale_by_sophia(
    b1=0.5, b2=0.5, gamma=1.0, update_interval=1, clip_threshold=rho, key=0, **kw
  )
  p = jnp.asarray(_THETA0)
  u, state = opt.update(jax.grad(f)(p), opt.init(p), p, obj_fn=f)
  return np.asarray(u), float(state.win_rate)


@pytest.mark.parametrize("rho", [0.25, 2.5, np.inf])
def test_sophia_clips_at_clip_threshold_not_at_one(x64, rho):
  u, win_rate = _sophia_first_step(rho)
  np.testing.assert_allclose(u, np.clip(_RATIOS, -rho, rho), rtol=1e-12)
  # The win rate counts the coordinates below the threshold: |ratio| < rho.
  assert win_rate == pytest.approx(np.mean(np.abs(_RATIOS) < rho))


def test_sophia_trajectory_at_clip_threshold_half_matches_algorithm3(x64):
  """20 steps, k = 3, decoupled decay, rho = 0.5: a float64 transcription of Algorithm 3
  with the clip at rho (the chained alias, as users build it)."""
  lr, b1, b2, gamma, k, wd, rho = 0.05, 0.9, 0.5, 0.5, 3, 0.1, 0.5
  a = np.array([2.0, 0.5, -1.0, 4.0, 1e-3])
  b = np.array([0.4, -1.2, 0.3, 2.0, -0.5])
  theta = np.array([0.9, -0.4, 1.1, -0.6, 0.2])
  f = lambda p: jnp.sum(0.5 * jnp.asarray(a) * p**2 - jnp.asarray(b) * p)
  opt = optim.sophia(
    lr, b1=b1, b2=b2, gamma=gamma, update_interval=k, weight_decay=wd, clip_threshold=rho, key=1
  )
  step = jax.jit(lambda p, s: opt.update(jax.grad(f)(p), s, p, obj_fn=f))
  p, s = jnp.asarray(theta), opt.init(jnp.asarray(theta))
  m, h, clipped, unclipped = np.zeros(5), np.zeros(5), 0, 0
  for t in range(1, 21):
    g = a * theta - b
    m = b1 * m + (1 - b1) * g
    if (t - 1) % k == 0:
      h = b2 * h + (1 - b2) * a  # Rademacher: u * (a * u) = a exactly
    ratio = m / np.maximum(gamma * h, 1e-12)
    clipped += np.sum(np.abs(ratio) > rho)
    unclipped += np.sum((np.abs(ratio) < rho) & (np.abs(ratio) > 1e-3))
    theta = theta - lr * wd * theta - lr * np.clip(ratio, -rho, rho)
    u, s = step(p, s)
    p = optax.apply_updates(p, u)
    np.testing.assert_allclose(np.asarray(p), theta, rtol=1e-9, atol=1e-12)
  assert clipped > 0 and unclipped > 0  # both regimes of the clip were taken


def test_sophia_eps_floors_the_curvature_at_its_value(x64):
  # a = 0 (flat), 0.5 and 8: gamma h = a / 2 against eps = 1 gives denominators 1, 1, 4.
  a, g = np.array([0.0, 0.5, 8.0]), np.array([1.0, -1.0, 4.0])
  f = lambda p: jnp.sum(0.5 * jnp.asarray(a) * p**2 - jnp.asarray(-g) * p)  # grad at 0 = g
  opt = optim.scale_by_sophia(b1=0.5, b2=0.5, gamma=1.0, eps=1.0, update_interval=1, key=0)
  p = jnp.zeros(3)
  u, _ = opt.update(jax.grad(f)(p), opt.init(p), p, obj_fn=f)
  np.testing.assert_allclose(np.asarray(u), 0.5 * g / np.maximum(0.5 * a, 1.0), rtol=1e-12)


def test_sophia_gaussian_probe_estimate_is_u_times_hessian_times_u(x64):
  """probe="gaussian" (the paper's N(0, I)): h_1 = (1 - b2) u * (H u), with u the probe the
  state announces; for a diagonal Hessian a that is (1 - b2) a u^2, not (1 - b2) a."""
  a = np.array([1.0, 2.0, 3.0, 0.5])
  big = np.diag(a) + 0.3 * (np.ones((4, 4)) - np.eye(4))  # a dense Hessian too
  for hess in (np.diag(a), big):
    f = lambda p, h=hess: 0.5 * p @ jnp.asarray(h) @ p
    opt = optim.scale_by_sophia(b2=0.25, update_interval=1, probe="gaussian", key=3)
    p = jnp.asarray([0.5, -1.0, 0.25, 2.0])
    state = opt.init(p)
    u = np.asarray(state.probe(p, "gaussian"))
    assert not np.allclose(u**2, 1.0)  # a Gaussian probe, not a sign vector
    _, state = opt.update(jax.grad(f)(p), state, p, obj_fn=f)
    np.testing.assert_allclose(np.asarray(state.hess), 0.75 * u * (hess @ u), rtol=1e-12)


# ---------------------------------------------------------------------------------------
# Hutchinson with Gaussian probes: the estimate is a ratio of sums over the probes drawn.


def _recording_operator(matrix):
  """A dense symmetric operator that records every probe it is applied to."""
  seen = []
  mat = jnp.asarray(matrix)

  def matvec(v):
    jax.debug.callback(lambda z: seen.append(np.asarray(z, np.float64)), v, ordered=True)
    return mat @ v

  like = jax.ShapeDtypeStruct((matrix.shape[0],), mat.dtype)
  return curvature.LinearOperator(matvec, like), seen


def _dense_symmetric(n, seed):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(n, n))
  return 0.5 * (q + q.T) + np.diag(np.linspace(1.0, 4.0, n))


@pytest.mark.parametrize("num_probes", [1, 3, 16])
def test_gaussian_hutchinson_diagonal_of_a_diagonal_operator_is_exact(x64, num_probes):
  # Bekas et al. Eq. 3: sum z * (D z) / sum z * z = d whatever the probes; dividing by the
  # probe count instead would give d * mean(z^2), which is not d for Gaussian probes.
  d = np.array([1.0, -2.0, 3.5, 0.25, 10.0, 7.0])
  op = curvature.LinearOperator(
    lambda v: jnp.asarray(d) * v, jax.ShapeDtypeStruct((6,), jnp.float64)
  )
  est = curvature.hutchinson_diag(op, key=11, num_probes=num_probes, probe="gaussian")
  np.testing.assert_allclose(np.asarray(est.diag), d, rtol=1e-12)


def test_gaussian_hutchinson_diagonal_is_the_ratio_of_sums_over_the_drawn_probes(x64):
  a = _dense_symmetric(6, 0)
  op, seen = _recording_operator(a)
  m = 5
  est = curvature.hutchinson_diag(op, key=jax.random.key(7), num_probes=m, probe="gaussian")
  jax.effects_barrier()
  z = np.stack(seen)
  assert z.shape == (m, 6) and not np.allclose(z**2, 1.0)
  za = z * (z @ a)  # z_i * (A z_i), A symmetric
  np.testing.assert_allclose(np.asarray(est.diag), za.sum(0) / (z * z).sum(0), rtol=1e-10)
  # The stderr: the standard error of the mean of z * Az over the probes.
  np.testing.assert_allclose(
    np.asarray(est.stderr), za.std(0, ddof=1) / np.sqrt(m), rtol=1e-8, atol=1e-12
  )


def test_gaussian_hutchinson_trace_is_the_mean_quadratic_form_over_the_drawn_probes(x64):
  a = _dense_symmetric(5, 1)
  op, seen = _recording_operator(a)
  m = 7
  est = curvature.hutchinson_trace(op, key=jax.random.key(8), num_probes=m, probe="gaussian")
  jax.effects_barrier()
  z = np.stack(seen)
  assert z.shape == (m, 5)
  quad = np.einsum("ij,jk,ik->i", z, a, z)
  np.testing.assert_allclose(float(est.trace), quad.mean(), rtol=1e-10)
  np.testing.assert_allclose(float(est.stderr), quad.std(ddof=1) / np.sqrt(m), rtol=1e-8)


# ---------------------------------------------------------------------------------------
# diffGrad (Dubey et al., arXiv:1909.11015) at b1 and eps away from their defaults.


def test_diffgrad_two_steps_at_b1_half_and_large_eps(x64):
  lr, b1, b2, eps = 0.1, 0.5, 0.8, 0.3
  g1, g2 = np.array([1.0, -0.2, 3.0]), np.array([-0.5, -0.2, 1.0])
  tx = optim.scale_by_diffgrad(b1=b1, b2=b2, eps=eps)
  p = jnp.zeros(3)
  u1, s = tx.update(jnp.asarray(g1), tx.init(p), p)
  u2, _ = tx.update(jnp.asarray(g2), s, p)
  sig = lambda z: 1.0 / (1.0 + np.exp(-z))
  # Step t: sqrt(1 - b2^t) / (1 - b1^t) * xi_t * m_t / (sqrt(v_t) + eps), g_0 = 0.
  m1, v1 = (1 - b1) * g1, (1 - b2) * g1**2
  want1 = np.sqrt(1 - b2) / (1 - b1) * sig(np.abs(g1)) * m1 / (np.sqrt(v1) + eps)
  m2, v2 = b1 * m1 + (1 - b1) * g2, b2 * v1 + (1 - b2) * g2**2
  want2 = np.sqrt(1 - b2**2) / (1 - b1**2) * sig(np.abs(g1 - g2)) * m2 / (np.sqrt(v2) + eps)
  np.testing.assert_allclose(np.asarray(u1), want1, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(u2), want2, rtol=1e-12)
  # The alias negates and scales by the learning rate.
  alias = optim.diffgrad(lr, b1=b1, b2=b2, eps=eps)
  u, _ = alias.update(jnp.asarray(g1), alias.init(p), p)
  np.testing.assert_allclose(np.asarray(u), -lr * want1, rtol=1e-12)


# ---------------------------------------------------------------------------------------
# AdamP (Heo et al., arXiv:2006.08217, Eq. 12) at delta != 0.1.


@pytest.mark.parametrize("delta, projected", [(0.1, False), (0.3, False), (0.5, True)])
def test_adamp_projects_exactly_when_the_cosine_is_below_delta_over_sqrt_dim(x64, delta, projected):
  # One channel of 4 weights (kernel (4, 1), channels on the last axis): the channel and
  # layer tests coincide. |cos(w, g)| = 0.3 / |g| = 0.196, threshold delta / sqrt(4).
  w = np.array([[1.0], [0.0], [0.0], [0.0]])
  g = np.array([[0.3], [1.0], [-1.0], [0.5]])
  cos = abs(np.sum(w * g)) / np.linalg.norm(w) / np.linalg.norm(g)
  assert (cos < delta / 2) == projected
  wd, wd_ratio, eps = 0.2, 0.25, 1e-8
  tx = optim.scale_by_adamp(delta=delta, wd_ratio=wd_ratio, weight_decay=wd, eps=eps)
  u, _ = tx.update(jnp.asarray(g), tx.init(jnp.asarray(w)), jnp.asarray(w))
  # Step 1: q / (1 - b1) = p_hat with p_hat = g / (|g| + eps) (bias corrections cancel).
  p = g / (np.abs(g) + eps)
  if projected:
    wn = w / (np.linalg.norm(w) + eps)
    p = p - wn * np.sum(wn * p)
  want = p + wd * (wd_ratio if projected else 1.0) * w
  np.testing.assert_allclose(np.asarray(u), want, rtol=1e-10)


# ---------------------------------------------------------------------------------------
# TrAct (Petersen et al.) at lam != 0.1: G -> (X^T X / b + lam I)^{-1} G.


@pytest.mark.parametrize("lam", [1.0, 3.0, 0.01])
def test_tract_solves_the_regularized_normal_equations_at_lam(x64, lam):
  rng = np.random.default_rng(5)
  b, n, k = 10, 4, 3
  x = rng.normal(size=(b, n)) * np.array([0.1, 1.0, 3.0, 0.5])
  g = rng.normal(size=(n, k))
  u, _ = optim.scale_by_tract(lam).update(
    {"kernel": jnp.asarray(g), "bias": jnp.ones(k)},
    optax.EmptyState(),
    first_layer_inputs=jnp.asarray(x),
  )
  want = np.linalg.solve(x.T @ x / b + lam * np.eye(n), g)
  np.testing.assert_allclose(np.asarray(u["kernel"]), want, rtol=1e-10)
  np.testing.assert_array_equal(np.asarray(u["bias"]), np.ones(k))


# ---------------------------------------------------------------------------------------
# DIFF2 with its own difference-round noise multiplier.


def test_diff2_difference_rounds_use_diff_noise_multiplier():
  d, n, clients, sigma, sigma2, c1, c2 = 4000, 4, 2, 0.5, 3.0, 0.5, 0.01
  w = {"w": jnp.zeros(d)}
  zero = lambda p: {"w": jnp.zeros((n * clients, d))}
  tx = optim.scale_by_diff2(
    c1, c2, sigma, restart_every=2, diff_noise_multiplier=sigma2, num_clients=clients, key=1
  )
  s = tx.init(w)
  v0, s = tx.update(zero(w), s, w, grad_fn=zero)  # restart round: sigma
  v1, s = tx.update(zero(w), s, w, grad_fn=zero)  # difference round: sigma2
  np.testing.assert_allclose(float(jnp.std(v0["w"])), sigma * c1 / n / np.sqrt(clients), rtol=0.05)
  np.testing.assert_allclose(
    float(jnp.std(v1["w"] - v0["w"])), sigma2 * c2 / n / np.sqrt(clients), rtol=0.05
  )


# ---------------------------------------------------------------------------------------
# Regularized Newton (Doikov & Nesterov; official grad-norm-smooth code) with a search cap
# other than the official 41 trials.


@pytest.mark.parametrize("cap", [1, 7])
def test_reg_newton_exhausted_search_makes_search_max_iterations_trials(x64, cap):
  # f = |w|^2 / 2 seen through a zero Hessian: every trial fails the acceptance test at
  # gamma0 = 1e15, so the step makes `cap` trials, halves gamma each time and takes the last
  # trial's step  delta = -g / lam,  lam = |g| / (gamma0 2^-(cap-1) + 1e-8).
  f = lambda w: 0.5 * jnp.sum(w**2)
  gamma0 = 1e15
  zero = lambda p: curvature.LinearOperator(lambda v: 0.0 * v, p)
  opt = optim.scale_by_reg_newton(gamma=gamma0, search_max_iterations=cap)
  p = jnp.asarray([0.6, -0.8])
  u, state = opt.update(p, opt.init(p), p, obj_fn=f, hessian_fn=zero)
  assert int(state.tries) == cap and float(state.gamma) == gamma0 * 2.0**-cap
  lam = 1.0 / (gamma0 * 2.0 ** -(cap - 1) + 1e-8)  # |g| = 1
  np.testing.assert_allclose(np.asarray(u), -np.asarray(p) / lam, rtol=1e-12)
