"""LV-HBA: constrained bilevel optimization by the proximal Lagrangian value function.

Yao, Yu, Zeng & Zhang, "Constrained Bi-Level Optimization: Proximal Lagrangian Value
function Approach and Hessian-free Algorithm", ICLR 2024 (arXiv:2401.16164), Algorithm 1.
The constants of the defaults and the order of the updates were read from the official
code, github.com/SUSTech-Optimization/LV-HBA (``Toy-example/LLC/LV-HBA.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu

from optim._bilevel._hypergrad import check_bilevel
from optim._validation import check_floating, check_like, check_scalar, is_traced, poison

PyTree = Any

__all__ = ["LVHBAResult", "LVHBAState", "lvhba", "lvhba_init", "lvhba_step"]

_G_SIG = "(x, y) -> 1-d float vector g(x, y) of the constraints g(x, y) <= 0"


class LVHBAState(NamedTuple):
  """State of LV-HBA (:func:`lvhba_init`, :func:`lvhba_step`).

  Attributes:
    x: upper-level variables (a pytree).
    y: lower-level variables (a pytree).
    theta: the proximal lower-level point :math:`\\theta` (a pytree like ``y``).
    lam: the lower-level multiplier :math:`\\lambda \\ge 0`, shape ``(p,)``.
    z: the proximal multiplier centre :math:`z \\in [0, r]^p`, shape ``(p,)``.
    count: iterations taken, an int32 scalar (:math:`k`).
  """

  x: PyTree
  y: PyTree
  theta: PyTree
  lam: jax.Array
  z: jax.Array
  count: jax.Array


class LVHBAResult(NamedTuple):
  """Result of :func:`lvhba`.

  Attributes:
    x: the upper-level variables at the stop.
    y: the lower-level variables at the stop.
    state: the final :class:`LVHBAState` (pass it to :func:`lvhba_step` to continue).
    n_iters: iterations taken.
    errors: ``(max_iterations,)``, the relative change of the iterate
      :math:`\\|w^{k+1} - w^k\\| / \\max(1, \\|w^{k+1}\\|)` with
      :math:`w = (x, y, \\theta, \\lambda, z)`, the quantity compared with ``tol``; NaN
      after the stop.
    converged: whether the relative change fell below ``tol``.
  """

  x: PyTree
  y: PyTree
  state: LVHBAState
  n_iters: jax.Array
  errors: jax.Array
  converged: jax.Array


def _check_constraint(constraint, x, y, where: str):
  """``constraint(x, y)`` is a 1-d real floating vector; returns its shape struct."""
  if not callable(constraint):
    raise TypeError(
      f"{where}: constraint must be a callable {_G_SIG}, got {type(constraint).__name__}"
    )
  out = jax.eval_shape(constraint, x, y)
  if not isinstance(out, jax.ShapeDtypeStruct):
    raise TypeError(
      f"{where}: constraint(x, y) must return one 1-d float vector of constraint values "
      f"(g(x, y) <= 0), got {type(out).__name__}"
    )
  if out.ndim != 1:
    raise ValueError(
      f"{where}: constraint(x, y) must return a 1-d vector of constraint values (g(x, y) <= 0; "
      f"wrap one constraint as jnp.atleast_1d), got shape {tuple(out.shape)}"
    )
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise TypeError(
      f"{where}: constraint(x, y) must return a real floating-point vector, got dtype {out.dtype}"
    )
  return out


def _check_tree_out(out, like, name: str, like_name: str, where: str) -> None:
  """A projection's output has the structure, shapes and dtypes of its input."""
  check_like(out, like, f"{name}'s output", like_name, where)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(like)):
    if jnp.result_type(a) != jnp.result_type(b):
      raise TypeError(
        f"{where}: {name} must return {like_name}'s dtype {jnp.result_type(b)}, "
        f"got {jnp.result_type(a)}"
      )


