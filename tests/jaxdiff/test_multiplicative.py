"""Multiplicative diffusion (GBM): float64 transcriptions of the loss and both samplers, and
the exact log-normal-mixture testbed (closed-form Hyvarinen score of every GBM marginal)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import multiplicative as M
from jaxdiff.testing import GaussianMixture, LogNormalMixture

G = M.gbm(1.5, mu=0.3)


def _bimodal(dtype=None):
  return LogNormalMixture(
    GaussianMixture(jnp.array([[-1.0], [1.5]]), 0.09, [0.3, 0.7], dtype=dtype)
  )


# --- the forward process ------------------------------------------------------------------


def test_gbm_log_moments_match_an_euler_simulation_of_the_sde():
  # dX = mu X dt + sigma X dW simulated in x (not in log x): checks the Ito term -sigma^2/2.
  rng = np.random.default_rng(0)
  x = np.full(40000, 2.0)
  dt = 1e-3
  for _ in range(1000):
    x = x + 0.3 * x * dt + 1.5 * x * np.sqrt(dt) * rng.standard_normal(x.shape)
  y = np.log(np.abs(x) / 2.0)
  assert abs(y.mean() - float(G.log_mean(1.0))) < 0.03
  assert abs(y.std() - float(G.log_std(1.0))) < 0.03
  assert abs(float(G.log_mean(1.0)) - (0.3 - 1.5**2 / 2)) < 1e-6


def test_geometric_volatility_integrates_to_the_log_variance(x64):
  g = M.gbm_geometric(0.02, 8.0, mu=0.1)
  t = np.linspace(0.0, 1.0, 20001)
  v = np.asarray(g.volatility(jnp.asarray(t))) ** 2
  integral = np.concatenate([[0.0], np.cumsum((v[1:] + v[:-1]) / 2 * np.diff(t))])
  np.testing.assert_allclose(integral[::1000], np.asarray(g.log_variance(t[::1000])), rtol=1e-6)
  assert abs(float(g.log_std(1.0)) - 8.0) < 1e-3


def test_perturb_is_the_exact_marginal(x64):
  x0 = jnp.full((50000, 1), 3.0)
  xt = M.perturb(x0, 0.7, schedule=G, key=3)
  y = np.log(np.asarray(xt)[:, 0] / 3.0)
  assert abs(y.mean() - float(G.log_mean(0.7))) < 0.02
  assert abs(y.std() - float(G.log_std(0.7))) < 0.02


# --- the loss ------------------------------------------------------------------------------


@pytest.mark.parametrize("weighting", ["variance", "none"])
def test_mdsm_loss_matches_float64_transcription(x64, weighting):
  x0 = jnp.exp(jnp.linspace(-1.0, 1.0, 12)).reshape(4, 3)
  t = jnp.array([0.1, 0.4, 0.7, 1.0])

  def h(x, t):
    return -0.3 * jnp.log(x) * t[:, None] - 0.8

  got = M.mdsm_loss(h, x0, t, schedule=G, key=5, weighting=weighting)
  eps = np.asarray(jax.random.normal(jax.random.key(5), x0.shape, jnp.float64))
  tt = np.asarray(t)[:, None]
  s, m = 1.5 * np.sqrt(tt), (0.3 - 1.5**2 / 2) * tt
  xt = np.asarray(x0) * np.exp(m + s * eps)
  target = -eps / s - 1.0  # x_t * d/dx_t log p(x_t | x_0)
  lam = s**2 if weighting == "variance" else 1.0
  want = np.mean(lam * (np.asarray(h(jnp.asarray(xt), t)) - target) ** 2)
  np.testing.assert_allclose(float(got), want, rtol=1e-12)


def _vertex(loss, h_exact, direction):
  """The minimiser over ``a`` of the quadratic ``loss(h_exact + a * direction)``."""
  lm, l0, lp = (loss(lambda x, t, a=a: h_exact(x, t) + a * direction(x)) for a in (-0.2, 0.0, 0.2))
  return 0.2 * (lm - lp) / (2 * (lp + lm - 2 * l0))


@pytest.mark.slow
def test_exact_hyvarinen_score_minimises_the_mdsm_loss(x64):
  lnm = _bimodal(jnp.float64)
  x0 = lnm.sample(0, 40000)
  t = jax.random.uniform(jax.random.key(1), (40000,), jnp.float64, 0.05, 1.0)

  def loss(h):
    return float(M.mdsm_loss(h, x0, t, schedule=G, key=2))

  exact = lambda x, t: lnm.hyvarinen_score(x, t, G)  # noqa: E731
  stein = lambda x, t: exact(x, t) / x  # a planted bug: the Stein score, not x * score  # noqa: E731
  for direction in (jnp.ones_like, jnp.log, lambda x: jnp.tanh(jnp.log(x) - 0.5)):
    assert abs(_vertex(loss, exact, direction)) < 0.03
  assert abs(_vertex(loss, stein, jnp.ones_like)) > 0.2


# --- the testbed ---------------------------------------------------------------------------


def test_lognormal_mixture_score_is_x_times_the_gradient_of_its_log_density(x64):
  lnm = LogNormalMixture(GaussianMixture(jnp.array([[-0.5, 0.2], [1.0, -1.0]]), [0.2, 0.5]))
  x = jnp.exp(jax.random.normal(jax.random.key(0), (6, 2), jnp.float64))
  t = jnp.linspace(0.0, 1.0, 6)
  grad = jax.grad(lambda x: jnp.sum(lnm.marginal_log_prob(x, t, G)))(x)
  np.testing.assert_allclose(lnm.hyvarinen_score(x, t, G), x * grad, rtol=1e-10)
  np.testing.assert_allclose(lnm.marginal_log_prob(x, 0.0, G), lnm.log_prob(x), rtol=1e-12)


def test_lognormal_mixture_marginal_density_integrates_to_one(x64):
  lnm = _bimodal(jnp.float64)
  x = jnp.exp(jnp.linspace(-12.0, 10.0, 40001))[:, None]
  p = np.exp(np.asarray(lnm.marginal_log_prob(x, 0.6, G)))
  xs = np.asarray(x)[:, 0]
  assert abs(np.sum((p[1:] + p[:-1]) / 2 * np.diff(xs)) - 1.0) < 1e-6


# --- the samplers --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["dale_langevin", "ambient"])
def test_sampler_matches_float64_transcription_over_12_steps(x64, variant):
  g = M.gbm_geometric(0.05, 0.5, mu=0.2)  # small enough that the ambient step stays positive
  a, b2 = 0.3, 0.25  # data log x0 ~ N(a, b2): closed-form Hyvarinen score

  def h(x, t):
    return -(jnp.log(x) - a - g.log_mean(t)[:, None]) / (b2 + g.log_variance(t)[:, None]) - 1.0

  x_init = jnp.exp(jnp.linspace(-2.0, 2.0, 8)).reshape(4, 2)
  got = M.sample(h, x_init, schedule=g, num_steps=12, key=7, t_min=0.01, variant=variant)
  grid = np.linspace(1.0, 0.01, 13)
  keys = jax.random.split(jax.random.key(7), 12)
  x = np.asarray(x_init)
  r = 0.5 / 0.05
  for k in range(12):
    t, dt = grid[k], grid[k] - grid[k + 1]
    vol = 0.05 * np.sqrt(2 * np.log(r)) * r**t
    var = 0.05**2 * (r ** (2 * t) - 1)
    hk = -(np.log(x) - a - (0.2 * t - var / 2)) / (b2 + var) - 1.0
    z = np.asarray(jax.random.normal(keys[k], x.shape, jnp.float64))
    if variant == "dale_langevin":
      x = x * np.exp(dt * (vol**2 * (hk + 1.5) - 0.2) + vol * np.sqrt(dt) * z)
    else:
      x = x * (1 + dt * (vol**2 * (hk + 2.0) - 0.2) + vol * np.sqrt(dt) * z)
  assert np.all(x > 0)
  np.testing.assert_allclose(np.asarray(got), x, rtol=1e-10)


def _w1(a, b):
  return float(np.mean(np.abs(np.sort(a) - np.sort(b))))


@pytest.mark.slow
@pytest.mark.parametrize("variant,tol", [("dale_langevin", 0.05), ("ambient", 0.08)])
def test_sampler_with_the_exact_score_reproduces_the_lognormal_mixture(x64, variant, tol):
  lnm = _bimodal(jnp.float64)
  n = 20000
  x_T = M.perturb(lnm.sample(0, n), G.t_max, schedule=G, key=1)  # the exact start
  x = M.sample(
    lambda x, t: lnm.hyvarinen_score(x, t, G),
    x_T,
    schedule=G,
    num_steps=400,
    key=2,
    t_min=1e-3,
    variant=variant,
  )
  y = np.log(np.asarray(x)[:, 0])
  ref = np.log(np.asarray(lnm.sample(3, n))[:, 0])
  assert _w1(y, ref) < tol
  assert abs(np.mean(y > 0.25) - 0.7) < 0.02  # the upper mode's weight
  assert np.all(np.asarray(x) > 0)


def test_log_normal_prior_is_the_exact_marginal_of_log_normal_data(x64):
  x = M.log_normal_prior((50000, 1), schedule=G, key=0, log_mean=0.4, log_std=0.5)
  y = np.log(np.asarray(x)[:, 0])
  assert abs(y.mean() - (0.4 + float(G.log_mean(1.0)))) < 0.02
  assert abs(y.std() - np.sqrt(0.25 + float(G.log_variance(1.0)))) < 0.02


def test_sample_jits_and_vmaps_over_keys():
  def h(x, t):
    return -jnp.log(x) / (1 + G.log_variance(t)[:, None]) - 1.0

  x_T = M.log_normal_prior((16, 3), schedule=G, key=0)
  run = jax.jit(jax.vmap(lambda k: M.sample(h, x_T, schedule=G, num_steps=5, key=k)))
  out = run(jax.random.split(jax.random.key(1), 4))
  assert out.shape == (4, 16, 3)
  assert bool(jnp.all(out > 0)) and not np.allclose(out[0], out[1])
