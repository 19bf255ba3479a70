"""Diffusion ODE/SDE solver steps written on (alpha, sigma), shared by VP, VE and flow.

A solver is a frozen dataclass (hashable by value, so building it twice does not
retrace :func:`jaxdiff.sample`) with

* ``init(x, ts) -> state``: ``ts`` is a :class:`~jaxdiff.schedules.Grid`; the state holds
  the grid and any multistep history;
* ``step(state, x, i, pred, key, *, stage=0) -> (x, state)``: one update from grid point
  ``i`` to ``i + 1`` given the :class:`~jaxdiff.Prediction` made at ``x``;
* ``order`` (declared convergence order), ``stages`` (network evaluations per step),
  ``stage_offsets`` (grid point of each stage's evaluation relative to ``i``),
  ``stage_active(state, i, stage)`` (whether a stage > 0 runs; a skipped stage costs no
  evaluation) and ``stochastic``.

Every update is written as a combination of the data prediction ``x0 = pred.x0`` and the
noise direction ``eps = (x - alpha_i pred.x0_renoise) / sigma_i`` (CFG++ denoises with
the guided and re-noises with the unconditional prediction; for all other rules the two
agree and the updates are the textbook ones). The first-order update is DDIM,
``x_{i+1} = alpha_{i+1} x0 + sigma_{i+1} eps``; multistep methods add corrections built
from the history of ``x0``. ``sigma_i > 0`` at every point a step starts from (the grid
checks it), so ``eps`` never divides by zero; a step *into* ``sigma = 0`` is first order
and returns ``alpha_{i+1} x0`` exactly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff._schedules import Grid
from jaxdiff._types import Prediction

Array = jax.Array

_LOWER_ORDER_FINAL_BELOW = 15  # diffusers' DPMSolverMultistepScheduler rule


# --------------------------------------------------------------------------------------
# numerics


def phi(k: int, z: Array) -> Array:
  r"""The exponential-integrator function :math:`\varphi_k(z) = \sum_{n\ge0} z^n/(n+k)!`.

  ``phi_0 = exp``, ``phi_{k+1}(z) = (phi_k(z) - 1/k!) / z``; the recursion cancels
  catastrophically for small ``|z|``, where a 10-term Taylor series is used instead.
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


def _at(grid: Grid, i):
  return (grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1])


def _eps(x, a, s, x0r):
  return (x - a * x0r) / s


def _cast(x_new, x):
  return x_new.astype(x.dtype)


def _switch(index, branches, like):
  """``lax.switch`` whose branches all return ``like``'s dtype (bf16 states stay bf16)."""
  wrap = lambda f: lambda op: f(op).astype(like.dtype)
  return jax.lax.switch(index, [wrap(f) for f in branches], None)


def _push(hist: Array, x0: Array) -> Array:
  """Prepends ``x0`` to a history buffer (newest first), dropping the oldest."""
  return jnp.concatenate([x0[None].astype(hist.dtype), hist[:-1]], axis=0)


def _multistep_order(order: int, i, n: int, sigma_next, lower_order_final: bool):
  """Order used at step ``i``: warm-up ``min(order, i + 1)``, lower-order final steps."""
  o = jnp.minimum(order, i + 1)
  if lower_order_final and n < _LOWER_ORDER_FINAL_BELOW:
    o = jnp.minimum(o, n - i)
  return jnp.where(sigma_next == 0, 1, o).astype(jnp.int32)


# --------------------------------------------------------------------------------------
# base


class SolverState(NamedTuple):
  """State of the single-step solvers: the grid (and nothing else)."""

  grid: Grid


@dataclasses.dataclass(frozen=True)
class Solver:
  """Base class; see the module docstring for the interface."""

  order = 1
  stages = 1
  stage_offsets = (0,)
  stochastic = False

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


# --------------------------------------------------------------------------------------
# single-step solvers


