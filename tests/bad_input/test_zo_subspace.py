# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to ``optim.zeroth_order.zo_subspace_init`` / ``zo_subspace_step`` (ZOODiP):
bad sizes, steps and shares, keys, variants, states built for other parameters, objectives
that return something else than a floating scalar, non-finite parameters and values.
Concrete input raises naming the argument; a non-finite value of the objective (known only
inside the step) poisons the estimate with NaN and leaves the state unchanged.

Fixtures: ``X`` three zeros, ``S`` its state (history 4), ``F`` a quadratic.
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp
import numpy as np  # noqa: F401 - used by the reproducers

from optim.zeroth_order import ZOSubspaceState, zo_subspace_init, zo_subspace_step  # noqa: F401
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
X = jnp.zeros(3)
S = zo_subspace_init(X, history_size=4)
F = lambda p: jnp.sum((p - 1.0) ** 2)  # noqa: E731
NS = dict(globals())

CASES = [
  # --- init
  Case("zo_subspace_init(X, history_size=1)", raises(ValueError, r"history_size must lie in \[2, inf\), got 1")),
  Case("zo_subspace_init(X, history_size=2.5)", raises(ValueError, "history_size must be an integer")),
  Case("zo_subspace_init(X, history_size=True)", raises(TypeError, "history_size must be a real number, got a bool")),
  Case("zo_subspace_init(jnp.arange(3), history_size=4)", raises(TypeError, "params")),
  Case("zo_subspace_init({}, history_size=4)", raises(ValueError, "params must hold at least one array")),
  Case("zo_subspace_init(jnp.array([0.0, nan]), history_size=4)", raises(ValueError, r"params must be finite \(no NaN or inf\)")),
  Case("zo_subspace_init(X, history_size=4).history.shape", returns(lambda s: s == (4, 3), "the history is (history_size, number of parameters)")),
  # --- step hyperparameters
  Case("zo_subspace_step(F, X, S, key=0, num_queries=0)", raises(ValueError, r"num_queries must lie in \[1, inf\), got 0")),
  Case("zo_subspace_step(F, X, S, key=0, num_queries=1.5)", raises(ValueError, "num_queries must be an integer")),
  Case("jax.jit(lambda n: zo_subspace_step(F, X, S, key=0, num_queries=n))(2)", raises(TypeError, "num_queries must be a concrete Python number")),
  Case("zo_subspace_step(F, X, S, key=0, mu=0.0)", raises(ValueError, r"mu must lie in \(0, inf\), got 0.0")),
  Case("zo_subspace_step(F, X, S, key=0, mu=inf)", raises(ValueError, "mu must be finite")),
  Case("zo_subspace_step(F, X, S, key=0, mu=nan)", raises(ValueError, "mu must be a number, got NaN")),
  Case("zo_subspace_step(F, X, S, key=0, nu=1.0)", raises(ValueError, r"nu must lie in \[0, 1\), got 1.0")),
  Case("zo_subspace_step(F, X, S, key=0, nu=-0.1)", raises(ValueError, r"nu must lie in \[0, 1\)")),
  Case("zo_subspace_step(F, X, S, key=0, nu=0.0).num_evals", returns(lambda n: n == 3, "nu = 0 keeps every direction the history has (nothing removed)")),
  Case("zo_subspace_step(F, X, S, key=0, variant='pca')", raises(ValueError, "variant")),
  Case("jax.jit(lambda m: zo_subspace_step(F, X, S, key=0, mu=m).grads)(1e-3)", returns(lambda g: g.shape == (3,), "a traced mu (a schedule) is accepted")),
  # --- keys
  Case("zo_subspace_step(F, X, S, key='a')", raises(TypeError, "key must be an int seed or a JAX PRNG key")),
  Case("zo_subspace_step(F, X, S, key=2**40)", raises(ValueError, "key: an int seed must lie in")),
  Case("zo_subspace_step(F, X, S, key=jax.random.PRNGKey(0)).loss", returns(lambda v: np.isclose(v, 3.0), "a raw uint32 key is accepted")),
  # --- state
  Case("zo_subspace_step(F, X, None, key=0)", raises(TypeError, "state must be a ZOSubspaceState")),
  Case("zo_subspace_step(F, jnp.zeros(4), S, key=0)", raises(ValueError, r"state must be built for params with 4 numbers, got a history of shape \(4, 3\)")),
  # --- params
  Case("zo_subspace_step(F, jnp.array([0.0, inf, 0.0]), S, key=0)", raises(ValueError, r"params must be finite")),
  Case("zo_subspace_step(F, jnp.arange(3), S, key=0)", raises(TypeError, "params")),
  Case("zo_subspace_step(F, X.astype(jnp.complex64), S, key=0)", raises(TypeError, "params")),
  # --- the objective
  Case("zo_subspace_step(None, X, S, key=0)", raises(TypeError, r"fn must be callable")),
  Case("zo_subspace_step(lambda p: p, X, S, key=0)", raises(TypeError, r"fn\(params\) must return a real floating-point scalar loss, got shape \(3,\)")),
  Case("zo_subspace_step(lambda p: (jnp.sum(p), 0.0), X, S, key=0)", raises(TypeError, r"fn\(params\) must return")),
  Case("zo_subspace_step(lambda p: jnp.sum(p).astype(jnp.int32), X, S, key=0)", raises(TypeError, r"fn\(params\) must return a real floating-point scalar loss, got dtype int32")),
  Case("zo_subspace_step(lambda p: jnp.sum(p) + nan, X, S, key=0).grads", returns(lambda g: bool(jnp.all(jnp.isnan(g))), "a NaN loss poisons the estimate with NaN", nan_ok=True)),
  Case("int(zo_subspace_step(lambda p: jnp.sum(p) + inf, X, S, key=0).state.count)", returns(lambda c: c == 0, "a non-finite loss leaves the state unchanged")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
