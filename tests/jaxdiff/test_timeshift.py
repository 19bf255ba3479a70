"""Time-Shift sampling: the evaluation-time seam, against a NumPy transcription of TS-DDIM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import guidance, schedules, solvers
from jaxdiff.testing import GaussianMixture

SCHED = schedules.vp_linear()
D = 16


@pytest.fixture(scope="module")
def gmm():
  means = np.stack([np.linspace(-1, 1, D), -np.linspace(-1, 1, D)])
  return GaussianMixture(means, 0.2, classes=[0, 1])


def _ts_ddim_reference(den, x, ts, window, cutoff, resolution=1000):
  """TS-DDIM in float64 NumPy, after the official apply_time_shift (per-sample argmin)."""
  x = np.asarray(x, np.float64)
  t = np.asarray(ts.t, np.float64)
  delta = (t[0] - t[-1]) / resolution
  for i in range(ts.num_steps):
    var = x.var(axis=1, ddof=1)
    cand = np.clip(t[i] + np.arange(-window, window + 1) * delta, t[-2], t[0])
    table = np.asarray(SCHED.sigma(jnp.asarray(cand))) ** 2  # official: 1 - alphas_cumprod
    k = np.argmin((var[:, None] - table[None, :]) ** 2, axis=1)
    t_s = np.where(t[i] > cutoff, cand[k], t[i])
    a_s = np.asarray(SCHED.alpha(jnp.asarray(t_s)))[:, None]
    s_s = np.asarray(SCHED.sigma(jnp.asarray(t_s)))[:, None]
    x0 = np.asarray(den(jnp.asarray(x), jnp.asarray(t_s), None), np.float64)
    eps = (x - a_s * x0) / s_s
    x = float(ts.alpha[i + 1]) * x0 + float(ts.sigma[i + 1]) * eps
  return x


def _official_ts_ddim(den, x, ts, window, cutoff, resolution=1000):
  """The official TS-DPM pnm_solver (sample / apply_time_shift / euler_solver + transfer)
  in float64 NumPy, on a continuous grid: the network at the grid time t_i, the landing
  time matched to var(x_i) in a window around t_{i+1} (clipped to the grid's span), no
  shift at the first step (len(img_list) > 1) or at or below the cutoff."""
  x = np.asarray(x, np.float64)
  t = np.asarray(ts.t, np.float64)
  delta = (t[0] - t[-1]) / resolution
  for i in range(ts.num_steps):
    a_i, s_i = float(ts.alpha[i]), float(ts.sigma[i])
    x0 = np.asarray(den(jnp.asarray(x), jnp.full((x.shape[0],), t[i]), None), np.float64)
    eps = (x - a_i * x0) / s_i
    t_next = np.full(x.shape[0], t[i + 1])
    if i > 0 and t[i + 1] > cutoff:
      var = x.var(axis=1, ddof=1)
      cand = np.clip(t[i + 1] + np.arange(-window, window + 1) * delta, t[-1], t[0])
      table = np.asarray(SCHED.sigma(jnp.asarray(cand))) ** 2  # 1 - alphas_cumprod
      t_next = cand[np.argmin((var[:, None] - table[None, :]) ** 2, axis=1)]
    a_n = np.asarray(SCHED.alpha(jnp.asarray(t_next)))[:, None]
    s_n = np.asarray(SCHED.sigma(jnp.asarray(t_next)))[:, None]
    x = a_n * x0 + s_n * eps  # transfer(x, t, t_next, et): the DDIM step
  return x


def test_official_ts_ddim_lands_at_the_matched_time_and_never_shifts_the_first_step(x64, gmm):
  ts = schedules.timesteps(SCHED, 8)
  x_T = jax.random.normal(jax.random.key(0), (6, D), jnp.float64)
  den = gmm.denoiser(SCHED)
  out = jaxdiff.sample(
    den, solvers.ddim(), x_T, ts, key=0, time_shift=jaxdiff.time_shift(SCHED, 60, 0.3)
  )
  np.testing.assert_allclose(
    out.x, _official_ts_ddim(den, x_T, ts, 60, 0.3), rtol=1e-10, atol=1e-10
  )
  base = jaxdiff.sample(den, solvers.ddim(), x_T, ts, key=0)
  assert np.abs(np.asarray(out.x) - np.asarray(base.x)).max() > 1e-4  # the shift acted
  # The first step is never shifted: one step alone is the base sampler.
  one = schedules.timesteps_from(SCHED, ts.t[:2])
  first = jaxdiff.sample(
    den, solvers.ddim(), x_T, one, key=0, time_shift=jaxdiff.time_shift(SCHED, 60, 0.0)
  )
  np.testing.assert_allclose(
    first.x, jaxdiff.sample(den, solvers.ddim(), x_T, one, key=0).x, rtol=1e-12
  )
  # It moves the DDIM step itself: another solver is refused.
  with pytest.raises(ValueError, match="variant='evaluate'"):
    jaxdiff.sample(
      den, solvers.dpmpp_2m(), x_T, ts, key=0, time_shift=jaxdiff.time_shift(SCHED, 60, 0.3)
    )


def test_ts_ddim_equals_the_reference_transcription_and_shifts_some_steps(x64, gmm):
  ts = schedules.timesteps(SCHED, 8)
  x_T = jax.random.normal(jax.random.key(0), (6, D), jnp.float64)
  den = gmm.denoiser(SCHED)
  rule = jaxdiff.time_shift(SCHED, 60, 0.3, variant="evaluate")
  out = jaxdiff.sample(den, solvers.ddim(), x_T, ts, key=0, time_shift=rule)
  want = _ts_ddim_reference(den, x_T, ts, 60, 0.3)
  np.testing.assert_allclose(out.x, want, rtol=1e-10, atol=1e-10)
  base = jaxdiff.sample(den, solvers.ddim(), x_T, ts, key=0)
  assert np.abs(np.asarray(out.x) - np.asarray(base.x)).max() > 1e-4  # the shift acted
  assert int(out.nfe) == 8


def test_window_zero_or_cutoff_above_the_grid_is_the_base_sampler_bit_for_bit(gmm):
  ts = schedules.timesteps(SCHED, 6)
  x_T = jax.random.normal(jax.random.key(1), (4, D))
  den = gmm.denoiser(SCHED)
  for solver in (solvers.dpmpp_2m(),):  # the seam is solver-agnostic (all four: slow test)
    base = jaxdiff.sample(den, solver, x_T, ts, key=3)
    off = jaxdiff.sample(den, solver, x_T, ts, key=3, time_shift=jaxdiff.time_shift(SCHED, 0, 0.0))
    np.testing.assert_array_equal(off.x, base.x)
  # Traced seam, but no sample is ever moved (cutoff above the grid): the base values up
  # to XLA's fusion of the (identical) arithmetic.
  never = jaxdiff.time_shift(SCHED, 40, 2.0)
  off = jaxdiff.sample(den, solvers.ddim(), x_T, ts, key=3, time_shift=never)
  base = jaxdiff.sample(den, solvers.ddim(), x_T, ts, key=3)
  np.testing.assert_allclose(off.x, base.x, rtol=2e-6, atol=2e-6)


@pytest.mark.slow
def test_time_shift_composes_with_solvers_and_guidance_without_retracing(gmm):
  ts = schedules.timesteps(SCHED, 5)
  x_T = jax.random.normal(jax.random.key(2), (4, D))
  den = gmm.denoiser(SCHED)
  rule = jaxdiff.time_shift(SCHED, 50, 0.2, variant="evaluate")
  for solver in (solvers.ddpm(), solvers.dpmpp_2m(), solvers.unipc()):
    out = jaxdiff.sample(den, solver, x_T, ts, key=1, time_shift=rule)
    assert np.isfinite(out.x).all() and int(out.nfe) == 5
  cfg = jaxdiff.sample(
    den,
    solvers.dpmpp_2m(),
    x_T,
    ts,
    key=1,
    cond=jnp.array([0, 1, 0, 1]),
    guidance=guidance.cfg(2.0),
    time_shift=rule,
  )
  assert np.isfinite(cfg.x).all() and int(cfg.nfe) == 10
  before = jaxdiff._sampling._sample_jit._cache_size()
  jaxdiff.sample(den, solvers.unipc(), x_T + 1.0, ts, key=2, time_shift=rule)
  jaxdiff.sample(
    den,
    solvers.unipc(),
    x_T,
    ts,
    key=2,
    time_shift=jaxdiff.time_shift(SCHED, 50, 0.2, variant="evaluate"),
  )
  assert jaxdiff._sampling._sample_jit._cache_size() == before
  xs = x_T.reshape(2, 2, D)
  run = lambda x: jaxdiff.sample(den, solvers.ddim(), x, ts, key=1, time_shift=rule).x
  np.testing.assert_allclose(
    jax.vmap(run)(xs), jnp.stack([run(x) for x in xs]), rtol=1e-5, atol=1e-6
  )


def test_bad_windows_and_grids_raise_clear_errors(gmm):
  with pytest.raises(ValueError, match="window"):
    jaxdiff.time_shift(SCHED, 2000, 0.1)
  with pytest.raises(ValueError, match="window"):
    jaxdiff.time_shift(SCHED, -1, 0.1)
  ts = schedules.timesteps(SCHED, 2)
  with pytest.raises(ValueError, match="larger than the grid"):
    jaxdiff.sample(
      gmm.denoiser(SCHED),
      solvers.ddim(),
      jnp.ones((2, D)),
      ts,
      key=0,
      time_shift=jaxdiff.time_shift(SCHED, 900, 0.1, resolution=300),
    )
  with pytest.raises(TypeError, match="time_shift"):
    jaxdiff.sample(gmm.denoiser(SCHED), solvers.ddim(), jnp.ones((2, D)), ts, key=0, time_shift=3)
