"""Curvature products against dense float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from optim import curvature
from tests.optim.curvature import _mlp


@pytest.fixture(scope="module")
def problem(mlp_problem):
  return mlp_problem[:3]


def _random_like(key, params):
  flat, unravel = ravel_pytree(params)
  return unravel(jax.random.normal(key, flat.shape, flat.dtype))


def test_hvp_matches_dense_hessian_times_vector(x64, problem):
  params, batch, hess = problem
  v = _random_like(jax.random.key(1), params)
  hv = curvature.hvp(_mlp.loss, params, v, batch)
  np.testing.assert_allclose(ravel_pytree(hv)[0], hess @ ravel_pytree(v)[0], rtol=1e-10, atol=1e-12)


def test_hvp_preserves_params_dtype_and_casts_direction():
  params = {"w": jnp.ones(3, jnp.bfloat16)}
  v = {"w": jnp.ones(3, jnp.float32)}
  out = curvature.hvp(lambda p: jnp.sum(p["w"].astype(jnp.float32) ** 2), params, v)
  assert out["w"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out["w"], np.float32), 2.0)


def test_directional_sharpness_is_rayleigh_quotient_of_dense_hessian(x64, problem):
  params, batch, hess = problem
  d = _random_like(jax.random.key(2), params)
  flat_d = ravel_pytree(d)[0]
  expected = flat_d @ hess @ flat_d / (flat_d @ flat_d)
  got = curvature.directional_sharpness(_mlp.loss, params, d, batch)
  np.testing.assert_allclose(got, expected, rtol=1e-10)
  # Invariant to the scale of the direction.
  got_scaled = curvature.directional_sharpness(
    _mlp.loss, params, jax.tree.map(lambda x: -7.0 * x, d), batch
  )
  np.testing.assert_allclose(got_scaled, expected, rtol=1e-10)


def test_directional_sharpness_of_zero_direction_is_zero_not_nan():
  f = lambda p: jnp.sum(p**2)
  out = jax.jit(curvature.directional_sharpness, static_argnums=0)(f, jnp.ones(4), jnp.zeros(4))
  assert out == 0.0
  # Gradients through it are finite too (sharpness-aware methods differentiate it).
  g = jax.grad(lambda d: curvature.directional_sharpness(f, jnp.ones(4), d))(jnp.zeros(4))
  assert np.all(np.isfinite(g))


def _dense(build, params, *args):
  """The dense matrix of the operator ``build(params, *args)``, column by column (jitted)."""
  flat, unravel = ravel_pytree(params)

  @jax.jit
  def columns(params, args):
    op = build(params, *args)
    return jax.vmap(lambda e: ravel_pytree(op(unravel(e)))[0])(jnp.eye(flat.size, dtype=flat.dtype))

  return np.asarray(columns(params, args)).T


def test_hessian_matvec_over_stacked_batches_is_mean_of_batch_hessians(x64, problem):
  params, (x, y), hess = problem
  # Four equal batches of 8: the mean of the per-batch mean losses is the full-batch loss.
  stacked = (x.reshape(4, 8, -1), y.reshape(4, 8))
  op = curvature.hessian_matvec(_mlp.loss, params, stacked, stacked=True)
  v = _random_like(jax.random.key(3), params)
  got = jax.jit(lambda v: ravel_pytree(op(v))[0])(v)
  np.testing.assert_allclose(got, hess @ ravel_pytree(v)[0], rtol=1e-10, atol=1e-12)
  single = curvature.hessian_matvec(_mlp.loss, params, (x, y))
  np.testing.assert_allclose(ravel_pytree(single(v))[0], got, rtol=1e-10, atol=1e-12)


def test_ggn_matches_dense_jacobian_sandwich(x64, problem):
  params, (x, y), _ = problem
  flat, unravel = ravel_pytree(params)
  jac = jax.jit(jax.jacobian(lambda z: _mlp.mlp(unravel(z), x).reshape(-1)))(flat)
  h_out = jax.jit(jax.hessian(lambda o: _mlp.cross_entropy(o.reshape(x.shape[0], -1), y)))(
    _mlp.mlp(params, x).reshape(-1)
  )
  expected = jac.T @ h_out @ jac
  got = _dense(
    lambda p, b: curvature.ggn_matvec(_mlp.mlp, _mlp.cross_entropy, p, b), params, (x, y)
  )
  np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
  # PSD for a loss convex in the outputs.
  assert np.linalg.eigvalsh(expected).min() > -1e-12


def test_ggn_equals_hessian_for_linear_model_with_squared_loss(x64):
  kx, ky, kw = jax.random.split(jax.random.key(4), 3)
  x = jax.random.normal(kx, (20, 6), jnp.float64)
  y = jax.random.normal(ky, (20, 3), jnp.float64)
  params = {"w": jax.random.normal(kw, (6, 3), jnp.float64), "b": jnp.zeros(3, jnp.float64)}
  model = lambda p, x: x @ p["w"] + p["b"]
  sq = lambda out, y: 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))
  ggn = _dense(lambda p, b: curvature.ggn_matvec(model, sq, p, b), params, (x, y))
  hess = np.asarray(_mlp.dense_hessian(lambda p, b: sq(model(p, b[0]), b[1]), params, (x, y)))
  np.testing.assert_allclose(ggn, hess, rtol=1e-12, atol=1e-12)
  # ... and the GGN differs from the Hessian once the model is nonlinear (sanity of the test).
  tanh_model = lambda p, x: jnp.tanh(x @ p["w"] + p["b"])
  ggn_nl = _dense(lambda p, b: curvature.ggn_matvec(tanh_model, sq, p, b), params, (x, y))
  hess_nl = np.asarray(
    _mlp.dense_hessian(lambda p, b: sq(tanh_model(p, b[0]), b[1]), params, (x, y))
  )
  assert np.abs(ggn_nl - hess_nl).max() > 1e-3


@jax.jit
def _jacobian_of_per_example_nll(params, x, y):
  flat, unravel = ravel_pytree(params)
  nll = lambda z: curvature.softmax_nll(_mlp.mlp(unravel(z), x), y)
  return jax.jacobian(nll)(flat)  # (N, P)


def _per_example_jacobian(params, x, y):
  return np.asarray(_jacobian_of_per_example_nll(params, x, y))


def test_empirical_fisher_matches_mean_outer_product_of_per_example_gradients(x64, problem):
  params, (x, y), _ = problem
  jac = _per_example_jacobian(params, x, y)
  expected = jac.T @ jac / x.shape[0]
  got = _dense(lambda p, b: curvature.fisher_matvec(_mlp.mlp, p, b), params, (x, y))
  np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-13)


def test_true_fisher_expectation_over_labels_equals_ggn_exactly(x64, problem):
  # E_y[g g^T] by enumerating the classes with their model probabilities.
  params, (x, y), _ = problem
  probs = np.asarray(jax.nn.softmax(_mlp.mlp(params, x)))
  n, c = probs.shape
  expected = (
    sum(
      (_per_example_jacobian(params, x, jnp.full((n,), k, jnp.int32)) * probs[:, k : k + 1]).T
      @ _per_example_jacobian(params, x, jnp.full((n,), k, jnp.int32))
      for k in range(c)
    )
    / n
  )
  ggn = _dense(
    lambda p, b: curvature.ggn_matvec(_mlp.mlp, _mlp.cross_entropy, p, b), params, (x, y)
  )
  np.testing.assert_allclose(expected, ggn, rtol=1e-9, atol=1e-13)


def test_true_fisher_with_sampled_labels_equals_ggn_in_expectation(x64, problem):
  """Monte-Carlo test: each of K independent label draws gives X_k = F_k u, E[X_k] = G u.

  Tolerance: per coordinate, z = (mean_k X_k - G u) / (std_k X_k / sqrt(K)) is ~ N(0, 1)
  for K = 512 (CLT); requiring max |z| < 5 over the P = 235 coordinates has a family-wise
  false-alarm rate <= 235 * P(|N(0,1)| > 5) = 235 * 5.7e-7 ~ 1.3e-4 (Bonferroni). The
  same statistic must reject the empirical Fisher (observed labels), showing power.
  """
  params, (x, y), _ = problem
  u = _random_like(jax.random.key(5), params)
  num_draws = 512

  @jax.jit
  def draws(keys):
    one = lambda k: ravel_pytree(
      curvature.fisher_matvec(_mlp.mlp, params, (x, y), variant="true", key=k)(u)
    )[0]
    return jax.vmap(one)(keys)

  samples = np.asarray(draws(jax.random.split(jax.random.key(6), num_draws)))
  mean = samples.mean(0)
  se = samples.std(0, ddof=1) / np.sqrt(num_draws)
  assert np.all(se > 0)
  gu = ravel_pytree(curvature.ggn_matvec(_mlp.mlp, _mlp.cross_entropy, params, (x, y))(u))[0]
  z = (mean - np.asarray(gu)) / se
  assert np.max(np.abs(z)) < 5.0, np.max(np.abs(z))
  emp = ravel_pytree(curvature.fisher_matvec(_mlp.mlp, params, (x, y), variant="empirical")(u))[0]
  assert np.max(np.abs((mean - np.asarray(emp)) / se)) > 5.0
  # More label samples per example average the same way (one operator, S = 64).
  op64 = curvature.fisher_matvec(
    _mlp.mlp, params, (x, y), variant="true", key=jax.random.key(7), num_samples=64
  )
  z64 = (np.asarray(ravel_pytree(op64(u))[0]) - np.asarray(gu)) / (se * np.sqrt(num_draws / 64))
  assert np.max(np.abs(z64)) < 5.0, np.max(np.abs(z64))


def test_fisher_over_stacked_batches_is_mean_of_batch_fishers(x64, problem):
  params, (x, y), _ = problem
  stacked = (x.reshape(4, 8, -1), y.reshape(4, 8))
  v = _random_like(jax.random.key(8), params)
  got = curvature.fisher_matvec(_mlp.mlp, params, stacked, stacked=True)(v)
  full = curvature.fisher_matvec(_mlp.mlp, params, (x, y))(v)
  np.testing.assert_allclose(ravel_pytree(got)[0], ravel_pytree(full)[0], rtol=1e-10, atol=1e-13)
