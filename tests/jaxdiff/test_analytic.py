"""Analytic denoisers vs float64 references: the empirical (memorising) denoiser, the
Wiener denoiser vs the exact one-component mixture, the locality measurement, ISTD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import metrics, schedules, solvers
from jaxdiff.testing import GaussianMixture, empirical_denoiser, locality, wiener_denoiser


def _points(n=6, d=5, seed=0):
  return np.random.default_rng(seed).normal(size=(n, d)) * 2.0


def test_empirical_denoiser_reproduces_training_points_at_small_noise(x64):
  pts = _points()
  sched = schedules.flow()
  den = empirical_denoiser(pts, sched)
  eps = np.random.default_rng(1).normal(size=pts.shape)
  for t in (0.0, 1e-3, 0.02):
    x = (1 - t) * pts + t * eps
    np.testing.assert_allclose(den(x, jnp.full((6,), t)), pts, atol=1e-10)
  # at pure noise it returns the mean of the training set
  np.testing.assert_allclose(
    den(eps, jnp.ones(6)), np.broadcast_to(pts.mean(0), pts.shape), atol=1e-12
  )


@pytest.mark.slow
def test_sampling_the_empirical_denoiser_copies_training_points(x64):
  pts = _points(n=4, d=3)
  sched = schedules.flow()
  z = np.random.default_rng(2).normal(size=(8, 3))
  x = jaxdiff.sample(
    empirical_denoiser(pts, sched), solvers.euler(), z, jaxdiff.timesteps(sched, 50), key=0
  ).x
  dist = np.min(np.linalg.norm(np.asarray(x)[:, None] - pts[None], axis=-1), axis=1)
  assert dist.max() < 1e-6


@pytest.mark.slow  # the small-noise test covers the empirical denoiser in CI
def test_empirical_denoiser_is_the_mixture_of_tiny_components(x64):
  # The empirical distribution is the limit of a mixture with vanishing variances: the
  # mixture's exact posterior mean with variance 1e-14 is the float64 reference.
  pts = _points()
  labels = np.array([0, 1, 2, 0, 1, 2])
  sched = schedules.vp_cosine()
  gmm = GaussianMixture(pts, 1e-14, classes=labels)
  den = empirical_denoiser(pts, sched, labels=labels)
  x = np.random.default_rng(3).normal(size=(6, 5))
  t = jnp.linspace(0.1, 0.9, 6)
  for cond in (jnp.array([0, 1, 2, -1, 0, 1]),):
    np.testing.assert_allclose(
      den(x, t, cond), gmm.denoiser(sched)(x, t, cond), rtol=1e-9, atol=1e-10
    )


def test_wiener_denoiser_is_the_exact_one_component_mixture_denoiser(x64):
  rng = np.random.default_rng(4)
  a = rng.normal(size=(5, 5))
  cov = a @ a.T + 0.1 * np.eye(5)
  mu = rng.normal(size=5)
  sched = schedules.flow()
  gmm = GaussianMixture(mu[None], cov[None])
  x = rng.normal(size=(4, 5))
  tt = jnp.array([0.0, 0.3, 0.7, 1.0])  # both ends included: sigma = 0 and alpha = 0
  wiener = wiener_denoiser(None, sched, mean=mu, covariance=cov)
  np.testing.assert_allclose(wiener(x, tt), gmm.denoiser(sched)(x, tt), rtol=1e-10, atol=1e-12)
  t = 0.3
  tt = jnp.full((4,), t)
  # from data with exactly these moments (1/N covariance)
  data = rng.normal(size=(200, 5))
  w_data = wiener_denoiser(data, sched)
  m, c = data.mean(0), np.cov(data.T, bias=True)
  ref = GaussianMixture(m[None], c[None]).denoiser(sched)
  np.testing.assert_allclose(w_data(x, tt), ref(x, tt), rtol=1e-9, atol=1e-11)
  jac = jax.jacfwd(lambda v: wiener(v[None], jnp.full((1,), t))[0])(jnp.asarray(x[0]))
  np.testing.assert_allclose(wiener.jacobian(t), jac, rtol=1e-10, atol=1e-12)


def test_wiener_keeps_directions_without_variance_at_the_mean(x64):
  # A constant pixel (zero variance) stays at its mean, also at sigma = 0.
  data = np.random.default_rng(5).normal(size=(50, 3))
  data[:, 1] = 0.25
  den = wiener_denoiser(data, schedules.flow())
  out = np.asarray(den(np.ones((2, 3)), jnp.array([0.0, 0.5])))
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out[:, 1], 0.25, atol=1e-12)
  np.testing.assert_allclose(out[0], np.ones(3) * [1, 0, 1] + [0, 0.25, 0], atol=1e-10)


def test_locality_radius_grows_with_the_correlation_length():
  h = w = 8
  rr, cc = np.divmod(np.arange(h * w), w)
  d2 = (rr[:, None] - rr[None]) ** 2 + (cc[:, None] - cc[None]) ** 2
  assert locality(np.eye(h * w), (h, w)).max() == 0
  radii = []
  for ell in (0.5, 1.0, 2.0):
    cov = np.exp(-d2 / (2 * ell**2)) + 1e-6 * np.eye(h * w)
    jac = wiener_denoiser(None, schedules.flow(), mean=np.zeros(h * w), covariance=cov).jacobian(
      0.5
    )
    radii.append(locality(np.asarray(jac), (h, w)).mean())
  assert radii[0] < radii[1] < radii[2]
  right = np.eye(16, k=1) * (np.arange(16) % 4 != 3)[:, None]  # right neighbour, same row
  r = locality(np.eye(16) + right + right.T, (4, 4), mass=0.99)
  assert set(r.tolist()) == {1}


def test_istd_is_the_std_of_neighbour_distances(x64):
  rng = np.random.default_rng(6)
  frames = rng.normal(size=(3, 6, 4, 4))
  d = np.mean((frames[:, 1:] - frames[:, :-1]) ** 2, axis=(2, 3))
  np.testing.assert_allclose(metrics.istd(frames), np.mean(np.std(d, axis=1)), rtol=1e-12)
  d2 = np.linalg.norm((frames[:, 1:] - frames[:, :-1]).reshape(3, 5, -1), axis=-1)
  np.testing.assert_allclose(
    metrics.istd(frames, variant="l2"), np.mean(np.std(d2, axis=1)), rtol=1e-12
  )
  line = np.linspace(0, 1, 6)[None, :, None] * np.ones((2, 6, 3))
  assert float(metrics.istd(line)) < 1e-15
