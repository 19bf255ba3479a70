"""Sinkhorn-Newton-Sparse: Sinkhorn warm start, then sparse Newton (Tang et al., 2024)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from optim._validation import check_scalar, is_traced, renamed_field, renamed_kwargs

__all__ = ["SNSResult", "sinkhorn_newton_sparse", "sq_euclidean_cost"]

_BINS, _SPAN = 1024, 64.0  # the sparsification histogram: bins over 64 nats of log P


class SNSResult(NamedTuple):
  """Result of :func:`sinkhorn_newton_sparse` (formerly ``SNSOutput``).

  Attributes:
    f: row potential, shape ``(n,)`` (ott-jax's convention: the plan is
      :math:`P_{ij} = \\exp((f_i + g_j - C_{ij}) / \\varepsilon)`).
    g: column potential, shape ``(m,)``.
    plan: the transport plan :math:`P`, shape ``(n, m)``.
    reg_ot_cost: the entropic OT cost in ott-jax's convention,
      :math:`\\langle a, f\\rangle + \\langle b, g\\rangle - \\varepsilon(\\sum P - 1)
      + \\varepsilon (H(a) + H(b))` (equal to ott's ``reg_ot_cost`` at convergence).
    errors: marginal error :math:`\\|P 1 - a\\|_1 + \\|P^\\top 1 - b\\|_1` at the start of
      every iteration (Sinkhorn iterations first, then Newton iterations), shape
      ``(sinkhorn_num_iterations + max_iterations + 1,)``; entries after the last
      iteration are NaN.
    n_iters: Newton iterations taken (int32; formerly ``num_newton``, still readable with
      a ``DeprecationWarning`` for one release). The final error is
      ``errors[sinkhorn_num_iterations + n_iters]``.
    converged: whether the final marginal error is below ``tol``.
  """

  f: jax.Array
  g: jax.Array
  plan: jax.Array
  reg_ot_cost: jax.Array
  errors: jax.Array
  n_iters: jax.Array
  converged: jax.Array

  num_newton = renamed_field("num_newton", "n_iters")


def sq_euclidean_cost(x: jax.Array, y: jax.Array) -> jax.Array:
  """Squared Euclidean cost matrix between two point clouds (ott-jax's ``PointCloud`` cost).

  .. math::
    C_{ij} = \\|x_i - y_j\\|_2^2 = \\|x_i\\|^2 + \\|y_j\\|^2 - 2 \\langle x_i, y_j\\rangle.

  Args:
    x: points ``(n, d)``.
    y: points ``(m, d)``.

  Returns:
    ``(n, m)`` costs (clipped at 0 against round-off).

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.ot import sq_euclidean_cost
    >>> sq_euclidean_cost(jnp.zeros((1, 2)), jnp.array([[3.0, 4.0]]))
    Array([[25.]], dtype=float32)

  References:
    Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013,
    arXiv:1306.0895.
  """
  for name, z in (("x", x), ("y", y)):
    if jnp.ndim(z) != 2:
      raise ValueError(f"sq_euclidean_cost: {name} must be (num_points, dim), got {jnp.shape(z)}")
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"sq_euclidean_cost: x and y dims differ ({x.shape[1]} vs {y.shape[1]})")
  sq = jnp.sum(x**2, 1)[:, None] + jnp.sum(y**2, 1)[None, :] - 2.0 * x @ y.T
  return jnp.maximum(sq, 0.0)


def _check_weights(name: str, w: Any, size: int, dtype) -> jax.Array:
  if w is None:
    return jnp.full((size,), 1.0 / size, dtype)
  w = jnp.asarray(w)
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise TypeError(f"sinkhorn_newton_sparse: {name} must be floating point, got {w.dtype}")
  if w.shape != (size,):
    raise ValueError(f"sinkhorn_newton_sparse: {name} must have shape ({size},), got {w.shape}")
  if not is_traced(w):
    wn = np.asarray(w, np.float64)
    if not np.all(np.isfinite(wn)) or np.any(wn <= 0):
      raise ValueError(
        f"sinkhorn_newton_sparse: {name} must be finite and > 0 (drop zero-weight points), "
        f"got min {wn.min() if wn.size else 'empty'}"
      )
    if abs(wn.sum() - 1.0) > 1e-6:
      raise ValueError(f"sinkhorn_newton_sparse: {name} must sum to 1, got {wn.sum():.9g}")
  return w.astype(dtype)


@renamed_kwargs(
  num_sinkhorn="sinkhorn_num_iterations",
  max_newton="max_iterations",
  threshold="tol",
  cg_maxiter="cg_max_iterations",
  max_linesearch="linesearch_max_iterations",
)
def sinkhorn_newton_sparse(
  cost: jax.Array,
  a: jax.Array | None = None,
  b: jax.Array | None = None,
  *,
  epsilon: float,
  sinkhorn_num_iterations: int = 20,
  max_iterations: int = 50,
  rho: float = 0.05,
  tol: float = 1e-6,
  cg_max_iterations: int = 100,
  cg_tol: float = 1e-10,
  linesearch_max_iterations: int = 30,
) -> SNSResult:
  r"""Entropic optimal transport by Sinkhorn-Newton-Sparse (SNS).

  Solves :math:`\min_P \langle C, P\rangle - \varepsilon H(P)` s.t. :math:`P 1 = a`,
  :math:`P^\top 1 = b` through its dual, the concave Lyapunov potential (paper, Eq. 3, in
  ott-jax's convention :math:`\varepsilon = 1/\eta`, shifted by a constant)

  .. math::
    L(f, g) = \langle a, f\rangle + \langle b, g\rangle
      - \varepsilon \sum_{ij} e^{(f_i + g_j - C_{ij})/\varepsilon}, \qquad
    \nabla L = \begin{pmatrix} a - P 1 \\ b - P^\top 1 \end{pmatrix}, \quad
    -\nabla^2 L = \frac{1}{\varepsilon}
      \begin{pmatrix} \operatorname{diag}(P 1) & P \\ P^\top & \operatorname{diag}(P^\top 1)
      \end{pmatrix}.

  Algorithm 1 of the paper: ``sinkhorn_num_iterations`` log-domain Sinkhorn iterations
  (the warm start), then at most ``max_iterations`` Newton iterations

  .. math::
    M = \frac{1}{\varepsilon}
      \begin{pmatrix} \operatorname{diag}(P 1) & \operatorname{Sparsify}(P, \rho) \\
      \cdot^\top & \operatorname{diag}(P^\top 1) \end{pmatrix}, \quad
    \Delta = M^{-1} \nabla L \ \text{(conjugate gradient)}, \quad
    (f, g) \leftarrow (f, g) + \alpha \Delta,

  where :math:`\operatorname{Sparsify}(P, \rho)` keeps the :math:`\lceil \rho n m\rceil`
  largest entries of :math:`P` (the paper's keep-:math:`\rho` rule; the diagonal blocks
  stay exact) and :math:`\alpha` comes from a backtracking (Armijo) line search on
  :math:`L` from :math:`\alpha = 1`. Since the kept entries are nonnegative and at most
  :math:`P`, :math:`M` is diagonally dominant, hence positive semi-definite, and the
  direction is one of ascent. Newton stops when the marginal error
  :math:`\|P 1 - a\|_1 + \|P^\top 1 - b\|_1` drops below ``tol`` (ott-jax's
  ``threshold``). The sparse product
  is a gather and a ``segment_sum`` over the kept entries, so one CG iteration costs
  :math:`O(\rho n m)`, not :math:`O(nm)`.

  Everything runs in one ``jit``-able function (``lax.scan`` for the warm start,
  ``lax.while_loop`` for Newton) with a preallocated error history.

  Args:
    cost: cost matrix :math:`C`, ``(n, m)``, finite floating point (e.g.
      :func:`sq_euclidean_cost` of two point clouds). A concrete NaN/inf is a ``ValueError``;
      a traced one gives NaN potentials (loud, not silently wrong).
    a: source weights ``(n,)``, positive, summing to 1 (default uniform).
    b: target weights ``(m,)``, positive, summing to 1 (default uniform).
    epsilon: entropic regularization :math:`\varepsilon > 0` (absolute, as ott-jax's
      ``Geometry(cost_matrix, epsilon=...)``).
    sinkhorn_num_iterations: :math:`N_1 \ge 0`, warm-start Sinkhorn iterations (static;
      formerly ``num_sinkhorn``).
    max_iterations: :math:`N_2 \ge 0`, the most Newton iterations (static; formerly
      ``max_newton``).
    rho: fraction of the entries of :math:`P` kept in the sparsified Hessian, in (0, 1].
    tol: target marginal error (> 0; formerly ``threshold``).
    cg_max_iterations: the most CG iterations per Newton step (static; formerly
      ``cg_maxiter``).
    cg_tol: CG relative residual tolerance.
    linesearch_max_iterations: the most halvings of :math:`\alpha` (static; formerly
      ``max_linesearch``); if none gives an Armijo increase the step is not taken and the
      iteration stops making progress (the error history then shows a plateau).

  Returns:
    An :class:`SNSResult` (potentials, plan, cost, error history, Newton iterations, and
    whether ``tol`` was reached).

  Raises:
    ValueError: a cost that is not 2-D, not finite or empty; weights of the wrong shape, not
      positive or not summing to 1; bad hyperparameters.
    TypeError: non-floating cost or weights, non-numeric hyperparameters.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.ot import sinkhorn_newton_sparse, sq_euclidean_cost
    >>> x = jax.random.normal(jax.random.key(0), (8, 2))
    >>> y = jax.random.normal(jax.random.key(1), (8, 2)) + 1.0
    >>> cost = sq_euclidean_cost(x, y)
    >>> out = sinkhorn_newton_sparse(cost, epsilon=0.5, rho=0.5, tol=1e-4)
    >>> bool(out.converged), out.plan.shape
    (True, (8, 8))

  References:
    Tang, Shavlovsky, Rahmanian, Tardini, Thekumparampil, Xiao, Ying, "Accelerating Sinkhorn
    Algorithm with Sparse Newton Iterations", ICLR 2024, arXiv:2401.12253 (Algorithm 1).
  """
  if not isinstance(cost, (jax.Array, np.ndarray)):
    raise TypeError(
      f"sinkhorn_newton_sparse: cost must be an (n, m) array, got {type(cost).__name__}"
    )
  if not jnp.issubdtype(cost.dtype, jnp.floating):
    raise TypeError(f"sinkhorn_newton_sparse: cost must be floating point, got {cost.dtype}")
  if cost.ndim != 2 or cost.size == 0:
    raise ValueError(
      f"sinkhorn_newton_sparse: cost must be a non-empty (n, m) matrix, got {cost.shape}"
    )
  if not is_traced(cost) and not np.all(np.isfinite(np.asarray(cost))):
    raise ValueError("sinkhorn_newton_sparse: cost has NaN or infinite entries")
  n, m = cost.shape
  a = _check_weights("a", a, n, cost.dtype)
  b = _check_weights("b", b, m, cost.dtype)
  check_scalar("epsilon", epsilon, lo=0.0, lo_open=True)
  sinkhorn_num_iterations = check_scalar(
    "sinkhorn_num_iterations", sinkhorn_num_iterations, lo=0, integer=True, static=True
  )
  max_iterations = check_scalar("max_iterations", max_iterations, lo=0, integer=True, static=True)
  rho = check_scalar("rho", rho, lo=0.0, hi=1.0, lo_open=True, static=True)
  check_scalar("tol", tol, lo=0.0, lo_open=True)
  cg_max_iterations = check_scalar(
    "cg_max_iterations", cg_max_iterations, lo=1, integer=True, static=True
  )
  check_scalar("cg_tol", cg_tol, lo=0.0, lo_open=True)
  linesearch_max_iterations = check_scalar(
    "linesearch_max_iterations", linesearch_max_iterations, lo=1, integer=True, static=True
  )
  keep = min(n * m, max(1, math.ceil(rho * n * m)))
  return _solve(
    cost,
    a,
    b,
    epsilon,
    tol,
    cg_tol,
    sinkhorn_num_iterations,
    max_iterations,
    keep,
    cg_max_iterations,
    linesearch_max_iterations,
  )


@jax.jit(static_argnums=(6, 7, 8, 9, 10))
def _solve(cost, a, b, eps, threshold, cg_tol, num_sinkhorn, max_newton, keep, cg_maxiter, max_ls):
  n, m = cost.shape
  eps = jnp.asarray(eps, cost.dtype)
  log_a, log_b = jnp.log(a), jnp.log(b)

  def plan(f, g):
    return jnp.exp((f[:, None] + g[None, :] - cost) / eps)

  def marginal_error(p):
    return jnp.sum(jnp.abs(p.sum(1) - a)) + jnp.sum(jnp.abs(p.sum(0) - b))

  # Phase 1: log-domain Sinkhorn (ott-jax's lse updates, f then g). The a-marginal of the
  # state (f, g) is free from the next f-update: (P 1)_i = a_i exp((f_i - f_new_i) / eps),
  # and its b-marginal is exact after a g-update (except at the zero start: computed there).
  def sinkhorn_step(carry, _):
    f, g = carry
    f_new = eps * log_a - eps * logsumexp((g[None, :] - cost) / eps, axis=1)
    err = jnp.sum(a * jnp.abs(jnp.expm1((f - f_new) / eps)))
    g_new = eps * log_b - eps * logsumexp((f_new[:, None] - cost) / eps, axis=0)
    return (f_new, g_new), err

  f0, g0 = jnp.zeros(n, cost.dtype), jnp.zeros(m, cost.dtype)
  (f, g), sk_errors = jax.lax.scan(sinkhorn_step, (f0, g0), length=num_sinkhorn)
  if num_sinkhorn:
    sk_errors = sk_errors.at[0].set(marginal_error(plan(f0, g0)))

  # Phase 2: Newton on L with the sparsified Hessian, CG and an Armijo line search.
  def lyapunov(f, g):
    return jnp.dot(a, f) + jnp.dot(b, g) - eps * jnp.sum(plan(f, g))

  def sparsify(p):
    """The (at most) ``keep`` largest entries of ``p``: values, rows, cols (zero-padded).

    A full sort (``lax.top_k``) of n*m entries costs far more than a Newton step on CPU, so
    the threshold comes from one histogram of log P over 1024 bins spanning 64 nats below
    the largest entry: the lowest bin edge that keeps at most ``keep`` entries. Entries more
    than 64 nats below the largest are never kept (they are below float64 round-off).
    """
    logp = jnp.log(jnp.maximum(p, jnp.finfo(p.dtype).tiny)).reshape(-1)
    top = jnp.max(logp)
    bins = jnp.clip(((top - logp) * (_BINS / _SPAN)).astype(jnp.int32), 0, _BINS)
    counts = jax.ops.segment_sum(jnp.ones_like(bins), bins, _BINS + 1)[:_BINS]
    # Bins [0, j) hold the largest entries; take the most bins whose total is <= keep.
    j = jnp.sum(jnp.cumsum(counts) <= keep)
    (idx,) = jnp.nonzero(bins < j, size=keep, fill_value=0)
    valid = jnp.arange(keep) < jnp.minimum(jnp.sum(counts[:_BINS] * (jnp.arange(_BINS) < j)), keep)
    vals = jnp.where(valid, p.reshape(-1)[idx], 0.0)
    return vals, idx // m, idx % m

  def newton_dir(p):
    r, c = p.sum(1), p.sum(0)
    vals, rows, cols = sparsify(p)

    # M is singular along w = (1, -1) (the gauge f + t, g - t); the gradient is orthogonal
    # to w, so adding the rank-one term s w w^T changes nothing on the range and makes the
    # system positive definite: CG then solves it stably, with no w-component.
    shift = (jnp.sum(r) + jnp.sum(c)) / (n + m)

    def matvec(z):
      u, v = z
      pu = jax.ops.segment_sum(vals * v[cols], rows, n)
      ptv = jax.ops.segment_sum(vals * u[rows], cols, m)
      w = shift * (jnp.sum(u) - jnp.sum(v)) / (n + m)
      return ((r * u + pu + w) / eps, (c * v + ptv - w) / eps)

    grad = (a - r, b - c)
    delta, _ = jax.scipy.sparse.linalg.cg(matvec, grad, tol=cg_tol, maxiter=cg_maxiter)
    return grad, delta

  def linesearch(f, g, grad, delta):
    l0 = lyapunov(f, g)
    slope = jnp.dot(grad[0], delta[0]) + jnp.dot(grad[1], delta[1])

    def value(alpha):
      return lyapunov(f + alpha * delta[0], g + alpha * delta[1])

    def cond(s):
      i, alpha, ok = s
      return (~ok) & (i < max_ls)

    def body(s):
      i, alpha, _ = s
      alpha = alpha * 0.5
      return i + 1, alpha, value(alpha) >= l0 + 1e-4 * alpha * slope

    one = jnp.ones((), cost.dtype)
    _, alpha, ok = jax.lax.while_loop(cond, body, (0, one, value(one) >= l0 + 1e-4 * slope))
    return jnp.where(ok, alpha, 0.0)

  history = jnp.full((num_sinkhorn + max_newton + 1,), jnp.nan, cost.dtype)
  history = history.at[:num_sinkhorn].set(sk_errors)

  def cond(s):
    k, _, _, err, hist = s
    return (k < max_newton) & (err >= threshold)

  def body(s):
    k, f, g, _, hist = s
    grad, delta = newton_dir(plan(f, g))
    alpha = linesearch(f, g, grad, delta)
    f, g = f + alpha * delta[0], g + alpha * delta[1]
    err = marginal_error(plan(f, g))
    return k + 1, f, g, err, hist.at[num_sinkhorn + k + 1].set(err)

  err0 = marginal_error(plan(f, g))
  history = history.at[num_sinkhorn].set(err0)
  k, f, g, err, history = jax.lax.while_loop(cond, body, (0, f, g, err0, history))

  p = plan(f, g)
  entropy = lambda w: -jnp.sum(w * jnp.log(w))
  reg_cost = jnp.dot(a, f) + jnp.dot(b, g) - eps * (jnp.sum(p) - 1.0)
  reg_cost = reg_cost + eps * (entropy(a) + entropy(b))
  return SNSResult(f, g, p, reg_cost, history, jnp.asarray(k, jnp.int32), err < threshold)
