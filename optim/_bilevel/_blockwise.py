"""BSVRB: blockwise stochastic variance-reduced methods for multi-block bilevel problems.

Hu, Qiu, Guo, Zhang & Yang, "Blockwise Stochastic Variance-Reduced Methods with Parallel
Speedup for Multi-Block Bilevel Optimization", ICML 2023 (arXiv:2305.18730). Official code:
github.com/quanqihu/BSVRB_ICML2023, ``Hyperparameter_Optimization/HO/main.py`` (function
``BSVRB``) and ``HO_with_distribution_shift/main_BSVRB.py`` (its ``auto_gamma`` rule and the
full-update switches).

The m lower-level variables are one stacked pytree (leading block axis); per-block work is
``jax.vmap`` over the sampled blocks, gathered by index and scattered back. On many devices,
pass ``block_sharding`` (a ``jax.sharding.NamedSharding`` over the block axis) to
:func:`bsvrb_init`: every stacked leaf is placed with it and XLA partitions the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu
from jax.flatten_util import ravel_pytree

from optim._validation import (
  as_key,
  check_batch,
  check_choice,
  check_floating,
  check_output,
  check_scalar,
  poison,
)

PyTree = Any

__all__ = ["BSVRBResult", "BSVRBState", "bsvrb_init", "bsvrb", "bsvrb_step"]

_SIG = "(x, y_i, batch_i) -> scalar"
VARIANTS = ("v1", "v2")


class BSVRBState(NamedTuple):
  """State of :func:`bsvrb_step` (both variants; the fields a variant does not use are None).

  Attributes:
    x: the upper-level variable :math:`x_t` (a pytree).
    y: the lower-level variables :math:`y_{i,t}`, one stacked pytree with a leading block
      axis of size m.
    s: the MSVR estimators :math:`s_{i,t}` of :math:`\\nabla_y g_i(x_t, y_{i,t})`, like ``y``.
    z: the STORM estimator :math:`z_t` of the hypergradient, like ``x``.
    hess: ``v1``: the MSVR estimators :math:`H_{i,t}` of :math:`\\nabla^2_{yy} g_i`, an array
      ``(m, d, d)`` over the raveled block variable (``d`` entries); ``v2``: None.
    v: ``v2``: the adjoints :math:`v_{i,t} \\approx [\\nabla^2_{yy} g_i]^{-1} \\nabla_y f_i`,
      like ``y``; ``v1``: None.
    u: ``v2``: the MSVR estimators :math:`u_{i,t}` of
      :math:`\\nabla^2_{yy} g_i\\, v_{i,t} - \\nabla_y f_i`, like ``y``; ``v1``: None.
    x_prev, y_prev, hess_prev, v_prev: the previous iterates, where the variance-reduction
      corrections evaluate the same samples again (``hess_prev`` is None in ``v2``,
      ``v_prev`` in ``v1``).
    count: steps taken (int32).
  """

  x: PyTree
  y: PyTree
  s: PyTree
  z: PyTree
  hess: jax.Array | None
  v: PyTree | None
  u: PyTree | None
  x_prev: PyTree
  y_prev: PyTree
  hess_prev: jax.Array | None
  v_prev: PyTree | None
  count: jax.Array


class BSVRBResult(NamedTuple):
  """Result of :func:`bsvrb`.

  Attributes:
    x: the final upper-level variable.
    y: the final stacked lower-level variables.
    state: the final :class:`BSVRBState` (to continue the run).
    n_iters: steps taken.
    errors: per step, the stopping criterion :math:`e_t = \\|z_{t+1}\\| + \\|s_{t+1}\\| /
      \\sqrt m\\ (+ \\|u_{t+1}\\| / \\sqrt m` in ``v2``): the hypergradient estimate plus the
      root-mean-square over blocks of the lower-level (and adjoint) residual estimates;
      NaN after the stop.
    converged: whether :math:`e_t \\le` ``tol`` was reached.
  """

  x: PyTree
  y: PyTree
  state: BSVRBState
  n_iters: jax.Array
  errors: jax.Array
  converged: jax.Array


def _num_blocks(y: PyTree, where: str) -> int:
  sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(y)}
  if None in sizes or len(sizes) != 1:
    shapes = [jnp.shape(leaf) for leaf in jax.tree.leaves(y)]
    raise ValueError(
      f"{where}: y must be stacked over blocks: every leaf needs the same leading block axis, "
      f"got shapes {shapes}"
    )
  (m,) = sizes
  if m < 1:
    raise ValueError(f"{where}: y must hold at least one block, got a leading axis of size 0")
  return m


def _block(tree: PyTree) -> PyTree:
  """One block's structure (the leading axis dropped), as shape structs."""
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], jnp.result_type(a)), tree)


