# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to FZooS and the FedZO-style baseline (``optim.zeroth_order``): client
pytrees with mismatched leading sizes, zero budgets (rounds, local steps, history, features,
directions, exploration), states built for other clients, non-finite points and values,
callables that return something else than a scalar, bad optimizers, keys and shardings.
Concrete input raises naming the argument; a non-finite value of ``f`` (known only inside
the traced round) makes the round's point NaN and stops the runner with ``converged=False``.

Fixtures: ``X`` two zeros, ``F`` heterogeneous quadratics ``f(x, i)``, ``S`` a FZooS state of
2 clients (history 12, 8 features, 2 initial queries), ``Z`` a FedZO state, ``OPT`` SGD.
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp
import numpy as np  # noqa: F401 - used by the reproducers
import optax

from optim.zeroth_order import (  # noqa: F401 - used by the reproducers
  fedzo_init,
  fedzo_minimize,
  fedzo_round,
  fzoos_init,
  fzoos_minimize,
  fzoos_round,
  gp_gradient,
  zo_gradient,
)
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
X = jnp.zeros(2)
F = lambda x, i: jnp.sum((x - i) ** 2)  # noqa: E731
G = lambda x: jnp.sum(x**2)  # noqa: E731
S = fzoos_init(F, X, 2, key=0, history_size=12, num_features=8, num_init=2)
Z = fedzo_init(X, 2, key=0)
OPT = optax.sgd(0.1)
SMALL = dict(num_local_steps=2, num_explore=1, num_explore_round=2)
NS = dict(globals())

