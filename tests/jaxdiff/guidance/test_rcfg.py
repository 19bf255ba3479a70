"""Residual CFG (jaxdiff/guidance/_rcfg.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import guidance
from tests.jaxdiff.guidance.testbed import NUM_STEPS, B, counting, ctx, gmm_denoise, grid, run, step


def test_rcfg_scale1_is_the_conditional_model(x64, batch, refs):
  ref = jnp.zeros((B, 2))
  np.testing.assert_allclose(run(guidance.rcfg(1.0, reference=ref), batch)[0], refs[0])


def test_rcfg_onetime_uses_one_negative_call_then_a_fixed_reference(x64, batch):
  den, rows = counting(gmm_denoise)
  x, nfe = run(guidance.rcfg(2.0, variant="onetime"), batch, den)
  jax.effects_barrier()
  assert int(nfe) == NUM_STEPS + 1 and rows == [2 * B] + [B] * (NUM_STEPS - 1)
  # Reference: negative x0 from step 0, then x_n = x_ref at every step, DDIM updates.
  x_T, cond = batch
  ts = grid()
  x_ref = gmm_denoise(x_T, jnp.full((B,), ts.t[0]), -jnp.ones_like(cond))
  xx = x_T
  for i in range(NUM_STEPS):
    x_c = gmm_denoise(xx, jnp.full((B,), ts.t[i]), cond)
    x0 = x_ref + 2.0 * (x_c - x_ref)
    xx = ts.alpha[i + 1] * x0 + ts.sigma[i + 1] * (xx - ts.alpha[i] * x0) / ts.sigma[i]
  np.testing.assert_allclose(x, xx, rtol=1e-10)


def test_rcfg_self_negative_virtual_noise_matches_streamdiffusion_equation(x64):
  x = jax.random.normal(jax.random.key(8), (2, 3), jnp.float64)
  ref = jax.random.normal(jax.random.key(9), (2, 3), jnp.float64)
  c = ctx(0.7)
  a, s = float(c.alpha), float(c.sigma)
  den = lambda x, t, c: 0.3 * x
  delta, gamma = 0.8, 1.7
  rule = guidance.rcfg(gamma, reference=ref, delta=delta)
  pred, _, nfe = step(rule, den, x, jnp.array([0, 1]), c, rule.init(x, None))
  eps_c = (x - a * 0.3 * x) / s
  eps_n = delta * (x - a * ref) / s  # Kodaira et al. Eq. 8 with the code's delta
  eps = eps_n + gamma * (eps_c - eps_n)
  np.testing.assert_allclose(pred.x0, (x - s * eps) / a, rtol=1e-10)
  assert int(nfe) == 1


def test_rcfg_bad_input_raises_clear_errors():
  with pytest.raises(ValueError, match="needs `reference`"):
    guidance.rcfg(2.0)
  with pytest.raises(ValueError, match="rcfg: variant must be one of 'self', 'onetime'"):
    guidance.rcfg(2.0, variant="twice")
  with pytest.raises(ValueError, match=r"rcfg: delta must lie in \[0, inf\)"):
    guidance.rcfg(2.0, variant="onetime", delta=-0.5)
  rule = guidance.rcfg(2.0, reference=jnp.zeros((3, 2)))
  with pytest.raises(ValueError, match="reference has shape"):
    rule.init(jnp.zeros((2, 2)), None)


def test_rcfg_built_inside_jit_checks_a_concrete_reference():
  # A traced scale (a sweep inside the user's jit) with a concrete reference: the finiteness
  # check reads the concrete array (it raised a TracerBoolConversionError before).
  x, ref = jnp.ones((2, 2)), jnp.zeros((2, 2))

  @jax.jit
  def guided(w):
    rule = guidance.rcfg(w, reference=ref)
    return rule.apply(gmm_denoise, x, jnp.array([0, 1]), ctx(), rule.init(x, None))[0].x0

  want = guidance.rcfg(2.0, reference=ref).apply(
    gmm_denoise, x, jnp.array([0, 1]), ctx(), guidance.rcfg(2.0, reference=ref).init(x, None)
  )[0]
  np.testing.assert_allclose(guided(2.0), want.x0, rtol=1e-6)
  bad = ref.at[0, 0].set(jnp.nan)
  with pytest.raises(ValueError, match="reference must be finite"):
    jax.jit(lambda w: guidance.rcfg(w, reference=bad).scale)(2.0)