def _gather(tree: PyTree, idx: jax.Array) -> PyTree:
  return jax.tree.map(lambda a: a[idx], tree)


def _scatter(tree: PyTree, idx: jax.Array, new: PyTree) -> PyTree:
  return jax.tree.map(lambda a, b: a.at[idx].set(b), tree, new)


def bsvrb_init(
  x: PyTree,
  y: PyTree,
  *,
  variant: str = "v1",
  block_sharding: jax.sharding.Sharding | None = None,
) -> BSVRBState:
  """Initial :class:`BSVRBState` of :func:`bsvrb_step`, at ``(x, y)``.

  The estimators start at zero (:math:`s_{i,0} = 0`, :math:`z_0 = 0`, and in ``v2``
  :math:`v_{i,0} = u_{i,0} = 0`), the ``v1`` Hessian estimators at the identity
  :math:`H_{i,0} = I`, and the previous iterates equal the current ones (so the first
  corrections vanish). The official code starts every estimator at uniform random numbers;
  to start from other values, ``state._replace(...)`` them.

  Reference: Hu et al., ICML 2023 (arXiv:2305.18730), Algorithms 1 (``v1``) and 2 (``v2``).

  Args:
    x: upper-level variable (a pytree of float arrays).
    y: the m lower-level variables stacked into one pytree: every leaf has the leading
      block axis of size m.
    variant: ``"v1"`` tracks each block's Hessian :math:`\\nabla^2_{yy} g_i` as a dense
      ``(d, d)`` matrix and inverts it (low-dimensional blocks); ``"v2"`` tracks the
      Hessian-inverse-vector product :math:`v_i` by variance-reduced gradient steps on
      :math:`\\tfrac12 v^\\top \\nabla^2_{yy} g_i\\, v - v^\\top \\nabla_y f_i` (Hessian-vector
      products only).
    block_sharding: a ``jax.sharding.Sharding`` (e.g. ``NamedSharding(mesh, P("blocks"))``)
      placed on every leaf with the block axis (``y``, its estimators and previous
      iterates); ``x`` and ``z`` stay where they are. None leaves placement to JAX.

  Returns:
    A :class:`BSVRBState`.

  Raises:
    TypeError: a leaf of ``x`` or ``y`` is not floating point; ``block_sharding`` is not a
      ``jax.sharding.Sharding``.
    ValueError: ``variant`` is unknown; ``x`` or ``y`` is empty; the leaves of ``y`` do not
      share one leading block axis.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.bilevel import bsvrb_init
    >>> state = bsvrb_init(jnp.zeros(2), jnp.zeros((5, 3)), variant="v1")
    >>> state.hess.shape
    (5, 3, 3)
  """
  where = "bsvrb_init"
  check_choice("variant", variant, VARIANTS)
  check_floating(x, "x", where, allow_empty=False)
  check_floating(y, "y", where, allow_empty=False)
  m = _num_blocks(y, where)
  if block_sharding is not None and not isinstance(block_sharding, jax.sharding.Sharding):
    raise TypeError(
      f"{where}: block_sharding must be a jax.sharding.Sharding (e.g. NamedSharding), got "
      f"{type(block_sharding).__name__}"
    )
  x = jax.tree.map(jnp.asarray, x)
  y = jax.tree.map(jnp.asarray, y)
  zeros_y = otu.tree_zeros_like(y)
  hess = v = u = None
  if variant == "v1":
    d = ravel_pytree(_gather(y, 0))[0].size
    dtype = ravel_pytree(_gather(y, 0))[0].dtype
    hess = jnp.broadcast_to(jnp.eye(d, dtype=dtype), (m, d, d))
  else:
    v, u = zeros_y, otu.tree_zeros_like(y)
  state = BSVRBState(
    x=x,
    y=y,
    s=zeros_y,
    z=otu.tree_zeros_like(x),
    hess=hess,
    v=v,
    u=u,
    x_prev=x,
    y_prev=y,
    hess_prev=hess,
    v_prev=v,
    count=jnp.zeros((), jnp.int32),
  )
  if block_sharding is not None:
    put = lambda t: None if t is None else jax.device_put(t, block_sharding)  # noqa: E731
    state = state._replace(
      y=put(state.y),
      s=put(state.s),
      hess=put(state.hess),
      v=put(state.v),
      u=put(state.u),
      y_prev=put(state.y_prev),
      hess_prev=put(state.hess_prev),
      v_prev=put(state.v_prev),
    )
  return state


