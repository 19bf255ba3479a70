"""Reflow: (sample, noise) pairs of a trained flow, the coupling a 2-rectified flow learns."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff._validation import check_scalar

Array = jax.Array


def reflow_pairs(denoise, noise, *, cond=None, steps: int = 20, solver=None, key=0) -> Array:
  r"""(sample, noise) pairs of a trained flow: the coupling a 2-rectified flow learns.

  .. math:: z \sim \mathcal N(0, I),\quad x = \mathrm{ODE}_{1 \to 0}[v_\theta](z),\quad
    \text{pairs} = (x, z)

  The next rectified flow is trained on the straight interpolation ``x_t = (1 - t) x + t
  z`` of these pairs (``denoising_loss(..., coupled=True)``). Lee et al. show one round of
  reflow suffices for near-straight paths; they initialise it from the 1-rectified flow.

  Args:
    denoise: the 1-rectified flow as a denoiser (``jaxdiff.from_flow(net, schedules.flow())``).
    noise: ``z`` ``(N, ...)``.
    cond: labels (``None``, a scalar or ``(N,)``).
    steps: solver steps of the flow ``schedules.flow()`` grid from ``t = 1`` to ``0``.
    solver: a jaxdiff solver (default Euler, the flow's own discretisation).
    key: PRNG key (used only by stochastic solvers).

  Returns:
    ``(N, 2, ...)``: ``[:, 0]`` the samples, ``[:, 1]`` the noise.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import schedules, training
    >>> from jaxdiff.testing import GaussianMixture
    >>> gmm = GaussianMixture(jnp.array([[2.0, 0.0]]), 0.1)
    >>> pairs = training.reflow_pairs(gmm.denoiser(schedules.flow()), jnp.zeros((3, 2)), steps=4)
    >>> pairs.shape
    (3, 2, 2)

  References:
    Liu et al., "Flow Straight and Fast", arXiv:2209.03003 (Alg. 1, reflow); Lee, Lin &
    Fanti, "Improving the Training of Rectified Flows", arXiv:2405.20320 (Sec. 3).
  """
  from jaxdiff import _grids, _sampling, _schedules, solvers

  steps = check_scalar("reflow_pairs: steps", steps, lo=1, integer=True, static=True)
  noise = jnp.asarray(noise)
  if not jnp.issubdtype(noise.dtype, jnp.floating) or noise.ndim < 2:
    raise TypeError(f"reflow_pairs: noise must be a floating (N, ...) array, got {noise.dtype}")
  solver = solvers.euler() if solver is None else solver
  ts = _grids.timesteps(_schedules.flow(), steps)
  x = _sampling.sample(denoise, solver, noise, ts, key=key, cond=cond).x
  return jnp.stack([x, noise], axis=1)
