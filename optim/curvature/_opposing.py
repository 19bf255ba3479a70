"""Opposing signals: paired outlier groups found from per-example loss histories, tracked
with the top Hessian eigenvalue, and the two-layer linear toy where the effect is exact.

Rosenfeld & Risteski, "Outliers with Opposing Signals Have an Outsized Effect on Neural
Network Optimization", ICLR 2024, arXiv:2311.04163.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optim._validation import as_key, check_scalar, is_traced
from optim.curvature._eigen import lanczos, tridiagonal
from optim.curvature._operators import hessian_matvec

PyTree = Any


class OpposingGroups(NamedTuple):
  """The two groups of :func:`opposing_groups` at each step of a loss history.

  Attributes:
    increased: ``(T - 1, n)`` bool: among the ``k`` largest loss changes from step
      :math:`t` to :math:`t + 1`, the examples whose loss went up.
    decreased: ``(T - 1, n)`` bool: the same, loss went down.
    change: ``(T - 1, n)`` the loss changes :math:`\\ell_{t+1} - \\ell_t`.
  """

  increased: jax.Array
  decreased: jax.Array
  change: jax.Array


class OpposingSignals(NamedTuple):
  """What :func:`opposing_signals` tracked over a run.

  Attributes:
    losses: ``(T, n)`` per-example losses at each snapshot.
    groups: the :class:`OpposingGroups` of the loss history.
    sharpness: ``(T,)`` the top Hessian eigenvalue of the mean loss at each snapshot
      (the largest Ritz value of :func:`optim.curvature.lanczos`).
  """

  losses: jax.Array
  groups: OpposingGroups
  sharpness: jax.Array


def _check_history(losses: Any, where: str) -> jax.Array:
  a = jnp.asarray(losses)
  if not jnp.issubdtype(a.dtype, jnp.floating):
    raise TypeError(f"{where}: losses must be floating point, got dtype {a.dtype}")
  if a.ndim != 2:
    raise ValueError(
      f"{where}: losses must be a per-example loss history of shape (T, n) (steps, "
      f"examples); got shape {a.shape}"
      + (" (a mean loss per step? the groups need per-example losses)" if a.ndim == 1 else "")
    )
  if a.shape[0] < 2:
    raise ValueError(f"{where}: losses needs at least 2 steps to take a change; got {a.shape[0]}")
  if not is_traced(a):
    arr = np.asarray(a)
    if not np.all(np.isfinite(arr)):
      i = tuple(int(v) for v in np.argwhere(~np.isfinite(arr))[0])
      raise ValueError(f"{where}: losses must be finite; got {arr[i]} at (step, example) {i}")
  return a


def opposing_groups(losses: Any, *, k: int) -> OpposingGroups:
  r"""The paired outlier groups of a per-example loss history: largest changes, by sign.

  For each step :math:`t` of a history :math:`\ell_{t,i}` (training loss of example
  :math:`i` after :math:`t` steps), take the :math:`k` examples with the largest
  :math:`|\Delta_{t,i}|`, :math:`\Delta_{t,i} = \ell_{t+1,i} - \ell_{t,i}`, and split them
  by the sign of the change:

  .. math::
    K_t = \operatorname{top}_k |\Delta_{t,\cdot}|, \quad
    G^+_t = \{i \in K_t : \Delta_{t,i} > 0\}, \quad
    G^-_t = \{i \in K_t : \Delta_{t,i} < 0\}.

  This is the paper's selection rule (Sec. 2): at a step where the loss of a few examples
  moves most, one group's loss rises while the other's falls, and the two groups share a
  large-magnitude feature (an *opposing signal*) whose gradients point in opposite
  directions. Over steps, a pair oscillates (:math:`G^+_t \approx G^-_{t+1}`) while the
  sharpness sits near :math:`2/\eta` (:func:`opposing_signals` tracks both). Ties in
  :math:`|\Delta|` go to the lower index (``lax.top_k``).

  Non-finite losses: concrete ones raise; traced ones give NaN changes and empty groups
  at the steps they touch (the documented poison).

  Args:
    losses: ``(T, n)`` per-example losses, :math:`T \ge 2`.
    k: how many of the largest changes to split, an integer in ``[1, n]``.

  Returns:
    An :class:`OpposingGroups` with ``(T - 1, n)`` masks and changes.

  Raises:
    ValueError: a history not of shape ``(T, n)`` (one loss per step is a mean, not
      per-example), fewer than 2 steps, ``k`` outside ``[1, n]``, concrete non-finite losses.
    TypeError: non-floating losses, a non-integer ``k``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.curvature import opposing_groups
    >>> hist = jnp.array([[1.0, 1.0, 0.5, 0.5], [1.0, 1.0, 2.0, 0.1], [1.0, 1.0, 0.1, 2.5]])
    >>> g = opposing_groups(hist, k=2)
    >>> g.increased.tolist()  # step 0 -> 1: example 2 rose; step 1 -> 2: example 3 rose
    [[False, False, True, False], [False, False, False, True]]
    >>> g.decreased.tolist()  # ...while the other one fell: the pair swaps
    [[False, False, False, True], [False, False, True, False]]

  References:
    Rosenfeld & Risteski, "Outliers with Opposing Signals Have an Outsized Effect on
    Neural Network Optimization", ICLR 2024, arXiv:2311.04163 (Sec. 2).
  """
  a = _check_history(losses, "opposing_groups")
  n = a.shape[1]
  k = check_scalar("k", k, lo=1, integer=True, static=True)
  if k > n:
    raise ValueError(f"opposing_groups: k={k} exceeds the number of examples n={n}")
  return _groups(a, k)


@functools.partial(jax.jit, static_argnums=(1,))
def _groups(a, k):
  change = a[1:] - a[:-1]
  mag = jnp.abs(change)
  ok = jnp.all(jnp.isfinite(change), axis=1, keepdims=True)
  _, idx = jax.lax.top_k(jnp.where(ok, mag, 0.0), k)
  top = jnp.zeros(change.shape, bool).at[jnp.arange(change.shape[0])[:, None], idx].set(True)
  top = top & ok
  return OpposingGroups(top & (change > 0), top & (change < 0), change)


def opposing_signals(
  loss_fn: Callable[[PyTree, Any], jax.Array],
  params_history: PyTree,
  batch: Any,
  *,
  k: int,
  key: Any,
  num_iterations: int = 20,
) -> OpposingSignals:
  r"""Opposing-signal groups of a run, tracked together with the top Hessian eigenvalue.

  For snapshots :math:`\theta_0, \dots, \theta_{T-1}` of a run (stacked on a leading axis)
  and per-example losses :math:`\ell_i(\theta)` on a fixed batch:

  * the loss history :math:`\ell_{t,i} = \ell_i(\theta_t)` and its groups
    :math:`G^\pm_t` (:func:`opposing_groups`);
  * the sharpness :math:`\lambda_{\max}\big(\nabla^2 \tfrac{1}{n}\sum_i \ell_i(\theta_t)\big)`,
    the largest Ritz value of a Lanczos run on the Hessian operator
    (:func:`optim.curvature.hessian_matvec`, :func:`optim.curvature.lanczos`): the largest
    *algebraic* eigenvalue, which a network's early Hessian, with large negative
    eigenvalues, does not give by power iteration (largest magnitude).

  Read together (the paper's Figs. 1-3): the groups' losses oscillate in antiphase once the
  sharpness reaches :math:`2/\eta` (edge of stability), and the overall loss spikes when
  they blow up. The snapshots are one ``lax.map`` (one compilation).

  Args:
    loss_fn: ``loss_fn(params, batch) -> (n,)`` per-example losses.
    params_history: the snapshots, every leaf with a leading axis of :math:`T \ge 2`.
    batch: the fixed batch the losses are measured on.
    k: group size parameter of :func:`opposing_groups`.
    key: PRNG key of the Lanczos start vectors (one fold per snapshot).
    num_iterations: Lanczos steps (Hessian-vector products) per snapshot, capped at the
      number of parameters (where the Ritz values are exact).

  Returns:
    An :class:`OpposingSignals` (losses, groups, sharpness).

  Raises:
    ValueError: snapshots without a common leading axis of at least 2, a ``loss_fn`` that
      returns a scalar (a mean) instead of per-example losses, and as
      :func:`opposing_groups` (non-finite losses, ``k``).
    TypeError: a non-callable ``loss_fn``, one that fails on a snapshot, a bad key.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.curvature import opposing_signals
    >>> x = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]); y = jnp.array([1.0, -1.0, 0.5])
    >>> loss_fn = lambda w, b: 0.5 * (b[0] @ w - b[1]) ** 2
    >>> hist = jnp.stack([jnp.zeros(2), jnp.array([0.5, -0.2]), jnp.array([0.9, -0.4])])
    >>> r = opposing_signals(loss_fn, hist, (x, y), k=2, key=0)  # Hessian X^T X / 3
    >>> r.losses.shape, r.groups.increased.shape, [round(float(s), 4) for s in r.sharpness]
    ((3, 3), (2, 3), [1.7676, 1.7676, 1.7676])

  References:
    Rosenfeld & Risteski, "Outliers with Opposing Signals Have an Outsized Effect on
    Neural Network Optimization", ICLR 2024, arXiv:2311.04163.
  """
  if not callable(loss_fn):
    raise TypeError(f"opposing_signals: loss_fn must be callable, got {type(loss_fn).__name__}")
  leaves = jax.tree.leaves(params_history)
  if not leaves:
    raise ValueError("opposing_signals: params_history is an empty pytree")
  steps = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
  if len(steps) != 1 or None in steps:
    raise ValueError(
      "opposing_signals: params_history must stack the snapshots on one leading axis of "
      f"every leaf; got leading sizes {[jnp.shape(x)[:1] for x in leaves]}"
    )
  t = steps.pop()
  if t < 2:
    raise ValueError(f"opposing_signals: params_history needs at least 2 snapshots; got {t}")
  first = jax.tree.map(lambda x: x[0], params_history)
  try:
    out = jax.eval_shape(loss_fn, first, batch)
  except (TypeError, ValueError) as err:
    raise TypeError(
      "opposing_signals: calling loss_fn(params, batch) on the first snapshot (params_history "
      f"without its leading axis) failed: {err}"
    ) from err
  if getattr(out, "ndim", None) != 1:
    raise ValueError(
      "opposing_signals: loss_fn(params, batch) must return per-example losses of shape (n,); "
      f"got shape {getattr(out, 'shape', out)}"
      + (" (a mean loss?)" if getattr(out, "ndim", None) == 0 else "")
    )
  k = check_scalar("k", k, lo=1, integer=True, static=True)
  if k > out.shape[0]:
    raise ValueError(f"opposing_signals: k={k} exceeds the number of examples n={out.shape[0]}")
  num_iterations = check_scalar("num_iterations", num_iterations, lo=1, integer=True, static=True)
  num_iterations = min(
    num_iterations, sum(int(np.prod(jnp.shape(a))) for a in jax.tree.leaves(first))
  )
  key = as_key(key)

  mean_loss = lambda p, b: jnp.mean(loss_fn(p, b))

  def at(i_params):
    i, p = i_params
    losses = loss_fn(p, batch)
    run = lanczos(
      hessian_matvec(mean_loss, p, batch),
      key=jax.random.fold_in(key, i),
      num_iterations=num_iterations,
    )
    # Rows past a breakdown are a zero block (Ritz values 0): give them alpha_1, a Rayleigh
    # quotient of the Hessian (<= lambda_max), so they never win the max.
    valid = jnp.arange(num_iterations) < run.n_iters
    t = tridiagonal(run._replace(alphas=jnp.where(valid, run.alphas, run.alphas[0])))
    return losses, jnp.linalg.eigvalsh(t)[-1]

  losses, sharpness = jax.jit(lambda h: jax.lax.map(at, (jnp.arange(t), h)))(params_history)
  groups = opposing_groups(losses, k=k)
  return OpposingSignals(losses, groups, sharpness)


# ----------------------------------------------------------------------------- the toy
# A two-layer linear network f(x) = b * (a . x) (one hidden unit) on the opposing-signal
# data of the paper's toy: a small core feature x_c = beta * y on every example and a large
# feature x_o = alpha shared by two small groups with opposite labels (fractions p/2 each).
# With u = b a_o, v = b a_c and r = beta v - 1, the mean squared loss is exactly
#   L = p alpha^2 u^2 / 2 + r^2 / 2,
# so dL/da_o = p alpha^2 b^2 a_o: gradient descent multiplies a_o by (1 - eta p alpha^2 b^2)
# every step, and the top Hessian eigenvalue on the valley a_o = 0 is
#   max(p alpha^2 b^2, lambda_core), lambda_core the top eigenvalue of the (a_c, b) block.
# The groups' losses differ by exactly L_+ - L_- = 2 alpha u r, whose sign flips with u.
# Private: the tests and bench/_recipes_part2.py use it.


def toy_data(n: int, p: float, alpha: float, beta: float):
  """The toy's ``(x, y)``: ``n`` examples, the first ``p n / 2`` with ``x_o = alpha, y = +1``,
  the next ``p n / 2`` with ``x_o = alpha, y = -1``, the rest ``x_o = 0`` with alternating
  labels; every example has ``x_c = beta * y``. Columns: ``(x_o, x_c)``."""
  m = int(round(p * n / 2))
  y = np.concatenate(
    [np.ones(m), -np.ones(m), np.tile([1.0, -1.0], (n - 2 * m + 1) // 2)[: n - 2 * m]]
  )
  xo = np.concatenate([np.full(2 * m, alpha), np.zeros(n - 2 * m)])
  return np.stack([xo, beta * y], 1), y, m


def toy_losses(params, batch):
  """Per-example squared losses ``(f(x) - y)^2 / 2`` of ``f(x) = b (a . x)``."""
  x, y = batch
  f = params["b"] * (x @ params["a"])
  return 0.5 * (f - y) ** 2


def toy_hessian(params, p, alpha, beta):
  """The closed-form Hessian of the mean toy loss in the coordinates ``(a_o, a_c, b)``:
  ``L = p alpha^2 b^2 a_o^2 / 2 + (beta b a_c - 1)^2 / 2``."""
  (ao, ac), b = params["a"], params["b"]
  r = beta * b * ac - 1.0
  pa = p * alpha**2
  return np.array(
    [
      [pa * b**2, 0.0, 2 * pa * b * ao],
      [0.0, beta**2 * b**2, beta * (beta * b * ac + r)],
      [2 * pa * b * ao, beta * (beta * b * ac + r), pa * ao**2 + beta**2 * ac**2],
    ]
  )
