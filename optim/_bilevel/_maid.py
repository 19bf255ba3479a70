"""MAID: the method of adaptive inexact descent for bilevel problems (Salehi et al.)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from optim._bilevel._hypergrad import check_bilevel, implicit_hypergradient
from optim._validation import check_like, check_output, check_scalar

PyTree = Any

__all__ = ["MAIDResult", "maid"]

# A cap on the accuracy-tightening loop of one hypergradient (the official code has none):
# tau**60 <= 1e-18 for the default tau = 0.5, far below float64 resolution.
_MAX_TIGHTEN = 60
# Power iterations of the default estimate of the cross-derivative norm.
_POWER_ITERATIONS = 20


class MAIDResult(NamedTuple):
  """Result of :func:`maid`.

  Histories have one entry per outer iteration ``k`` (length ``max_iterations``) and are
  NaN after the stop.

  Attributes:
    x: the last upper-level iterate :math:`x_k`.
    y: its inexact lower-level solution :math:`\\tilde y_k` (accuracy ``epsilons[k-1]``).
    converged: whether a hypergradient estimate reached :math:`\\|z_k\\| \\le` ``tol``.
    n_iters: outer iterations run (entries of ``errors`` that are not NaN).
    errors: :math:`\\|z_k\\|`, the norm of the inexact hypergradient used at iteration
      ``k`` (the stopping criterion).
    bounds: :math:`\\omega_k`, the a-posteriori bound on :math:`\\|z_k - \\nabla F(x_k)\\|`.
    epsilons: the lower-level accuracy :math:`\\epsilon_k` at which :math:`z_k` was computed.
    deltas: the adjoint (CG residual) accuracy :math:`\\delta_k` of :math:`z_k`.
    step_sizes: the accepted step :math:`\\alpha_k` (0 where every line search failed).
    losses: :math:`f(x_k, \\tilde y_k)`, the inexact upper-level value at :math:`x_k`.
    work: cumulative lower-level plus CG iterations after iteration ``k``.
    total_inner_iters: lower-level solver iterations in all (int32).
    total_cg_iters: conjugate-gradient iterations (Hessian-vector products) in all (int32).
  """

  x: PyTree
  y: PyTree
  converged: jax.Array
  n_iters: jax.Array
  errors: jax.Array
  bounds: jax.Array
  epsilons: jax.Array
  deltas: jax.Array
  step_sizes: jax.Array
  losses: jax.Array
  work: jax.Array
  total_inner_iters: jax.Array
  total_cg_iters: jax.Array


def _gradient_descent(inner_loss, mu_fn, learning_rate, max_iterations):
  """Lower-level gradient descent stopped at :math:`\\|\\nabla_y g\\| / \\mu \\le \\epsilon`."""

  def solve(x, y, eps):
    grad = lambda yy: jax.grad(inner_loss, argnums=1)(x, yy)  # noqa: E731
    mu = mu_fn(x)

    def cond(c):
      n, _, g = c
      return (otu.tree_norm(g) / mu > eps) & (n < max_iterations)

    def body(c):
      n, yy, g = c
      yy = otu.tree_add_scale(yy, -learning_rate, g)
      return n + 1, yy, grad(yy)

    n, y, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), y, grad(y)))
    return y, n

  return solve


def _power_cross_norm(inner_loss):
  """Power-iteration estimate of :math:`\\|\\nabla^2_{xy} g(x, y)\\|` (a lower estimate)."""

  def norm(x, y):
    def bt(u):  # x-space -> y-space: d/dx of grad_y g in direction u
      return jax.jvp(lambda xx: jax.grad(inner_loss, argnums=1)(xx, y), (x,), (u,))[1]

    def b(v):  # y-space -> x-space: grad_x <grad_y g, v>
      return jax.grad(lambda xx: otu.tree_vdot(jax.grad(inner_loss, argnums=1)(xx, y), v))(x)

    v0 = jax.tree.map(jnp.ones_like, y)
    v0 = otu.tree_scale(1.0 / otu.tree_norm(v0), v0)

    def body(_, c):
      v, _ = c
      w = bt(b(v))
      s = otu.tree_norm(w)
      return otu.tree_scale(1.0 / jnp.where(s > 0, s, 1.0), w), s

    _, s = jax.lax.fori_loop(0, _POWER_ITERATIONS, body, (v0, jnp.zeros((), _dtype(y))))
    return jnp.sqrt(s)

  return norm


def _dtype(tree):
  return jnp.result_type(*jax.tree.leaves(tree))


def maid(
  outer_loss: Callable[[PyTree, PyTree], jax.Array],
  inner_loss: Callable[[PyTree, PyTree], jax.Array],
  x0: PyTree,
  y0: PyTree,
  *,
  mu: float | Callable[[PyTree], jax.Array],
  max_iterations: int = 100,
  tol: float = 1e-6,
  epsilon: float = 0.1,
  delta: float = 0.1,
  learning_rate: float = 0.1,
  rho: float = 0.9,
  tau: float = 0.5,
  nu: float = 1.05,
  eta: float = 1e-4,
  step_increase: float = 10.0 / 9.0,
  outer_smoothness: float | Callable[[PyTree], jax.Array] = 1.0,
  hessian_lipschitz: float | Callable[[PyTree], jax.Array] = 0.0,
  cross_lipschitz: float | Callable[[PyTree], jax.Array] = 0.0,
  cross_norm: float | Callable[[PyTree, PyTree], jax.Array] | None = None,
  inner_solver: Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, jax.Array]] | None = None,
  inner_learning_rate: float | None = None,
  inner_max_iterations: int = 10_000,
  cg_max_iterations: int = 1_000,
  linesearch_max_iterations: int = 10,
  num_retries: int = 3,
  adaptive: bool = True,
) -> MAIDResult:
  """Minimize :math:`F(x) = f(x, y^*(x))` by MAID: inexact descent with adaptive accuracy.

  The lower level :math:`y^*(x) = \\arg\\min_y g(x, y)` (``inner_loss``, :math:`\\mu`-strongly
  convex in :math:`y`) is solved only to accuracy :math:`\\|\\tilde y - y^*(x)\\| \\le
  \\epsilon` (by ``inner_solver``; by default gradient descent stopped at
  :math:`\\|\\nabla_y g\\|/\\mu \\le \\epsilon`), and the adjoint system
  :math:`\\nabla^2_{yy} g\\, q = \\nabla_y f` only to residual :math:`\\delta` (conjugate
  gradients, :func:`optim.bilevel.implicit_hypergradient`), giving the inexact
  hypergradient :math:`z_k = \\nabla_x f - \\nabla^2_{xy} g\\, q` with the a-posteriori bound
  (Ehrhardt & Roberts 2023, used by MAID)

  .. math::
    \\|z_k - \\nabla F(x_k)\\| \\le \\omega_k = \\frac{\\|B\\|}{\\mu}\\delta_k
      + \\Big(\\frac{L\\|B\\|}{\\mu} + \\frac{L_A\\|B\\|\\|\\nabla_y f\\|}{\\mu^2}
      + \\frac{L_B\\|\\nabla_y f\\|}{\\mu}\\Big)\\epsilon_k + \\frac{L_B L}{\\mu}\\epsilon_k^2,

  :math:`B = \\nabla^2_{xy} g(x_k, \\tilde y_k)`, :math:`L` the Lipschitz constant of
  :math:`\\nabla_y f`, :math:`L_A, L_B` those of :math:`\\nabla^2_{yy} g, \\nabla^2_{xy} g`.
  Iteration :math:`k` (up to ``num_retries`` tries :math:`j`):

  1. compute :math:`z_k`; while :math:`\\omega_k > (1 - \\eta)\\|z_k\\|`, set
     :math:`\\epsilon_k \\leftarrow \\tau\\epsilon_k, \\delta_k \\leftarrow \\tau\\delta_k`
     and recompute (then :math:`-z_k` is a descent direction of :math:`F`);
  2. backtrack :math:`\\alpha = \\beta_k\\rho^i`, :math:`i < ` ``linesearch_max_iterations``
     :math:`+ j`, until the inexact sufficient decrease (:math:`f` convex in :math:`y`,
     both levels at accuracy :math:`\\epsilon_k`)

     .. math::
       f(x_k - \\alpha z_k, \\tilde y^+) + \\|\\nabla_y f(\\tilde y^+)\\|\\epsilon_k
         + \\tfrac{L}{2}\\epsilon_k^2 - f(x_k, \\tilde y_k) + \\|\\nabla_y f(\\tilde y_k)\\|
         \\epsilon_k \\le -\\alpha\\eta^2\\|z_k\\|^2;

  3. on success move, :math:`\\beta_{k+1} = \\alpha \\cdot` ``step_increase`` and relax
     :math:`\\epsilon \\leftarrow \\nu\\epsilon, \\delta \\leftarrow \\nu\\delta`; on failure
     tighten :math:`\\epsilon \\leftarrow \\tau\\epsilon, \\delta \\leftarrow \\tau\\delta` and
     retry from step 1.

  ``adaptive=False`` is the fixed-accuracy variant of the paper's comparisons (no
  tightening or relaxing; ``linesearch_max_iterations - 5`` + j backtracking steps, as the
  official code). The loop stops when :math:`\\|z_k\\| \\le` ``tol`` or after
  ``max_iterations`` outer iterations. Constants and rules follow the official code
  (github.com/MohammadSadeghSalehi/MAID, ``MAID.py``); where it differs from the paper's
  setting the paper wins: the old value :math:`f(x_k, \\tilde y_k)` is taken at the
  re-solved lower level (the code reuses the last accepted value), and the bound's
  constants are the caller's (the code estimates them heuristically). The whole run is one
  jit-compiled ``lax.while_loop``.

  Reference: Salehi, Mukherjee, Roberts & Ehrhardt, "An adaptively inexact first-order
  method for bilevel optimization with application to hyperparameter learning", SIAM J.
  Math. Data Sci. (2025), arXiv:2308.10098.

  Args:
    outer_loss: :math:`f(x, y)`, a real scalar, convex and :math:`L`-smooth in ``y``;
      :math:`\\nabla_x f` must not depend on ``y`` (e.g. :math:`f = f_1(y) + r(x)`).
    inner_loss: :math:`g(x, y)`, a real scalar, :math:`\\mu`-strongly convex in ``y``.
    x0: starting upper-level point (a pytree of float arrays).
    y0: starting lower-level point (a pytree of float arrays), a warm start only.
    mu: strong-convexity modulus :math:`\\mu > 0` of ``inner_loss`` in ``y``: a float, or a
      callable ``x -> scalar`` where it depends on the hyperparameters (e.g.
      :math:`\\min_i e^{x_i}` for a learned ridge penalty). The three constants below take a
      callable ``x -> scalar`` too.
    max_iterations: cap on outer iterations, >= 1.
    tol: stop when :math:`\\|z_k\\| \\le` ``tol`` (>= 0).
    epsilon: starting lower-level accuracy :math:`\\epsilon_0 > 0`.
    delta: starting adjoint accuracy :math:`\\delta_0 > 0`.
    learning_rate: first trial step :math:`\\beta_0 > 0`.
    rho: backtracking factor in (0, 1).
    tau: accuracy tightening factor in (0, 1).
    nu: accuracy relaxing factor, >= 1.
    eta: descent constant in (0, 1).
    step_increase: factor >= 1 on the accepted step for the next first trial.
    outer_smoothness: :math:`L >= 0`.
    hessian_lipschitz: :math:`L_A >= 0` (0 for ``g`` quadratic in ``y``).
    cross_lipschitz: :math:`L_B >= 0` (0 for a bilinear coupling).
    cross_norm: :math:`\\|\\nabla^2_{xy} g\\|`: a float, a callable ``(x, y) -> scalar``, or
      None for a 20-step power-iteration estimate at :math:`(x_k, \\tilde y_k)`.
    inner_solver: ``(x, y_init, eps) -> (y, n_iters)`` returning
      :math:`\\|y - y^*(x)\\| \\le` ``eps``; None: gradient descent with
      ``inner_learning_rate``.
    inner_learning_rate: step of the default gradient descent (e.g. :math:`1/L_g`).
    inner_max_iterations: cap on one default lower-level solve.
    cg_max_iterations: cap on one adjoint solve.
    linesearch_max_iterations: backtracking steps at the first try (the code's 10).
    num_retries: tries of an outer iteration (the code's 3), >= 1.
    adaptive: False for the fixed-accuracy variant.

  Returns:
    :class:`MAIDResult`.

  Raises:
    TypeError: a loss or ``inner_solver`` is not callable or returns the wrong type; a
      leaf of ``x0``/``y0`` is not floating point; a constant is not a real number.
    ValueError: a constant is outside its range, ``x0``/``y0`` is empty, or neither
      ``inner_solver`` nor ``inner_learning_rate`` is given.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.bilevel import maid
    >>> f = lambda x, y: 0.5 * jnp.sum((y - 1.0) ** 2)   # y*(x) = x, F(x) = |x - 1|^2 / 2
    >>> g = lambda x, y: 0.5 * jnp.sum((y - x) ** 2)
    >>> res = maid(f, g, jnp.zeros(2), jnp.zeros(2), mu=1.0, cross_norm=1.0,
    ...            inner_learning_rate=1.0, learning_rate=1.0, tol=1e-3)
    >>> bool(res.converged), bool(jnp.allclose(res.x, 1.0, atol=1e-2))
    (True, True)
  """
  where = "maid"
  check_bilevel(outer_loss, inner_loss, x0, y0, where)
  dtype = jnp.result_type(*jax.tree.leaves(x0))

  def constant(value, name, lo_open=False):
    if callable(value):
      check_output(jax.eval_shape(value, x0), scalar=True, name=name, where=where)
      return lambda x: jnp.asarray(value(x), dtype)
    check_scalar(f"{where}: {name}", value, lo=0.0, lo_open=lo_open)
    return lambda x: jnp.asarray(value, dtype)

  mu_fn = constant(mu, "mu", lo_open=True)
  max_iterations = check_scalar(
    f"{where}: max_iterations", max_iterations, lo=1, integer=True, static=True
  )
  check_scalar(f"{where}: tol", tol, lo=0.0)
  check_scalar(f"{where}: epsilon", epsilon, lo=0.0, lo_open=True)
  check_scalar(f"{where}: delta", delta, lo=0.0, lo_open=True)
  check_scalar(f"{where}: learning_rate", learning_rate, lo=0.0, lo_open=True)
  check_scalar(f"{where}: rho", rho, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
  check_scalar(f"{where}: tau", tau, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
  check_scalar(f"{where}: nu", nu, lo=1.0)
  check_scalar(f"{where}: eta", eta, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
  check_scalar(f"{where}: step_increase", step_increase, lo=1.0)
  lf_fn = constant(outer_smoothness, "outer_smoothness")
  la_fn = constant(hessian_lipschitz, "hessian_lipschitz")
  lb_fn = constant(cross_lipschitz, "cross_lipschitz")
  inner_max_iterations = check_scalar(
    f"{where}: inner_max_iterations", inner_max_iterations, lo=1, integer=True, static=True
  )
  cg_max_iterations = check_scalar(
    f"{where}: cg_max_iterations", cg_max_iterations, lo=1, integer=True, static=True
  )
  linesearch_max_iterations = check_scalar(
    f"{where}: linesearch_max_iterations",
    linesearch_max_iterations,
    lo=1,
    integer=True,
    static=True,
  )
  num_retries = check_scalar(f"{where}: num_retries", num_retries, lo=1, integer=True, static=True)
  if not isinstance(adaptive, bool):
    raise TypeError(f"{where}: adaptive must be a bool, got {type(adaptive).__name__}")
  if inner_solver is None:
    if inner_learning_rate is None:
      raise ValueError(
        f"{where}: inner_learning_rate must be given (the lower level's gradient-descent "
        "step, e.g. 1/L_g) when inner_solver is None"
      )
    check_scalar(f"{where}: inner_learning_rate", inner_learning_rate, lo=0.0, lo_open=True)
    inner_solver = _gradient_descent(inner_loss, mu_fn, inner_learning_rate, inner_max_iterations)
  elif not callable(inner_solver):
    raise TypeError(
      f"{where}: inner_solver must be a callable (x, y, eps) -> (y, n_iters), got "
      f"{type(inner_solver).__name__}"
    )
  eps0 = jnp.asarray(epsilon, dtype)
  out = jax.eval_shape(inner_solver, x0, y0, eps0)
  if not (isinstance(out, tuple) and len(out) == 2):
    raise TypeError(f"{where}: inner_solver must return a pair (y, n_iters), got {out!r}")
  check_like(out[0], y0, "inner_solver(x, y, eps)[0]", "y0", where)
  n_dt = getattr(out[1], "dtype", None)
  if getattr(out[1], "shape", None) != () or n_dt is None or not jnp.issubdtype(n_dt, jnp.integer):
    raise TypeError(
      f"{where}: inner_solver must return n_iters as an integer scalar array, got {out[1]!r}"
    )
  if cross_norm is None:
    norm_b = _power_cross_norm(inner_loss)
  elif callable(cross_norm):
    check_output(jax.eval_shape(cross_norm, x0, y0), scalar=True, name="cross_norm", where=where)
    norm_b = cross_norm
  else:
    check_scalar(f"{where}: cross_norm", cross_norm, lo=0.0)
    norm_b = lambda x, y: cross_norm  # noqa: E731

  ls_base = linesearch_max_iterations if adaptive else max(linesearch_max_iterations - 5, 1)
  f32 = lambda v: jnp.asarray(v, dtype)  # noqa: E731

  def hypergrad(x, y, eps, dlt):
    """One inexact hypergradient at accuracy (eps, dlt): lower solve, CG, bound."""
    y, n_in = inner_solver(x, y, eps)
    fval, (_, fy) = jax.value_and_grad(outer_loss, argnums=(0, 1))(x, y)
    gf = otu.tree_norm(fy)
    rel = jnp.where(gf > 0, dlt / jnp.where(gf > 0, gf, 1.0), 1.0)
    hg = implicit_hypergradient(
      outer_loss, inner_loss, x, y, tol=rel, max_iterations=cg_max_iterations
    )
    bn = jnp.asarray(norm_b(x, y), dtype)
    mu, lf, la, lb = mu_fn(x), lf_fn(x), la_fn(x), lb_fn(x)
    omega = (
      bn / mu * dlt
      + (lf * bn / mu + la * bn * gf / mu**2 + lb * gf / mu) * eps
      + lb * lf / mu * eps**2
    )
    return y, hg.grad, omega, fval, gf, n_in.astype(jnp.int32), hg.n_iters

  def accurate(x, y, eps, dlt):
    """Step 1: tighten (eps, delta) until the bound certifies a descent direction."""
    y, z, om, fv, gf, n_in, n_cg = hypergrad(x, y, eps, dlt)
    c = (jnp.int32(0), y, eps, dlt, z, om, fv, gf, n_in, n_cg)

    def cond(c):
      t, _, _, _, z, om, *_ = c
      nz = otu.tree_norm(z)
      return adaptive & (om > (1 - eta) * nz) & (nz > tol) & (t < _MAX_TIGHTEN)

    def body(c):
      t, y, eps, dlt, _, _, _, _, n_in, n_cg = c
      eps, dlt = tau * eps, tau * dlt
      y, z, om, fv, gf, a, b = hypergrad(x, y, eps, dlt)
      return t + 1, y, eps, dlt, z, om, fv, gf, n_in + a, n_cg + b

    return jax.lax.while_loop(cond, body, c)[1:]

  def linesearch(x, y, z, fv, gf, eps, alpha0, trials):
    """Step 2: backtracking on the inexact sufficient decrease."""
    nz2 = otu.tree_vdot(z, z)
    old = -fv + gf * eps
    lf = lf_fn(x)

    def cond(c):
      i, ok, *_ = c
      return (~ok) & (i < trials)

    def body(c):
      i, _, _, _, _, n_in = c
      alpha = alpha0 * rho**i
      xn = otu.tree_add_scale(x, -alpha, z)
      yn, a = inner_solver(xn, y, eps)
      fn, fyn = jax.value_and_grad(outer_loss, argnums=1)(xn, yn)
      lhs = fn + otu.tree_norm(fyn) * eps + lf * eps**2 / 2 + old
      ok = lhs <= -alpha * eta * eta * nz2
      return i + 1, ok, xn, yn, alpha, n_in + a.astype(jnp.int32)

    c = (jnp.int32(0), jnp.asarray(False), x, y, f32(0.0), jnp.int32(0))
    _, ok, xn, yn, alpha, n_in = jax.lax.while_loop(cond, body, c)
    return ok, xn, yn, alpha, n_in

  nan = jnp.full((max_iterations,), jnp.nan, dtype)

  def outer_body(s):
    k, x, y, eps, dlt, alpha0, conv, hist, n_in, n_cg = s

    def try_cond(c):
      j, done, *_ = c
      return (~done) & (j < num_retries)

    def try_body(c):
      j, _, x, y, eps, dlt, alpha0, conv, rec, n_in, n_cg = c
      y, eps, dlt, z, om, fv, gf, a, b = accurate(x, y, eps, dlt)
      n_in, n_cg = n_in + a, n_cg + b
      nz = otu.tree_norm(z)
      conv = nz <= tol
      ok, xn, yn, alpha, a = jax.lax.cond(
        conv,
        lambda: (jnp.asarray(False), x, y, f32(0.0), jnp.int32(0)),
        lambda: linesearch(x, y, z, fv, gf, eps, alpha0, ls_base + j),
      )
      n_in = n_in + a
      rec = (nz, om, eps, dlt, jnp.where(ok, alpha, 0.0), fv)
      x = jax.tree.map(lambda u, v: jnp.where(ok, u, v), xn, x)
      y = jax.tree.map(lambda u, v: jnp.where(ok, u, v), yn, y)
      alpha0 = jnp.where(ok, alpha * step_increase, alpha0)
      if adaptive:
        scale = jnp.where(ok, nu, jnp.where(conv, 1.0, tau))
        eps, dlt = eps * scale, dlt * scale
      return j + 1, ok | conv, x, y, eps, dlt, alpha0, conv, rec, n_in, n_cg

    rec0 = (f32(0.0),) * 6
    c = (jnp.int32(0), jnp.asarray(False), x, y, eps, dlt, alpha0, conv, rec0, n_in, n_cg)
    _, _, x, y, eps, dlt, alpha0, conv, rec, n_in, n_cg = jax.lax.while_loop(try_cond, try_body, c)
    work = (n_in + n_cg).astype(dtype)
    hist = tuple(h.at[k].set(v) for h, v in zip(hist, (*rec, work), strict=True))
    return k + 1, x, y, eps, dlt, alpha0, conv, hist, n_in, n_cg

  def outer_cond(s):
    k, *_, conv, _, _, _ = s
    return (k < max_iterations) & ~conv

  @jax.jit
  def run(x, y):
    s = (
      jnp.int32(0), x, y, eps0, f32(delta), f32(learning_rate), jnp.asarray(False),
      (nan,) * 7, jnp.int32(0), jnp.int32(0),
    )  # fmt: skip
    return jax.lax.while_loop(outer_cond, outer_body, s)

  k, x, y, _, _, _, conv, hist, n_in, n_cg = run(x0, y0)
  errors, bounds, epsilons, deltas, steps, losses, work = hist
  return MAIDResult(
    x=x, y=y, converged=conv, n_iters=k, errors=errors, bounds=bounds, epsilons=epsilons,
    deltas=deltas, step_sizes=steps, losses=losses, work=work, total_inner_iters=n_in,
    total_cg_iters=n_cg,
  )  # fmt: skip
