"""The solver interface and the numerics every solver family shares.

A solver is a frozen dataclass (hashable by value, so building it twice does not
retrace :func:`jaxdiff.sample`) with

* ``init(x, ts) -> state``: ``ts`` is a :class:`~jaxdiff.schedules.Grid`; the state holds
  the grid and any multistep history;
* ``step(state, x, i, pred, key, *, stage=0) -> (x, state)``: one update from grid point
  ``i`` to ``i + 1`` given the :class:`~jaxdiff.Prediction` made at ``x``;
* ``order``: the order the method is built with (the ``order`` argument of its factory
  where it has one, e.g. ``unipc(order=3).order == 3``);
* ``convergence_order``: the declared global order of accuracy on the probability-flow
  ODE, which the empirical-order test measures (UniPC's corrector raises it to
  ``order + 1``; an SDE solver declares its strong order);
* ``stages`` (network evaluations per step), ``stage_offsets`` (grid point of each
  stage's evaluation relative to ``i``), ``stage_active(state, i, stage)`` (whether a
  stage > 0 runs; a skipped stage costs no evaluation) and ``stochastic``.

Hyperparameters are validated in ``__post_init__``, so ``DDIM(eta=5)`` and ``ddim(eta=5)``
fail alike; every ``bool`` field is checked here, numeric fields by the subclass.

Every update is written as a combination of the data prediction ``x0 = pred.x0`` and the
noise direction ``eps = (x - alpha_i pred.x0_renoise) / sigma_i`` (CFG++ denoises with
the guided and re-noises with the unconditional prediction; for all other rules the two
agree and the updates are the textbook ones), computed by
:func:`jaxdiff.parameterization.eps_from_x0`. The first-order update is DDIM,
``x_{i+1} = alpha_{i+1} x0 + sigma_{i+1} eps``; multistep methods add corrections built
from the history of ``x0``. ``sigma_i > 0`` at every point a step starts from (the grid
checks it); a step *into* ``sigma = 0`` is first order and returns ``alpha_{i+1} x0``
exactly.

Adding a solver: one module in this package (a ``Solver`` subclass and its factory), its
re-export in ``__init__.py`` and one line in :data:`jaxdiff.solvers.REGISTRY`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff._grids import Grid
from jaxdiff._parameterization import eps_from_x0
from jaxdiff._types import Prediction
from jaxdiff._validation import check_flag

Array = jax.Array

_LOWER_ORDER_FINAL_BELOW = 15  # diffusers' DPMSolverMultistepScheduler rule


# --------------------------------------------------------------------------------------
# numerics


def phi(k: int, z: Array) -> Array:
  r"""The exponential-integrator function :math:`\varphi_k(z) = \sum_{n\ge0} z^n/(n+k)!`.

  ``phi_0 = exp``, ``phi_{k+1}(z) = (phi_k(z) - 1/k!) / z``; the recursion cancels
  catastrophically for small ``|z|``, where a 10-term Taylor series is used instead.

  Example:
    >>> from jaxdiff import solvers
    >>> round(float(solvers.phi(1, 1e-3)), 6)  # (e^z - 1) / z
    1.0005

  References:
    Hochbruck & Ostermann, "Exponential integrators", Acta Numerica 2010 (eq. 2.10);
    Lu et al., "DPM-Solver", arXiv:2206.00927 (eq. 3.6).
  """
  z = jnp.asarray(z)
  if k == 0:
    return jnp.exp(z)
  small = jnp.abs(z) < 0.1
  zs = jnp.where(small, 1.0, z)  # keep the unselected branch finite (and its gradient)
  direct = jnp.expm1(zs) / zs
  for j in range(2, k + 1):
    direct = (direct - 1.0 / math.factorial(j - 1)) / zs
  series = sum(z**n / float(math.factorial(n + k)) for n in range(10))
  return jnp.where(small, series, direct)


def noise(x: Array, pred: Prediction, alpha, sigma) -> Array:
  """The noise direction of ``x`` re-noised with ``pred.x0_renoise`` (x's dtype)."""
  return eps_from_x0(x, pred.x0_renoise.astype(x.dtype), alpha, sigma)


def ddim_terms(grid: Grid, x: Array, i, pred: Prediction):
  """What every step from point ``i`` starts from: ``(x0, eps, alpha_{i+1}, sigma_{i+1})``.

  ``x0`` and ``eps`` are in ``x``'s dtype; the DDIM update is ``alpha_{i+1} x0 +
  sigma_{i+1} eps``.
  """
  eps = noise(x, pred, grid.alpha[i], grid.sigma[i])
  return pred.x0.astype(x.dtype), eps, grid.alpha[i + 1], grid.sigma[i + 1]


def cast(x_new: Array, x: Array) -> Array:
  return x_new.astype(x.dtype)


def switch(index, branches, like):
  """``lax.switch`` whose branches all return ``like``'s dtype (bf16 states stay bf16)."""
  wrap = lambda f: lambda op: f(op).astype(like.dtype)
  return jax.lax.switch(index, [wrap(f) for f in branches], None)


def push(hist: Array, x0: Array) -> Array:
  """Prepends ``x0`` to a history buffer (newest first), dropping the oldest."""
  return jnp.concatenate([x0[None].astype(hist.dtype), hist[:-1]], axis=0)


def multistep_order(order: int, i, n: int, sigma_next, lower_order_final: bool):
  """Order used at step ``i``: warm-up ``min(order, i + 1)``, lower-order final steps."""
  o = jnp.minimum(order, i + 1)
  if lower_order_final and n < _LOWER_ORDER_FINAL_BELOW:
    o = jnp.minimum(o, n - i)
  return jnp.where(sigma_next == 0, 1, o).astype(jnp.int32)


def set_field(obj, name: str, value) -> None:
  """Stores a validated value on a frozen dataclass (from ``__post_init__``)."""
  object.__setattr__(obj, name, value)


# --------------------------------------------------------------------------------------
# base


class SolverState(NamedTuple):
  """State of the single-step solvers: the grid (and nothing else)."""

  grid: Grid


class MultistepState(NamedTuple):
  grid: Grid
  hist: Array  # (k, *x.shape) previous data predictions, newest first


@dataclasses.dataclass(frozen=True)
class Solver:
  """Base class; see the module docstring for the interface."""

  order = 1
  stages = 1
  stage_offsets = (0,)
  stochastic = False

  def __post_init__(self):
    for f in dataclasses.fields(self):
      if f.type in ("bool", bool):
        set_field(self, f.name, check_flag(f.name, getattr(self, f.name)))

  @property
  def convergence_order(self) -> int:
    """Declared global order of accuracy (see the module docstring); ``order`` by default."""
    return self.order

  def init(self, x: Array, ts: Grid) -> Any:
    del x
    return SolverState(ts)

  def step(self, state, x, i, pred: Prediction, key, *, stage: int = 0):  # pragma: no cover
    raise NotImplementedError

  def stage_active(self, state, i, stage: int) -> Array:
    del state, i, stage
    return jnp.asarray(True)

  def check_grid(self, grid: Grid) -> None:
    """Raises ``ValueError`` if this solver cannot run on a (concrete) grid."""
    del grid

  @property
  def name(self) -> str:
    return type(self).__name__.lower()
