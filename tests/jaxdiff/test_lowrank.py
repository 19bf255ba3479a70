"""jaxdiff.testing.LowRankGaussianMixture and low_rank_denoiser against float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import schedules
from jaxdiff.testing import (
  GaussianMixture,
  LowRankGaussianMixture,
  empirical_denoiser,
  low_rank_denoiser,
)

D = 5


def _orthonormal(rng, d, r):
  return np.linalg.qr(rng.normal(size=(d, r)))[0] if r else np.zeros((d, 0))


def _setup(seed=0, ranks=(1, 2, 0)):
  """Three components in 5-D: a line, a plane and a point, with different means/weights."""
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(len(ranks), D))
  bases = [_orthonormal(rng, D, r) for r in ranks]
  variances = [rng.uniform(0.5, 2.0, size=r) for r in ranks]
  weights = np.array([0.5, 0.3, 0.2])[: len(ranks)]
  return means, bases, variances, weights


def _dense_reference(means, bases, variances, weights, x, alpha, sigma):
  """NumPy float64: dense covariances alpha^2 Sigma_k + sigma^2 I, solves and slogdet."""
  logn, post = [], []
  for mu, u, lam in zip(means, bases, variances):
    cov = u @ np.diag(lam) @ u.T
    c = alpha**2 * cov + sigma**2 * np.eye(D)
    r = x - alpha * mu
    sol = np.linalg.solve(c, r.T).T
    logn.append(-0.5 * (np.sum(r * sol, 1) + np.linalg.slogdet(c)[1] + D * np.log(2 * np.pi)))
    post.append(mu + alpha * sol @ cov)  # mu + alpha Sigma C^{-1} r (Sigma, C symmetric)
  logits = np.log(weights / weights.sum())[None] + np.stack(logn, 1)
  logp = np.logaddexp.reduce(logits, axis=1)
  resp = np.exp(logits - logp[:, None])
  mean = np.einsum("bk,kbd->bd", resp, np.stack(post))
  # score: sum_k resp_k * (-C_k^{-1} r_k)
  score = np.zeros_like(x)
  for k, (mu, u, lam) in enumerate(zip(means, bases, variances)):
    c = alpha**2 * (u @ np.diag(lam) @ u.T) + sigma**2 * np.eye(D)
    score -= resp[:, k : k + 1] * np.linalg.solve(c, (x - alpha * mu).T).T
  return mean, logp, score


@pytest.mark.parametrize("alpha, sigma", [(0.9, 0.3), (0.5, 1.2), (0.05, 2.0)])
def test_denoiser_score_and_density_match_a_dense_float64_reference(x64, alpha, sigma):
  means, bases, variances, weights = _setup()
  mix = LowRankGaussianMixture(means, bases, variances, weights)
  x = np.random.default_rng(1).normal(size=(7, D)) * 2
  mean, logp, score = _dense_reference(means, bases, variances, weights, x, alpha, sigma)
  np.testing.assert_allclose(mix.posterior_mean(x, alpha, sigma), mean, rtol=1e-11, atol=1e-12)
  np.testing.assert_allclose(mix.marginal_log_prob(x, alpha, sigma), logp, rtol=1e-12)
  np.testing.assert_allclose(mix.score(x, alpha, sigma), score, rtol=1e-10, atol=1e-11)


def test_score_is_the_gradient_of_the_log_density(x64):
  means, bases, variances, weights = _setup(2)
  mix = LowRankGaussianMixture(means, bases, variances, weights)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(4, D)))
  grad = jax.vmap(jax.grad(lambda v: mix.marginal_log_prob(v[None], 0.7, 0.4)[0]))(x)
  np.testing.assert_allclose(mix.score(x, 0.7, 0.4), grad, rtol=1e-10, atol=1e-12)


def test_full_rank_equals_gaussian_mixture(x64):
  rng = np.random.default_rng(4)
  means = rng.normal(size=(2, D))
  bases = np.stack([_orthonormal(rng, D, D) for _ in range(2)])
  lam = rng.uniform(0.2, 3.0, size=(2, D))
  mix = LowRankGaussianMixture(means, bases, lam, [0.4, 0.6])
  gmm = GaussianMixture(means, np.einsum("kdr,kr,ker->kde", bases, lam, bases), [0.4, 0.6])
  x = rng.normal(size=(6, D))
  sched = schedules.vp_cosine()
  t = jnp.linspace(0.05, 0.95, 6)
  np.testing.assert_allclose(
    mix.denoiser(sched)(x, t), gmm.denoiser(sched)(x, t), rtol=1e-10, atol=1e-12
  )
  a, s = sched.alpha(t), sched.sigma(t)
  np.testing.assert_allclose(
    mix.marginal_log_prob(x, a, s), gmm.marginal_log_prob(x, a, s), rtol=1e-11
  )
  np.testing.assert_allclose(mix.covariances(), gmm.covariances(), atol=1e-12)


def test_gaussian_mixture_converges_to_it_as_the_missing_variance_vanishes(x64):
  # A full-rank mixture with covariance U diag(lambda) U^T + eps I tends to the low-rank one
  # as eps -> 0, with an error of order eps.
  means, bases, variances, weights = _setup(5, ranks=(2, 3, 1))
  mix = LowRankGaussianMixture(means, bases, variances, weights)
  x = np.random.default_rng(6).normal(size=(5, D))
  want = mix.posterior_mean(x, 0.8, 0.5)
  errs = []
  for eps in (1e-2, 1e-4, 1e-6):
    covs = [u @ np.diag(lam) @ u.T + eps * np.eye(D) for u, lam in zip(bases, variances)]
    gmm = GaussianMixture(means, np.stack(covs), weights)
    errs.append(float(jnp.max(jnp.abs(gmm.posterior_mean(x, 0.8, 0.5) - want))))
  assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-5
  assert errs[0] / errs[1] > 50  # first order in eps


def test_sigma_zero_is_exact_on_the_support_and_the_score_follows_the_policy(x64):
  means, bases, variances, weights = _setup(7)
  mix = LowRankGaussianMixture(means, bases, variances, weights)
  x0 = mix.sample(0, 6)
  np.testing.assert_allclose(mix.posterior_mean(0.8 * x0, 0.8, 0.0), x0, rtol=1e-14)
  assert float(jnp.max(jnp.abs(mix.score(0.8 * x0, 0.8, 0.0)))) == 0.0
  with pytest.raises(ValueError, match="marginal_log_prob: sigma must be > 0"):
    mix.marginal_log_prob(x0, 1.0, 0.0)
  assert bool(jnp.all(jnp.isnan(jax.jit(mix.marginal_log_prob)(x0, 1.0, 0.0))))


def test_rank_zero_components_are_the_empirical_distribution(x64):
  points = np.random.default_rng(8).normal(size=(4, D))
  mix = LowRankGaussianMixture(points, np.zeros((4, D, 0)))
  sched = schedules.vp_cosine()
  x = np.random.default_rng(9).normal(size=(3, D))
  t = jnp.array([0.2, 0.5, 0.9])
  np.testing.assert_allclose(
    mix.denoiser(sched)(x, t), empirical_denoiser(points, sched)(x, t), rtol=1e-12, atol=1e-13
  )


def test_samples_lie_on_the_subspaces_with_the_component_variances(x64):
  means, bases, variances, weights = _setup(10, ranks=(2, 3))
  mix = LowRankGaussianMixture(means, bases, variances, weights[:2] / weights[:2].sum(), [0, 1])
  for k in (0, 1):
    x = mix.sample(jax.random.key(k), 4000, jnp.full(4000, k))
    r = np.asarray(x) - means[k]
    off = r - r @ bases[k] @ bases[k].T
    assert np.abs(off).max() < 1e-12
    np.testing.assert_allclose(np.var(r @ bases[k], axis=0), variances[k], rtol=0.1)


def test_low_rank_parameterisation_is_the_exact_denoiser_of_its_mixture(x64):
  # Zero means, unit variances, equal ranks and weights: the paper's MoLRG, whose posterior
  # mean is the softmax-over-subspaces network at the true bases.
  rng = np.random.default_rng(11)
  bases = np.stack([_orthonormal(rng, 8, 3) for _ in range(3)])
  mix = LowRankGaussianMixture(np.zeros((3, 8)), bases)
  net = low_rank_denoiser(jnp.asarray(bases), schedules.vp_cosine())
  sched = schedules.vp_cosine()
  x = rng.normal(size=(6, 8))
  t = jnp.linspace(0.02, 0.98, 6)
  np.testing.assert_allclose(net(x, t), mix.denoiser(sched)(x, t), rtol=1e-11, atol=1e-12)
  # sigma = 0: the hard assignment of the limit, never NaN
  x0 = mix.sample(0, 5)
  np.testing.assert_allclose(net(x0, jnp.zeros(5)), x0, atol=1e-12)


def test_class_conditional_labels_follow_the_policy(x64):
  means, bases, variances, weights = _setup(12)
  mix = LowRankGaussianMixture(means, bases, variances, weights, classes=[0, 1, 1])
  x = np.zeros((2, D))
  one = mix.posterior_mean(x, 0.6, 0.6, jnp.array([0, 0]))
  sub = LowRankGaussianMixture(means[:1], bases[:1], variances[:1])
  np.testing.assert_allclose(one, sub.posterior_mean(x, 0.6, 0.6), rtol=1e-12)
  with pytest.raises(ValueError, match="cond"):
    mix.posterior_mean(x, 0.6, 0.6, jnp.array([0, 2]))
  bad = jax.jit(lambda c: mix.posterior_mean(x, 0.6, 0.6, c))(jnp.array([0, 2]))
  assert bool(jnp.all(jnp.isnan(bad[1]))) and bool(jnp.all(jnp.isfinite(bad[0])))


def test_bad_input_names_the_argument():
  eye = np.eye(3)
  with pytest.raises(ValueError, match=r"bases\[0\] has rank 4 > D = 3"):
    LowRankGaussianMixture(np.zeros((1, 3)), [np.ones((3, 4))])
  with pytest.raises(ValueError, match="variances must be >= 0"):
    LowRankGaussianMixture(np.zeros((1, 3)), eye[None, :, :2], -1.0)
  with pytest.raises(ValueError, match=r"bases\[0\] must have orthonormal columns"):
    LowRankGaussianMixture(np.zeros((1, 3)), 2 * eye[None, :, :2])
  with pytest.raises(ValueError, match=r"bases\[1\] must have shape \(D, r\) = \(3, r\)"):
    LowRankGaussianMixture(np.zeros((2, 3)), [eye[:, :1], np.eye(4)[:, :1]])
  with pytest.raises(ValueError, match="bases must hold one basis per component"):
    LowRankGaussianMixture(np.zeros((2, 3)), [eye[:, :1]])
  with pytest.raises(ValueError, match=r"variances\[0\] must have shape \(2,\)"):
    LowRankGaussianMixture(np.zeros((1, 3)), eye[None, :, :2], [np.ones(3)])
  with pytest.raises(ValueError, match="means must be finite"):
    LowRankGaussianMixture(np.full((1, 3), np.nan), eye[None, :, :1])
  with pytest.raises(ValueError, match="sigma must be >= 0"):
    LowRankGaussianMixture(np.zeros((1, 3)), eye[None, :, :1]).posterior_mean(
      np.ones((1, 3)), 1.0, -0.1
    )
  with pytest.raises(ValueError, match="low_rank_denoiser: bases must be"):
    low_rank_denoiser(jnp.ones((3, 2)), schedules.flow())
