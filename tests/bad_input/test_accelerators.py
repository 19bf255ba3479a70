"""Hostile inputs to the sampling accelerators: correctors, the time-shift rule, the search.

Each case is a one-line reproducer over the small fixtures below (a 16-D mixture, the
linear VP schedule, a 4-step grid, a batch of 4). Nothing here compiles a sampling loop
except the two ``Returns`` cases of ``sample``, which share one compilation.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

import jaxdiff
from jaxdiff import correctors, search, solvers  # noqa: F401 - used by the reproducers
from jaxdiff import schedules as S
from jaxdiff.testing import GaussianMixture
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = math.nan, math.inf

gmm = GaussianMixture(np.stack([np.ones(16), -np.ones(16)]), 0.2)
sched = S.vp_linear()
ts = S.timesteps(sched, 4)
x = jnp.ones((4, 16))
den = gmm.denoiser(sched)
ddim = solvers.ddim()
run_sample = lambda **kw: jaxdiff.sample(den, ddim, x, ts, key=0, **kw)
evolve = lambda fit=lambda t: t[1], **kw: search.evolve_timesteps(
  fit, 1.0, 0.0, 3, key=0, **{"population": 4, "generations": 1, "top_k": 2, **kw}
)

CASES = [
  # --- correctors ----------------------------------------------------------------------
  Case("correctors.langevin(0.0)", raises(ValueError, r"snr must lie in \(0")),
  Case("correctors.langevin(-1.0)", raises(ValueError, "snr")),
  Case("correctors.langevin(nan)", raises(ValueError, "snr")),
  Case("correctors.langevin(True)", raises(TypeError, "snr")),
  Case("correctors.langevin(0.1, steps=0)", raises(ValueError, "steps")),
  Case("correctors.langevin(0.1, steps=1.5)", raises(ValueError, "steps")),
  Case("correctors.lml(0.0)", raises(ValueError, "lamb")),
  Case("correctors.lml(-1.0)", raises(ValueError, "lamb")),
  Case("correctors.lml(nan)", raises(ValueError, "lamb")),
  Case("correctors.lml('big')", raises(TypeError, "lamb")),
  Case("correctors.lml(1.0, kappa=1.0)", raises(ValueError, "kappa")),
  Case("correctors.lml(1.0, kappa=-0.1)", raises(ValueError, "kappa")),
  Case("correctors.lml(1.0, variant='newton')", raises(ValueError, "variant")),
  Case(
    "correctors.lml(inf).lamb",
    returns(lambda v: v == inf, "lamb = inf is the undamped (plain Langevin) corrector"),
  ),
  Case("run_sample(corrector=3)", raises(TypeError, "corrector")),
  Case("run_sample(corrector=ddim)", raises(TypeError, "corrector")),
  # --- time shift ----------------------------------------------------------------------
  Case("jaxdiff.time_shift(sched, 2000, 0.3)", raises(ValueError, "window must be at most")),
  Case("jaxdiff.time_shift(sched, -1, 0.3)", raises(ValueError, "window")),
  Case("jaxdiff.time_shift(sched, 1.5, 0.3)", raises(ValueError, "window")),
  Case("jaxdiff.time_shift(sched, 10, nan)", raises(ValueError, "cutoff")),
  Case("jaxdiff.time_shift(sched, 10, 0.3, resolution=0)", raises(ValueError, "resolution")),
  Case("jaxdiff.time_shift(sched, 10, 0.3, data_var=-1.0)", raises(ValueError, "data_var")),
  Case("jaxdiff.time_shift(None, 10, 0.3)", raises(TypeError, "schedule")),
  Case(
    "run_sample(time_shift=jaxdiff.time_shift(sched, 900, 0.3, resolution=200))",
    raises(ValueError, "larger than the grid"),
  ),
  Case("run_sample(time_shift=3)", raises(TypeError, "time_shift")),
  Case("run_sample(time_shift=correctors.langevin())", raises(TypeError, "time_shift")),
  Case(
    "run_sample(time_shift=jaxdiff.time_shift(sched, 0, 0.3)).x",
    returns(lambda r: r.shape == (4, 16), "window = 0 is the base sampler"),
  ),
  # --- search --------------------------------------------------------------------------
  Case("evolve(population=0)", raises(ValueError, "budget must be positive")),
  Case("evolve(generations=0)", raises(ValueError, "budget must be positive")),
  Case("evolve(population=-3)", raises(ValueError, "population")),
  Case("evolve(top_k=4)", raises(ValueError, "top_k")),
  Case("evolve(mutation_prob=0.0)", raises(ValueError, "mutation_prob")),
  Case("evolve(resolution=3)", raises(ValueError, "resolution must exceed")),
  Case("evolve(fit=3)", raises(TypeError, "fitness")),
  Case("evolve(fit=lambda t: nan)", raises(ValueError, "uniform grid is not finite")),
  Case(
    "search.evolve_timesteps(lambda t: t[1], 0.0, 1.0, 3, key=0)",
    raises(ValueError, "t_start must exceed t_end"),
  ),
  Case("evolve(key='k')", raises(TypeError, "key")),
  Case(
    "evolve(fit=lambda t: jnp.where(t[1] > 0.7, nan, t[1])).fitness",
    returns(lambda v: v <= 0.7, "a non-finite fitness ranks last (inf), never wins"),
  ),
]

NS = dict(globals())


def test_table_is_large_enough():
  assert len(CASES) >= 34


@params(CASES)
def test_case(case):
  run(case, NS)
