"""Properties every guidance rule shares: reductions, robustness, transformations, validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import guidance
from tests.jaxdiff.guidance.testbed import (
  NUM_STEPS,
  class_logits,
  clean_logits,
  ctx,
  gmm_denoise,
  pag_denoiser,
  run,
)


@pytest.mark.parametrize(
  "make",
  [
    lambda w: guidance.cfg(w),
    lambda w: guidance.cfg(w, rescale=0.0),
    lambda w: guidance.apg(w, eta=1.0),
    lambda w: guidance.adaptive(w, threshold=1.5),
    lambda w: guidance.pag(0.0, cfg_scale=w),
  ],
  ids=["cfg", "cfg-rescale0", "apg-eta1", "adaptive", "pag-s0"],
)
def test_scale0_is_unconditional_and_scale1_is_conditional(x64, make, batch, refs):
  cond_traj, uncond_traj = refs
  # pag_denoiser provably routes the flag to its output; pag scale 0 must make it irrelevant.
  x0, _ = run(make(0.0), batch, pag_denoiser)
  np.testing.assert_allclose(x0, uncond_traj, rtol=1e-10, atol=1e-10)
  x1, _ = run(make(1.0), batch, pag_denoiser)
  np.testing.assert_allclose(x1, cond_traj, rtol=1e-10, atol=1e-10)


ALL_RULES = {
  "cfg": lambda: guidance.cfg(50.0, rescale=0.7),
  "apg": lambda: guidance.apg(50.0, norm_threshold=1.0, momentum=-0.5),
  "cfgpp": lambda: guidance.cfgpp(1.0),
  "adaptive": lambda: guidance.adaptive(50.0, 0.99),
  "pag": lambda: guidance.pag(50.0, cfg_scale=50.0),
  "autoguidance": lambda: guidance.autoguidance(lambda x, t, c: 0.8 * gmm_denoise(x, t, c), 50.0),
  "gfcg": lambda: guidance.gfcg(clean_logits, 3, 50.0),
  "classifier": lambda: guidance.classifier(class_logits, 3, 50.0, variant="noisy"),
  "elucd": lambda: guidance.classifier(clean_logits, 3, 50.0, schedule_amplitude=0.3),
  "rcfg": lambda: guidance.rcfg(50.0, variant="onetime"),
}


@pytest.mark.parametrize("name", sorted(ALL_RULES))
def test_no_nan_or_inf_at_scale_50(name, batch):
  x_T, cond = batch
  x, nfe = run(ALL_RULES[name](), (x_T.astype(jnp.float32), cond), pag_denoiser)
  assert x.dtype == jnp.float32
  assert np.isfinite(np.asarray(x)).all(), name
  assert int(nfe) >= NUM_STEPS


def test_vmap_over_independent_batches_matches_loop(batch):
  x_T, cond = batch
  xs = jnp.stack([x_T[:8], x_T[8:]]).astype(jnp.float32)
  cs = jnp.stack([cond[:8], cond[8:]])
  f = lambda x, c: run(guidance.apg(4.0, momentum=-0.3), (x, c))[0]
  got = jax.vmap(f)(xs, cs)
  for i in range(2):
    np.testing.assert_allclose(got[i], f(xs[i], cs[i]), rtol=1e-5, atol=1e-5)


def test_sharded_batch_gives_the_same_samples(mesh8, batch):
  from jax.sharding import NamedSharding, PartitionSpec

  x_T, cond = batch
  x_T = x_T.astype(jnp.float32)
  rule = guidance.adaptive(4.0, 0.95)
  sharded = NamedSharding(mesh8, PartitionSpec("d"))
  xs, ns = run(rule, (jax.device_put(x_T, sharded), jax.device_put(cond, sharded)))
  x, n = run(rule, (x_T, cond))
  np.testing.assert_allclose(xs, x, rtol=1e-5, atol=1e-5)
  assert int(ns) == int(n)


@pytest.mark.parametrize("factory", [guidance.classifier, guidance.gfcg])
def test_classifier_rules_check_logits_shape_and_labels_at_trace_time(factory):
  x, cond = jnp.ones((2, 2)), jnp.array([0, 1])
  rule = factory(lambda z: jnp.zeros((z.shape[0], 5)), 3, 1.0)
  with pytest.raises(ValueError, match=r"logits of shape \(B, num_classes\) = \(2, 3\)"):
    jax.jit(lambda x: rule.apply(lambda x, t, c: x, x, cond, ctx(), ())[0].x0)(x)
  with pytest.raises(TypeError, match="cond must be an integer label array of shape"):
    rule.apply(lambda x, t, c: x, x, None, ctx(), ())


# Every hyperparameter of every factory: (rule: argument, build(value)).
HYPERPARAMETERS = {
  "cfg: scale": lambda v: guidance.cfg(v),
  "cfg: rescale": lambda v: guidance.cfg(2.0, rescale=v),
  "apg: scale": lambda v: guidance.apg(v),
  "apg: eta": lambda v: guidance.apg(2.0, eta=v),
  "apg: norm_threshold": lambda v: guidance.apg(2.0, norm_threshold=v),
  "apg: momentum": lambda v: guidance.apg(2.0, momentum=v),
  "cfgpp: scale": lambda v: guidance.cfgpp(v),
  "adaptive: scale": lambda v: guidance.adaptive(v, 0.99),
  "adaptive: threshold": lambda v: guidance.adaptive(2.0, v),
  "linear_ag: scale": lambda v: guidance.linear_ag(v, jnp.zeros((2, 3)), jnp.zeros(2, bool)),
  "linear_ag: coefficients": lambda v: guidance.linear_ag(
    2.0, jnp.full((2, 3), v), jnp.zeros(2, bool)
  ),
  "pag: scale": lambda v: guidance.pag(v),
  "pag: cfg_scale": lambda v: guidance.pag(2.0, cfg_scale=v),
  "autoguidance: scale": lambda v: guidance.autoguidance(gmm_denoise, v),
  "classifier: scale": lambda v: guidance.classifier(clean_logits, 3, v),
  "classifier: joint_temperature": lambda v: guidance.classifier(
    clean_logits, 3, 1.0, joint_temperature=v
  ),
  "classifier: marginal_temperature": lambda v: guidance.classifier(
    clean_logits, 3, 1.0, marginal_temperature=v
  ),
  "classifier: schedule_amplitude": lambda v: guidance.classifier(
    clean_logits, 3, 1.0, schedule_amplitude=v
  ),
  "classifier: num_classes": lambda v: guidance.classifier(clean_logits, v, 1.0),
  "gfcg: scale": lambda v: guidance.gfcg(clean_logits, 3, v),
  "gfcg: cfg_scale": lambda v: guidance.gfcg(clean_logits, 3, 1.0, cfg_scale=v),
  "gfcg: num_classes": lambda v: guidance.gfcg(clean_logits, v, 1.0),
  "rcfg: scale": lambda v: guidance.rcfg(v, variant="onetime"),
  "rcfg: delta": lambda v: guidance.rcfg(2.0, variant="onetime", delta=v),
  "smooth_relu: beta": lambda v: guidance.smooth_relu(jnp.zeros(2), beta=v),
}
INF_ALLOWED = {"apg: norm_threshold"}  # inf disables the clipping


@pytest.mark.parametrize("arg", sorted(HYPERPARAMETERS))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_hyperparameters_are_rejected_naming_the_argument(arg, value):
  if value == math.inf and arg in INF_ALLOWED:
    HYPERPARAMETERS[arg](value)
    return
  with pytest.raises(ValueError, match=arg):
    HYPERPARAMETERS[arg](value)


@pytest.mark.parametrize("arg", sorted(set(HYPERPARAMETERS) - {"linear_ag: coefficients"}))
def test_non_numeric_hyperparameters_are_rejected_naming_the_argument(arg):
  with pytest.raises(TypeError, match=arg):
    HYPERPARAMETERS[arg]("3")


def test_traced_hyperparameters_are_accepted_unchecked(x64, batch):
  # The demo traces every rule hyperparameter so one compiled sampler serves a sweep.
  x_T, cond = batch

  @jax.jit
  def guided(w, eta, r, beta):
    return (
      guidance.apg(w, eta=eta, norm_threshold=r, momentum=beta)
      .apply(gmm_denoise, x_T, cond, ctx(), guidance.apg(w).init(x_T, cond))[0]
      .x0
    )

  want = (
    guidance.apg(3.0, eta=0.5, norm_threshold=2.0, momentum=-0.5)
    .apply(gmm_denoise, x_T, cond, ctx(), guidance.apg(3.0).init(x_T, cond))[0]
    .x0
  )
  np.testing.assert_allclose(guided(3.0, 0.5, 2.0, -0.5), want, rtol=1e-12)
