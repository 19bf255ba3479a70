# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to ``optim.bilevel.borep_init`` / ``borep_step`` / ``borep``: non-callable
or non-scalar losses, losses without the key argument, integer, empty or non-finite
variables, mismatched states, step sizes and counts out of range, unknown variants, bad
keys; traced bad step sizes poison the step with NaN, a diverging run is returned as is.

Fixtures: ``F, G`` a quadratic bilevel pair with ``y*(x) = x`` and ``x* = 1``; ``X`` a
start; ``S`` a state at ``X``; ``K`` the step's keyword arguments.
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp
import numpy as np

from optim.bilevel import borep, borep_init, borep_step  # noqa: F401 - used by the reproducers
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
F = lambda x, y, key: 0.5 * jnp.sum((y - 1.0) ** 2)  # noqa: E731
G = lambda x, y, key: 0.5 * jnp.sum((y - x) ** 2)  # noqa: E731
X = jnp.array([0.0, 3.0])
S = borep_init(F, G, X, X)
K = dict(key=0, learning_rate=0.1, inner_learning_rate=0.5, z_learning_rate=0.5)
NS = dict(globals())

CASES = [
  # --- losses
  Case("borep_init(3.0, G, X, X)", raises(TypeError, "outer_loss must be a callable")),
  Case("borep_init(F, None, X, X)", raises(TypeError, "inner_loss must be a callable")),
  Case("borep_init(lambda x, y: jnp.sum(y), G, X, X)", raises(TypeError, r"outer_loss must be a function \(x, y, key\) -> scalar")),
  Case("borep_init(F, lambda x, y, key: y - x, X, X)", raises(TypeError, "inner_loss must return a real floating-point scalar")),
  Case("borep_step(F, lambda x, y, key: jnp.sum(y - x).astype(jnp.complex64), S, **K)", raises(TypeError, "inner_loss must return a real floating-point scalar")),
  # --- variables
  Case("borep_init(F, G, jnp.arange(2), X)", raises(TypeError, "x has dtype int32")),
  Case("borep_init(F, G, X, {})", raises(ValueError, "y must hold at least one array")),
  Case("borep_init(F, G, jnp.array([1.0, nan]), X)", raises(ValueError, r"borep_init: x must be finite \(no NaN or inf\)")),
  Case("borep_init(F, G, X, jnp.array([inf, 0.0]))", raises(ValueError, "y must be finite")),
  Case("borep_init(F, lambda x, y, key: jnp.sum((y - x['a']) ** 2), {'a': X}, X).x['a']", returns(lambda a: np.array_equal(a, X), "x and y are any pytrees of float arrays")),
  # --- refinement
  Case("borep_init(F, G, X, X, num_refine_steps=-1)", raises(ValueError, r"num_refine_steps must lie in \[0, inf\), got -1")),
  Case("borep_init(F, G, X, X, num_refine_steps=2.5)", raises(ValueError, "num_refine_steps must be an integer")),
  Case("borep_init(F, G, X, X, num_refine_steps=2)", raises(ValueError, r"inner_learning_rate must lie in \(0, inf\), got 0.0")),
  Case("borep_init(F, G, X, X, key='a')", raises(TypeError, "key must be an int seed or a JAX PRNG key")),
  Case("borep_init(F, G, X, jnp.zeros(2), inner_learning_rate=1.0, num_refine_steps=1).y", returns(lambda y: np.allclose(y, X), "one refinement step of size 1 on |y - x|^2/2 lands on y*(x) = x")),
  # --- state
  Case("borep_step(F, G, (X, X), **K)", raises(TypeError, "state must be a BOREPState")),
  Case("borep_step(F, G, S._replace(z=jnp.ones(3)), **K)", raises(ValueError, r"state.z has shape \(3,\) but state.y has \(2,\)")),
  Case("borep_step(F, G, S._replace(x=jnp.array([nan, 0.0])), **K)", raises(ValueError, "state.x must be finite")),
  Case("borep_step(F, G, S._replace(y=jnp.arange(2)), **K)", raises(TypeError, "state.y has dtype int32")),
  # --- step sizes and counts
  Case("borep_step(F, G, S, **{**K, 'learning_rate': 0.0})", raises(ValueError, r"borep_step: learning_rate must lie in \(0, inf\), got 0.0")),
  Case("borep_step(F, G, S, **{**K, 'learning_rate': nan})", raises(ValueError, "learning_rate must be a number, got NaN")),
  Case("borep_step(F, G, S, **{**K, 'learning_rate': lambda t: -1.0})", raises(ValueError, r"learning_rate\(count\) must be positive, got -1.0")),
  Case("borep_step(F, G, S, **{**K, 'inner_learning_rate': -1.0})", raises(ValueError, r"inner_learning_rate must lie in \(0, inf\)")),
  Case("borep_step(F, G, S, **{**K, 'z_learning_rate': True})", raises(TypeError, "z_learning_rate must be a real number, got a bool")),
  Case("borep_step(F, G, S, momentum=1.0, **K)", raises(ValueError, r"momentum must lie in \[0, 1\), got 1.0")),
  Case("borep_step(F, G, S, interval=0, **K)", raises(ValueError, r"interval must lie in \[1, inf\), got 0")),
  Case("borep_step(F, G, S, interval=1.5, **K)", raises(ValueError, "interval must be an integer")),
  Case("borep_step(F, G, S, num_inner_steps=0, **K)", raises(ValueError, r"num_inner_steps must lie in \[1, inf\)")),
  Case("borep_step(F, G, S, num_neumann_terms=0, variant='neumann', **K)", raises(ValueError, r"num_neumann_terms must lie in \[1, inf\)")),
  Case("borep_step(F, G, S, cg_tol=0.0, variant='cg', **K)", raises(ValueError, r"cg_tol must lie in \(0, inf\)")),
  Case("borep_step(F, G, S, variant='adam', **K)", raises(ValueError, "variant must be one of 'official', 'neumann', 'cg'; got 'adam'")),
  Case("borep_step(F, G, S, normalize=1, **K)", raises(TypeError, "normalize must be a bool")),
  Case("borep_step(F, G, S, **{**K, 'key': 2**40})", raises(ValueError, "key: an int seed must lie in")),
  Case("jax.jit(lambda lr: borep_step(F, G, S, **{**K, 'learning_rate': lr}).x)(-0.1)", returns(lambda x: bool(np.all(np.isnan(x))), "traced: a non-positive step size poisons the iterates with NaN", nan_ok=True)),
  Case("jax.jit(lambda b: borep_step(F, G, S, momentum=b, **K).x)(1.5)", returns(lambda x: bool(np.all(np.isnan(x))), "traced: momentum outside [0, 1) poisons the iterates with NaN", nan_ok=True)),
  Case("borep_step(F, G, S, variant='cg', **K).z", returns(lambda z: np.allclose(z, [-1.0, 2.0], atol=1e-5), "cg: z solves the lower Hessian system at y (y = x here, z = y - 1 after the update of y)")),
  # --- the solver
  Case("borep(F, G, X, X, max_iterations=0, **K)", raises(ValueError, r"max_iterations must lie in \[1, inf\)")),
  Case("borep(F, G, X, X, tol=-1.0, **K)", raises(ValueError, r"tol must lie in \[0, inf\)")),
  Case("borep(F, G, X, X, variant='x', **K)", raises(ValueError, "variant must be one of")),
  Case("borep(F, G, X, X, max_iterations=300, tol=0.0, **{**K, 'learning_rate': lambda t: 0.2 * 0.97**t}).x", returns(lambda x: np.allclose(x, 1.0, atol=1e-3), "x* = 1 (y*(x) = x, f = |y - 1|^2 / 2)")),
  Case("borep(lambda x, y, key: jnp.sum(y**4), G, 10.0 * X, 10.0 * X, normalize=False, max_iterations=50, **{**K, 'learning_rate': 1.0}).converged", returns(lambda c: not bool(c), "a diverging plain step is returned, not stopped: converged=False", nan_ok=True)),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