@dataclasses.dataclass(frozen=True)
class DDIM(Solver):
  r"""DDIM, deterministic (eta = 0) or with its ancestral noise (eta > 0).

  .. math::
    c = \eta\,\sigma_{i+1}\sqrt{1 - e^{2(\lambda_i - \lambda_{i+1})}},\quad
    x_{i+1} = \alpha_{i+1}\hat x_0 + \sqrt{\sigma_{i+1}^2 - c^2}\,\hat\epsilon + c\,z,

  with :math:`\lambda = \log(\alpha/\sigma)`; eta = 1 is DDPM's posterior sampling.
  The deterministic update is the exact solution of the probability-flow ODE for a
  constant data prediction (DPM-Solver-1), first order.

  References:
    Song et al., "Denoising Diffusion Implicit Models", arXiv:2010.02502 (eq. 12, 16);
    Lu et al., "DPM-Solver++", arXiv:2211.01095 (eq. 9).
  """

  eta: float = 0.0

  @property
  def stochastic(self):
    return self.eta > 0

  def step(self, state, x, i, pred, key, *, stage=0):
    del stage
    g = state.grid
    a, s, a1, s1 = _at(g, i)
    x0 = pred.x0.astype(x.dtype)
    eps = _eps(x, a, s, pred.x0_renoise.astype(x.dtype))
    if self.eta == 0:
      return _cast(a1 * x0 + s1 * eps, x), state
    q = -jnp.expm1(2.0 * (g.lam[i] - g.lam[i + 1]))  # 1 - SNR_i / SNR_{i+1}, in [0, 1]
    c = self.eta * s1 * jnp.sqrt(q)
    keep = s1 * jnp.sqrt(jnp.maximum(1.0 - self.eta**2 * q, 0.0))
    z = jax.random.normal(key, x.shape, x.dtype)
    return _cast(a1 * x0 + keep * eps + c * z, x), state


@dataclasses.dataclass(frozen=True)
class DDPM(Solver):
  r"""Ancestral sampling from the exact Gaussian posterior ``q(x_{i+1} | x_i, x0)``.

  In (alpha, sigma) form (VDM, App. A): with :math:`r = e^{\lambda_i - \lambda_{i+1}}`,

  .. math::
    \mu = \alpha_{i+1}\hat x_0 + r\,\sigma_{i+1}\hat\epsilon,\qquad
    \mathrm{Var} = \sigma_{i+1}^2 (1 - r^2),

  the DDPM "fixed small" variance. It equals DDIM with eta = 1 (Song et al., Sec. 4.1).

  References:
    Ho et al., "Denoising Diffusion Probabilistic Models", arXiv:2006.11239 (eq. 6-7);
    Kingma et al., "Variational Diffusion Models", arXiv:2107.00630 (eq. 30-32).
  """

  stochastic = True

  def step(self, state, x, i, pred, key, *, stage=0):
    del stage
    g = state.grid
    a, s, a1, s1 = _at(g, i)
    eps = _eps(x, a, s, pred.x0_renoise.astype(x.dtype))
    d = g.lam[i] - g.lam[i + 1]
    mean = a1 * pred.x0.astype(x.dtype) + jnp.exp(d) * s1 * eps
    std = s1 * jnp.sqrt(-jnp.expm1(2.0 * d))
    return _cast(mean + std * jax.random.normal(key, x.shape, x.dtype), x), state


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
    a, s, a1, s1 = _at(g, i)
    x0 = pred.x0.astype(x.dtype)
    eps = _eps(x, a, s, pred.x0_renoise.astype(x.dtype))
    x_new = jnp.where(s1 == 0, a1 * x0, _euler_split(g, i, x0, eps))
    return _cast(x_new, x), state


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
    x0 = pred.x0.astype(x.dtype)
    x0r = pred.x0_renoise.astype(x.dtype)
    if stage == 0:
      a, s, a1, s1 = _at(g, i)
      eps = _eps(x, a, s, x0r)
      x_euler = jnp.where(s1 == 0, a1 * x0, _euler_split(g, i, x0, eps))
      partial = _euler_split(g, i, x0, eps, frac=0.5)
      return _cast(x_euler, x), HeunState(g, _cast(partial, x))
    a1, s1 = g.alpha[i + 1], g.sigma[i + 1]
    eps1 = _eps(x, a1, s1, x0r)
    half_dt = 0.5 * (g.t[i + 1] - g.t[i])
    x_new = state.partial + half_dt * (g.dalpha[i + 1] * x0 + g.dsigma[i + 1] * eps1)
    return _cast(x_new, x), state


# --------------------------------------------------------------------------------------
# multistep solvers (DPM-Solver++, UniPC)


