"""jaxdiff.metrics against SciPy / NumPy references written from the papers' definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.stats

from jaxdiff import metrics

# Jitted entry points: one compiled program per shape instead of one per eager primitive.
_sw = jax.jit(metrics.sliced_wasserstein, static_argnames=("num_projections", "p"))
_pr = jax.jit(metrics.precision_recall, static_argnames=("k",))
_fd = jax.jit(metrics.frechet_distance)


def _correlated(rng, n, d, shift=0.0):
  mix = rng.normal(size=(d, d)) / np.sqrt(d)
  return rng.normal(size=(n, d)) @ mix + shift


def _fid_scipy(a, b):
  """The classic FID computation (pytorch-fid's): sqrtm of the product, real part."""
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
  return np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean)


def test_frechet_distance_matches_scipy_sqrtm_reference(x64):
  rng = np.random.default_rng(0)
  a, b = _correlated(rng, 400, 8), _correlated(rng, 300, 8, shift=0.3)
  got = _fd(a, b)
  assert got.dtype == jnp.float64
  np.testing.assert_allclose(float(got), _fid_scipy(a, b), rtol=1e-9)


def test_gaussian_frechet_distance_exact_on_ill_conditioned_commuting_covariances(x64):
  # Shared eigenbasis: d^2 = |mu_a - mu_b|^2 + sum_i (sqrt(la_i) - sqrt(lb_i))^2 exactly.
  rng = np.random.default_rng(1)
  d = 12
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  la = np.logspace(-10, 0, d)
  lb = np.logspace(-9, 1, d)[rng.permutation(d)]
  la[:3] = 0.0  # singular (rank-deficient) covariance, as with fewer samples than features
  cov_a, cov_b = (q * la) @ q.T, (q * lb) @ q.T
  mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
  want = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(la) - np.sqrt(lb)) ** 2)
  got = metrics.gaussian_frechet_distance(mu_a, cov_a, mu_b, cov_b)
  np.testing.assert_allclose(float(got), want, rtol=1e-9)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_nonnegative(x64):
  a = _correlated(np.random.default_rng(2), 50, 16)  # N > D
  assert float(_fd(a, a)) == pytest.approx(0.0, abs=1e-10)
  b = a[:10]  # N < D: singular covariance, must not go negative or NaN
  got = float(_fd(b, b))
  assert np.isfinite(got) and 0.0 <= got < 1e-10


def test_frechet_distance_float32_close_to_float64_and_jits():
  rng = np.random.default_rng(3)
  a, b = _correlated(rng, 300, 6), _correlated(rng, 300, 6, shift=0.5)
  got = jax.jit(metrics.frechet_distance)(a.astype(np.float32), b.astype(np.float32))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(float(got), _fid_scipy(a, b), rtol=1e-3)


def _precision_recall_numpy(real, fake, k):
  """Kynkaanniemi et al. (2019) Eq. 1-2 transcribed with explicit distance matrices."""

  def radii(x):
    d = scipy.spatial.distance.cdist(x, x)
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

  def covered(manifold, queries):
    d = scipy.spatial.distance.cdist(queries, manifold)
    return np.mean(np.any(d <= radii(manifold)[None, :], axis=1))

  return covered(real, fake), covered(fake, real)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_matches_numpy_reference(x64, k):
  rng = np.random.default_rng(4 + k)
  real = rng.normal(size=(150, 5))
  fake = np.concatenate([rng.normal(size=(60, 5)) * 0.5, rng.normal(size=(60, 5)) + 2.5])
  p, r = _pr(real, fake, k=k)
  want_p, want_r = _precision_recall_numpy(real, fake, k)
  assert 0.0 < want_p < 1.0 and 0.0 < want_r < 1.0  # the case exercises both outcomes
  assert float(p) == pytest.approx(want_p, abs=1e-12)
  assert float(r) == pytest.approx(want_r, abs=1e-12)


def test_precision_recall_detects_mode_collapse():
  rng = np.random.default_rng(5)
  real = rng.normal(size=(300, 2))
  collapsed = real[real[:, 0] > 1.0]  # faithful but covers only one tail
  p, r = _pr(real, collapsed)
  assert float(p) == 1.0  # every collapsed sample lies on the real manifold
  assert float(r) < 0.5


@pytest.mark.parametrize("variant", ["excess", "fraction", "rms"])
def test_saturation_matches_numpy(variant):
  rng = np.random.default_rng(6)
  x = rng.normal(size=(7, 3, 4)) * 1.5
  flat = x.reshape(7, -1)
  want = {
    "excess": np.mean(np.maximum(flat - 0.5, 0) + np.maximum(-1.0 - flat, 0)),
    "fraction": np.mean((flat < -1.0) | (flat > 0.5)),
    "rms": np.mean(np.sqrt(np.mean(flat**2, axis=1))),
  }[variant]
  got = metrics.saturation(x, low=-1.0, high=0.5, variant=variant)
  np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_saturation_method_keyword_still_works_and_warns():
  x = jnp.array([[0.5, 1.5, -3.0, 0.0]])
  with pytest.warns(DeprecationWarning, match="variant"):
    old = metrics.saturation(x, method="fraction")
  assert float(old) == float(metrics.saturation(x, variant="fraction")) == 0.5


