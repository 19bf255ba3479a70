# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to ``optim.curvature.conjugate_gradient`` and
``optim.bilevel.implicit_hypergradient``: non-callable operators and losses, mismatched
pytrees, non-scalar losses, integer variables, zero budgets and tolerances.

Fixtures: ``A`` a 2x2 SPD matrix, ``MV`` its product; ``F, G`` a quadratic bilevel pair
with ``y*(x) = x``.
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp
import numpy as np

from optim.bilevel import implicit_hypergradient as hg  # noqa: F401 - used by the reproducers
from optim.curvature import conjugate_gradient as cg  # noqa: F401 - used by the reproducers
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
MV = lambda v: A @ v  # noqa: E731
F = lambda x, y: 0.5 * jnp.sum((y - 1.0) ** 2)  # noqa: E731
G = lambda x, y: 0.5 * jnp.sum((y - x) ** 2)  # noqa: E731
X = jnp.array([0.0, 3.0])
NS = dict(globals())

CASES = [
  # --- conjugate_gradient
  Case("cg(A, jnp.ones(2))", raises(TypeError, "matvec must be callable")),
  Case("cg(MV, jnp.ones(2), tol=0.0)", raises(ValueError, r"tol must lie in \(0, inf\)")),
  Case("cg(MV, jnp.ones(2), tol=nan)", raises(ValueError, "tol must be a number, got NaN")),
  Case("cg(MV, jnp.ones(2), max_iterations=0)", raises(ValueError, r"max_iterations must lie in \[1, inf\)")),
  Case("cg(MV, jnp.ones(2), max_iterations=2.5)", raises(ValueError, "max_iterations must be an integer")),
  Case("cg(MV, jnp.ones(2), init=jnp.ones(3))", raises(ValueError, r"init has shape \(3,\) but rhs has \(2,\)")),
  Case("cg(lambda v: jnp.ones(3), jnp.ones(2))", raises(ValueError, r"matvec\(rhs\) has shape \(3,\) but rhs has \(2,\)")),
  Case("cg(MV, jnp.arange(2))", raises(TypeError, "rhs has dtype int32; it must be real floating point")),
  Case("cg(MV, {})", raises(ValueError, "rhs must hold at least one array")),
  Case("cg(lambda v: jnp.diag(jnp.array([1.0, -1.0])) @ v, jnp.ones(2)).x", returns(lambda x: bool(jnp.all(jnp.isfinite(x))), "indefinite operator: stops, finite, not converged")),
  Case("cg(MV, jnp.array([1.0, nan])).converged", returns(lambda c: not bool(c), "NaN right-hand side: not converged", nan_ok=True)),
  # --- implicit_hypergradient
  Case("hg(3.0, G, X, X)", raises(TypeError, "outer_loss must be a callable")),
  Case("hg(F, None, X, X)", raises(TypeError, "inner_loss must be a callable")),
  Case("hg(F, lambda x, y: y - x, X, X)", raises(TypeError, "inner_loss must return a real floating-point scalar")),
  Case("hg(lambda x: jnp.sum(x), G, X, X)", raises(TypeError, r"outer_loss must be a function \(x, y\) -> scalar")),
  Case("hg(F, G, jnp.arange(2), X)", raises(TypeError, "x has dtype int32")),
  Case("hg(F, G, X, {})", raises(ValueError, "y must hold at least one array")),
  Case("hg(F, G, X, X, init=jnp.ones(3))", raises(ValueError, r"init has shape \(3,\) but y has \(2,\)")),
  Case("hg(F, G, X, X, tol=-1.0)", raises(ValueError, r"tol must lie in \(0, inf\)")),
  Case("hg(F, G, X, X, max_iterations=0)", raises(ValueError, r"max_iterations must lie in \[1, inf\)")),
  Case("hg(F, lambda x, y: -0.5 * jnp.sum((y - x) ** 2), X, X).converged", returns(lambda c: not bool(c), "concave lower level: the solve reports converged=False")),
  Case("hg(F, G, X, X).grad", returns(lambda g: np.allclose(g, [-1.0, 2.0]), "y*(x) = x, f = |y - 1|^2 / 2: grad F = x - 1")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
