# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to ``optim.bilevel.maid``: constants out of range, missing or wrong
lower-level solvers, bad losses and variables, a wrong ``cross_norm``. Concrete input raises
naming the argument at trace time; traced variables run (the loop is jit-compiled).

Fixtures: ``F`` the upper level |y - 1|^2 / 2, ``G`` the lower level |y - x|^2 / 2
(y*(x) = x, mu = 1), ``X`` a starting point, ``K`` the keywords of a valid run.
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp
import numpy as np

from optim.bilevel import maid  # noqa: F401 - used by the reproducers
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
F = lambda x, y: 0.5 * jnp.sum((y - 1.0) ** 2)  # noqa: E731
G = lambda x, y: 0.5 * jnp.sum((y - x) ** 2)  # noqa: E731
X = jnp.zeros(2)
K = dict(
  mu=1.0, cross_norm=1.0, inner_learning_rate=1.0, learning_rate=1.0, max_iterations=30, tol=1e-3
)
NS = dict(globals())

CASES = [
  # --- constants
  Case("maid(F, G, X, X, **{**K, 'mu': 0.0})", raises(ValueError, r"maid: mu must lie in \(0, inf\), got 0.0")),
  Case("maid(F, G, X, X, **{**K, 'mu': nan})", raises(ValueError, "maid: mu must be a number, got NaN")),
  Case("maid(F, G, X, X, **{**K, 'mu': True})", raises(TypeError, "maid: mu must be a real number, got a bool")),
  Case("maid(F, G, X, X, **{**K, 'mu': lambda x: x})", raises(TypeError, "mu")),
  Case("maid(F, G, X, X, **{**K, 'mu': lambda x: 1.0 + jnp.sum(x**2)}).converged", returns(lambda c: bool(c), "a callable x -> scalar modulus is accepted")),
  Case("maid(F, G, X, X, **{**K, 'cross_lipschitz': lambda x: x})", raises(TypeError, "cross_lipschitz")),
  Case("maid(F, G, X, X, **{**K, 'rho': 1.0})", raises(ValueError, r"maid: rho must lie in \(0, 1\), got 1.0")),
  Case("maid(F, G, X, X, **{**K, 'tau': 0.0})", raises(ValueError, r"maid: tau must lie in \(0, 1\)")),
  Case("maid(F, G, X, X, **{**K, 'nu': 0.5})", raises(ValueError, r"maid: nu must lie in \[1, inf\), got 0.5")),
  Case("maid(F, G, X, X, **{**K, 'eta': 1.0})", raises(ValueError, r"maid: eta must lie in \(0, 1\)")),
  Case("maid(F, G, X, X, **{**K, 'epsilon': -0.1})", raises(ValueError, r"maid: epsilon must lie in \(0, inf\)")),
  Case("maid(F, G, X, X, **{**K, 'delta': inf})", raises(ValueError, "maid: delta must be finite")),
  Case("maid(F, G, X, X, **{**K, 'learning_rate': 0.0})", raises(ValueError, r"maid: learning_rate must lie in \(0, inf\)")),
  Case("maid(F, G, X, X, **{**K, 'step_increase': 0.9})", raises(ValueError, r"maid: step_increase must lie in \[1, inf\)")),
  Case("maid(F, G, X, X, **{**K, 'outer_smoothness': -1.0})", raises(ValueError, r"maid: outer_smoothness must lie in \[0, inf\)")),
  Case("maid(F, G, X, X, **{**K, 'hessian_lipschitz': nan})", raises(ValueError, "maid: hessian_lipschitz must be a number")),
  Case("maid(F, G, X, X, **{**K, 'cross_lipschitz': -0.1})", raises(ValueError, "maid: cross_lipschitz must lie in")),
  Case("maid(F, G, X, X, **{**K, 'tol': -1.0})", raises(ValueError, r"maid: tol must lie in \[0, inf\)")),
  Case("maid(F, G, X, X, **{**K, 'max_iterations': 0})", raises(ValueError, "maid: max_iterations must lie in")),
  Case("maid(F, G, X, X, **{**K, 'max_iterations': 2.5})", raises(ValueError, "maid: max_iterations must be an integer")),
  Case("maid(F, G, X, X, **{**K, 'num_retries': 0})", raises(ValueError, "maid: num_retries must lie in")),
  Case("maid(F, G, X, X, **{**K, 'cg_max_iterations': 0})", raises(ValueError, "maid: cg_max_iterations must lie in")),
  Case("maid(F, G, X, X, **{**K, 'linesearch_max_iterations': -1})", raises(ValueError, "maid: linesearch_max_iterations must lie in")),
  Case("maid(F, G, X, X, **{**K, 'adaptive': 'yes'})", raises(TypeError, "maid: adaptive must be a bool, got str")),
  # --- the lower-level solver
  Case("maid(F, G, X, X, **{**K, 'inner_learning_rate': None})", raises(ValueError, "maid: inner_learning_rate must be given")),
  Case("maid(F, G, X, X, **{**K, 'inner_learning_rate': 0.0})", raises(ValueError, r"maid: inner_learning_rate must lie in \(0, inf\)")),
  Case("maid(F, G, X, X, **{**K, 'inner_solver': 'gd'})", raises(TypeError, r"maid: inner_solver must be a callable \(x, y, eps\) -> \(y, n_iters\), got str")),
  Case("maid(F, G, X, X, **{**K, 'inner_solver': lambda x, y, e: x})", raises(TypeError, r"maid: inner_solver must return a pair \(y, n_iters\)")),
  Case("maid(F, G, X, X, **{**K, 'inner_solver': lambda x, y, e: (y[:1], jnp.int32(0))})", raises(ValueError, r"inner_solver\(x, y, eps\)\[0\]")),
  Case("maid(F, G, X, X, **{**K, 'inner_solver': lambda x, y, e: (x, 1.0)})", raises(TypeError, "maid: inner_solver must return n_iters as an integer scalar")),
  Case("maid(F, G, X, X, **{**K, 'inner_solver': lambda x, y, e: (x, jnp.int32(1))}).converged", returns(lambda c: bool(c), "an exact inner solver (one iteration) is accepted")),
  # --- cross_norm
  Case("maid(F, G, X, X, **{**K, 'cross_norm': -1.0})", raises(ValueError, r"maid: cross_norm must lie in \[0, inf\)")),
  Case("maid(F, G, X, X, **{**K, 'cross_norm': lambda x, y: x})", raises(TypeError, "cross_norm")),
  Case("maid(F, G, X, X, **{**K, 'cross_norm': None}).converged", returns(lambda c: bool(c), "None estimates the norm by power iteration")),
  # --- losses and variables
  Case("maid(None, G, X, X, **K)", raises(TypeError, "maid: outer_loss must be a callable")),
  Case("maid(F, 3, X, X, **K)", raises(TypeError, "maid: inner_loss must be a callable")),
  Case("maid(lambda x, y: y, G, X, X, **K)", raises(TypeError, "outer_loss")),
  Case("maid(F, G, jnp.zeros(2, int), X, **K)", raises(TypeError, "x")),
  Case("maid(F, G, X, {}, **K)", raises(ValueError, "y")),
  # --- valid edge cases
  Case("maid(F, G, X, X, **{**K, 'tol': 0.0, 'learning_rate': 0.1, 'max_iterations': 5}).n_iters", returns(lambda n: int(n) == 5, "tol = 0 stops only at an exact zero: max_iterations iterations run")),
  Case("maid(F, G, jnp.ones(2), jnp.ones(2), **K).n_iters", returns(lambda n: int(n) == 1, "a stationary start stops at the first hypergradient (|z| = 0 <= tol)")),
  Case("jax.jit(lambda x: maid(F, G, x, x, **K).x)(X)", returns(lambda x: np.allclose(x, 1.0, atol=1e-2), "traced starting points run (the loop is jit-compiled)")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
