"""Hostile inputs to the feature caches (jaxdiff.caching) and the ``cache`` seam of sample.

Each case is a one-line reproducer over the small fixtures below. Every ``sample`` case
fails before anything compiles (the seam's checks run before tracing).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxdiff
from jaxdiff import caching, correctors, from_v, solvers  # noqa: F401 - used by the reproducers
from jaxdiff import schedules as S
from jaxdiff.demo import DemoConfig  # noqa: F401 - used by the reproducers
from jaxdiff.models import DigitDenoiser
from jaxdiff.testing import GaussianMixture
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = math.nan, math.inf

sched = S.vp_cosine()
ts = S.timesteps(sched, 4)
gmm_den = GaussianMixture(np.stack([np.ones(64), -np.ones(64)]), 0.2).denoiser(sched)
dit = from_v(DigitDenoiser(dim=8, depth=1, num_heads=2, rngs=nnx.Rngs(0)), sched)
x = jnp.ones((2, 8, 8))
ddim = solvers.ddim()
on = lambda den, cache: jaxdiff.sample(den, ddim, x, ts, key=0, cond=jnp.array([0, 1]), cache=cache)

CASES = [
  # --- a denoiser that exposes nothing cacheable ---------------------------------------
  Case("on(gmm_den, caching.fora(2))", raises(TypeError, "exposes no cacheable features")),
  Case("on(lambda x, t, c: x, caching.taylorseer(2))", raises(TypeError, "cacheable")),
  Case("on(from_v(lambda x, t, c: x, sched), caching.fora(2))", raises(TypeError, "cacheable")),
  # --- not a rule ----------------------------------------------------------------------
  Case("on(dit, 2)", raises(TypeError, "cache must be a jaxdiff cache rule")),
  Case("on(dit, 'taylorseer')", raises(TypeError, "cache must be")),
  Case("on(dit, correctors.langevin())", raises(TypeError, "cache must be")),
  Case("on(dit, caching.fora)", raises(TypeError, "cache must be")),
  # --- rule hyperparameters ------------------------------------------------------------
  Case("caching.fora(0)", raises(ValueError, "interval")),
  Case("caching.fora(-1)", raises(ValueError, "interval")),
  Case("caching.fora(2.5)", raises(ValueError, "interval")),
  Case("caching.fora(True)", raises(TypeError, "interval")),
  Case("caching.fora(nan)", raises(ValueError, "interval")),
  Case("caching.taylorseer(0, 2)", raises(ValueError, "interval")),
  Case("caching.taylorseer(3, -1)", raises(ValueError, "order")),
  Case("caching.taylorseer(3, 1.5)", raises(ValueError, "order")),
  Case("caching.taylorseer(3, '2')", raises(TypeError, "order")),
  Case("caching.taylorseer(3, 1, variant='sigma')", raises(ValueError, "variant")),
  Case("caching.taylorseer(3, 0).order", returns(lambda v: v == 0, "order 0 is plain reuse")),
  # --- ERTACache -----------------------------------------------------------------------
  Case("caching.ERTACache((False, True), (0, 0), (1, 1))", raises(ValueError, "first step")),
  Case("caching.ERTACache((), (), ())", raises(ValueError, "non-empty")),
  Case("caching.ERTACache((True, False), (0,), (1, 1))", raises(ValueError, "gain")),
  Case("caching.ERTACache((True, False), (0, nan), (1, 1))", raises(ValueError, "gain")),
  Case("caching.ERTACache((True, False), (0, 0), (1, inf))", raises(ValueError, "phi")),
  Case("caching.ERTACache((True,), (0,), (1,), variant='x')", raises(ValueError, "variant")),
  Case(
    "on(dit, caching.ERTACache((True, False), (0, 0), (1, 1)))",
    raises(ValueError, "profiled for 2 steps"),
  ),
  Case(
    "caching.ertacache(dit, ddim, x, ts, key=0, threshold=-0.1)", raises(ValueError, "threshold")
  ),
  Case("caching.ertacache(gmm_den, ddim, x, ts, key=0)", raises(TypeError, "cacheable")),
  # --- the demo's feature-caching section ----------------------------------------------
  Case("DemoConfig(cache_interval=0)", raises(ValueError, "DemoConfig: cache_interval")),
  Case("DemoConfig(cache_order=-1)", raises(ValueError, "DemoConfig: cache_order")),
  Case("DemoConfig(cache_steps=-1)", raises(ValueError, "DemoConfig: cache_steps")),
  Case("DemoConfig(cache_steps=2.5)", raises(TypeError, "DemoConfig: cache_steps")),
]

NS = dict(globals())


def test_table_is_large_enough():
  assert len(CASES) >= 30


@params(CASES)
def test_case(case):
  run(case, NS)
