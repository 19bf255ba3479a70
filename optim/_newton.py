"""Gradient-regularized Newton with approximate Hessians (Semenov, Jaggi, Doikov, 2025)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from optim._tree import tree_vdot
from optim._validation import (
  check_choice,
  check_floating,
  check_learning_rate,
  check_objective,
  check_scalar,
  guard,
  is_traced,
  renamed_field,
  renamed_kwargs,
  require_fn,
  require_params,
)
from optim.curvature import LinearOperator, hessian_matvec

PyTree = Any

__all__ = [
  "RegNewtonResult",
  "ScaleByRegNewtonState",
  "reg_newton",
  "reg_newton_minimize",
  "scale_by_reg_newton",
]

_VARIANTS = ("adaptive", "fixed")
_EPS = 1e-8  # the official code's lambda = ||g|| / (gamma + eps)


class _Trial(NamedTuple):
  delta: PyTree
  value: jax.Array
  grad: PyTree
  accepted: jax.Array


def _hessian(hessian_fn, obj_fn, params, where) -> LinearOperator:
  if hessian_fn is None:
    return hessian_matvec(obj_fn, params)
  if not callable(hessian_fn):
    raise TypeError(f"{where}: hessian_fn must be a function params -> LinearOperator")
  op = hessian_fn(params)
  if not isinstance(op, LinearOperator):
    raise TypeError(
      f"{where}: hessian_fn must return an optim.curvature.LinearOperator (hessian_matvec, "
      f"ggn_matvec, fisher_matvec or LinearOperator(matvec, like)), got {type(op).__name__}"
    )
  return op


def _search(
  obj_fn,
  op,
  params,
  value,
  grad,
  gamma,
  *,
  adaptive,
  search_max_iterations,
  gamma_min,
  cg_tol,
  cg_max_iterations,
):
  """Algorithm 1's step with its adaptive search for gamma; returns (trial, next gamma, tries)."""
  dtype = value.dtype  # float32, or the params' dtype if wider
  gnorm = jnp.sqrt(tree_vdot(grad, grad)).astype(dtype)
  # CG runs in `dtype`, so bfloat16 parameters get a float32 solve (its carry must keep
  # one dtype); with float32 or float64 parameters every cast here is a no-op.
  neg_grad = otu.tree_cast(otu.tree_scale(-1.0, grad), dtype)

  def trial(gamma):
    lam = gnorm / (gamma + _EPS)
    matvec = lambda v: otu.tree_add_scale(
      otu.tree_cast(op(otu.tree_cast_like(v, params)), dtype), lam, v
    )
    delta, _ = jax.scipy.sparse.linalg.cg(matvec, neg_grad, tol=cg_tol, maxiter=cg_max_iterations)
    # The trial point in the params' dtype: the point the step will actually take.
    point = otu.tree_cast_like(otu.tree_add(params, delta), params)
    new_value, new_grad = jax.value_and_grad(obj_fn)(point)
    # f(x) - f(x+) >= ||g(x+)||^2 / (8 lambda), multiplied out so that g = 0 (lambda = 0)
    # accepts the zero step instead of dividing 0 by 0.
    accepted = 8.0 * lam * (value - new_value) >= tree_vdot(new_grad, new_grad)
    return _Trial(delta, new_value, new_grad, accepted)

  first = trial(gamma)
  if not adaptive:
    return first, gamma, jnp.ones((), jnp.int32)

  def cond(s):
    i, _, t = s
    return (~t.accepted) & (i < search_max_iterations)

  def body(s):
    i, gamma, _ = s
    gamma = 0.5 * gamma
    return i + 1, gamma, trial(gamma)

  tries, gamma, t = jax.lax.while_loop(cond, body, (jnp.ones((), jnp.int32), gamma, first))
  next_gamma = jnp.where(t.accepted, jnp.maximum(2.0 * gamma, gamma_min), 0.5 * gamma)
  return t, next_gamma.astype(gamma.dtype), tries


def _check_common(variant, gamma, gamma_min, search_max_iterations, cg_tol, cg_max_iterations):
  variant = check_choice("variant", variant, _VARIANTS)
  check_scalar("gamma", gamma, lo=0.0, lo_open=True)
  check_scalar("gamma_min", gamma_min, lo=0.0)
  search_max_iterations = check_scalar(
    "search_max_iterations", search_max_iterations, lo=1, integer=True, static=True
  )
  check_scalar("cg_tol", cg_tol, lo=0.0, lo_open=True)
  cg_max_iterations = check_scalar(
    "cg_max_iterations", cg_max_iterations, lo=1, integer=True, static=True
  )
  return variant, search_max_iterations, cg_max_iterations


