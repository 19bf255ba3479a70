"""UniPC (bh2): the multistep predictor UniP-p with the free corrector UniC."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff._grids import Grid
from jaxdiff._solvers._base import (
  Solver,
  cast,
  ddim_terms,
  multistep_order,
  phi,
  push,
  set_field,
  switch,
)
from jaxdiff._validation import check_scalar

Array = jax.Array


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


def _divided(g, hist_at, i, h, k):
  """r_k and D_k relative to grid point ``i`` (``hist_at(k)`` = x0 at ``i - k``)."""
  rk = (g.lam[i - k] - g.lam[i]) / h
  return rk, (hist_at(k) - hist_at(0)) / rk


def _unipc_pred(g, at, i, h, order: int, hh):
  """UniP-p's ``sum_k rho_k D_k`` (bh2 coefficients, ``order >= 2``) for the step from
  ``i``; ``at(k)`` is the prediction at point ``i - k`` and ``hh`` the signed step of the
  integrand (``-h`` for the data prediction, ``h`` for the noise prediction)."""
  rks, d1s = [], []
  for k in range(1, order):
    rk, dk = _divided(g, at, i, h, k)
    rks.append(rk)
    d1s.append(dk)
  if order == 2:
    rhos = [jnp.asarray(0.5, h.dtype)]
  else:
    rks.append(jnp.ones_like(h))
    big_r, b = _unipc_rb(order, rks, -hh)  # _unipc_rb evaluates phi at minus its argument
    rhos = _solve_small(big_r[:-1, :-1], b[:-1])
  return sum(rho * dk for rho, dk in zip(rhos, d1s))


def _unic(g, hist, new, i, h, order: int, hh, like):
  """UniC-p's ``sum_k rho_k D_k`` for the step from ``i - 1`` to ``i``: ``hist[k]`` is the
  prediction at ``i - 1 - k``, ``new`` the one just made at ``i``; ``hh`` as above."""
  at = lambda k: hist[k]
  rks, d1s = [], []
  for k in range(1, order):
    rk, dk = _divided(g, at, i - 1, h, k)
    rks.append(rk)
    d1s.append(dk)
  rks.append(jnp.ones_like(h))
  if order == 1:
    rhos = [jnp.asarray(0.5, h.dtype)]
  else:
    big_r, b = _unipc_rb(order, rks, -hh)
    rhos = _solve_small(big_r, b)
  res = sum((rho * dk for rho, dk in zip(rhos[:-1], d1s)), jnp.zeros_like(like))
  return res + rhos[-1] * (new - hist[0])


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
  with the full ``p x p`` system: it costs no extra evaluation and raises the convergence
  order to ``p + 1``. The last step is not corrected (no evaluation follows it).

  Attributes:
    order: the predictor order ``p`` in {1, 2, 3} (an integer).
    corrector: apply UniC; ``convergence_order`` is then ``order + 1``.
    lower_order_final: first-order final steps on grids of fewer than 15 steps.

  References:
    Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
    Diffusion Models", arXiv:2302.04867 (Alg. 2-3, eq. 8, App. C; bh2 = "B(h) = e^h - 1").
  """

  order: int = 2
  corrector: bool = True
  lower_order_final: bool = True

  def __post_init__(self):
    super().__post_init__()
    set_field(
      self, "order", check_scalar("order", self.order, lo=1, hi=3, integer=True, static=True)
    )

  @property
  def convergence_order(self) -> int:
    return self.order + (1 if self.corrector else 0)

  def init(self, x, ts):
    hist = jnp.zeros((self.order,) + x.shape, x.dtype)
    return UniPCState(ts, hist, jnp.zeros_like(x), jnp.zeros((), jnp.int32))

  def step(self, state, x, i, pred, key, *, stage=0):
    del key, stage
    g = state.grid
    p = self.order
    x0 = pred.x0.astype(x.dtype)  # the evaluation at x_i, used by UniC first
    hist = state.hist

    # ---- UniC: correct x_i with the evaluation just made at the predicted x_i.
    if self.corrector:
      h_c = g.lam[i] - g.lam[i - 1]
      a_i = g.alpha[i]

      def corrected(order_c):
        def run(_):
          res = _unic(g, hist, x0, i, h_c, order_c, -h_c, x)
          return state.base - a_i * jnp.expm1(-h_c) * res

        return run

      branches = [lambda _: x] + [corrected(o) for o in range(1, p + 1)]
      x = switch(state.last_order, branches, x)

    # ---- UniP-p from the (corrected) x_i.
    _, eps, a1, s1 = ddim_terms(g, x, i, pred)
    base = a1 * x0 + s1 * eps
    h = g.lam[i + 1] - g.lam[i]
    order = multistep_order(p, i, g.num_steps, s1, self.lower_order_final)
    at_p = lambda k: x0 if k == 0 else hist[k - 1]

    def predicted(order_p):
      def run(_):
        if order_p == 1:
          return base
        return base - a1 * jnp.expm1(-h) * _unipc_pred(g, at_p, i, h, order_p, -h)

      return run

    x_new = switch(order - 1, [predicted(o) for o in range(1, p + 1)], x)
    new_state = UniPCState(g, push(hist, x0), cast(base, x), order)
    return cast(x_new, x), new_state


def unipc(order: int = 2, *, corrector: bool = True, lower_order_final: bool = True) -> UniPC:
  """UniPC-bh2 with predictor order ``order`` and the UniC corrector (see :class:`UniPC`).

  ``order`` is the predictor order you ask for; with the corrector the method converges
  with order ``order + 1`` (``convergence_order``).

  Example:
    >>> from jaxdiff import solvers
    >>> s = solvers.unipc(2)
    >>> s.order, s.convergence_order, solvers.unipc(2, corrector=False).convergence_order
    (2, 3, 2)
  """
  return UniPC(order, corrector, lower_order_final)
