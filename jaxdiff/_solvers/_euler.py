"""Euler and Heun on the probability-flow ODE in the schedule's own time ``t``."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff._grids import Grid
from jaxdiff._solvers._base import Solver, cast, ddim_terms, noise

Array = jax.Array


def _euler_split(g: Grid, i, x0, eps, frac=1.0):
  """``alpha_i x0 + sigma_i eps + frac dt (alpha' x0 + sigma' eps)``: Euler in t, split."""
  dt = frac * (g.t[i + 1] - g.t[i])
  return (g.alpha[i] + dt * g.dalpha[i]) * x0 + (g.sigma[i] + dt * g.dsigma[i]) * eps


@dataclasses.dataclass(frozen=True)
class Euler(Solver):
  r"""Euler's method on the probability-flow ODE in the schedule's own time ``t``.

  .. math::
    \frac{dx}{dt} = \alpha'(t)\,\hat x_0 + \sigma'(t)\,\hat\epsilon,\qquad
    x_{i+1} = (\alpha_i + \Delta t\,\alpha'_i)\hat x_0
      + (\sigma_i + \Delta t\,\sigma'_i)\hat\epsilon .

  For ``flow`` this is the rectified-flow Euler sampler and for ``edm`` Karras' Euler
  step (both coincide with DDIM there); for VP schedules it is the score-SDE
  probability-flow Euler step. A step into ``sigma = 0`` returns ``alpha x0``.

  References:
    Song et al., "Score-Based Generative Modeling through SDEs", arXiv:2011.13456 (eq. 13);
    Karras et al., "Elucidating the Design Space...", arXiv:2206.00364 (Alg. 1).
  """

  def step(self, state, x, i, pred, key, *, stage=0):
    del key, stage
    g = state.grid
    x0, eps, a1, s1 = ddim_terms(g, x, i, pred)
    x_new = jnp.where(s1 == 0, a1 * x0, _euler_split(g, i, x0, eps))
    return cast(x_new, x), state


class HeunState(NamedTuple):
  grid: Grid
  partial: Array  # x_i + dt/2 v_i, waiting for the second stage's velocity


@dataclasses.dataclass(frozen=True)
class Heun(Solver):
  r"""Heun's second-order method (trapezoidal predictor-corrector) in ``t``.

  .. math::
    \tilde x = x_i + \Delta t\, v(x_i, t_i),\qquad
    x_{i+1} = x_i + \tfrac{\Delta t}{2}\big(v(x_i, t_i) + v(\tilde x, t_{i+1})\big),

  with :math:`v = \alpha'\hat x_0 + \sigma'\hat\epsilon`. Two network evaluations per
  step; the second is skipped (Euler step, one evaluation) when ``sigma_{i+1} = 0``,
  as in EDM Algorithm 1.

  References:
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
    arXiv:2206.00364 (Alg. 1).
  """

  order = 2
  stages = 2
  stage_offsets = (0, 1)

  def init(self, x, ts):
    return HeunState(ts, jnp.zeros_like(x))

  def stage_active(self, state, i, stage):
    return state.grid.sigma[i + 1] > 0 if stage == 1 else jnp.asarray(True)

  def step(self, state, x, i, pred, key, *, stage=0):
    del key
    g = state.grid
    if stage == 0:
      x0, eps, a1, s1 = ddim_terms(g, x, i, pred)
      x_euler = jnp.where(s1 == 0, a1 * x0, _euler_split(g, i, x0, eps))
      partial = _euler_split(g, i, x0, eps, frac=0.5)
      return cast(x_euler, x), HeunState(g, cast(partial, x))
    x0 = pred.x0.astype(x.dtype)
    eps1 = noise(x, pred, g.alpha[i + 1], g.sigma[i + 1])
    half_dt = 0.5 * (g.t[i + 1] - g.t[i])
    x_new = state.partial + half_dt * (g.dalpha[i + 1] * x0 + g.dsigma[i + 1] * eps1)
    return cast(x_new, x), state


def euler() -> Euler:
  """Euler on the probability-flow ODE in ``t`` (see :class:`Euler`).

  Example:
    >>> from jaxdiff import solvers
    >>> solvers.euler().order
    1
  """
  return Euler()


def heun() -> Heun:
  """Heun's method, two evaluations per step (see :class:`Heun`).

  Example:
    >>> from jaxdiff import solvers
    >>> solvers.heun().order, solvers.heun().stages
    (2, 2)
  """
  return Heun()
