"""jaxdiff.noise2score: Tweedie's formulas against closed-form and quadrature posteriors
(Gaussian-Gaussian, the exact Gaussian mixture, Poisson-Gamma, Gamma-inverse-Gamma) and the
AR-DAE loss against a float64 transcription and its least-squares minimiser, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

from jaxdiff import noise2score
from jaxdiff.testing import GaussianMixture


def test_gaussian_tweedie_is_the_conjugate_posterior_mean(x64):
  m, s2, sigma = 0.7, 2.0, 0.8
  y = jnp.linspace(-4.0, 5.0, 19)
  score = -(y - m) / (s2 + sigma**2)  # p(y) = N(m, s2 + sigma^2)
  want = (s2 * y + sigma**2 * m) / (s2 + sigma**2)
  got = noise2score.tweedie_gaussian(y, score, sigma=sigma)
  assert got.dtype == jnp.float64
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5])
def test_gaussian_tweedie_is_the_exact_gaussian_mixture_posterior_mean(x64, sigma):
  gmm = GaussianMixture(
    jnp.array([[-2.0, 0.0], [1.5, 1.0], [0.0, -2.5]]),
    jnp.array([[0.3, 0.3], [0.5, 0.2], [0.8, 1.2]]),
    weights=jnp.array([0.5, 0.3, 0.2]),
  )
  y = gmm.sample(jax.random.key(0), 64) + sigma * jax.random.normal(jax.random.key(1), (64, 2))
  score = jax.grad(lambda v: gmm.marginal_log_prob(v, 1.0, sigma).sum())(y)
  got = noise2score.tweedie_gaussian(y, score, sigma=sigma)
  want = gmm.posterior_mean(y, 1.0, sigma)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


# Poisson-Gamma: x = zeta * lam, lam ~ Gamma(a, rate b), z | lam ~ Poisson(lam), y = zeta z.
A, B, ZETA = 3.0, 0.5, 0.05


def _nb_score_y(y):
  """d/dy log p(y) of the negative binomial marginal extended to real counts z = y / zeta."""
  z = y / ZETA
  return (special.digamma(z + A) - special.digamma(z + 1) - np.log(B + 1)) / ZETA


def _quad_poisson(z, f):
  """E[f(lam) | z] by quadrature of prior x likelihood (real z: lam^z e^-lam / Gamma(z+1))."""
  post = lambda lam: (
    stats.gamma.pdf(lam, A, scale=1 / B) * np.exp(z * np.log(lam) - lam - special.gammaln(z + 1))
  )
  num = integrate.quad(lambda lam: f(lam) * post(lam), 0, np.inf, epsabs=0, epsrel=1e-12)[0]
  return num / integrate.quad(post, 0, np.inf, epsabs=0, epsrel=1e-12)[0]


def test_poisson_score_of_the_negative_binomial_marginal_matches_quadrature():
  # The closed-form score used below is the derivative of the quadrature marginal.
  for z in [0.0, 3.0, 20.0]:
    log_p = lambda zz: np.log(
      integrate.quad(
        lambda lam: (
          stats.gamma.pdf(lam, A, scale=1 / B)
          * np.exp(zz * np.log(lam) - lam - special.gammaln(zz + 1))
        ),
        0,
        np.inf,
        epsabs=0,
        epsrel=1e-13,
      )[0]
    )
    h = 1e-4
    fd = (log_p(z + 1 + h) - log_p(z + 1 - h)) / (2 * h)
    np.testing.assert_allclose(_nb_score_y(ZETA * (z + 1)) * ZETA, fd, rtol=1e-6)


def test_poisson_tweedie_is_the_geometric_posterior_mean_up_to_the_digamma_step(x64):
  z = np.array([0.0, 1.0, 2.0, 5.0, 20.0, 100.0])
  y = ZETA * z
  got = np.asarray(noise2score.tweedie_poisson(jnp.asarray(y), _nb_score_y(y), zeta=ZETA))
  # Exact identity: exp E[log x | y] = zeta exp(zeta l'(y) + psi(z + 1)); the paper's form
  # replaces exp(psi(z + 1)) by z + 1/2.
  geometric = ZETA * np.exp(special.digamma(z + A) - np.log(B + 1))
  np.testing.assert_allclose(
    got * np.exp(special.digamma(z + 1)) / (z + 0.5), geometric, rtol=1e-13
  )
  for zi, g in zip(z[:4], geometric[:4]):
    np.testing.assert_allclose(g, ZETA * np.exp(_quad_poisson(zi, np.log)), rtol=1e-9)
  # ... so it is the geometric mean to O((z + 1/2)^-2) and the posterior mean to O(1/z).
  rel_geo = np.abs(got / geometric - 1)
  assert np.all(rel_geo <= 1 / (24 * (z + 0.5) ** 2) * 1.01 + 0.02 * (z == 0)), rel_geo
  mean = ZETA * (z + A) / (B + 1)
  rel_mean = np.abs(got / mean - 1)
  assert np.all(rel_mean[1:] <= 1.0 / (z[1:] + A)), rel_mean
  assert np.all(np.diff(rel_mean) < 0)


# Gamma-inverse-Gamma: x ~ InvGamma(a, b), y | x ~ Gamma(k, rate k / x).
GA, GB, K = 3.0, 2.0, 10.0


def _gamma_score(y):
  """d/dy log p(y) for p(y) proportional to y^(k-1) (b + k y)^-(a + k)."""
  return (K - 1) / y - K * (GA + K) / (GB + K * y)


def test_gamma_marginal_score_matches_quadrature():
  def log_p(y):
    f = lambda x: stats.invgamma.pdf(x, GA, scale=GB) * stats.gamma.pdf(y, K, scale=x / K)
    return np.log(integrate.quad(f, 0, np.inf, epsabs=0, epsrel=1e-13)[0])

  for y in [0.3, 1.0, 4.0]:
    h = 1e-5
    np.testing.assert_allclose(_gamma_score(y), (log_p(y + h) - log_p(y - h)) / (2 * h), rtol=1e-6)


def test_gamma_tweedie_is_the_conjugate_harmonic_posterior_mean(x64):
  y = np.array([0.05, 0.3, 1.0, 2.5, 10.0])
  got = np.asarray(noise2score.tweedie_gamma(jnp.asarray(y), _gamma_score(y), k=K))
  np.testing.assert_allclose(got, (GB + K * y) / (GA + K), rtol=1e-14)
  # 1 / E[1/x | y] by quadrature of prior x likelihood
  for yi, g in zip(y[1:4], got[1:4]):
    post = lambda x: stats.invgamma.pdf(x, GA, scale=GB) * stats.gamma.pdf(yi, K, scale=x / K)
    inv = integrate.quad(lambda x: post(x) / x, 0, np.inf, epsabs=0, epsrel=1e-12)[0]
    np.testing.assert_allclose(g, integrate.quad(post, 0, np.inf)[0] / inv, rtol=1e-8)
  # ... a shrinkage of the posterior mean (b + k y) / (a + k - 1) by (a + k - 1) / (a + k).
  np.testing.assert_allclose(got / ((GB + K * y) / (GA + K - 1)), (GA + K - 1) / (GA + K))


def test_ardae_loss_matches_a_float64_transcription(x64):
  y = jax.random.normal(jax.random.key(3), (5, 7))
  w = np.linspace(-1.0, 1.0, 7)
  score_fn = lambda v: -v * w + jnp.tanh(v)
  key = jax.random.key(11)
  got = noise2score.ardae_loss(score_fn, y, sigma_a=0.3, key=key)
  u = np.asarray(jax.random.normal(key, y.shape, jnp.float64))
  yp = np.asarray(y) + 0.3 * u
  want = np.mean((u + 0.3 * (-yp * w + np.tanh(yp))) ** 2)
  np.testing.assert_allclose(got, want, rtol=1e-14)


@pytest.mark.parametrize("sigma_a", [0.1, 0.5])
def test_ardae_loss_minimiser_is_the_score_of_the_blurred_noisy_density(x64, sigma_a):
  # p(y) = N(m, v): among linear R(t) = c t + d, the minimiser is the score of
  # N(m, v + sigma_a^2), c = -1 / (v + sigma_a^2), d = m / (v + sigma_a^2). The loss is
  # quadratic in (c, d): three evaluations at the same key give its exact minimiser.
  m, v, n = 0.5, 1.5, 400_000
  y = m + np.sqrt(v) * jax.random.normal(jax.random.key(0), (n,))

  def loss(theta):
    return noise2score.ardae_loss(lambda t: theta[0] * t + theta[1], y, sigma_a=sigma_a, key=7)

  theta0 = jnp.zeros(2)
  g = jax.grad(loss)(theta0)
  h = jax.hessian(loss)(theta0)
  c, d = theta0 - jnp.linalg.solve(h, g)
  # Least squares of -u on sigma_a * (t, 1): the residual variance is about 1, so the
  # estimates' standard deviations are about 1 / (sigma_a sqrt(n var t)) and
  # sqrt(1 + m^2 / var t) / (sigma_a sqrt n) (the AR-DAE variance that grows as sigma_a -> 0).
  var_t = v + sigma_a**2
  sd_c = 1 / (sigma_a * np.sqrt(n * var_t))
  sd_d = np.sqrt(1 + m**2 / var_t) / (sigma_a * np.sqrt(n))
  assert abs(c + 1 / var_t) < 4 * sd_c, (c, -1 / var_t, sd_c)
  assert abs(d - m / var_t) < 4 * sd_d, (d, m / var_t, sd_d)


def test_tweedie_poisons_traced_entries_outside_the_domain(x64):
  y = jnp.array([-1.0, 1.0])
  out = jax.jit(lambda y: noise2score.tweedie_poisson(y, jnp.zeros(2), zeta=0.1))(y)
  assert np.isnan(out[0]) and np.isfinite(out[1])
  out = jax.jit(lambda y, s: noise2score.tweedie_gamma(y, s, k=5.0))(
    jnp.array([0.0, 1.0, 1.0]), jnp.array([0.0, 10.0, 0.0])
  )
  assert np.isnan(out[0]) and np.isnan(out[1]) and out[2] == pytest.approx(5.0 / 4.0)
  # gradient poisoned too
  grad = jax.grad(lambda y: noise2score.tweedie_poisson(y, 0.0, zeta=0.1).sum())(y)
  assert np.isnan(grad[0]) and np.isfinite(grad[1])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_tweedie_keeps_the_dtype_of_its_inputs(dtype):
  y = jnp.ones(3, dtype)
  for out in (
    noise2score.tweedie_gaussian(y, y, sigma=0.1),
    noise2score.tweedie_poisson(y, y, zeta=0.1),
    noise2score.tweedie_gamma(y, -y, k=10.0),
  ):
    assert out.dtype == dtype


def test_tweedie_under_jit_and_vmap_equals_the_eager_value(x64):
  y = jnp.linspace(0.2, 3.0, 12).reshape(4, 3)
  s = -0.3 * y + 0.1
  for fn in (
    lambda y, s: noise2score.tweedie_gaussian(y, s, sigma=0.4),
    lambda y, s: noise2score.tweedie_poisson(y, s, zeta=0.05),
    lambda y, s: noise2score.tweedie_gamma(y, s, k=20.0),
  ):
    eager = fn(y, s)
    np.testing.assert_allclose(jax.jit(fn)(y, s), eager, rtol=1e-15)
    np.testing.assert_allclose(jax.vmap(fn)(y, s), eager, rtol=1e-15)