def _projections(project_x, project_y, project_xy, x, y, where: str):
  """The three projections, defaults filled in and outputs checked (by shape only)."""
  for name, fn in (("project_x", project_x), ("project_y", project_y), ("project_xy", project_xy)):
    if fn is not None and not callable(fn):
      raise TypeError(f"{where}: {name} must be a callable or None, got {type(fn).__name__}")
  px = (lambda t: t) if project_x is None else project_x
  py = (lambda t: t) if project_y is None else project_y
  if project_xy is None:

    def pxy(a, b):
      return px(a), py(b)
  else:
    pxy = project_xy
  if project_x is not None:
    _check_tree_out(jax.eval_shape(px, x), x, "project_x(x)", "x", where)
  if project_y is not None:
    _check_tree_out(jax.eval_shape(py, y), y, "project_y(y)", "y", where)
  if project_xy is not None:
    out = jax.eval_shape(pxy, x, y)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
      raise TypeError(
        f"{where}: project_xy(x, y) must return the pair (x, y) projected onto C, "
        f"got {type(out).__name__}"
      )
    _check_tree_out(out[0], x, "project_xy(x, y)[0]", "x", where)
    _check_tree_out(out[1], y, "project_xy(x, y)[1]", "y", where)
  return px, py, pxy


def _check_hyper(where: str, **values) -> None:
  for name, v in values.items():
    if name == "z_max":
      check_scalar(f"{where}: z_max", v, lo=0.0, lo_open=True, allow_inf=True)
    elif name == "c_power":
      check_scalar(f"{where}: c_power", v, lo=0.0)
    else:
      check_scalar(f"{where}: {name}", v, lo=0.0, lo_open=True)


def _check_finite(tree, name: str, where: str) -> None:
  """Concrete leaves are finite (a NaN start would only come back as a NaN result)."""
  if is_traced(tree):
    return
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    arr = np.asarray(leaf)
    if arr.size and not np.all(np.isfinite(arr)):
      raise ValueError(
        f"{where}: {name}{jax.tree_util.keystr(path)} must be finite (no NaN or inf)"
      )


def lvhba_init(
  x0: PyTree,
  y0: PyTree,
  constraint: Callable[[PyTree, PyTree], jax.Array],
  *,
  theta0: PyTree | None = None,
  lam0: jax.Array | None = None,
  z0: jax.Array | None = None,
) -> LVHBAState:
  """The starting state of LV-HBA: :math:`(x^0, y^0, \\theta^0, \\lambda^0, z^0)`.

  Algorithm 1 of the paper starts from :math:`(x^0, y^0) \\in C`, :math:`\\theta^0 \\in Y`,
  :math:`\\lambda^0 \\ge 0`, :math:`z^0 \\in Z = [0, r]^p`; project the start yourself if it
  is not feasible (:func:`lvhba_step` projects every later iterate).

  Reference: Yao, Yu, Zeng & Zhang, ICLR 2024 (arXiv:2401.16164), Algorithm 1.

  Args:
    x0: upper-level start (a pytree of float arrays).
    y0: lower-level start (a pytree of float arrays).
    constraint: :math:`g(x, y)`, the lower-level constraints :math:`g(x, y) \\le 0` as a 1-d
      float vector of length :math:`p` (called once, abstractly, for :math:`p` and the dtype).
    theta0: start of :math:`\\theta` (like ``y0``); ``y0`` when None.
    lam0: start of :math:`\\lambda`, shape ``(p,)``; zeros when None.
    z0: start of :math:`z`, shape ``(p,)``; zeros when None.

  Returns:
    :class:`LVHBAState` with ``count = 0``.

  Raises:
    TypeError: a leaf is not floating point; ``constraint`` is not callable or returns a
      non-float.
    ValueError: ``constraint`` does not return a 1-d vector; ``theta0``, ``lam0`` or ``z0``
      has the wrong shape; a concrete start is not finite or ``lam0``/``z0`` is negative.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.bilevel import lvhba_init
    >>> g = lambda x, y: jnp.atleast_1d(-(x.sum() + y.sum()))
    >>> s = lvhba_init(jnp.zeros(2), jnp.zeros(4), g)
    >>> s.lam.shape, int(s.count)
    ((1,), 0)
  """
  where = "lvhba_init"
  check_floating(x0, "x0", where, allow_empty=False)
  check_floating(y0, "y0", where, allow_empty=False)
  out = _check_constraint(constraint, x0, y0, where)
  p, dtype = out.shape[0], out.dtype
  if theta0 is None:
    theta0 = y0
  else:
    check_floating(theta0, "theta0", where)
    check_like(theta0, y0, "theta0", "y0", where)
  vecs = []
  for name, v in (("lam0", lam0), ("z0", z0)):
    if v is None:
      v = jnp.zeros((p,), dtype)
    else:
      if jnp.shape(v) != (p,):
        raise ValueError(
          f"{where}: {name} must have shape ({p},) (one entry per constraint), got {jnp.shape(v)}"
        )
      v = jnp.asarray(v, dtype)
      if not is_traced(v) and bool(jnp.any(v < 0)):
        raise ValueError(f"{where}: {name} must be non-negative (a multiplier of g <= 0)")
    vecs.append(v)
  for name, t in (("x0", x0), ("y0", y0), ("theta0", theta0), ("lam0", vecs[0]), ("z0", vecs[1])):
    _check_finite(t, name, where)
  return LVHBAState(
    x=x0, y=y0, theta=theta0, lam=vecs[0], z=vecs[1], count=jnp.zeros((), jnp.int32)
  )


