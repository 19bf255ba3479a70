"""Guidance rules inside the real pipeline: jaxdiff.sample + the exact GaussianMixture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import guidance, schedules, solvers
from jaxdiff.testing import GaussianMixture

N = 10
B = 12


@pytest.fixture(scope="module")
def setup():
  with jax.enable_x64(True):
    gmm = GaussianMixture(
      jnp.array([[3.0, 0.0], [-1.5, 2.6], [-1.5, -2.6]]), 0.25, weights=jnp.array([5.0, 3, 2])
    )
    sched = schedules.vp_cosine()
    ts = schedules.timesteps(sched, N, spacing="logsnr")
    x_T = jax.random.normal(jax.random.key(0), (B, 2), jnp.float64)
    cond = jnp.arange(B, dtype=jnp.int32) % 3
  return gmm, sched, ts, x_T, cond


def _sample(setup, rule, solver, cond=None, denoise=None):
  gmm, sched, ts, x_T, c = setup
  den = gmm.denoiser(sched) if denoise is None else denoise
  c = c if cond is None else cond
  return jaxdiff.sample(den, solver, x_T, ts, key=jax.random.key(1), cond=c, guidance=rule)


@pytest.mark.parametrize("solver", [solvers.ddim(), solvers.euler(), solvers.dpmpp_2m()])
def test_cfgpp_lambda0_is_the_unconditional_sampler_for_each_solver(x64, setup, solver):
  uncond = _sample(setup, None, solver, cond=-jnp.ones(B, jnp.int32))
  out = _sample(setup, guidance.cfgpp(0.0), solver)
  np.testing.assert_allclose(out.x, uncond.x, rtol=1e-10, atol=1e-10)
  assert int(out.nfe) == 2 * int(uncond.nfe)


def test_cfgpp_ddim_matches_the_papers_algorithm_1(x64, setup):
  gmm, sched, ts, x_T, cond = setup
  lam = 0.6
  den = gmm.denoiser(sched)
  x = x_T
  for i in range(N):  # Chung et al. Alg. 1: denoise with the guided x0, renoise with eps_u.
    t = jnp.full((B,), ts.t[i])
    x_c, x_u = den(x, t, cond), den(x, t, -jnp.ones_like(cond))
    x0 = x_u + lam * (x_c - x_u)
    eps_u = (x - ts.alpha[i] * x_u) / ts.sigma[i]
    x = ts.alpha[i + 1] * x0 + ts.sigma[i + 1] * eps_u
  out = _sample(setup, guidance.cfgpp(lam), solvers.ddim())
  np.testing.assert_allclose(out.x, x, rtol=1e-10, atol=1e-10)


def test_apg_reduction_and_classifier_guidance_through_sample(x64, setup):
  gmm, sched, ts, x_T, cond = setup
  solver = solvers.dpmpp_2m()
  cfg = _sample(setup, guidance.cfg(5.0), solver)
  np.testing.assert_allclose(
    _sample(setup, guidance.apg(5.0, eta=1.0), solver).x, cfg.x, rtol=1e-10
  )
  clf = lambda x, t: gmm.class_posterior(x, t, sched, log=True)
  guided = _sample(setup, guidance.classifier(clf, 3, 1.0, variant="noisy"), solver)
  np.testing.assert_allclose(guided.x, _sample(setup, None, solver).x, rtol=1e-7, atol=1e-7)


def test_sample_reports_the_evaluations_adaptive_guidance_really_made(x64, setup):
  gmm, sched, *_ = setup
  rows = []
  base = gmm.denoiser(sched)

  def den(x, t, c):
    jax.debug.callback(lambda n: rows.append(int(n)), jnp.int32(x.shape[0]))
    return base(x, t, c)

  out = _sample(setup, guidance.adaptive(3.0, 0.95), solvers.ddim(), denoise=den)
  jax.effects_barrier()
  assert sum(rows) == B * int(out.nfe)
  assert N < int(out.nfe) < 2 * N


def test_stateful_rule_resets_per_sample_call_without_recompiling(setup):
  gmm, sched, ts, x_T, cond = setup
  x_T = x_T.astype(jnp.float32)
  rule = guidance.apg(8.0, norm_threshold=1.0, momentum=-0.5)
  den = gmm.denoiser(sched)
  run = lambda: jaxdiff.sample(
    den, solvers.ddim(), x_T, ts, key=jax.random.key(1), cond=cond, guidance=rule
  )
  first = run()
  with jax.log_compiles(True):
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("jax").addHandler(handler)
    try:
      second = run()
    finally:
      logging.getLogger("jax").removeHandler(handler)
  np.testing.assert_array_equal(first.x, second.x)
  assert not [r for r in records if "Compiling" in r.getMessage()]
