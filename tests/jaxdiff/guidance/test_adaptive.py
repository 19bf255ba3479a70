"""Adaptive Guidance and LinearAG (jaxdiff/guidance/_adaptive.py): NFE counted for real."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import StepContext, guidance
from tests.jaxdiff.guidance.testbed import NUM_STEPS, B, counting, ctx, gmm_denoise, run, step


def test_adaptive_with_unreachable_threshold_equals_cfg(x64, batch):
  x_ag, nfe = run(guidance.adaptive(4.0, threshold=1.01), batch)
  np.testing.assert_allclose(x_ag, run(guidance.cfg(4.0), batch)[0], rtol=1e-12)
  assert int(nfe) == 2 * NUM_STEPS


def test_adaptive_low_threshold_makes_exactly_the_counted_evaluations(x64, batch):
  den, rows = counting(gmm_denoise)
  x, nfe = run(guidance.adaptive(4.0, threshold=0.9), batch, den)
  jax.effects_barrier()
  assert sum(rows) == B * int(nfe)  # the network really evaluated nfe rows per sample
  assert NUM_STEPS < int(nfe) < 2 * NUM_STEPS  # it switched, and not at the first step
  assert rows.count(B) == 2 * NUM_STEPS - int(nfe)  # one-call steps used the B-row branch
  assert np.isfinite(x).all()


def test_adaptive_at_sigma0_compares_the_zero_noise_of_eps_from_x0():
  # eps_from_x0's sigma = 0 policy gives eps = 0 for both predictions, and two zero
  # vectors agree (cosine 1): the switch fires even though x_c and x_u point apart.
  den = lambda x, t, c: jnp.where((c >= 0)[:, None], x, -x)
  rule = guidance.adaptive(3.0, 0.99)
  x, c = jnp.ones((2, 3)), jnp.array([0, 1])
  ctx0 = StepContext(jnp.array(0.0), jnp.array(1.0), jnp.array(0.0), 0, 10, None)
  pred, state, nfe = step(rule, den, x, c, ctx0, rule.init(x, c))
  assert bool(state.done.all()) and int(nfe) == 2
  np.testing.assert_allclose(pred.x0, -x + 3.0 * (x - -x))  # this step was still guided


def test_fit_linear_ag_recovers_exact_coefficients(x64):
  rng = np.random.default_rng(2)
  c = rng.normal(size=(5, 3, 4))
  u = np.zeros_like(c)
  u[0] = rng.normal(size=(3, 4))
  true = rng.normal(size=(5, 3))
  for i in range(1, 5):
    u[i] = true[i, 0] * c[i] + true[i, 1] * c[i - 1] + true[i, 2] * u[i - 1]
  got = guidance.fit_linear_ag(jnp.asarray(c), jnp.asarray(u))
  np.testing.assert_allclose(got[1:], true[1:], rtol=1e-8)
  np.testing.assert_array_equal(got[0], 0)


def test_linear_ag_without_estimates_is_cfg_and_estimates_save_calls(x64, batch):
  coef = jnp.zeros((NUM_STEPS, 3))
  none = jnp.zeros((NUM_STEPS,), bool)
  x_lin, nfe = run(guidance.linear_ag(3.0, coef, none), batch)
  np.testing.assert_allclose(x_lin, run(guidance.cfg(3.0), batch)[0], rtol=1e-12)
  assert int(nfe) == 2 * NUM_STEPS
  mask = jnp.arange(NUM_STEPS) % 2 == 1
  den, rows = counting(gmm_denoise)
  coef = coef.at[:, 2].set(1.0)
  x, nfe = run(guidance.linear_ag(3.0, coef, mask), batch, den)
  jax.effects_barrier()
  assert int(nfe) == 2 * NUM_STEPS - NUM_STEPS // 2 and sum(rows) == B * int(nfe)


def test_linear_ag_bad_input_raises_clear_errors(x64, batch):
  with pytest.raises(ValueError, match="step 0 cannot be estimated"):
    guidance.linear_ag(2.0, jnp.zeros((3, 3)), jnp.array([True, False, False]))
  with pytest.raises(ValueError, match="coefficients must have shape"):
    guidance.linear_ag(2.0, jnp.zeros((3, 2)), jnp.zeros(3, bool))
  with pytest.raises(ValueError, match="estimate must be a bool array"):
    guidance.linear_ag(2.0, jnp.zeros((3, 3)), jnp.zeros(3))
  rule = guidance.linear_ag(2.0, jnp.zeros((3, 3)), jnp.zeros(3, bool))
  x, cond = batch
  with pytest.raises(ValueError, match=f"built for 3 steps, sampling uses {NUM_STEPS}"):
    rule.apply(gmm_denoise, x, cond, ctx(), rule.init(x, cond))