class MultistepState(NamedTuple):
  grid: Grid
  hist: Array  # (k, *x.shape) previous data predictions, newest first


@dataclasses.dataclass(frozen=True)
class _DPMSolverPP(Solver):
  lower_order_final: bool = True
  diffusers_compat: bool = False  # 3M only: diffusers' (second-order) D2 weight
  solver_order = 2

  @property
  def order(self):
    return self.solver_order

  def init(self, x, ts):
    return MultistepState(ts, jnp.zeros((self.solver_order - 1,) + x.shape, x.dtype))

  def step(self, state, x, i, pred, key, *, stage=0):
    del stage
    g = state.grid
    a, s, a1, s1 = _at(g, i)
    x0 = pred.x0.astype(x.dtype)
    eps = _eps(x, a, s, pred.x0_renoise.astype(x.dtype))
    h = g.lam[i + 1] - g.lam[i]
    order = _multistep_order(self.solver_order, i, g.num_steps, s1, self.lower_order_final)
    hist = state.hist
    base = a1 * x0 + s1 * eps  # DPM-Solver++(1) = DDIM

    def first(_):
      return base

    def second(_):
      # Lu et al. 2022b, Alg. 2: D = x0 + (x0 - x0_prev) / (2 r), r = h_{i-1} / h_i.
      r0 = (g.lam[i] - g.lam[i - 1]) / h
      return base + (a1 * h * phi(1, -h) / (2.0 * r0)) * (x0 - hist[0])

    def third(_):
      # Divided differences in lambda: d1 ~ h x0', d2 ~ h^2 x0'' / 2 (variable steps).
      r0 = (g.lam[i] - g.lam[i - 1]) / h
      r1 = (g.lam[i - 1] - g.lam[i - 2]) / h
      d1_0 = (x0 - hist[0]) / r0
      d1_1 = (hist[0] - hist[1]) / r1
      d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
      d2 = (d1_0 - d1_1) / (r0 + r1)
      # The exact integral has alpha h^3 phi_3(-h) x0'' = 2 alpha h phi_3(-h) d2. The
      # official DPM-Solver code and diffusers use phi_3 * d2 (half of it), which leaves an
      # O(h^3) local error (global order 2); the factor 2 restores order 3 (see tests).
      w2 = 1.0 if self.diffusers_compat else 2.0
      return base + (a1 * h * phi(2, -h)) * d1 + (w2 * a1 * h * phi(3, -h)) * d2

    branches = [first, second, third][: self.solver_order]
    x_new = _switch(order - 1, branches, x)
    return _cast(x_new, x), MultistepState(g, _push(hist, x0))


@dataclasses.dataclass(frozen=True)
class DPMSolverPP2M(_DPMSolverPP):
  r"""DPM-Solver++(2M): second-order multistep exponential integrator on ``x0``.

  .. math::
    h_i = \lambda_{i+1} - \lambda_i,\ r_i = h_{i-1}/h_i,\quad
    D_i = \hat x_0^{(i)} + \tfrac{1}{2r_i}(\hat x_0^{(i)} - \hat x_0^{(i-1)}),\quad
    x_{i+1} = \tfrac{\sigma_{i+1}}{\sigma_i} x_i - \alpha_{i+1}(e^{-h_i} - 1) D_i .

  The first step is first order; with ``lower_order_final`` the last step is first
  order when the grid has fewer than 15 steps (diffusers' default), and a step into
  ``sigma = 0`` always is.

  References:
    Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
    Models", arXiv:2211.01095 (Alg. 2).
  """

  solver_order = 2


