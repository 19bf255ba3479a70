# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile inputs to jaxdiff.inverse (operators, measure, red_diff), the measurement-guided
rules (dps, stsl, flowchef) and GaussianMixture.posterior, one line a case.

Fixtures: a 2-D two-component mixture ``GMM`` with its exact VP denoiser ``DEN``, a 3-step
grid ``TS``, a 1 x 2 operator ``OP`` with a batch ``X`` of 4 and matching measurements ``Y``.
``SAMPLE(rule)`` runs a rule inside :func:`jaxdiff.sample` (shape errors surface at trace
time, before anything runs).
"""

import jax
import jax.numpy as jnp

import jaxdiff
from jaxdiff import guidance as G  # noqa: F401 - used by the reproducers
from jaxdiff import inverse as I
from jaxdiff import schedules, solvers
from jaxdiff.testing import GaussianMixture
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
SCHED = schedules.vp_cosine()
GMM = GaussianMixture(jnp.array([[2.0, 0.0], [-2.0, 0.0]]), 0.3)
DEN = GMM.denoiser(SCHED)
TS = schedules.timesteps(SCHED, 3, spacing="logsnr")
OP = I.matrix(jnp.array([[1.0, 0.5]]))
X = jax.random.normal(jax.random.key(0), (4, 2))
Y = jnp.ones((4, 1))
LOSS = I.measurement_loss(OP, Y)


def SAMPLE(rule, x=X):
  return jaxdiff.sample(DEN, solvers.ddim(), x, TS, key=0, guidance=rule).x


NS = dict(globals())

CASES = [
  # operators: shapes and parameters
  Case("I.random_mask((8, 8), 0.0, key=0)", raises(ValueError, "random_mask: keep")),
  Case("I.random_mask((8, 8), 1.5, key=0)", raises(ValueError, "random_mask: keep")),
  Case("I.random_mask((8, -1), 0.5, key=0)", raises(ValueError, "random_mask: shape")),
  Case("I.random_mask(8, 0.5, key=0)", raises(TypeError, "random_mask: shape")),
  Case("I.random_mask((4,), 1e-9, key=0).out_shape", returns(lambda s: s == (1,), "at least one pixel is observed")),
  Case("I.box_mask((8, 8), 2, 2, 7, 4)", raises(ValueError, "box_mask: height")),
  Case("I.box_mask((8, 8), 0, 0, 8, 8)", raises(ValueError, "box covers the whole image")),
  Case("I.box_mask((8,), 0, 0, 1, 1)", raises(ValueError, "box_mask: shape")),
  Case("I.avg_pool((7, 8), 2)", raises(ValueError, "avg_pool: the last two axes")),
  Case("I.avg_pool((8, 8), 0)", raises(ValueError, "avg_pool: factor")),
  Case("I.gaussian_blur((8, 8), -1.0)", raises(ValueError, "gaussian_blur: sigma")),
  Case("I.gaussian_blur((8, 8), 1.0, size=4)", raises(ValueError, "gaussian_blur: size must be odd")),
  Case("I.matrix(jnp.ones((2,)))", raises(ValueError, "matrix: a must be")),
  Case("I.matrix(jnp.ones((2, 3), int))", raises(ValueError, "matrix: a must be")),
  Case("I.matrix(jnp.ones((2, 4)), in_shape=(3,))", raises(ValueError, "matrix: in_shape")),
  Case("OP(jnp.ones((4, 3)))", raises(ValueError, r"matrix\(1x2\): x must have shape \(B, \*\(2,\)\)")),
  Case("OP(jnp.ones((2,)))", raises(ValueError, "x must have shape")),
  Case("OP.T(jnp.ones((4, 2)))", raises(ValueError, "y must have shape")),
  Case("I.avg_pool((8, 8))(jnp.ones((2, 4, 4)))", raises(ValueError, "avg_pool.*x must have shape")),
  # measurement noise
  Case("I.measure(OP, X, -0.1)", raises(ValueError, "measure: noise_std")),
  Case("I.measure(OP, X, nan)", raises(ValueError, "measure: noise_std")),
  Case("I.measure('A', X, 0.1)", raises(TypeError, "measure: operator must be")),
  Case("I.measure(OP, X, 0.0)", returns(lambda y: y.shape == (4, 1), "noise_std = 0 is the noiseless measurement")),
  # the rules: operator, measurement shape and batch, step sizes
  Case("G.dps('A', Y)", raises(TypeError, "dps: operator must be")),
  Case("G.dps(OP, jnp.ones((4, 2)))", raises(ValueError, r"dps: y must have shape \(B, \*\(1,\)\)")),
  Case("G.dps(OP, Y, -1.0)", raises(ValueError, "dps: scale")),
  Case("G.dps(OP, Y, nan)", raises(ValueError, "dps: scale")),
  Case("G.dps(OP, Y, variant='exact')", raises(ValueError, "dps: variant")),
  Case("G.dps(OP, Y, variant='gaussian')", raises(ValueError, "dps: variant='gaussian' needs noise_std")),
  Case("G.dps(OP, Y, variant='gaussian', noise_std=-0.1)", raises(ValueError, "dps: noise_std")),
  Case("G.dps(OP, Y, variant='gaussian', noise_std=0.0)", raises(ValueError, "dps: noise_std")),
  Case("SAMPLE(G.dps(OP, jnp.ones((3, 1))))", raises(ValueError, r"dps: the measurement y must have shape .* \(4, 1\) for a batch of 4")),
  Case("SAMPLE(G.dps(OP, Y, 1e6))", returns(None, "the normalized step is bounded: large scales overshoot, stay finite")),
  Case("SAMPLE(G.dps(OP, Y * 0 + OP(X[:1] * 0)))", returns(None, "a measurement met exactly (||r|| = 0) gives no pull, not 0/0")),
  Case("G.stsl(OP, Y, num_probes=0)", raises(ValueError, "stsl: num_probes")),
  Case("G.stsl(OP, Y, num_probes=1.5)", raises(ValueError, "stsl: num_probes")),
  Case("G.stsl(OP, Y, trace_weight=-1.0)", raises(ValueError, "stsl: trace_weight")),
  Case("G.stsl(OP, Y, trace='hessian')", raises(ValueError, "stsl: trace")),
  Case("G.stsl(OP, Y, probe='uniform')", raises(ValueError, "stsl: probe")),
  Case("SAMPLE(G.stsl(OP, jnp.ones((5, 1))))", raises(ValueError, "stsl: the measurement y must have shape")),
  Case("SAMPLE(G.stsl(OP, Y, 1e6))", returns(None, "bounded normalized step with the trace drift")),
  Case("G.flowchef(None)", raises(TypeError, "flowchef: loss_fn must be callable")),
  Case("G.flowchef(LOSS, -1.0)", raises(ValueError, "flowchef: scale")),
  Case("G.flowchef(LOSS, variant='velocity')", raises(ValueError, "flowchef: variant")),
  Case("G.flowchef(LOSS, last_step=1)", raises(TypeError, "flowchef: last_step")),
  Case("SAMPLE(G.flowchef(lambda z, c: jnp.sum(z)))", raises(ValueError, r"flowchef: loss_fn\(x0, cond\) must return .*shape \(4,\).*one loss per sample")),
  Case("SAMPLE(G.flowchef(I.measurement_loss(OP, jnp.ones((2, 1)))))", raises(ValueError, "measurement_loss: the measurement y must have shape")),
  Case("I.measurement_loss(OP, jnp.ones((4, 3)))", raises(ValueError, "measurement_loss: y must have shape")),
  # red_diff
  Case("I.red_diff(DEN, OP, Y, TS, key=0, lam=-1.0)", raises(ValueError, "red_diff: lam")),
  Case("I.red_diff(DEN, OP, Y, TS, key=0, learning_rate=0.0)", raises(ValueError, "red_diff: learning_rate")),
  Case("I.red_diff(DEN, OP, Y, TS, key=0, variant='snr')", raises(ValueError, "red_diff: variant")),
  Case("I.red_diff(DEN, OP, Y, TS, key=0, optimizer='adam')", raises(TypeError, "red_diff: optimizer")),
  Case("I.red_diff(DEN, OP, jnp.ones((4, 2)), TS, key=0)", raises(ValueError, "red_diff: y must have shape")),
  Case("I.red_diff(DEN, OP, Y, TS, key=0, init=jnp.ones((3, 2)))", raises(ValueError, "red_diff: init must have shape")),
  Case("I.red_diff(None, OP, Y, TS, key=0)", raises(TypeError, "red_diff: denoise")),
  # the exact posterior
  Case("GMM.posterior(jnp.ones((1, 3)), jnp.ones(1), 0.1)", raises(ValueError, r"A must have shape \(M, 2\)")),
  Case("GMM.posterior(jnp.ones((1, 2)), jnp.ones(2), 0.1)", raises(ValueError, r"y must have shape \(1,\)")),
  Case("GMM.posterior(jnp.ones((1, 2)), jnp.ones(1), -0.1)", raises(ValueError, "noise_std")),
  Case("GMM.posterior(jnp.ones((1, 2)), jnp.ones(1), 0.0)", raises(ValueError, "noise_std")),
  Case("GMM.posterior(jnp.ones((1, 2)), jnp.array([nan]), 0.1)", raises(ValueError, "y must be finite")),
  Case("GMM.posterior(jnp.ones((1, 2)), jnp.array([1e3]), 0.1).log_weights", returns(None, "an extreme measurement: weights underflow to the smallest normal float, not 0 or NaN")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
