# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to ``optim.constrained.eal_sketch_minimize``: constraint outputs that are
not a 1-d float vector, more constraints than variables, objectives that are not a real
scalar, starting points that are not a finite 1-d float vector, budgets of 0, out-of-range
hyperparameters and bad keys. Concrete input raises naming the argument; a non-finite
start under ``jit`` returns the documented poison (a NaN iterate).

Fixtures: ``F`` a quadratic objective on R^3, ``C`` one linear constraint, ``X`` a start.
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp
import numpy as np

from optim import constrained as M  # noqa: F401 - used by the reproducers
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")


def F(x):
  return 0.5 * jnp.sum(x**2)


def C(x):
  return jnp.array([x[0] + x[1] + x[2] - 1.0])


X = jnp.zeros(3)
NS = dict(globals())

CASES = [
  # --- the constraint's output
  Case("M.eal_sketch_minimize(F, lambda x: jnp.stack([x, x]), X, key=0)", raises(ValueError, r"constraint\(x\) must return a non-empty 1-d array c\(x\), got shape \(2, 3\)")),
  Case("M.eal_sketch_minimize(F, lambda x: jnp.sum(x), X, key=0)", raises(ValueError, r"constraint\(x\) must return a non-empty 1-d array c\(x\), got shape \(\)")),
  Case("M.eal_sketch_minimize(F, lambda x: jnp.array([1, 2]), X, key=0)", raises(TypeError, r"constraint\(x\) must return a 1-d floating array c\(x\), got dtype int")),
  Case("M.eal_sketch_minimize(F, lambda x: (x[0], x[1]), X, key=0)", raises(TypeError, r"constraint\(x\) must return one 1-d floating array c\(x\), got tuple")),
  Case("M.eal_sketch_minimize(F, lambda x: jnp.concatenate([x, x]), X, key=0)", raises(ValueError, r"constraint\(x\) must have at most as many constraints as variables .*got 6 constraints for 3 variables")),
  Case("M.eal_sketch_minimize(F, lambda x: x[:0], X, key=0)", raises(ValueError, r"constraint\(x\) must return a non-empty 1-d array c\(x\), got shape \(0,\)")),
  Case("M.eal_sketch_minimize(F, 'c', X, key=0)", raises(TypeError, "constraint must be callable, got str")),
  Case("M.eal_sketch_minimize(F, lambda x: jnp.array([jnp.log(x[0] - 1.0)]), X, key=0)", raises(ValueError, r"constraint\(x0\) must be finite")),
  # --- the objective's output
  Case("M.eal_sketch_minimize(lambda x: x, C, X, key=0)", raises(TypeError, r"objective\(x\) must return a real floating-point scalar f\(x\), got shape \(3,\)")),
  Case("M.eal_sketch_minimize(lambda x: jnp.sum(x) > 0, C, X, key=0)", raises(TypeError, r"objective\(x\) must return a real floating-point scalar f\(x\), got dtype bool")),
  Case("M.eal_sketch_minimize(None, C, X, key=0)", raises(TypeError, "objective must be callable, got NoneType")),
  Case("M.eal_sketch_minimize(lambda x: jnp.log(x[0]), C, X, key=0)", raises(ValueError, r"objective\(x0\) must be finite, got -inf")),
  # --- the starting point and multipliers
  Case("M.eal_sketch_minimize(F, C, jnp.zeros(3, jnp.int32), key=0)", raises(TypeError, "x0 must be a 1-d floating array, got dtype int32")),
  Case("M.eal_sketch_minimize(F, C, [0.0, 0.0, 0.0], key=0)", raises(TypeError, "x0 must be a 1-d floating array, got list")),
  Case("M.eal_sketch_minimize(F, C, jnp.zeros((1, 3)), key=0)", raises(ValueError, r"x0 must be a non-empty 1-d array, got shape \(1, 3\)")),
  Case("M.eal_sketch_minimize(F, C, jnp.zeros(0), key=0)", raises(ValueError, r"x0 must be a non-empty 1-d array, got shape \(0,\)")),
  Case("M.eal_sketch_minimize(F, C, jnp.array([0.0, nan, 0.0]), key=0)", raises(ValueError, r"x0 must be finite \(no NaN or inf\)")),
  Case("M.eal_sketch_minimize(F, C, jnp.array([0.0, inf, 0.0]), key=0)", raises(ValueError, r"x0 must be finite")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, multipliers0=jnp.zeros(2))", raises(ValueError, r"multipliers0 must have shape \(1,\) \(one per constraint\), got \(2,\)")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, multipliers0=jnp.array([nan]))", raises(ValueError, "multipliers0 must be finite")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, multipliers0=jnp.array([1]))", raises(TypeError, r"multipliers0 must be a floating array of shape \(1,\)")),
  # --- budgets of 0 and hyperparameters
  Case("M.eal_sketch_minimize(F, C, X, key=0, max_iterations=0)", raises(ValueError, r"max_iterations must lie in \[1, inf\), got 0")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, sketch_max_iterations=0)", raises(ValueError, r"sketch_max_iterations must lie in \[1, inf\), got 0")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, linesearch_max_iterations=0)", raises(ValueError, r"linesearch_max_iterations must lie in \[1, inf\), got 0")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, max_iterations=2.5)", raises(ValueError, "max_iterations must be an integer, got 2.5")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, sketch_size=0)", raises(ValueError, r"sketch_size must lie in \[1, 4\], got 0")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, sketch_size=5)", raises(ValueError, r"sketch_size must lie in \[1, 4\], got 5")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, tol=0.0)", raises(ValueError, r"tol must lie in \(0, inf\), got 0.0")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, tol=nan)", raises(ValueError, "tol must be a number, got NaN")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, mu=-1.0)", raises(ValueError, r"mu must lie in \(0, inf\), got -1.0")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, nu=0.0)", raises(ValueError, r"nu must lie in \(0, inf\), got 0.0")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, beta=0.5)", raises(ValueError, r"beta must lie in \(0, 0.5\), got 0.5")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, rho=1.0)", raises(ValueError, r"rho must lie in \(1, inf\), got 1.0")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, delta=inf)", raises(ValueError, "delta must be finite, got inf")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, xi_b=True)", raises(TypeError, "xi_b must be a real number, got a bool")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, variant='cg')", raises(ValueError, r"variant must be one of 'kaczmarz', 'gaussian', 'exact'; got 'cg'")),
  Case("M.eal_sketch_minimize(F, C, X, key='a')", raises(TypeError, "key must be an int seed or a JAX PRNG key")),
  Case("M.eal_sketch_minimize(F, C, X, key=2**40)", raises(ValueError, "key: an int seed must lie in")),
  # --- documented behaviours
  Case("jax.jit(lambda x: M.eal_sketch_minimize(F, C, x, key=0).x)(jnp.array([0.0, nan, 0.0]))", returns(lambda x: bool(np.isnan(x).all()), "traced non-finite start: the iterate is poisoned with NaN, never a plausible point", nan_ok=True)),
  Case("M.eal_sketch_minimize(F, C, X, key=0, max_iterations=1, sketch_max_iterations=1)[:2]", returns(lambda r: r[0].shape == (3,) and r[1].shape == (1,), "budgets of 1 are valid: one Newton step with one sketch iteration per pass")),
  Case("M.eal_sketch_minimize(F, C, X, key=0, tol=1e-4, variant='exact').converged", returns(lambda v: bool(v), "the exact-solve baseline converges on a convex QP")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
