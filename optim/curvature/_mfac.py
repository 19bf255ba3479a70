"""M-FAC, static algorithm: products with the inverse of a damped empirical Fisher.

The empirical Fisher of ``m`` gradients :math:`g_1, \\dots, g_m` (rows of ``G``),

.. math::
  \\hat F = \\lambda I + \\frac{1}{m} \\sum_{i=1}^m g_i g_i^\\top
         = \\lambda I + \\frac{1}{m} G^\\top G,

is never formed. By the Woodbury identity its inverse is a rank-``m`` correction of
:math:`I / \\lambda`:

.. math::
  \\hat F^{-1} = \\frac{1}{\\lambda}\\Big(I - G^\\top K^{-1} G\\Big), \\qquad
  K = m \\lambda I_m + G G^\\top = L L^\\top .

With :math:`W = L^{-1} G / \\sqrt{\\lambda}` (``m x d``), :math:`\\hat F^{-1} x = x /
\\lambda - W^\\top (W x)` and :math:`\\operatorname{diag}(\\hat F^{-1}) = 1/\\lambda -
\\sum_i W_{i\\cdot}^2`. The rows of ``W`` are the paper's precomputed vectors
:math:`H_{i-1}^{-1} g_i / \\sqrt{m + g_i^\\top H_{i-1}^{-1} g_i}` of the recursive
rank-one (Sherman-Morrison) construction (Frantar et al., 2021, Sec. 3.1): computing them
through the Gram matrix and a Cholesky factorisation turns the ``m`` sequential rank-one
updates into two ``O(m^2 d)`` matrix products and one ``O(m^3)`` factorisation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from optim._validation import check_floating, check_like, check_scalar, is_traced
from optim.curvature._operators import LinearOperator, cast_like, shape_dtype_tree

PyTree = Any

__all__ = ["MFACInverse", "mfac_ihvp", "obs_saliency"]


def _num_rows(grads: PyTree) -> int:
  leaves = jax.tree.leaves(grads)
  if not leaves:
    raise ValueError("mfac_ihvp: grads is an empty pytree")
  ms = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
  if len(ms) != 1 or None in ms:
    raise ValueError(
      "mfac_ihvp: every leaf of grads must carry the m gradients on a leading axis of the "
      f"same length; got leading sizes {sorted(str(m) for m in ms)}"
    )
  return ms.pop()


def _acc_dtype(tree: PyTree):
  return jnp.result_type(jnp.float32, *[x.dtype for x in jax.tree.leaves(tree)])


def stacked_matvec(stack: PyTree, x: PyTree, dtype) -> jax.Array:
  """``G x`` for ``G`` stored as leaves ``(m, *shape)``: an ``(m,)`` vector."""
  return sum(
    (
      jnp.tensordot(s.astype(dtype), xi.astype(dtype), axes=xi.ndim)
      for s, xi in zip(jax.tree.leaves(stack), jax.tree.leaves(x))
    ),
    start=jnp.zeros(_num_rows(stack), dtype),
  )


def stacked_rmatvec(stack: PyTree, y: jax.Array, dtype) -> PyTree:
  """``G^T y`` for ``G`` stored as leaves ``(m, *shape)``, computed and returned in ``dtype``."""
  y = y.astype(dtype)
  return jax.tree.map(lambda s: jnp.tensordot(y, s.astype(dtype), axes=1), stack)


def stacked_gram(stack: PyTree, dtype) -> jax.Array:
  """``G G^T`` (``m x m``) for ``G`` stored as leaves ``(m, *shape)``."""
  m = _num_rows(stack)
  out = jnp.zeros((m, m), dtype)
  for s in jax.tree.leaves(stack):
    flat = s.reshape(m, -1).astype(dtype)
    out = out + flat @ flat.T
  return out


class MFACInverse(NamedTuple):
  r"""The inverse damped empirical Fisher :math:`(\lambda I + G^\top G / m)^{-1}`.

  Built by :func:`mfac_ihvp`. A pytree (it can cross ``jit`` boundaries). Call it on a
  vector (``inv(x)``) for the product, ``inv.diagonal()`` for the diagonal, and
  ``inv.as_operator()`` for an :class:`optim.curvature.LinearOperator`.

  Attributes:
    basis: :math:`W = L^{-1} G / \sqrt\lambda`, leaves ``(m, *leaf_shape)``.
    damping: :math:`\lambda`.
  """

  basis: PyTree
  damping: jax.Array

  def __call__(self, x: PyTree) -> PyTree:
    """:math:`\\hat F^{-1} x = x/\\lambda - W^\\top (W x)`, in ``O(m d)``."""
    like = jax.tree.map(lambda w: jax.ShapeDtypeStruct(w.shape[1:], w.dtype), self.basis)
    x = cast_like(x, like, "x", "the M-FAC domain")
    dtype = _acc_dtype(self.basis)
    wx = stacked_matvec(self.basis, x, dtype)
    correction = stacked_rmatvec(self.basis, wx, dtype)
    return jax.tree.map(
      lambda xi, ci: (xi.astype(dtype) / self.damping - ci).astype(xi.dtype),
      x,
      correction,
    )

  def diagonal(self) -> PyTree:
    """:math:`\\operatorname{diag}(\\hat F^{-1}) = 1/\\lambda - \\sum_i W_{i\\cdot}^2`."""
    dtype = _acc_dtype(self.basis)
    return jax.tree.map(
      lambda w: (1 / self.damping - jnp.sum(jnp.square(w.astype(dtype)), axis=0)).astype(w.dtype),
      self.basis,
    )

  def as_operator(self) -> LinearOperator:
    """This inverse as a :class:`~optim.curvature.LinearOperator` (for the estimators)."""
    like = jax.tree.map(lambda w: jax.ShapeDtypeStruct(w.shape[1:], w.dtype), self.basis)
    return LinearOperator(matvec=self.__call__, like=shape_dtype_tree(like))


def mfac_ihvp(grads: PyTree, damping: float = 1e-5) -> MFACInverse:
  r"""Precomputes inverse-empirical-Fisher products from ``m`` gradients (static M-FAC).

  .. math::
    \hat F^{-1} = \Big(\lambda I + \frac{1}{m} \sum_{i=1}^m g_i g_i^\top\Big)^{-1}
      = \frac{1}{\lambda} I - W^\top W, \qquad
      W = L^{-1} G / \sqrt{\lambda}, \quad L L^\top = m \lambda I + G G^\top .

  Cost: the Gram matrix and ``W`` take ``O(m^2 d)``, the Cholesky factor ``O(m^3)``; each
  product then costs ``O(m d)`` and the diagonal ``O(m d)``, with ``m d`` memory (``W``
  replaces ``G``). Accumulation is in float32 at least (float64 under x64 with float64
  gradients).

  **Numerical hazards.** The factorisation fails when :math:`m\lambda` is below the
  round-off of :math:`G G^\top` in the accumulation dtype (``m > d`` makes the Gram matrix
  singular, so only the damping keeps :math:`K` positive definite). With concrete
  arguments that, and non-finite gradients, raise a ``ValueError`` naming ``damping`` or
  ``grads``; under ``jit`` they cannot raise and the returned inverse is NaN (poisoned,
  loud), as it is for a traced ``damping <= 0``. Before that point the Woodbury form
  :math:`x/\lambda - W^\top W x` loses accuracy by cancellation along the span of the
  gradients: the relative error there is about
  :math:`\epsilon_{\mathrm{mach}}\,(1 + \|G\|_2^2 / (m \lambda))`, so keep
  :math:`\lambda` within a few decades of the Fisher's largest eigenvalue in float32.

  Args:
    grads: the gradients, a pytree whose leaves stack the ``m`` gradients on a leading
      axis (leaf shape ``(m, *param_shape)``), e.g. ``jax.vmap(jax.grad(loss),
      in_axes=(None, 0))(params, batch)`` for per-example gradients.
    damping: :math:`\lambda > 0`.

  Returns:
    An :class:`MFACInverse`: ``inv(x)`` is :math:`\hat F^{-1} x` and ``inv.diagonal()``
    the diagonal of :math:`\hat F^{-1}`, both pytrees shaped like one gradient.

  Raises:
    ValueError: an empty ``grads``, leaves without a common leading axis or with ``m = 0``
      rows; non-finite concrete gradients; a non-positive or non-finite concrete damping,
      or one too small for the gradients' scale (the Cholesky factorisation fails).
    TypeError: a non-floating leaf of ``grads``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.curvature import mfac_ihvp
    >>> g = jax.random.normal(jax.random.key(0), (8, 5))  # m = 8 gradients, d = 5
    >>> inv = mfac_ihvp(g, damping=0.1)
    >>> dense = jnp.linalg.inv(0.1 * jnp.eye(5) + g.T @ g / 8)
    >>> x = jnp.arange(5.0)
    >>> bool(jnp.allclose(inv(x), dense @ x, rtol=1e-4))
    True

  References:
    Frantar, Kurtic, Alistarh, "M-FAC: Efficient Matrix-Free Approximations of
    Second-Order Information", NeurIPS 2021, arXiv:2107.03356 (Sec. 3.1, static
    algorithm).
  """
  check_scalar("damping", damping, lo=0, lo_open=True)
  check_floating(grads, "grads", "mfac_ihvp", allow_empty=False)
  m = _num_rows(grads)
  if m == 0:
    raise ValueError("mfac_ihvp: grads holds no gradient (leading axis m = 0); need m >= 1")
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    if not is_traced(g) and not bool(jnp.all(jnp.isfinite(g))):
      raise ValueError(f"mfac_ihvp: grads{jax.tree_util.keystr(path)} has non-finite entries")
  dtype = _acc_dtype(grads)
  damping = jnp.asarray(damping, dtype)
  gram = stacked_gram(grads, dtype)
  chol = jnp.linalg.cholesky(m * damping * jnp.eye(m, dtype=dtype) + gram)
  if not is_traced(chol) and not bool(jnp.all(jnp.isfinite(chol))):
    raise ValueError(
      f"mfac_ihvp: damping={float(damping):g} is too small for these gradients: "
      f"m * damping = {m * float(damping):g} is below the round-off of the Gram matrix "
      f"(largest entry {float(jnp.max(jnp.abs(gram))):g}) in {dtype}, so it is not "
      "numerically positive definite; increase damping (or use float64 gradients)"
    )

  def solve(g):
    flat = g.reshape(m, -1).astype(dtype)
    w = jsl.solve_triangular(chol, flat, lower=True) / jnp.sqrt(damping)
    return w.reshape(g.shape).astype(g.dtype)

  return MFACInverse(basis=jax.tree.map(solve, grads), damping=damping)


def obs_saliency(params: PyTree, inverse_diagonal: PyTree) -> PyTree:
  r"""Optimal Brain Surgeon saliency of removing each weight on its own.

  .. math::
    \rho_q = \frac{w_q^2}{2 \, [\hat F^{-1}]_{qq}},

  the increase of the local quadratic model of the loss when :math:`w_q` is set to zero
  and the other weights are corrected optimally by
  :math:`\delta w = -\frac{w_q}{[\hat F^{-1}]_{qq}} \hat F^{-1} e_q`. A non-positive
  diagonal entry (impossible for an exact damped Fisher, possible after round-off) gives
  saliency ``+inf``: that weight is never chosen for pruning. A NaN entry (of ``params``
  or of the diagonal) gives NaN: it is propagated, not hidden as ``inf``.

  Args:
    params: the weights :math:`w`.
    inverse_diagonal: :math:`\operatorname{diag}(\hat F^{-1})`, e.g.
      ``mfac_ihvp(grads).diagonal()``.

  Returns:
    The saliencies, shaped like ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.curvature import obs_saliency
    >>> obs_saliency(jnp.array([1.0, 2.0]), jnp.array([0.5, 4.0]))
    Array([1. , 0.5], dtype=float32)

  References:
    Hassibi, Stork, "Second order derivatives for network pruning: Optimal Brain
    Surgeon", NeurIPS 1992; Frantar et al., arXiv:2107.03356, Sec. 4 (pruning with
    M-FAC).
  """
  check_floating(params, "params", "obs_saliency", allow_empty=False)
  check_like(inverse_diagonal, params, "inverse_diagonal", "params", "obs_saliency")

  def one(w, d):
    d = jnp.asarray(d)
    ok = d > 0
    nonpositive = jnp.where(jnp.isnan(d), jnp.nan, jnp.inf)
    return jnp.where(ok, jnp.square(w) / (2 * jnp.where(ok, d, 1)), nonpositive).astype(w.dtype)

  return jax.tree.map(one, params, inverse_diagonal)
