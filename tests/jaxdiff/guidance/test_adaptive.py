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


def test_adaptive_variants_compare_eps_or_x0_as_a_float64_transcription(x64):
  # Near pure noise eps_c and eps_u both follow x / sigma: their cosine is ~1 although the
  # denoised predictions (a class mean vs the data mean) point apart.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 6)))
  mean_c = jnp.asarray(rng.normal(size=(4, 6)))

  def den(x, t, c):  # evaluate() stacks [cond, null] into one call of 2 * 4 rows
    m = jnp.tile(mean_c, (x.shape[0] // 4, 1))
    return jnp.where((c >= 0)[:, None], m, 0.1 * jnp.tile(mean_c[::-1], (x.shape[0] // 4, 1)))

  alpha, sigma = 0.05, float(np.sqrt(1 - 0.05**2))
  ctx1 = StepContext(jnp.array(0.99), jnp.array(alpha), jnp.array(sigma), 0, 10, None)
  cond = jnp.zeros(4, jnp.int32)
  x_c, x_u = np.asarray(mean_c), 0.1 * np.asarray(mean_c)[::-1]
  cos = lambda a, b: (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
  eps = lambda x0: (np.asarray(x) - alpha * x0) / sigma
  gamma = {"eps": cos(eps(x_c), eps(x_u)), "x0": cos(x_c, x_u)}
  assert gamma["eps"].min() > 0.99 > gamma["x0"].max()  # the case separates the variants
  for variant, g in gamma.items():
    rule = guidance.adaptive(3.0, 0.99, variant=variant)
    pred, state, nfe = step(rule, den, x, cond, ctx1, rule.init(x, cond))
    np.testing.assert_array_equal(np.asarray(state.done), g > 0.99)
    np.testing.assert_allclose(pred.x0, x_u + 3.0 * (x_c - x_u), rtol=1e-12)
  with pytest.raises(ValueError, match="adaptive: variant must be one of"):
    guidance.adaptive(3.0, 0.99, variant="x")


@pytest.mark.parametrize("variant", ["x0", "eps"])
def test_linear_ag_estimate_matches_a_float64_transcription(x64, variant):
  rng = np.random.default_rng(3)
  x0_, x1_ = (jnp.asarray(rng.normal(size=(3, 4))) for _ in range(2))
  coef = jnp.asarray([[0.0, 0.0, 0.0], [0.7, -0.2, 0.4]])
  rule = guidance.linear_ag(2.5, coef, jnp.array([False, True]), variant=variant)
  den = lambda x, t, c: jnp.where((c >= 0)[:, None], 0.8, -0.3) * x + 0.1 * (c[:, None] + 2.0)
  cond = jnp.array([0, 1, 2])
  c0, c1 = ctx(t=0.8, step=0, num_steps=2), ctx(t=0.4, step=1, num_steps=2)
  _, state, nfe0 = step(rule, den, x0_, cond, c0, rule.init(x0_, cond))
  pred, _, nfe1 = step(rule, den, x1_, cond, c1, state)
  assert (int(nfe0), int(nfe1)) == (2, 1)

  def np_den(x, c):
    return np.where(c[:, None] >= 0, 0.8, -0.3) * np.asarray(x) + 0.1 * (c[:, None] + 2.0)

  def to_space(x, x0, cx):  # eps = (x - alpha x0) / sigma, or x0 itself
    a, s = float(cx.alpha), float(cx.sigma)
    return (np.asarray(x) - a * x0) / s if variant == "eps" else x0

  c, null = np.asarray(cond), -np.ones(3, int)
  prev_c = to_space(x0_, np_den(x0_, c), c0)
  prev_u = to_space(x0_, np_den(x0_, null), c0)
  x_c = np_den(x1_, c)
  f_u = 0.7 * to_space(x1_, x_c, c1) - 0.2 * prev_c + 0.4 * prev_u
  a, s = float(c1.alpha), float(c1.sigma)
  x_u = (np.asarray(x1_) - s * f_u) / a if variant == "eps" else f_u
  np.testing.assert_allclose(pred.x0, x_u + 2.5 * (x_c - x_u), rtol=1e-10)
