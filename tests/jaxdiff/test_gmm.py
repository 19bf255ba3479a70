"""The Gaussian-mixture testbed is exact: denoiser = Tweedie, densities = SciPy, Bayes posterior."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxdiff import parameterization, schedules
from jaxdiff.testing import GaussianMixture

MEANS = np.array([[-2.0, 0.5], [1.5, 1.0], [0.5, -2.0], [2.0, -1.0]])
FULL = np.array(
  [
    [[0.3, 0.1], [0.1, 0.2]],
    [[0.2, 0.0], [0.0, 0.4]],
    [[0.5, -0.2], [-0.2, 0.3]],
    [[0.1, 0.05], [0.05, 0.1]],
  ]
)
WEIGHTS = np.array([0.4, 0.3, 0.2, 0.1])
CLASSES = np.array([0, 1, 1, 2])


@pytest.fixture(params=["isotropic", "diagonal", "full"])
def gmm(request, x64):
  cov = {"isotropic": np.array([0.3, 0.2, 0.5, 0.1]), "diagonal": FULL[:, [0, 1], [0, 1]]}
  return GaussianMixture(MEANS, cov.get(request.param, FULL), WEIGHTS, CLASSES)


def _dense_cov(gmm):
  lam = np.asarray(gmm.eigvals)
  if gmm.eigvecs is None:
    return np.stack([np.diag(v) for v in lam])
  u = np.asarray(gmm.eigvecs)
  return np.einsum("kde,ke,kfe->kdf", u, lam, u)


def test_log_prob_matches_scipy_mixture_density(gmm):
  x = np.random.default_rng(0).normal(size=(7, 2)) * 2
  cov = _dense_cov(gmm)
  for y in (-1, 1):
    keep = np.ones(4, bool) if y == -1 else CLASSES == y
    w = WEIGHTS * keep / (WEIGHTS * keep).sum()
    want = np.log(
      sum(w[k] * stats.multivariate_normal(MEANS[k], cov[k]).pdf(x) for k in range(4) if keep[k])
    )
    np.testing.assert_allclose(gmm.log_prob(x, jnp.full((7,), y)), want, rtol=1e-10)


@pytest.mark.parametrize("sched", [schedules.vp_cosine(), schedules.flow(), schedules.edm()])
def test_denoiser_is_tweedie_from_the_exact_marginal_score(gmm, sched):
  # Tweedie: E[x0 | x_t] = (x_t + sigma^2 grad log p_t(x_t)) / alpha, grad by autodiff.
  x = jax.random.normal(jax.random.key(1), (5, 2)) * 1.5
  cond = jnp.array([-1, 0, 1, 2, -1])
  t = jnp.full((5,), 0.4 * sched.t_max + 0.6 * sched.t_min)
  a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
  score = jax.grad(lambda z: gmm.marginal_log_prob(z, a[:, 0], s[:, 0], cond).sum())(x)
  want = parameterization.convert(score, x, a, s, src="score", dst="x0")
  np.testing.assert_allclose(gmm.denoiser(sched)(x, t, cond), want, rtol=1e-9, atol=1e-12)


def test_class_posterior_is_bayes_rule_over_class_marginals(gmm):
  sched = schedules.vp_cosine()
  x = jax.random.normal(jax.random.key(2), (6, 2))
  t = jnp.full((6,), 0.3)
  a, s = sched.alpha(t), sched.sigma(t)
  prior = np.array([WEIGHTS[CLASSES == c].sum() for c in range(3)])
  logs = np.stack([gmm.marginal_log_prob(x, a, s, jnp.full((6,), c)) for c in range(3)], 1)
  joint = logs + np.log(prior)
  want = np.exp(joint - jax.nn.logsumexp(joint, axis=1, keepdims=True))
  got = gmm.class_posterior(x, t, sched)
  np.testing.assert_allclose(got, want, rtol=1e-10)
  np.testing.assert_allclose(gmm.class_posterior(x, t, sched, log=True), np.log(want), rtol=1e-9)


def test_samples_have_the_mixture_moments(gmm):
  n = 40000
  x = np.asarray(gmm.sample(jax.random.key(3), n))
  cov = _dense_cov(gmm)
  mean = WEIGHTS @ MEANS
  second = sum(WEIGHTS[k] * (cov[k] + np.outer(MEANS[k], MEANS[k])) for k in range(4))
  np.testing.assert_allclose(x.mean(0), mean, atol=4 * np.sqrt(np.diag(second).max() / n))
  np.testing.assert_allclose(x.T @ x / n, second, atol=0.06)
  y = np.asarray(gmm.sample(jax.random.key(4), 2000, cond=1))
  # Class 1 owns components 1 and 2 only: every sample is far likelier under them.
  assert np.all(np.asarray(gmm.class_posterior(y, 0.0, schedules.flow()))[:, 1] > 0.5) or (
    np.mean(np.asarray(gmm.class_posterior(y, 0.0, schedules.flow()))[:, 1] > 0.5) > 0.97
  )


def test_sample_accepts_an_int_seed_or_a_raw_key_positionally():
  g = GaussianMixture(MEANS, 0.2)
  want = g.sample(jax.random.key(5), 16)
  np.testing.assert_array_equal(g.sample(5, 16), want)
  np.testing.assert_array_equal(g.sample(jax.random.PRNGKey(5), 16), want)
  with pytest.raises(ValueError, match="n must"):
    g.sample(5, 0)
  with pytest.raises(TypeError, match="key"):
    g.sample("5", 16)


def test_sigma_zero_returns_the_input_and_float32_works():
  g = GaussianMixture(MEANS, 0.2)
  x = jnp.ones((3, 2), jnp.float32)
  out = g.posterior_mean(x, 1.0, 0.0)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, x, rtol=1e-6)


def test_invalid_mixtures_and_inputs_raise():
  with pytest.raises(ValueError, match="positive definite"):
    GaussianMixture(MEANS, np.zeros(4))
  with pytest.raises(ValueError, match="symmetric"):
    GaussianMixture(MEANS[:1], np.array([[[1.0, 0.5], [0.0, 1.0]]]))
  with pytest.raises(ValueError, match="covariances must be"):
    GaussianMixture(MEANS, np.ones((3, 3)))
  g = GaussianMixture(MEANS, 0.2)
  with pytest.raises(ValueError, match="features"):
    g.posterior_mean(jnp.ones((2, 3)), 1.0, 0.5)
  with pytest.raises(ValueError, match="cond"):
    g.posterior_mean(jnp.ones((2, 2)), 1.0, 0.5, jnp.array([0, 1, 2]))
  with pytest.raises(TypeError, match="integer"):
    g.posterior_mean(jnp.ones((2, 2)), 1.0, 0.5, jnp.array([0.0, 1.0]))


def test_out_of_range_labels_raise_when_concrete_and_poison_only_their_rows_under_jit():
  gmm = GaussianMixture(MEANS, 0.3, WEIGHTS, CLASSES)  # 3 classes
  x = jnp.zeros((3, 2))
  labels = jnp.array([0, -1, 3])
  with pytest.raises(ValueError, match=r"cond.*\[0, 3\).*got 3 at index \(2,\)"):
    gmm.log_prob(x, labels)
  with pytest.raises(ValueError, match="cond"):
    gmm.sample(0, 3, labels)
  logp = jax.jit(gmm.log_prob)(x, labels)
  np.testing.assert_allclose(logp[:2], gmm.log_prob(x, jnp.array([0, -1, -1]))[:2], rtol=1e-6)
  assert jnp.isnan(logp[2])
  draws = jax.jit(lambda c: gmm.sample(0, 3, c))(labels)
  assert jnp.isfinite(draws[:2]).all() and jnp.isnan(draws[2]).all()
  den = jax.jit(gmm.denoiser(schedules.flow()))(x, jnp.full((3,), 0.5), labels)
  assert jnp.isfinite(den[:2]).all() and jnp.isnan(den[2]).all()


def test_constructor_rejects_classes_without_components_and_non_finite_weights():
  with pytest.raises(ValueError, match="classes"):
    GaussianMixture(MEANS, 0.3, WEIGHTS, [0, 1, 1, 3])
  with pytest.raises(ValueError, match="weights"):
    GaussianMixture(MEANS, 0.3, [1.0, 1.0, 1.0, np.inf])


def test_denoiser_returns_the_dtype_of_x_and_declares_num_classes():
  gmm = GaussianMixture(MEANS, 0.3, WEIGHTS, CLASSES)
  den = gmm.denoiser(schedules.flow())
  out = den(jnp.zeros((2, 2), jnp.bfloat16), jnp.full((2,), 0.5), jnp.array([0, 2]))
  assert out.dtype == jnp.bfloat16 and den.num_classes == 3
