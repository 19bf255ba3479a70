"""Zeroth-order gradient estimates denoised by a subspace of the optimization history.

ZOODiP (Seo, Jeong, Lee & Chun, CVPR 2025, arXiv:2503.14868): a Gaussian forward-difference
estimate of the gradient from ``num_queries + 1`` function values, with the directions in
which the recent history barely moves projected out ("subspace gradient", Algorithm 1).
The facts come from the official code (github.com/ignoww/ZOODiP, ``train_zoodip.py``:
``zo_step``, ``ZOAdam.update`` and the PCA block of the training loop); the step is the
estimator only, any optax optimizer applies it (the official code uses Adam with
``eps=1e-3``: ``optax.adam(learning_rate, eps=1e-3)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from optim._validation import (
  as_key,
  check_choice,
  check_floating,
  check_output,
  check_scalar,
  is_traced,
  poison,
)

__all__ = ["ZOSubspaceEstimate", "ZOSubspaceState", "zo_subspace_init", "zo_subspace_step"]

_VARIANTS = ("official", "principal")


class ZOSubspaceState(NamedTuple):
  """The history buffer and the projection of :func:`zo_subspace_step`.

  Attributes:
    count: int32 number of steps taken.
    history: ``(history_size, d)`` ring buffer of flattened iterates (``"official"``) or
      of raw gradient estimates (``"principal"``), ``d`` the number of parameters.
    basis: ``(history_size, d)`` unit principal directions of the history (rows), from the
      last refresh; zeros before the first.
    active: bool ``(history_size,)``, the rows of ``basis`` the projection uses: removed
      (``"official"``) or kept (``"principal"``); all false before the first refresh.
  """

  count: jax.Array
  history: jax.Array
  basis: jax.Array
  active: jax.Array


class ZOSubspaceEstimate(NamedTuple):
  """What :func:`zo_subspace_step` returns.

  Attributes:
    grads: the projected gradient estimate, shaped like ``params`` (a pytree).
    loss: ``fn(params)``, the unperturbed value (one of the step's evaluations).
    state: the next :class:`ZOSubspaceState`.
    num_evals: evaluations of ``fn`` in the step (``num_queries + 1``, a Python int).
  """

  grads: Any
  loss: jax.Array
  state: ZOSubspaceState
  num_evals: int


def _check_params(params: Any, where: str) -> tuple[jax.Array, Callable]:
  check_floating(params, "params", where, allow_empty=False)
  flat, unravel = ravel_pytree(params)
  if flat.size == 0:
    raise ValueError(f"{where}: params must hold at least one number, got an empty pytree")
  leaves = jax.tree.leaves(params)
  if not is_traced(leaves) and not all(np.all(np.isfinite(np.asarray(v))) for v in leaves):
    raise ValueError(f"{where}: params must be finite (no NaN or inf)")
  return flat, unravel


def zo_subspace_init(params: Any, *, history_size: int = 128) -> ZOSubspaceState:
  """The empty state of :func:`zo_subspace_step` for ``params``.

  .. math::
    t = 0, \\qquad H = 0 \\in \\mathbb{R}^{\\tau \\times d}, \\qquad V = 0,\\ \\text{no
    active direction (the first } \\tau \\text{ steps are not projected)}.

  Args:
    params: the parameters (a pytree of floating arrays; ``d`` numbers in all).
    history_size: :math:`\\tau`, the length of the history buffer and the period of its
      principal-component refresh (the official code's ``tau``, default 128).

  Returns:
    A :class:`ZOSubspaceState` in the dtype of the flattened ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.zeroth_order import zo_subspace_init
    >>> zo_subspace_init(jnp.zeros(5), history_size=4).history.shape
    (4, 5)

  References:
    Seo, Jeong, Lee & Chun, "Efficient Personalization of Quantized Diffusion Model
    without Backpropagation", CVPR 2025, arXiv:2503.14868 (Algorithm 1).
  """
  tau = check_scalar("history_size", history_size, lo=2, integer=True, static=True)
  flat, _ = _check_params(params, "zo_subspace_init")
  d = flat.size
  return ZOSubspaceState(
    count=jnp.zeros((), jnp.int32),
    history=jnp.zeros((tau, d), flat.dtype),
    basis=jnp.zeros((tau, d), flat.dtype),
    active=jnp.zeros((tau,), bool),
  )


def _refresh(history: jax.Array, nu: jax.Array, variant: str) -> tuple[jax.Array, jax.Array]:
  """The principal directions of the history and the rows the projection uses."""
  tau, d = history.shape
  eps = jnp.finfo(history.dtype).eps
  if variant == "official":
    # sklearn's StandardScaler (population std; a constant column keeps scale 1), then PCA
    # (centred SVD) of the standardized iterates, as the official training loop does.
    std = jnp.std(history, axis=0)
    std = jnp.where(std < 10 * eps, jnp.ones_like(std), std)
    z = (history - history.mean(0)) / std
    z = z - z.mean(0)
  else:
    z = history  # the span of the raw estimates: no centring, no scaling
  _, s, vt = jnp.linalg.svd(z, full_matrices=False)
  energy = s**2
  total = energy.sum()
  # cumsum(ratio)_i > 1 - nu, written as the variance left after component i (a sum of
  # non-negative terms) below nu * total: nu = 0 then keeps every direction exactly, where
  # a cumulative sum rounded above 1 would cut the last ones.
  tail = jnp.append(jnp.cumsum(energy[::-1])[::-1][1:], 0.0)
  above = tail < nu * total
  # The first component at which the explained variance passes 1 - nu (the last if none).
  i = jnp.where(jnp.any(above), jnp.argmax(above), tau - 1)
  # Directions with a zero singular value are arbitrary (any unit vector orthogonal to the
  # history): never used, where the official code would also remove them.
  real = (s > s[0] * max(tau, d) * eps) & (total > 0)
  idx = jnp.arange(s.shape[0])
  active = real & ((idx > i) if variant == "official" else (idx <= i))
  basis = jnp.zeros((tau, d), history.dtype).at[: s.shape[0]].set(vt)
  active = jnp.zeros((tau,), bool).at[: s.shape[0]].set(active)
  return basis, active


def _project(g: jax.Array, basis: jax.Array, active: jax.Array, variant: str) -> jax.Array:
  """``g`` without the active directions (official) or on them (principal; identity when
  none is active yet)."""
  coef = jnp.where(active, basis @ g, 0.0)
  if variant == "official":
    return g - basis.T @ coef
  return jnp.where(jnp.any(active), basis.T @ coef, g)


def zo_subspace_step(
  fn: Callable[[Any], jax.Array],
  params: Any,
  state: ZOSubspaceState,
  *,
  key: Any,
  num_queries: int = 2,
  mu: Any = 1e-3,
  nu: Any = 1e-3,
  variant: str = "official",
) -> ZOSubspaceEstimate:
  """ZOODiP's zeroth-order gradient estimate, projected by the history's principal subspace.

  With :math:`x` the flattened ``params`` (:math:`d` numbers), :math:`n` = ``num_queries``
  and :math:`z_i \\sim \\mathcal N(0, I_d)`, the estimate is the forward difference

  .. math::
    \\hat g = \\frac{1}{n\\,\\sqrt{(d_\\text{eff} + n - 1)/n}}\\sum_{i=1}^{n}
    \\frac{f(x + \\mu z_i) - f(x)}{\\mu}\\, z_i, \\qquad g = P\\,\\hat g,

  (:math:`n + 1` evaluations of :math:`f`). With ``variant="official"`` the history holds
  the iterates and :math:`P = I - V_{>k}^\\top V_{>k}`, where :math:`V` are the principal
  directions of the standardized history (per-coordinate mean 0, variance 1) and :math:`k`
  is the first index whose cumulative explained variance exceeds :math:`1 - \\nu`: the
  directions of the history's least variance are removed, and :math:`d_\\text{eff} = d -
  \\mathrm{rank}\\,V_{>k}`. With ``variant="principal"`` the history holds the raw estimates
  :math:`\\hat g` and :math:`P = V_{\\le k}^\\top V_{\\le k}` projects onto their principal
  subspace (uncentred), :math:`d_\\text{eff} = \\mathrm{rank}\\,V_{\\le k}`. The subspace is
  recomputed every :math:`\\tau` = ``history_size`` steps from the last :math:`\\tau`
  entries; the first :math:`\\tau` steps are not projected. For a quadratic :math:`f` the
  unprojected estimate is unbiased up to the factor :math:`1/\\sqrt{(d_\\text{eff}+n-1)/n}`
  (the odd moments of :math:`z` cancel the curvature term), and
  :math:`\\mathrm{Cov}[g] = P\\,\\mathrm{Cov}[\\hat g]\\,P^\\top`.

  Pass the result's ``grads`` to any optax optimizer (the official code: Adam with
  ``eps=1e-3``, learning rate 1e-2, :math:`n = 2`, :math:`\\mu = 10^{-3}`,
  :math:`\\tau = 128`, :math:`\\nu = 10^{-3}`), then call the step again with the new
  parameters: the official history records each update's result, which this step does on
  its next call (from the second call on).

  Differences from the official code, all on its edges: directions that the SVD returns
  for zero singular values (arbitrary unit vectors orthogonal to the history) are never
  removed; the returned ``loss`` is :math:`f(x)`, not the last perturbed value. The
  ``"principal"`` variant is not in the official code: it is the reading "project the
  estimate onto the principal subspace of past estimates" (see the docs page).

  Args:
    fn: the objective ``params -> scalar`` (forward passes only; deterministic within one
      step: draw its data and noise outside and close over them).
    params: the current parameters (a pytree of floating arrays).
    state: the :class:`ZOSubspaceState` from :func:`zo_subspace_init` or the last step.
    key: PRNG key (or int seed) of the :math:`n` perturbations.
    num_queries: :math:`n \\ge 1` perturbations (static).
    mu: the finite-difference step :math:`\\mu > 0`.
    nu: the share of the history's variance left out of the kept subspace,
      :math:`\\nu \\in [0, 1)`.
    variant: ``"official"`` (iterates; remove minor directions) or ``"principal"``
      (estimates; keep the principal subspace).

  Returns:
    A :class:`ZOSubspaceEstimate` ``(grads, loss, state, num_evals)``. A non-finite value
    of ``fn`` poisons ``grads`` with NaN and leaves the state unchanged.

  Raises:
    TypeError: a non-callable ``fn``, non-floating ``params``, a bad ``key``, ``fn``
      returning something else than a floating scalar, or a ``state`` of another type.
    ValueError: out-of-range ``num_queries``, ``mu`` or ``nu``, an unknown ``variant``,
      concrete non-finite ``params``, or a ``state`` of another parameter count.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optim.zeroth_order import zo_subspace_init, zo_subspace_step
    >>> f = lambda x: jnp.sum((x - 1.0) ** 2)
    >>> tx = optax.adam(0.1, eps=1e-3)
    >>> @jax.jit
    ... def step(x, state, opt, k):
    ...   out = zo_subspace_step(f, x, state, key=k, num_queries=4)
    ...   updates, opt = tx.update(out.grads, opt)
    ...   return optax.apply_updates(x, updates), out.state, opt
    >>> x = jnp.zeros(4)
    >>> state, opt = zo_subspace_init(x, history_size=8), tx.init(x)
    >>> for k in range(200):
    ...   x, state, opt = step(x, state, opt, k)
    >>> bool(f(x) < 0.05 * f(jnp.zeros(4)))
    True

  References:
    Seo, Jeong, Lee & Chun, "Efficient Personalization of Quantized Diffusion Model
    without Backpropagation", CVPR 2025, arXiv:2503.14868 (Sec. 4.2, Algorithm 1);
    official code github.com/ignoww/ZOODiP (``train_zoodip.py``). Malladi et al., "Fine-Tuning
    Language Models with Just Forward Passes" (MeZO), arXiv:2305.17333.
  """
  where = "zo_subspace_step"
  if not callable(fn):
    raise TypeError(f"{where}: fn must be callable (params -> scalar), got {type(fn).__name__}")
  variant = check_choice("variant", variant, _VARIANTS)
  n = check_scalar("num_queries", num_queries, lo=1, integer=True, static=True)
  check_scalar("mu", mu, lo=0.0, lo_open=True)
  check_scalar("nu", nu, lo=0.0, hi=1.0, hi_open=True)
  key = as_key(key)
  if not isinstance(state, ZOSubspaceState):
    raise TypeError(
      f"{where}: state must be a ZOSubspaceState (from zo_subspace_init), got "
      f"{type(state).__name__}"
    )
  x, unravel = _check_params(params, where)
  d = x.size
  tau = state.history.shape[0]
  if state.history.ndim != 2 or state.history.shape[1] != d:
    raise ValueError(
      f"{where}: state must be built for params with {d} numbers, got a history of shape "
      f"{state.history.shape}"
    )
  dtype = state.history.dtype
  x = x.astype(dtype)
  mu = jnp.asarray(mu, dtype)
  nu = jnp.asarray(nu, dtype)

  count = state.count
  history = state.history
  if variant == "official":  # the previous update's result joins the history
    slot = jnp.mod(count - 1, tau)
    history = jnp.where(count > 0, history.at[slot].set(x), history)
  refresh = (count > 0) & (jnp.mod(count, tau) == 0)
  basis, active = jax.lax.cond(
    refresh,
    lambda h: _refresh(h, nu, variant),
    lambda h: (state.basis, state.active),
    history,
  )

  def value(flat):
    out = fn(unravel(flat.astype(x.dtype)))
    check_output(out, scalar=True, name="fn(params)", where=where, what="loss")
    return jnp.asarray(out, dtype)

  f0 = value(x)
  z = jax.vmap(lambda k: jax.random.normal(k, (d,), dtype))(jax.random.split(key, n))
  fz = jax.lax.map(lambda zi: value(x + mu * zi), z)
  coef = (fz - f0) / mu
  n_active = jnp.sum(active)
  d_eff = d - n_active if variant == "official" else jnp.where(n_active > 0, n_active, d)
  d_eff = jnp.asarray(d_eff, dtype)
  raw = (coef @ z) / (n * jnp.sqrt((d_eff + n - 1) / n))
  g = _project(raw, basis, active, variant)
  if variant == "principal":
    history = history.at[jnp.mod(count, tau)].set(raw)

  valid = jnp.isfinite(f0) & jnp.all(jnp.isfinite(fz))
  g = poison(g, valid)
  new = ZOSubspaceState(count + 1, history, basis, active)
  new = jax.tree.map(lambda a, b: jnp.where(valid, a, b), new, state)
  return ZOSubspaceEstimate(unravel(g.astype(x.dtype)), f0, new, n + 1)