def _step(state, outer_loss, inner_loss, constraint, px, py, pxy, hp):
  """One iteration of Algorithm 1 (no checks)."""
  alpha, beta, eta, gamma1, gamma2, c0, c_power, z_max = hp
  x, y, theta, lam, z, k = state
  dtype = lam.dtype

  def lagrangian(xx, th, mult):
    # f(x, theta) + lambda^T g(x, theta)
    return inner_loss(xx, th) + jnp.vdot(mult, constraint(xx, th))

  # (theta, lambda): one projected gradient descent-ascent step on the proximal Lagrangian.
  g_theta = jax.grad(lagrangian, argnums=1)(x, theta, lam)
  d_theta = jax.tree.map(lambda gt, t, yy: gt + (t - yy) / gamma1, g_theta, theta, y)
  d_lam = -constraint(x, theta) + (lam - z) / gamma2
  theta_new = py(jax.tree.map(lambda t, d: t - eta * d, theta, d_theta))
  lam_new = jnp.maximum(lam - eta * d_lam, jnp.zeros((), dtype))

  # (x, y): a projected gradient step on F / c_k + f - v, v's gradient taken at (theta, lam)^{k+1}.
  ck = c0 * (k.astype(dtype) + 1) ** c_power
  fx, fy = jax.grad(outer_loss, argnums=(0, 1))(x, y)
  gx, gy = jax.grad(inner_loss, argnums=(0, 1))(x, y)
  vx = jax.grad(lagrangian, argnums=0)(x, theta_new, lam_new)
  d_x = jax.tree.map(lambda a, b, c: a / ck + b - c, fx, gx, vx)
  d_y = jax.tree.map(lambda a, b, yy, t: a / ck + b - (yy - t) / gamma1, fy, gy, y, theta_new)
  x_new, y_new = pxy(
    jax.tree.map(lambda v, d: v - alpha * d, x, d_x),
    jax.tree.map(lambda v, d: v - alpha * d, y, d_y),
  )
  # z: a projected step on -v along z, at lambda^{k+1}.
  d_z = -(lam_new - z) / gamma2
  z_new = jnp.clip(z - beta * d_z, jnp.zeros((), dtype), jnp.asarray(z_max, dtype))
  return LVHBAState(x=x_new, y=y_new, theta=theta_new, lam=lam_new, z=z_new, count=k + 1)