CASES = [
  # --- clients: a count or a stacked pytree whose leaves share the leading size
  Case("fzoos_init(F, X, {'a': jnp.ones((3, 2)), 'b': jnp.ones((2, 2))}, key=0)", raises(ValueError, r"clients: every leaf must have the same leading \(client\) size, got sizes \[2, 3\]")),
  Case("fzoos_init(F, X, {'a': jnp.ones(())}, key=0)", raises(ValueError, "clients: every leaf must have a leading client axis")),
  Case("fzoos_init(F, X, {}, key=0)", raises(ValueError, "clients must be a number of clients or a pytree")),
  Case("fzoos_init(F, X, jnp.ones((0, 2)), key=0)", raises(ValueError, "clients must hold at least one client")),
  Case("fzoos_init(F, X, 0, key=0)", raises(ValueError, r"clients must lie in \[1, inf\), got 0")),
  Case("fedzo_init(X, True, key=0)", raises(TypeError, "clients must be a number of clients or a stacked pytree, got a bool")),
  Case("fzoos_round(F, S, 3, optimizer=OPT)", raises(ValueError, "state has 2 clients but clients has 3")),
  Case("fzoos_round(F, Z, 2, optimizer=OPT)", raises(TypeError, "state must be a FZooSState, got FedZOState")),
  Case("fedzo_round(F, S, 2, optimizer=OPT)", raises(TypeError, "state must be a FedZOState, got FZooSState")),
  # --- zero budgets
  Case("fzoos_round(F, S, 2, optimizer=OPT, num_local_steps=0)", raises(ValueError, r"num_local_steps must lie in \[1, inf\), got 0")),
  Case("fedzo_round(F, Z, 2, optimizer=OPT, num_local_steps=0)", raises(ValueError, r"num_local_steps must lie in \[1, inf\), got 0")),
  Case("fedzo_round(F, Z, 2, optimizer=OPT, num_directions=0)", raises(ValueError, r"num_directions must lie in \[1, inf\), got 0")),
  Case("zo_gradient(G, X, key=0, num_directions=0)", raises(ValueError, r"num_directions must lie in \[1, inf\), got 0")),
  Case("fzoos_init(F, X, 2, key=0, history_size=0)", raises(ValueError, r"history_size must lie in \[1, inf\), got 0")),
  Case("fzoos_init(F, X, 2, key=0, num_features=0)", raises(ValueError, r"num_features must lie in \[1, inf\), got 0")),
  Case("fzoos_init(F, X, 2, key=0, history_size=4, num_init=5)", raises(ValueError, "history_size must be at least num_init \\+ 1 = 6, got 4")),
  Case("fzoos_round(F, S, 2, optimizer=OPT, num_explore_round=20)", raises(ValueError, r"history_size \(12\) must be at least max\(num_explore, num_explore_round \+ 1\) = 21")),
  Case("fzoos_round(F, S, 2, optimizer=OPT, num_explore=-1)", raises(ValueError, r"num_explore must lie in \[0, inf\), got -1")),
  Case("fzoos_round(F, S, 2, optimizer=OPT, num_local_steps=1, num_explore=0, num_explore_round=0).num_queries.tolist()", returns(lambda q: q == [5, 5], "no exploration is valid: one query per local step and one at the new global point")),
  Case("fzoos_init(F, X, 2, key=0, num_init=0, num_features=4).num_queries.tolist()", returns(lambda q: q == [1, 1], "no initial exploration is valid: x0 alone is queried")),
  Case("fzoos_minimize(F, X, 2, optimizer=OPT, key=0, max_iterations=0, history_size=12, num_features=8, num_init=2, **SMALL).n_iters", returns(lambda n: int(n) == 0, "zero rounds return x0 untouched")),
  Case("fedzo_minimize(F, X, 2, optimizer=OPT, key=0, max_iterations=-1)", raises(ValueError, r"max_iterations must lie in \[0, inf\), got -1")),
  Case("fedzo_minimize(F, X, 2, optimizer=OPT, key=0, tol=-1.0)", raises(ValueError, r"tol must lie in \[0, inf\), got -1.0")),
  Case("fzoos_round(F, S, 2, optimizer=OPT, num_local_steps=2.5)", raises(ValueError, "num_local_steps must be an integer")),
  # --- hyperparameters
  Case("fzoos_round(F, S, 2, optimizer=OPT, lengthscale=0.0)", raises(ValueError, r"lengthscale must lie in \(0, inf\), got 0.0")),
  Case("fzoos_round(F, S, 2, optimizer=OPT, noise=0.0)", raises(ValueError, r"noise must lie in \(0, inf\), got 0.0")),
  Case("fzoos_round(F, S, 2, optimizer=OPT, correction=-1.0)", raises(ValueError, r"correction must lie in \[0, inf\), got -1.0")),
  Case("fzoos_round(F, S, 2, optimizer=OPT, radius=nan)", raises(ValueError, "radius must be a number, got NaN")),
  Case("zo_gradient(G, X, key=0, smoothing=0.0)", raises(ValueError, r"smoothing must lie in \(0, inf\), got 0.0")),
  Case("zo_gradient(G, X, key=0, probe='rademacher')", raises(ValueError, "probe must be one of 'gaussian', 'sphere'; got 'rademacher'")),
  Case("zo_gradient(G, X, key=0, variant='backward')", raises(ValueError, "variant must be one of 'forward', 'central'; got 'backward'")),
  Case("fzoos_round(F, S, 2, optimizer=0.1)", raises(TypeError, "optimizer must be an optax.GradientTransformation")),
  Case("fedzo_init(X, 2, key='a')", raises(TypeError, "key must be an int seed or a JAX PRNG key")),
  Case("fzoos_round(F, S, 2, optimizer=OPT, client_sharding='clients')", raises(TypeError, "client_sharding must be a jax.sharding.Sharding")),
  Case("fedzo_minimize(F, X, 2, optimizer=OPT, key=0, objective=3)", raises(TypeError, "objective must be callable")),
  # --- points and values
  Case("fzoos_init(F, jnp.array([nan, 0.0]), 2, key=0)", raises(ValueError, r"x0 must be finite \(no NaN or inf\)")),
  Case("fedzo_init(jnp.array([0.0, inf]), 2, key=0)", raises(ValueError, "x0 must be finite")),
  Case("zo_gradient(G, jnp.array([inf, 0.0]), key=0)", raises(ValueError, "x must be finite")),
  Case("fzoos_init(F, jnp.arange(2), 2, key=0)", raises(TypeError, "x0 must hold real floating-point arrays, got int")),
  Case("fzoos_init(F, {}, 2, key=0)", raises(ValueError, "x0 must hold at least one array")),
  Case("fzoos_init(lambda x, i: x, X, 2, key=0)", raises(TypeError, r"fzoos_init: f\(x, client\) must return a real floating-point scalar value, got shape \(2,\)")),
  Case("fedzo_round(lambda x, i: (x > 0).all(), Z, 2, optimizer=OPT)", raises(TypeError, r"f\(x, client\) must return a real floating-point scalar value, got dtype bool")),
  Case("zo_gradient(lambda x: x, X, key=0)", raises(TypeError, r"f\(x\) must return a real floating-point scalar value, got shape \(2,\)")),
  Case("fzoos_init(3, X, 2, key=0)", raises(TypeError, "f must be callable")),
  Case("fzoos_round(lambda x, i: jnp.where(i == 1, nan, F(x, i)), S, 2, optimizer=OPT, **SMALL).x", returns(lambda x: bool(jnp.all(jnp.isnan(x))), "a non-finite value of f (traced) makes the round's point NaN", nan_ok=True)),
  Case("fedzo_minimize(lambda x, i: F(x, i) + inf, X, 2, optimizer=OPT, key=0, max_iterations=3, num_local_steps=1, num_directions=2)[1:3]", returns(lambda r: not bool(r[0]) and int(r[1]) == 1, "a non-finite objective stops the runner after that round, not converged", nan_ok=True)),
  Case("jax.jit(lambda x: fedzo_round(F, fedzo_init(x, 2, key=0), 2, optimizer=OPT, num_local_steps=1).x)(X)", returns(lambda x: x.shape == (2,), "a traced x0 is not checked for finiteness (it cannot be) and works")),
  # --- gp_gradient
  Case("gp_gradient(X, jnp.ones((3, 3)), jnp.ones(3))", raises(ValueError, r"xs must have shape \(n, 2\) with n >= 1 and ys shape \(n,\), got xs \(3, 3\) and ys \(3,\)")),
  Case("gp_gradient(X, jnp.ones((0, 2)), jnp.ones(0))", raises(ValueError, "xs must have shape")),
  Case("gp_gradient(X, jnp.ones((3, 2)), jnp.array([1.0, nan, 0.0]))", raises(ValueError, r"ys must be finite \(no NaN or inf\)")),
  Case("gp_gradient(X, jnp.ones((3, 2), int), jnp.ones(3))", raises(TypeError, "xs must be a real floating-point array, got int")),
  Case("gp_gradient(X, jnp.ones(3), jnp.ones(3))", raises(ValueError, r"xs must have 2 dimension\(s\), got shape \(3,\)")),
  Case("gp_gradient(X, jnp.ones((3, 2)), jnp.ones(3), lengthscale=-1.0)", raises(ValueError, r"lengthscale must lie in \(0, inf\)")),
  Case("gp_gradient(X, jnp.ones((1, 2)), jnp.ones(1))", returns(lambda g: bool(jnp.all(g == 0)), "one query (constant values) gives a zero gradient")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