@dataclasses.dataclass(frozen=True)
class DPMSolverPP3M(_DPMSolverPP):
  r"""DPM-Solver++(3M): third-order multistep exponential integrator on ``x0``.

  .. math::
    x_{i+1} = \tfrac{\sigma_{i+1}}{\sigma_i}x_i + \alpha_{i+1}h\varphi_1(-h)D_0
      + \alpha_{i+1}h\varphi_2(-h)D_1 + 2\alpha_{i+1}h\varphi_3(-h)D_2,

  with :math:`D_1 \approx h\hat x_0'`, :math:`D_2 \approx h^2\hat x_0''/2` the divided
  differences (in ``lambda``) of the last three data predictions, so that the update
  matches the Taylor expansion :math:`\sum_k \alpha h^{k+1}\varphi_{k+1}(-h)\hat x_0^{(k)}`
  of the exact exponential integral (Lu et al. 2022a, eq. 3.6) through ``k = 2``.
  Note: the official DPM-Solver code and diffusers weight ``D_2`` by
  :math:`h\varphi_3(-h)` (half), which is globally second order only; the empirical
  order test (``tests/jaxdiff/test_solvers.py``) measures 3 for this update;
  ``dpmpp_3m(diffusers_compat=True)`` reproduces diffusers' update. Warm-up steps use
  orders 1 and 2.

  References:
    Lu et al., "DPM-Solver++", arXiv:2211.01095 (Sec. 4, App. B);
    Lu et al., "DPM-Solver", arXiv:2206.00927 (eq. 3.6, multistep variant).
  """

  solver_order = 3


class SDEState(NamedTuple):
  grid: Grid
  hist: Array


@dataclasses.dataclass(frozen=True)
class DPMSolverPP2MSDE(Solver):
  r"""SDE-DPM-Solver++(2M): the second-order multistep solver of the diffusion SDE.

  .. math::
    x_{i+1} = \tfrac{\sigma_{i+1}}{\sigma_i}e^{-h}x_i + \alpha_{i+1}(1 - e^{-2h})
      \big(\hat x_0^{(i)} + \tfrac{1}{2}D_1\big) + \sigma_{i+1}\sqrt{1 - e^{-2h}}\,z,\quad
    D_1 = \tfrac{1}{r_i}(\hat x_0^{(i)} - \hat x_0^{(i-1)}) .

  References:
    Lu et al., "DPM-Solver++", arXiv:2211.01095 (eq. 18 and App. B, "SDE-DPM-Solver++(2M)").
  """

  lower_order_final: bool = True
  order = 1  # strong order of an SDE solver; the 2M correction improves the drift
  stochastic = True

  def init(self, x, ts):
    return SDEState(ts, jnp.zeros((1,) + x.shape, x.dtype))

  def step(self, state, x, i, pred, key, *, stage=0):
    del stage
    g = state.grid
    a, s, a1, s1 = _at(g, i)
    x0 = pred.x0.astype(x.dtype)
    eps = _eps(x, a, s, pred.x0_renoise.astype(x.dtype))
    h = g.lam[i + 1] - g.lam[i]
    order = _multistep_order(2, i, g.num_steps, s1, self.lower_order_final)
    one_m_e2h = -jnp.expm1(-2.0 * h)
    z = jax.random.normal(key, x.shape, x.dtype)
    # sigma_{i+1}/sigma_i e^{-h} x_i + alpha_{i+1}(1 - e^{-2h}) x0, split as for DDIM.
    base = a1 * x0 + s1 * jnp.exp(-h) * eps + s1 * jnp.sqrt(one_m_e2h) * z
    r0 = (g.lam[i] - g.lam[i - 1]) / h
    corr = jnp.where(order == 2, 0.5 * a1 * one_m_e2h / r0, 0.0)
    x_new = base + corr * (x0 - state.hist[0])
    return _cast(x_new, x), SDEState(g, _push(state.hist, x0))


class UniPCState(NamedTuple):
  grid: Grid
  hist: Array  # (order, *x.shape) data predictions at points i-1, i-2, ..., newest first
  base: Array  # the DDIM part of the last predictor step (shared with the corrector)
  last_order: Array  # int32 order of the last predictor step (0 before the first step)


def _solve_small(big_r, b):
  """Solves a 2x2 or 3x3 system by Cramer's rule on scalars (no LAPACK call in the loop)."""
  n = b.shape[0]
  if n == 1:
    return [b[0] / big_r[0, 0]]
  if n == 2:
    det = big_r[0, 0] * big_r[1, 1] - big_r[0, 1] * big_r[1, 0]
    return [
      (b[0] * big_r[1, 1] - big_r[0, 1] * b[1]) / det,
      (big_r[0, 0] * b[1] - b[0] * big_r[1, 0]) / det,
    ]
  det3 = lambda m: (
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
    - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
    + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
  )
  rows = [[big_r[r, c] for c in range(3)] for r in range(3)]
  det = det3(rows)
  out = []
  for c in range(3):
    m = [[b[r] if cc == c else rows[r][cc] for cc in range(3)] for r in range(3)]
    out.append(det3(m) / det)
  return out


