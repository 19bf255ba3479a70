"""AdaSketch-Newton: exact augmented Lagrangian + randomized iterative sketching.

Hong, Na, Mahoney & Kolar, "Constrained Optimization via Exact Augmented Lagrangian and
Randomized Iterative Sketching", ICML 2023 (https://arxiv.org/abs/2305.18379). Official
Julia code: github.com/IlgeeHong/AdaSketch-Newton, ``CUTEst/AdaSketchNewtonRK/`` and
``CUTEst/AdaSketchNewtonGV/`` (``AdaSketchNewton*.jl``, ``AugLsk.jl``) with the constants
of ``CUTEst/Parameter/Param.jl``. Every constant and test below is read from that code;
where it departs from the exact equations (two places) the equations win, see
:func:`eal_sketch_minimize`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optim._validation import as_key, check_choice, check_output, check_scalar, is_traced
from optim.curvature import hvp

Array = jax.Array

VARIANTS = ("kaczmarz", "gaussian", "exact")

# Constants of the official code (AdaSketchNewton*.jl), not exposed: the floor of the
# accuracy parameter delta, the reduced-Hessian test and the penalty caps.
_DELTA_FLOOR = 1e-6
_REDUCED_EIG_TOL = 1e-6
_MU_CAP = 1e8
_NU_FLOOR = 1e-8
_PSI_FACTOR = 20.0


class EALSketchResult(NamedTuple):
  """Result of :func:`eal_sketch_minimize`.

  Attributes:
    x: the last primal iterate, shaped like ``x0``.
    multipliers: the last Lagrange multipliers :math:`\\lambda`, shape ``(m,)``.
    n_iters: Newton (outer) iterations taken (int32).
    errors: ``(max_iterations + 1,)``, the KKT residual
      :math:`\\|(\\nabla_x \\mathcal{L}(x_k, \\lambda_k), c(x_k))\\|` of iterate :math:`k`
      (entry 0 is the starting point), the quantity compared with ``tol``; NaN after the
      stop.
    converged: whether the last KKT residual is at most ``tol``.
    sketch_iterations: ``(max_iterations,)`` int32, the sketching-solver iterations that
      Newton step :math:`k` took (over all its penalty passes); 0 after the stop and for
      ``variant="exact"``.
    stepsizes: ``(max_iterations,)``, the line-search step :math:`\\alpha_k`; NaN after
      the stop.
    mu: the final penalty parameter :math:`\\mu` (weight of :math:`\\|c\\|^2`).
    nu: the final penalty parameter :math:`\\nu` (weight of
      :math:`\\|\\nabla_x \\mathcal{L}\\|^2`).
    delta: the final accuracy parameter :math:`\\delta`.
    singular: whether the loop stopped because the constraint Jacobian lost rank
      (:math:`\\lambda_{\\min}(G G^\\top) <` ``singular_tol``), as the official code does.
  """

  x: Array
  multipliers: Array
  n_iters: Array
  errors: Array
  converged: Array
  sketch_iterations: Array
  stepsizes: Array
  mu: Array
  nu: Array
  delta: Array
  singular: Array


def _draw_sketch(key: Array, k, t, size: int, sketch_size: int, variant: str) -> Array:
  """The sketch ``S`` (``(size, sketch_size)``) of sketch iteration ``t`` of Newton step ``k``.

  A pure function of ``(key, k, t)``, so a reference implementation can replay the draws.
  ``"kaczmarz"``: ``sketch_size`` distinct columns of the identity, uniformly (one column:
  the official code's ``sample(1:(nx+nlam))``); ``"gaussian"``: i.i.d. standard normal
  entries (the official ``rand(Normal(0,1), (nlam+nx,))``).
  """
  sub = jax.random.fold_in(jax.random.fold_in(key, k), t)
  if variant == "gaussian":
    return jax.random.normal(sub, (size, sketch_size))
  idx = jax.random.choice(sub, size, (sketch_size,), replace=False)
  return jax.nn.one_hot(idx, size).T


def _psd_pinv_solve(a: Array, v: Array) -> Array:
  """``pinv(a) @ v`` for a small symmetric PSD ``a`` (``S^T K^2 S``); 0 where ``a`` is 0.

  One column: a guarded division (a zero row of ``K`` is skipped, as a zero norm would
  otherwise divide by zero). Several: the pseudo-inverse through ``eigh``, dropping
  eigenvalues below ``size * eps * max``, as ``numpy.linalg.pinv(a, hermitian=True)``.
  """
  if a.shape[0] == 1:
    ok = a[0, 0] > 0
    return jnp.where(ok, v / jnp.where(ok, a[0, 0], 1.0), 0.0)
  lam, vec = jnp.linalg.eigh(a)
  cut = a.shape[0] * jnp.finfo(a.dtype).eps * jnp.max(jnp.abs(lam))
  inv = jnp.where(lam > cut, 1.0 / jnp.where(lam > cut, lam, 1.0), 0.0)
  return vec @ (inv * (vec.T @ v))


def _merit_fns(f: Callable, c: Callable):
  """The Lagrangian, its x-gradient, the exact augmented Lagrangian and its gradient.

  .. math::
    \\mathcal{L}_{\\mu,\\nu} = f + \\lambda^\\top c + \\frac{\\mu}{2}\\|c\\|^2
      + \\frac{\\nu}{2}\\|\\nabla_x\\mathcal{L}\\|^2,\\qquad
    \\nabla\\mathcal{L}_{\\mu,\\nu} = \\begin{pmatrix}
      \\nabla_x\\mathcal{L} + \\nu\\nabla_x^2\\mathcal{L}\\,\\nabla_x\\mathcal{L}
        + \\mu G^\\top c \\\\
      c + \\nu G\\nabla_x\\mathcal{L} \\end{pmatrix},

  the gradient matrix-free: one HVP of the Lagrangian, one VJP and one JVP of ``c``.
  """

  def lagrangian(x, lam):
    return f(x) + jnp.dot(lam, c(x))

  grad_l = jax.grad(lagrangian)

  def merit(x, lam, mu, nu):
    cx, g = c(x), grad_l(x, lam)
    return f(x) + jnp.dot(cx, lam) + 0.5 * mu * jnp.dot(cx, cx) + 0.5 * nu * jnp.dot(g, g)

  def merit_grad(x, lam, mu, nu):
    g = grad_l(x, lam)
    cx, c_vjp = jax.vjp(c, x)
    h_g = hvp(lagrangian, x, g, lam)
    g_dir = jax.jvp(c, (x,), (g,))[1]
    return jnp.concatenate([g + nu * h_g + mu * c_vjp(cx)[0], cx + nu * g_dir])

  return lagrangian, grad_l, merit, merit_grad


def _validate(objective, constraint, x0, lam0):
  where = "eal_sketch_minimize"
  if not callable(objective):
    raise TypeError(f"{where}: objective must be callable, got {type(objective).__name__}")
  if not callable(constraint):
    raise TypeError(f"{where}: constraint must be callable, got {type(constraint).__name__}")
  if not isinstance(x0, (jax.Array, np.ndarray)):
    raise TypeError(f"{where}: x0 must be a 1-d floating array, got {type(x0).__name__}")
  if not jnp.issubdtype(x0.dtype, jnp.floating):
    raise TypeError(f"{where}: x0 must be a 1-d floating array, got dtype {x0.dtype}")
  if x0.ndim != 1 or x0.shape[0] == 0:
    raise ValueError(f"{where}: x0 must be a non-empty 1-d array, got shape {x0.shape}")
  x0 = jnp.asarray(x0)
  if not is_traced(x0) and not bool(jnp.all(jnp.isfinite(x0))):
    raise ValueError(f"{where}: x0 must be finite (no NaN or inf)")
  n = x0.shape[0]
  check_output(
    jax.eval_shape(objective, x0), scalar=True, name="objective(x)", where=where, what="f(x)"
  )
  c_out = jax.eval_shape(constraint, x0)
  if not isinstance(c_out, jax.ShapeDtypeStruct):
    raise TypeError(
      f"{where}: constraint(x) must return one 1-d floating array c(x), got {type(c_out).__name__}"
    )
  if not jnp.issubdtype(c_out.dtype, jnp.floating):
    raise TypeError(
      f"{where}: constraint(x) must return a 1-d floating array c(x), got dtype {c_out.dtype}"
    )
  if len(c_out.shape) != 1 or c_out.shape[0] == 0:
    raise ValueError(
      f"{where}: constraint(x) must return a non-empty 1-d array c(x), got shape {c_out.shape}"
    )
  m = c_out.shape[0]
  if m > n:
    raise ValueError(
      f"{where}: constraint(x) must have at most as many constraints as variables (the "
      f"Jacobian must have full row rank), got {m} constraints for {n} variables"
    )
  if lam0 is None:
    lam0 = jnp.zeros((m,), x0.dtype)
  else:
    if not isinstance(lam0, (jax.Array, np.ndarray)) or not jnp.issubdtype(
      lam0.dtype, jnp.floating
    ):
      raise TypeError(f"{where}: multipliers0 must be a floating array of shape ({m},)")
    if lam0.shape != (m,):
      raise ValueError(
        f"{where}: multipliers0 must have shape ({m},) (one per constraint), got {lam0.shape}"
      )
    if not is_traced(lam0) and not bool(jnp.all(jnp.isfinite(lam0))):
      raise ValueError(f"{where}: multipliers0 must be finite (no NaN or inf)")
  return x0, jnp.asarray(lam0, x0.dtype), n, m


def eal_sketch_minimize(
  objective: Callable[[Array], Array],
  constraint: Callable[[Array], Array],
  x0: Array,
  *,
  key,
  multipliers0: Array | None = None,
  max_iterations: int = 100,
  tol: float = 1e-6,
  sketch_size: int = 1,
  variant: str = "kaczmarz",
  mu: float = 1.0,
  nu: float = 0.1,
  delta: float = 0.1,
  xi_b: float = 0.1,
  beta: float = 0.1,
  rho: float = 1.5,
  singular_tol: float = 1e-2,
  sketch_max_iterations: int = 100_000,
  linesearch_max_iterations: int = 60,
) -> EALSketchResult:
  """Minimize f(x) subject to c(x) = 0 by AdaSketch-Newton (sketched inexact Newton steps).

  Each Newton step solves the Lagrangian Newton system inexactly with a randomized
  iterative sketching solver, then line-searches an exact augmented Lagrangian (Hong,
  Na, Mahoney & Kolar, ICML 2023). With :math:`\\mathcal{L} = f + \\lambda^\\top c`,
  :math:`G = \\nabla c^\\top` (``m x n``) and :math:`B_k = \\nabla_x^2\\mathcal{L}_k + t_k I`
  (:math:`t_k = \\xi_B + \\|\\nabla_x^2 \\mathcal{L}_k\\|_F` when the reduced Hessian
  :math:`Z^\\top \\nabla_x^2\\mathcal{L}_k Z` has an eigenvalue below 1e-6, else 0),

  .. math::
    K_k z = b_k,\\qquad
    K_k = \\begin{pmatrix} B_k & G_k^\\top \\\\ G_k & 0 \\end{pmatrix},\\quad
    b_k = -\\begin{pmatrix} \\nabla_x \\mathcal{L}_k \\\\ c_k \\end{pmatrix},

  is solved from :math:`z_0 = 0` by sketch-and-project: with a random sketch :math:`S`
  (``(n+m) x s``) and :math:`r_t = K z_t - b`,

  .. math::
    z_{t+1} = z_t - K S\\,(S^\\top K^2 S)^{\\dagger} S^\\top r_t,

  (one row of :math:`K`, randomized Kaczmarz, for ``variant="kaczmarz"`` and ``s = 1``)
  until the adaptive accuracy condition

  .. math::
    \\|K_k\\|_F\\,\\psi_k\\,\\|r_t\\| \\le \\theta\\,\\delta_k\\,\\|b_k\\|,\\qquad
    \\psi_k = \\frac{20 \\max(\\|B_k\\|_F^2, 1)}{\\min(\\xi_G, 1)\\min(\\xi_B, 1)},

  with :math:`\\xi_G = \\lambda_{\\min}(G_k G_k^\\top)`, :math:`\\theta = 1` and
  :math:`\\delta_k = \\max(10^{-6}, \\min(\\delta_{k-1}, \\delta^{\\rm trial}_k))`,
  :math:`\\delta^{\\rm trial} = (1/2 - \\beta)\\nu / ((1 + \\mu + \\nu)\\Upsilon_k^2\\psi_k^2)`,
  :math:`\\Upsilon_k = \\max(\\|G_k\\|_F, \\|\\nabla_x^2 \\mathcal{L}_k\\|_F, 1)`. The
  direction :math:`z = (\\Delta x, \\Delta\\lambda)` must then be a descent direction of the
  exact augmented Lagrangian

  .. math::
    \\mathcal{L}_{\\mu,\\nu}(x, \\lambda) = \\mathcal{L}(x, \\lambda)
      + \\frac{\\mu}{2}\\|c(x)\\|^2 + \\frac{\\nu}{2}\\|\\nabla_x \\mathcal{L}(x, \\lambda)\\|^2,
    \\qquad \\nabla \\mathcal{L}_{\\mu,\\nu}^\\top z \\le -\\frac{\\nu}{2}\\|b_k\\|^2;

  if not, :math:`\\mu \\leftarrow \\rho^2 \\mu`, :math:`\\nu \\leftarrow \\nu / \\rho`,
  :math:`\\delta \\leftarrow \\max(10^{-6}, \\min(\\delta / \\rho^4, \\delta^{\\rm trial}))`
  and the sketching solver resumes from its iterate (until :math:`\\mu > 10^8` or
  :math:`\\nu < 10^{-8}`). Finally :math:`\\alpha_k` halves from 1 until the Armijo
  condition :math:`\\mathcal{L}_{\\mu,\\nu}(x + \\alpha \\Delta x, \\lambda + \\alpha
  \\Delta\\lambda) \\le \\mathcal{L}_{\\mu,\\nu}(x, \\lambda) + \\alpha\\beta\\nabla
  \\mathcal{L}_{\\mu,\\nu}^\\top z` holds. The loop stops when the KKT residual
  :math:`\\|(\\nabla_x \\mathcal{L}, c)\\| \\le` ``tol``.

  Source and departures. Constants, safeguards and the loop structure are those of the
  official code (``AdaSketchNewtonRK.jl`` / ``AdaSketchNewtonGV.jl``, defaults of
  ``Param.jl``: :math:`\\mu_0 = 1`, :math:`\\nu_0 = 0.1`, :math:`\\delta_0 = 0.1`,
  :math:`\\xi_B = 0.1`, :math:`\\beta = 0.1`, :math:`\\rho = 1.5`, 1e5 sketch iterations per
  pass, stop when :math:`\\lambda_{\\min}(G G^\\top) < 10^{-2}`). Two departures, both
  toward the paper's equations: (1) the merit's gradient uses
  :math:`\\nabla_x^2 \\mathcal{L}\\,\\nabla_x \\mathcal{L}` (the exact derivative of
  :math:`\\frac{\\nu}{2}\\|\\nabla_x\\mathcal{L}\\|^2`), where the code multiplies by
  :math:`\\nabla^2 f` (equal for linear constraints); (2) the sketching solver starts from
  the true residual :math:`r_0 = -b` (the code starts from :math:`+b`, which flips its first
  Kaczmarz step). The paper's superlinear variant sharpens :math:`\\theta` over the
  iterations; the official code keeps :math:`\\theta = 1`, as here. ``"exact"`` replaces
  the sketching solver by a direct solve (an exact-Newton baseline with the same merit,
  penalties and line search).

  Cost. Matrix-free where the method allows: the sketching solver never forms
  :math:`K`; each sketch iteration makes ``s + 1`` KKT products (``s`` for
  :math:`K S = (S^\\top K)^\\top`, :math:`K` being symmetric, and one for the residual),
  each one :func:`optim.curvature.hvp` of the Lagrangian plus one ``jax.jvp`` and one
  ``jax.vjp`` of ``constraint``. The safeguards (:math:`\\psi, \\Upsilon, \\xi_G`, the
  reduced-Hessian test, :math:`\\|K\\|_F`) need norms and smallest eigenvalues, so, as in
  the official code, each Newton step also forms :math:`\\nabla_x^2 \\mathcal{L}` (``n``
  HVPs) and :math:`G` (``m`` VJPs) and spends :math:`O(n^3)` on them: the method targets
  problems where this is cheap next to the solve it replaces, or the caller accepts it.

  Args:
    objective: ``f(x) -> scalar``, ``x`` a 1-d float array.
    constraint: ``c(x) -> (m,)`` float array, ``1 <= m <= n``.
    x0: starting point, a non-empty 1-d float array of length ``n``.
    key: PRNG key (a typed key, a raw key or an int seed) of the sketches.
    multipliers0: starting multipliers ``(m,)``; zeros when None (the CUTEst ``y0``).
    max_iterations: cap on Newton steps, >= 1.
    tol: stop when the KKT residual is at most this, > 0.
    sketch_size: columns ``s`` of each sketch, in ``[1, n + m]`` (1: the official code).
    variant: ``"kaczmarz"`` (rows of :math:`K`, AdaSketch-Newton-RK), ``"gaussian"``
      (Gaussian sketches, AdaSketch-Newton-GV) or ``"exact"`` (direct solve).
    mu: initial penalty :math:`\\mu > 0` on :math:`\\|c\\|^2` (the code's ``eta1``).
    nu: initial penalty :math:`\\nu > 0` on :math:`\\|\\nabla_x \\mathcal{L}\\|^2`
      (``eta2``).
    delta: initial accuracy parameter :math:`\\delta > 0`.
    xi_b: Hessian-modification constant :math:`\\xi_B > 0`.
    beta: Armijo constant :math:`\\beta \\in (0, 1/2)`.
    rho: penalty update factor :math:`\\rho > 1` (the code's ``nu = 1.5``).
    singular_tol: stop (``singular=True``) when :math:`\\lambda_{\\min}(G G^\\top)` falls
      below it; >= 0.
    sketch_max_iterations: cap on sketch iterations per accuracy pass, >= 1.
    linesearch_max_iterations: cap on step halvings, >= 1 (the last step is taken).

  Returns:
    :class:`EALSketchResult`.

  Raises:
    TypeError: a callable is not callable, ``x0`` or ``constraint(x)`` is not floating,
      ``objective(x)`` is not a real scalar, or a hyperparameter is not a real number.
    ValueError: ``x0`` is not a non-empty 1-d finite array, ``constraint(x)`` is not a
      non-empty 1-d vector or has more entries than ``x0``, ``multipliers0`` has the wrong
      shape or is not finite, a budget is 0, a hyperparameter is out of range, or
      ``objective`` / ``constraint`` is not finite at a concrete ``x0``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.constrained import eal_sketch_minimize
    >>> f = lambda x: 0.5 * jnp.sum(x**2)
    >>> c = lambda x: jnp.array([x[0] + x[1] - 1.0])
    >>> res = eal_sketch_minimize(f, c, jnp.zeros(2), key=0, tol=1e-4)
    >>> bool(res.converged), bool(jnp.allclose(res.x, 0.5, atol=1e-3))
    (True, True)
  """
  where = "eal_sketch_minimize"
  x0, lam0, n, m = _validate(objective, constraint, x0, multipliers0)
  key = as_key(key)
  variant = check_choice(f"{where}: variant", variant, VARIANTS)
  max_iterations = check_scalar(
    f"{where}: max_iterations", max_iterations, lo=1, integer=True, static=True
  )
  sketch_max_iterations = check_scalar(
    f"{where}: sketch_max_iterations", sketch_max_iterations, lo=1, integer=True, static=True
  )
  linesearch_max_iterations = check_scalar(
    f"{where}: linesearch_max_iterations",
    linesearch_max_iterations,
    lo=1,
    integer=True,
    static=True,
  )
  sketch_size = check_scalar(
    f"{where}: sketch_size", sketch_size, lo=1, hi=n + m, integer=True, static=True
  )
  check_scalar(f"{where}: tol", tol, lo=0.0, lo_open=True)
  for name, value in (("mu", mu), ("nu", nu), ("delta", delta), ("xi_b", xi_b)):
    check_scalar(f"{where}: {name}", value, lo=0.0, lo_open=True)
  check_scalar(f"{where}: beta", beta, lo=0.0, hi=0.5, lo_open=True, hi_open=True)
  check_scalar(f"{where}: rho", rho, lo=1.0, lo_open=True)
  check_scalar(f"{where}: singular_tol", singular_tol, lo=0.0)
  if not is_traced(x0) and not is_traced(lam0):
    f0, c0 = objective(x0), constraint(x0)
    if not is_traced((f0, c0)):
      if not bool(jnp.isfinite(f0)):
        raise ValueError(f"{where}: objective(x0) must be finite, got {float(f0)}")
      if not bool(jnp.all(jnp.isfinite(c0))):
        raise ValueError(f"{where}: constraint(x0) must be finite (no NaN or inf)")

  hyper = tuple(
    jnp.asarray(v, x0.dtype) for v in (tol, mu, nu, delta, xi_b, beta, rho, singular_tol)
  )
  config = (variant, sketch_size, max_iterations, sketch_max_iterations, linesearch_max_iterations)
  try:
    hash((objective, constraint))
  except TypeError:  # an unhashable callable (e.g. __eq__ without __hash__): no cache
    run = jax.jit(functools.partial(_run_impl, objective, constraint, config))
    return run(x0, lam0, key, hyper)
  return _run(objective, constraint, config, x0, lam0, key, hyper)


def _run_impl(objective, constraint, config, x0, lam0, key, hyper) -> EALSketchResult:
  """The solver loop, compiled once per (objective, constraint, config) and dtype/shape."""
  variant, sketch_size, max_iterations, sketch_max_iterations, linesearch_max_iterations = config
  tol, mu, nu, delta, xi_b, beta, rho, singular_tol = hyper
  dtype = x0.dtype
  n, m = x0.shape[0], lam0.shape[0]
  size = n + m
  f = lambda x: jnp.asarray(objective(x), dtype)  # noqa: E731
  c = lambda x: jnp.asarray(constraint(x), dtype)  # noqa: E731

  lagrangian, grad_l, merit, merit_grad = _merit_fns(f, c)

  eye = jnp.eye(n, dtype=dtype)

  def newton_step(carry):
    k, x, lam, mu_, nu_, delta_, errors, sk_its, steps, _ = carry
    g = grad_l(x, lam)
    cx, c_vjp = jax.vjp(c, x)

    def hess_vec(v):
      return hvp(lagrangian, x, v, lam)

    def jac_vec(v):
      return jax.jvp(c, (x,), (v,))[1]

    # Safeguard quantities (dense, as in the official code): n HVPs and m VJPs.
    hess = jax.vmap(hess_vec)(eye)
    hess = 0.5 * (hess + hess.T)
    jac = jax.vmap(lambda w: c_vjp(w)[0])(jnp.eye(m, dtype=dtype))
    xi_g = jnp.linalg.eigvalsh(jac @ jac.T)[0]
    singular = xi_g < singular_tol
    if m < n:
      q, _ = jnp.linalg.qr(jac.T, mode="complete")
      z = q[:, m:]
      red = z.T @ hess @ z
      red_min = jnp.linalg.eigvalsh(0.5 * (red + red.T))[0]
      shift = jnp.where(red_min < _REDUCED_EIG_TOL, xi_b + jnp.linalg.norm(hess), 0.0)
    else:
      shift = jnp.zeros((), dtype)
    b_mat = hess + shift * eye
    b_norm = jnp.linalg.norm(b_mat)
    g_norm = jnp.linalg.norm(jac)
    psi = (
      _PSI_FACTOR * jnp.maximum(b_norm**2, 1.0) / (jnp.minimum(xi_g, 1.0) * jnp.minimum(xi_b, 1.0))
    )
    upsilon = jnp.maximum(jnp.maximum(g_norm, jnp.linalg.norm(hess)), 1.0)
    k_norm = jnp.sqrt(b_norm**2 + 2.0 * g_norm**2)

    def trial(mu_, nu_):
      return (0.5 - beta) * nu_ / ((1.0 + mu_ + nu_) * upsilon**2 * psi**2)

    delta_ = jnp.maximum(jnp.minimum(delta_, trial(mu_, nu_)), _DELTA_FLOOR)
    rhs = -jnp.concatenate([g, cx])
    rhs_norm = jnp.linalg.norm(rhs)

    def kkt(v):  # matrix-free K v: one HVP, one JVP and one VJP
      vx, vl = v[:n], v[n:]
      return jnp.concatenate([hess_vec(vx) + shift * vx + c_vjp(vl)[0], jac_vec(vx)])

    def sketch_solve(z, r, t_total, delta_):
      """Sketch-and-project iterations until the adaptive accuracy condition holds."""
      bound = delta_ * rhs_norm  # theta = 1, as in the official code

      def cond(s):
        z, r, t, tt = s
        return (k_norm * psi * jnp.linalg.norm(r) > bound) & (t < sketch_max_iterations)

      def body(s):
        z, r, t, tt = s
        sk = _draw_sketch(key, k, tt, size, sketch_size, variant).astype(dtype)
        w = jax.vmap(kkt, in_axes=1, out_axes=1)(sk)  # K S, (size, s)
        y = _psd_pinv_solve(w.T @ w, sk.T @ r)
        z = z - w @ y
        return z, kkt(z) - rhs, t + 1, tt + 1

      z, r, _, t_total = jax.lax.while_loop(cond, body, (z, r, jnp.int32(0), t_total))
      return z, r, t_total

    def penalty_cond(s):
      _, _, _, _, _, _, done = s
      return ~done

    def penalty_body(s):
      z, r, t_total, mu_, nu_, delta_, _ = s
      if variant == "exact":
        kmat = jnp.block([[b_mat, jac.T], [jac, jnp.zeros((m, m), dtype)]])
        z = jnp.linalg.solve(kmat, rhs)
      else:
        z, r, t_total = sketch_solve(z, r, t_total, delta_)
      slope = jnp.dot(merit_grad(x, lam, mu_, nu_), z)
      caps = (mu_ > _MU_CAP) | (nu_ < _NU_FLOOR)
      done = caps | ~(slope > -(nu_ / 2.0) * rhs_norm**2)
      mu_new, nu_new = mu_ * rho**2, nu_ / rho
      delta_new = jnp.maximum(jnp.minimum(delta_ / rho**4, trial(mu_new, nu_new)), _DELTA_FLOOR)
      mu_ = jnp.where(done, mu_, mu_new)
      nu_ = jnp.where(done, nu_, nu_new)
      delta_ = jnp.where(done, delta_, delta_new)
      return z, r, t_total, mu_, nu_, delta_, done

    z0 = jnp.zeros((size,), dtype)
    s0 = (z0, -rhs, jnp.int32(0), mu_, nu_, delta_, jnp.asarray(False))
    z, _, t_total, mu_, nu_, delta_, _ = jax.lax.while_loop(penalty_cond, penalty_body, s0)
    slope = jnp.dot(merit_grad(x, lam, mu_, nu_), z)

    dx, dl = z[:n], z[n:]
    m0 = merit(x, lam, mu_, nu_)

    def ls_cond(s):
      alpha, val, i = s
      return (val > m0 + alpha * beta * slope) & (i < linesearch_max_iterations)

    def ls_body(s):
      alpha, _, i = s
      alpha = 0.5 * alpha
      return alpha, merit(x + alpha * dx, lam + alpha * dl, mu_, nu_), i + 1

    one = jnp.ones((), dtype)
    alpha, _, _ = jax.lax.while_loop(
      ls_cond, ls_body, (one, merit(x + dx, lam + dl, mu_, nu_), jnp.int32(0))
    )
    x_new = jnp.where(singular, x, x + alpha * dx)
    lam_new = jnp.where(singular, lam, lam + alpha * dl)
    kkt_new = jnp.linalg.norm(jnp.concatenate([grad_l(x_new, lam_new), c(x_new)]))
    errors = jnp.where(singular, errors, errors.at[k + 1].set(kkt_new))
    sk_its = jnp.where(singular, sk_its, sk_its.at[k].set(t_total))
    steps = jnp.where(singular, steps, steps.at[k].set(alpha))
    k = jnp.where(singular, k, k + 1)
    return k, x_new, lam_new, mu_, nu_, delta_, errors, sk_its, steps, singular

  def outer_cond(carry):
    k, _, _, _, _, _, errors, _, _, singular = carry
    return (k < max_iterations) & (errors[k] > tol) & ~singular

  kkt0 = jnp.linalg.norm(jnp.concatenate([grad_l(x0, lam0), c(x0)]))
  errors0 = jnp.full((max_iterations + 1,), jnp.nan, dtype).at[0].set(kkt0)
  carry = (
    jnp.int32(0),
    x0,
    lam0,
    mu,
    nu,
    delta,
    errors0,
    jnp.zeros((max_iterations,), jnp.int32),
    jnp.full((max_iterations,), jnp.nan, dtype),
    jnp.asarray(False),
  )
  k, x, lam, mu_, nu_, delta_, errors, sk_its, steps, singular = jax.lax.while_loop(
    outer_cond, newton_step, carry
  )
  last = errors[k]
  # A non-finite start under jit cannot raise: the documented poison is a NaN iterate.
  valid = jnp.isfinite(kkt0)
  nan = jnp.asarray(math.nan, dtype)
  x = jnp.where(valid, x, nan)
  lam = jnp.where(valid, lam, nan)
  return EALSketchResult(
    x=x,
    multipliers=lam,
    n_iters=k,
    errors=errors,
    converged=last <= tol,
    sketch_iterations=sk_its,
    stepsizes=steps,
    mu=mu_,
    nu=nu_,
    delta=delta_,
    singular=singular,
  )


_run = jax.jit(_run_impl, static_argnums=(0, 1, 2))
