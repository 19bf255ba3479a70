"""jaxdiff.finetune Diff-Instruct*: the SIM surrogate's generator gradient against the
gradient of the score-based divergence (Gauss-Hermite quadrature, exact fake score) for a
Gaussian generator and a Gaussian-mixture reference; zero divergence and gradient at the
reference; the reward term's gradient; the CFG reference's implicit reward
(w - 1) grad log p(c | x_t); a 10-step float64 NumPy transcription of the generator update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import distill, finetune, schedules
from jaxdiff.testing import GaussianMixture

MEANS = np.array([[-1.0], [1.5]])
VARS = np.array([0.3, 0.5])
WEIGHTS = np.array([0.4, 0.6])
SCHED = schedules.vp_cosine()
C = 3.0  # pseudo-Huber constant: smooth enough for the quadrature to converge to 1e-10


def _ref():
  return GaussianMixture(MEANS, VARS, weights=WEIGHTS)


def _gen_x0(m, s, x_t, a, sig):
  """Exact E[x0 | x_t] of the generator N(m, s^2) noised to x_t = a x0 + sig eps."""
  return m + a * s**2 / (a**2 * s**2 + sig**2) * (x_t - a * m)


def _grid(n=140):
  z, w = np.polynomial.hermite_e.hermegauss(n)
  zz, ee = np.meshgrid(z, z, indexing="ij")
  return zz.reshape(-1, 1), ee.reshape(-1, 1), np.outer(w, w).reshape(-1) / np.sum(w) ** 2


def _level(t):
  return float(SCHED.alpha(t)), float(SCHED.sigma(t))


def _divergence(theta, t, distance):
  """D_t(theta) = E_{p_theta,t} d(s_p - s_q) by quadrature, the generator's score exact."""
  m, s = theta
  z, e, w = _grid()
  a, sig = _level(t)
  x_t = a * (m + s * z) + sig * e
  x0_ref = _ref().posterior_mean(x_t, a, sig)
  d = finetune.score_divergence(
    _gen_x0(m, s, x_t, a, sig), x0_ref, alpha=a, sigma=sig, distance=distance, c=C
  )
  return jnp.sum(w * d)


def _surrogate(theta, theta0, t, distance, variant):
  m, s = theta
  z, e, w = _grid()
  a, sig = _level(t)
  x = m + s * z
  x_t = a * x + sig * e
  fake = _gen_x0(theta0[0], theta0[1], x_t, a, sig)  # frozen parameters, differentiable x_t
  ref = _ref().posterior_mean(x_t, a, sig)
  return finetune.sim_loss(
    x, ref, fake, alpha=a, sigma=sig, distance=distance, c=C, weight=w * w.size, variant=variant
  )


@pytest.mark.parametrize("distance", ["pseudo_huber", "l2"])
@pytest.mark.parametrize("t", [0.3, 0.7])
def test_exact_surrogate_gradient_is_the_divergence_gradient(x64, distance, t):
  theta = jnp.array([0.4, 1.3])
  true = jax.grad(_divergence)(theta, t, distance)
  # the quadrature's gradient against central differences of the quadrature's value
  h = 1e-5
  fd = np.array(
    [
      (_divergence(theta + h * e, t, distance) - _divergence(theta - h * e, t, distance)) / (2 * h)
      for e in np.eye(2)
    ]
  )
  np.testing.assert_allclose(true, fd, rtol=1e-6, atol=1e-9)
  got = jax.grad(_surrogate)(theta, theta, t, distance, "exact")
  np.testing.assert_allclose(got, true, rtol=1e-9, atol=1e-12)
  assert np.all(np.abs(true) > 1e-3)  # a non-trivial gradient in both parameters


@pytest.mark.parametrize("distance", ["pseudo_huber", "l2"])
def test_sim_variant_differs_by_the_gradient_of_dprime_y_minus_d(x64, distance):
  theta, t = jnp.array([0.4, 1.3]), 0.5

  def gap(th):  # E[d'(y)^T y - d(y)] with the fake score frozen at theta
    m, s = th
    z, e, w = _grid()
    a, sig = _level(t)
    x_t = a * (m + s * z) + sig * e
    k = a / sig**2
    y = k * (_gen_x0(theta[0], theta[1], x_t, a, sig) - _ref().posterior_mean(x_t, a, sig))
    y = y[:, 0]
    if distance == "l2":
      d, dp = y**2, 2 * y
    else:
      d, dp = jnp.sqrt(y**2 + C**2) - C, y / jnp.sqrt(y**2 + C**2)
    return jnp.sum(w * (dp * y - d))

  exact = jax.grad(_surrogate)(theta, theta, t, distance, "exact")
  sim = jax.grad(_surrogate)(theta, theta, t, distance, "sim")
  np.testing.assert_allclose(sim, exact + jax.grad(gap)(theta), rtol=1e-9, atol=1e-12)
  assert np.max(np.abs(sim - exact)) > 1e-3


