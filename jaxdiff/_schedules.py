"""Noise schedules ``x_t = alpha(t) x_0 + sigma(t) eps`` (the grids built on them: ``_grids``).

Every schedule is a small frozen dataclass (a pytree: hyperparameters are static
metadata, tables are leaves) with ``alpha``, ``sigma``, ``logsnr`` and the inverse
``t_from_logsnr``. Following VDM (Kingma et al., 2021), the variance-preserving schedules
are written through ``log alpha`` and ``logsnr = log(alpha^2 / sigma^2)`` with ``expm1``,
``log1p`` and ``softplus`` so that nothing subtracts nearly equal numbers near ``t = 0``.

"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._validation import check_scalar

Array = jax.Array

# |lam| is clipped here on grids: alpha = 0 (pure noise) or sigma = 0 (clean data) give
# lam = -/+inf, and exp(-30) is below every float32 step coefficient that matters, so
# exponential-integrator updates reach their exact limits without inf - inf = NaN.
LAM_MAX = 30.0


def _static(**kw):
  return dataclasses.field(metadata={"static": True}, **kw)


def _float(t: Any) -> Array:
  t = jnp.asarray(t)
  if not jnp.issubdtype(t.dtype, jnp.floating):
    t = t.astype(jnp.result_type(float))
  return t


class _Schedule:
  """Shared methods: ``alpha``/``sigma`` from ``logsnr`` unless a subclass is more exact."""

  t_min: float
  t_max: float
  # Where alpha, sigma and logsnr are defined: (lo, hi, hi_open). Grids are checked against it.
  domain: tuple[float, float, bool] = (0.0, math.inf, False)

  def alpha(self, t: Array) -> Array:
    return jnp.sqrt(jax.nn.sigmoid(self.logsnr(t)))

  def sigma(self, t: Array) -> Array:
    return jnp.sqrt(jax.nn.sigmoid(-self.logsnr(t)))

  def logsnr(self, t: Array) -> Array:  # pragma: no cover - abstract
    raise NotImplementedError

  def t_from_logsnr(self, logsnr: Array) -> Array:  # pragma: no cover - abstract
    raise NotImplementedError


def _vp_from_log_alpha(log_alpha: Array) -> tuple[Array, Array, Array]:
  """(alpha, sigma, logsnr) of a VP schedule from log alpha <= 0, without cancellation."""
  log_alpha = jnp.minimum(log_alpha, 0.0)
  sigma2 = -jnp.expm1(2.0 * log_alpha)
  return jnp.exp(log_alpha), jnp.sqrt(sigma2), 2.0 * log_alpha - jnp.log(sigma2)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VPLinear(_Schedule):
  r"""Variance-preserving schedule with a linear ``beta(t)`` (DDPM / score SDE).

  .. math::
    \log\alpha(t) = -\tfrac14 t^2 (\beta_1 - \beta_0) - \tfrac12 t\beta_0,\quad
    \sigma(t) = \sqrt{-\mathrm{expm1}(2\log\alpha(t))},\quad
    \lambda(t) = 2\log\alpha - \log\sigma^2 .

  The inverse solves the quadratic in ``t`` in its cancellation-free form
  ``t = 2c / (beta_0 + sqrt(beta_0^2 + 2 (beta_1 - beta_0) c))``, ``c = softplus(-logsnr)``.

  References:
    Song et al., "Score-Based Generative Modeling through Stochastic Differential
    Equations", arXiv:2011.13456 (eq. 33 for the VP SDE marginals).
  """

  beta_min: float = _static(default=0.1)
  beta_max: float = _static(default=20.0)
  t_min: float = _static(default=1e-3)
  t_max: float = _static(default=1.0)

  def _log_alpha(self, t):
    t = _float(t)
    return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

  def alpha(self, t):
    return _vp_from_log_alpha(self._log_alpha(t))[0]

  def sigma(self, t):
    return _vp_from_log_alpha(self._log_alpha(t))[1]

  def logsnr(self, t):
    return _vp_from_log_alpha(self._log_alpha(t))[2]

  def t_from_logsnr(self, logsnr):
    c = jax.nn.softplus(-_float(logsnr))  # = -2 log alpha
    b0, db = self.beta_min, self.beta_max - self.beta_min
    return 2.0 * c / (b0 + jnp.sqrt(b0**2 + 2.0 * db * c))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VPCosine(_Schedule):
  r"""Cosine variance-preserving schedule (improved DDPM), continuous in ``t``.

  .. math::
    \alpha(t) = \frac{\cos(\frac{\pi}{2}\frac{t+s}{1+s})}{\cos(\frac{\pi}{2}\frac{s}{1+s})},
    \quad \sigma = \sqrt{-\mathrm{expm1}(2\log\alpha)} .

  ``t_max`` defaults to 0.9946 as in the official DPM-Solver code: alpha(1) = 0 is the
  pure-noise limit where eps-prediction networks are undefined.

  References:
    Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models",
    arXiv:2102.09672 (eq. 17); Lu et al., "DPM-Solver", arXiv:2206.00927 (App. D).
  """

  s: float = _static(default=0.008)
  t_min: float = _static(default=1e-3)
  t_max: float = _static(default=0.9946)
  # alpha(1) = 0 is reached only up to rounding (cos(pi/2) < 0 in float32): t < 1.
  domain = (0.0, 1.0, True)

  def _log_alpha(self, t):
    t = _float(t)
    s = self.s
    return jnp.log(jnp.cos(0.5 * math.pi * (t + s) / (1.0 + s))) - math.log(
      math.cos(0.5 * math.pi * s / (1.0 + s))
    )

  def alpha(self, t):
    return _vp_from_log_alpha(self._log_alpha(t))[0]

  def sigma(self, t):
    return _vp_from_log_alpha(self._log_alpha(t))[1]

  def logsnr(self, t):
    return _vp_from_log_alpha(self._log_alpha(t))[2]

  def t_from_logsnr(self, logsnr):
    log_alpha = -0.5 * jax.nn.softplus(-_float(logsnr))
    s = self.s
    c = log_alpha + math.log(math.cos(0.5 * math.pi * s / (1.0 + s)))
    return 2.0 * (1.0 + s) / math.pi * jnp.arccos(jnp.exp(c)) - s


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EDM(_Schedule):
  r"""Variance-exploding schedule of Karras et al. (EDM): ``t`` is the noise level.

  .. math:: \alpha(t) = 1,\quad \sigma(t) = t,\quad \lambda(t) = -2\log t .

  Pair it with ``timesteps(..., spacing="karras")`` for the paper's rho = 7 grid.

  References:
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
    arXiv:2206.00364 (Table 1, eq. 5).
  """

  t_min: float = _static(default=0.002)
  t_max: float = _static(default=80.0)

  def alpha(self, t):
    return jnp.ones_like(_float(t))

  def sigma(self, t):
    return _float(t)

  def logsnr(self, t):
    return -2.0 * jnp.log(_float(t))

  def t_from_logsnr(self, logsnr):
    return jnp.exp(-0.5 * _float(logsnr))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Flow(_Schedule):
  r"""Rectified-flow / flow-matching interpolation ``x_t = (1 - t) x_0 + t eps``.

  .. math::
    \alpha(t) = 1 - t,\quad \sigma(t) = t,\quad
    \lambda(t) = 2(\mathrm{log1p}(-t) - \log t),\quad t(\lambda) = \mathrm{sigmoid}(-\lambda/2).

  The default range is the whole interval [0, 1]: grids start at pure noise and end
  at clean data (solvers handle alpha = 0 and sigma = 0 at the end points).

  References:
    Liu et al., "Flow Straight and Fast", arXiv:2209.03003; Lipman et al., "Flow
    Matching for Generative Modeling", arXiv:2210.02747; Esser et al., "Scaling
    Rectified Flow Transformers", arXiv:2403.03206 (Sec. 2).
  """

  t_min: float = _static(default=0.0)
  t_max: float = _static(default=1.0)
  domain = (0.0, 1.0, False)

  def alpha(self, t):
    return 1.0 - _float(t)

  def sigma(self, t):
    return _float(t)

  def logsnr(self, t):
    t = _float(t)
    return 2.0 * (jnp.log1p(-t) - jnp.log(t))

  def t_from_logsnr(self, logsnr):
    return jax.nn.sigmoid(-0.5 * _float(logsnr))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class DiscreteVP(_Schedule):
  r"""A VP schedule interpolated in logSNR from a discrete ``alphas_cumprod`` table.

  ``t`` is the (fractional) table index in ``[0, N - 1]``, the value a discrete-time
  network was trained with; at integer ``t`` the noise levels are exactly the table's.
  Outside the table there is no noise level: grids there are rejected (naming ``t``),
  and a traced ``t`` outside ``[0, N - 1]`` gives NaN, never a clamped end value.

  .. math::
    \lambda_k = \log\bar\alpha_k - \mathrm{log1p}(-\bar\alpha_k),\quad
    \lambda(t) = \mathrm{interp}(t, k, \lambda_k),\quad
    \alpha^2 = \mathrm{sigmoid}(\lambda),\ \sigma^2 = \mathrm{sigmoid}(-\lambda).

  References:
    Ho et al., "Denoising Diffusion Probabilistic Models", arXiv:2006.11239;
    Lu et al., "DPM-Solver", arXiv:2206.00927 (App. D, discrete-time models).
  """

  table_logsnr: Array = dataclasses.field(default=None)
  t_min: float = _static(default=0.0)
  t_max: float = _static(default=0.0)

  @property
  def domain(self) -> tuple[float, float, bool]:
    return (0.0, self.t_max, False)

  def logsnr(self, t):
    t = _float(t)
    table = jnp.asarray(self.table_logsnr)
    idx = jnp.arange(table.shape[0], dtype=t.dtype)
    inside = (t >= 0) & (t <= table.shape[0] - 1)
    return jnp.where(inside, jnp.interp(t, idx, table.astype(t.dtype)), jnp.nan)

  def t_from_logsnr(self, logsnr):
    table = jnp.asarray(self.table_logsnr)
    logsnr = _float(logsnr)
    idx = jnp.arange(table.shape[0], dtype=logsnr.dtype)
    # The table decreases in t; jnp.interp wants increasing abscissae.
    return jnp.interp(logsnr, table[::-1].astype(logsnr.dtype), idx[::-1])

  def __hash__(self):
    return id(self)


def vp_linear(beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3) -> VPLinear:
  """The linear-beta VP schedule (see :class:`VPLinear`).

  Example:
    >>> from jaxdiff import schedules
    >>> s = schedules.vp_linear()
    >>> round(float(s.alpha(0.5) ** 2 + s.sigma(0.5) ** 2), 6)
    1.0
  """
  beta_min = check_scalar("beta_min", beta_min, lo=0.0, lo_open=True, static=True)
  beta_max = check_scalar("beta_max", beta_max, lo=beta_min, lo_open=True, static=True)
  t_min = check_scalar("t_min", t_min, lo=0.0, hi=1.0, hi_open=True, static=True)
  return VPLinear(float(beta_min), float(beta_max), float(t_min))


def vp_cosine(s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946) -> VPCosine:
  """The cosine VP schedule (see :class:`VPCosine`); ``0 <= t_min < t_max < 1``.

  Example:
    >>> from jaxdiff import schedules
    >>> c = schedules.vp_cosine()
    >>> round(float(c.t_from_logsnr(c.logsnr(0.3))), 5)
    0.3
  """
  s = check_scalar("s", s, lo=0.0, lo_open=True, static=True)
  # t = 1 is alpha = 0 only up to rounding (log of a negative cosine in float32).
  t_max = check_scalar("t_max", t_max, lo=0.0, hi=1.0, lo_open=True, hi_open=True, static=True)
  t_min = check_scalar("t_min", t_min, lo=0.0, hi=t_max, hi_open=True, static=True)
  return VPCosine(float(s), float(t_min), float(t_max))


def edm(sigma_min: float = 0.002, sigma_max: float = 80.0) -> EDM:
  """The variance-exploding EDM schedule, ``t = sigma`` (see :class:`EDM`).

  Example:
    >>> from jaxdiff import schedules
    >>> float(schedules.edm().sigma(3.0))
    3.0
  """
  sigma_min = check_scalar("sigma_min", sigma_min, lo=0.0, lo_open=True, static=True)
  sigma_max = check_scalar("sigma_max", sigma_max, lo=sigma_min, lo_open=True, static=True)
  return EDM(float(sigma_min), float(sigma_max))


def flow(t_min: float = 0.0, t_max: float = 1.0) -> Flow:
  """The rectified-flow schedule ``alpha = 1 - t``, ``sigma = t`` (see :class:`Flow`).

  Example:
    >>> from jaxdiff import schedules
    >>> f = schedules.flow()
    >>> float(f.alpha(0.25)), float(f.sigma(0.25))
    (0.75, 0.25)
  """
  t_max = check_scalar("t_max", t_max, lo=0.0, hi=1.0, lo_open=True, static=True)
  t_min = check_scalar("t_min", t_min, lo=0.0, hi=t_max, hi_open=True, static=True)
  return Flow(float(t_min), float(t_max))


def from_alphas_cumprod(alphas_cumprod: Any) -> DiscreteVP:
  """A VP schedule from a discrete training table (e.g. any diffusers checkpoint's).

  Args:
    alphas_cumprod: 1-D table ``abar_k``, strictly decreasing in ``(0, 1)``; entry ``k``
      is the noise level the network saw at (integer) time ``k``. A final entry of 0
      (zero terminal SNR, Lin et al. arXiv:2305.08891) is clipped to logSNR = -2 LAM_MAX.

  Returns:
    A :class:`DiscreteVP` with ``t`` in ``[0, N - 1]``.

  Example:
    >>> import numpy as np
    >>> from jaxdiff import schedules
    >>> betas = np.linspace(1e-4, 0.02, 1000)
    >>> s = schedules.from_alphas_cumprod(np.cumprod(1 - betas))
    >>> round(float(s.alpha(10.0) ** 2), 6) == round(float(np.cumprod(1 - betas)[10]), 6)
    True
  """
  try:
    a = np.asarray(alphas_cumprod, dtype=np.float64)
  except (TypeError, ValueError) as err:
    raise TypeError(
      f"alphas_cumprod must be a 1-D real array, got {type(alphas_cumprod).__name__}"
    ) from err
  if a.ndim != 1 or a.shape[0] < 2:
    raise ValueError(f"alphas_cumprod must be 1-D with >= 2 entries, got shape {a.shape}")
  bad = ~(np.isfinite(a) & (a >= 0) & (a < 1))
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f"alphas_cumprod entries must lie in [0, 1); alphas_cumprod[{i}] = {a[i]}")
  if np.any(np.diff(a) >= 0):
    i = int(np.argmax(np.diff(a) >= 0))
    raise ValueError(
      "alphas_cumprod must be strictly decreasing (noise increases with t); "
      f"alphas_cumprod[{i}] = {a[i]} <= alphas_cumprod[{i + 1}] = {a[i + 1]}"
    )
  with np.errstate(divide="ignore"):
    lam = np.log(a) - np.log1p(-a)
  lam = np.maximum(lam, -2.0 * LAM_MAX)
  # Kept as float64 NumPy: it becomes float32 or float64 with the x64 flag where it is used.
  return DiscreteVP(lam, 0.0, float(a.shape[0] - 1))
