# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to ``optim.loops.harpg_step`` ((N)-HARPG, N-PG-IGT, normalized momentum),
``policy_gradient_init`` and ``hessian_correction``: non-callables, a missing
log-likelihood, bad states, step sizes and momentum weights, unknown variants, callables
that do not return scalars, integer parameters, mismatched tangents. Concrete input raises
naming the argument; a zero direction is a zero step, never NaN.

Fixtures: a two-armed bandit with a softmax policy ``TH``: ``S`` samples an arm, ``LP`` is
its log-likelihood, ``PHI`` the REINFORCE surrogate (reward 1 for arm 1), ``ST`` the start.
"""

import jax
import jax.numpy as jnp
import numpy as np

from optim.loops import PolicyGradientState, harpg_step, hessian_correction, policy_gradient_init  # noqa: F401 - used by the reproducers
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
TH = jnp.zeros(2)
S = lambda th, k: jax.random.categorical(k, th)  # noqa: E731
LP = lambda th, a: jax.nn.log_softmax(th)[a]  # noqa: E731
PHI = lambda th, a: (a == 1) * LP(th, a)  # noqa: E731
ST = policy_gradient_init(TH)
NS = dict(globals())

CASES = [
  # --- callables
  Case("harpg_step(3.0, S, ST, key=0, learning_rate=0.1, log_prob_fn=LP)", raises(TypeError, "surrogate_fn must be callable")),
  Case("harpg_step(PHI, None, ST, key=0, learning_rate=0.1, log_prob_fn=LP)", raises(TypeError, "sample_fn must be callable")),
  Case("harpg_step(PHI, S, ST, key=0, learning_rate=0.1)", raises(ValueError, "variant='harpg' needs log_prob_fn")),
  Case("harpg_step(PHI, S, ST, key=0, learning_rate=0.1, log_prob_fn=1.0)", raises(TypeError, "log_prob_fn must be callable")),
  Case("harpg_step(lambda th, a: th, S, ST, key=0, learning_rate=0.1, log_prob_fn=LP)", raises(TypeError, r"surrogate_fn\(params, trajectory\) must return a real floating-point scalar")),
  Case("harpg_step(PHI, S, ST, key=0, learning_rate=0.1, log_prob_fn=lambda th, a: th)", raises(TypeError, r"log_prob_fn\(params, trajectory\) must return a real floating-point scalar")),
  # --- state, params
  Case("harpg_step(PHI, S, (TH, TH, TH, 0), key=0, learning_rate=0.1, log_prob_fn=LP)", raises(TypeError, "state must be a PolicyGradientState")),
  Case("policy_gradient_init(jnp.arange(2))", raises(TypeError, "params must be floating point")),
  Case("policy_gradient_init({})", raises(ValueError, "params must hold at least one array")),
  Case("hessian_correction(PHI, LP, TH, 1, jnp.ones(3))", raises(ValueError, "tangent must have the shapes of params")),
  Case("hessian_correction(PHI, LP, TH, 1, (TH, TH))", raises(ValueError, "tangent must have the structure of params")),
  Case("hessian_correction(PHI, None, TH, 1, TH)", raises(TypeError, "log_prob_fn must be callable")),
  # --- step sizes, momentum, options
  Case("harpg_step(PHI, S, ST, key=0, learning_rate=-0.1, log_prob_fn=LP)", raises(ValueError, r"learning_rate must lie in \[0, inf\)")),
  Case("harpg_step(PHI, S, ST, key=0, learning_rate=nan, log_prob_fn=LP)", raises(ValueError, "learning_rate must be a number")),
  Case("harpg_step(PHI, S, ST, key=0, learning_rate=inf, log_prob_fn=LP)", raises(ValueError, "learning_rate must be finite")),
  Case("harpg_step(PHI, S, ST, key=0, learning_rate=0.1, log_prob_fn=LP, momentum=0.0)", raises(ValueError, r"momentum must lie in \(0, 1\]")),
  Case("harpg_step(PHI, S, ST, key=0, learning_rate=0.1, log_prob_fn=LP, momentum=1.5)", raises(ValueError, r"momentum must lie in \(0, 1\]")),
  Case("harpg_step(PHI, S, ST, key=0, learning_rate=0.1, log_prob_fn=LP, normalize=1)", raises(TypeError, "normalize must be a bool")),
  Case("harpg_step(PHI, S, ST, key=0, learning_rate=0.1, log_prob_fn=LP, variant='svrpg')", raises(ValueError, "variant must be one of")),
  # --- documented behaviour
  Case("harpg_step(lambda th, a: 0.0 * LP(th, a), S, ST, key=0, learning_rate=0.5, log_prob_fn=LP).params", returns(lambda p: np.array_equal(p, [0.0, 0.0]), "a zero direction is a zero normalized step, not NaN")),
  Case("harpg_step(PHI, S, ST, key=0, learning_rate=0.1, variant='igt').count", returns(lambda c: int(c) == 1, "IGT needs no log-likelihood; the count advances")),
  Case("harpg_step(PHI, S, ST, key=0, learning_rate=0.1, variant='momentum', momentum=1.0, normalize=False).params", returns(lambda p: np.allclose(p, 0.1 * jax.grad(PHI)(TH, S(TH, jax.random.split(jax.random.key(0), 3)[1]))), "momentum=1 without normalization is a plain REINFORCE step")),
  Case("jax.jit(lambda s: harpg_step(lambda th, a: nan * LP(th, a), S, s, key=0, learning_rate=0.1, log_prob_fn=LP))(ST).params", returns(lambda p: bool(jnp.all(jnp.isnan(p))), "a non-finite surrogate propagates into params, as an optax step", nan_ok=True)),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