@pytest.mark.parametrize("variant", ["exact", "sim"])
def test_zero_divergence_and_gradient_when_the_generator_is_the_reference(x64, variant):
  m0, v0 = 0.5, 0.8
  ref = GaussianMixture(np.array([[m0]]), v0).denoiser(SCHED)
  theta = jnp.array([m0, np.sqrt(v0)])
  t = jnp.linspace(0.1, 0.9, 64)
  z = jax.random.normal(jax.random.key(1), (64, 1), jnp.float64)

  def loss(th):
    x = th[0] + th[1] * z

    th0 = jax.lax.stop_gradient(th)  # the fake score: the generator's exact, frozen

    def fake(x_t, tt, cond):
      a, sig = SCHED.alpha(tt)[:, None], SCHED.sigma(tt)[:, None]
      return _gen_x0(th0[0], th0[1], x_t, a, sig)

    return finetune.diff_instruct_star_loss(
      lambda v: v[:, 0], ref, fake, x, t, schedule=SCHED, key=3, reward_scale=0.0, variant=variant
    )

  assert abs(float(loss(theta))) < 1e-12
  np.testing.assert_allclose(jax.grad(loss)(theta), 0.0, atol=1e-10)
  a, sig = SCHED.alpha(t), SCHED.sigma(t)
  x_t = a[:, None] * (theta[0] + theta[1] * z) + sig[:, None] * z[::-1]
  d = finetune.score_divergence(
    ref(x_t, t), _gen_x0(m0, theta[1], x_t, a[:, None], sig[:, None]), alpha=a, sigma=sig
  )
  np.testing.assert_allclose(d, 0.0, atol=1e-10)
  # away from the reference the same loss has a gradient
  assert float(jnp.max(jnp.abs(jax.grad(loss)(theta + jnp.array([0.3, 0.0]))))) > 1e-3


def test_reward_term_gradient(x64):
  ref = _ref().denoiser(SCHED)
  z = jax.random.normal(jax.random.key(0), (32, 1), jnp.float64)
  target, lam = 1.5, 0.25

  def loss(th):
    x = th[0] + th[1] * z
    return finetune.diff_instruct_star_loss(
      lambda v: -jnp.sum((v - target) ** 2, axis=1),
      ref,
      ref,
      x,
      0.5,
      schedule=SCHED,
      key=0,
      reward_scale=lam,
    )

  theta = jnp.array([0.2, 0.9])
  x = theta[0] + theta[1] * z[:, 0]
  want = lam * np.array([np.mean(2 * (x - target)), np.mean(2 * (x - target) * z[:, 0])])
  np.testing.assert_allclose(jax.grad(loss)(theta), want, rtol=1e-12)


@pytest.mark.integration  # heavy (3-7 s each): CI's second tier keeps make test within 5 min
def test_cfg_reference_is_the_conditional_score_plus_the_implicit_reward(x64, gmm):
  w, t = 3.0, jnp.full((5,), 0.4)
  den = gmm.denoiser(SCHED)
  guided = finetune.cfg_reference(den, scale=w)
  x_t = jax.random.normal(jax.random.key(2), (5, 2), jnp.float64)
  a, sig = SCHED.alpha(t)[:, None], SCHED.sigma(t)[:, None]
  score = lambda x0: (a * x0 - x_t) / sig**2
  cond = jnp.ones((5,), jnp.int32)
  log_pc = lambda x: jnp.sum(gmm.class_posterior(x, t, SCHED, log=True)[:, 1])
  want = score(den(x_t, t, cond)) + (w - 1.0) * jax.grad(log_pc)(x_t)
  np.testing.assert_allclose(score(guided(x_t, t, cond)), want, rtol=1e-9, atol=1e-9)


