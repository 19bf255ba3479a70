"""jaxdiff.metrics' Jacobian eigen-analysis against a dense jax.jacfwd in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import schedules
from jaxdiff.metrics import denoiser_jacobian, jacobian_asymmetry, jacobian_spectrum
from jaxdiff.testing import LowRankGaussianMixture
from optim.curvature import hutchinson_trace

SHAPE = (3, 4)  # one 3 x 4 "image": P = 12


def _mlp(seed=0, width=16):
  """A small denoiser x (B, 3, 4) -> (B, 3, 4): a tanh MLP with a time input."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  p = 12
  w1 = jax.random.normal(k1, (p + 1, width), jnp.float64) / np.sqrt(p)
  w2 = jax.random.normal(k2, (width, p), jnp.float64) / np.sqrt(width)
  skip = 0.3 * jax.random.normal(k3, (p, p), jnp.float64) / np.sqrt(p)

  def den(x, t, c):
    xf = x.reshape(x.shape[0], -1)
    h = jnp.tanh(jnp.concatenate([xf, t[:, None].astype(xf.dtype)], 1) @ w1)
    return (h @ w2 + xf @ skip).reshape(x.shape)

  return den


def _dense(den, x, t):
  f = lambda v: den(v[None], jnp.array([t]), None)[0].reshape(-1)  # noqa: E731
  return jax.jacfwd(f)(x).reshape(x.size, x.size)


@pytest.fixture
def point(x64):
  return jax.random.normal(jax.random.key(7), SHAPE, jnp.float64)