def _check_losses(outer_loss, inner_loss, x, yb, bb, where):
  for name, fn in (("outer_loss", outer_loss), ("inner_loss", inner_loss)):
    if not callable(fn):
      raise TypeError(f"{where}: {name} must be a callable {_SIG}, got {type(fn).__name__}")
    try:
      out = jax.eval_shape(fn, x, yb, bb)
    except TypeError as err:
      if "positional argument" not in str(err):
        raise
      raise TypeError(
        f"{where}: {name} must be a function {_SIG}; calling it failed: {err}"
      ) from err
    check_output(out, scalar=True, name=name, where=where, what=f"loss {_SIG}")


def _check_blocks(blocks, m: int, where: str) -> jax.Array:
  if not hasattr(blocks, "shape"):
    blocks = np.asarray(blocks)
  if not jnp.issubdtype(jnp.result_type(blocks), jnp.integer):
    raise TypeError(
      f"{where}: blocks must be an integer array of block indices, got dtype "
      f"{jnp.result_type(blocks)}"
    )
  if jnp.ndim(blocks) != 1 or not 1 <= jnp.shape(blocks)[0] <= m:
    raise ValueError(
      f"{where}: blocks must be a 1-d array of between 1 and m={m} block indices, got shape "
      f"{jnp.shape(blocks)}"
    )
  if not isinstance(blocks, jax.core.Tracer):
    b = np.asarray(blocks)
    if b.min() < 0 or b.max() >= m:
      raise ValueError(f"{where}: blocks must lie in [0, {m}), got {b.tolist()}")
    if np.unique(b).size != b.size:
      raise ValueError(f"{where}: blocks must be distinct, got {b.tolist()}")
  return jnp.asarray(blocks)


def _msvr_gamma(m: int, num: int, alpha: float) -> float:
  if alpha == 1.0:
    return 0.0  # the official code's rule (main_BSVRB.py, auto_gamma with alpha = 1)
  return (m - num) / (num * (1.0 - alpha)) + (1.0 - alpha)


def _project_psd(h: jax.Array, floor) -> jax.Array:
  """Projection onto {H symmetric, H >= floor I}: symmetrize, clip the eigenvalues."""
  sym = 0.5 * (h + h.T)
  w, q = jnp.linalg.eigh(sym)
  return (q * jnp.maximum(w, floor)) @ q.T


def _project_ball(v: PyTree, radius) -> PyTree:
  norm = otu.tree_norm(v)
  scale = jnp.where(norm > radius, radius / jnp.where(norm > 0, norm, 1.0), 1.0)
  return otu.tree_scale(scale, v)


