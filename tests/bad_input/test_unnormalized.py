# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to ``optim.unnormalized``: step sizes and variants out of range, samples
that are empty, non-floating or non-finite, energies and noise log-densities of the wrong
shape, dtype or value, a noise density that is zero where it is needed. Concrete input
raises naming the argument; traced input (non-finite parameters under ``jit``) is poisoned
with NaN, never a plausible value.

Fixtures: ``E`` a Gaussian energy (mean ``P``), ``LQ`` the log-density of N(0, 4 I), ``X``
eight data points, ``Z`` sixteen noise samples, ``S`` a fresh state.
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp
import numpy as np

from optim import unnormalized as U  # noqa: F401 - used by the reproducers
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")


def E(p, x):
  return 0.5 * jnp.sum((x - p) ** 2, -1)


def LQ(x):
  return -0.125 * jnp.sum(x**2, -1) - jnp.log(8 * jnp.pi)


P = jnp.zeros(2)
X = jnp.ones((8, 2))
Z = 2.0 * jax.random.normal(jax.random.key(0), (16, 2))
S = U.meco_init(P)
NS = dict(globals())


def _finite_step(out):
  (loss, g), state = out
  return bool(jnp.isfinite(loss)) and bool(jnp.all(jnp.isfinite(g))) and int(state.count) == 1


