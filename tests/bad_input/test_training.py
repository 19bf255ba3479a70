"""Hostile inputs to jaxdiff.training, the analytic denoisers and ISTD.

Each case is a one-line reproducer over the small fixtures below; every bad argument is an
error at construction naming it, before anything is traced.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxdiff import metrics, training  # noqa: F401 - used by the reproducers
from jaxdiff import schedules as S
from jaxdiff.demo import DemoConfig  # noqa: F401 - used by the reproducers
from jaxdiff.testing import empirical_denoiser, locality, wiener_denoiser  # noqa: F401
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = math.nan, math.inf
sched = S.vp_cosine()
flow = S.flow()
pts = np.arange(12.0).reshape(4, 3)
zero = lambda x, t, y: jnp.zeros_like(x)  # noqa: E731

CASES = [
  # denoising_loss
  Case("training.denoising_loss(sched, prediction='score')", raises(ValueError, "prediction")),
  Case("training.denoising_loss(sched, prediction='noise')", raises(ValueError, "prediction")),
  Case("training.denoising_loss(sched, weighting='snr2')", raises(ValueError, "weighting")),
  Case("training.denoising_loss(sched, weighting=3.0)", raises(ValueError, "weighting")),
  Case("training.denoising_loss(sched, premetric='lpips')", raises(ValueError, "premetric")),
  Case("training.denoising_loss(sched, huber_c=0.0)", raises(ValueError, "huber_c")),
  Case("training.denoising_loss(sched, huber_c=nan)", raises(ValueError, "huber_c")),
  Case("training.denoising_loss(sched, min_snr_gamma=-1)", raises(ValueError, "min_snr_gamma")),
  Case("training.denoising_loss(sched, smoothness=-0.1)", raises(ValueError, "smoothness")),
  Case("training.denoising_loss(sched, label_dropout=1.5)", raises(ValueError, "label_dropout")),
  Case("training.denoising_loss(sched, null_label=0.5)", raises(ValueError, "null_label")),
  Case("training.denoising_loss(sched, coupled=1)", raises(TypeError, "coupled")),
  Case("training.denoising_loss(sched, timesteps='uniform')", raises(TypeError, "timesteps")),
  Case("training.denoising_loss(sched, perceptual=3)", raises(TypeError, "perceptual")),
  Case("training.denoising_loss('cosine')", raises(TypeError, "schedule")),
  Case(
    "training.denoising_loss(flow, prediction='velocity')(zero, jnp.ones((4, 3)), jnp.zeros(4, int), 0)",
    returns(policy="an int seed is a key; flow's t = 0 and t = 1 are finite for velocity"),
  ),
  Case(
    "training.denoising_loss(flow, prediction='eps', weighting='x0')"
    ".per_example(zero, jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.array([0.0, 1.0]), None)",
    returns(policy="sigma = 0 / alpha = 0 weights are floored, never NaN"),
  ),
  # samplers
  Case("training.u_shaped(0.0)", raises(ValueError, "u_shaped: a")),
  Case("training.u_shaped(-4)", raises(ValueError, "u_shaped: a")),
  Case("training.u_shaped(nan)", raises(ValueError, "u_shaped: a")),
  Case("training.u_shaped(1e4)", raises(ValueError, "u_shaped: a")),
  Case("training.logit_normal(scale=0.0)", raises(ValueError, "logit_normal: scale")),
  Case("training.logit_normal(loc=inf)", raises(ValueError, "logit_normal: loc")),
  Case("training.logit_normal(loc='a')", raises(TypeError, "logit_normal: loc")),
  # curriculum
  Case("training.curriculum_groups(sched, 20, num_timesteps=10)", raises(ValueError, "num_groups")),
  Case("training.curriculum_groups(sched, 0)", raises(ValueError, "num_groups")),
  Case("training.curriculum_groups(sched, 2.5)", raises(ValueError, "num_groups")),
  Case(
    "training.curriculum_groups(sched, 200, num_timesteps=200)",
    raises(ValueError, "hold no timestep"),
  ),
  Case("training.curriculum_groups(None, 4)", raises(TypeError, "schedule")),
  Case("training.curriculum([0.0, 0.5, 0.4], stage_steps=10)", raises(ValueError, "boundaries")),
  Case("training.curriculum([0.5], stage_steps=10)", raises(ValueError, "boundaries")),
  Case("training.curriculum([0.0, 1.0], stage_steps=0)", raises(ValueError, "stage_steps")),
  Case("training.curriculum([0.0, 1.0], stage_steps=10)(0, (3,))", raises(TypeError, "step")),
  # reflow, smoothness (the weight EMA moved to optim: tests/bad_input/test_optim_wave2.py)
  Case("training.reflow_pairs(zero, jnp.ones((2, 3)), steps=0)", raises(ValueError, "steps")),
  Case("training.reflow_pairs(zero, jnp.ones((2, 3), int))", raises(TypeError, "noise")),
  Case("training.step_variation_penalty(3, jnp.ones((2, 3)), key=0)", raises(TypeError, "fn")),
  Case(
    "training.step_variation_penalty(lambda e: e, jnp.ones((2, 3)), key='k')",
    raises(TypeError, "key"),
  ),
  # analytic denoisers, locality, ISTD
  Case("empirical_denoiser(np.ones(3), sched)", raises(ValueError, "data")),
  Case(
    "empirical_denoiser(pts.at[0, 0].set(nan) if False else np.full((2, 2), nan), sched)",
    raises(ValueError, "finite"),
  ),
  Case("empirical_denoiser(pts, sched, labels=np.array([0, 1]))", raises(ValueError, "labels")),
  Case(
    "empirical_denoiser(pts, sched, labels=np.array([0, 1, -1, 0]))", raises(ValueError, "labels")
  ),
  Case(
    "empirical_denoiser(pts, sched)(jnp.ones((2, 3)), jnp.array([0.0, 0.5]))",
    returns(policy="sigma = 0 selects the nearest point, never 0/0"),
  ),
  Case("wiener_denoiser(None, sched)", raises(TypeError, "mean and covariance")),
  Case("wiener_denoiser(pts, sched, mean=np.zeros(3))", raises(TypeError, "not both")),
  Case(
    "wiener_denoiser(None, sched, mean=np.zeros(2), covariance=np.eye(3))",
    raises(ValueError, "covariance"),
  ),
  Case(
    "wiener_denoiser(None, sched, mean=np.zeros(2), covariance=np.array([[1.0, 2.0], [0.0, 1.0]]))",
    raises(ValueError, "symmetric"),
  ),
  Case(
    "wiener_denoiser(None, sched, mean=np.zeros(2), covariance=-np.eye(2))",
    raises(ValueError, "semi-definite"),
  ),
  Case("locality(np.eye(4), (4, 4))", raises(ValueError, "jacobian")),
  Case("locality(np.eye(16), (16,))", raises(ValueError, "image_shape")),
  Case("locality(np.eye(16), (4, 4), mass=0.0)", raises(ValueError, "mass")),
  Case(
    "locality(np.zeros((16, 16)), (4, 4))",
    returns(lambda r: r.max() == 0, "no sensitivity: radius 0"),
  ),
  Case("metrics.istd(jnp.ones((2, 2, 3)))", raises(ValueError, "K >= 3")),
  Case("metrics.istd(jnp.ones((2, 4, 3), int))", raises(TypeError, "floating")),
  Case("metrics.istd(jnp.ones((2, 4, 3)), variant='lpips')", raises(ValueError, "variant")),
  # the demo's flow-model settings
  Case("DemoConfig(flow_steps=0)", raises(ValueError, "DemoConfig: flow_steps")),
  Case("DemoConfig(flow_steps=10.0)", raises(TypeError, "DemoConfig: flow_steps must be an int")),
  Case("DemoConfig(ema_decay=1.0)", raises(ValueError, "DemoConfig: ema_decay")),
  Case("DemoConfig(ema_decay=nan)", raises(ValueError, "DemoConfig: ema_decay")),
]

NS = dict(globals())


@params(CASES)
def test_case(case):
  run(case, NS)
