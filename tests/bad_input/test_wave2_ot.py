"""Hostile inputs, round two: Sinkhorn-Newton-Sparse (globalisation, zero weights, the switch rule).

The Newton phase at tiny epsilon, a tolerance near round-off, zero-mass points with and
without ``jit``, differentiation (reverse mode through the potentials' implicit
derivative; forward mode refused), and the switch rule's keywords. One reproducer a line
(harness in tests/bad_input/harness.py); fixtures: a 3x4 cost ``C`` with uniform weights
``A3``/``B4``, and 64 uniform points ``U64`` (float32) / ``U64D`` (float64, built inside
``x64``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim import ot
from tests.bad_input.harness import Case, Raises, params, raises, returns, run

nan, inf = float("nan"), float("inf")
C = jnp.arange(12.0).reshape(3, 4) / 12
A3, B4 = jnp.ones(3) / 3, jnp.ones(4) / 4
_X, _Y = (
  jax.random.uniform(jax.random.key(0), (64, 2)),
  jax.random.uniform(jax.random.key(1), (64, 2)),
)
U64 = ot.sq_euclidean_cost(_X, _Y)


def x64(fn):
  """``fn()`` with float64 enabled, the result fetched to NumPy."""
  with jax.enable_x64(True):
    return jax.device_get(fn())


def U64D():
  return ot.sq_euclidean_cost(jnp.asarray(_X, jnp.float64), jnp.asarray(_Y, jnp.float64))


def marginal_error(out, a=None):
  p = np.asarray(out.plan, np.float64)
  n, m = p.shape
  a = np.full(n, 1 / n) if a is None else np.asarray(a, np.float64)
  return np.abs(p.sum(1) - a).sum() + np.abs(p.sum(0) - 1 / m).sum()


def warm_start_error(out):
  """The error where the Sinkhorn phase handed over (errors: one per Sinkhorn iteration,
  the hand-over's, one per Newton-phase iteration)."""
  e = np.asarray(out.errors)
  return e[int(np.isfinite(e).sum()) - 1 - int(out.n_iters)]


def no_worse(out, a=None):
  return marginal_error(out, a) <= warm_start_error(out) * (1 + 1e-5)


A8 = jnp.ones(64).at[:8].set(0.0) / 56  # 8 empty source points


def masked(rows=(), cols=()):
  """A result with zero-weight rows (columns): zero plan there, potential -inf, finite and
  converged elsewhere."""

  def check(out):
    f, g, p = np.asarray(out.f), np.asarray(out.g), np.asarray(out.plan)
    keep_f, keep_g = np.ones(len(f), bool), np.ones(len(g), bool)
    keep_f[list(rows)], keep_g[list(cols)] = False, False
    ok = bool(out.converged) and np.isfinite(f[keep_f]).all() and np.isfinite(g[keep_g]).all()
    ok &= np.isfinite(p).all() and np.isfinite(float(out.reg_ot_cost))
    ok &= np.all(f[~keep_f] == -np.inf) and np.all(p[~keep_f] == 0)
    return ok & np.all(g[~keep_g] == -np.inf) and np.all(p[:, ~keep_g] == 0)

  return check


def poisoned(out):
  return (
    not bool(out.converged)
    and np.isnan(np.asarray(out.f)).all()
    and np.isnan(np.asarray(out.plan)).all()
    and np.isnan(float(out.reg_ot_cost))
  )


def finite_tree(x):
  return all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(x))


NS = {
  **{k: v for k, v in globals().items() if k.isupper() and not k.startswith("_")},
  **{"ot": ot, "jax": jax, "jnp": jnp, "np": np, "nan": nan, "inf": inf, "x64": x64},
}
SNS = "ot.sinkhorn_newton_sparse"
JIT_A = f"jax.jit(lambda a: {SNS}(C, a, B4, epsilon=0.1))"
JIT_B = f"jax.jit(lambda b: {SNS}(C, A3, b, epsilon=0.1))"