def test_saturation_excess_is_zero_inside_range_and_grows_with_overshoot():
  x = jnp.linspace(-1.0, 1.0, 64).reshape(2, 32)
  assert float(metrics.saturation(x)) == 0.0
  assert float(metrics.saturation(2 * x)) < float(metrics.saturation(3 * x))


def test_wasserstein_1d_unequal_sizes_matches_scipy(x64):
  # d = 1: both unit directions give the same 1-D problem, so SW_1 = W_1 exactly.
  rng = np.random.default_rng(7)
  u, v = rng.normal(size=(37, 1)), rng.gamma(2.0, size=(53, 1))
  got = _sw(u, v, key=jax.random.key(0), num_projections=3, p=1.0)
  np.testing.assert_allclose(float(got), scipy.stats.wasserstein_distance(u[:, 0], v[:, 0]))


def test_wasserstein_1d_unequal_sizes_p2_matches_quantile_integral(x64):
  rng = np.random.default_rng(8)
  u, v = rng.normal(size=(6, 1)), rng.normal(size=(4, 1)) + 1.0
  # W_2^2 = int_0^1 |F_u^-1(s) - F_v^-1(s)|^2 ds on a fine grid of s (left-continuous inverse).
  s = (np.arange(240000) + 0.5) / 240000
  qu = np.sort(u[:, 0])[np.ceil(s * 6).astype(int) - 1]
  qv = np.sort(v[:, 0])[np.ceil(s * 4).astype(int) - 1]
  want = np.sqrt(np.mean((qu - qv) ** 2))
  got = _sw(u, v, key=jax.random.key(0), num_projections=2, p=2.0)
  np.testing.assert_allclose(float(got), want, rtol=1e-8)


def test_sliced_wasserstein_matches_numpy_with_documented_directions(x64):
  rng = np.random.default_rng(9)
  x, y = rng.normal(size=(64, 2, 3)), rng.normal(size=(64, 2, 3)) * 2.0 + 0.5
  key = jax.random.key(3)
  theta = np.array(jax.random.normal(key, (50, 6), dtype=jnp.float64))
  theta /= np.linalg.norm(theta, axis=1, keepdims=True)
  px, py = np.sort(x.reshape(64, 6) @ theta.T, 0), np.sort(y.reshape(64, 6) @ theta.T, 0)
  want = np.mean((px - py) ** 2) ** 0.5
  got = jax.jit(lambda a, b, k: metrics.sliced_wasserstein(a, b, key=k, num_projections=50))(
    x, y, key
  )
  np.testing.assert_allclose(float(got), want, rtol=1e-10)


def test_sliced_wasserstein_key_may_be_an_int_seed_or_a_raw_key():
  x, y = np.random.default_rng(11).normal(size=(2, 32, 3))
  want = metrics.sliced_wasserstein(x, y, key=jax.random.key(4), num_projections=8)
  for key in (4, np.int32(4), jax.random.PRNGKey(4)):
    assert float(metrics.sliced_wasserstein(x, y, key=key, num_projections=8)) == float(want)
  with pytest.raises(TypeError, match="key"):
    metrics.sliced_wasserstein(x, y, key=None)


def test_sliced_wasserstein_of_a_translation_is_the_projected_shift(x64):
  # Every 1-D projection of a translated cloud is translated by theta . c, so
  # SW_2^2 = E[(theta . c)^2] = |c|^2 / d for directions uniform on the sphere.
  x = np.random.default_rng(10).normal(size=(200, 4))
  c = np.array([1.0, -2.0, 0.5, 3.0])
  got = _sw(x, x + c, key=jax.random.key(1), num_projections=20000)
  np.testing.assert_allclose(float(got) ** 2, c @ c / 4, rtol=0.03)


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: metrics.frechet_distance(np.ones((5, 3)), np.ones((5, 4))), "dimensions differ"),
    (lambda: metrics.frechet_distance(np.ones((1, 3)), np.ones((5, 3))), "at least 2"),
    (lambda: metrics.frechet_distance(np.ones(3), np.ones(3)), "2-D"),
    (lambda: metrics.precision_recall(np.ones((3, 2)), np.ones((9, 2)), k=3), "at least 4"),
    (lambda: metrics.precision_recall(np.ones((9, 2)), np.ones((9, 2)), k=0), "k must lie"),
    (lambda: metrics.precision_recall(np.ones((9, 2)), np.ones((9, 2)), k=2.5), "k must be an int"),
    (lambda: metrics.saturation(np.ones((2, 2)), variant="hsv"), "variant"),
    (lambda: metrics.saturation(np.ones((2, 2)), low=float("nan")), "low"),
    (lambda: metrics.saturation(np.ones((2, 2)), low=1.0, high=0.0), "high > low"),
    (
      lambda: metrics.sliced_wasserstein(
        np.ones((4, 2)), np.ones((4, 2)), key=jax.random.key(0), num_projections=0
      ),
      "num_projections",
    ),
    (
      lambda: metrics.sliced_wasserstein(
        np.ones((4, 2)), np.ones((4, 2)), key=jax.random.key(0), p=0.5
      ),
      "p must lie",
    ),
    (
      lambda: metrics.sliced_wasserstein(
        np.ones((4, 2)), np.ones((4, 2)), key=0, num_projections=2.5
      ),
      "num_projections must be an integer",
    ),
  ],
)
def test_bad_input_raises_clear_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()
