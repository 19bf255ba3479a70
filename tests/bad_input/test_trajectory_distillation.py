# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to ``jaxdiff.distill``'s data-free consistency distillation (TBCM):
unknown variants, empty grids, non-finite starting noise or states, bad keys, a tangent
normalisation out of range, students and teachers with the wrong output. Concrete input
raises naming the argument; a traced normalisation constant is accepted.

Fixtures: ``T`` the exact denoiser of a 1-D two-mode mixture under the flow schedule,
``TS`` a 4-step grid, ``X`` four starting points, ``P`` trajectory pairs, ``F`` a student
(the identity map), ``KW`` the teacher and schedule keywords.
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp
import numpy as np  # noqa: F401 - used by the reproducers

import jaxdiff
from jaxdiff import distill as D  # noqa: F401 - used by the reproducers
from jaxdiff import schedules
from jaxdiff.testing import GaussianMixture
from tests.bad_input.harness import Case, params, raises, returns, run

nan = float("nan")
SCHED = schedules.flow()
T = GaussianMixture(jnp.array([[-1.0], [1.0]]), 0.2).denoiser(SCHED)
TS = jaxdiff.timesteps(SCHED, 4)
X = jnp.ones((4, 1))
P = D.trajectory_pairs(T, X, TS, key=0)
F = lambda p, x, t, c: p * x  # noqa: E731
KW = dict(teacher=T, schedule=SCHED)
NS = dict(globals())

CASES = [
  # --- the pair sampler
  Case("D.trajectory_consistency_loss(F, 1.0, P._replace(x_0=jnp.ones((4, 2))), variant='endpoint', **KW)", raises(ValueError, r"pairs.x_0 must have the shape of pairs.x_t \(4, 1\), got \(4, 2\)")),
  Case("D.trajectory_consistency_loss(F, 1.0, P, variant='endpoint', **KW)", returns(lambda v: np.isclose(float(v), float(jnp.mean((P.x_t - P.x_0) ** 2))), "endpoint: mean squared distance to the trajectory's end")),
  Case("D.trajectory_pairs(T, X, TS, key=0, variant='data')", raises(ValueError, "variant must be one of")),
  Case("D.trajectory_pairs(T, jnp.float32(1.0), TS, key=0)", raises(ValueError, r"x_T must have shape \(B, ...\) with B >= 1, got \(\)")),
  Case("D.trajectory_pairs(T, jnp.ones((0, 1)), TS, key=0)", raises(ValueError, r"x_T must have shape \(B, ...\) with B >= 1")),
  Case("D.trajectory_pairs(T, jnp.array([[1.0], [nan]]), TS, key=0)", raises(ValueError, r"x_T must be finite \(no NaN or inf\), got nan at index \(1, 0\)")),
  Case("D.trajectory_pairs(T, X, TS, key='a')", raises(TypeError, "key must be an int seed or a JAX PRNG key")),
  Case("D.trajectory_pairs(lambda x, t, c: x[:, :0], X, TS, key=0)", raises(ValueError, r"denoise\(x, t, cond\) must return x's shape")),
  Case("D.trajectory_pairs(T, X, TS._replace(t=TS.t[:1], alpha=TS.alpha[:1], sigma=TS.sigma[:1], lam=TS.lam[:1], dalpha=TS.dalpha[:1], dsigma=TS.dsigma[:1]), key=0)", raises(ValueError, r"ts must have at least one step, got 1 time\(s\)")),
  Case("D.trajectory_pairs(T, X, jaxdiff.timesteps(SCHED, 1), key=0).t", returns(lambda t: bool(np.all(t == 1.0)), "one step: every pair starts at the noise end")),
  Case("D.trajectory_pairs(T, X, jaxdiff.timesteps(SCHED, 4), key=0, variant='renoise').s", returns(lambda s: bool(np.all(s < 1.0)), "renoised pairs share the grid's times")),
  # --- the loss
  Case("D.trajectory_consistency_loss(F, 1.0, P, variant='sCM', **KW)", raises(ValueError, "variant must be one of")),
  Case("D.trajectory_consistency_loss(F, 1.0, P, tangent_normalization=0.0, **KW)", raises(ValueError, r"tangent_normalization must lie in \(0, inf\), got 0.0")),
  Case("D.trajectory_consistency_loss(F, 1.0, P, tangent_normalization=nan, **KW)", raises(ValueError, "tangent_normalization must be a number, got NaN")),
  Case("D.trajectory_consistency_loss(F, 1.0, P, tangent_normalization=True, **KW)", raises(TypeError, "tangent_normalization must be a real number, got a bool")),
  Case("D.trajectory_consistency_loss(lambda p, x, t, c: x[:, 0], 1.0, P, **KW)", raises(ValueError, r"student\(params, x, t, cond\) must return x's shape")),
  Case("D.trajectory_consistency_loss(F, 1.0, P, teacher=lambda x, t, c: x[:2], schedule=SCHED)", raises(ValueError, r"teacher\(x, t, cond\) must return x's shape")),
  Case("D.trajectory_consistency_loss(F, 1.0, P._replace(t=P.t[:2]), **KW)", raises(ValueError, r"pairs.t must have shape \(4,\) \(one time per row\), got \(2,\)")),
  Case("D.trajectory_consistency_loss(F, 1.0, P._replace(x_t=P.x_t.at[0, 0].set(nan)), **KW)", raises(ValueError, r"pairs.x_t must be finite")),
  Case("D.trajectory_consistency_loss(F, 1.0, P, variant='discrete', **KW)", returns(lambda v: float(v) >= 0, "the identity student: a finite discrete loss")),
  Case("jax.jit(lambda c: D.trajectory_consistency_loss(F, 1.0, P, tangent_normalization=c, **KW))(0.1)", returns(lambda v: np.isfinite(v), "a traced normalisation constant is accepted")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
