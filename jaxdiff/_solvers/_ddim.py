"""DDIM and DDPM: the first-order updates built on the exact Gaussian posterior."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxdiff._solvers._base import Solver, cast, ddim_terms, set_field
from jaxdiff._validation import check_scalar


@dataclasses.dataclass(frozen=True)
class DDIM(Solver):
  r"""DDIM, deterministic (eta = 0) or with its ancestral noise (eta > 0).

  .. math::
    c = \eta\,\sigma_{i+1}\sqrt{1 - e^{2(\lambda_i - \lambda_{i+1})}},\quad
    x_{i+1} = \alpha_{i+1}\hat x_0 + \sqrt{\sigma_{i+1}^2 - c^2}\,\hat\epsilon + c\,z,

  with :math:`\lambda = \log(\alpha/\sigma)`; eta = 1 is DDPM's posterior sampling.
  The deterministic update is the exact solution of the probability-flow ODE for a
  constant data prediction (DPM-Solver-1), first order. ``eta`` must be a concrete
  number in [0, 1] (it selects the deterministic branch at trace time).

  References:
    Song et al., "Denoising Diffusion Implicit Models", arXiv:2010.02502 (eq. 12, 16);
    Lu et al., "DPM-Solver++", arXiv:2211.01095 (eq. 9).
  """

  eta: float = 0.0

  def __post_init__(self):
    super().__post_init__()
    set_field(self, "eta", check_scalar("eta", self.eta, lo=0.0, hi=1.0, static=True))

  @property
  def stochastic(self):
    return self.eta > 0

  def step(self, state, x, i, pred, key, *, stage=0):
    del stage
    g = state.grid
    x0, eps, a1, s1 = ddim_terms(g, x, i, pred)
    if self.eta == 0:
      return cast(a1 * x0 + s1 * eps, x), state
    q = -jnp.expm1(2.0 * (g.lam[i] - g.lam[i + 1]))  # 1 - SNR_i / SNR_{i+1}, in [0, 1]
    c = self.eta * s1 * jnp.sqrt(q)
    keep = s1 * jnp.sqrt(jnp.maximum(1.0 - self.eta**2 * q, 0.0))
    z = jax.random.normal(key, x.shape, x.dtype)
    return cast(a1 * x0 + keep * eps + c * z, x), state


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
    x0, eps, a1, s1 = ddim_terms(g, x, i, pred)
    d = g.lam[i] - g.lam[i + 1]
    mean = a1 * x0 + jnp.exp(d) * s1 * eps
    std = s1 * jnp.sqrt(-jnp.expm1(2.0 * d))
    return cast(mean + std * jax.random.normal(key, x.shape, x.dtype), x), state


def ddim(eta: float = 0.0) -> DDIM:
  """DDIM with noise scale ``eta`` in [0, 1] (see :class:`DDIM`).

  Example:
    >>> from jaxdiff import solvers
    >>> solvers.ddim().order, solvers.ddim(eta=1.0).stochastic
    (1, True)
  """
  return DDIM(eta)


def ddpm() -> DDPM:
  """Ancestral DDPM sampling (see :class:`DDPM`).

  Example:
    >>> from jaxdiff import solvers
    >>> solvers.ddpm().stochastic
    True
  """
  return DDPM()
