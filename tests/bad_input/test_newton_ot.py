"""Hostile inputs to HESSO, the gradient-regularized Newton method and optim.ot (one a line).

Fixtures are tiny: params ``P`` (a two-layer dict), the group families ``GR``, a quadratic
``F``, a 3x4 cost ``C`` with uniform weights ``A3``/``B4``. Most cases fail before tracing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim as O
from optim import ot
from optim.curvature import LinearOperator
from tests.bad_input.harness import Case, Raises, finite, params, raises, returns, run

nan, inf = float("nan"), float("inf")
P = {"l1": {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}, "l2": {"w": jnp.ones((3, 1))}}
GR = [{"l1/w": 1, "l1/b": 0, "l2/w": 0}]
G = jax.tree.map(jnp.ones_like, P)
F = lambda p: 0.5 * jnp.sum(p**2) + jnp.sum(jnp.logaddexp(0.0, p))
X = jnp.array([1.0, -2.0])
C = jnp.arange(12.0).reshape(3, 4) / 12
A3, B4 = jnp.ones(3) / 3, jnp.ones(4) / 4


def hstep(tx, params=P, grads=G):
  return tx.update(grads, tx.init(params), params)[0]


def nstep(tx, x=X, **extra):
  return tx.update(jax.grad(F)(x), tx.init(x), x, **extra)[0]


NS = {
  **{k: v for k, v in globals().items() if k.isupper() and not k.startswith("_")},
  **{"O": O, "ot": ot, "jax": jax, "jnp": jnp, "np": np, "optax": optax, "nan": nan, "inf": inf},
  **{"LinearOperator": LinearOperator, "hstep": hstep, "nstep": nstep},
}
SNS = "ot.sinkhorn_newton_sparse"
ERR = "the error history is finite where iterations ran"

CASES = [
  # -- HESSO: groups --------------------------------------------------------------------
  Case("O.hesso(0.1, [])", raises(ValueError, "groups must be a non-empty sequence")),
  Case("O.hesso(0.1, {'l1/w': 1})", raises(ValueError, "groups must be a non-empty sequence")),
  Case("O.hesso(0.1, None)", raises(ValueError, "groups must be a non-empty sequence")),
  Case("hstep(O.hesso(0.1, [{}]))", raises(ValueError, r"groups\[0\] must be a non-empty dict")),
  Case("hstep(O.hesso(0.1, [{'l3/w': 0}]))", raises(ValueError, "not a leaf of params")),
  Case("hstep(O.hesso(0.1, [{'l1/w': 2}]))", raises(ValueError, "axis 2 is out of range")),
  Case("hstep(O.hesso(0.1, [{'l1/w': 1.0}]))", raises(TypeError, "must be an int axis")),
  Case("hstep(O.hesso(0.1, [{'l1/w': True}]))", raises(TypeError, "must be an int axis")),
  Case("hstep(O.hesso(0.1, [{'l1/w': 0, 'l1/b': 0}]))", raises(ValueError, "one common")),
  Case("hstep(O.hesso(0.1, [{'l1/w': 1}], params=None))", raises(TypeError, "unexpected")),
  Case(
    "O.scale_by_hesso(GR).update(G, O.scale_by_hesso(GR).init(P))",
    raises(ValueError, "needs the current parameters"),
  ),
  Case(
    "hstep(O.hesso(0.1, [{'l1/w': 1}]), {'l1': {'w': jnp.ones((2, 0))}}, "
    "{'l1': {'w': jnp.ones((2, 0))}})",
    raises(ValueError, "non-zero size"),
  ),
  # -- HESSO: hyperparameters -----------------------------------------------------------
  Case("O.hesso(nan, GR)", raises(ValueError, "learning_rate must be a number")),
  Case("O.hesso(-1.0, GR)", raises(ValueError, "learning_rate must lie")),
  Case("O.hesso(0.1, GR, target_group_sparsity=1.0)", raises(ValueError, "target_group_sparsity")),
  Case("O.hesso(0.1, GR, target_group_sparsity=-0.1)", raises(ValueError, "target_group_sparsity")),
  Case("O.hesso(0.1, GR, target_group_sparsity=nan)", raises(ValueError, "target_group_sparsity")),
  Case("O.hesso(0.1, GR, pruning_periods=0)", raises(ValueError, "pruning_periods")),
  Case("O.hesso(0.1, GR, pruning_steps=1, pruning_periods=2)", raises(ValueError, "pruning_steps")),
  Case("O.hesso(0.1, GR, pruning_steps=2.5)", raises(ValueError, "pruning_steps must be an int")),
  Case("O.hesso(0.1, GR, start_pruning_step=-1)", raises(ValueError, "start_pruning_step")),
  Case("O.hesso(0.1, GR, variant='lion')", raises(ValueError, "variant")),
  Case("O.hesso(0.1, GR, momentum=1.0)", raises(ValueError, "momentum")),
  Case(
    "O.hesso(0.1, GR, importance_weights={'l2': 1.0})", raises(ValueError, "importance_weights")
  ),
  Case(
    "O.hesso(0.1, GR, importance_weights={'magnitude': -1.0})",
    raises(ValueError, "importance_weights"),
  ),
  Case("O.hesso(0.1, GR, importance_weights={})", raises(TypeError, "importance_weights")),
  Case(
    "hstep(O.hesso(0.1, GR), jax.tree.map(lambda x: x.astype(jnp.int32), P))",
    raises(TypeError, "params"),
  ),
  Case("hstep(O.hesso(0.1, GR, target_group_sparsity=0.0))", returns(finite, "no pruning")),
  Case(
    "hstep(O.hesso(0.1, GR, 0.5, pruning_steps=1))",
    returns(
      lambda u: float(jnp.sum(u["l1"]["b"] == -1.0)) == 1.0,
      "T = 1: the one redundant group goes to zero at once",
    ),
  ),
  Case("O.pruning.hesso_structure(optax.sgd(0.1).init(P))", raises(TypeError, "HessoState")),
  Case(
    "O.pruning.prune_groups(P, GR + GR, O.scale_by_hesso(GR).init(P))",
    raises(ValueError, "numbers of families"),
  ),
  # -- gradient-regularized Newton --------------------------------------------------------
  Case("O.reg_newton(nan)", raises(ValueError, "learning_rate must be a number")),
  Case("O.reg_newton(1.0, gamma=0.0)", raises(ValueError, "gamma must lie")),
  Case("O.reg_newton(1.0, gamma=-1.0)", raises(ValueError, "gamma must lie")),
  Case("O.reg_newton(1.0, gamma=inf)", raises(ValueError, "gamma must be finite")),
  Case("O.reg_newton(1.0, variant='cubic')", raises(ValueError, "variant")),
  Case("O.reg_newton(1.0, search_max_iterations=0)", raises(ValueError, "search_max_iterations")),
  Case("O.reg_newton(1.0, cg_max_iterations=2.5)", raises(ValueError, "cg_max_iterations")),
  Case("O.reg_newton(1.0, cg_tol=0.0)", raises(ValueError, "cg_tol")),
  Case("O.reg_newton(1.0, gamma_min=-1.0)", raises(ValueError, "gamma_min")),
  Case("nstep(O.reg_newton(1.0))", raises(ValueError, "obj_fn")),
  Case("nstep(O.reg_newton(1.0), obj_fn=3)", raises(TypeError, "obj_fn must be callable")),
  Case("nstep(O.reg_newton(1.0), obj_fn=lambda p: p)", raises(TypeError, "obj_fn must return")),
  Case("nstep(O.reg_newton(1.0), obj_fn=F, hessian_fn=3)", raises(TypeError, "hessian_fn")),
  Case(
    "nstep(O.reg_newton(1.0), obj_fn=F, hessian_fn=lambda p: p)",
    raises(TypeError, "hessian_fn must return"),
  ),
  Case(
    "O.reg_newton(1.0).update(X, O.reg_newton(1.0).init(X), None, obj_fn=F)",
    raises(ValueError, "params"),
  ),
  Case("nstep(O.reg_newton(1.0), obj_fn=F)", returns(finite, "a finite Newton step")),
  Case(
    "nstep(O.reg_newton(1.0), obj_fn=F, hessian_fn=lambda p: LinearOperator(lambda v: v, p))",
    returns(finite, "any PSD operator is an approximate Hessian"),
  ),
  Case(
    "O.loops.reg_newton_minimize(F, X, max_iterations=-1)", raises(ValueError, "max_iterations")
  ),
  Case("O.loops.reg_newton_minimize(F, X, tol=-1.0)", raises(ValueError, "tol")),
  Case("O.loops.reg_newton_minimize(3, X)", raises(TypeError, "obj_fn")),
  Case("O.loops.reg_newton_minimize(F, {})", raises(ValueError, "params must hold at least one")),
  Case("O.loops.reg_newton_minimize(F, jnp.ones(2, jnp.int32))", raises(TypeError, "params")),
  Case("O.loops.reg_newton_minimize(F, X, hessian_fn='exact')", raises(TypeError, "hessian_fn")),
  Case("O.loops.reg_newton_minimize(lambda p: p, X)", raises(TypeError, "obj_fn must return")),
  Case(
    "O.loops.reg_newton_minimize(F, X, max_iterations=0).n_iters",
    returns(lambda k: int(k) == 0, "max_iterations=0 returns the start"),
  ),
  Case(
    "O.loops.reg_newton_minimize(F, jnp.array([nan, 1.0]), max_iterations=2).params",
    raises(ValueError, "obj_fn is not finite at iterate 0"),
  ),
  # -- optim.ot: cost ---------------------------------------------------------------------
  Case(f"{SNS}(C.at[0, 0].set(nan), epsilon=0.1)", raises(ValueError, "cost has NaN")),
  Case(f"{SNS}(C.at[1, 2].set(inf), epsilon=0.1)", raises(ValueError, "cost has NaN")),
  Case(f"{SNS}(C[0], epsilon=0.1)", raises(ValueError, r"cost must be a non-empty \(n, m\)")),
  Case(f"{SNS}(C[None], epsilon=0.1)", raises(ValueError, r"cost must be a non-empty \(n, m\)")),
  Case(f"{SNS}(jnp.ones((0, 3)), epsilon=0.1)", raises(ValueError, "cost must be a non-empty")),
  Case(
    f"{SNS}(jnp.ones((3, 4), jnp.int32), epsilon=0.1)", raises(TypeError, "cost must be floating")
  ),
  Case(f"{SNS}('C', epsilon=0.1)", raises(TypeError, "cost")),
  Case(
    f"jax.jit(lambda c: {SNS}(c, epsilon=0.5).f)(C.at[0, 0].set(nan))",
    returns(
      lambda f: bool(jnp.isnan(f).any()), "a traced NaN cost gives NaN potentials", nan_ok=True
    ),
  ),
  # -- optim.ot: marginals ----------------------------------------------------------------
  Case(f"{SNS}(C, A3 * 2, B4, epsilon=0.1)", raises(ValueError, "a must sum to 1")),
  Case(f"{SNS}(C, A3, B4 * 0.5, epsilon=0.1)", raises(ValueError, "b must sum to 1")),
  Case(
    f"{SNS}(C, jnp.array([1.5, -0.25, -0.25]), B4, epsilon=0.1)",
    raises(ValueError, "a must be finite and >= 0"),
  ),
  # A zero weight is valid now (masked out): tests/bad_input/test_wave2_ot.py.
  Case(f"{SNS}(C, A3.at[0].set(nan), B4, epsilon=0.1)", raises(ValueError, "a must be finite")),
  Case(f"{SNS}(C, B4, B4, epsilon=0.1)", raises(ValueError, r"a must have shape \(3,\)")),
  Case(f"{SNS}(C, A3, A3, epsilon=0.1)", raises(ValueError, r"b must have shape \(4,\)")),
  Case(f"{SNS}(C, A3[None], B4, epsilon=0.1)", raises(ValueError, "a must have shape")),
  Case(
    f"{SNS}(C, jnp.ones(3, jnp.int32), B4, epsilon=0.1)", raises(TypeError, "a must be floating")
  ),
  Case(f"{SNS}(C, A3, jnp.ones(4, bool), epsilon=0.1)", raises(TypeError, "b must be floating")),
  # -- optim.ot: hyperparameters ----------------------------------------------------------
  Case(f"{SNS}(C, epsilon=0.0)", raises(ValueError, "epsilon must lie")),
  Case(f"{SNS}(C, epsilon=-0.1)", raises(ValueError, "epsilon must lie")),
  Case(f"{SNS}(C, epsilon=nan)", raises(ValueError, "epsilon must be a number")),
  Case(f"{SNS}(C, epsilon=inf)", raises(ValueError, "epsilon must be finite")),
  Case(f"{SNS}(C, epsilon=None)", raises(TypeError, "epsilon must be a real number")),
  Case(f"{SNS}(C)", raises(TypeError, "epsilon")),
  Case(f"{SNS}(C, epsilon=0.1, rho=0.0)", raises(ValueError, "rho must lie")),
  Case(f"{SNS}(C, epsilon=0.1, rho=1.5)", raises(ValueError, "rho must lie")),
  Case(
    f"{SNS}(C, epsilon=0.1, sinkhorn_num_iterations=-1)",
    raises(ValueError, "sinkhorn_num_iterations"),
  ),
  Case(
    f"{SNS}(C, epsilon=0.1, sinkhorn_num_iterations=2.5)",
    raises(ValueError, "sinkhorn_num_iterations must be an integer"),
  ),
  Case(f"{SNS}(C, epsilon=0.1, max_iterations=-1)", raises(ValueError, "max_iterations")),
  Case(f"{SNS}(C, epsilon=0.1, tol=0.0)", raises(ValueError, "tol must lie")),
  Case(f"{SNS}(C, epsilon=0.1, cg_max_iterations=0)", raises(ValueError, "cg_max_iterations")),
  Case(
    f"{SNS}(C, epsilon=0.1, linesearch_max_iterations=0)",
    raises(ValueError, "linesearch_max_iterations"),
  ),
  Case(
    f"jax.jit(lambda e: {SNS}(C, epsilon=0.1, rho=e).f)(0.5)",
    raises(TypeError, "rho must be a concrete"),
  ),
  Case(
    f"{SNS}(C, epsilon=0.5, sinkhorn_num_iterations=0, max_iterations=0).errors",
    returns(
      lambda e: bool(jnp.isfinite(e[0])) and bool(jnp.isnan(e[1:]).all()),
      "no iterations: the start's error, then NaN",
      nan_ok=True,
    ),
  ),
  Case(
    "ot.sq_euclidean_cost(jnp.ones((3, 2)), jnp.ones((4, 3)))", raises(ValueError, "dims differ")
  ),
  Case("ot.sq_euclidean_cost(jnp.ones(3), jnp.ones((4, 3)))", raises(ValueError, "x must be")),
]


def test_table_size():
  assert len(CASES) >= 80


# The documented behaviours run the solvers (each compiles): kept out of the fast suite.
FAST = [c for c in CASES if isinstance(c.expect, Raises)]
SLOW = [c for c in CASES if not isinstance(c.expect, Raises)]


@params(FAST)
def test_case(case):
  run(case, NS)


@pytest.mark.slow
@params(SLOW)
def test_documented_behaviour(case):
  run(case, NS)
