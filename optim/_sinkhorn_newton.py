"""Sinkhorn-Newton-Sparse: Sinkhorn warm start, then sparse Newton (Tang et al., 2024)."""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from optim._validation import check_scalar, is_traced, poison, renamed_field, renamed_kwargs

__all__ = ["SNSResult", "sinkhorn_newton_sparse", "sq_euclidean_cost"]

_BINS, _SPAN = 1024, 64.0  # the sparsification histogram: bins over 64 nats of log P


class SNSResult(NamedTuple):
  """Result of :func:`sinkhorn_newton_sparse` (formerly ``SNSOutput``).

  Attributes:
    f: row potential, shape ``(n,)`` (ott-jax's convention: the plan is
      :math:`P_{ij} = \\exp((f_i + g_j - C_{ij}) / \\varepsilon)`); :math:`-\\infty` at a
      zero-weight point.
    g: column potential, shape ``(m,)``; :math:`-\\infty` at a zero-weight point.
    plan: the transport plan :math:`P`, shape ``(n, m)`` (zero rows and columns at
      zero-weight points).
    reg_ot_cost: the entropic OT cost in ott-jax's convention,
      :math:`\\langle a, f\\rangle + \\langle b, g\\rangle - \\varepsilon(\\sum P - 1)
      + \\varepsilon (H(a) + H(b))` (equal to ott's ``reg_ot_cost`` at convergence; zero
      weights contribute 0).
    errors: marginal error :math:`\\|P 1 - a\\|_1 + \\|P^\\top 1 - b\\|_1` at the start of
      every iteration: one entry per Sinkhorn iteration of the warm start, the error where
      it handed over, then one per Newton-phase iteration; shape ``(N + max_iterations +
      1,)`` with ``N`` = ``sinkhorn_num_iterations`` if given, else
      ``sinkhorn_max_iterations``; entries after the last iteration are NaN. The warm start
      took ``S = isfinite(errors).sum() - 1 - n_iters`` iterations (``N`` if fixed), so the
      hand-over's error is ``errors[S]`` and the last iterate's ``errors[S + n_iters]``.
    n_iters: iterations of the Newton phase (a Newton step, or a Sinkhorn step where no
      Newton step passed the line search; int32; formerly ``num_newton``, still readable
      with a ``DeprecationWarning`` for one release).
    converged: whether the returned plan's marginal error is below ``tol``. The returned
      potentials are the Newton phase's iterate of smallest error (the last one whenever
      it converged).
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
    if not np.all(np.isfinite(wn)) or np.any(wn < 0):
      raise ValueError(
        f"sinkhorn_newton_sparse: {name} must be finite and >= 0 (a zero weight masks its "
        f"point out), got min {wn.min() if wn.size else 'empty'}"
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
  sinkhorn_num_iterations: int | None = None,
  sinkhorn_max_iterations: int = 1000,
  switch_threshold: float = 100.0,
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

  Algorithm 1 of the paper: log-domain Sinkhorn iterations (the warm start), then at most
  ``max_iterations`` Newton iterations

  .. math::
    M = \frac{1}{\varepsilon}
      \begin{pmatrix} \operatorname{diag}(P 1) & \operatorname{Sparsify}(P, \rho) \\
      \cdot^\top & \operatorname{diag}(P^\top 1) \end{pmatrix}, \quad
    \Delta = M^{-1} \nabla L \ \text{(conjugate gradient)}, \quad
    (f, g) \leftarrow (f, g) + \alpha \Delta,

  where :math:`\operatorname{Sparsify}(P, \rho)` keeps the :math:`\lceil \rho n m\rceil`
  largest entries of :math:`P` (the paper's keep-:math:`\rho` rule; the diagonal blocks
  stay exact). Since the kept entries are nonnegative and at most :math:`P`, :math:`M` is
  diagonally dominant, hence positive semi-definite, and :math:`\Delta` is an ascent
  direction. The sparse product is a gather and a ``segment_sum`` over the kept entries,
  so one CG iteration costs :math:`O(\rho n m)`, not :math:`O(nm)`. Newton stops when the
  marginal error :math:`e = \|P 1 - a\|_1 + \|P^\top 1 - b\|_1` drops below ``tol``
  (ott-jax's ``threshold``).

  **When to switch** (the warm start's length). By default
  (``sinkhorn_num_iterations=None``) Sinkhorn runs until Newton pays. Sinkhorn converges
  linearly, :math:`e_k \approx e_{k_0} q^{k - k_0}`; with the contraction observed over
  the last :math:`w = 10` iterations, :math:`\hat q = (e_k / e_{k-w})^{1/w}`, the
  iterations Sinkhorn still needs are predicted as

  .. math::
    \hat N_k = \frac{\log(\mathrm{tol} / e_k)}{\log \hat q} \quad
    (\infty \text{ when } \hat q \ge 1),

  and the solver hands over to Newton after iteration :math:`k`, the first
  :math:`k \ge 50` with :math:`\hat N_k > \texttt{switch\_threshold}`: the Newton phase's
  cost in Sinkhorn iterations, 100 by default (on CPU at 512 points one Newton iteration
  costs 7 to 25 Sinkhorn iterations, CG's iterations most of it, and 3 to 5 of them
  finish from there). Where Sinkhorn reaches ``tol`` first (large :math:`\varepsilon`),
  no Newton step is taken and the iterations are ott-jax's log-domain Sinkhorn's;
  ``sinkhorn_max_iterations`` caps the warm start. Under this rule a Newton step is
  inexact (Eisenstat and Walker): CG stops at the relative residual
  :math:`\max(\texttt{cg\_tol}, \min(0.1, e))`, which keeps the convergence quadratic.
  ``sinkhorn_num_iterations=N1`` is the paper's Algorithm 1 as before this rule: exactly
  :math:`N_1` warm-start iterations, bit for bit the former ones (with
  ``max_iterations=0`` the whole result is the former one), then Newton steps solved to
  ``cg_tol``, with the safeguards below.

  **Globalisation** (the Newton phase never returns a worse plan than its start). A step
  must increase :math:`L`: :math:`\alpha` is the first of :math:`1, 1/2, 1/4, \dots`
  (at most ``linesearch_max_iterations`` halvings) with the Armijo increase
  :math:`L(x + \alpha\Delta) - L(x) \ge 10^{-4} \alpha \langle \nabla L, \Delta\rangle`,
  the increase computed as
  :math:`\alpha \langle (a, b), \Delta\rangle - \varepsilon \sum_{ij} P_{ij}
  \operatorname{expm1}(\alpha(\Delta_{f,i} + \Delta_{g,j}) / \varepsilon)`, exact to
  round-off where the difference of two values of :math:`L` is not (near convergence it
  is all round-off, and the search stalls). Where no :math:`\alpha` passes, or the CG
  direction is not finite, the iteration takes one Sinkhorn step instead. Damped Newton
  steps may raise :math:`e` for a while before the quadratic phase (at small
  :math:`\varepsilon`, 10 or more iterations that then converge), so a step is not
  rejected for that; the solver returns the iterate of smallest :math:`e` it visited,
  which is the last one whenever it converged and never has a larger error than the warm
  start's (at :math:`\varepsilon = 10^{-4}` on 64 points Newton used to end at
  :math:`e = 3.75` from 0.36).

  **Sparsity.** A sparsified Hessian resolves the slow modes of :math:`\nabla^2 L` (what
  Newton is for) only if it drops far less than they weigh: on 512 points, dropping 2.7%
  of :math:`P`'s mass already leaves a step at 70% of :math:`e`, and on 64 points a 5%
  sparsification barely converges. So :math:`M` uses the full :math:`P` from the first
  step whose ``Sparsify`` drops more than 0.1% of the mass, or after a step that reduces
  :math:`e` by less than half, to the end (``rho=1``: always). The dense product costs
  about twice the sparse one at :math:`\rho = 0.05` on CPU, less than the ``Sparsify``
  histogram, and :math:`P` is in memory anyway; the iteration is then Newton's and
  reaches ``tol`` to round-off.

  **Zero weights.** A point of zero mass is masked out: its row (column) of the plan is
  zero and its potential is :math:`-\infty` (ott-jax's convention), with or without
  ``jit``. Traced weights that are negative or not finite, and a traced NaN or infinite
  cost, give NaN outputs (potentials, plan, cost, errors) and ``converged=False``.

  **Differentiation** (reverse mode: ``jax.grad``, ``jax.vjp``, under ``jit`` and
  ``vmap``). The potentials are differentiated implicitly, as ott-jax does: at the
  solution :math:`F(f, g; C, a, b, \varepsilon) = (P 1 - a, P^\top 1 - b) = 0`, so
  :math:`\bar\theta = -\partial_\theta F^\top \lambda` with
  :math:`\partial_{(f,g)} F\, \lambda = (\bar f, \bar g)`, solved by conjugate gradient
  with the dense :math:`P` (matrix-free; ``cg_max_iterations``, ``cg_tol``) orthogonally
  to the gauge direction :math:`(1, -1)`: :math:`(f + t, g - t)` is the same solution, so
  only gauge-invariant functions of the potentials have a derivative, and the
  cotangent's component along it is dropped. The plan and ``reg_ot_cost`` are
  differentiated through their formulas from the potentials, so
  :math:`\partial\, \mathrm{reg\_ot\_cost} / \partial C = P` and
  :math:`\partial / \partial a = f - \varepsilon(\log a + 1)` up to a constant vector
  (at a zero weight, the one-sided limit: the :math:`c`-transform of :math:`g` less
  :math:`\varepsilon`). It is the derivative of the converged solution, accurate to the
  order of ``tol``. Forward mode (``jax.jvp``, ``jax.jacfwd``) is refused (JAX's
  ``TypeError``: "can't apply forward-mode autodiff (jvp) to a custom_vjp function");
  ``errors``, ``n_iters`` and ``converged`` carry no gradient.

  Everything runs in one ``jit``-able function (``lax.scan`` for a fixed warm start,
  ``lax.while_loop`` otherwise) with a preallocated error history.

  Args:
    cost: cost matrix :math:`C`, ``(n, m)``, finite floating point (e.g.
      :func:`sq_euclidean_cost` of two point clouds). A concrete NaN/inf is a ``ValueError``;
      a traced one gives NaN outputs (loud, not silently wrong).
    a: source weights ``(n,)``, nonnegative, summing to 1 (default uniform); zero weights
      are masked out (see above).
    b: target weights ``(m,)``, nonnegative, summing to 1 (default uniform).
    epsilon: entropic regularization :math:`\varepsilon > 0` (absolute, as ott-jax's
      ``Geometry(cost_matrix, epsilon=...)``).
    sinkhorn_num_iterations: ``None`` (default): the warm start ends by the switch rule
      above; an int :math:`N_1 \ge 0`: exactly that many warm-start Sinkhorn iterations,
      as before this rule (static; formerly ``num_sinkhorn``).
    sinkhorn_max_iterations: the most warm-start iterations under the switch rule (static).
    switch_threshold: predicted Sinkhorn iterations to ``tol`` beyond which the warm start
      hands over to Newton (``>= 0``; ``inf``: only at ``sinkhorn_max_iterations`` or
      never, if Sinkhorn reaches ``tol``). Ignored with ``sinkhorn_num_iterations``.
    max_iterations: :math:`N_2 \ge 0`, the most Newton-phase iterations (static; formerly
      ``max_newton``).
    rho: fraction of the entries of :math:`P` kept in the sparsified Hessian, in (0, 1].
    tol: target marginal error (> 0; formerly ``threshold``).
    cg_max_iterations: the most CG iterations per Newton step and in the backward solve
      (static; formerly ``cg_maxiter``).
    cg_tol: CG relative residual tolerance: of every Newton step with a fixed warm start,
      the floor of the inexact steps' under the switch rule, and of the backward solve.
    linesearch_max_iterations: the most halvings of :math:`\alpha` (static; formerly
      ``max_linesearch``).

  Returns:
    An :class:`SNSResult` (potentials, plan, cost, error history, Newton iterations, and
    whether ``tol`` was reached).

  Raises:
    ValueError: a cost that is not 2-D, not finite or empty; weights of the wrong shape,
      negative, not finite or not summing to 1; bad hyperparameters.
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
    >>> grad = jax.grad(lambda c: sinkhorn_newton_sparse(c, epsilon=0.5).reg_ot_cost)(cost)
    >>> bool(jnp.allclose(grad, sinkhorn_newton_sparse(cost, epsilon=0.5).plan, atol=1e-5))
    True

  References:
    Tang, Shavlovsky, Rahmanian, Tardini, Thekumparampil, Xiao, Ying, "Accelerating Sinkhorn
    Algorithm with Sparse Newton Iterations", ICLR 2024, arXiv:2401.12253 (Algorithm 1).
    Inexact Newton: Eisenstat, Walker, "Choosing the Forcing Terms in an Inexact Newton
    Method", SIAM J. Sci. Comput. 17(1), 1996.
    Implicit differentiation: Luise, Rudi, Pontil, Ciliberto, "Differential Properties of
    Sinkhorn Approximation for Learning with Wasserstein Distance", NeurIPS 2018,
    arXiv:1805.11897; Cuturi, Meng-Papaxanthos, Tian, Bunne, Davis, Teboul, "Optimal
    Transport Tools (OTT)", 2022, arXiv:2201.12324.
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
  if sinkhorn_num_iterations is not None:
    sinkhorn_num_iterations = check_scalar(
      "sinkhorn_num_iterations", sinkhorn_num_iterations, lo=0, integer=True, static=True
    )
  sinkhorn_max_iterations = check_scalar(
    "sinkhorn_max_iterations", sinkhorn_max_iterations, lo=0, integer=True, static=True
  )
  check_scalar("switch_threshold", switch_threshold, lo=0.0, allow_inf=True)
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
  cfg = _Config(
    sinkhorn_num_iterations,
    sinkhorn_max_iterations,
    max_iterations,
    keep,
    cg_max_iterations,
    linesearch_max_iterations,
  )
  return _solve(cost, a, b, epsilon, tol, cg_tol, switch_threshold, cfg)


class _Config(NamedTuple):
  """The static settings of one compilation (shapes and trip counts)."""

  num_sinkhorn: int | None  # fixed warm start, or None: the switch rule
  max_sinkhorn: int  # the switch rule's cap
  max_newton: int
  keep: int  # entries kept by Sparsify (n * m: the dense product)
  cg_maxiter: int
  max_ls: int


_WINDOW, _MIN_WARM = 10, 50  # the switch rule: contraction window, shortest warm start
_DENSE_BELOW = 0.5  # a sparse step that keeps more than this fraction of e: go dense
_DROPPED_MAX = 1e-3  # a Sparsify that drops more than this fraction of P's mass: go dense


def _masks(a, b):
  return a > 0, b > 0


def _plan(f, g, cost, eps, mask_a, mask_b):
  """The plan with zero rows/columns at zero weights (finite potentials there)."""
  z = (f[:, None] + g[None, :] - cost) / eps
  return jnp.where(mask_a[:, None] & mask_b[None, :], jnp.exp(z), 0.0)


@jax.jit(static_argnums=(7,))
def _solve(cost, a, b, eps, tol, cg_tol, switch_threshold, cfg):
  dt = cost.dtype
  eps = jnp.asarray(eps, dt)
  tol, cg_tol = jnp.asarray(tol, dt), jnp.asarray(cg_tol, dt)
  switch_threshold = jnp.asarray(switch_threshold, dt)
  # Traced weights are not checked at call time: negative or non-finite ones (which the
  # mask would silently treat as zero) poison every output.
  valid = jnp.all(a >= 0) & jnp.all(b >= 0) & jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(b))
  f, g, history, n_iters, err = _potentials(cfg, cost, a, b, eps, tol, cg_tol, switch_threshold)
  valid = valid & ~jnp.isnan(err)  # a traced NaN cost: every output NaN, not just some
  mask_a, mask_b = _masks(a, b)
  p = _plan(f, g, cost, eps, mask_a, mask_b)

  def entropy(w):
    # -sum w log w with 0 log 0 = 0. The second sum is 0 in value; its derivative -1 at a
    # zero weight makes the gradient of reg_ot_cost there the limit of the positive
    # weights' (f - eps log a - eps, with f - eps log a -> the c-transform). Two sums, not
    # one where: the first is the masks-free formula's reduction, bit for bit.
    safe = jnp.where(w > 0, w, 1.0)
    return -jnp.sum(w * jnp.log(safe)) - jnp.sum(jnp.where(w > 0, 0.0, w))

  reg_cost = jnp.dot(a, f) + jnp.dot(b, g) - eps * (jnp.sum(p) - 1.0)
  reg_cost = reg_cost + eps * (entropy(a) + entropy(b))
  ninf = jnp.asarray(-jnp.inf, dt)
  f, g = jnp.where(mask_a, f, ninf), jnp.where(mask_b, g, ninf)
  f, g, p, reg_cost, history = (poison(x, valid) for x in (f, g, p, reg_cost, history))
  return SNSResult(f, g, p, reg_cost, history, n_iters, (err < tol) & valid)


def _forward(cfg, cost, a, b, eps, tol, cg_tol, switch_threshold):
  """The solver; its potentials are finite (a zero-weight point's is its c-transform).

  Inside, a zero weight's potential is -inf from the first update on (log 0), so its row
  (column) of the plan is 0 and the log-sum-exps ignore it with no mask in the (n, m)
  computations (they are the masks-free formulas, bit for bit); the (n,)-sized quantities
  that would meet -inf - -inf or 0 * inf are masked.
  """
  n, m = cost.shape
  dt = cost.dtype
  mask_a, mask_b = _masks(a, b)
  log_a, log_b = jnp.log(a), jnp.log(b)

  def plan(f, g):
    return jnp.exp((f[:, None] + g[None, :] - cost) / eps)

  def marginal_error(p):
    return jnp.sum(jnp.abs(p.sum(1) - a)) + jnp.sum(jnp.abs(p.sum(0) - b))

  # Phase 1: log-domain Sinkhorn (ott-jax's lse updates, f then g). The a-marginal of the
  # state (f, g) is free from the next f-update: (P 1)_i = a_i exp((f_i - f_new_i) / eps),
  # and its b-marginal is exact after a g-update (except at the zero start: computed there).
  def f_update(g):
    return eps * log_a - eps * logsumexp((g[None, :] - cost) / eps, axis=1)

  def g_update(f):
    return eps * log_b - eps * logsumexp((f[:, None] - cost) / eps, axis=0)

  def a_error(f, f_new):
    return jnp.sum(a * jnp.abs(jnp.expm1(jnp.where(mask_a, f - f_new, 0.0) / eps)))

  f0, g0 = jnp.zeros(n, dt), jnp.zeros(m, dt)
  err0 = marginal_error(plan(f0, g0))
  fixed = cfg.num_sinkhorn is not None
  warm = cfg.num_sinkhorn if fixed else cfg.max_sinkhorn
  history = jnp.full((warm + cfg.max_newton + 1,), jnp.nan, dt)
  if fixed:

    def sinkhorn_step(carry, _):
      f, g = carry
      f_new = f_update(g)
      return (f_new, g_update(f_new)), a_error(f, f_new)

    (f, g), sk_errors = jax.lax.scan(sinkhorn_step, (f0, g0), length=warm)
    if warm:
      history = history.at[:warm].set(sk_errors.at[0].set(err0))
    s = jnp.asarray(warm, jnp.int32)
  elif warm:
    log_tol = jnp.log(tol)

    def sk_body(state):
      k, f, g, hist, _ = state
      f_new = f_update(g)
      err = jnp.where(k == 0, err0, a_error(f, f_new))  # e_k, the error of (f, g)
      hist = hist.at[k].set(err)
      log_q = (jnp.log(err) - jnp.log(hist[jnp.maximum(k - _WINDOW, 0)])) / _WINDOW
      remaining = jnp.where(log_q < 0, (log_tol - jnp.log(err)) / log_q, jnp.inf)
      switch = (k >= _MIN_WARM) & (remaining > switch_threshold)
      # Converged (or NaN), switching or at the cap: this step is the last one.
      stop = ~(err >= tol) | switch | (k + 1 >= warm)
      return k + 1, f_new, g_update(f_new), hist, stop

    s, f, g, history, _ = jax.lax.while_loop(
      lambda state: ~state[-1],
      sk_body,
      (jnp.asarray(0, jnp.int32), f0, g0, history, jnp.asarray(False)),
    )
  else:
    f, g, s = f0, g0, jnp.asarray(0, jnp.int32)

  # Phase 2: Newton on L with the sparsified Hessian, CG and an Armijo line search.
  def sparsify(p):
    """The (at most) ``keep`` largest entries of ``p``: values, rows, cols (zero-padded).

    A full sort (``lax.top_k``) of n*m entries costs far more than a Newton step on CPU, so
    the threshold comes from one histogram of log P over 1024 bins spanning 64 nats below
    the largest entry: the lowest bin edge that keeps at most ``keep`` entries. Entries more
    than 64 nats below the largest are never kept (they are below float64 round-off).
    """
    keep = cfg.keep
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

  sparse = cfg.keep < n * m
  support = jnp.sum(mask_a).astype(dt) + jnp.sum(mask_b).astype(dt)

  def newton_dir(p, err, dense):
    """The (inexact) Newton direction, flat (f then g), and whether M is now the dense one."""
    r, c = p.sum(1), p.sum(0)
    dr, dc = jnp.where(mask_a, r, 1.0), jnp.where(mask_b, c, 1.0)
    wa, wb = mask_a.astype(dt), mask_b.astype(dt)

    # M is singular along w = (1, -1) on the support (the gauge f + t, g - t); the gradient
    # is orthogonal to w, so adding the rank-one term s w w^T changes nothing on the range
    # and makes the system positive definite: CG then solves it stably, with no w-component.
    # A zero-weight point's row is the identity (its gradient entry is 0: it stays put).
    shift = (jnp.sum(r) + jnp.sum(c)) / support

    def matvec(pv, ptu):
      def mv(z):
        u, v = z[:n], z[n:]
        w = shift * (jnp.dot(wa, u) - jnp.dot(wb, v)) / support
        return jnp.concatenate([(dr * u + pv(v) + w * wa) / eps, (dc * v + ptu(u) - w * wb) / eps])

      return mv

    grad = jnp.concatenate([a - r, b - c])
    # Under the switch rule, inexact Newton (Eisenstat & Walker): a residual relative to e
    # is enough far from the solution and keeps the convergence quadratic; cg_tol is the
    # floor. A fixed warm start is the paper's Algorithm 1: every solve to cg_tol.
    rel = cg_tol if fixed else jnp.maximum(cg_tol, jnp.minimum(0.1, err))
    solve = lambda mv: _cg(mv, grad, rel, cfg.cg_maxiter)
    dense_mv = matvec(lambda v: p @ v, lambda u: p.T @ u)
    if not sparse:
      return grad, solve(dense_mv), dense

    def sparse_dir():
      vals, rows, cols = sparsify(p)
      sparse_mv = matvec(
        lambda v: jax.ops.segment_sum(vals * v[cols], rows, n),
        lambda u: jax.ops.segment_sum(vals * u[rows], cols, m),
      )
      # Newton's work is the Hessian's slow modes, which a dropped mass far below the
      # diagonal's already swamps (2.7% dropped: a step keeps 70% of e): go dense now.
      kept = jnp.sum(vals) >= (1.0 - _DROPPED_MAX) * jnp.sum(r)
      return jax.lax.cond(kept, lambda: solve(sparse_mv), lambda: solve(dense_mv)), ~kept

    delta, now_dense = jax.lax.cond(dense, lambda: (solve(dense_mv), True), sparse_dir)
    return grad, delta, dense | now_dense

  def linesearch(p, grad, delta):
    """The Armijo step on L, its increase computed without cancellation; 0 if none passes."""
    slope = jnp.dot(grad, delta)
    df, dg = delta[:n], delta[n:]
    lin = jnp.dot(a, df) + jnp.dot(b, dg)

    def passes(alpha):
      z = alpha * (df[:, None] + dg[None, :]) / eps
      gain = alpha * lin - eps * jnp.sum(p * jnp.expm1(z))
      return gain >= 1e-4 * alpha * slope

    def body(state):
      i, alpha, _ = state
      alpha = alpha * 0.5
      return i + 1, alpha, passes(alpha)

    one = jnp.ones((), dt)
    _, alpha, ok = jax.lax.while_loop(
      lambda state: (~state[2]) & (state[0] < cfg.max_ls), body, (0, one, passes(one))
    )
    return alpha, ok

  def body(state):
    k, f, g, err, hist, dense, best = state
    p = plan(f, g)
    grad, delta, dense = newton_dir(p, err, dense)
    finite = jnp.all(jnp.isfinite(delta))
    delta = jnp.where(finite, delta, 0.0)
    alpha, ok = linesearch(p, grad, delta)

    def sinkhorn_step():
      f_new = f_update(g)
      return f_new, g_update(f_new)

    f, g = jax.lax.cond(
      finite & ok, lambda: (f + alpha * delta[:n], g + alpha * delta[n:]), sinkhorn_step
    )
    new_err = marginal_error(plan(f, g))
    if sparse:
      dense = dense | (new_err > _DENSE_BELOW * err)
    better = new_err < best[2]
    best = jax.tree.map(lambda new, old: jnp.where(better, new, old), (f, g, new_err), best)
    return k + 1, f, g, new_err, hist.at[s + k + 1].set(new_err), dense, best

  err = marginal_error(plan(f, g))
  history = history.at[s].set(err)
  state = (jnp.asarray(0, jnp.int32), f, g, err, history, jnp.asarray(False), (f, g, err))
  k, _, _, _, history, _, (f, g, err) = jax.lax.while_loop(
    lambda state: (state[0] < cfg.max_newton) & (state[3] >= tol), body, state
  )

  # Finite potentials out: a zero weight's -inf becomes its c-transform (what the potential
  # tends to as the weight tends to 0, less eps log a), so gradients stay finite there.
  def c_transforms():
    f_out = jnp.where(mask_a, f, -eps * logsumexp((g[None, :] - cost) / eps, axis=1))
    return f_out, jnp.where(mask_b, g, -eps * logsumexp((f[:, None] - cost) / eps, axis=0))

  f, g = jax.lax.cond(jnp.all(mask_a) & jnp.all(mask_b), lambda: (f, g), c_transforms)
  return f, g, history, k, err


def _cg(matvec, rhs, tol, maxiter):
  """Conjugate gradient from 0 on one flat vector, to ``||r|| <= tol ||rhs||`` or ``maxiter``.

  Not ``jax.scipy.sparse.linalg.cg``: on a flat vector a CG iteration is about half the
  kernels of the (f, g) pytree's, and those launches, not the product, dominate at n ~ 512.
  """

  def body(state):
    k, x, r, d, rr = state
    md = matvec(d)
    step = rr / jnp.dot(d, md)
    x, r = x + step * d, r - step * md
    rr_new = jnp.dot(r, r)
    return k + 1, x, r, r + (rr_new / rr) * d, rr_new

  bound = tol**2 * jnp.dot(rhs, rhs)
  rr = jnp.dot(rhs, rhs)
  state = (0, jnp.zeros_like(rhs), rhs, rhs, rr)
  return jax.lax.while_loop(lambda s: (s[0] < maxiter) & (s[4] > bound), body, state)[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _potentials(cfg, cost, a, b, eps, tol, cg_tol, switch_threshold):
  return _forward(cfg, cost, a, b, eps, tol, cg_tol, switch_threshold)


def _potentials_fwd(cfg, cost, a, b, eps, tol, cg_tol, switch_threshold):
  out = _forward(cfg, cost, a, b, eps, tol, cg_tol, switch_threshold)
  return out, (out[0], out[1], cost, a, b, eps, tol, cg_tol, switch_threshold)


def _potentials_bwd(cfg, res, cotangents):
  """Implicit differentiation of F(f, g) = (P 1 - a, P^T 1 - b) = 0 (see the docstring)."""
  f, g, cost, a, b, eps, tol, cg_tol, switch_threshold = res
  ct_f, ct_g = cotangents[0], cotangents[1]
  dt = cost.dtype
  mask_a, mask_b = _masks(a, b)
  p = _plan(f, g, cost, eps, mask_a, mask_b)
  r, c = p.sum(1), p.sum(0)
  dr, dc = jnp.where(mask_a, r, eps), jnp.where(mask_b, c, eps)  # identity where masked
  wa, wb = mask_a.astype(dt), -mask_b.astype(dt)
  support = jnp.sum(wa) - jnp.sum(wb)
  shift = (jnp.sum(r) + jnp.sum(c)) / support
  n = cost.shape[0]

  def mv(z):
    u, v = z[:n], z[n:]
    w = shift * (jnp.dot(wa, u) + jnp.dot(wb, v)) / support
    return jnp.concatenate([(dr * u + p @ v + w * wa) / eps, (dc * v + p.T @ u + w * wb) / eps])

  # The cotangent's gauge component (along w) and masked entries have no solution to
  # follow: dropped, so lambda lies on the support, orthogonal to w.
  ct_f, ct_g = jnp.where(mask_a, ct_f, 0.0), jnp.where(mask_b, ct_g, 0.0)
  along = (jnp.dot(wa, ct_f) + jnp.dot(wb, ct_g)) / support
  lam = _cg(mv, jnp.concatenate([ct_f - along * wa, ct_g - along * wb]), cg_tol, cfg.cg_maxiter)
  lam_f, lam_g = lam[:n], lam[n:]
  weights = p * (lam_f[:, None] + lam_g[None, :])
  z = jnp.where(mask_a[:, None] & mask_b[None, :], f[:, None] + g[None, :] - cost, 0.0)
  zero = jnp.zeros_like
  return (
    weights / eps,
    lam_f,
    lam_g,
    jnp.sum(weights * z) / eps**2,
    zero(tol),
    zero(cg_tol),
    zero(switch_threshold),
  )


_potentials.defvjp(_potentials_fwd, _potentials_bwd)