CASES = [
  # --- step sizes and the variant
  Case("U.meco_grads(E, P, S, X, Z, LQ, gamma=0.0)", raises(ValueError, r"gamma must lie in \(0, 1\], got 0.0")),
  Case("U.meco_grads(E, P, S, X, Z, LQ, gamma=1.5)", raises(ValueError, r"gamma must lie in \(0, 1\], got 1.5")),
  Case("U.meco_grads(E, P, S, X, Z, LQ, gamma=nan)", raises(ValueError, "gamma must be a number, got NaN")),
  Case("U.meco_grads(E, P, S, X, Z, LQ, gamma=True)", raises(TypeError, "gamma must be a real number, got a bool")),
  Case("U.meco_grads(E, P, S, X, Z, LQ, gamma=1.0)", returns(_finite_step, "gamma = 1 is the plain minibatch estimator")),
  Case("U.meco_grads(E, P, S, X, Z, LQ, gamma=lambda c: 1.0 / (c + 1.0))", returns(_finite_step, "a schedule of the count is accepted (not checked)")),
  Case("U.meco_grads(E, P, S, X, Z, LQ, variant='storm')", raises(ValueError, "variant must be one of 'moving_average', 'lagged'; got 'storm'")),
  Case("U.meco_grads(E, P, None, X, Z, LQ)", raises(TypeError, "state must be a MECOState")),
  Case("U.meco(-0.1)", raises(ValueError, r"learning_rate must lie in \[0, inf\), got -0.1")),
  Case("U.meco(0.1, beta=0.0)", raises(ValueError, r"beta must lie in \(0, 1\], got 0.0")),
  Case("U.meco(0.1, beta=2)", raises(ValueError, r"beta must lie in \(0, 1\], got 2")),
  Case("U.meco(0.1, beta=1.0).update(jnp.ones(2), U.meco(0.1, beta=1.0).init(P))[0]", returns(lambda u: np.allclose(u, -0.1), "beta = 1 is plain SGD")),
  # --- samples
  Case("U.meco_grads(E, P, S, jnp.ones((8, 2), jnp.int32), Z, LQ)", raises(TypeError, "meco_grads: data must be a floating array, got dtype int32")),
  Case("U.meco_grads(E, P, S, [[1.0, 1.0]], Z, LQ)", raises(TypeError, "meco_grads: data must be an array of samples")),
  Case("U.meco_grads(E, P, S, jnp.ones((0, 2)), Z, LQ)", raises(ValueError, r"data must hold at least one sample along its leading axis, got shape \(0, 2\)")),
  Case("U.meco_grads(E, P, S, jnp.asarray(1.0), Z, LQ)", raises(ValueError, r"data must hold at least one sample along its leading axis, got shape \(\)")),
  Case("U.meco_grads(E, P, S, X.at[3, 1].set(nan), Z, LQ)", raises(ValueError, "data must be finite .* in sample 3")),
  Case("U.meco_grads(E, P, S, X, Z.at[0, 0].set(inf), LQ)", raises(ValueError, "noise must be finite .* in sample 0")),
  Case("U.nce_loss(E, P, 0.0, X, jnp.ones((0, 2)), LQ)", raises(ValueError, "nce_loss: noise must hold at least one sample")),
  Case("U.log_partition_estimate(E, P, Z.astype(jnp.complex64), LQ)", raises(TypeError, "noise must be a floating array, got dtype complex64")),
  # --- the energy
  Case("U.meco_grads(lambda p, x: jnp.sum(E(p, x)), P, S, X, Z, LQ)", raises(ValueError, r"meco_grads: energy_fn\(params, x\) must return a real floating-point array of shape \(8,\) .*got \(\) float32; one energy per sample")),
  Case("U.meco_grads(lambda p, x: E(p, x)[:, None], P, S, X, Z, LQ)", raises(ValueError, r"energy_fn\(params, x\) must return .* of shape \(8,\) \(no broadcasting\), got \(8, 1\)")),
  Case("U.nce_loss(lambda p, x: jnp.ones(x.shape[0], jnp.int32), P, 0.0, X, Z, LQ)", raises(TypeError, r"nce_loss: energy_fn\(params, x\) must return a real floating-point array")),
  Case("U.log_partition_estimate(lambda p, x: {'e': E(p, x)}, P, Z, LQ)", raises(TypeError, r"energy_fn\(params, x\) must return one array .* got dict \(a pytree\)")),
  Case("U.meco_grads(E, jnp.array([nan, 0.0]), S, X, Z, LQ)", raises(ValueError, r"meco_grads: energy_fn\(params, x\) returned a non-finite energy")),
  Case("U.nce_loss(lambda p, x: E(p, x) / 0.0, P, 0.0, X, Z, LQ)", raises(ValueError, r"nce_loss: energy_fn\(params, x\) returned a non-finite energy")),
  Case("jax.jit(lambda p: U.meco_grads(E, p, S, X, Z, LQ))(jnp.array([nan, 0.0]))", returns(lambda out: bool(jnp.isnan(out[0][0])) and bool(jnp.isnan(out[0][1]).all()) and bool(jnp.isnan(out[1].log_u)), "traced non-finite parameters: loss, gradient and state are NaN", nan_ok=True)),
  Case("U.meco_grads(lambda p, x: E(p, x) - 1e4, P, S, X, Z, LQ)", returns(lambda out: bool(jnp.isfinite(out[1].log_u)) and bool(out[1].log_u > 9e3), "log space: e^{1e4} ratios do not overflow, log u is about 1e4")),
  Case("U.log_partition_estimate(lambda p, x: E(p, x) + 1e4, P, Z, LQ)", returns(lambda v: bool(v < -9e3), "log space: e^{-1e4} ratios do not underflow to log 0")),
  # --- the noise density
  Case("U.meco_grads(E, P, S, X, Z, 'gaussian')", raises(TypeError, "meco_grads: noise_log_prob must be callable .* got str")),
  Case("U.meco_grads(E, P, S, X, Z, lambda x: LQ(x)[:4])", raises(ValueError, r"noise_log_prob\(x\) must return .* of shape \(16,\)")),
  Case("U.meco_grads(E, P, S, X, Z, lambda x: jnp.where(x[:, 0] > 0, -inf, LQ(x)))", raises(ValueError, r"noise_log_prob\(x\) must be finite at every sample \(q > 0 .*\), got -inf at sample")),
  Case("U.nce_loss(E, P, 0.0, X + 10.0, Z, lambda x: jnp.where(x[:, 0] > 5, -inf, LQ(x)))", raises(ValueError, r"nce_loss: noise_log_prob\(x\) must be finite at every sample .* got -inf at sample 0")),
  # --- NCE's log partition
  Case("U.nce_loss(E, P, jnp.zeros(2), X, Z, LQ)", raises(TypeError, r"log_partition must be a scalar, got an array of shape \(2,\)")),
  Case("U.nce_loss(E, P, nan, X, Z, LQ)", raises(ValueError, "log_partition must be a number, got NaN")),
  Case("U.nce_loss(E, P, 'c', X, Z, LQ)", raises(TypeError, "log_partition must be a real number")),
  Case("U.nce_loss(E, P, 0.0, X, Z[:4], LQ)", returns(lambda v: bool(jnp.isfinite(v)), "fewer noise than data samples: nu = m / n < 1 is valid")),
  Case("jax.grad(lambda c: U.nce_loss(E, P, c, X, Z, LQ))(0.0)", returns(lambda g: bool(jnp.isfinite(g)), "a traced log_partition (it is learned) is accepted")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
