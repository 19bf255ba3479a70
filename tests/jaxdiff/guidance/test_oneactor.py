"""OneActor's cluster-conditioned guidance (jaxdiff/guidance/_oneactor.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import guidance, schedules, solvers
from tests.jaxdiff.guidance.testbed import counting, ctx, step

# Labels: -1 null, 0 the base prompt, 1 the target cluster, 2 the auxiliary clusters.
NULL, BASE, TARGET, AUX = -1, 0, 1, 2


def _table(seed=0, shape=(4, 3)):
  rng = np.random.default_rng(seed)
  return {c: rng.normal(size=shape) for c in (NULL, BASE, TARGET, AUX)}


def _den(table):
  """x0 = table[label] per row, whatever the batching of the call."""
  preds = {c: jnp.asarray(v) for c, v in table.items()}

  def den(x, t, c):
    n = x.shape[0] // preds[NULL].shape[0]
    out = jnp.zeros_like(x)
    for label, v in preds.items():
      mask = (c == label).reshape((-1,) + (1,) * (x.ndim - 1))
      out = jnp.where(mask, jnp.concatenate([v] * n), out)
    return out

  return den


def test_matches_float64_transcription_of_the_cluster_guidance_equation(x64):
  # The official form, on noise predictions: eps = eps_u + eta1 (eps_tar - eps_u)
  # - eta2 (eps_aux - eps_u); the rule combines x0 predictions, which must give the same step.
  table = _table()
  x = np.random.default_rng(1).normal(size=(4, 3))
  c = ctx(t=0.4)
  alpha, sigma = float(c.alpha), float(c.sigma)
  eta1, eta2 = 7.5, 1.3
  rule = guidance.oneactor(eta1, target_cond=TARGET, aux_scale=eta2, aux_cond=AUX)
  pred, _, nfe = step(rule, _den(table), jnp.asarray(x), jnp.full(4, BASE, jnp.int32), c)
  eps = {k: (x - alpha * v) / sigma for k, v in table.items()}
  e = eps[NULL] + eta1 * (eps[TARGET] - eps[NULL]) - eta2 * (eps[AUX] - eps[NULL])
  want = (x - sigma * e) / alpha
  np.testing.assert_allclose(pred.x0, want, rtol=1e-12, atol=1e-12)
  np.testing.assert_array_equal(pred.x0, pred.x0_renoise)
  assert int(nfe) == 3


def test_outside_the_window_it_is_cfg_on_the_base_condition(x64):
  table = _table(2)
  cond = jnp.full(4, BASE, jnp.int32)
  x = jnp.zeros((4, 3))
  rule = guidance.oneactor(
    3.0, target_cond=TARGET, aux_scale=2.0, aux_cond=AUX, start_step=2, stop_step=4
  )
  cfg, _, _ = step(guidance.cfg(3.0), _den(table), x, cond, ctx(step=4))
  for i in (0, 1, 4, 7):
    pred, _, _ = step(rule, _den(table), x, cond, ctx(step=i))
    # the same affine combination; XLA may fuse it differently (an ulp)
    np.testing.assert_allclose(pred.x0, cfg.x0, rtol=4 * np.finfo(np.float64).eps, atol=0)
  inside, _, _ = step(rule, _den(table), x, cond, ctx(step=3))
  assert float(jnp.max(jnp.abs(inside.x0 - cfg.x0))) > 0.1


def test_callable_conditions_and_one_batched_call_per_step():
  table = _table(3)
  den, rows = counting(_den(table))
  rule = guidance.oneactor(
    2.0, target_cond=lambda c: c + 1, aux_scale=0.5, aux_cond=lambda c: c + 2
  )
  sched = schedules.vp_cosine()
  out = jaxdiff.sample(
    den,
    solvers.ddim(),
    jnp.zeros((4, 3)),
    schedules.timesteps(sched, 3, spacing="logsnr"),
    key=0,
    cond=jnp.full(4, BASE, jnp.int32),
    guidance=rule,
  )
  jax.block_until_ready(out.x)
  assert rows == [12, 12, 12] and int(out.nfe) == 9  # null, target, aux in one 3B call


def test_without_an_auxiliary_term_the_rule_makes_two_evaluations():
  assert guidance.oneactor(7.5).calls == (2,)
  assert guidance.oneactor(7.5, aux_cond=AUX).calls == (2,)  # eta_2 = 0: no third call
  assert guidance.REGISTRY["oneactor"].evals() == 2
  assert guidance.REGISTRY["oneactor"].evals(aux_cond=AUX, aux_scale=1.0) == 3


def test_bad_input_names_the_argument():
  with pytest.raises(ValueError, match="oneactor: aux_scale must lie in"):
    guidance.oneactor(7.5, aux_scale=-1.0, aux_cond=AUX)
  with pytest.raises(ValueError, match="oneactor: stop_step must lie in"):
    guidance.oneactor(7.5, start_step=3, stop_step=3)
  with pytest.raises(ValueError, match="oneactor: scale must be finite"):
    guidance.oneactor(float("inf"))
  with pytest.raises(TypeError, match="oneactor: target_cond must be"):
    guidance.oneactor(7.5, target_cond="hobbit")
  rule = guidance.oneactor(7.5, target_cond=lambda c: c[:, None])
  with pytest.raises(ValueError, match=r"oneactor: target_cond\(cond\) must match cond"):
    rule.apply(lambda x, t, c: x, jnp.ones((2, 3)), jnp.zeros(2, jnp.int32), ctx(), ())
  rule = guidance.oneactor(7.5, target_cond=jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match="oneactor: target_cond of shape"):
    rule.apply(lambda x, t, c: x, jnp.ones((2, 3)), jnp.zeros(2, jnp.int32), ctx(), ())
  with pytest.raises(ValueError, match="needs a conditional batch"):
    guidance.oneactor(7.5).apply(lambda x, t, c: x, jnp.ones((2, 3)), None, ctx(), ())
