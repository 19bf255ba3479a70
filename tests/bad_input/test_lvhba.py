# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to ``optim.bilevel.lvhba_init`` / ``lvhba_step`` / ``lvhba``: losses that
are not callables or not scalars, constraints that are not a 1-d float vector (a scalar, a
matrix, integers, a pytree), projections that return another shape, structure or dtype,
integer, empty or non-finite variables, mismatched states and multipliers, step sizes and
counts out of range; traced bad step sizes poison the step with NaN.

Fixtures: the toy example of the paper at n = 2: ``F, f`` the losses, ``g`` its one
coupled constraint, ``P`` the projection onto C; ``X, Y`` a start; ``S`` a state there.
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp
import numpy as np

from optim.bilevel import lvhba, lvhba_init, lvhba_step  # noqa: F401 - used by the reproducers
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
F = lambda x, y: 0.5 * jnp.sum((x - y[2:]) ** 2) + 0.5 * jnp.sum((y[:2] - 1.0) ** 2)  # noqa: E731
f = lambda x, y: 0.5 * jnp.sum(y[:2] ** 2) - x @ y[:2] + jnp.sum(y[2:])  # noqa: E731
g = lambda x, y: jnp.atleast_1d(-(jnp.sum(x) + jnp.sum(y)))  # noqa: E731


def P(x, y):  # the projection onto C = {1^T x + 1^T y >= 0}
  shift = jnp.minimum(x.sum() + y.sum(), 0.0) / 6
  return x - shift, y - shift


X, Y = jnp.zeros(2), jnp.zeros(4)
S = lvhba_init(X, Y, g)
NS = dict(globals())

