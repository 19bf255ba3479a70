# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to ``jaxdiff.finetune.pso_loss``: unknown variants, a temperature out of
range, non-floating, non-finite or mismatched samples, empty or noise-free times for the
``"eps"`` variant, bad keys and models. Concrete input raises naming the argument; traced
noise-free times make the loss NaN (the documented poison).

Fixtures: ``M`` a model (the exact denoiser of N(mu, 1) under the flow schedule), ``A``
and ``B`` four 1-D targets and references, ``TS`` two sampling times, ``KW`` the
schedule, times and key.
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp
import numpy as np  # noqa: F401 - used by the reproducers

from jaxdiff import finetune as FT  # noqa: F401 - used by the reproducers
from jaxdiff import schedules
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
SCHED = schedules.flow()


def M(mu, x, t, cond):
  a, s = SCHED.alpha(t)[:, None], SCHED.sigma(t)[:, None]
  return mu + a / (a**2 + s**2) * (x - a * mu)


A, B = jnp.full((4, 1), 1.0), jnp.full((4, 1), -1.0)
TS = jnp.array([0.5, 0.8])
KW = dict(schedule=SCHED, timesteps=TS, key=0)
NS = dict(globals())

CASES = [
  Case("FT.pso_loss(M, 0.0, 0.0, A, B, variant='v', **KW)", raises(ValueError, "variant must be one of")),
  Case("FT.pso_loss(M, 0.0, 0.0, A, B, beta=0.0, **KW)", raises(ValueError, r"beta must lie in \(0, inf\), got 0.0")),
  Case("FT.pso_loss(M, 0.0, 0.0, A, B, beta=-1.0, **KW)", raises(ValueError, r"beta must lie in \(0, inf\)")),
  Case("FT.pso_loss(M, 0.0, 0.0, A, B, beta=nan, **KW)", raises(ValueError, "beta must be a number, got NaN")),
  Case("FT.pso_loss(M, 0.0, 0.0, A, B, beta=True, **KW)", raises(TypeError, "beta must be a real number, got a bool")),
  Case("FT.pso_loss(M, 0.0, 0.0, jnp.ones((4, 1), int), B, **KW)", raises(TypeError, "target must be a floating array, got dtype int")),
  Case("FT.pso_loss(M, 0.0, 0.0, A, B > 0, **KW)", raises(TypeError, "reference must be a floating array, got dtype bool")),
  Case("FT.pso_loss(M, 0.0, 0.0, jnp.ones(4), B, **KW)", raises(ValueError, r"target must have shape \(B, ...\) with B >= 1, got \(4,\)")),
  Case("FT.pso_loss(M, 0.0, 0.0, A, B[:3], **KW)", raises(ValueError, r"reference must have target's shape \(4, 1\) \(one reference per target\), got \(3, 1\)")),
  Case("FT.pso_loss(M, 0.0, 0.0, A.at[2, 0].set(nan), B, **KW)", raises(ValueError, r"target must be finite \(no NaN or inf\), got nan at index \(2, 0\)")),
  Case("FT.pso_loss(M, 0.0, 0.0, A, B.at[0, 0].set(inf), **KW)", raises(ValueError, "reference must be finite")),
  Case("FT.pso_loss(M, 0.0, 0.0, A, B, schedule=SCHED, timesteps=jnp.zeros(0), key=0)", raises(ValueError, r"timesteps must have shape \(T,\) with T >= 1, got \(0,\)")),
  Case("FT.pso_loss(M, 0.0, 0.0, A, B, schedule=SCHED, timesteps=jnp.ones((2, 2)), key=0)", raises(ValueError, r"timesteps must have shape \(T,\)")),
  Case("FT.pso_loss(M, 0.0, 0.0, A, B, schedule=SCHED, timesteps=jnp.array([0.5, nan]), key=0)", raises(ValueError, "timesteps must be finite")),
  Case("FT.pso_loss(M, 0.0, 0.0, A, B, schedule=SCHED, timesteps=jnp.array([0.5, 0.0]), key=0, variant='eps')", raises(ValueError, r"timesteps must have sigma\(t\) > 0 for variant 'eps'.*got t = 0.0")),
  Case("FT.pso_loss(M, 0.0, 0.0, A, B, schedule=SCHED, timesteps=jnp.array([0.0]), key=0)", returns(lambda v: np.isfinite(v), "x0 errors are defined at sigma = 0 (the data itself)")),
  Case("jax.jit(lambda ts: FT.pso_loss(M, 0.0, 0.0, A, B, schedule=SCHED, timesteps=ts, key=0, variant='eps'))(jnp.array([0.0]))", returns(lambda v: bool(np.isnan(v)), "traced sigma = 0 times with 'eps': the loss is NaN", nan_ok=True)),
  Case("FT.pso_loss(lambda p, x, t, c: x[:, 0], 0.0, 0.0, A, B, **KW)", raises(ValueError, r"model\(params, x, t, cond\) must return x's shape")),
  Case("FT.pso_loss(M, 0.0, 0.0, A, B, schedule=SCHED, timesteps=TS, key='k')", raises(TypeError, "key must be an int seed or a JAX PRNG key")),
  Case("FT.pso_loss(M, 0.0, 0.0, A, A, **KW)", returns(lambda v: np.isclose(v, np.log(2.0)), "target == reference: zero margin, loss log 2")),
  Case("jax.jit(lambda b: FT.pso_loss(M, 0.5, 0.0, A, B, beta=b, **KW))(2.0)", returns(lambda v: np.isfinite(v), "a traced beta is accepted (not checked)")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