def _np_ref_x0_and_slope(xt, a, sig):
  """Reference mixture's E[x0 | x_t] and its x_t-derivative (a / sig^2) Var[x0 | x_t], 1-D."""
  av, sv = a[:, None], sig[:, None]
  v = av**2 * VARS + sv**2
  logn = -0.5 * (xt[:, None] - av * MEANS[:, 0]) ** 2 / v - 0.5 * np.log(2 * np.pi * v)
  lg = np.log(WEIGHTS / WEIGHTS.sum()) + logn
  g = np.exp(lg - lg.max(1, keepdims=True))
  g /= g.sum(1, keepdims=True)
  mk = MEANS[:, 0] + av * VARS / v * (xt[:, None] - av * MEANS[:, 0])
  ck = VARS * sv**2 / v
  mean = np.sum(g * mk, 1)
  var = np.sum(g * (ck + mk**2), 1) - mean**2
  return mean, a / sig**2 * var


@pytest.mark.parametrize("variant", ["exact", "sim"])
def test_ten_step_transcription_of_the_generator_update(x64, variant):
  """Plain SGD on theta = (m, log s) of x = m + s z with the exact fake score; the update
  written out with the chain rule in NumPy, reward log N(x; 1.5, 0.5)."""
  b, lr, lam, steps = 16, 0.05, 0.3, 12
  rng = np.random.default_rng(0)
  mu_r, var_r = 1.5, 0.5
  theta_np = np.array([-0.3, np.log(0.8)])
  theta_jx = jnp.asarray(theta_np)
  ref = _ref().denoiser(SCHED)
  reward = lambda v: -0.5 * (v[:, 0] - mu_r) ** 2 / var_r

  def loss(th, z, t, key):  # jaxdiff
    x = (th[0] + jnp.exp(th[1]) * z)[:, None]
    th0 = jax.lax.stop_gradient(th)

    def fake(x_t, tt, cond):
      al, sg = SCHED.alpha(tt)[:, None], SCHED.sigma(tt)[:, None]
      return _gen_x0(th0[0], jnp.exp(th0[1]), x_t, al, sg)

    return finetune.diff_instruct_star_loss(
      reward, ref, fake, x, t, schedule=SCHED, key=key, reward_scale=lam, c=C, variant=variant
    )

  grad = jax.jit(jax.grad(loss))
  for step in range(steps):
    z = rng.standard_normal(b)
    t = rng.uniform(0.05, 0.95, b)
    key = jax.random.key(step)
    eps = np.asarray(jax.random.normal(key, (b, 1), jnp.float64))[:, 0]
    theta_jx = theta_jx - lr * grad(theta_jx, z, t, key)
    # --- NumPy transcription
    m, s = theta_np[0], np.exp(theta_np[1])
    a, sig = np.asarray(SCHED.alpha(t)), np.asarray(SCHED.sigma(t))
    x = m + s * z
    xt = a * x + sig * eps
    k = a / sig**2
    gain = a * s**2 / (a**2 * s**2 + sig**2)
    f_fake, f_fake_p = m + gain * (xt - a * m), gain
    f_ref, f_ref_p = _np_ref_x0_and_slope(xt, a, sig)
    y = k * (f_fake - f_ref)
    dp = y / np.sqrt(y**2 + C**2)
    dpp = C**2 / (y**2 + C**2) ** 1.5
    f_bar, f_bar_p = (f_fake, f_fake_p) if variant == "exact" else (f_ref, f_ref_p)
    # per-sample L = -d'(y) k (f_bar(x_t) - x) [+ d(y) for "exact"]
    dl_dy = -dpp * k * (f_bar - x) + (dp if variant == "exact" else 0.0)
    dl_dxt = dl_dy * k * (f_fake_p - f_ref_p) - dp * k * f_bar_p
    dl_dx = dp * k + a * dl_dxt - lam * (-(x - mu_r) / var_r)
    g = np.array([np.mean(dl_dx), np.mean(dl_dx * s * z)])
    theta_np = theta_np - lr * g
    np.testing.assert_allclose(np.asarray(theta_jx), theta_np, rtol=1e-10, atol=1e-12)
  assert abs(theta_np[0] + 0.3) > 1e-2  # the parameters moved


def test_fake_score_loss_of_the_distribution_matching_module_fits_generator_samples(x64):
  """The fake score's loss (reused from jaxdiff.distill) is minimised by the generator's
  exact denoiser, not by the reference's."""
  m, s = 0.4, 1.3
  x = m + s * jax.random.normal(jax.random.key(5), (4096, 1), jnp.float64)
  t = jnp.full((4096,), 0.5)

  def exact(x_t, tt, cond):
    return _gen_x0(m, s, x_t, SCHED.alpha(tt)[:, None], SCHED.sigma(tt)[:, None])

  own = distill.fake_score_loss(exact, x, t, schedule=SCHED, key=1)
  other = distill.fake_score_loss(_ref().denoiser(SCHED), x, t, schedule=SCHED, key=1)
  assert float(own) < float(other)