def _unipc_rb(order: int, rks: list, h):
  """``R`` (rows ``rks**k``) and ``b_k = k! phi_{k+1}(-h) / phi_1(-h)`` for B(h) = e^{-h} - 1.

  UniPC's bh2 variant (Zhao et al., eq. 8 and App. C with B(h) = e^h - 1 in the paper's
  data-prediction sign convention); the same quantities as diffusers' ``h_phi_k``
  recursion, written through :func:`phi` to avoid its cancellation for small h.
  """
  rks = jnp.stack(rks)
  big_r = jnp.stack([rks**k for k in range(order)])
  b = jnp.stack([math.factorial(k) * phi(k + 1, -h) / phi(1, -h) for k in range(1, order + 1)])
  return big_r, b


@dataclasses.dataclass(frozen=True)
class UniPC(Solver):
  r"""UniPC (bh2): multistep predictor UniP-p with the free corrector UniC.

  With :math:`h = \lambda_{i+1} - \lambda_i`, :math:`B(h) = e^{-h} - 1`,
  :math:`r_k = (\lambda_{i-k} - \lambda_i)/h` and
  :math:`D_k = (\hat x_0^{(i-k)} - \hat x_0^{(i)})/r_k`,

  .. math::
    x_{i+1} = \tfrac{\sigma_{i+1}}{\sigma_i}x_i - \alpha_{i+1}(e^{-h}-1)\hat x_0^{(i)}
      - \alpha_{i+1}B(h)\textstyle\sum_{k=1}^{p-1}\rho_k D_k,
    \qquad R_p(h)\rho = \varphi_p(h)/B(h)

  (order 2 uses :math:`\rho = 1/2`). UniC re-does the previous step once the network has
  been evaluated at the new point, adding :math:`\rho_p (\hat x_0^{(i+1)} - \hat x_0^{(i)})`
  with the full ``p x p`` system: it costs no extra evaluation and raises the order to
  ``p + 1``. The last step is not corrected (no evaluation follows it).

  References:
    Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
    Diffusion Models", arXiv:2302.04867 (Alg. 2-3, eq. 8, App. C; bh2 = "B(h) = e^h - 1").
  """

  solver_order: int = 2
  corrector: bool = True
  lower_order_final: bool = True

  def __post_init__(self):
    if self.solver_order not in (1, 2, 3):
      raise ValueError(f"unipc supports order 1, 2 or 3, got {self.solver_order}")

  @property
  def order(self):
    return self.solver_order + (1 if self.corrector else 0)

  def init(self, x, ts):
    hist = jnp.zeros((self.solver_order,) + x.shape, x.dtype)
    return UniPCState(ts, hist, jnp.zeros_like(x), jnp.zeros((), jnp.int32))

  def _divided(self, g, hist_at, i, h, k):
    """r_k and D_k relative to grid point ``i`` (``hist_at(k)`` = x0 at ``i - k``)."""
    rk = (g.lam[i - k] - g.lam[i]) / h
    return rk, (hist_at(k) - hist_at(0)) / rk

  def step(self, state, x, i, pred, key, *, stage=0):
    del key, stage
    g = state.grid
    p = self.solver_order
    x0 = pred.x0.astype(x.dtype)
    hist = state.hist

    # ---- UniC: correct x_i with the evaluation just made at the predicted x_i.
    if self.corrector:
      h_c = g.lam[i] - g.lam[i - 1]
      a_i = g.alpha[i]

      def corrected(order_c):
        def run(_):
          # Relative to point i-1: m0 = x0_{i-1} = hist[0], older x0_{i-1-k} = hist[k].
          at = lambda k: hist[k]
          rks, d1s = [], []
          for k in range(1, order_c):
            rk, dk = self._divided(g, at, i - 1, h_c, k)
            rks.append(rk)
            d1s.append(dk)
          rks.append(jnp.ones_like(h_c))
          if order_c == 1:
            rhos = [jnp.asarray(0.5, h_c.dtype)]
          else:
            big_r, b = _unipc_rb(order_c, rks, h_c)
            rhos = _solve_small(big_r, b)
          res = sum((rho * dk for rho, dk in zip(rhos[:-1], d1s)), jnp.zeros_like(x))
          res = res + rhos[-1] * (x0 - hist[0])
          return state.base - a_i * jnp.expm1(-h_c) * res

        return run

      branches = [lambda _: x] + [corrected(o) for o in range(1, p + 1)]
      x = _switch(state.last_order, branches, x)

    # ---- UniP-p from the (corrected) x_i.
    a, s, a1, s1 = _at(g, i)
    eps = _eps(x, a, s, pred.x0_renoise.astype(x.dtype))
    base = a1 * x0 + s1 * eps
    h = g.lam[i + 1] - g.lam[i]
    order = _multistep_order(p, i, g.num_steps, s1, self.lower_order_final)
    at = lambda k: x0 if k == 0 else hist[k - 1]

    def predicted(order_p):
      def run(_):
        if order_p == 1:
          return base
        rks, d1s = [], []
        for k in range(1, order_p):
          rk, dk = self._divided(g, at, i, h, k)
          rks.append(rk)
          d1s.append(dk)
        if order_p == 2:
          rhos = [jnp.asarray(0.5, h.dtype)]
        else:
          rks.append(jnp.ones_like(h))
          big_r, b = _unipc_rb(order_p, rks, h)
          rhos = _solve_small(big_r[:-1, :-1], b[:-1])
        res = sum(rho * dk for rho, dk in zip(rhos, d1s))
        return base - a1 * jnp.expm1(-h) * res

      return run

    x_new = _switch(order - 1, [predicted(o) for o in range(1, p + 1)], x)
    new_state = UniPCState(g, _push(hist, x0), _cast(base, x), order)
    return _cast(x_new, x), new_state


