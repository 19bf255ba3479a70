"""Correctors (Langevin, LML): the seam after the solver step, against float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxdiff
from jaxdiff import correctors, guidance, schedules, solvers
from jaxdiff._correctors import LMLState
from jaxdiff._parameterization import eps_from_x0
from jaxdiff._types import Prediction, StepContext
from jaxdiff.testing import GaussianMixture

SCHED = schedules.vp_cosine()


def _manual_ddim_langevin(den, x, ts, key, snr):
  """DDIM + one Langevin move per sigma > 0 point, written out (float64 reference)."""
  for i in range(ts.num_steps):
    x0 = den(x, jnp.full((x.shape[0],), ts.t[i]), None)
    eps = (x - ts.alpha[i] * x0) / ts.sigma[i]
    x = ts.alpha[i + 1] * x0 + ts.sigma[i + 1] * eps
    if ts.sigma[i + 1] > 0:
      step_key = jax.random.fold_in(jax.random.fold_in(key, i), 1)  # after 1 solver stage
      _, k_corr = jax.random.split(step_key)
      z = jax.random.normal(jax.random.fold_in(k_corr, 0), x.shape, x.dtype)
      a, s = ts.alpha[i + 1], ts.sigma[i + 1]
      e = (x - a * den(x, jnp.full((x.shape[0],), ts.t[i + 1]), None)) / s
      zn = jnp.sum(z**2, axis=1, keepdims=True)
      en = jnp.sum(e**2, axis=1, keepdims=True)
      step = jnp.minimum(2 * snr**2 * s**2 * zn / en, s**2)
      x = x + step * (-e / s) + jnp.sqrt(2 * step) * z
  return x


def test_ddim_with_langevin_equals_the_hand_written_predictor_corrector(x64, gmm):
  ts = schedules.timesteps(SCHED, 5, spacing="logsnr", denoise_to_zero=True)
  x_T = jax.random.normal(jax.random.key(0), (6, 2), jnp.float64)
  key = jax.random.key(3)
  out = jaxdiff.sample(
    gmm.denoiser(SCHED), solvers.ddim(), x_T, ts, key=key, corrector=correctors.langevin(0.2)
  )
  want = _manual_ddim_langevin(gmm.denoiser(SCHED), x_T, ts, key, 0.2)
  np.testing.assert_allclose(out.x, want, rtol=1e-12, atol=1e-12)
  # 5 solver evaluations + 4 corrector evaluations: none at the final sigma = 0 point.
  assert int(out.nfe) == 5 + 4
  # Switched off: LML with infinite damping is the plain Langevin corrector, bit for bit
  # (corrector=None leaves the seam out of the trace: the base loop of test_sampling.py).
  lml = jaxdiff.sample(
    gmm.denoiser(SCHED), solvers.ddim(), x_T, ts, key=key, corrector=correctors.lml(np.inf, snr=0.2)
  )
  np.testing.assert_array_equal(lml.x, out.x)


@pytest.mark.parametrize("kappa", [0.0, 0.6])
def test_lml_preconditioner_matches_the_dense_damped_inverse_and_its_square_root(x64, kappa):
  d, lamb = 5, 0.7
  k = jax.random.split(jax.random.key(0), 4)
  eps, prev, drift, z = (jax.random.normal(kk, (1, d), jnp.float64) for kk in k)
  corr = correctors.lml(lamb, kappa=kappa)
  p_drift, p_noise, state = corr._precondition(eps, drift, z, LMLState(prev, jnp.array(True)))
  g = kappa * prev[0] + (1 - kappa) * eps[0]
  m = np.eye(d) + np.outer(g, g) / lamb  # I + g g^T / lambda
  np.testing.assert_allclose(p_drift[0], np.linalg.solve(m, drift[0]), rtol=1e-12)
  w, v = np.linalg.eigh(np.linalg.inv(m))
  np.testing.assert_allclose(p_noise[0], (v * np.sqrt(w)) @ v.T @ z[0], rtol=1e-10)
  np.testing.assert_array_equal(state.g, eps)  # the raw prediction is what is kept
  # Before any prediction the blend is the current one.
  _, _, first = corr._precondition(eps, drift, z, corr.init(eps))
  np.testing.assert_allclose(first.g, eps, rtol=0)
  # variant="normalized" keeps the direction of P s and the plain drift's norm.
  nd, _, _ = correctors.lml(lamb, kappa=kappa, variant="normalized")._precondition(
    eps, drift, z, LMLState(prev, jnp.array(True))
  )
  np.testing.assert_allclose(np.linalg.norm(nd), np.linalg.norm(drift), rtol=1e-12)
  np.testing.assert_allclose(nd / np.linalg.norm(nd), p_drift / np.linalg.norm(p_drift), rtol=1e-12)


def _official_lm_correct(prev, noise, lamb, kappa):
  """The official code's lm_correct (zituitui/LML-diffusion-sampler, scheduler/), in NumPy."""
  ema = noise if prev is None else kappa * prev + (1 - kappa) * noise
  inverted = noise - ema * np.sum(noise * ema) / (lamb + np.sum(ema * ema))
  return inverted * np.linalg.norm(noise) / np.linalg.norm(inverted)


