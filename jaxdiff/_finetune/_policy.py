"""The sampler as a policy: Gaussian log-probabilities of stochastic DDIM/DDPM steps.

Reinforcement learning of a diffusion sampler (DDPO, B²-DiffuRL) treats each stochastic
step ``x_i -> x_{i+1}`` as an action drawn from a Gaussian whose mean depends on the
network; the policy gradient needs the log-density of the recorded action under the
current network. The transition here is the one :func:`jaxdiff.solvers.ddim` (``eta > 0``)
and :func:`jaxdiff.solvers.ddpm` (``eta = 1``) sample from, written in the grid's
``(alpha, sigma, lambda)``, so a recorded trajectory and its log-probabilities agree with
the library's sampler. The clipped policy loss is :func:`optim.losses.ppo_clip_loss`.

Layout: batch first. A trajectory's ``states`` are ``(B, n + 1, *shape)`` (the state
before each of ``n`` steps, then the last state) and its ``log_probs`` ``(B, n)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._grids import Grid
from jaxdiff._parameterization import eps_from_x0
from jaxdiff._validation import (
  as_key,
  check_choice,
  check_output,
  check_scalar,
  is_traced,
  poison,
)

Array = jax.Array

_REDUCTIONS = ("sum", "mean")


class Rollout(NamedTuple):
  """A stochastic trajectory and the log-probability of each step under the sampler.

  Attributes:
    states: ``(B, n + 1, *shape)``: the state before each of the ``n`` steps, then the
      final state (``states[:, -1]`` is the sample).
    log_probs: ``(B, n)``: :math:`\\log p(x_{i+1} \\mid x_i)` of each step (reduced over
      the sample's axes as asked).
  """

  states: Array
  log_probs: Array


def _check_grid(grid, who: str) -> None:
  if not isinstance(grid, Grid):
    raise TypeError(
      f"{who}: grid must be a jaxdiff.schedules.Grid (jaxdiff.timesteps), got {type(grid).__name__}"
    )
  if not is_traced(grid.sigma) and float(np.asarray(grid.sigma)[-1]) <= 0.0:
    raise ValueError(
      f"{who}: grid must end at sigma > 0 (a step into sigma = 0 is deterministic and has "
      "no density); build it with denoise_to_zero=False"
    )


def _check_eta(eta, who: str):
  return check_scalar(f"{who}: eta", eta, lo=0.0, hi=1.0, lo_open=True)


def ddim_transition(grid: Grid, x: Array, i, x0: Array, *, eta: float = 1.0):
  r"""Mean and standard deviation of the stochastic DDIM step from grid point ``i``.

  With :math:`\lambda = \log(\alpha/\sigma)`, :math:`q = 1 - e^{2(\lambda_i -
  \lambda_{i+1})}` and :math:`\hat\epsilon = (x - \alpha_i \hat x_0)/\sigma_i`,

  .. math::
    x_{i+1} \sim \mathcal N\big(\alpha_{i+1}\hat x_0 + \sigma_{i+1}\sqrt{1-\eta^2 q}\,
      \hat\epsilon,\ (\eta\,\sigma_{i+1}\sqrt q)^2 I\big),

  DDIM's Eq. (12) with its :math:`\sigma_t(\eta)` of Eq. (16) (:math:`\eta = 1`: DDPM's
  posterior). ``mean + std * z`` with ``z = jax.random.normal(key, x.shape)`` is exactly
  the step ``jaxdiff.solvers.ddim(eta).step`` takes with ``key``.

  Args:
    grid: the sampler's grid (:func:`jaxdiff.timesteps`).
    x: the state at point ``i``, ``(B, *shape)``.
    i: the step index, ``0 <= i < grid.num_steps`` (may be traced).
    x0: the data prediction at ``x`` (``x``'s shape).
    eta: the noise scale, in ``(0, 1]`` (``eta = 0`` is deterministic: no density).

  Returns:
    ``(mean, std)``: ``mean`` shaped like ``x``, ``std`` a scalar.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff import schedules, timesteps
    >>> from jaxdiff.finetune import ddim_transition
    >>> g = timesteps(schedules.vp_cosine(), 4)
    >>> mean, std = ddim_transition(g, jnp.zeros((1, 2)), 0, jnp.zeros((1, 2)))
    >>> mean.shape, bool(std > 0)
    ((1, 2), True)

  References:
    Song et al., "Denoising Diffusion Implicit Models", arXiv:2010.02502 (Eq. 12, 16);
    Black et al., "Training Diffusion Models with Reinforcement Learning" (DDPO),
    arXiv:2305.13301 (the step as a Gaussian policy).
  """
  eta = _check_eta(eta, "ddim_transition")
  if eta is None:
    raise TypeError("ddim_transition: eta must be a concrete number in (0, 1]")
  x0 = x0.astype(x.dtype)
  eps = eps_from_x0(x, x0, grid.alpha[i], grid.sigma[i])
  a1, s1 = grid.alpha[i + 1], grid.sigma[i + 1]
  q = -jnp.expm1(2.0 * (grid.lam[i] - grid.lam[i + 1]))
  std = eta * s1 * jnp.sqrt(q)
  keep = s1 * jnp.sqrt(jnp.maximum(1.0 - eta**2 * q, 0.0))
  return a1 * x0 + keep * eps, std


def gaussian_log_prob(x: Array, mean: Array, std, *, reduction: str = "sum") -> Array:
  r"""Per-example log-density of ``x`` under :math:`\mathcal N(\text{mean}, \text{std}^2 I)`.

  .. math::
    \log p(x) = \sum_j \Big(-\frac{(x_j-\mu_j)^2}{2 s_j^2} - \log s_j - \tfrac12\log 2\pi\Big)

  over every axis but the first (``reduction="sum"``, the density); ``"mean"`` divides by
  the number of entries, as the official B²-DiffuRL, DDPO and FIND code do (a per-entry
  mean: the gradient is the density's scaled by one over the dimension). ``x`` is the
  sampled action and is not differentiated (``stop_gradient``, as the official code's
  ``prev_sample.detach()``); ``mean`` and ``std`` are.

  Args:
    x: actions, ``(B, *shape)``, floating.
    mean: broadcastable to ``x``'s shape.
    std: positive, broadcastable to ``x``'s shape (a scalar for the sampler's steps).
    reduction: ``"sum"`` or ``"mean"`` over the non-batch axes.

  Returns:
    ``(B,)`` log-probabilities. A concrete ``std <= 0`` raises; a traced one gives NaN.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff.finetune import gaussian_log_prob
    >>> round(float(gaussian_log_prob(jnp.zeros((1, 1)), 0.0, 1.0)[0]), 4)  # -log(2 pi)/2
    -0.9189

  References:
    Hu et al., "Towards Better Alignment: Training Diffusion Models with Reinforcement
    Learning Against Sparse Rewards", arXiv:2503.11240 (official code,
    ``diffusion/ddim_with_logprob.py``).
  """
  reduction = check_choice("gaussian_log_prob: reduction", reduction, _REDUCTIONS)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"gaussian_log_prob: x must be a floating-point array, got dtype {x.dtype}")
  if x.ndim < 1 or x.size == 0:
    raise ValueError(
      f"gaussian_log_prob: x must be a non-empty batch (B, ...), got shape {x.shape}"
    )
  mean, std = jnp.asarray(mean, x.dtype), jnp.asarray(std)
  for name, v in (("mean", mean), ("std", std)):
    try:
      shape = jnp.broadcast_shapes(v.shape, x.shape)
    except ValueError:
      shape = None
    if shape != x.shape:
      raise ValueError(
        f"gaussian_log_prob: {name} of shape {v.shape} does not broadcast to x's shape {x.shape}"
      )
  if not is_traced(std):
    bad = ~(std > 0)
    if bool(jnp.any(bad)):
      raise ValueError(f"gaussian_log_prob: std must be positive, got {float(std[bad].ravel()[0])}")
  std = std.astype(x.dtype)
  valid = jnp.all(std > 0)
  z = (jax.lax.stop_gradient(x) - mean) / std
  per = -0.5 * z**2 - jnp.log(jnp.abs(std)) - 0.5 * math.log(2.0 * math.pi)
  per = jnp.broadcast_to(per, x.shape).reshape(x.shape[0], -1)
  out = jnp.sum(per, axis=1) if reduction == "sum" else jnp.mean(per, axis=1)
  return poison(out, valid)


def _denoise_fn(denoise, who):
  if not callable(denoise):
    raise TypeError(
      f"{who}: denoise must be callable denoise(x, t, cond), got {type(denoise).__name__}"
    )

  def call(x, t, cond):
    tb = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    return check_output(denoise(x, tb, cond), like=x, name="denoise(x, t, cond)").astype(x.dtype)

  return call


def _check_x(x, who, name="x_T"):
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{who}: {name} must be a floating-point array, got dtype {x.dtype}")
  if x.ndim < 2 or x.size == 0:
    raise ValueError(f"{who}: {name} must be a non-empty batch (B, *shape), got shape {x.shape}")
  return x


def _check_range(grid, start, stop, who):
  n = grid.num_steps
  start = check_scalar(f"{who}: start", start, lo=0, hi=n - 1, integer=True, static=True)
  stop = n if stop is None else stop
  stop = check_scalar(f"{who}: stop", stop, lo=start + 1, hi=n, integer=True, static=True)
  return int(start), int(stop)


def stochastic_rollout(
  denoise,
  grid: Grid,
  x: Array,
  *,
  key,
  eta: float = 1.0,
  cond=None,
  start: int = 0,
  stop: int | None = None,
  reduction: str = "sum",
) -> Rollout:
  r"""Runs the stochastic DDIM sampler and records every state and step log-probability.

  From ``x`` at grid point ``start`` to point ``stop`` (default: the end), each step
  draws :math:`x_{i+1} = \mu_i + s_i z_i` with :math:`(\mu_i, s_i)` of
  :func:`ddim_transition` and records :math:`\log\mathcal N(x_{i+1}; \mu_i, s_i^2)`
  (:func:`gaussian_log_prob`): the behaviour policy's log-probabilities, the
  ``old_log_probs`` of a clipped policy loss. Step ``i`` uses ``jax.random.fold_in(key,
  i)``, so a continuation from ``start`` with the same key draws what a full run would.

  Args:
    denoise: ``denoise(x, t, cond) -> x0`` with ``t`` of shape ``(B,)``.
    grid: the sampler's grid; it must end at ``sigma > 0``.
    x: the state at point ``start``, ``(B, *shape)`` (``x_T`` for ``start = 0``).
    key: PRNG key (typed, raw or int seed).
    eta: the noise scale in ``(0, 1]`` (1 = DDPM).
    cond: passed to ``denoise``.
    start, stop: the grid points the run starts and stops at, ``0 <= start < stop <= N``.
    reduction: ``"sum"`` (the density) or ``"mean"`` (the official codes' per-entry mean).

  Returns:
    A :class:`Rollout` with ``states (B, stop - start + 1, *shape)`` and ``log_probs (B,
    stop - start)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import schedules, timesteps
    >>> from jaxdiff.finetune import stochastic_rollout
    >>> g = timesteps(schedules.vp_cosine(), 5)
    >>> r = stochastic_rollout(lambda x, t, c: 0.5 * x, g, jnp.ones((3, 2)), key=0)
    >>> r.states.shape, r.log_probs.shape
    ((3, 6, 2), (3, 5))

  References:
    Black et al., "Training Diffusion Models with Reinforcement Learning" (DDPO),
    arXiv:2305.13301 (Sec. 4.2, the denoising MDP); Song et al., arXiv:2010.02502.
  """
  who = "stochastic_rollout"
  _check_grid(grid, who)
  call = _denoise_fn(denoise, who)
  x = _check_x(x, who, "x")
  eta = _check_eta(eta, who)
  if eta is None:
    raise TypeError(f"{who}: eta must be a concrete number in (0, 1]")
  reduction = check_choice(f"{who}: reduction", reduction, _REDUCTIONS)
  start, stop = _check_range(grid, start, stop, who)
  key = as_key(key)

  def body(x, i):
    mean, std = ddim_transition(grid, x, i, call(x, grid.t[i], cond), eta=eta)
    z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
    nxt = (mean + std * z).astype(x.dtype)
    return nxt, (nxt, gaussian_log_prob(nxt, mean, std, reduction=reduction))

  _, (xs, lps) = jax.lax.scan(body, x, jnp.arange(start, stop))
  states = jnp.concatenate([x[None], xs], axis=0)
  return Rollout(jnp.moveaxis(states, 0, 1), jnp.moveaxis(lps, 0, 1))


def trajectory_log_probs(
  denoise,
  grid: Grid,
  states: Array,
  *,
  eta: float = 1.0,
  cond=None,
  start: int = 0,
  reduction: str = "sum",
) -> Array:
  r"""Log-probabilities of recorded steps under a (new) denoiser: the policy's
  :math:`\log\pi_\theta(x_{i+1}\mid x_i)`.

  For recorded ``states[:, k]`` at grid point ``start + k``, evaluates
  :math:`\log\mathcal N(x_{i+1}; \mu_\theta(x_i, i), s_i^2)` (:func:`ddim_transition`)
  for every recorded step; differentiable in the parameters ``denoise`` closes over (the
  states are not differentiated). With the sampler's own denoiser this reproduces
  :func:`stochastic_rollout`'s ``log_probs``.

  Args:
    denoise: ``denoise(x, t, cond) -> x0``.
    grid: the sampler's grid.
    states: ``(B, n + 1, *shape)`` recorded states from grid point ``start``.
    eta, cond, reduction: as in :func:`stochastic_rollout`.
    start: the grid point of ``states[:, 0]``.

  Returns:
    ``(B, n)`` log-probabilities.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import schedules, timesteps
    >>> from jaxdiff.finetune import stochastic_rollout, trajectory_log_probs
    >>> g = timesteps(schedules.vp_cosine(), 5)
    >>> f = lambda x, t, c: 0.5 * x
    >>> r = stochastic_rollout(f, g, jnp.ones((3, 2)), key=0)
    >>> bool(jnp.allclose(trajectory_log_probs(f, g, r.states), r.log_probs))
    True

  References:
    Black et al., arXiv:2305.13301 (DDPO, Eq. 4); Hu et al., arXiv:2503.11240 (the
    official ``run_train.py`` recomputes them with ``prev_sample`` given).
  """
  who = "trajectory_log_probs"
  _check_grid(grid, who)
  call = _denoise_fn(denoise, who)
  states = _check_x(states, who, "states")
  if states.ndim < 3 or states.shape[1] < 2:
    raise ValueError(
      f"{who}: states must be (B, n + 1, *shape) with n >= 1 recorded steps, got shape "
      f"{states.shape}"
    )
  eta = _check_eta(eta, who)
  if eta is None:
    raise TypeError(f"{who}: eta must be a concrete number in (0, 1]")
  reduction = check_choice(f"{who}: reduction", reduction, _REDUCTIONS)
  n = states.shape[1] - 1
  check_scalar(f"{who}: start", start, lo=0, hi=grid.num_steps - n, integer=True, static=True)
  states = jax.lax.stop_gradient(states)

  def body(_, k):
    x, nxt = states[:, k], states[:, k + 1]
    i = start + k
    mean, std = ddim_transition(grid, x, i, call(x, grid.t[i], cond), eta=eta)
    return None, gaussian_log_prob(nxt, mean, std, reduction=reduction)

  _, lps = jax.lax.scan(body, None, jnp.arange(n))
  return jnp.moveaxis(lps, 0, 1)