# --------------------------------------------------------------------------------------
# factories (the public names)


def ddim(eta: float = 0.0) -> DDIM:
  """DDIM with noise scale ``eta`` in [0, 1] (see :class:`DDIM`).

  Example:
    >>> from jaxdiff import solvers
    >>> solvers.ddim().order, solvers.ddim(eta=1.0).stochastic
    (1, True)
  """
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f"ddim needs 0 <= eta <= 1, got {eta}")
  return DDIM(eta=float(eta))


def ddpm() -> DDPM:
  """Ancestral DDPM sampling (see :class:`DDPM`).

  Example:
    >>> from jaxdiff import solvers
    >>> solvers.ddpm().stochastic
    True
  """
  return DDPM()


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


def dpmpp_2m(lower_order_final: bool = True) -> DPMSolverPP2M:
  """DPM-Solver++(2M) (see :class:`DPMSolverPP2M`).

  Example:
    >>> from jaxdiff import solvers
    >>> solvers.dpmpp_2m().order
    2
  """
  return DPMSolverPP2M(lower_order_final=bool(lower_order_final))


def dpmpp_3m(lower_order_final: bool = True, diffusers_compat: bool = False) -> DPMSolverPP3M:
  """DPM-Solver++(3M) (see :class:`DPMSolverPP3M`).

  ``diffusers_compat=True`` uses diffusers' / the official code's weight of the second
  divided difference (half of the third-order one; measured global order 2).

  Example:
    >>> from jaxdiff import solvers
    >>> solvers.dpmpp_3m().order
    3
  """
  return DPMSolverPP3M(bool(lower_order_final), bool(diffusers_compat))


def dpmpp_2m_sde(lower_order_final: bool = True) -> DPMSolverPP2MSDE:
  """SDE-DPM-Solver++(2M) (see :class:`DPMSolverPP2MSDE`).

  Example:
    >>> from jaxdiff import solvers
    >>> solvers.dpmpp_2m_sde().stochastic
    True
  """
  return DPMSolverPP2MSDE(lower_order_final=bool(lower_order_final))


def unipc(order: int = 2, *, corrector: bool = True, lower_order_final: bool = True) -> UniPC:
  """UniPC-bh2 with predictor order ``order`` and the UniC corrector (see :class:`UniPC`).

  Example:
    >>> from jaxdiff import solvers
    >>> solvers.unipc(2).order, solvers.unipc(2, corrector=False).order
    (3, 2)
  """
  return UniPC(int(order), bool(corrector), bool(lower_order_final))
