"""BO-REP: bilevel optimization under unbounded smoothness (Hao, Gong & Liu, ICLR 2024).

Normalized momentum on the upper level, a refined lower-level start and periodic
lower-level updates, with the hypergradient of the official code: the adjoint ``z`` of
:math:`\\nabla^2_{yy} g\\, z = \\nabla_y f` follows one SGD step per iteration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu

from optim._bilevel._hypergrad import implicit_hypergradient
from optim._validation import (
  as_key,
  check_choice,
  check_flag,
  check_floating,
  check_like,
  check_objective,
  check_scalar,
  concrete,
  is_traced,
  poison,
)

PyTree = Any

__all__ = ["BOREPResult", "BOREPState", "borep", "borep_init", "borep_step"]

_SIG = "(x, y, key) -> scalar"
VARIANTS = ("official", "neumann", "cg")
# The official code's normalization guard: lr / (1e-10 + ||m||).
_NORM_EPS = 1e-10


class BOREPState(NamedTuple):
  """State of :func:`borep_step`.

  Attributes:
    x: the upper-level variable :math:`x_t` (a pytree).
    y: the lower-level variable :math:`y_t` (a pytree).
    z: the adjoint estimate :math:`z_t \\approx [\\nabla^2_{yy} g]^{-1}\\nabla_y f` (like ``y``).
    momentum: the momentum :math:`m_t` of the hypergradient estimates (like ``x``).
    grad: the last hypergradient estimate :math:`\\hat\\nabla\\Phi_t` (like ``x``).
    count: the iteration counter :math:`t` (int32).
  """

  x: PyTree
  y: PyTree
  z: PyTree
  momentum: PyTree
  grad: PyTree
  count: jax.Array


class BOREPResult(NamedTuple):
  """Result of :func:`borep`.

  Attributes:
    x: the last upper-level iterate.
    y: the last lower-level iterate.
    state: the final :class:`BOREPState` (continue with :func:`borep_step`).
    n_iters: iterations taken (stops early once ``errors <= tol``).
    errors: the norm of the hypergradient estimate per iteration, ``(max_iterations,)``,
      NaN after the stop.
    converged: whether an estimate's norm reached ``tol``.
  """

  x: PyTree
  y: PyTree
  state: BOREPState
  n_iters: jax.Array
  errors: jax.Array
  converged: jax.Array


def _check_losses(outer_loss, inner_loss, x, y, where: str) -> None:
  for name, fn in (("outer_loss", outer_loss), ("inner_loss", inner_loss)):
    if not callable(fn):
      raise TypeError(f"{where}: {name} must be a callable {_SIG}, got {type(fn).__name__}")
  key = jax.random.key(0)
  check_objective(outer_loss, (x, y, key), "outer_loss", where, _SIG)
  check_objective(inner_loss, (x, y, key), "inner_loss", where, _SIG)


def _check_finite(tree: PyTree, what: str, where: str) -> None:
  for leaf in jax.tree.leaves(tree):
    if is_traced(leaf):
      continue
    if not np.all(np.isfinite(np.asarray(leaf))):
      raise ValueError(f"{where}: {what} must be finite (no NaN or inf)")


def _check_vars(x, y, where: str) -> None:
  check_floating(x, "x", where, allow_empty=False)
  check_floating(y, "y", where, allow_empty=False)
  _check_finite(x, "x", where)
  _check_finite(y, "y", where)


def _positive(name: str, value, where: str):
  """A positive step size: concrete -> checked; traced -> its validity (poisons the step)."""
  check_scalar(f"{where}: {name}", value, lo=0.0, lo_open=True)
  return jnp.asarray(value) > 0


def _sgd(tree, grad, lr):
  return jax.tree.map(lambda a, g: a - lr * g, tree, grad)


def _grad_y(inner_loss, x, y, key):
  return jax.grad(inner_loss, argnums=1)(x, y, key)


def borep_init(
  outer_loss: Callable[[PyTree, PyTree, jax.Array], jax.Array],
  inner_loss: Callable[[PyTree, PyTree, jax.Array], jax.Array],
  x0: PyTree,
  y0: PyTree,
  *,
  inner_learning_rate: float = 0.0,
  num_refine_steps: int = 0,
  key: Any = 0,
) -> BOREPState:
  """BO-REP's starting state, with the lower level's initialization refinement.

  The refinement runs :math:`T_0` = ``num_refine_steps`` stochastic gradient steps on the
  lower level at the fixed :math:`x_0` before the first upper-level step,

  .. math::
    y^{k+1} = y^k - \\gamma\\, \\nabla_y G(x_0, y^k; \\zeta_k), \\qquad y_0 = y^{T_0},

  so that :math:`y_0` starts near :math:`y^*(x_0)` (the paper's *initialization
  refinement*; the official code runs none beyond the step-0 periodic update, hence the
  default 0). :math:`\\zeta_k` are the ``num_refine_steps`` keys of
  ``jax.random.split(key, num_refine_steps)``. The adjoint :math:`z_0`, the momentum
  :math:`m_0` and the stored estimate start at zero, ``count`` at 0.

  Reference: Hao, Gong & Liu, "Bilevel Optimization under Unbounded Smoothness: A New
  Algorithm and Convergence Analysis", ICLR 2024 (arXiv:2401.09587).

  Args:
    outer_loss: :math:`F(x, y; \\xi)`, ``(x, y, key) -> scalar`` (a deterministic loss
      ignores ``key``).
    inner_loss: :math:`G(x, y; \\zeta)`, ``(x, y, key) -> scalar``, strongly convex in ``y``.
    x0: the upper-level start (a pytree of float arrays).
    y0: the lower-level start (a pytree of float arrays).
    inner_learning_rate: :math:`\\gamma > 0`, the lower level's SGD step (needed when
      ``num_refine_steps > 0``).
    num_refine_steps: :math:`T_0 \\ge 0`, refinement steps (static).
    key: PRNG key of the refinement's oracles.

  Returns:
    :class:`BOREPState`.

  Raises:
    TypeError: a loss is not callable or not a real scalar; a leaf is not floating point.
    ValueError: ``x0`` or ``y0`` is empty or not finite; ``num_refine_steps < 0``; a
      refinement with ``inner_learning_rate <= 0``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.bilevel import borep_init
    >>> g = lambda x, y, key: 0.5 * jnp.sum((y - x) ** 2)
    >>> f = lambda x, y, key: 0.5 * jnp.sum(y**2)
    >>> s = borep_init(f, g, jnp.ones(2), jnp.zeros(2), inner_learning_rate=0.5,
    ...                num_refine_steps=3)
    >>> s.y  # 1 - 0.5**3
    Array([0.875, 0.875], dtype=float32)
  """
  where = "borep_init"
  _check_vars(x0, y0, where)
  _check_losses(outer_loss, inner_loss, x0, y0, where)
  t0 = check_scalar(f"{where}: num_refine_steps", num_refine_steps, lo=0, integer=True, static=True)
  key = as_key(key)
  y = y0
  if t0 > 0:
    check_scalar(f"{where}: inner_learning_rate", inner_learning_rate, lo=0.0, lo_open=True)
    keys = jax.random.split(key, t0)

    def body(yy, k):
      return _sgd(yy, _grad_y(inner_loss, x0, yy, k), inner_learning_rate), None

    y, _ = jax.lax.scan(body, y0, keys)
  zeros_x = otu.tree_zeros_like(x0)
  return BOREPState(
    x=x0,
    y=y,
    z=otu.tree_zeros_like(y0),
    momentum=zeros_x,
    grad=zeros_x,
    count=jnp.zeros((), jnp.int32),
  )


def borep_step(
  outer_loss: Callable[[PyTree, PyTree, jax.Array], jax.Array],
  inner_loss: Callable[[PyTree, PyTree, jax.Array], jax.Array],
  state: BOREPState,
  *,
  key: Any,
  learning_rate: float | Callable[[jax.Array], jax.Array],
  inner_learning_rate: float,
  z_learning_rate: float,
  momentum: float = 0.9,
  interval: int = 2,
  num_inner_steps: int = 4,
  normalize: bool = True,
  variant: str = "official",
  num_neumann_terms: int = 3,
  cg_max_iterations: int = 20,
  cg_tol: float = 1e-6,
) -> BOREPState:
  """One BO-REP iteration: periodic lower-level update, hypergradient, normalized momentum.

  With :math:`t` = ``state.count``, :math:`I` = ``interval``, :math:`N` =
  ``num_inner_steps`` and the keys :math:`(\\zeta_t, \\zeta_t^{1..N-1}, \\xi_t,
  \\zeta_t')` = ``jax.random.split(key, N + 2)`` (in that order),
  ``variant="official"`` (the default; the official code's data hyper-cleaning and
  hyperparameter-optimization learners, ``bo_rep.py``):

  .. math::
    h_t &= \\nabla^2_{yy} G(x_t, y_{t-1}; \\zeta_t)\\, z_{t-1}, \\\\
    y_t &= \\mathrm{SGD}^{N}_{\\gamma}\\bigl(G(x_t, \\cdot\\,), y_{t-1}\\bigr)
      \\ \\text{if}\\ t \\bmod I = 0, \\ \\text{else}\\ y_t = y_{t-1}, \\\\
    z_t &= z_{t-1} - \\nu\\bigl(h_t - \\nabla_y F(x_t, y_t; \\xi_t)\\bigr), \\\\
    \\hat\\nabla\\Phi_t &= \\nabla_x F(x_t, y_t; \\xi_t)
      - \\nabla^2_{xy} G(x_t, y_t; \\zeta_t')\\, z_t, \\\\
    m_t &= \\beta\\, m_{t-1} + (1 - \\beta)\\, \\hat\\nabla\\Phi_t, \\qquad
    x_{t+1} = x_t - \\eta_t\\, \\frac{m_t}{10^{-10} + \\lVert m_t\\rVert},

  where :math:`\\mathrm{SGD}^N_\\gamma` is :math:`N` lower-level SGD steps, the first on
  :math:`\\zeta_t` (the code steps with the gradient it computed for :math:`h_t`), the
  others on :math:`\\zeta_t^{1..N-1}`. As in the code, :math:`h_t` is taken at the
  lower-level point *before* the periodic update and the adjoint step comes before the
  hypergradient, which uses the new :math:`z_t`. ``variant="neumann"``: :math:`z_t =
  \\nu\\sum_{q=0}^{Q-1}(I - \\nu\\nabla^2_{yy}G(x_t, y_t; \\zeta_t))^q\\,\\nabla_y F(x_t,
  y_t; \\xi_t)` (the truncated Neumann series of StocBiO / Ghadimi & Wang, :math:`Q` =
  ``num_neumann_terms``, one sample for all products) at the updated :math:`y_t`.
  ``variant="cg"``: :math:`z_t` from :func:`optim.bilevel.implicit_hypergradient` (CG on
  :math:`\\nabla^2_{yy}G(x_t, y_t; \\zeta_t)`, warm-started at :math:`z_{t-1}`, with
  :math:`F(\\cdot;\\xi_t)`); both then form :math:`\\hat\\nabla\\Phi_t` as above.
  ``normalize=False`` replaces the normalized step by :math:`x_{t+1} = x_t - \\eta_t m_t`
  (the code's ``grad_normalized=False``; with ``momentum=0``, ``interval=1`` it is a plain
  single-loop stochastic AID step). A step whose state, or whose traced hyperparameter,
  is not finite or out of range returns NaN iterates (a concrete bad hyperparameter
  raises); a diverging run is not stopped.

  Reference: Hao, Gong & Liu, "Bilevel Optimization under Unbounded Smoothness: A New
  Algorithm and Convergence Analysis", ICLR 2024 (arXiv:2401.09587); official code
  github.com/MingruiLiu-ML-Lab/Bilevel-Optimization-under-Unbounded-Smoothness
  (``data_cleaning/bo_rep.py``, ``hyperparam_opt/bo_rep.py``).

  Args:
    outer_loss: :math:`F(x, y; \\xi)`, ``(x, y, key) -> scalar``; the key draws the sample
      (a deterministic loss ignores it).
    inner_loss: :math:`G(x, y; \\zeta)`, ``(x, y, key) -> scalar``, strongly convex in ``y``.
    state: a :class:`BOREPState` (from :func:`borep_init`).
    key: PRNG key of this iteration's oracles.
    learning_rate: :math:`\\eta_t > 0`, a float or a schedule ``count -> float``.
    inner_learning_rate: :math:`\\gamma > 0`, the lower-level SGD step.
    z_learning_rate: :math:`\\nu > 0`, the adjoint's SGD step (the Neumann step for
      ``variant="neumann"``; unused by ``"cg"``).
    momentum: :math:`\\beta \\in [0, 1)`.
    interval: :math:`I \\ge 1`, iterations between lower-level updates (static).
    num_inner_steps: :math:`N \\ge 1`, SGD steps per lower-level update (static).
    normalize: normalized momentum (BO-REP) or a plain momentum step.
    variant: ``"official"``, ``"neumann"`` or ``"cg"`` (the adjoint estimate).
    num_neumann_terms: :math:`Q \\ge 1` of ``variant="neumann"`` (static).
    cg_max_iterations: CG cap of ``variant="cg"``.
    cg_tol: CG tolerance of ``variant="cg"``.

  Returns:
    the next :class:`BOREPState`.

  Raises:
    TypeError: ``state`` is not a :class:`BOREPState`; a loss is not callable or not a
      real scalar; a hyperparameter has the wrong type.
    ValueError: a concrete hyperparameter out of range, an unknown ``variant``, a state
      with non-finite or mismatched ``x``/``y``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.bilevel import borep_init, borep_step
    >>> # y*(x) = x and F(x) = |x|^4 / 4: (L0, L1)-smooth, not L-smooth.
    >>> g = lambda x, y, key: 0.5 * jnp.sum((y - x) ** 2)
    >>> f = lambda x, y, key: 0.25 * jnp.sum(y**2) ** 2
    >>> s = borep_init(f, g, jnp.array([3.0]), jnp.array([3.0]))
    >>> for t in range(50):  # normalized steps of 0.1 from x = 3 down to |x| <= 0.3
    ...   s = borep_step(f, g, s, key=t, learning_rate=0.1, inner_learning_rate=0.5,
    ...                  z_learning_rate=0.5, momentum=0.5, interval=1)
    >>> bool(abs(s.x[0]) <= 0.35)
    True
  """
  where = "borep_step"
  if not isinstance(state, BOREPState):
    raise TypeError(
      f"{where}: state must be a BOREPState (from borep_init), got {type(state).__name__}"
    )
  x, y = state.x, state.y
  check_floating(x, "state.x", where, allow_empty=False)
  check_floating(y, "state.y", where, allow_empty=False)
  check_like(state.z, y, "state.z", "state.y", where)
  check_like(state.momentum, x, "state.momentum", "state.x", where)
  _check_finite(x, "state.x", where)
  _check_finite(y, "state.y", where)
  _check_losses(outer_loss, inner_loss, x, y, where)
  variant = check_choice(f"{where}: variant", variant, VARIANTS)
  normalize = check_flag(f"{where}: normalize", normalize)
  n_in = check_scalar(f"{where}: num_inner_steps", num_inner_steps, lo=1, integer=True, static=True)
  period = check_scalar(f"{where}: interval", interval, lo=1, integer=True, static=True)
  n_terms = check_scalar(
    f"{where}: num_neumann_terms", num_neumann_terms, lo=1, integer=True, static=True
  )
  n_cg = check_scalar(
    f"{where}: cg_max_iterations", cg_max_iterations, lo=1, integer=True, static=True
  )
  check_scalar(f"{where}: cg_tol", cg_tol, lo=0.0, lo_open=True)
  check_scalar(f"{where}: momentum", momentum, lo=0.0, hi=1.0, hi_open=True)
  t = state.count
  if callable(learning_rate):
    eta = jnp.asarray(learning_rate(t))
    lr_value = concrete(eta) if not is_traced(eta) else None
    if lr_value is not None and not lr_value > 0:
      raise ValueError(f"{where}: learning_rate(count) must be positive, got {lr_value}")
    valid = eta > 0
  else:
    valid = _positive("learning_rate", learning_rate, where)
    eta = jnp.asarray(learning_rate)
  valid = valid & _positive("inner_learning_rate", inner_learning_rate, where)
  valid = valid & _positive("z_learning_rate", z_learning_rate, where)
  beta = jnp.asarray(momentum)
  valid = valid & (beta >= 0) & (beta < 1)
  keys = jax.random.split(as_key(key), n_in + 2)
  k_hvp, k_lower, k_f, k_cross = keys[0], keys[1:n_in], keys[n_in], keys[n_in + 1]

  def lower_update(yy):
    yy = _sgd(yy, _grad_y(inner_loss, x, yy, k_hvp), inner_learning_rate)
    if n_in > 1:
      yy, _ = jax.lax.scan(
        lambda c, k: (_sgd(c, _grad_y(inner_loss, x, c, k), inner_learning_rate), None),
        yy,
        k_lower,
      )
    return yy

  def hvp(yy, v):
    return jax.jvp(lambda c: _grad_y(inner_loss, x, c, k_hvp), (yy,), (v,))[1]

  if variant == "official":
    h = hvp(y, state.z)
  if period == 1:
    y_new = lower_update(y)
  else:
    y_new = jax.lax.cond(t % period == 0, lower_update, lambda yy: yy, y)
  fx, fy = jax.grad(outer_loss, argnums=(0, 1))(x, y_new, k_f)
  if variant == "official":
    z = jax.tree.map(lambda a, hh, b: a - z_learning_rate * (hh - b), state.z, h, fy)
  elif variant == "neumann":

    def term(p, _):
      p = otu.tree_sub(p, otu.tree_scale(z_learning_rate, hvp(y_new, p)))
      return p, p

    _, terms = jax.lax.scan(term, fy, None, length=n_terms - 1)
    total = jax.tree.map(lambda a, b: a + jnp.sum(b, axis=0), fy, terms)
    z = otu.tree_scale(z_learning_rate, total)
  else:
    res = implicit_hypergradient(
      lambda a, b: outer_loss(a, b, k_f),
      lambda a, b: inner_loss(a, b, k_hvp),
      x,
      y_new,
      init=state.z,
      tol=cg_tol,
      max_iterations=n_cg,
    )
    z = res.v
  z = jax.lax.stop_gradient(z)

  def coupling(xx):
    return otu.tree_vdot(_grad_y(inner_loss, xx, y_new, k_cross), z)

  grad = otu.tree_sub(fx, jax.grad(coupling)(x))
  m = jax.tree.map(lambda a, b: beta * a + (1 - beta) * b, state.momentum, grad)
  if normalize:
    step = eta / (_NORM_EPS + otu.tree_norm(m))
  else:
    step = eta
  x_new = jax.tree.map(lambda a, b: a - step * b, x, m)
  x_new = jax.tree.map(lambda a: poison(a, valid), x_new)
  y_new = jax.tree.map(lambda a: poison(a, valid), y_new)
  return BOREPState(x=x_new, y=y_new, z=z, momentum=m, grad=grad, count=t + 1)


def borep(
  outer_loss: Callable[[PyTree, PyTree, jax.Array], jax.Array],
  inner_loss: Callable[[PyTree, PyTree, jax.Array], jax.Array],
  x0: PyTree,
  y0: PyTree,
  *,
  key: Any,
  learning_rate: float | Callable[[jax.Array], jax.Array],
  inner_learning_rate: float,
  z_learning_rate: float,
  max_iterations: int = 1000,
  tol: float = 1e-6,
  momentum: float = 0.9,
  interval: int = 2,
  num_inner_steps: int = 4,
  num_refine_steps: int = 0,
  normalize: bool = True,
  variant: str = "official",
  num_neumann_terms: int = 3,
  cg_max_iterations: int = 20,
  cg_tol: float = 1e-6,
) -> BOREPResult:
  """BO-REP run to ``max_iterations`` or until the hypergradient estimate is below ``tol``.

  Solves :math:`\\min_x \\Phi(x) = F(x, y^*(x))`, :math:`y^*(x) = \\arg\\min_y G(x, y)`
  (:math:`F` possibly :math:`(L_0, L_1)`-smooth, :math:`G` strongly convex in :math:`y`)
  by :func:`borep_init` (initialization refinement of :math:`T_0` =
  ``num_refine_steps`` lower-level SGD steps) and :func:`borep_step` in one jitted
  ``lax.scan``: iteration :math:`t` uses the key ``fold_in(key, t)`` (the refinement
  ``fold_in(key, -1 mod 2**32)``). ``errors[t]`` is
  :math:`\\lVert\\hat\\nabla\\Phi_t\\rVert`, the norm of the step's hypergradient estimate;
  once it is :math:`\\le` ``tol`` the state is frozen and ``errors`` NaN afterwards
  (``converged=True``). Arguments as in :func:`borep_step`.

  Reference: Hao, Gong & Liu, ICLR 2024 (arXiv:2401.09587).

  Args:
    outer_loss: :math:`F(x, y; \\xi)`, ``(x, y, key) -> scalar``.
    inner_loss: :math:`G(x, y; \\zeta)`, ``(x, y, key) -> scalar``.
    x0: upper-level start.
    y0: lower-level start.
    key: PRNG key of the whole run.
    learning_rate: :math:`\\eta_t`, a float or a schedule ``count -> float``.
    inner_learning_rate: :math:`\\gamma`.
    z_learning_rate: :math:`\\nu`.
    max_iterations: cap on iterations, >= 1 (static).
    tol: stop once :math:`\\lVert\\hat\\nabla\\Phi_t\\rVert \\le` ``tol`` (>= 0; 0 runs all).
    momentum: :math:`\\beta`.
    interval: :math:`I`.
    num_inner_steps: :math:`N`.
    num_refine_steps: :math:`T_0`.
    normalize: normalized momentum or a plain momentum step.
    variant: ``"official"``, ``"neumann"`` or ``"cg"``.
    num_neumann_terms: :math:`Q` of ``"neumann"``.
    cg_max_iterations: CG cap of ``"cg"``.
    cg_tol: CG tolerance of ``"cg"``.

  Returns:
    :class:`BOREPResult` ``(x, y, state, n_iters, errors, converged)``.

  Raises:
    The errors of :func:`borep_init` and :func:`borep_step`; ValueError for
    ``max_iterations < 1`` or ``tol < 0``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.bilevel import borep
    >>> # y*(x) = x / 2 and F(x) = |x / 2 - 1|^2 / 2: x* = 2.
    >>> g = lambda x, y, key: jnp.sum(y**2) - jnp.vdot(x, y)
    >>> f = lambda x, y, key: 0.5 * jnp.sum((y - 1.0) ** 2)
    >>> res = borep(f, g, jnp.zeros(1), jnp.zeros(1), key=0, max_iterations=300,
    ...             learning_rate=lambda t: 0.5 * 0.97**t, inner_learning_rate=0.25,
    ...             z_learning_rate=0.25, interval=1, momentum=0.5)
    >>> bool(abs(res.x[0] - 2.0) < 1e-3)
    True
  """
  where = "borep"
  n_max = check_scalar(f"{where}: max_iterations", max_iterations, lo=1, integer=True, static=True)
  check_scalar(f"{where}: tol", tol, lo=0.0)
  key = as_key(key)
  state0 = borep_init(
    outer_loss,
    inner_loss,
    x0,
    y0,
    inner_learning_rate=inner_learning_rate,
    num_refine_steps=num_refine_steps,
    key=jax.random.fold_in(key, 2**32 - 1),
  )
  opts = dict(
    learning_rate=learning_rate,
    inner_learning_rate=inner_learning_rate,
    z_learning_rate=z_learning_rate,
    momentum=momentum,
    interval=interval,
    num_inner_steps=num_inner_steps,
    normalize=normalize,
    variant=variant,
    num_neumann_terms=num_neumann_terms,
    cg_max_iterations=cg_max_iterations,
    cg_tol=cg_tol,
  )
  # Validate everything once, eagerly (the traced run below cannot raise).
  jax.eval_shape(lambda s: borep_step(outer_loss, inner_loss, s, key=key, **opts), state0)

  @jax.jit
  def run(state0, key):
    def body(carry, t):
      state, done = carry
      new = borep_step(outer_loss, inner_loss, state, key=jax.random.fold_in(key, t), **opts)
      err = otu.tree_norm(new.grad)
      state = jax.tree.map(lambda a, b: jnp.where(done, a, b), state, new)
      err = jnp.where(done, jnp.nan, err)
      return (state, done | (err <= tol)), err

    (state, done), errors = jax.lax.scan(
      body, (state0, jnp.zeros((), bool)), jnp.arange(n_max, dtype=jnp.uint32)
    )
    return state, errors, done

  state, errors, done = run(state0, key)
  n_iters = state.count
  return BOREPResult(
    x=state.x, y=state.y, state=state, n_iters=n_iters, errors=errors, converged=done
  )
