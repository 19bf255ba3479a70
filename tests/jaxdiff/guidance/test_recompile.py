"""Guidance rules are pytrees: an equal rule built again, or a new float hyperparameter or
measurement, does not recompile ``jaxdiff.sample`` (and the new value is used); the calls a
rule declares (``calls``, what a feature cache allots its slots by) are the ones it makes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import Network, StepContext, guidance, inverse, schedules, solvers
from jaxdiff._sampling import _sample_jit
from jaxdiff.testing import GaussianMixture

MEANS = jnp.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
SCHED = schedules.vp_cosine()
STEPS = 4
TS = schedules.timesteps(SCHED, STEPS, spacing="logsnr")
X_T = jax.random.normal(jax.random.key(0), (4, 2))
LABELS = jnp.array([0, 1, 2, 0])
EXACT = GaussianMixture(MEANS, 0.2).denoiser(SCHED)


def denoise(x, t, c, *, perturb=None, guidance_scale=None):
  """The exact mixture denoiser; PAG's flag shrinks the prediction (so it reaches the output);
  AGD's ``guidance_scale`` gives the exact CFG prediction (a perfectly distilled network)."""
  out = EXACT(x, t, c)
  if guidance_scale is not None:
    u = EXACT(x, t, -jnp.ones_like(c))
    out = u + guidance_scale[:, None] * (out - u)
  return out if perturb is None else jnp.where(perturb[:, None], 0.5 * out, out)


def classifier_fn(z):
  """Nearest-mean logits on the denoised prediction."""
  return -0.5 * jnp.sum((z[:, None] - MEANS[None]) ** 2, axis=-1)


def level_classifier(x, t):
  """A noise-aware two-level classifier (minority guidance): the distance to the origin."""
  r = jnp.sum(x**2, axis=-1)
  return jnp.stack([-r, r], axis=-1) * (1 + t)[:, None]


# Built once: callables are static fields (part of the compilation key, compared by identity).
RESOURCES = dict(
  weak_denoise=GaussianMixture(MEANS, 1.0).denoiser(SCHED),
  classifier_fn=classifier_fn,
  num_classes=3,
)
OP = inverse.matrix(jnp.array([[1.0, 0.5]]))
Y = jnp.array([[1.0], [-0.5], [0.2], [0.8]])
LOSS = inverse.measurement_loss(OP, Y)
COEF = jnp.zeros((STEPS, 3)).at[:, 2].set(0.9)
ESTIMATE = jnp.array([False, True, False, True])

# name -> (build(scale), two scales in the rule's own convention); every registry entry.
RULES = {
  **{
    name: (lambda s, name=name: guidance.make(name, s, **RESOURCES), (2.0, 3.0))
    for name in guidance.REGISTRY
    if name != "cfgpp"
  },
  "cfgpp": (lambda s: guidance.make("cfgpp", s), (0.4, 0.7)),
  "linear_ag": (lambda s: guidance.linear_ag(s, COEF, ESTIMATE), (2.0, 3.0)),
  "gfcg": (lambda s: guidance.gfcg(classifier_fn, 3, s, cfg_scale=1.5), (2.0, 3.0)),
  "dps": (lambda s: guidance.dps(OP, Y, s), (0.5, 1.0)),
  "dps-gaussian": (lambda s: guidance.dps(OP, Y, s, variant="gaussian", noise_std=0.5), (0.5, 1.0)),
  "stsl": (lambda s: guidance.stsl(OP, Y, s, num_probes=2), (0.5, 1.0)),
  "flowchef": (lambda s: guidance.flowchef(LOSS, s), (0.3, 0.6)),
  "minority": (lambda s: guidance.minority(level_classifier, 2, 1, s), (1.0, 2.0)),
}


def _compiles(run) -> int:
  """How many new compilations of the sampling loop ``run()`` causes."""
  before = _sample_jit._cache_size()
  jax.block_until_ready(run())
  return _sample_jit._cache_size() - before


def _sample(rule):
  return jaxdiff.sample(denoise, solvers.ddim(), X_T, TS, key=1, cond=LABELS, guidance=rule).x


@pytest.mark.parametrize("name", sorted(RULES))
def test_an_equal_rule_or_a_new_scale_does_not_recompile(name):
  build, (a, b) = RULES[name]
  assert _compiles(lambda: _sample(build(a))) <= 1
  assert _compiles(lambda: _sample(build(a))) == 0, f"{name}: an equal rule built again recompiled"
  assert _compiles(lambda: _sample(build(b))) == 0, f"{name}: a new scale recompiled"
  # ... and the scale is a leaf that is used: a different scale gives a different sample.
  assert not np.array_equal(_sample(build(a)), _sample(build(b))), name


@pytest.mark.parametrize(
  "build",
  [
    lambda v: guidance.dps(OP, Y + v, 1.0),
    lambda v: guidance.stsl(OP, Y + v, 1.0),
    lambda v: guidance.linear_ag(3.0, COEF + v, ESTIMATE),
    lambda v: guidance.rcfg(1.5, reference=X_T + v),
  ],
  ids=["dps y", "stsl y", "linear_ag coefficients", "rcfg reference"],
)
def test_new_arrays_of_the_same_shape_do_not_recompile(build):
  assert _compiles(lambda: _sample(build(0.0))) <= 1
  assert _compiles(lambda: _sample(build(0.25))) == 0
  assert not np.array_equal(_sample(build(0.0)), _sample(build(0.25)))


# Rules that make every network call inside their own lax.cond (Network.cond) or under
# jax.vjp (DPS, STSL): the full network, no cache slot, so calls = ().
UNCACHED = {"adaptive": None, "linear_ag": None, "rcfg": None, "dps": 1, "dps-gaussian": 1}
UNCACHED["stsl"] = 1 + 2  # + its two probes
# Evaluations counted in nfe that are no calls of the network (a weak model, probes).
EXTRA = {"autoguidance": 1}


@pytest.mark.parametrize("name", sorted(RULES))
def test_declared_calls_are_the_calls_guide_makes(name):
  rule = RULES[name][0](RULES[name][1][0])
  rows = []

  def recording(x, t, c, **kw):
    rows.append(x.shape[0])
    return denoise(x, t, c, **kw)

  b = X_T.shape[0]
  ctx = StepContext(
    jnp.asarray(0.5), SCHED.alpha(0.5), SCHED.sigma(0.5), 1, STEPS, jax.random.key(0)
  )
  net = Network.of(recording, batch=b)
  _, _, net = rule.guide(net, X_T, LABELS, ctx, rule.init(X_T, LABELS))
  calls = rule.calls
  assert calls is not None, name
  if name in UNCACHED:
    assert calls == () and net.slot == 0, name
    if UNCACHED[name] is not None:
      assert int(net.nfe) == UNCACHED[name], name
    return
  assert net.slot == len(calls), name
  if name != "pag":  # PAG traces the plain denoiser once (eval_shape) to check its flag
    assert rows == [m * b for m in calls], name
  assert int(net.nfe) == sum(calls) + EXTRA.get(name, 0), name