CASES = [
  # -- the Newton phase never returns a worse plan than its Sinkhorn start ----------------
  Case(
    f"{SNS}(U64, epsilon=1e-4)",
    returns(
      no_worse, "globalised: the best iterate, never above the warm start's error", nan_ok=True
    ),
  ),
  Case(
    f"{SNS}(U64, epsilon=1e-4, sinkhorn_num_iterations=20)",
    returns(no_worse, "globalised with the paper's fixed warm start too"),
  ),
  Case(
    f"{SNS}(U64, epsilon=1e-3, sinkhorn_num_iterations=20, max_iterations=5)",
    returns(no_worse, "a damped Newton transient that raises e is not returned"),
  ),
  # -- the requested tolerance is reached (no stall near 1e-9) ----------------------------
  Case(
    f"x64(lambda: {SNS}(U64D(), epsilon=0.01, tol=1e-10)).converged",
    returns(lambda c: bool(c), "1e-10 in float64: the dense Hessian near convergence"),
  ),
  Case(
    f"x64(lambda: {SNS}(U64D(), epsilon=0.01, tol=1e-10, sinkhorn_num_iterations=20))",
    returns(
      lambda out: bool(out.converged) and marginal_error(out) < 1e-10,
      "1e-10 with the fixed warm start",
      nan_ok=True,
    ),
  ),
  # -- zero-mass points: masked out, potential -inf, with and without jit ------------------
  Case(
    f"{SNS}(C, jnp.array([0.5, 0.5, 0.0]), B4, epsilon=0.1)",
    returns(masked(rows=[2]), "a zero weight masks its row out", nan_ok=True),
  ),
  Case(
    f"{JIT_A}(jnp.array([0.5, 0.5, 0.0]))",
    returns(masked(rows=[2]), "the same under jit (it used to stall on 0 * -inf)", nan_ok=True),
  ),
  Case(
    f"{JIT_B}(jnp.array([0.0, 0.5, 0.25, 0.25]))",
    returns(masked(cols=[0]), "a zero target weight under jit", nan_ok=True),
  ),
  Case(
    f"{SNS}(C, jnp.array([1.0, 0.0, 0.0]), B4, epsilon=0.1)",
    returns(
      lambda out: bool(jnp.allclose(out.plan[0], B4)) and masked(rows=[1, 2])(out),
      "one source point carries everything",
      nan_ok=True,
    ),
  ),
  Case(
    f"jax.jit(lambda a: {SNS}(U64, a, epsilon=1e-3))(A8)",
    returns(
      lambda out: np.all(np.asarray(out.plan)[:8] == 0) and no_worse(out, A8),
      "masked rows with the Newton phase running",
      nan_ok=True,
    ),
  ),
  # -- traced weights that are not weights: NaN outputs, converged False ------------------
  Case(
    f"{JIT_A}(jnp.array([1.5, -0.25, -0.25]))",
    returns(poisoned, "a traced negative weight poisons every output", nan_ok=True),
  ),
  Case(
    f"jax.jit(lambda a: {SNS}(C, a, B4, epsilon=0.1, sinkhorn_num_iterations=0, "
    "max_iterations=0))(jnp.array([1.5, -0.25, -0.25]))",
    returns(poisoned, "poisoned even where no iteration runs into log(-0.25)", nan_ok=True),
  ),
  Case(
    f"{JIT_A}(jnp.array([0.5, nan, 0.5]))",
    returns(poisoned, "a traced NaN weight poisons every output", nan_ok=True),
  ),
  Case(
    f"{JIT_B}(jnp.array([0.25, 0.25, inf, 0.5]))",
    returns(poisoned, "a traced infinite weight poisons every output", nan_ok=True),
  ),
  # -- differentiation -----------------------------------------------------------------------
  Case(
    f"jax.grad(lambda c: {SNS}(c, epsilon=0.5).reg_ot_cost)(C)",
    returns(
      lambda gr: bool(jnp.allclose(gr, ot.sinkhorn_newton_sparse(C, epsilon=0.5).plan, atol=1e-5)),
      "d reg_ot_cost / d C = P (it used to be an internal while_loop error)",
    ),
  ),
  Case(
    f"jax.grad(lambda e: {SNS}(C, epsilon=e).reg_ot_cost)(0.5)",
    returns(finite_tree, "differentiable in epsilon"),
  ),
  Case(
    f"jax.grad(lambda a: {SNS}(C, a, B4, epsilon=0.5).plan[0, 1])(A3)",
    returns(finite_tree, "the plan through the potentials' implicit derivative"),
  ),
  Case(
    f"jax.jit(jax.grad(lambda a: {SNS}(C, a, B4, epsilon=0.5).reg_ot_cost))"
    "(jnp.array([0.5, 0.5, 0.0]))",
    returns(finite_tree, "finite gradient at a zero weight, under jit"),
  ),
  Case(
    f"jax.grad(lambda c: {SNS}(c, jnp.array([0.5, 0.5, 0.0]), B4, epsilon=0.5).reg_ot_cost)(C)",
    returns(lambda gr: finite_tree(gr) and bool(jnp.all(gr[2] == 0)), "no mass, no gradient"),
  ),
  Case(
    f"jax.vmap(jax.grad(lambda c: {SNS}(c, epsilon=0.5).reg_ot_cost))(jnp.stack([C, 2 * C]))",
    returns(finite_tree, "vmap of grad"),
  ),
  Case(
    f"jax.jvp(lambda c: {SNS}(c, epsilon=0.5).reg_ot_cost, (C,), (C,))",
    raises(TypeError, "forward-mode autodiff"),
  ),
  # -- the switch rule's keywords ---------------------------------------------------------
  Case(
    f"{SNS}(C, epsilon=0.1, sinkhorn_max_iterations=-1)",
    raises(ValueError, "sinkhorn_max_iterations must lie"),
  ),
  Case(
    f"{SNS}(C, epsilon=0.1, sinkhorn_max_iterations=2.5)",
    raises(ValueError, "sinkhorn_max_iterations must be an integer"),
  ),
  Case(
    f"jax.jit(lambda k: {SNS}(C, epsilon=0.1, sinkhorn_max_iterations=k).f)(5)",
    raises(TypeError, "sinkhorn_max_iterations must be a concrete"),
  ),
  Case(
    f"{SNS}(C, epsilon=0.1, switch_threshold=-1.0)", raises(ValueError, "switch_threshold must lie")
  ),
  Case(
    f"{SNS}(C, epsilon=0.1, switch_threshold=nan)",
    raises(ValueError, "switch_threshold must be a number"),
  ),
  Case(
    f"{SNS}(C, epsilon=0.1, switch_threshold='never')",
    raises(TypeError, "switch_threshold must be a real number"),
  ),
  Case(
    f"{SNS}(C, epsilon=0.1, sinkhorn_num_iterations=True)",
    raises(TypeError, "sinkhorn_num_iterations must be a real number"),
  ),
  Case(
    f"{SNS}(U64, epsilon=0.01, tol=1e-4, switch_threshold=inf)",
    returns(
      lambda out: int(out.n_iters) == 0 and bool(out.converged),
      "switch_threshold=inf: Sinkhorn alone to tol",
      nan_ok=True,
    ),
  ),
  Case(
    f"jax.jit(lambda t: {SNS}(U64, epsilon=0.01, switch_threshold=t))(50.0)",
    returns(
      lambda out: int(out.n_iters) > 0 and bool(out.converged),
      "a traced switch_threshold (not a shape)",
      nan_ok=True,
    ),
  ),
  Case(
    f"{SNS}(U64, epsilon=0.01, sinkhorn_max_iterations=0)",
    returns(
      lambda out: bool(out.converged) and np.isfinite(np.asarray(out.errors)[0]),
      "no warm start: Newton from zero potentials, globalised",
      nan_ok=True,
    ),
  ),
  Case(
    f"{SNS}(U64, epsilon=0.002, sinkhorn_max_iterations=10)",
    returns(
      lambda out: int(np.isfinite(np.asarray(out.errors)).sum()) - 1 - int(out.n_iters) == 10,
      "the cap ends the warm start",
      nan_ok=True,
    ),
  ),
  Case(
    f"jax.jit(lambda c: {SNS}(c, epsilon=0.5).f)(C.at[0, 0].set(nan))",
    returns(
      lambda f: bool(jnp.isnan(f).all()),
      "a traced NaN cost stops the warm start at once: every output NaN",
      nan_ok=True,
    ),
  ),
]


def test_table_size():
  assert len(CASES) >= 30


FAST = [c for c in CASES if isinstance(c.expect, Raises)]
SLOW = [c for c in CASES if not isinstance(c.expect, Raises)]


@params(FAST)
def test_case(case):
  run(case, NS)


@pytest.mark.slow
@params(SLOW)
def test_documented_behaviour(case):
  run(case, NS)
