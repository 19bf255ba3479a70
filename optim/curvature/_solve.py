"""Matrix-free linear solves on pytrees: conjugate gradients with an ott-style result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from optim._validation import check_floating, check_like, check_scalar

PyTree = Any

__all__ = ["CGResult", "conjugate_gradient"]


class CGResult(NamedTuple):
  """Result of :func:`conjugate_gradient`.

  Attributes:
    x: the last iterate, a pytree like ``rhs``.
    n_iters: CG iterations taken (int32).
    errors: ``(max_iterations + 1,)``, the relative residual
      :math:`\\|b - A x_k\\| / \\|b\\|` of iterate :math:`k` (entry 0 is the starting
      point), the quantity compared with ``tol``; NaN after the stop.
    converged: whether the last relative residual is at most ``tol``.
  """

  x: PyTree
  n_iters: jax.Array
  errors: jax.Array
  converged: jax.Array


def conjugate_gradient(
  matvec: Callable[[PyTree], PyTree],
  rhs: PyTree,
  *,
  init: PyTree | None = None,
  tol: float = 1e-6,
  max_iterations: int = 100,
) -> CGResult:
  """Solve :math:`A x = b` for a symmetric positive-definite operator given by its product.

  Hestenes-Stiefel conjugate gradients on pytrees, from :math:`x_0` (``init``, zero by
  default), :math:`r_0 = p_0 = b - A x_0`:

  .. math::
    \\alpha_k = \\frac{r_k^\\top r_k}{p_k^\\top A p_k},\\quad
    x_{k+1} = x_k + \\alpha_k p_k,\\quad r_{k+1} = r_k - \\alpha_k A p_k,\\quad
    p_{k+1} = r_{k+1} + \\frac{r_{k+1}^\\top r_{k+1}}{r_k^\\top r_k} p_k,

  stopped when :math:`\\|r_k\\| \\le \\text{tol}\\,\\|b\\|` or after ``max_iterations``
  products. Unlike ``jax.scipy.sparse.linalg.cg`` it reports whether the tolerance was
  reached and the residual history, which adaptive-accuracy methods (inexact Newton,
  inexact hypergradients) read. Every product is one call of ``matvec`` (e.g.
  :func:`optim.curvature.hvp` or a :class:`LinearOperator`); no matrix is formed. The
  loop is a ``lax.while_loop``: forward-mode differentiable, not reverse-mode (implicit
  differentiation of the solve is the caller's business, as in
  :func:`optim.bilevel.implicit_hypergradient`).

  A direction of non-positive curvature (:math:`p_k^\\top A p_k \\le 0`, an indefinite or
  singular operator) stops the loop at the current iterate with ``converged=False``; it
  never divides by zero.

  Reference: Hestenes & Stiefel, "Methods of conjugate gradients for solving linear
  systems", J. Res. NBS 49 (1952).

  Args:
    matvec: ``v -> A v`` on pytrees like ``rhs``; ``A`` symmetric positive definite.
    rhs: the right-hand side :math:`b` (a pytree of float arrays).
    init: starting point :math:`x_0` (a pytree like ``rhs``); zero when None.
    tol: relative residual tolerance, > 0.
    max_iterations: cap on the number of products, >= 1.

  Returns:
    :class:`CGResult` ``(x, n_iters, errors, converged)``.

  Raises:
    ValueError: ``tol`` is not positive, ``max_iterations < 1``, ``rhs`` is empty, ``init``
      differs from ``rhs`` in structure or shapes, or ``matvec``'s output does.
    TypeError: ``matvec`` is not callable, ``rhs`` has a non-floating leaf, or ``tol`` /
      ``max_iterations`` is not a real number.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.curvature import conjugate_gradient
    >>> a = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    >>> res = conjugate_gradient(lambda v: a @ v, jnp.array([1.0, 2.0]), tol=1e-6)
    >>> bool(res.converged), int(res.n_iters)
    (True, 2)
    >>> bool(jnp.allclose(a @ res.x, jnp.array([1.0, 2.0]), atol=1e-5))
    True
  """
  where = "conjugate_gradient"
  if not callable(matvec):
    raise TypeError(f"{where}: matvec must be callable, got {type(matvec).__name__}")
  check_scalar(f"{where}: tol", tol, lo=0.0, lo_open=True)
  max_iterations = check_scalar(
    f"{where}: max_iterations", max_iterations, lo=1, integer=True, static=True
  )
  check_floating(rhs, "rhs", where, allow_empty=False)
  if init is None:
    init = otu.tree_zeros_like(rhs)
  else:
    check_like(init, rhs, "init", "rhs", where)
  out = jax.eval_shape(matvec, rhs)
  check_like(out, rhs, "matvec(rhs)", "rhs", where)

  dtype = jnp.result_type(*jax.tree.leaves(rhs))
  bnorm = otu.tree_norm(rhs)
  scale = jnp.where(bnorm > 0, bnorm, 1.0)
  r0 = otu.tree_sub(rhs, matvec(init))
  rr0 = otu.tree_vdot(r0, r0)
  errors0 = jnp.full((max_iterations + 1,), jnp.nan, dtype).at[0].set(jnp.sqrt(rr0) / scale)

  def cond(c):
    k, _, _, _, rr, _, stop = c
    return (k < max_iterations) & (jnp.sqrt(rr) / scale > tol) & ~stop

  def body(c):
    k, x, r, p, rr, errors, _ = c
    ap = matvec(p)
    pap = otu.tree_vdot(p, ap)
    bad = ~(pap > 0)
    alpha = jnp.where(bad, 0.0, rr / jnp.where(bad, 1.0, pap))
    x = otu.tree_add_scale(x, alpha, p)
    r = otu.tree_add_scale(r, -alpha, ap)
    rr_new = otu.tree_vdot(r, r)
    beta = rr_new / jnp.where(rr > 0, rr, 1.0)
    p = otu.tree_add_scale(r, beta, p)
    errors = jnp.where(bad, errors, errors.at[k + 1].set(jnp.sqrt(rr_new) / scale))
    k = jnp.where(bad, k, k + 1)
    rr = jnp.where(bad, rr, rr_new)
    return k, x, r, p, rr, errors, bad

  c = (jnp.int32(0), init, r0, r0, rr0, errors0, jnp.asarray(False))
  k, x, _, _, rr, errors, _ = jax.lax.while_loop(cond, body, c)
  converged = jnp.sqrt(rr) / scale <= tol
  return CGResult(x=x, n_iters=k, errors=errors, converged=converged)
