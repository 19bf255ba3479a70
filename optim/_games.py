"""Small-Gain Nash (SGN): a block small-gain certificate and the projected flows it certifies.

A game of :math:`n` players, player :math:`i` minimising :math:`f_i(x_1, \\dots, x_n)` over
its own block :math:`x_i`. The pseudo-gradient is
:math:`F(x) = (\\nabla_{x_1} f_1(x), \\dots, \\nabla_{x_n} f_n(x))` and its Jacobian has blocks
:math:`J_{ij} = \\nabla_{x_j} \\nabla_{x_i} f_i`. The certificate needs, on a region,

- the curvature of each player, :math:`\\mu_i \\le \\lambda_{\\min}(J_{ii})` (``J_ii`` is the
  Hessian of :math:`f_i` in its own block, so symmetric), and
- the cross-player couplings :math:`L_{ij} \\ge \\|J_{ij}\\|_2` (:math:`i \\ne j`).

Every bound comes from matrix-free products (HVPs, JVPs and VJPs of :math:`F`) through
:func:`optim.curvature.lanczos`; no Jacobian is formed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optim._validation import (
  as_key,
  check_choice,
  check_floating,
  check_output,
  check_scalar,
  is_traced,
)
from optim.curvature._eigen import lanczos, tridiagonal
from optim.curvature._operators import LinearOperator, shape_dtype_tree

PyTree = Any


class GameBounds(NamedTuple):
  """Curvature and coupling bounds of a game (:func:`game_bounds`).

  Attributes:
    curvature: ``(n,)``, :math:`\\mu_i`, the smallest eigenvalue of player :math:`i`'s own
      Hessian :math:`J_{ii} = \\nabla^2_{x_i} f_i`.
    block_norms: ``(n, n)``, :math:`N_{ij} = \\|J_{ij}\\|_2`: the cross-player Lipschitz
      couplings :math:`L_{ij}` off the diagonal, :math:`\\|J_{ii}\\|_2` on it.
  """

  curvature: jax.Array
  block_norms: jax.Array


class SmallGainCertificate(NamedTuple):
  """A block small-gain certificate (:func:`small_gain_certificate`).

  Attributes:
    certified: bool, every :math:`\\mu_i > 0` and :math:`\\rho(\\Gamma) < 1`.
    spectral_radius: :math:`\\rho(\\Gamma)` of the gain matrix (``inf`` when some
      :math:`\\mu_i \\le 0`).
    gain: ``(n, n)``, :math:`\\Gamma_{ij} = L_{ij} / \\mu_i` off the diagonal, 0 on it.
    weights: ``(n,)``, the block weights :math:`w_i` of the metric
      :math:`\\|x\\|_W^2 = \\sum_i w_i \\|x_i\\|^2` (normalised to sum to :math:`n`).
    rate: :math:`\\alpha`, the SGN margin: the pseudo-gradient is :math:`\\alpha`-strongly
      monotone in :math:`\\|\\cdot\\|_W` and the flow :math:`\\dot x = -F(x)` contracts as
      :math:`e^{-\\alpha t}` (negative: no contraction certified with these weights).
    lipschitz: :math:`L_W`, a Lipschitz bound of :math:`F` in :math:`\\|\\cdot\\|_W`.
    max_step_size: :math:`2\\alpha / L_W^2`: projected Euler contracts for step sizes below
      it (0 when not certified).
  """

  certified: jax.Array
  spectral_radius: jax.Array
  gain: jax.Array
  weights: jax.Array
  rate: jax.Array
  lipschitz: jax.Array
  max_step_size: jax.Array


class NashFlowResult(NamedTuple):
  """Result of :func:`nash_flow`.

  Attributes:
    params: the last iterate, a tuple with one pytree per player.
    n_iters: steps taken (int32).
    errors: ``(max_iterations,)``, the fixed-point residual
      :math:`\\|x_{k+1} - x_k\\|_2 / h` of step :math:`k` (the norm of :math:`F` for an
      unconstrained game), the quantity compared with ``tol``; NaN after the stop.
    converged: whether the last residual is at most ``tol``.
  """

  params: tuple
  n_iters: jax.Array
  errors: jax.Array
  converged: jax.Array


def _check_players(losses: Any, params: Any, where: str) -> tuple[tuple, tuple]:
  if not isinstance(losses, (list, tuple)) or not losses:
    raise TypeError(
      f"{where}: losses must be a non-empty list or tuple of callables (one per player), "
      f"got {type(losses).__name__}"
    )
  for i, f in enumerate(losses):
    if not callable(f):
      raise TypeError(
        f"{where}: losses[{i}] must be callable (params -> scalar), got {type(f).__name__}"
      )
  if not isinstance(params, (list, tuple)):
    raise TypeError(
      f"{where}: params must be a list or tuple with one pytree per player, got "
      f"{type(params).__name__}"
    )
  if len(params) != len(losses):
    raise ValueError(
      f"{where}: params must hold one pytree per player: got {len(params)} for {len(losses)} losses"
    )
  for i, p in enumerate(params):
    check_floating(p, f"params[{i}]", where, allow_empty=False)
  return tuple(losses), tuple(params)


def _replace(params: tuple, i: int, xi: PyTree) -> tuple:
  return params[:i] + (xi,) + params[i + 1 :]


def _loss_i(losses: tuple, params: tuple, i: int, where: str) -> Callable[[PyTree], jax.Array]:
  def f(xi):
    out = losses[i](_replace(params, i, xi))
    check_output(out, scalar=True, name=f"losses[{i}]", where=where)
    return out

  return f


def pseudo_gradient(losses: Sequence[Callable], params: Sequence[PyTree]) -> tuple:
  r"""The pseudo-gradient of a game: each player's gradient of its own loss in its own block.

  .. math::
    F(x) = \bigl(\nabla_{x_1} f_1(x), \dots, \nabla_{x_n} f_n(x)\bigr).

  Args:
    losses: one callable per player, ``params -> scalar`` (``params`` the tuple of all
      players' pytrees).
    params: a list or tuple with one pytree per player.

  Returns:
    A tuple shaped like ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.games import pseudo_gradient
    >>> f1 = lambda p: 0.5 * p[0] ** 2 + p[0] * p[1]
    >>> f2 = lambda p: 0.5 * p[1] ** 2 - p[0] * p[1]
    >>> pseudo_gradient([f1, f2], (jnp.array(1.0), jnp.array(2.0)))
    (Array(3., dtype=float32, weak_type=True), Array(1., dtype=float32, weak_type=True))

  References:
    Rosen, "Existence and uniqueness of equilibrium points for concave n-person games",
    Econometrica 33(3), 1965 (the pseudo-gradient).
  """
  losses, params = _check_players(losses, params, "pseudo_gradient")
  return _pseudo_gradient(losses, params, "pseudo_gradient")


def _pseudo_gradient(losses: tuple, params: tuple, where: str) -> tuple:
  return tuple(jax.grad(_loss_i(losses, params, i, where))(params[i]) for i in range(len(params)))


def _ritz(op: LinearOperator, key, num_iterations: int) -> jax.Array:
  """Ritz values of ``op`` from ``min(num_iterations, dim)`` Lanczos steps (no padding zeros)."""
  m = min(num_iterations, op.dim)
  res = lanczos(op, key=key, num_iterations=m)
  t = tridiagonal(res)
  # After a breakdown the trailing block of T is zero; its diagonal is set to alpha_1 (a
  # Rayleigh quotient of op, inside the Ritz interval) so it moves neither end.
  valid = jnp.arange(m) < res.n_iters
  t = jnp.where(
    valid[:, None] & valid[None, :], t, jnp.where(jnp.eye(m, dtype=bool), res.alphas[0], 0.0)
  )
  return jnp.linalg.eigvalsh(t)


def game_bounds(
  losses: Sequence[Callable],
  params: Sequence[PyTree],
  *,
  key: Any,
  num_iterations: int = 20,
) -> GameBounds:
  r"""Each player's curvature and the cross-player couplings at ``params``, matrix-free.

  With :math:`J_{ij} = \nabla_{x_j}\nabla_{x_i} f_i` the blocks of the pseudo-gradient's
  Jacobian,

  .. math::
    \mu_i = \lambda_{\min}(J_{ii}), \qquad
    N_{ii} = \max |\lambda(J_{ii})|, \qquad
    N_{ij} = \sqrt{\lambda_{\max}(J_{ij}^\top J_{ij})} = \|J_{ij}\|_2 .

  Each comes from :func:`optim.curvature.lanczos` on an operator built from products only
  (an HVP for :math:`J_{ii}`, a JVP then a VJP for :math:`J_{ij}^\top J_{ij}`), with
  ``min(num_iterations, dim)`` steps. With ``num_iterations`` at least a block's dimension
  the values are exact; below it, the Ritz values lie inside the spectrum, so
  :math:`\mu_i` may be over- and :math:`N_{ij}` under-estimated (not a certified bound
  then). The bounds hold at this point; for a region, combine several points (the least
  curvature and the largest norms) before :func:`small_gain_certificate`. For a
  quadratic game they are the same everywhere.

  Args:
    losses: one callable per player, ``params -> scalar``.
    params: a list or tuple with one pytree per player.
    key: PRNG key for the Lanczos start vectors (typed key, raw ``uint32`` key or int
      seed).
    num_iterations: Lanczos steps per block (static, >= 1; capped at each block's
      dimension).

  Returns:
    A :class:`GameBounds`.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from optim.games import game_bounds
    >>> f1 = lambda p: jnp.sum(p[0] ** 2 + 3.0 * p[0] * p[1])
    >>> f2 = lambda p: jnp.sum(0.5 * p[1] ** 2 - 0.1 * p[0] * p[1])
    >>> b = game_bounds([f1, f2], (jnp.array([0.0]), jnp.array([0.0])), key=0)
    >>> np.round(np.asarray(b.curvature, float), 3).tolist()
    [2.0, 1.0]
    >>> np.round(np.asarray(b.block_norms, float), 3).tolist()
    [[2.0, 3.0], [0.1, 1.0]]

  References:
    Sharma, "Small-Gain Nash: Certified Contraction to Nash Equilibria in Differentiable
    Games", arXiv:2512.06791 (the curvature and coupling parameters of the certificate).
  """
  where = "game_bounds"
  losses, params = _check_players(losses, params, where)
  num_iterations = check_scalar("num_iterations", num_iterations, lo=1, integer=True, static=True)
  keys = jax.random.split(as_key(key), len(params) ** 2)
  n = len(params)
  grads = [
    (lambda i: lambda xs: jax.grad(_loss_i(losses, xs, i, where))(xs[i]))(i) for i in range(n)
  ]
  curv, norms = [], [[None] * n for _ in range(n)]
  for i in range(n):
    like = shape_dtype_tree(params[i])

    def hess(v, i=i):
      return jax.jvp(lambda xi: grads[i](_replace(params, i, xi)), (params[i],), (v,))[1]

    ritz = _ritz(LinearOperator(hess, like), keys[i * n + i], num_iterations)
    curv.append(ritz[0])
    norms[i][i] = jnp.maximum(jnp.abs(ritz[0]), jnp.abs(ritz[-1]))
    for j in range(n):
      if j == i:
        continue

      def gram(v, i=i, j=j):
        gi = lambda xj: grads[i](_replace(params, j, xj))  # noqa: E731
        u = jax.jvp(gi, (params[j],), (v,))[1]
        return jax.vjp(gi, params[j])[1](u)[0]

      ritz = _ritz(
        LinearOperator(gram, shape_dtype_tree(params[j])), keys[i * n + j], num_iterations
      )
      norms[i][j] = jnp.sqrt(jnp.maximum(ritz[-1], 0.0))
  dtype = jnp.result_type(*curv)
  return GameBounds(
    jnp.stack(curv).astype(dtype), jnp.stack([jnp.stack(r) for r in norms]).astype(dtype)
  )


def _check_bounds(bounds: Any) -> tuple[jax.Array, jax.Array]:
  if not isinstance(bounds, GameBounds):
    raise TypeError(
      f"small_gain_certificate: bounds must be a GameBounds (from game_bounds or "
      f"GameBounds(curvature, block_norms)), got {type(bounds).__name__}"
    )
  mu = jnp.asarray(bounds.curvature)
  nrm = jnp.asarray(bounds.block_norms)
  n = mu.shape[0] if mu.ndim == 1 else -1
  if mu.ndim != 1 or n < 1 or nrm.shape != (n, n):
    raise ValueError(
      "small_gain_certificate: bounds must have curvature of shape (n,) and block_norms of "
      f"shape (n, n), got {mu.shape} and {nrm.shape}"
    )
  for name, x in (("curvature", mu), ("block_norms", nrm)):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"small_gain_certificate: bounds.{name} must be floating, got {x.dtype}")
    if not is_traced(x):
      arr = np.asarray(x)
      if not np.all(np.isfinite(arr)):
        raise ValueError(
          f"small_gain_certificate: bounds.{name} must be finite (a NaN or inf bound "
          f"certifies nothing), got {arr.tolist()}"
        )
  if not is_traced(nrm) and np.any(np.asarray(nrm) < 0):
    raise ValueError(
      "small_gain_certificate: bounds.block_norms must be non-negative, got "
      f"{np.asarray(nrm).tolist()}"
    )
  return mu, nrm


def small_gain_certificate(
  bounds: GameBounds, *, weights: jax.Array | None = None
) -> SmallGainCertificate:
  r"""The block small-gain (SGN) certificate of a game from its curvature and couplings.

  With :math:`\mu_i` each player's curvature and :math:`L_{ij}` the couplings
  (:class:`GameBounds`), the gain matrix and the comparison matrix are

  .. math::
    \Gamma_{ij} = \frac{L_{ij}}{\mu_i}\ (i \ne j), \qquad
    C = \mathrm{diag}(\mu) - (L_{ij})_{i \ne j}.

  The game is certified when every :math:`\mu_i > 0` and :math:`\rho(\Gamma) < 1` (then
  :math:`C` is a nonsingular M-matrix). In the block metric
  :math:`\|x\|_W^2 = \sum_i w_i \|x_i\|^2`, :math:`D = \mathrm{diag}(w)`,

  .. math::
    \langle x - y, F(x) - F(y) \rangle_W \ge \alpha \|x - y\|_W^2, \qquad
    \alpha = \lambda_{\min}\Bigl(\tfrac12 \bigl(D^{1/2} C D^{-1/2}
      + D^{-1/2} C^\top D^{1/2}\bigr)\Bigr),

  so the flow :math:`\dot x = -F(x)` contracts as :math:`e^{-\alpha t}`, and
  :math:`\|F(x) - F(y)\|_W \le L_W \|x - y\|_W` with
  :math:`L_W = \|D^{1/2} N D^{-1/2}\|_2`. The default weights are
  :math:`w = (C^{-\top}\mathbf 1) / (C^{-1}\mathbf 1)` (elementwise), which make
  :math:`\alpha > 0` whenever the game is certified (:math:`n \times n` solves with the
  comparison matrix of the :math:`n` players; no operator of the game is inverted).

  Non-finite bounds raise a ``ValueError`` when concrete; traced, they give a
  certificate with ``certified=False`` and NaN rates.

  Args:
    bounds: a :class:`GameBounds` (e.g. from :func:`game_bounds`).
    weights: ``(n,)`` positive block weights (default: the M-matrix weights above, or
      ones when not certified).

  Returns:
    A :class:`SmallGainCertificate`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.games import GameBounds, small_gain_certificate
    >>> b = GameBounds(jnp.array([2.0, 1.0]), jnp.array([[2.0, 3.0], [0.1, 1.0]]))
    >>> c = small_gain_certificate(b)
    >>> bool(c.certified), round(float(c.spectral_radius), 4), bool(c.rate > 0)
    (True, 0.3873, True)

  References:
    Sharma, "Small-Gain Nash: Certified Contraction to Nash Equilibria in Differentiable
    Games", arXiv:2512.06791 (the block small-gain condition and the weighted metric).
  """
  mu, nrm = _check_bounds(bounds)
  n = mu.shape[0]
  dtype = jnp.result_type(mu.dtype, nrm.dtype)
  mu, nrm = mu.astype(dtype), nrm.astype(dtype)
  off = nrm * (1.0 - jnp.eye(n, dtype=dtype))
  positive = jnp.all(mu > 0)
  gain = jnp.where(positive, off / jnp.where(mu > 0, mu, 1.0)[:, None], jnp.inf * off)
  rho = jnp.where(
    positive, jnp.max(jnp.abs(jnp.linalg.eigvals(jnp.where(positive, gain, 0.0)))), jnp.inf
  ).astype(dtype)
  finite = jnp.all(jnp.isfinite(mu)) & jnp.all(jnp.isfinite(nrm))
  certified = positive & (rho < 1) & finite
  comp = jnp.diag(mu) - off
  if weights is None:
    one = jnp.ones(n, dtype)
    safe = jnp.where(certified, comp, jnp.eye(n, dtype=dtype))
    u, v = jnp.linalg.solve(safe, one), jnp.linalg.solve(safe.T, one)
    w = jnp.where(certified, v / u, one)
  else:
    w = jnp.asarray(weights)
    if w.shape != (n,):
      raise ValueError(f"small_gain_certificate: weights must have shape ({n},), got {w.shape}")
    if not jnp.issubdtype(w.dtype, jnp.floating):
      w = w.astype(dtype)
    if not is_traced(w):
      arr = np.asarray(w)
      if not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
        raise ValueError(
          f"small_gain_certificate: weights must be positive and finite, got {arr.tolist()}"
        )
    w = w.astype(dtype)
  w = w * (n / jnp.sum(w))
  s = jnp.sqrt(w)
  scaled = s[:, None] * comp / s[None, :]
  rate = jnp.linalg.eigvalsh(0.5 * (scaled + scaled.T))[0]
  lip = jnp.linalg.norm(s[:, None] * nrm / s[None, :], ord=2)
  max_step = jnp.where(certified & (rate > 0), 2.0 * rate / lip**2, 0.0)
  nan = jnp.asarray(jnp.nan, dtype)
  rate, lip, max_step = (jnp.where(finite, x, nan) for x in (rate, lip, max_step))
  return SmallGainCertificate(certified, rho, gain, w, rate, lip, max_step)


def contraction_factor(
  certificate: SmallGainCertificate,
  step_size: Any,
  *,
  variant: Literal["euler", "rk4"] = "euler",
) -> jax.Array:
  r"""A certified per-step contraction factor of the projected Euler or RK4 flow.

  With :math:`\alpha`, :math:`L_W` and the metric :math:`\|\cdot\|_W` of the certificate
  and step size :math:`h`, one step maps two points :math:`x, y` to points with
  :math:`\|x^+ - y^+\|_W \le q(h)\, \|x - y\|_W`, where

  .. math::
    q_{\mathrm{Euler}}(h) = \sqrt{1 - 2h\alpha + h^2 L_W^2}, \qquad
    q_{\mathrm{RK4}}(h) = q_{\mathrm{Euler}}(h) + \tfrac{(hL_W)^2}{2} + \tfrac{(hL_W)^3}{6}
      + \tfrac{(hL_W)^4}{24}.

  The Euler factor follows from strong monotonicity and the Lipschitz bound; the RK4 one
  writes the RK4 increment with mean-value Jacobians (each obeying the same two bounds):
  its first-order part is an Euler step with their weighted average, and the
  higher-order products are bounded by powers of :math:`hL_W`. A projection onto a
  product of convex sets (one per player) is nonexpansive in :math:`\|\cdot\|_W`, so the
  factors also hold for the projected flows. The paper states step-size bounds of this
  kind from the margin and a Lipschitz constant; the RK4 constants here are this
  derivation's. ``q < 1`` certifies linear convergence to the unique Nash equilibrium.

  Args:
    certificate: a :class:`SmallGainCertificate`.
    step_size: :math:`h > 0`.
    variant: ``"euler"`` or ``"rk4"``.

  Returns:
    The factor :math:`q(h)` (a scalar).

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.games import GameBounds, small_gain_certificate, contraction_factor
    >>> c = small_gain_certificate(GameBounds(jnp.array([1.0, 1.0]), jnp.eye(2)))
    >>> float(contraction_factor(c, 0.5))
    0.5

  References:
    Sharma, "Small-Gain Nash: Certified Contraction to Nash Equilibria in Differentiable
    Games", arXiv:2512.06791 (projected Euler and RK4 under the SGN margin).
  """
  if not isinstance(certificate, SmallGainCertificate):
    raise TypeError(
      "contraction_factor: certificate must be a SmallGainCertificate, got "
      f"{type(certificate).__name__}"
    )
  variant = check_choice("variant", variant, ("euler", "rk4"))
  check_scalar("step_size", step_size, lo=0.0, lo_open=True)
  a, lw = certificate.rate, certificate.lipschitz
  h = jnp.asarray(step_size, a.dtype)
  q = jnp.sqrt(jnp.maximum(1.0 - 2.0 * h * a + (h * lw) ** 2, 0.0))
  if variant == "rk4":
    t = h * lw
    q = q + t**2 / 2 + t**3 / 6 + t**4 / 24
  return q


def _norm(tree: PyTree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def nash_flow(
  losses: Sequence[Callable],
  params: Sequence[PyTree],
  *,
  step_size: float,
  max_iterations: int = 100,
  tol: float = 0.0,
  variant: Literal["euler", "rk4"] = "euler",
  projection: Sequence[Callable | None] | None = None,
) -> NashFlowResult:
  r"""Runs the projected Euler or RK4 discretisation of the pseudo-gradient flow of a game.

  The flow :math:`\dot x = -F(x)` with the pseudo-gradient :math:`F` (:func:`pseudo_gradient`),
  with step :math:`h` and the per-player projection :math:`\Pi = \Pi_1 \times \dots \times
  \Pi_n`:

  .. math::
    \text{Euler:}\quad x_{k+1} = \Pi\bigl(x_k - h F(x_k)\bigr), \qquad
    \text{RK4:}\quad x_{k+1} = \Pi\Bigl(x_k - \tfrac h6 (k_1 + 2k_2 + 2k_3 + k_4)\Bigr),

  :math:`k_1 = F(x_k)`, :math:`k_2 = F(x_k - \tfrac h2 k_1)`, :math:`k_3 = F(x_k - \tfrac h2
  k_2)`, :math:`k_4 = F(x_k - h k_3)`. One ``lax.while_loop``; it stops after
  ``max_iterations`` steps or once the residual :math:`\|x_{k+1} - x_k\| / h` is at most
  ``tol``. Under a :class:`SmallGainCertificate`, each step contracts by
  :func:`contraction_factor`. A non-finite residual stops the loop; called eagerly that is
  a ``ValueError``, traced the result has ``converged=False`` and the NaN in ``errors``.

  Args:
    losses: one callable per player, ``params -> scalar``.
    params: a list or tuple with one pytree per player, the start :math:`x_0`.
    step_size: :math:`h > 0`.
    max_iterations: the most steps (static, >= 1; it sizes ``errors``).
    tol: stop once the residual is at most this (0: run ``max_iterations``).
    variant: ``"euler"`` or ``"rk4"``.
    projection: ``None`` (unconstrained) or one entry per player: ``None`` or a callable
      ``x_i -> x_i`` projecting onto that player's convex set.

  Returns:
    A :class:`NashFlowResult`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.games import nash_flow
    >>> f1 = lambda p: 0.5 * p[0] ** 2 + 2.0 * p[0] * p[1]
    >>> f2 = lambda p: 0.5 * p[1] ** 2 - 0.1 * p[0] * p[1]
    >>> res = nash_flow([f1, f2], (jnp.array(1.0), jnp.array(1.0)), step_size=0.2,
    ...                 max_iterations=200, tol=1e-5, variant="rk4")
    >>> bool(res.converged), bool(abs(res.params[0]) < 1e-4)
    (True, True)

  References:
    Sharma, "Small-Gain Nash: Certified Contraction to Nash Equilibria in Differentiable
    Games", arXiv:2512.06791 (the projected Euler and RK4 flows).
  """
  where = "nash_flow"
  losses, params = _check_players(losses, params, where)
  variant = check_choice("variant", variant, ("euler", "rk4"))
  check_scalar("step_size", step_size, lo=0.0, lo_open=True)
  max_iterations = check_scalar("max_iterations", max_iterations, lo=1, integer=True, static=True)
  check_scalar("tol", tol, lo=0.0)
  n = len(params)
  if projection is None:
    projection = (None,) * n
  if not isinstance(projection, (list, tuple)) or len(projection) != n:
    raise ValueError(
      f"{where}: projection must be None or a list/tuple with one entry per player ({n}), "
      f"got {projection!r}"
    )
  for i, p in enumerate(projection):
    if p is not None and not callable(p):
      raise TypeError(f"{where}: projection[{i}] must be None or callable, got {type(p).__name__}")

  def proj(x):
    return tuple(x[i] if p is None else p(x[i]) for i, p in enumerate(projection))

  def F(x):
    return _pseudo_gradient(losses, x, where)

  def axpy(a, y, x):
    return jax.tree.map(lambda xi, yi: xi + a * yi, x, y)

  dtype = jnp.result_type(*jax.tree.leaves(params))
  h = jnp.asarray(step_size, dtype)

  def step(x):
    k1 = F(x)
    if variant == "euler":
      inc = k1
    else:
      k2 = F(axpy(-h / 2, k1, x))
      k3 = F(axpy(-h / 2, k2, x))
      k4 = F(axpy(-h, k3, x))
      inc = jax.tree.map(lambda a, b, c, d: (a + 2 * b + 2 * c + d) / 6, k1, k2, k3, k4)
    new = proj(axpy(-h, inc, x))
    for i, (a, b) in enumerate(zip(new, x)):
      if jax.tree.structure(a) != jax.tree.structure(b):
        raise ValueError(f"{where}: projection[{i}] must return a pytree like params[{i}]")
    return new, _norm(jax.tree.map(lambda a, b: a - b, new, x)) / h

  tol_ = jnp.asarray(tol, dtype)
  errors0 = jnp.full((max_iterations,), jnp.nan, dtype)

  def cond(c):
    k, _, err, _ = c
    return (k < max_iterations) & ((k == 0) | (jnp.isfinite(err) & (err > tol_)))

  def body(c):
    k, x, _, errors = c
    new, err = step(x)
    ok = jnp.isfinite(err)
    x = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, x)
    return k + 1, x, err, errors.at[k].set(err)

  init = (jnp.int32(0), params, jnp.asarray(jnp.inf, dtype), errors0)
  k, x, err, errors = jax.lax.while_loop(cond, body, init)
  converged = jnp.isfinite(err) & (err <= tol_)
  if not is_traced(err) and not np.isfinite(float(err)):
    raise ValueError(
      f"{where}: the pseudo-gradient became non-finite at step {int(k) - 1} (residual "
      f"{float(err)}); check the losses or use a smaller step_size"
    )
  return NashFlowResult(x, k, errors, converged)