def lvhba_step(
  state: LVHBAState,
  outer_loss: Callable[[PyTree, PyTree], jax.Array],
  inner_loss: Callable[[PyTree, PyTree], jax.Array],
  constraint: Callable[[PyTree, PyTree], jax.Array],
  *,
  alpha: float = 0.008,
  beta: float = 0.02,
  eta: float = 0.01,
  gamma1: float = 10.0,
  gamma2: float = 1.0,
  c0: float = 1.0,
  c_power: float = 0.3,
  z_max: float = 1000.0,
  project_x: Callable[[PyTree], PyTree] | None = None,
  project_y: Callable[[PyTree], PyTree] | None = None,
  project_xy: Callable[[PyTree, PyTree], tuple[PyTree, PyTree]] | None = None,
) -> LVHBAState:
  """One LV-HBA iteration (Algorithm 1 of Yao et al., ICLR 2024; arXiv:2401.16164).

  The problem is :math:`\\min_{x \\in X, y \\in Y} F(x, y)` s.t. :math:`y \\in
  \\arg\\min_{y' \\in Y} \\{f(x, y') : g(x, y') \\le 0\\}`, where the lower-level constraints
  :math:`g` couple both levels. With the proximal Lagrangian value function

  .. math::
    v_\\gamma(x, y, z) = \\min_{\\theta \\in Y} \\max_{\\lambda \\ge 0}\\;
    f(x, \\theta) + \\lambda^\\top g(x, \\theta) + \\tfrac{1}{2\\gamma_1}\\|\\theta - y\\|^2
    - \\tfrac{1}{2\\gamma_2}\\|\\lambda - z\\|^2,

  the bilevel problem is equivalent to :math:`\\min F(x, y)` s.t. :math:`f(x, y) -
  v_\\gamma(x, y, z) \\le 0`, :math:`(x, y) \\in C = \\{(x, y) \\in X \\times Y : g(x, y) \\le
  0\\}`, :math:`z \\in Z = [0, r]^p`. One iteration takes a projected gradient
  descent-ascent step on the inner saddle point and a projected gradient step on the
  penalized objective :math:`F / c_k + f - v_\\gamma`, :math:`c_k = c_0 (k + 1)^{p}`, using
  first derivatives only (no Hessian):

  .. math::
    \\theta^{k+1} &= P_Y\\big(\\theta^k - \\eta\\, [\\nabla_y f(x^k, \\theta^k)
      + \\nabla_y g(x^k, \\theta^k)^\\top \\lambda^k + (\\theta^k - y^k)/\\gamma_1]\\big) \\\\
    \\lambda^{k+1} &= P_{\\mathbb{R}^p_+}\\big(\\lambda^k - \\eta\\,
      [-g(x^k, \\theta^k) + (\\lambda^k - z^k)/\\gamma_2]\\big) \\\\
    d_x^k &= \\nabla_x F(x^k, y^k)/c_k + \\nabla_x f(x^k, y^k) - \\nabla_x f(x^k, \\theta^{k+1})
      - \\nabla_x g(x^k, \\theta^{k+1})^\\top \\lambda^{k+1} \\\\
    d_y^k &= \\nabla_y F(x^k, y^k)/c_k + \\nabla_y f(x^k, y^k)
      - (y^k - \\theta^{k+1})/\\gamma_1 \\\\
    (x^{k+1}, y^{k+1}) &= P_C\\big((x^k, y^k) - \\alpha\\, (d_x^k, d_y^k)\\big) \\\\
    z^{k+1} &= P_Z\\big(z^k + \\beta\\, (\\lambda^{k+1} - z^k)/\\gamma_2\\big).

  :math:`P_C` is ``project_xy``; without it, ``project_x`` and ``project_y`` are applied to
  each block, which enforces :math:`X \\times Y` but not :math:`g(x, y) \\le 0`: the paper
  (and its convergence proof) projects onto :math:`C`, so pass ``project_xy`` whenever the
  projection onto the coupled set is available (a halfspace, a box, a polyhedron by a small
  QP). The defaults are the official code's constants (SUSTech-Optimization/LV-HBA):
  :math:`\\alpha = 0.008`, :math:`\\beta = 0.02`, :math:`\\eta = 0.01`, :math:`\\gamma_1 =
  10`, :math:`r = 1000` from its toy example (``Toy-example/LLC/LV-HBA.py``) and
  :math:`\\gamma_2 = 1`, :math:`c_k = (k+1)^{0.3}` from its second synthetic example
  (``Toy-example/LLSC/LV-HBA.py``): the toy file's own :math:`\\gamma_2 = 10`, :math:`c_k =
  0.025 (k+1)^{0.3}` do not converge on the toy in float64 (the multiplier oscillates and
  grows), these do. Step sizes are problem dependent (the theory asks :math:`p \\in (0,
  1/2)` and small enough :math:`\\alpha, \\beta, \\eta`). The official toy code clips
  :math:`\\lambda` to :math:`[-r, r]` because it treats its one constraint as an equality;
  here, as in the paper, :math:`\\lambda \\ge 0` and :math:`z \\in [0, r]^p`. The gap
  between the iterate and a solution of the bilevel problem shrinks as the penalty
  :math:`c_k` grows (about like :math:`1/c_k` on the toy example), so the method is slow to
  reach high accuracy.

  Reference: Wei Yao, Chengming Yu, Shangzhi Zeng, Jin Zhang, "Constrained Bi-Level
  Optimization: Proximal Lagrangian Value function Approach and Hessian-free Algorithm",
  ICLR 2024 (arXiv:2401.16164), Algorithm 1 (LV-HBA).

  Args:
    state: the current :class:`LVHBAState` (from :func:`lvhba_init`).
    outer_loss: :math:`F(x, y)`, a real scalar.
    inner_loss: :math:`f(x, y)`, a real scalar (convex in :math:`y` for the theory).
    constraint: :math:`g(x, y)`, a 1-d float vector of length :math:`p` (feasible where
      :math:`\\le 0`); :math:`p = 0` is allowed (no constraint: the Moreau-envelope method).
    alpha: step size of :math:`(x, y)`, > 0.
    beta: step size of :math:`z`, > 0.
    eta: step size of :math:`(\\theta, \\lambda)`, > 0.
    gamma1: proximal parameter :math:`\\gamma_1` of :math:`\\theta`, > 0.
    gamma2: proximal parameter :math:`\\gamma_2` of :math:`\\lambda`, > 0.
    c0: :math:`\\underline{c}` of the penalty schedule :math:`c_k = \\underline{c}(k+1)^p`, > 0.
    c_power: the exponent :math:`p` of the schedule, >= 0.
    z_max: :math:`r`, the upper end of :math:`Z = [0, r]^p`, > 0 (``inf`` allowed).
    project_x: :math:`P_X` (``x -> x``); identity when None.
    project_y: :math:`P_Y` (``y -> y``), applied to :math:`\\theta` (and to :math:`y` without
      ``project_xy``); identity when None.
    project_xy: :math:`P_C` (``(x, y) -> (x, y)``), the projection onto the coupled feasible
      set; ``(project_x(x), project_y(y))`` when None.

  Returns:
    The next :class:`LVHBAState`. A traced hyperparameter out of range (under ``jit``)
    makes every iterate of the returned state NaN (a concrete one raises).

  Raises:
    TypeError: ``state`` is not an :class:`LVHBAState`; a loss is not callable or not a real
      scalar, ``constraint`` returns a non-float, a projection is not callable or returns
      another dtype or a non-pair.
    ValueError: ``constraint`` does not return a 1-d vector or its length differs from the
      state's multiplier, a projection returns another structure or shape, a concrete
      iterate of ``state`` is not finite, a concrete hyperparameter is out of range.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.bilevel import lvhba_init, lvhba_step
    >>> import jax
    >>> # min (x - 1)^2 + y^2 s.t. y in argmin {(y - x)^2 : y >= 0.5}: x* = y* = 0.5.
    >>> F = lambda x, y: ((x - 1.0) ** 2 + y**2).sum()
    >>> f = lambda x, y: ((y - x) ** 2).sum()
    >>> g = lambda x, y: 0.5 - y
    >>> box = lambda x, y: (x, jnp.maximum(y, 0.5))  # C = {y >= 0.5}
    >>> step = jax.jit(lambda s: lvhba_step(s, F, f, g, alpha=0.1, eta=0.1, beta=0.1,
    ...                                     gamma1=1.0, c_power=0.49, project_xy=box))
    >>> s = lvhba_init(jnp.zeros(1), jnp.ones(1), g)
    >>> for _ in range(2000):
    ...   s = step(s)
    >>> bool(abs(s.x[0] - 0.5) < 0.02), bool(s.y[0] >= 0.5)
    (True, True)
  """
  where = "lvhba_step"
  if not isinstance(state, LVHBAState):
    raise TypeError(
      f"{where}: state must be an LVHBAState (from lvhba_init), got {type(state).__name__}"
    )
  hp = dict(
    alpha=alpha,
    beta=beta,
    eta=eta,
    gamma1=gamma1,
    gamma2=gamma2,
    c0=c0,
    c_power=c_power,
    z_max=z_max,
  )
  px, py, pxy = _validate(
    state, outer_loss, inner_loss, constraint, project_x, project_y, project_xy, hp, where
  )
  hpt = tuple(hp.values())
  return _poison_bad(_step(state, outer_loss, inner_loss, constraint, px, py, pxy, hpt), hpt)