CASES = [
  # --- losses
  Case("lvhba_step(S, 3.0, f, g)", raises(TypeError, "outer_loss must be a callable")),
  Case("lvhba_step(S, F, None, g)", raises(TypeError, "inner_loss must be a callable")),
  Case("lvhba_step(S, lambda x, y: y, f, g)", raises(TypeError, "outer_loss must return a real floating-point scalar")),
  Case("lvhba(F, lambda x: x.sum(), g, X, Y)", raises(TypeError, r"inner_loss must be a function \(x, y\) -> scalar")),
  # --- the constraint: a 1-d float vector g(x, y) <= 0
  Case("lvhba_init(X, Y, None)", raises(TypeError, "lvhba_init: constraint must be a callable")),
  Case("lvhba_init(X, Y, lambda x, y: -(x.sum() + y.sum()))", raises(ValueError, r"constraint\(x, y\) must return a 1-d vector .*got shape \(\)")),
  Case("lvhba_init(X, Y, lambda x, y: jnp.outer(x, y))", raises(ValueError, r"constraint\(x, y\) must return a 1-d vector .*got shape \(2, 4\)")),
  Case("lvhba_init(X, Y, lambda x, y: jnp.array([1, 2]))", raises(TypeError, r"constraint\(x, y\) must return a real floating-point vector, got dtype int32")),
  Case("lvhba_init(X, Y, lambda x, y: (g(x, y), g(x, y)))", raises(TypeError, r"constraint\(x, y\) must return one 1-d float vector")),
  Case("lvhba_init(X, Y, lambda x, y: g(x, y).astype(jnp.complex64))", raises(TypeError, "real floating-point vector, got dtype complex64")),
  Case("lvhba_step(S, F, f, lambda x, y: jnp.concatenate([g(x, y), g(x, y)]))", raises(ValueError, r"constraint\(x, y\) returns 2 values but the state's multiplier has shape \(1,\)")),
  Case("lvhba_init(X, Y, lambda x, y: jnp.zeros(0)).lam", returns(lambda a: a.shape == (0,), "no constraint (p = 0) is allowed: the Moreau-envelope method")),
  # --- projections
  Case("lvhba_step(S, F, f, g, project_x=3)", raises(TypeError, "project_x must be a callable or None")),
  Case("lvhba_step(S, F, f, g, project_y=lambda y: y[:2])", raises(ValueError, r"project_y\(y\)'s output has shape \(2,\) but y has \(4,\)")),
  Case("lvhba_step(S, F, f, g, project_x=lambda x: x.astype(jnp.float16))", raises(TypeError, r"project_x\(x\) must return x's dtype float32, got float16")),
  Case("lvhba_step(S, F, f, g, project_xy=lambda x, y: x)", raises(TypeError, r"project_xy\(x, y\) must return the pair \(x, y\)")),
  Case("lvhba_step(S, F, f, g, project_xy=lambda x, y: (x, {'y': y}))", raises(ValueError, r"project_xy\(x, y\)\[1\]'s output and y must have the same pytree structure")),
  Case("lvhba_step(S, F, f, g, project_xy=lambda x, y: (x[None], y))", raises(ValueError, r"project_xy\(x, y\)\[0\]'s output has shape \(1, 2\) but x has \(2,\)")),
  Case("lvhba_step(S, F, f, g, project_xy=P).x", returns(lambda x: x.shape == (2,), "the projection onto C is any (x, y) -> (x, y) map of the right shapes")),
  # --- variables and starts
  Case("lvhba_init(jnp.arange(2), Y, g)", raises(TypeError, "x0 has dtype int32")),
  Case("lvhba_init(X, {}, g)", raises(ValueError, "y0 must hold at least one array")),
  Case("lvhba_init(jnp.array([1.0, nan]), Y, g)", raises(ValueError, r"lvhba_init: x0 must be finite \(no NaN or inf\)")),
  Case("lvhba_init(X, Y, g, theta0=jnp.zeros(3))", raises(ValueError, r"theta0 has shape \(3,\) but y0 has \(4,\)")),
  Case("lvhba_init(X, Y, g, lam0=jnp.ones(2))", raises(ValueError, r"lam0 must have shape \(1,\) \(one entry per constraint\), got \(2,\)")),
  Case("lvhba_init(X, Y, g, z0=-jnp.ones(1))", raises(ValueError, r"z0 must be non-negative")),
  Case("lvhba_init(X, Y, g, lam0=jnp.array([inf]))", raises(ValueError, "lam0 must be finite")),
  Case("lvhba(F, f, g, X, Y, max_iterations=3, project_xy=P).n_iters", returns(lambda k: int(k) == 3, "a run to the cap returns what it reached")),
  # --- state
  Case("lvhba_step((X, Y), F, f, g)", raises(TypeError, "state must be an LVHBAState")),
  Case("lvhba_step(S._replace(z=jnp.ones(3)), F, f, g)", raises(ValueError, r"state.z has shape \(3,\) but state.lam has \(1,\)")),
  Case("lvhba_step(S._replace(theta=jnp.ones(3)), F, f, g)", raises(ValueError, r"state.theta has shape \(3,\) but state.y has \(4,\)")),
  Case("lvhba_step(S._replace(y=jnp.full(4, nan)), F, f, g)", raises(ValueError, "state.y must be finite")),
  # --- step sizes and counts
  Case("lvhba_step(S, F, f, g, alpha=0.0)", raises(ValueError, r"lvhba_step: alpha must lie in \(0, inf\), got 0.0")),
  Case("lvhba_step(S, F, f, g, eta=nan)", raises(ValueError, "eta must be a number, got NaN")),
  Case("lvhba_step(S, F, f, g, gamma1=-1.0)", raises(ValueError, r"gamma1 must lie in \(0, inf\)")),
  Case("lvhba_step(S, F, f, g, gamma2=True)", raises(TypeError, "gamma2 must be a real number, got a bool")),
  Case("lvhba_step(S, F, f, g, c_power=-0.1)", raises(ValueError, r"c_power must lie in \[0, inf\)")),
  Case("lvhba_step(S, F, f, g, z_max=0.0)", raises(ValueError, r"z_max must lie in \(0, inf\]")),
  Case("lvhba_step(S, F, f, g, z_max=inf).z", returns(lambda z: z.shape == (1,), "z_max = inf is Z = [0, inf)^p")),
  Case("lvhba(F, f, g, X, Y, max_iterations=0)", raises(ValueError, r"max_iterations must lie in \[1, inf\), got 0")),
  Case("lvhba(F, f, g, X, Y, max_iterations=2.5)", raises(ValueError, "max_iterations must be an integer")),
  Case("lvhba(F, f, g, X, Y, tol=-1.0)", raises(ValueError, r"tol must lie in \[0, inf\)")),
  Case("jax.jit(lambda a: lvhba_step(S, F, f, g, alpha=a).x)(-0.1)", returns(lambda x: bool(np.isnan(x).all()), "traced: a non-positive step size poisons the iterate with NaN", nan_ok=True)),
  Case("jax.jit(lambda a: lvhba_step(S, F, f, g, alpha=a).x)(0.1)", returns(lambda x: bool(np.isfinite(x).all()), "a traced step size (a schedule) is accepted")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
