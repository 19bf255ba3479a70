"""Hostile inputs to the USF solver and the S³ search.

Each case is a one-line reproducer over the small fixtures below; nothing here compiles a
sampling loop (the grid checks run before it) and the S³ cases fail before any fitness
evaluation, except two one-evaluation searches.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

import jaxdiff  # noqa: F401 - used by the reproducers
from jaxdiff import schedules as S
from jaxdiff import search, solvers  # noqa: F401 - used by the reproducers
from jaxdiff._blocks import run_blocks
from jaxdiff.solvers import StepChoice  # noqa: F401 - used by the reproducers
from jaxdiff.testing import GaussianMixture
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = math.nan, math.inf

gmm = GaussianMixture(np.stack([np.ones(4), -np.ones(4)]), 0.2)
sched = S.vp_linear()
ts = S.timesteps(sched, 3)
x = jnp.ones((2, 4))
den = gmm.denoiser(sched)
three = solvers.usf_steps("ddim", 3)
flow_grid = S.timesteps(S.flow(), 3, t_start=1.0)
s3 = lambda fit=lambda s: s.t[1], **kw: search.s3_search(
  fit, 1.0, 0.0, 3, key=0, **{"budget": 1, "rounds": 1, "candidates": 4, **kw}
)
one = search.SolverSchedule(three, np.array([1.0, 0.5, 0.2, 0.0]))


class Toy:
  """The encode/blocks/readout protocol with two blocks, no weights."""

  blocks = (lambda h, c, p: h + 1.0, lambda h, c, p: 2.0 * h)
  encode = staticmethod(lambda x, t, cond: (x, None, None))
  readout = staticmethod(lambda h, c, aux, x: h)

  def __call__(self, x, t, cond=None, *, perturb=None):
    return run_blocks(self, x, t, cond, perturb=perturb)


toy, m32, t3 = Toy(), np.ones((3, 2), bool), np.array([1.0, 0.5, 0.2, 0.0])
skips = lambda fit=lambda s: 0.0, **kw: search.evolve_skips(
  fit,
  1.0,
  0.0,
  3,
  2,
  key=0,
  **{"block_budget": 4, "population": 2, "generations": 1, "top_k": 1, **kw},
)
sk = search.SkipSchedule(t3, m32)

CASES = [
  # --- the USF solver ------------------------------------------------------------------
  Case("solvers.usf([])", raises(ValueError, "at least one StepChoice")),
  Case("solvers.usf('x0')", raises(TypeError, "steps must be a sequence")),
  Case("solvers.usf([StepChoice(2)])", raises(ValueError, r"steps\[0\].order = 2")),
  Case("solvers.usf([StepChoice(4)] * 5)", raises(ValueError, r"steps\[0\].order")),
  Case("solvers.usf([StepChoice(0)])", raises(ValueError, r"steps\[0\].order")),
  Case("solvers.usf([StepChoice(1.5)])", raises(ValueError, r"steps\[0\].order")),
  Case("solvers.usf([StepChoice(1, 'v')])", raises(ValueError, r"steps\[0\].prediction")),
  Case("solvers.usf([StepChoice(1, 'x0', 'euler')])", raises(ValueError, "derivative")),
  Case("solvers.usf([StepChoice(1, corrector=1)])", raises(TypeError, "corrector must be a bool")),
  Case("solvers.usf([StepChoice(1, corrector=True)])", raises(ValueError, "last step")),
  Case("solvers.usf([dict(order=1, bad=2)])", raises(TypeError, "bad")),
  Case("solvers.usf(three, all_branches='yes')", raises(TypeError, "all_branches")),
  Case(
    "jaxdiff.sample(den, solvers.usf(three), x, S.timesteps(sched, 4), key=0)",
    raises(ValueError, "3 steps but the grid has 4"),
  ),
  Case(
    "solvers.usf([StepChoice(1, 'eps')] * 3).check_grid(flow_grid)",
    raises(ValueError, "alpha = 0"),
  ),
  Case(
    "solvers.usf([StepChoice(1, 'x0')] * 3).check_grid(flow_grid)",
    returns(lambda r: r is None, "the data prediction runs from alpha = 0"),
  ),
  Case("solvers.usf_steps('heun', 3)", raises(ValueError, "name must be one of")),
  Case("solvers.usf_steps('ddim', 0)", raises(ValueError, "num_steps")),
  # --- S³ ------------------------------------------------------------------------------
  Case("s3(budget=0)", raises(ValueError, "budget must be >= 1")),
  Case("s3(budget=-1)", raises(ValueError, "budget")),
  Case("s3(budget=2.5)", raises(ValueError, "budget")),
  Case("s3(rounds=0)", raises(ValueError, "rounds")),
  Case("s3(candidates=0)", raises(ValueError, "candidates")),
  Case("s3(orders=())", raises(ValueError, "orders must hold at least one choice")),
  Case("s3(predictions=())", raises(ValueError, "predictions must hold at least one")),
  Case("s3(derivatives=[])", raises(ValueError, "derivatives must hold at least one")),
  Case("s3(correctors=())", raises(ValueError, "correctors must hold at least one")),
  Case("s3(orders=(4,))", raises(ValueError, "orders")),
  Case("s3(predictions=('v',))", raises(ValueError, "predictions")),
  Case("s3(correctors=(1,))", raises(TypeError, "correctors")),
  Case("s3(resolution=3)", raises(ValueError, "nfe = 3 steps need distinct times")),
  Case(
    "search.s3_search(lambda s: 0.0, 1.0, 0.0, 0, key=0)",
    raises(ValueError, "nfe"),
  ),
  Case(
    "search.s3_search(lambda s: 0.0, 0.0, 1.0, 3, key=0)",
    raises(ValueError, "t_start must exceed t_end"),
  ),
  Case("s3(fit=3)", raises(TypeError, "fitness")),
  Case("s3(key='k')", raises(TypeError, "key")),
  Case("s3(initial=[one._replace(steps=three[:2])])", raises(ValueError, "nfe = 3 steps")),
  Case(
    "s3(initial=[one._replace(steps=(StepChoice(2),) + three[1:])])",
    raises(ValueError, r"steps\[0\].order"),
  ),
  Case(
    "s3().evaluations",
    returns(lambda n: n == 1, "budget = 1 evaluates the first seed only"),
  ),
  Case(
    "s3(fit=lambda s: nan).fitness",
    returns(lambda v: v == inf, "a non-finite fitness ranks last (inf)"),
  ),
  Case(
    'search.SolverSchedule.from_json(\'{"steps": [], "t": [1.0]}\')',
    raises(ValueError, "at least one StepChoice"),
  ),
  Case(
    "search.SolverSchedule.from_json(one.to_json().replace('0.2', '0.2, 0.1'))",
    raises(ValueError, "t must have 4 times"),
  ),
  # --- AutoDiffusion's block skipping ----------------------------------------------------
  Case("search.skip_blocks(den, m32, t3)", raises(TypeError, "encode.*blocks.*readout")),
  Case(
    "search.skip_blocks(jaxdiff.from_v(toy, sched), m32, t3)",
    raises(TypeError, "skip_blocks: net is a wrapper.*pass the network itself"),
  ),
  Case(
    "search.skip_blocks(toy, np.ones((3, 3), bool), t3)", raises(ValueError, r"\(num_steps, 2\)")
  ),
  Case("search.skip_blocks(toy, np.ones(3, bool), t3)", raises(ValueError, "mask must have shape")),
  Case("search.skip_blocks(toy, np.ones((3, 2)), t3)", raises(TypeError, "mask must be a bool")),
  Case("search.skip_blocks(toy, m32, t3[:3])", raises(ValueError, "4 grid times of 3 mask rows")),
  Case("search.skip_blocks(toy, m32, t3[::-1])", raises(ValueError, "strictly decreasing")),
  Case("search.skip_blocks(toy, m32, [1.0, nan, 0.2, 0.0])", raises(ValueError, "finite")),
  Case("search.skip_blocks(toy, m32, t3, variant='drop')", raises(ValueError, "variant")),
  Case("skips(block_budget=0)", raises(ValueError, "block_budget must be >= 1 block")),
  Case("skips(generations=0)", raises(ValueError, "search budget must be positive")),
  Case(
    "search.evolve_skips(len, 1.0, 0.0, 3, 0, block_budget=4, key=0)", raises(ValueError, "depth")
  ),
  Case("skips(fit=3)", raises(TypeError, "fitness")),
  Case("skips(initial=[sk])", raises(ValueError, "within the budget of 4 blocks")),
  Case("skips(initial=[sk._replace(mask=m32[:2], t=t3[:3])])", raises(ValueError, "3 steps")),
  Case("skips(fit=lambda s: nan)", raises(ValueError, "not finite")),
  Case(
    "skips(block_budget=99).schedule.blocks",
    returns(lambda n: n == 6, "a budget above N K skips nothing"),
  ),
  Case(
    "search.SkipSchedule.from_json(sk.to_json().replace('1]', '2]'))",
    raises(ValueError, "0 or 1"),
  ),
  Case(
    "search.SkipSchedule.from_json(sk.to_json().replace('0.2, ', ''))",
    raises(ValueError, "4 grid times of 3 mask rows"),
  ),
]

NS = dict(globals())


def test_table_is_large_enough():
  assert len(CASES) >= 35


@params(CASES)
def test_case(case):
  run(case, NS)