def bsvrb_step(
  state: BSVRBState,
  blocks: jax.Array,
  batch: PyTree,
  *,
  outer_loss: Callable[[PyTree, PyTree, PyTree], jax.Array],
  inner_loss: Callable[[PyTree, PyTree, PyTree], jax.Array],
  learning_rate: float,
  inner_learning_rate: float = 0.1,
  adjoint_learning_rate: float | None = None,
  alpha: float = 0.5,
  beta: float = 0.1,
  gamma: float | None = None,
  hessian_floor: float = 1e-3,
  adjoint_radius: float = math.inf,
  lower_update: str = "all",
) -> BSVRBState:
  """One BSVRB step on the multi-block bilevel problem, on the sampled ``blocks``.

  The problem (m blocks, strongly convex lower levels):

  .. math::
    \\min_x F(x) = \\frac1m \\sum_{i=1}^m f_i(x, y_i^*(x)), \\qquad
    y_i^*(x) = \\arg\\min_{y_i} g_i(x, y_i),

  with :math:`\\nabla F = \\frac1m \\sum_i \\nabla_x f_i - \\nabla^2_{xy} g_i
  [\\nabla^2_{yy} g_i]^{-1} \\nabla_y f_i`. With the sampled blocks :math:`I_t`
  (:math:`|I_t| = I`), each with its minibatch :math:`\\xi_i` (``batch``), :math:`e_{i,t} =
  (x_t, y_{i,t})` and the MSVR estimator :math:`\\mathrm{MSVR}_i(a, h(e_t), h(e_{t-1})) =
  (1-\\alpha) a + (\\alpha + \\gamma) h(e_t) - \\gamma h(e_{t-1})` (both evaluations on the
  same :math:`\\xi_i`; blocks not sampled keep their estimator):

  .. math::
    s_{i,t+1} &= \\mathrm{MSVR}_i\\big(s_{i,t}, \\nabla_y g_i(e_{i,t}),
                 \\nabla_y g_i(e_{i,t-1})\\big), \\quad i \\in I_t, \\\\
    \\text{v1:}\\ H_{i,t+1} &= \\Pi_{\\lambda}\\big[\\mathrm{MSVR}_i(H_{i,t},
                 \\nabla^2_{yy} g_i(e_{i,t}), \\nabla^2_{yy} g_i(e_{i,t-1}))\\big], \\quad
                 G_i(e_{i,t}) = \\nabla_x f_i - \\nabla^2_{xy} g_i\\, H_{i,t}^{-1}
                 \\nabla_y f_i, \\\\
    \\text{v2:}\\ u_{i,t+1} &= \\mathrm{MSVR}_i\\big(u_{i,t}, \\nabla^2_{yy} g_i v_{i,t} -
                 \\nabla_y f_i, \\ \\text{same at } (e_{i,t-1}, v_{i,t-1})\\big), \\quad
                 G_i(e_{i,t}) = \\nabla_x f_i - \\nabla^2_{xy} g_i\\, v_{i,t}, \\\\
    z_{t+1} &= \\tfrac1I \\textstyle\\sum_{i \\in I_t} G_i(e_{i,t})
               + (1-\\beta)\\big(z_t - \\tfrac1I \\sum_{i \\in I_t} G_i(e_{i,t-1})\\big)
               \\quad (\\text{STORM}), \\\\
    x_{t+1} &= x_t - \\eta\\, z_{t+1}, \\qquad
    y_{i,t+1} = y_{i,t} - \\tau\\, s_{i,t+1}, \\qquad
    \\text{v2:}\\ v_{i,t+1} = \\Pi_{R}\\big[v_{i,t} - \\tau_v u_{i,t+1}\\big]
    \\quad \\forall i,

  where :math:`\\Pi_\\lambda` projects onto symmetric matrices with eigenvalues
  :math:`\\ge \\lambda` (``hessian_floor``), :math:`\\Pi_R` onto the ball of radius
  ``adjoint_radius``, and by default :math:`\\gamma = \\frac{m - I}{I(1 - \\alpha)} +
  (1 - \\alpha)` (the MSVR value; with :math:`I = m` the estimators are STORM's).
  Every block's ``y`` (and ``v``) moves with its latest estimator, sampled or not (the
  official code's ``v1`` and its ``v2`` without ``v2_partialUpdate``). ``alpha = beta = 1``
  with ``gamma = 0`` turns every estimator into the plain minibatch estimate (no variance
  reduction): the baseline of the paper's ablation.

  Source: the official code (github.com/quanqihu/BSVRB_ICML2023, ``HO/main.py``,
  ``BSVRB()``) for the order of the updates: the estimators and :math:`G` are evaluated at
  :math:`(x_t, y_t, H_t \\text{ or } v_t)` before any variable moves, and :math:`z` is
  STORM's :math:`(1-\\beta)(z - G_{\\mathrm{old}}) + G_{\\mathrm{new}}`. Deviations: the code
  projects :math:`H` by a Frobenius-norm floor (``proj_mat``); here it is the eigenvalue
  floor the analysis assumes (:math:`H \\succeq \\lambda I`); the code's default
  :math:`\\gamma` (``auto_gamma``) omits the :math:`(1 - \\alpha)` term; its HO ``v2``
  script updates an unsampled block's ``y, v`` lazily (delay counts), not here; and
  :math:`\\nabla_x f_i` (zero in the code's problems) is included.

  Reference: Hu, Qiu, Guo, Zhang & Yang, "Blockwise Stochastic Variance-Reduced Methods with
  Parallel Speedup for Multi-Block Bilevel Optimization", ICML 2023 (arXiv:2305.18730).

  Args:
    state: a :class:`BSVRBState` from :func:`bsvrb_init` (its structure fixes the variant).
    blocks: the sampled block indices :math:`I_t`, an int array ``(I,)``, distinct, in
      ``[0, m)``.
    batch: the minibatches of the sampled blocks, a pytree whose leaves have leading size
      ``I`` (row k goes with ``blocks[k]``); both losses receive the block's row.
    outer_loss: :math:`f_i(x, y_i; \\xi)`, ``(x, y_i, batch_i) -> scalar`` (``y_i`` one
      block, the block axis dropped).
    inner_loss: :math:`g_i(x, y_i; \\xi)`, same signature, strongly convex in ``y_i``.
    learning_rate: :math:`\\eta`, the upper-level step, > 0.
    inner_learning_rate: :math:`\\tau`, the lower-level step, > 0.
    adjoint_learning_rate: :math:`\\tau_v` (``v2``), > 0; None uses ``inner_learning_rate``.
    alpha: :math:`\\alpha \\in (0, 1]`, the MSVR weight of the new sample.
    beta: :math:`\\beta \\in (0, 1]`, STORM's weight of the new sample.
    gamma: :math:`\\gamma \\ge 0`, the MSVR correction; None for the MSVR value above.
    hessian_floor: :math:`\\lambda > 0` of the ``v1`` projection.
    adjoint_radius: :math:`R > 0` of the ``v2`` projection (``inf``: none).

  Returns:
    The next :class:`BSVRBState`. When ``blocks`` is traced and out of range or repeated,
    ``x`` is NaN (the documented poison); concrete ones raise.

  Raises:
    TypeError: ``state`` is not a :class:`BSVRBState`; a loss is not callable or not a real
      scalar; ``blocks`` is not an integer array.
    ValueError: ``blocks`` is not 1-d with 1 to m distinct entries in ``[0, m)``; a leaf of
      ``batch`` does not have leading size ``I``; a hyperparameter is out of its range.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from optim.bilevel import bsvrb_init, bsvrb_step
    >>> # g_i = |y_i - x c_i|^2 / 2 (y_i* = x c_i), f_i = |y_i - 1|^2 / 2, c_i = batch_i.
    >>> f = lambda x, y, c: 0.5 * jnp.sum((y - 1.0) ** 2)
    >>> g = lambda x, y, c: 0.5 * jnp.sum((y - x * c) ** 2)
    >>> c = jnp.array([[1.0], [2.0], [3.0]])
    >>> step = jax.jit(lambda s: bsvrb_step(s, jnp.arange(3), c, outer_loss=f, inner_loss=g,
    ...                                     learning_rate=0.05, inner_learning_rate=0.5))
    >>> state = bsvrb_init(jnp.zeros(1), jnp.zeros((3, 1)), variant="v2")
    >>> for _ in range(300):
    ...   state = step(state)
    >>> round(float(state.x[0]), 3)  # x* = sum c_i / sum c_i^2 = 6 / 14
    0.429
  """
  where = "bsvrb_step"
  if not isinstance(state, BSVRBState):
    raise TypeError(
      f"{where}: state must be a BSVRBState (from bsvrb_init), got {type(state).__name__}"
    )
  m = _num_blocks(state.y, where)
  blocks = _check_blocks(blocks, m, where)
  num = int(jnp.shape(blocks)[0])
  check_batch(batch, num, name="batch", like_name="blocks", where=where)
  check_scalar("learning_rate", learning_rate, lo=0.0, lo_open=True)
  check_scalar("inner_learning_rate", inner_learning_rate, lo=0.0, lo_open=True)
  if adjoint_learning_rate is None:
    adjoint_learning_rate = inner_learning_rate
  check_scalar("adjoint_learning_rate", adjoint_learning_rate, lo=0.0, lo_open=True)
  a = check_scalar("alpha", alpha, lo=0.0, hi=1.0, lo_open=True)
  check_scalar("beta", beta, lo=0.0, hi=1.0, lo_open=True)
  check_scalar("hessian_floor", hessian_floor, lo=0.0, lo_open=True)
  radius = check_scalar("adjoint_radius", adjoint_radius, lo=0.0, lo_open=True, allow_inf=True)
  if gamma is None:
    if a is None:
      raise TypeError(f"{where}: gamma=None needs a concrete alpha; pass gamma with a traced alpha")
    gamma = _msvr_gamma(m, num, a)
  check_scalar("gamma", gamma, lo=0.0)
  check_choice("lower_update", lower_update, ("all", "sampled"))
  v1 = state.hess is not None
  row = lambda t: jax.tree.map(lambda leaf: leaf[0], t)  # noqa: E731
  _check_losses(outer_loss, inner_loss, state.x, _block(state.y), row(batch), where)

  x, xp = state.x, state.x_prev
  y_b, yp_b = _gather(state.y, blocks), _gather(state.y_prev, blocks)
  s_b = _gather(state.s, blocks)
  _, unravel = ravel_pytree(row(y_b))

  def grad_y(loss, xx, yy, b):
    return jax.grad(loss, argnums=1)(xx, yy, b)

  def cross(xx, yy, b, w):
    """The mixed product grad_xy g w = grad_x <grad_y g(x, y), w>."""
    return jax.grad(lambda x_: otu.tree_vdot(grad_y(inner_loss, x_, yy, b), w))(xx)

  def hyper(xx, yy, b, w):
    """G_i = grad_x f - grad_xy g w."""
    fx = jax.grad(outer_loss, argnums=0)(xx, yy, b)
    return otu.tree_sub(fx, cross(xx, yy, b, w))

  def msvr(est, new, old):
    return jax.tree.map(
      lambda e, n, o: (1 - alpha) * e + (alpha + gamma) * n - gamma * o, est, new, old
    )

  def per_block(y_i, yp_i, s_i, b, extra):
    s_new = msvr(s_i, grad_y(inner_loss, x, y_i, b), grad_y(inner_loss, xp, yp_i, b))
    if v1:
      h_i, hp_i = extra

      def hess(xx, yy):
        flat = lambda vec: ravel_pytree(grad_y(inner_loss, xx, unravel(vec), b))[0]  # noqa: E731
        return jax.jacfwd(flat)(ravel_pytree(yy)[0])

      h_new = _project_psd(msvr(h_i, hess(x, y_i), hess(xp, yp_i)), hessian_floor)

      def adjoint(xx, yy, h):
        fy = ravel_pytree(grad_y(outer_loss, xx, yy, b))[0]
        return unravel(jnp.linalg.solve(h, fy))

      g_new = hyper(x, y_i, b, adjoint(x, y_i, h_i))
      g_old = hyper(xp, yp_i, b, adjoint(xp, yp_i, hp_i))
      return s_new, h_new, g_new, g_old
    v_i, vp_i, u_i = extra

    def gamma_grad(xx, yy, vv):
      """grad_v of Gamma_i(v) = v^T H v / 2 - v^T grad_y f: H v - grad_y f (one HVP)."""
      hv = jax.jvp(lambda y_: grad_y(inner_loss, xx, y_, b), (yy,), (vv,))[1]
      return otu.tree_sub(hv, grad_y(outer_loss, xx, yy, b))

    u_new = msvr(u_i, gamma_grad(x, y_i, v_i), gamma_grad(xp, yp_i, vp_i))
    return s_new, u_new, hyper(x, y_i, b, v_i), hyper(xp, yp_i, b, vp_i)

  if v1:
    extra = (state.hess[blocks], state.hess_prev[blocks])
  else:
    extra = (_gather(state.v, blocks), _gather(state.v_prev, blocks), _gather(state.u, blocks))
  s_b, est_b, g_new, g_old = jax.vmap(per_block)(y_b, yp_b, s_b, batch, extra)
  mean = lambda t: jax.tree.map(lambda leaf: jnp.mean(leaf, axis=0), t)  # noqa: E731
  g_new, g_old = mean(g_new), mean(g_old)
  z = jax.tree.map(lambda gn, zz, go: gn + (1 - beta) * (zz - go), g_new, state.z, g_old)
  x_new = jax.tree.map(lambda xx, zz: xx - learning_rate * zz, x, z)
  if isinstance(blocks, jax.core.Tracer):
    ok = jnp.all((blocks >= 0) & (blocks < m))
    ok &= jnp.all(jnp.sort(blocks)[1:] != jnp.sort(blocks)[:-1])
    x_new = jax.tree.map(lambda leaf: poison(leaf, ok), x_new)
  s = _scatter(state.s, blocks, s_b)
  if lower_update == "all":
    y_new = jax.tree.map(lambda yy, ss: yy - inner_learning_rate * ss, state.y, s)
  else:
    y_b = jax.tree.map(lambda yy, ss: yy - inner_learning_rate * ss, y_b, s_b)
    y_new = _scatter(state.y, blocks, y_b)
  if v1:
    hess = state.hess.at[blocks].set(est_b)
    return BSVRBState(
      x=x_new, y=y_new, s=s, z=z, hess=hess, v=None, u=None, x_prev=x, y_prev=state.y,
      hess_prev=state.hess, v_prev=None, count=state.count + 1,
    )  # fmt: skip
  u = _scatter(state.u, blocks, est_b)
  v_old, u_use = (state.v, u) if lower_update == "all" else (_gather(state.v, blocks), est_b)
  step_v = jax.tree.map(lambda vv, uu: vv - adjoint_learning_rate * uu, v_old, u_use)
  if radius is None or radius != math.inf:
    step_v = jax.vmap(_project_ball, in_axes=(0, None))(step_v, adjoint_radius)
  if lower_update == "sampled":
    step_v = _scatter(state.v, blocks, step_v)
  return BSVRBState(
    x=x_new, y=y_new, s=s, z=z, hess=None, v=step_v, u=u, x_prev=x, y_prev=state.y,
    hess_prev=None, v_prev=state.v, count=state.count + 1,
  )  # fmt: skip


