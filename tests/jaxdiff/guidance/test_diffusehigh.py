"""DiffuseHigh's structure guidance (jaxdiff/guidance/_diffusehigh.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import guidance, schedules, solvers
from jaxdiff.wavelets import haar_dwt
from tests.jaxdiff.guidance.testbed import ctx, step

EPS = np.finfo(np.float64).eps


def _images(seed, shape=(3, 8, 8, 2)):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float64)


def _fixed(xc, xu):
  """Fixed conditional / unconditional predictions for images (labels >= 0: conditional)."""

  def den(x, t, c):
    n = x.shape[0] // xc.shape[0]
    mask = (c >= 0).reshape((-1,) + (1,) * (xc.ndim - 1))
    return jnp.where(mask, jnp.concatenate([xc] * n), jnp.concatenate([xu] * n))

  return den


@pytest.mark.parametrize("levels", [1, 2])
def test_active_rule_takes_the_low_band_from_the_reference_and_keeps_the_high_bands(x64, levels):
  xc, xu, ref = _images(0), _images(1), _images(2)
  cond = jnp.zeros(3, jnp.int32)
  inner = guidance.cfg(3.0)
  plain, _, _ = step(inner, _fixed(xc, xu), jnp.zeros_like(xc), cond, ctx(step=0))
  rule = guidance.diffusehigh(ref, rule=inner, guided_steps=2, levels=levels)
  pred, _, nfe = step(rule, _fixed(xc, xu), jnp.zeros_like(xc), cond, ctx(step=1))
  got, want, model = (haar_dwt(v, levels=levels) for v in (pred.x0, ref, plain.x0))
  scale = float(jnp.max(jnp.abs(ref))) + float(jnp.max(jnp.abs(plain.x0)))
  np.testing.assert_allclose(got.low, want.low, rtol=0, atol=16 * EPS * scale)
  for g_level, m_level in zip(got.highs, model.highs):
    for g, m in zip(g_level, m_level):
      np.testing.assert_allclose(g, m, rtol=0, atol=16 * EPS * scale)
  np.testing.assert_array_equal(pred.x0, pred.x0_renoise)
  assert int(nfe) == 2  # the wrapped rule's calls, nothing more


def test_after_the_guided_steps_the_rule_is_the_wrapped_rule_bit_for_bit(x64):
  xc, xu, ref = _images(0), _images(1), _images(2)
  cond = jnp.zeros(3, jnp.int32)
  inner = guidance.cfg(3.0)
  plain, _, _ = step(inner, _fixed(xc, xu), jnp.zeros_like(xc), cond, ctx(step=5))
  pred, _, _ = step(guidance.diffusehigh(ref, rule=inner), _fixed(xc, xu), xc, cond, ctx(step=5))
  np.testing.assert_array_equal(pred.x0, plain.x0)


def test_one_reference_image_is_shared_by_the_batch(x64):
  ref = _images(2, (1, 8, 8, 2))
  pred, _, _ = step(guidance.diffusehigh(ref), lambda x, t, c: -x, _images(3), None, ctx(step=0))
  low = haar_dwt(pred.x0).low
  np.testing.assert_allclose(low, jnp.broadcast_to(haar_dwt(ref).low, low.shape), atol=1e-13)


def test_inside_sample_zero_guided_steps_is_the_wrapped_rule_and_nfe_is_its_own(x64):
  sched = schedules.vp_cosine()
  ts = schedules.timesteps(sched, 6, spacing="logsnr")
  x_T = _images(4, (2, 8, 8))
  den = lambda x, t, c: 0.7 * x + 0.1 * jnp.tanh(x)  # noqa: E731
  run = lambda rule: jaxdiff.sample(den, solvers.ddim(), x_T, ts, key=0, guidance=rule)  # noqa: E731
  base = run(guidance.conditional())
  off = run(guidance.diffusehigh(_images(5, (2, 8, 8)), guided_steps=0))
  on = run(guidance.diffusehigh(_images(5, (2, 8, 8)), guided_steps=3))
  np.testing.assert_array_equal(off.x, base.x)
  assert int(on.nfe) == int(base.nfe) == 6
  assert float(jnp.max(jnp.abs(on.x - base.x))) > 1e-3  # the guidance acts


def test_calls_and_state_are_the_wrapped_rules():
  ref = jnp.zeros((1, 4, 4))
  assert guidance.diffusehigh(ref).calls == (1,)
  assert guidance.diffusehigh(ref, rule=guidance.pag(2.0, cfg_scale=3.0)).calls == (3,)
  apg = guidance.apg(3.0, momentum=-0.5)
  x = jnp.ones((2, 4, 4))
  rule = guidance.diffusehigh(ref, rule=apg)
  assert jax.tree.structure(rule.init(x, None)) == jax.tree.structure(apg.init(x, None))


def test_bad_input_names_the_argument():
  with pytest.raises(
    ValueError, match=r"diffusehigh: reference's spatial size W = 6 .* 2\*\*levels = 4"
  ):
    guidance.diffusehigh(jnp.zeros((1, 8, 6)), levels=2)
  with pytest.raises(TypeError, match="diffusehigh: rule must be a guidance rule"):
    guidance.diffusehigh(jnp.zeros((1, 8, 8)), rule=lambda x: x)
  with pytest.raises(ValueError, match="diffusehigh: guided_steps must lie in"):
    guidance.diffusehigh(jnp.zeros((1, 8, 8)), guided_steps=-1)
  with pytest.raises(TypeError, match="diffusehigh: reference must be a floating array"):
    guidance.diffusehigh(jnp.zeros((1, 8, 8), jnp.int32))
  rule = guidance.diffusehigh(jnp.zeros((2, 8, 8)))
  with pytest.raises(
    ValueError, match=r"diffusehigh: reference must have the sample's shape \(3, 8, 8\)"
  ):
    rule.apply(lambda x, t, c: x, jnp.ones((3, 8, 8)), None, ctx(), ())


def test_the_wrapped_rules_grid_check_is_kept():
  # linear_ag fitted for 6 steps, wrapped, on a 4-step grid: the inner rule's error, not NaN.
  sched = schedules.vp_cosine()
  ts = schedules.timesteps(sched, 4)
  inner = guidance.linear_ag(3.0, jnp.zeros((6, 3)), jnp.zeros(6, bool))
  rule = guidance.diffusehigh(jnp.zeros((1, 8, 8)), rule=inner)
  den = lambda x, t, c: 0.7 * x  # noqa: E731
  with pytest.raises(ValueError, match="fitted for 6 steps"):
    jaxdiff.sample(
      den, solvers.ddim(), jnp.ones((2, 8, 8)), ts, key=0, guidance=rule, cond=jnp.zeros(2, int)
    )