# Old spellings kept for one release (docs/design.md, "Deprecated spellings").
_RENAMED = dict(max_search="search_max_iterations", cg_maxiter="cg_max_iterations")


_MATH = r"""
  With :math:`g_k = \nabla f(x_k)`, an approximate Hessian :math:`H_k \succeq 0` (any
  :class:`optim.curvature.LinearOperator`: the exact Hessian by default, a Gauss-Newton or
  Fisher matrix, a fixed bound) and :math:`\lambda_k = \|g_k\| / \gamma_k` (paper,
  Algorithm 1):

  .. math::
    x_{k+1} = x_k - (H_k + \lambda_k I)^{-1} g_k,

  accepted when :math:`f(x_k) - f(x_{k+1}) \ge \|\nabla f(x_{k+1})\|^2 / (8\lambda_k)`;
  then :math:`\gamma_{k+1} = \max(2\gamma_k, \gamma_{\min})`, otherwise :math:`\gamma_k`
  is halved and the step recomputed (at most ``search_max_iterations`` trials, 41 by default
  as in the official code; after the last failure the last trial's step is taken and
  :math:`\gamma` halved once more, also as there). :math:`\gamma` estimates the
  gradient-normalized smoothness radius: the ball in which :math:`H_k` linearizes the
  gradient field to relative accuracy. The linear system is solved by conjugate gradients
  on pytrees (``jax.scipy.sparse.linalg.cg``), never by a dense inverse; CG needs
  :math:`H_k + \lambda_k I \succ 0`, so an indefinite :math:`H_k` (the exact Hessian of a
  non-convex loss) should be replaced by a Gauss-Newton or Fisher operator.
  ``variant="fixed"`` keeps :math:`\gamma_k = \gamma_0` (no search).
"""


class ScaleByRegNewtonState(NamedTuple):
  """State of :func:`scale_by_reg_newton`.

  Attributes:
    count: steps taken (int32).
    gamma: the current :math:`\\gamma_k` (float32, or the params' dtype if wider).
    tries: trials (linear solves) the last step's search made (int32).
  """

  count: jax.Array
  gamma: jax.Array
  tries: jax.Array