def _criterion(state: BSVRBState) -> jax.Array:
  """||z|| plus the root-mean-square over blocks of ||s_i|| (and of ||u_i|| in v2)."""
  m = _num_blocks(state.y, "bsvrb")
  err = otu.tree_norm(state.z) + otu.tree_norm(state.s) / math.sqrt(m)
  if state.u is not None:
    err = err + otu.tree_norm(state.u) / math.sqrt(m)
  return err


def bsvrb(
  outer_loss: Callable[[PyTree, PyTree, PyTree], jax.Array],
  inner_loss: Callable[[PyTree, PyTree, PyTree], jax.Array],
  x: PyTree,
  y: PyTree,
  sample_batch: Callable[[jax.Array, jax.Array], PyTree],
  *,
  key: Any,
  learning_rate: float,
  num_blocks: int | None = None,
  variant: str = "v1",
  max_iterations: int = 1000,
  tol: float = 1e-6,
  block_sharding: jax.sharding.Sharding | None = None,
  **step_kwargs: Any,
) -> BSVRBResult:
  """Runs :func:`bsvrb_step` from ``(x, y)`` until its estimators vanish to ``tol``.

  The criterion :math:`e_t` (the STORM hypergradient estimate plus the blocks' lower-level
  and adjoint estimators, see :class:`BSVRBResult`) vanishes at a stationary point of the
  whole system; with stochastic minibatches and constant steps it reaches a noise floor.
  Each iteration draws ``num_blocks`` distinct blocks uniformly without replacement and their
  minibatches ``sample_batch(key_t, blocks)``, then takes one :func:`bsvrb_step` (see there
  for the update). One ``lax.while_loop``; the run is a deterministic function of ``key``.

  Reference: Hu et al., ICML 2023 (arXiv:2305.18730).

  Args:
    outer_loss: :math:`f_i`, ``(x, y_i, batch_i) -> scalar``.
    inner_loss: :math:`g_i`, same signature, strongly convex in ``y_i``.
    x: initial upper-level variable.
    y: initial lower-level variables, stacked over the m blocks.
    sample_batch: ``(key, blocks) -> batch``, the minibatches of the sampled blocks (leaves
      with leading size ``num_blocks``).
    key: PRNG key (or int seed) of the block and data sampling.
    learning_rate: :math:`\\eta`, > 0.
    num_blocks: :math:`I`, blocks sampled per step, in ``[1, m]``; None samples all m.
    variant: ``"v1"`` or ``"v2"`` (see :func:`bsvrb_init`).
    max_iterations: cap on steps, >= 1.
    tol: stopping tolerance on :math:`e_t = \\|z_{t+1}\\| + \\|s_{t+1}\\|/\\sqrt m\\
      (+ \\|u_{t+1}\\|/\\sqrt m)` (see :class:`BSVRBResult`), >= 0 (0 runs ``max_iterations``).
    block_sharding: see :func:`bsvrb_init`.
    **step_kwargs: the other hyperparameters of :func:`bsvrb_step`.

  Returns:
    :class:`BSVRBResult` ``(x, y, state, n_iters, errors, converged)``.

  Raises:
    TypeError: ``sample_batch`` is not callable; see :func:`bsvrb_init` and
      :func:`bsvrb_step`.
    ValueError: ``num_blocks`` outside ``[1, m]``, ``max_iterations < 1``, ``tol < 0``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.bilevel import bsvrb
    >>> c = jnp.arange(1.0, 5.0)[:, None]  # 4 blocks, y_i* = x c_i
    >>> f = lambda x, y, ci: 0.5 * jnp.sum((y - 1.0) ** 2)
    >>> g = lambda x, y, ci: 0.5 * jnp.sum((y - x * ci) ** 2)
    >>> sample = lambda key, blocks: c[blocks]  # deterministic blocks here
    >>> res = bsvrb(f, g, jnp.zeros(1), jnp.zeros((4, 1)), sample, key=0, learning_rate=0.05,
    ...             inner_learning_rate=0.5, max_iterations=2000, tol=1e-5)
    >>> bool(res.converged), round(float(res.x[0]), 3)  # x* = sum c / sum c^2 = 10 / 30
    (True, 0.333)
    >>> # 2 of 4 blocks a step: a neighbourhood of x* (block-sampling noise, constant steps)
    >>> res = bsvrb(f, g, jnp.zeros(1), jnp.zeros((4, 1)), sample, key=0, learning_rate=0.02,
    ...             inner_learning_rate=0.3, num_blocks=2, max_iterations=3000, tol=0.0)
    >>> round(float(res.x[0]), 2)
    0.34
  """
  where = "bsvrb"
  if not callable(sample_batch):
    raise TypeError(
      f"{where}: sample_batch must be a callable (key, blocks) -> batch, got "
      f"{type(sample_batch).__name__}"
    )
  key = as_key(key)
  state = bsvrb_init(x, y, variant=variant, block_sharding=block_sharding)
  m = _num_blocks(state.y, where)
  num = (
    m
    if num_blocks is None
    else check_scalar("num_blocks", num_blocks, lo=1, hi=m, integer=True, static=True)
  )
  n_max = check_scalar("max_iterations", max_iterations, lo=1, integer=True, static=True)
  check_scalar("tol", tol, lo=0.0)

  def draw(k):
    kb, kd = jax.random.split(k)
    blocks = jax.random.choice(kb, m, (num,), replace=False) if num < m else jnp.arange(m)
    return blocks, sample_batch(kd, blocks)

  def step(st, blocks, batch):
    return bsvrb_step(st, blocks, batch, outer_loss=outer_loss, inner_loss=inner_loss,
                      learning_rate=learning_rate, **step_kwargs)  # fmt: skip

  # Every argument is checked once, at trace time, before the loop.
  jax.eval_shape(lambda k: step(state, *draw(k)), key)
  errors0 = jnp.full((n_max,), jnp.nan, dtype=jnp.result_type(float))

  def cond(carry):
    _, t, err, _ = carry
    return (t < n_max) & ~(err <= tol)

  def body(carry):
    st, t, _, errors = carry
    blocks, batch = draw(jax.random.fold_in(key, t))
    st = step(st, blocks, batch)
    err = _criterion(st).astype(errors.dtype)
    return st, t + 1, err, errors.at[t].set(err)

  init = (state, jnp.zeros((), jnp.int32), jnp.asarray(jnp.inf, errors0.dtype), errors0)
  state, n, err, errors = jax.lax.while_loop(cond, body, init)
  return BSVRBResult(
    x=state.x, y=state.y, state=state, n_iters=n, errors=errors, converged=err <= tol
  )