def _validate(
  state, outer_loss, inner_loss, constraint, project_x, project_y, project_xy, hp, where
):
  check_bilevel(outer_loss, inner_loss, state.x, state.y, where)
  out = _check_constraint(constraint, state.x, state.y, where)
  if jnp.shape(state.lam) != out.shape:
    raise ValueError(
      f"{where}: constraint(x, y) returns {out.shape[0]} values but the state's multiplier "
      f"has shape {jnp.shape(state.lam)}; build the state with lvhba_init and the same constraint"
    )
  if jnp.shape(state.z) != jnp.shape(state.lam):
    raise ValueError(
      f"{where}: state.z has shape {jnp.shape(state.z)} but state.lam has "
      f"{jnp.shape(state.lam)}; build the state with lvhba_init"
    )
  check_like(state.theta, state.y, "state.theta", "state.y", where)
  for name in ("x", "y", "theta", "lam", "z"):
    _check_finite(getattr(state, name), f"state.{name}", where)
  _check_hyper(where, **hp)
  return _projections(project_x, project_y, project_xy, state.x, state.y, where)


def _poison_bad(new: LVHBAState, hp: tuple) -> LVHBAState:
  """NaN in every iterate when a traced hyperparameter is out of range (concrete ones raise)."""
  if not is_traced(hp):
    return new
  alpha, beta, eta, gamma1, gamma2, c0, c_power, z_max = hp
  valid = jnp.all(
    jnp.stack(
      [alpha > 0, beta > 0, eta > 0, gamma1 > 0, gamma2 > 0, c0 > 0, c_power >= 0, z_max > 0]
    )
  )
  bad = lambda t: jax.tree.map(lambda a: poison(a, valid), t)  # noqa: E731
  return new._replace(
    x=bad(new.x), y=bad(new.y), theta=bad(new.theta), lam=bad(new.lam), z=bad(new.z)
  )


