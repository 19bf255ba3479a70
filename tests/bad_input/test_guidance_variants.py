# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile ``variant=`` selectors of the guidance rules whose formulation is a documented
assumption (Adaptive Guidance, LinearAG, GFCG), and of the demo's guidance-ablation fields,
one line a case. Every bad value fails at construction, naming the argument."""

import jax.numpy as jnp

from jaxdiff import guidance  # noqa: F401 - used by the cases (NS)
from jaxdiff.demo import DemoConfig  # noqa: F401
from tests.bad_input.harness import Case, params, raises, returns, run

clf = lambda z: jnp.zeros((z.shape[0], 3))
coef, est = jnp.zeros((3, 3)), jnp.array([False, True, True])

CASES = [
  Case(
    "guidance.adaptive(3.0, 0.99, variant='cos')",
    raises(ValueError, "adaptive: variant must be one of 'eps', 'x0'"),
  ),
  Case("guidance.adaptive(3.0, 0.99, variant=None)", raises(ValueError, "adaptive: variant")),
  Case("guidance.adaptive(3.0, 0.99, variant='X0')", raises(ValueError, "adaptive: variant")),
  Case("guidance.make('adaptive', 3.0, variant='score')", raises(ValueError, "adaptive: variant")),
  Case(
    "guidance.adaptive(3.0, 0.99, variant='x0').init(jnp.zeros((2, 3)), None).done.shape",
    returns(lambda s: s == (2,)),
  ),
  Case(
    "guidance.linear_ag(3.0, coef, est, variant='v')",
    raises(ValueError, "linear_ag: variant must be one of 'x0', 'eps'"),
  ),
  Case("guidance.linear_ag(3.0, coef, est, variant=1)", raises(ValueError, "linear_ag: variant")),
  Case(
    "guidance.linear_ag(3.0, coef, est, variant='eps').init(jnp.zeros((2, 3)), None).prev_cond.shape",
    returns(lambda s: s == (2, 3)),
  ),
  Case(
    "guidance.gfcg(clf, 3, 1.0, variant='margin')",
    raises(ValueError, "gfcg: variant must be one of 'ratio', 'complement'"),
  ),
  Case("guidance.gfcg(clf, 3, 1.0, variant='')", raises(ValueError, "gfcg: variant")),
  Case(
    "DemoConfig(guidance_ablation=1)",
    raises(TypeError, "DemoConfig: guidance_ablation must be a bool"),
  ),
  Case("DemoConfig(ag_cfg_steps=3)", raises(TypeError, "DemoConfig: ag_cfg_steps must be a tuple")),
  Case("DemoConfig(ag_cfg_steps=(0,))", raises(ValueError, r"DemoConfig: ag_cfg_steps\[0\]")),
  Case(
    "DemoConfig(ag_cfg_steps=(2.5,))",
    raises(TypeError, r"DemoConfig: ag_cfg_steps\[0\] must be an int"),
  ),
  Case(
    "DemoConfig(ag_cfg_steps=()).ag_cfg_steps",
    returns(lambda s: s == (), "no coarser grid: only AG's rows"),
  ),
]

NS = dict(globals())


@params(CASES)
def test_case(case):
  run(case, NS)