def test_lml_kappa_blends_the_previous_raw_prediction_as_the_official_code(x64):
  # Three iterations at kappa = 0.5: the direction of the normalized variant applied to the
  # noise prediction equals the official lm_correct with prev_noise = the previous raw one
  # (a running average differs by ~1e-2 here).
  d, lamb, kappa = 6, 0.8, 0.5
  preds = np.asarray(jax.random.normal(jax.random.key(1), (3, 1, d), jnp.float64))
  corr = correctors.lml(lamb, kappa=kappa, variant="normalized")
  state, prev = corr.init(jnp.asarray(preds[0])), None
  for eps in preds:
    out, _, state = corr._precondition(jnp.asarray(eps), jnp.asarray(eps), jnp.zeros((1, d)), state)
    np.testing.assert_allclose(out[0], _official_lm_correct(prev, eps[0], lamb, kappa), rtol=1e-12)
    prev = eps[0]


# Statistical (a few seconds each); the float64 predictor-corrector transcription above is
# the fast check of the same code path.
@pytest.mark.slow
@pytest.mark.parametrize("corr", [correctors.langevin(0.1), correctors.lml(2000.0, snr=0.1)])
def test_corrector_moves_a_wrong_start_to_the_exact_marginal(corr):
  # At a fixed noise level, repeated corrector moves from a point mass approach p_t: the
  # mean and per-coordinate variance of 1000 chains match the exact marginal's. Song et
  # al.'s step rule scales with |z|^2 / |eps|^2 per sample, which inflates the stationary
  # variance by about (d + 2) / d: the check is in d = 64 (images: d >= 784).
  gmm = GaussianMixture(np.stack([np.ones(64), -np.ones(64)]), 0.3)
  t = jnp.asarray(0.5)
  a, s = SCHED.alpha(t), SCHED.sigma(t)
  ctx = StepContext(t, a, s, jnp.int32(0), jnp.int32(1), jax.random.key(0))
  den = gmm.denoiser(SCHED)
  predict = lambda x, aux: (Prediction.of(den(x, jnp.full((x.shape[0],), t))), aux, 1)

  @jax.jit
  def chains(x):
    def body(carry, k):
      x, st = carry
      x, st, _, _ = corr.correct(predict, x, ctx, st, (), key=jax.random.key(k))
      return (x, st), None

    (x, _), _ = jax.lax.scan(body, (x, corr.init(x)), jnp.arange(250))
    return x

  x = chains(jnp.zeros((500, 64)))
  exact = a * gmm.sample(jax.random.key(1), 20000) + s * jax.random.normal(
    jax.random.key(2), (20000, 64)
  )
  np.testing.assert_allclose(x.mean(), exact.mean(), atol=0.1)
  np.testing.assert_allclose(x.var(0).mean(), exact.var(0).mean(), rtol=0.06)
  # Not vacuous: the start (all zeros) is far from it.
  assert exact.var(0).mean() > 0.5


@pytest.mark.slow
def test_correctors_compose_with_guidance_and_multistep_solvers_and_count_evaluations(gmm):
  ts = schedules.timesteps(SCHED, 4)
  x_T = jax.random.normal(jax.random.key(0), (4, 2))
  cond = jnp.array([0, 1, 0, 1])
  out = jaxdiff.sample(
    gmm.denoiser(SCHED),
    solvers.dpmpp_2m(),
    x_T,
    ts,
    key=0,
    cond=cond,
    guidance=guidance.cfg(2.0),
    corrector=correctors.lml(1.0, kappa=0.5, steps=2),
  )
  assert np.isfinite(out.x).all()
  # CFG: 2 evaluations per call; 4 solver calls + 4 points x 2 corrector iterations.
  assert int(out.nfe) == 2 * (4 + 4 * 2)


@pytest.mark.slow
def test_no_retrace_vmap_and_sharding_with_a_corrector(gmm, mesh8):
  ts = schedules.timesteps(SCHED, 4)
  den = gmm.denoiser(SCHED)
  corr = correctors.lml(2.0, kappa=0.3)
  run = lambda x, key: jaxdiff.sample(den, solvers.ddim(), x, ts, key=key, corrector=corr).x
  x_T = jax.random.normal(jax.random.key(0), (16, 2))
  single = run(x_T, 5)
  before = jaxdiff._sampling._sample_jit._cache_size()
  run(x_T + 1.0, 6)
  run(x_T, jax.random.key(7))
  assert jaxdiff._sampling._sample_jit._cache_size() == before
  sharded = run(jax.device_put(x_T, NamedSharding(mesh8, P("d"))), 5)
  np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-6)
  xs = x_T.reshape(2, 8, 2)
  np.testing.assert_allclose(
    jax.vmap(lambda x: run(x, 5))(xs), jnp.stack([run(x, 5) for x in xs]), rtol=1e-5, atol=1e-6
  )


def test_step_size_is_capped_where_the_predicted_noise_vanishes():
  corr = correctors.langevin(0.5)
  t = jnp.asarray(0.5)
  ctx = StepContext(t, SCHED.alpha(t), SCHED.sigma(t), jnp.int32(0), jnp.int32(1), None)
  x = jnp.ones((2, 3))
  # A prediction that makes eps exactly 0: score 0, step capped at sigma^2, no NaN.
  predict = lambda x, aux: (Prediction.of(x / ctx.alpha), aux, 1)
  out, _, _, n = corr.correct(predict, x, ctx, (), (), key=jax.random.key(0))
  assert np.isfinite(out).all() and int(n) == 1
  z = jax.random.normal(jax.random.fold_in(jax.random.key(0), 0), x.shape)
  np.testing.assert_allclose(out, x + jnp.sqrt(2.0) * ctx.sigma * z, rtol=1e-5)
  assert float(eps_from_x0(x, x / ctx.alpha, ctx.alpha, ctx.sigma).max()) < 1e-6