def _sq(tree) -> jax.Array:
  return otu.tree_sum(jax.tree.map(lambda a: jnp.sum(jnp.square(a)), tree))


def lvhba(
  outer_loss: Callable[[PyTree, PyTree], jax.Array],
  inner_loss: Callable[[PyTree, PyTree], jax.Array],
  constraint: Callable[[PyTree, PyTree], jax.Array],
  x0: PyTree,
  y0: PyTree,
  *,
  max_iterations: int = 1000,
  tol: float = 1e-8,
  alpha: float = 0.008,
  beta: float = 0.02,
  eta: float = 0.01,
  gamma1: float = 10.0,
  gamma2: float = 1.0,
  c0: float = 1.0,
  c_power: float = 0.3,
  z_max: float = 1000.0,
  project_x: Callable[[PyTree], PyTree] | None = None,
  project_y: Callable[[PyTree], PyTree] | None = None,
  project_xy: Callable[[PyTree, PyTree], tuple[PyTree, PyTree]] | None = None,
  theta0: PyTree | None = None,
  lam0: jax.Array | None = None,
  z0: jax.Array | None = None,
) -> LVHBAResult:
  """Runs LV-HBA (:func:`lvhba_step`) until the iterate stops moving or ``max_iterations``.

  Solves :math:`\\min_{x \\in X, y \\in Y} F(x, y)` s.t. :math:`y \\in \\arg\\min_{y' \\in Y}
  \\{f(x, y') : g(x, y') \\le 0\\}` by the single-loop, Hessian-free Algorithm 1 of the paper
  (the update is written out in :func:`lvhba_step`). The stopping criterion is the relative
  change of the whole iterate :math:`w = (x, y, \\theta, \\lambda, z)`,

  .. math::
    e_k = \\|w^{k+1} - w^k\\| \\,/\\, \\max(1, \\|w^{k+1}\\|) < \\mathrm{tol},

  which, at fixed step sizes, is a scaled norm of the projected-gradient mapping of the
  penalized problem (zero exactly at its stationary points). A ``lax.while_loop``: the
  error history is preallocated, NaN after the stop; the loop also stops (with
  ``converged=False``) when an iterate becomes non-finite.

  Reference: Yao, Yu, Zeng & Zhang, "Constrained Bi-Level Optimization: Proximal
  Lagrangian Value function Approach and Hessian-free Algorithm", ICLR 2024
  (arXiv:2401.16164), Algorithm 1.

  Args:
    outer_loss: :math:`F(x, y)`, a real scalar.
    inner_loss: :math:`f(x, y)`, a real scalar.
    constraint: :math:`g(x, y)`, a 1-d float vector (the constraints :math:`g \\le 0`).
    x0: upper-level start, a pytree of float arrays (in :math:`X`).
    y0: lower-level start, a pytree of float arrays (with ``x0`` in :math:`C`).
    max_iterations: cap on iterations, >= 1.
    tol: tolerance on the relative change :math:`e_k`, >= 0 (0 runs to the cap).
    alpha, beta, eta, gamma1, gamma2, c0, c_power, z_max: see :func:`lvhba_step`.
    project_x, project_y, project_xy: the projections, see :func:`lvhba_step`.
    theta0, lam0, z0: starts of the auxiliary variables, see :func:`lvhba_init`.

  Returns:
    :class:`LVHBAResult` ``(x, y, state, n_iters, errors, converged)``.

  Raises:
    TypeError, ValueError: as :func:`lvhba_init` and :func:`lvhba_step`; also
      ``max_iterations`` not a positive integer or ``tol`` negative.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.bilevel import lvhba
    >>> F = lambda x, y: ((x - 1.0) ** 2 + y**2).sum()
    >>> f = lambda x, y: ((y - x) ** 2).sum()
    >>> g = lambda x, y: 0.5 - y  # the lower level keeps y >= 0.5; x* = y* = 0.5
    >>> box = lambda x, y: (x, jnp.maximum(y, 0.5))
    >>> res = lvhba(F, f, g, jnp.zeros(1), jnp.ones(1), max_iterations=2000, tol=1e-6,
    ...             alpha=0.1, eta=0.1, beta=0.1, gamma1=1.0, c_power=0.49, project_xy=box)
    >>> bool(abs(res.x[0] - 0.5) < 0.02), int(res.n_iters), bool(res.converged)
    (True, 2000, False)
  """
  where = "lvhba"
  n = check_scalar(f"{where}: max_iterations", max_iterations, lo=1, integer=True, static=True)
  check_scalar(f"{where}: tol", tol, lo=0.0)
  state = lvhba_init(x0, y0, constraint, theta0=theta0, lam0=lam0, z0=z0)
  hp = dict(
    alpha=alpha,
    beta=beta,
    eta=eta,
    gamma1=gamma1,
    gamma2=gamma2,
    c0=c0,
    c_power=c_power,
    z_max=z_max,
  )
  px, py, pxy = _validate(
    state, outer_loss, inner_loss, constraint, project_x, project_y, project_xy, hp, where
  )
  hpt = tuple(hp.values())
  dtype = jnp.result_type(*jax.tree.leaves((state.x, state.y)))
  errors0 = jnp.full((n,), jnp.nan, dtype)

  def cond(c):
    k, _, _, done = c
    return (k < n) & ~done

  def body(c):
    k, s, errors, _ = c
    new = _poison_bad(_step(s, outer_loss, inner_loss, constraint, px, py, pxy, hpt), hpt)
    w_old = (s.x, s.y, s.theta, s.lam, s.z)
    w_new = (new.x, new.y, new.theta, new.lam, new.z)
    diff = _sq(jax.tree.map(lambda a, b: a - b, w_new, w_old))
    err = (jnp.sqrt(diff) / jnp.maximum(1.0, jnp.sqrt(_sq(w_new)))).astype(dtype)
    errors = errors.at[k].set(err)
    done = (err < tol) | ~jnp.isfinite(err)
    return k + 1, new, errors, done

  k, state, errors, _ = jax.lax.while_loop(
    cond, body, (jnp.int32(0), state, errors0, jnp.asarray(False))
  )
  last = errors[jnp.maximum(k - 1, 0)]
  converged = (last < tol) & jnp.isfinite(last)
  return LVHBAResult(
    x=state.x, y=state.y, state=state, n_iters=k, errors=errors, converged=converged
  )
