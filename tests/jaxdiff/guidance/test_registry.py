"""jaxdiff.guidance.REGISTRY: every entry builds by name and runs inside jaxdiff.sample."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import guidance, schedules, solvers
from jaxdiff.testing import GaussianMixture

STEPS = 4
MEANS = jnp.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])


def _resources():
  """A small mixture, a PAG-capable exact denoiser, a weak model and a clean classifier."""
  sched = schedules.vp_cosine()
  exact = GaussianMixture(MEANS, 0.2).denoiser(sched)
  weak = GaussianMixture(MEANS, 1.0).denoiser(sched)  # over-dispersed: a worse model

  def denoise(x, t, c, *, perturb=None, guidance_scale=None):
    out = exact(x, t, c)
    if guidance_scale is not None:  # AGD: a perfectly distilled network (exact CFG)
      u = exact(x, t, -jnp.ones_like(c))
      out = u + guidance_scale[:, None] * (out - u)
    return out if perturb is None else jnp.where(perturb[:, None], 0.5 * out, out)

  def classifier_fn(z):  # nearest-mean logits on the denoised prediction
    return -0.5 * jnp.sum((z[:, None] - MEANS[None]) ** 2, axis=-1)

  resources = dict(weak_denoise=weak, classifier_fn=classifier_fn, num_classes=3)
  return denoise, schedules.timesteps(sched, STEPS, spacing="logsnr"), resources


@pytest.mark.parametrize("name", sorted(guidance.REGISTRY))
def test_every_registered_rule_builds_by_name_and_samples(name):
  spec = guidance.REGISTRY[name]
  denoise, ts, resources = _resources()
  assert set(spec.requires) <= set(guidance.RESOURCES)
  rule = guidance.make(name, **resources)  # the registry's default scale
  x_T = jax.random.normal(jax.random.key(0), (4, 2))
  cond = jnp.array([0, 1, 2, 0])
  out = jaxdiff.sample(
    denoise, solvers.ddim(), x_T, ts, key=jax.random.key(1), cond=cond, guidance=rule
  )
  assert out.x.shape == x_T.shape and np.isfinite(np.asarray(out.x)).all()
  assert STEPS <= int(out.nfe) <= spec.evals() * STEPS


def test_declared_evaluations_follow_the_options():
  # PAG with a CFG term makes a third evaluation; the registry must say so (the demo and
  # the CLI divide their NFE budget by it).
  def denoise(x, t, cond, *, perturb=None):
    flag = jnp.zeros(x.shape[0]) if perturb is None else perturb.astype(x.dtype)
    return 0.5 * x * (1.0 + flag[:, None])

  ts = schedules.timesteps(schedules.vp_cosine(), STEPS, spacing="logsnr")
  x_T = jnp.ones((2, 2))
  for options in ({}, {"cfg_scale": 2.0}):
    rule = guidance.make("pag", **options)
    out = jaxdiff.sample(
      denoise, solvers.ddim(), x_T, ts, key=0, cond=jnp.zeros(2, int), guidance=rule
    )
    assert int(out.nfe) == guidance.REGISTRY["pag"].evals(**options) * STEPS
  assert guidance.REGISTRY["rcfg"].evals(variant="self") == 1


def test_make_names_what_is_missing_or_unknown():
  with pytest.raises(ValueError, match="unknown guidance rule 'nope'; known: adaptive, agd, apg"):
    guidance.make("nope")
  with pytest.raises(ValueError, match="guidance rule 'autoguidance' needs weak_denoise"):
    guidance.make("autoguidance")
  with pytest.raises(ValueError, match="unknown resources"):
    guidance.RuleSpec("x", guidance.cfg, 1.0, 2, requires=("teacher",))