@renamed_kwargs(**_RENAMED)
def scale_by_reg_newton(
  gamma: float = 1.0,
  variant: Literal["adaptive", "fixed"] = "adaptive",
  gamma_min: float = 1e-9,
  search_max_iterations: int = 41,
  cg_tol: float = 1e-10,
  cg_max_iterations: int = 100,
) -> optax.GradientTransformationExtraArgs:
  r"""The gradient-regularized Newton step with adaptive :math:`\gamma` (no learning rate).
  %MATH%
    The incoming update is taken as the gradient :math:`g_k`; the step needs the extra
    argument ``obj_fn(params) -> loss`` (its value and gradient at the trial points) and,
    optionally, ``hessian_fn(params) -> LinearOperator`` (default: the exact Hessian of
    ``obj_fn`` by forward-over-reverse products). The returned update is the full step
    :math:`x_{k+1} - x_k`.

    Non-finite gradients: propagate (NaN step); compose with ``optax.apply_if_finite``.
    A non-finite objective value at ``params`` gives the same NaN step (never a finite
    one), and in both cases :math:`\gamma` keeps its value, so the next finite step
    recovers. bfloat16/float16 params: the search and the CG solve run in float32 and the
    step is cast back to the params' dtype.

    Args:
      gamma: :math:`\gamma_0 > 0`, the initial radius (official default 1).
      variant: ``"adaptive"`` (Algorithm 1's search) or ``"fixed"``.
      gamma_min: floor of :math:`\gamma` after an accepted step.
      search_max_iterations: the most trials (linear solves) of the search per step
        (static; formerly ``max_search``). The default 41 is the official code's: its
        ``adaptive_search_max_iter = 40`` bounds a loop ``range(40 + 1)`` that stops at
        the 41st pass only with ``warnings=True``, so by default it makes 40 trials + 1
        final one (which this default counts); when all 41 fail it takes the last
        trial's step (:math:`\gamma_k 2^{-40}`) and leaves
        :math:`\gamma_{k+1} = \gamma_k 2^{-41}`. 40 is the official ``warnings=True``
        run (and this function's default before).
      cg_tol: CG relative residual tolerance.
      cg_max_iterations: the most CG iterations per solve (static; formerly
        ``cg_maxiter``).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update(grads, state, params, *, obj_fn,
      hessian_fn=None)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from optim import scale_by_reg_newton
      >>> f = lambda p: jnp.sum(jnp.logaddexp(0.0, p) - 0.3 * p)
      >>> opt = scale_by_reg_newton()
      >>> p = jnp.array([2.0, -1.0])
      >>> u, state = opt.update(jax.grad(f)(p), opt.init(p), p, obj_fn=f)
      >>> bool(f(p + u) < f(p)), int(state.tries)
      (True, 1)

    References:
      Semenov, Jaggi, Doikov, "Gradient-Normalized Smoothness for Optimization with
      Approximate Hessians", arXiv:2506.13710 (Algorithm 1); official code:
      github.com/epfml/grad-norm-smooth, ``src/methods.py`` (``grad_norm_smooth``).
  """
  variant, search_max_iterations, cg_max_iterations = _check_common(
    variant, gamma, gamma_min, search_max_iterations, cg_tol, cg_max_iterations
  )
  method = "reg_newton"

  def init_fn(params):
    dtype = jnp.result_type(jnp.float32, *[jnp.result_type(x) for x in jax.tree.leaves(params)])
    return ScaleByRegNewtonState(
      jnp.zeros([], jnp.int32), jnp.asarray(gamma, dtype), jnp.zeros([], jnp.int32)
    )

  def update_fn(updates, state, params=None, **extra):
    require_params(params, method)
    obj_fn = require_fn(extra, "obj_fn", method, "params -> scalar loss")
    check_objective(obj_fn, (params,), "obj_fn", method, "params -> scalar loss")
    op = _hessian(extra.get("hessian_fn"), obj_fn, params, method)
    value = obj_fn(params).astype(state.gamma.dtype)
    t, gamma_next, tries = _search(
      obj_fn,
      op,
      params,
      value,
      updates,
      state.gamma,
      adaptive=variant == "adaptive",
      search_max_iterations=search_max_iterations,
      gamma_min=gamma_min,
      cg_tol=cg_tol,
      cg_max_iterations=cg_max_iterations,
    )
    delta = otu.tree_cast_like(t.delta, updates)
    # A non-finite gradient or objective poisons the step (never a finite step on NaN)
    # and leaves gamma as it was, so the next finite step recovers.
    finite = [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(updates)]
    ok = jnp.all(jnp.stack([jnp.isfinite(value), *finite]))
    delta = jax.tree.map(lambda d: jnp.where(ok, d, jnp.asarray(jnp.nan, d.dtype)), delta)
    gamma_next = jnp.where(ok, gamma_next, state.gamma)
    return delta, ScaleByRegNewtonState(optax.safe_increment(state.count), gamma_next, tries)

  return guard(optax.GradientTransformationExtraArgs(init_fn, update_fn), "scale_by_reg_newton")


@renamed_kwargs(**_RENAMED)
def reg_newton(
  learning_rate: optax.ScalarOrSchedule,
  gamma: float = 1.0,
  variant: Literal["adaptive", "fixed"] = "adaptive",
  gamma_min: float = 1e-9,
  search_max_iterations: int = 41,
  cg_tol: float = 1e-10,
  cg_max_iterations: int = 100,
) -> optax.GradientTransformationExtraArgs:
  r"""Gradient-regularized Newton with approximate Hessians, as an optax optimizer.

  .. math::
    x_{k+1} = x_k - \eta_k (H_k + \lambda_k I)^{-1} g_k, \qquad
    \lambda_k = \|g_k\| / \gamma_k,

  with :math:`\gamma_k` from :func:`scale_by_reg_newton`'s search. ``learning_rate = 1``
  is the paper's method (the acceptance test assumes the full step). Needs the extra
  argument ``obj_fn`` (and optionally ``hessian_fn``). Non-finite gradients: propagate.

  Args:
    learning_rate: :math:`\eta_k \ge 0` (1 for the paper's method) or a schedule.
    gamma, variant, gamma_min, search_max_iterations, cg_tol, cg_max_iterations: see
      :func:`scale_by_reg_newton`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optim import reg_newton
    >>> f = lambda p: jnp.sum(jnp.logaddexp(0.0, p) - 0.3 * p)
    >>> opt = reg_newton(1.0)
    >>> @jax.jit
    ... def step(p, state):
    ...   u, state = opt.update(jax.grad(f)(p), state, p, obj_fn=f)
    ...   return optax.apply_updates(p, u), state
    >>> p = jnp.array([2.0, -1.0]); state = opt.init(p)
    >>> for _ in range(10):
    ...   p, state = step(p, state)
    >>> bool(jnp.linalg.norm(jax.grad(f)(p)) < 1e-5)
    True

  References:
    Semenov, Jaggi, Doikov, "Gradient-Normalized Smoothness for Optimization with
    Approximate Hessians", arXiv:2506.13710.
  """
  check_learning_rate(learning_rate)
  return optax.chain(
    scale_by_reg_newton(
      gamma, variant, gamma_min, search_max_iterations, cg_tol, cg_max_iterations
    ),
    optax.scale_by_learning_rate(learning_rate, flip_sign=False),
  )


