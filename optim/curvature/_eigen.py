"""Extreme eigenpairs of symmetric linear operators: power iteration and Lanczos."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax.tree_utils as otu
from jax.flatten_util import ravel_pytree

from optim._tree import PROBES, tree_probe, tree_vdot
from optim._validation import as_key, check_choice, check_scalar, renamed_field, renamed_kwargs
from optim.curvature._operators import LinearOperator, check_at_most_dim, check_operator

PyTree = Any

__all__ = ["EigenResult", "LanczosResult", "lanczos", "tridiagonal", "top_eigenvalues"]


class EigenResult(NamedTuple):
  """Result of :func:`top_eigenvalues`.

  Attributes:
    eigenvalues: ``(k,)`` Rayleigh quotients, in the order found (decreasing magnitude
      when every pair converged).
    eigenvectors: a pytree shaped like the domain with a leading axis of size ``k``; unit
      norm, mutually orthogonal.
    converged: ``(k,)`` bool, whether the residual test passed within
      ``max_iterations``.
    n_iters: ``(k,)`` int32, operator products spent on each pair (formerly
      ``iterations``, still readable with a ``DeprecationWarning`` for one release).
    residuals: ``(k,)`` final residual norms :math:`\\|Av - \\lambda v\\|`.
  """

  eigenvalues: jax.Array
  eigenvectors: PyTree
  converged: jax.Array
  n_iters: jax.Array
  residuals: jax.Array

  iterations = renamed_field("iterations", "n_iters")


def _stack_index(stack: PyTree, i) -> PyTree:
  return jax.tree.map(lambda s: s[i], stack)


def _project_out(v: PyTree, basis: PyTree) -> PyTree:
  """``v - U^T (U v)`` where the rows of ``U`` (leading axis) are orthonormal or zero."""
  wide = lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32))
  us, xs = jax.tree.leaves(basis), jax.tree.leaves(v)
  coef = sum(wide(u).reshape(u.shape[0], -1) @ wide(x).reshape(-1) for u, x in zip(us, xs))
  return jax.tree.map(
    lambda x, u: x - (coef @ wide(u).reshape(u.shape[0], -1)).reshape(x.shape).astype(x.dtype),
    v,
    basis,
  )


def _normalize(v: PyTree) -> tuple[PyTree, jax.Array]:
  norm = jnp.sqrt(tree_vdot(v, v))
  safe = jnp.where(norm > 0, norm, 1)
  return jax.tree.map(lambda x: (x / safe).astype(x.dtype), v), norm


@renamed_kwargs(max_iters="max_iterations")
def top_eigenvalues(
  op: LinearOperator,
  *,
  key: Any,
  k: int = 1,
  max_iterations: int = 100,
  tol: float = 1e-6,
) -> EigenResult:
  """The ``k`` eigenvalues of largest magnitude by power iteration with deflation.

  For the :math:`j`-th pair, iterate on the deflated operator
  :math:`P_j A P_j` with :math:`P_j = I - \\sum_{i<j} u_i u_i^\\top`:

  .. math::
    w = P_j A P_j v, \\quad \\lambda = v^\\top w, \\quad v \\leftarrow w / \\|w\\|,

  stopping when the residual :math:`\\|w - \\lambda v\\| \\le \\mathrm{tol}\\,|\\lambda|`
  (then :math:`|\\lambda - \\lambda_{\\mathrm{true}}| \\lesssim \\|r\\|^2/\\mathrm{gap}`) or after
  ``max_iterations`` products. Power iteration converges to the eigenvalue of largest
  *magnitude*; for a Hessian with a large negative eigenvalue that one comes first. A
  pair :math:`\\pm\\lambda` of equal magnitude does not converge (``converged=False``).
  The loop over pairs and the iteration are ``lax`` loops: one compilation for any
  ``k``. A zero operator gives eigenvalue ``0``, ``converged=True``, never NaN.

  Args:
    op: a symmetric :class:`LinearOperator`.
    key: PRNG key for the (Gaussian) start vectors (typed key, raw ``uint32`` key or int
      seed).
    k: number of eigenpairs, a static integer between 1 and the operator's dimension.
    max_iterations: maximum operator products per pair, a static integer (>= 1; formerly
      ``max_iters``).
    tol: relative residual tolerance (>= 0).

  Returns:
    An :class:`EigenResult`.

  Raises:
    ValueError: ``k`` below 1 or above the operator's dimension, ``max_iterations < 1``,
      or a negative ``tol``.
    TypeError: ``op`` is not a :class:`LinearOperator`, or ``k``/``max_iterations`` is
      traced.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.curvature import LinearOperator, top_eigenvalues
    >>> d = jnp.array([1.0, -4.0, 2.0, 0.5])
    >>> op = LinearOperator(lambda v: d * v, jax.ShapeDtypeStruct((4,), jnp.float32))
    >>> top_eigenvalues(op, key=jax.random.key(0), k=2, max_iterations=500).eigenvalues
    Array([-4.,  2.], dtype=float32)

  References:
    Yao, Gholami, Keutzer & Mahoney, "PyHessian: Neural Networks Through the Lens of the
    Hessian", arXiv:1912.07145 (Alg. 1). Golub & Van Loan, "Matrix Computations", 4th ed.,
    Sec. 8.2.1.
  """
  check_operator(op, "top_eigenvalues")
  k = check_scalar("k", k, lo=1, integer=True, static=True)
  check_at_most_dim("k", k, op)
  max_iterations = check_scalar("max_iterations", max_iterations, lo=1, integer=True, static=True)
  check_scalar("tol", tol, lo=0)
  key = as_key(key)
  dtype = op.dtype
  basis0 = jax.tree.map(lambda x: jnp.zeros((k, *x.shape), x.dtype), op.like)

  def one_pair(j, carry):
    basis, lams, conv, iters, res = carry
    v0, _ = _normalize(
      _project_out(tree_probe(jax.random.fold_in(key, j), op.like, "gaussian"), basis)
    )

    def cond(state):
      it, _, _, r, done = state
      return (it < max_iterations) & ~done

    def body(state):
      it, v, _, _, _ = state
      w = _project_out(op(v), basis)
      lam = tree_vdot(v, w).astype(dtype)
      r = jnp.sqrt(tree_vdot(*(2 * [jax.tree.map(lambda a, b: a - lam.astype(a.dtype) * b, w, v)])))
      v_new, w_norm = _normalize(w)
      # Keep v when A v = 0 (zero operator on this subspace): the pair (0, v) is exact.
      v_new = otu.tree_where(w_norm > 0, v_new, v)
      done = r <= tol * jnp.abs(lam)
      v_out = otu.tree_where(done, v, v_new)
      return it + 1, v_out, lam, r.astype(dtype), done

    zero = jnp.zeros((), dtype)
    it, v, lam, r, done = jax.lax.while_loop(
      cond, body, (jnp.zeros((), jnp.int32), v0, zero, jnp.asarray(jnp.inf, dtype), False)
    )
    basis = jax.tree.map(lambda b, x: b.at[j].set(x), basis, v)
    return (
      basis,
      lams.at[j].set(lam),
      conv.at[j].set(done),
      iters.at[j].set(it),
      res.at[j].set(r),
    )

  init = (
    basis0,
    jnp.zeros((k,), dtype),
    jnp.zeros((k,), bool),
    jnp.zeros((k,), jnp.int32),
    jnp.zeros((k,), dtype),
  )
  basis, lams, conv, iters, res = jax.lax.fori_loop(0, k, one_pair, init)
  return EigenResult(lams, basis, conv, iters, res)


class LanczosResult(NamedTuple):
  """Result of :func:`lanczos`.

  Attributes:
    alphas: ``(m,)`` diagonal of the tridiagonal matrix :math:`T`.
    betas: ``(m - 1,)`` off-diagonal of :math:`T`.
    basis: the Lanczos vectors, a pytree shaped like the domain with a leading axis of
      size ``m`` (rows past a breakdown are zero).
    n_iters: int32, the number of valid steps (``m`` unless the Krylov space became
      invariant earlier; then :math:`T` is block diagonal with a zero trailing block whose
      Ritz values carry zero quadrature weight). Formerly ``num_steps``, still readable
      with a ``DeprecationWarning`` for one release.
    converged: bool, whether the run found an invariant Krylov space (a breakdown, at the
      last step included): the Ritz values are then exact eigenvalues of :math:`A`.
  """

  alphas: jax.Array
  betas: jax.Array
  basis: PyTree
  n_iters: jax.Array
  converged: jax.Array

  num_steps = renamed_field("num_steps", "n_iters")


def tridiagonal(result: LanczosResult) -> jax.Array:
  """The dense ``(m, m)`` tridiagonal matrix :math:`T = V^\\top A V` of a Lanczos run.

  .. math::
    T = \\begin{pmatrix} \\alpha_1 & \\beta_1 & & \\\\ \\beta_1 & \\alpha_2 & \\ddots & \\\\
    & \\ddots & \\ddots & \\beta_{m-1} \\\\ & & \\beta_{m-1} & \\alpha_m \\end{pmatrix};

  its eigenvalues are the Ritz values of the run.

  Args:
    result: a :class:`LanczosResult` from :func:`lanczos`.

  Returns:
    The ``(m, m)`` matrix :math:`T`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.curvature import LinearOperator, lanczos, tridiagonal
    >>> op = LinearOperator(lambda v: 2.0 * v, jax.ShapeDtypeStruct((3,), jnp.float32))
    >>> tridiagonal(lanczos(op, key=0, num_iterations=2))  # A = 2I: invariant after one step
    Array([[2., 0.],
           [0., 0.]], dtype=float32)

  References:
    Golub & Van Loan, "Matrix Computations", 4th ed., Sec. 10.1.
  """
  return jnp.diag(result.alphas) + jnp.diag(result.betas, 1) + jnp.diag(result.betas, -1)


def _lanczos_flat(op: LinearOperator, key, num_iterations: int, probe: str, breakdown_tol):
  # Full reorthogonalization is a product with the (m, P) matrix of stored Lanczos
  # vectors, so the vectors are raveled into one flat array for the duration of the run.
  flat0, unravel = ravel_pytree(otu.tree_zeros_like(op.like))
  dim = flat0.shape[0]
  dtype = jnp.promote_types(flat0.dtype, jnp.float32)
  eps = jnp.finfo(dtype).eps
  tol = 100 * eps if breakdown_tol is None else breakdown_tol
  matvec = lambda x: ravel_pytree(op(unravel(x.astype(flat0.dtype))))[0].astype(dtype)

  q0 = ravel_pytree(tree_probe(key, op.like, probe))[0].astype(dtype)
  q0 = q0 / jnp.linalg.norm(q0)
  basis = jnp.zeros((num_iterations + 1, dim), dtype).at[0].set(q0)

  def step(carry, j):
    basis, q, scale, broken, steps = carry
    w = matvec(q)
    alpha = jnp.vdot(q, w)
    # Classical Gram-Schmidt against every stored vector, twice ("twice is enough"); this
    # subtracts alpha q_j and beta q_{j-1} along with the rounding drift.
    w = w - basis.T @ (basis @ w)
    w = w - basis.T @ (basis @ w)
    beta = jnp.linalg.norm(w)
    scale = jnp.maximum(scale, jnp.maximum(jnp.abs(alpha), beta))
    steps = steps + jnp.where(broken, 0, 1).astype(jnp.int32)
    broken = broken | (beta <= tol * scale)
    q_next = jnp.where(broken, jnp.zeros_like(w), w / jnp.where(broken, 1, beta))
    beta = jnp.where(broken, jnp.zeros_like(beta), beta)
    # Row m is scratch space for the unused last vector: an unconditional in-place update
    # (a lax.cond here made XLA copy the whole (m, P) basis every step).
    basis = jax.lax.dynamic_update_index_in_dim(basis, q_next, j + 1, axis=0)
    return (basis, q_next, scale, broken, steps), (alpha, beta)

  init = (basis, q0, jnp.zeros((), dtype), jnp.zeros((), bool), jnp.zeros((), jnp.int32))
  (basis, _, _, broken, steps), (alphas, betas) = jax.lax.scan(
    step, init, jnp.arange(num_iterations, dtype=jnp.int32)
  )
  unravel_fn = lambda x: unravel(x.astype(flat0.dtype))
  return alphas, betas[:-1], basis[:num_iterations], steps, broken, unravel_fn


@renamed_kwargs(kind="probe", num_iters="num_iterations")
def lanczos(
  op: LinearOperator,
  *,
  key: Any,
  num_iterations: int,
  probe: str = "gaussian",
  breakdown_tol: float | None = None,
) -> LanczosResult:
  """Lanczos tridiagonalization with full reorthogonalization and a fixed trip count.

  From a random unit vector :math:`q_1`, build an orthonormal basis
  :math:`V_m = [q_1, \\dots, q_m]` of the Krylov space
  :math:`\\mathcal{K}_m(A, q_1)` with

  .. math::
    \\beta_j q_{j+1} = (I - V_j V_j^\\top) A q_j, \\qquad
    \\alpha_j = q_j^\\top A q_j, \\qquad T = V_m^\\top A V_m = \\mathrm{tridiag}(\\beta, \\alpha,
    \\beta).

  Every new vector is orthogonalized against all previous ones (twice), so the Ritz
  values (eigenvalues of :math:`T`) carry no spurious copies. The loop is a ``lax.scan``
  of exactly ``num_iterations`` steps. **Breakdown**: when
  :math:`\\beta_j \\le \\mathrm{tol} \\cdot \\max(|\\alpha|, \\beta)` the Krylov space is
  invariant; the run stops extending it (later :math:`\\alpha, \\beta` and basis rows are
  zero), so :math:`T` stays consistent and exact on that space, ``n_iters`` records
  where it stopped and ``converged`` is set. With ``num_iterations`` equal to the
  dimension, the Ritz values are all eigenvalues of :math:`A`.

  Args:
    op: a symmetric :class:`LinearOperator`.
    key: PRNG key for the start vector (typed key, raw ``uint32`` key or int seed).
    num_iterations: :math:`m`, a static integer between 1 and the operator's dimension
      (formerly ``num_iters``).
    probe: start-vector distribution, ``"gaussian"`` or ``"rademacher"`` (formerly
      ``kind``).
    breakdown_tol: relative breakdown threshold (>= 0); default ``100 * eps`` of the dtype.

  Returns:
    A :class:`LanczosResult` ``(alphas, betas, basis, n_iters, converged)``; see
    :func:`tridiagonal`.

  Raises:
    ValueError: ``num_iterations`` below 1 or above the operator's dimension, an unknown
      ``probe``, or a negative ``breakdown_tol``.
    TypeError: ``op`` is not a :class:`LinearOperator`, or ``num_iterations`` is traced.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.curvature import LinearOperator, lanczos, tridiagonal
    >>> d = jnp.array([3.0, 1.0, 2.0])
    >>> op = LinearOperator(lambda v: d * v, jax.ShapeDtypeStruct((3,), jnp.float32))
    >>> res = lanczos(op, key=jax.random.key(0), num_iterations=3)
    >>> jnp.round(jnp.linalg.eigvalsh(tridiagonal(res)), 4)
    Array([1., 2., 3.], dtype=float32)

  References:
    Lanczos, "An iteration method for the solution of the eigenvalue problem of linear
    differential and integral operators", J. Res. Nat. Bur. Standards 45, 1950. Golub &
    Van Loan, "Matrix Computations", 4th ed., Sec. 10.1 and 10.3.1.
  """
  check_operator(op, "lanczos")
  num_iterations = check_scalar("num_iterations", num_iterations, lo=1, integer=True, static=True)
  check_at_most_dim("num_iterations", num_iterations, op)
  check_choice("probe", probe, PROBES)
  if breakdown_tol is not None:
    check_scalar("breakdown_tol", breakdown_tol, lo=0)
  key = as_key(key)
  alphas, betas, basis, steps, broken, unravel = _lanczos_flat(
    op, key, num_iterations, probe, breakdown_tol
  )
  return LanczosResult(alphas, betas, jax.vmap(unravel)(basis), steps, broken)