def test_operators_are_the_symmetric_part_and_the_gram_matrix(point):
  den = _mlp()
  j = _dense(den, point, 0.4)
  v = jax.random.normal(jax.random.key(1), SHAPE, jnp.float64)
  sym = denoiser_jacobian(den, point, 0.4)(v).reshape(-1)
  gram = denoiser_jacobian(den, point, 0.4, variant="gram")(v).reshape(-1)
  np.testing.assert_allclose(sym, 0.5 * (j + j.T) @ v.reshape(-1), rtol=1e-12, atol=1e-13)
  np.testing.assert_allclose(gram, j.T @ j @ v.reshape(-1), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("variant", ["symmetric", "gram"])
def test_full_lanczos_spectrum_equals_the_dense_jacobians(point, variant):
  den = _mlp(1)
  j = np.asarray(_dense(den, point, 0.4))
  a = 0.5 * (j + j.T) if variant == "symmetric" else j.T @ j
  lam, vec = np.linalg.eigh(a)
  lam, vec = lam[::-1], vec[:, ::-1]
  spec = jacobian_spectrum(den, point, 0.4, key=0, num_iterations=point.size, variant=variant)
  np.testing.assert_allclose(spec.eigenvalues, lam, rtol=1e-9, atol=1e-11)
  got = np.asarray(spec.eigenvectors).reshape(point.size, -1)
  overlap = np.abs(np.sum(got * vec.T, axis=1))  # up to sign, distinct eigenvalues
  np.testing.assert_allclose(overlap, 1.0, atol=1e-7)
  assert float(jnp.max(spec.residuals)) < 1e-10
  assert spec.eigenvectors.shape == (point.size, *SHAPE)


@pytest.mark.integration  # heavy (3-7 s each): CI's second tier keeps make test within 5 min
def test_a_few_steps_find_the_top_of_the_spectrum(x64):
  # A 64-pixel point of an exact low-rank mixture: a symmetric Jacobian whose top
  # eigenvalues are the shrinkage factors alpha lambda / (alpha^2 lambda + sigma^2).
  rng = np.random.default_rng(0)
  u = np.linalg.qr(rng.normal(size=(64, 4)))[0]
  lam = np.array([4.0, 2.0, 1.0, 0.5])
  mix = LowRankGaussianMixture(np.zeros((1, 64)), u[None], lam[None])
  sched = schedules.vp_cosine()
  den = lambda x, t, c: mix.denoiser(sched)(x.reshape(x.shape[0], -1), t).reshape(x.shape)  # noqa: E731
  x = jnp.asarray(rng.normal(size=(8, 8)))
  t = 0.5
  alpha, sigma = float(sched.alpha(t)), float(sched.sigma(t))
  spec = jacobian_spectrum(den, x, t, key=1, num_iterations=8)
  np.testing.assert_allclose(
    spec.eigenvalues[:4], alpha * lam / (alpha**2 * lam + sigma**2), rtol=1e-9
  )
  np.testing.assert_allclose(spec.eigenvalues[4:], 0.0, atol=1e-9)
  assert float(jacobian_asymmetry(den, x, t, key=0)) < 1e-12
  # the effective dimensionality tr J by Hutchinson on the same operator (unbiased)
  tr = hutchinson_trace(denoiser_jacobian(den, x, t), key=0, num_probes=200)
  exact = float(np.sum(alpha * lam / (alpha**2 * lam + sigma**2)))
  assert abs(float(tr.trace) - exact) < 4 * float(tr.stderr) + 1e-12


def test_breakdown_pairs_come_last_with_infinite_residuals(x64):
  shrink = jnp.array([[0.9, 0.9], [0.1, 0.1]])  # two distinct eigenvalues in 4 dims
  spec = jacobian_spectrum(
    lambda x, t, c: x * shrink, jnp.ones((2, 2)), 0.3, key=0, num_iterations=4
  )
  assert int(spec.n_iters) == 2 and bool(spec.converged)
  np.testing.assert_allclose(spec.eigenvalues[:2], [0.9, 0.1], rtol=1e-12)
  assert np.isinf(np.asarray(spec.residuals[2:])).all()


def test_asymmetry_of_a_generic_network_is_positive(point):
  den = _mlp(2)
  j = np.asarray(_dense(den, point, 0.4))
  exact = np.linalg.norm(j - j.T) / (2 * np.linalg.norm(j))
  est = float(jacobian_asymmetry(den, point, 0.4, key=3, num_probes=400))
  assert exact > 0.05 and abs(est - exact) < 0.2 * exact


def test_works_under_jit_and_with_a_condition(x64):
  den = lambda x, t, c: x * (1.0 + c[:, None, None].astype(x.dtype))  # noqa: E731  J = (1 + c) I
  run = lambda x: jacobian_spectrum(den, x, 0.5, jnp.array([2]), key=0, num_iterations=3)  # noqa: E731
  spec = jax.jit(run)(jnp.ones((1, 3)))
  assert float(spec.eigenvalues[0]) == pytest.approx(3.0, rel=1e-12)
  assert int(spec.n_iters) == 1  # J = 3 I: the start vector spans an invariant space


def test_bad_input_names_the_argument(x64):
  den = _mlp()
  x = jnp.zeros(SHAPE)
  with pytest.raises(ValueError, match="variant must be one of"):
    denoiser_jacobian(den, x, 0.5, variant="full")
  with pytest.raises(ValueError, match="t must be a scalar"):
    denoiser_jacobian(den, x, jnp.ones(2))
  with pytest.raises(TypeError, match="x must be a floating array"):
    denoiser_jacobian(den, jnp.zeros(SHAPE, jnp.int32), 0.5)
  with pytest.raises(TypeError, match="denoise must be callable"):
    denoiser_jacobian(None, x, 0.5)
  with pytest.raises(ValueError, match="num_iterations=13 exceeds the dimension"):
    jacobian_spectrum(den, x, 0.5, key=0, num_iterations=13)
  with pytest.raises(ValueError, match=r"denoise must return one prediction of x's shape"):
    denoiser_jacobian(lambda v, t, c: v[:, :1], x, 0.5)
  with pytest.raises(ValueError, match="num_probes must lie in"):
    jacobian_asymmetry(den, x, 0.5, key=0, num_probes=0)