class RegNewtonResult(NamedTuple):
  """Result of :func:`reg_newton_minimize`.

  Attributes:
    params: the last iterate.
    value: :math:`f` there.
    n_iters: accepted-or-taken steps (int32; formerly ``num_steps``).
    values: :math:`f(x_k)` for :math:`k = 0..` ``max_iterations`` (NaN after the stop).
    errors: :math:`\\|\\nabla f(x_k)\\|`, the quantity compared with ``tol``, likewise
      (formerly ``grad_norms``).
    gammas: :math:`\\gamma_k` likewise.
    tries: linear solves made at step :math:`k` (0 after the stop).
    converged: whether the last gradient norm is at most ``tol`` (bool).

  ``num_steps`` and ``grad_norms`` still read ``n_iters`` and ``errors`` for one release,
  with a ``DeprecationWarning``.
  """

  params: PyTree
  value: jax.Array
  n_iters: jax.Array
  values: jax.Array
  errors: jax.Array
  gammas: jax.Array
  tries: jax.Array
  converged: jax.Array

  num_steps = renamed_field("num_steps", "n_iters")
  grad_norms = renamed_field("grad_norms", "errors")


@renamed_kwargs(max_steps="max_iterations", grad_tol="tol", **_RENAMED)
def reg_newton_minimize(
  obj_fn: Callable[[PyTree], jax.Array],
  params: PyTree,
  *,
  max_iterations: int = 100,
  tol: float = 0.0,
  hessian_fn: Callable[[PyTree], LinearOperator] | None = None,
  gamma: float = 1.0,
  variant: Literal["adaptive", "fixed"] = "adaptive",
  gamma_min: float = 1e-9,
  search_max_iterations: int = 41,
  cg_tol: float = 1e-10,
  cg_max_iterations: int = 100,
) -> RegNewtonResult:
  r"""Minimizes ``obj_fn`` by the gradient-regularized Newton method (one ``while_loop``).
  %MATH%
    Unlike the optax form, the value and gradient at the accepted point are reused, so a step
    costs one gradient and one CG solve per trial. Stops after ``max_iterations`` steps or
    when :math:`\|\nabla f(x_k)\| \le` ``tol``.

    Non-finite objective: the loop stops at the first iterate whose value or gradient
    norm is not finite, without a step from it. Called eagerly (concrete result), that is
    a ``ValueError`` naming the iterate; traced (under ``jit``), the result has
    ``converged=False``, the non-finite ``value`` and ``errors[n_iters]``, and the
    history stops there. bfloat16/float16 params: the value, the search and the CG solve
    run in float32 (every trial point is cast to the params' dtype before it is
    evaluated) and the iterates keep the params' dtype.

    Args:
      obj_fn: ``params -> scalar loss``.
      params: the starting point :math:`x_0` (a pytree of floating arrays).
      max_iterations: the most steps (static: it sizes the history; formerly
        ``max_steps``).
      tol: stop once the gradient norm is at most this (0: run ``max_iterations``;
        formerly ``grad_tol``).
      hessian_fn: ``params -> LinearOperator``, the approximate Hessian :math:`H_k`
        (default: the exact Hessian of ``obj_fn``).
      gamma, variant, gamma_min, search_max_iterations, cg_tol, cg_max_iterations: see
        :func:`optim.scale_by_reg_newton`.

    Returns:
      A :class:`RegNewtonResult` with the last iterate and the per-step history.

    Example:
      >>> import jax.numpy as jnp
      >>> from optim.loops import reg_newton_minimize
      >>> f = lambda p: jnp.sum(jnp.logaddexp(0.0, p) - 0.3 * p)
      >>> res = reg_newton_minimize(f, jnp.array([2.0, -1.0]), max_iterations=20, tol=1e-4)
      >>> bool(res.converged), bool(res.errors[res.n_iters] <= 1e-4), bool(res.n_iters < 20)
      (True, True, True)

    References:
      Semenov, Jaggi, Doikov, "Gradient-Normalized Smoothness for Optimization with
      Approximate Hessians", arXiv:2506.13710 (Algorithm 1).
  """
  where = "reg_newton_minimize"
  variant, search_max_iterations, cg_max_iterations = _check_common(
    variant, gamma, gamma_min, search_max_iterations, cg_tol, cg_max_iterations
  )
  max_iterations = check_scalar("max_iterations", max_iterations, lo=0, integer=True, static=True)
  check_scalar("tol", tol, lo=0.0)
  if not callable(obj_fn):
    raise TypeError(f"{where}: obj_fn must be a function params -> scalar loss")
  check_floating(params, "params", where, allow_empty=False)
  check_objective(obj_fn, (params,), "obj_fn", where, "params -> scalar loss")
  if hessian_fn is not None and not callable(hessian_fn):
    raise TypeError(f"{where}: hessian_fn must be a function params -> LinearOperator")
  dtype = jnp.result_type(jnp.float32, *[jnp.result_type(x) for x in jax.tree.leaves(params)])
  value, grad = jax.value_and_grad(obj_fn)(params)
  value = value.astype(dtype)
  gnorm = lambda g: jnp.sqrt(tree_vdot(g, g)).astype(dtype)
  nan = jnp.full((max_iterations + 1,), jnp.nan, dtype)
  hist = (
    nan.at[0].set(value),
    nan.at[0].set(gnorm(grad)),
    nan.at[0].set(gamma),
    jnp.zeros((max_iterations + 1,), jnp.int32),
  )

  def cond(s):
    k, _, value, grad, _, _ = s
    norm = gnorm(grad)
    # A non-finite value or gradient stops the loop before it steps (a NaN value would
    # fail every acceptance test, and the search would then take a ~1e-12 step).
    return (k < max_iterations) & (norm > tol) & jnp.isfinite(value) & jnp.isfinite(norm)

  def body(s):
    k, x, value, grad, gamma, (vals, norms, gammas, tries) = s
    op = _hessian(hessian_fn, obj_fn, x, where)
    t, gamma, n = _search(
      obj_fn,
      op,
      x,
      value,
      grad,
      gamma,
      adaptive=variant == "adaptive",
      search_max_iterations=search_max_iterations,
      gamma_min=gamma_min,
      cg_tol=cg_tol,
      cg_max_iterations=cg_max_iterations,
    )
    x = otu.tree_cast_like(otu.tree_add(x, t.delta), x)
    value = t.value.astype(dtype)
    hist = (
      vals.at[k + 1].set(value),
      norms.at[k + 1].set(gnorm(t.grad)),
      gammas.at[k + 1].set(gamma),
      tries.at[k].set(n),
    )
    return k + 1, x, value, t.grad, gamma, hist

  init = (jnp.zeros((), jnp.int32), params, value, grad, jnp.asarray(gamma, dtype), hist)
  k, x, value, grad, _, (vals, norms, gammas, tries) = jax.lax.while_loop(cond, body, init)
  norm = gnorm(grad)
  finite = jnp.isfinite(value) & jnp.isfinite(norm)
  if not is_traced(finite) and not bool(finite):
    raise ValueError(
      f"{where}: obj_fn is not finite at iterate {int(k)} (value {float(value)}, gradient "
      f"norm {float(norm)}); stopped there without a step"
      + (" (the starting params)" if int(k) == 0 else "")
    )
  return RegNewtonResult(x, value, k, vals, norms, gammas, tries, (norm <= tol) & finite)


for _fn in (scale_by_reg_newton, reg_newton_minimize):
  # The docstrings' bodies sit 4 deep, _MATH 2 deep: indent it to match (valid reST).
  _fn.__doc__ = _fn.__doc__.replace("%MATH%\n", _MATH.replace("\n  ", "\n    "))
