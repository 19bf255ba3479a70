"""Noise schedules ``x_t = alpha(t) x_0 + sigma(t) eps`` and validated time grids.

Every schedule is a small frozen dataclass (a pytree: hyperparameters are static
metadata, tables are leaves) with ``alpha``, ``sigma``, ``logsnr`` and the inverse
``t_from_logsnr``. Following VDM (Kingma et al., 2021), the variance-preserving schedules
are written through ``log alpha`` and ``logsnr = log(alpha^2 / sigma^2)`` with ``expm1``,
``log1p`` and ``softplus`` so that nothing subtracts nearly equal numbers near ``t = 0``.

A :class:`Grid` is the time discretisation handed to solvers: ``N + 1`` points (``N``
steps) carrying ``t`` (what the network is called with), ``alpha``, ``sigma``, the
half-logSNR ``lam = log(alpha / sigma)`` used by exponential integrators, and the time
derivatives ``dalpha``, ``dsigma`` used by the Euler/Heun probability-flow solvers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._validation import check_choice, check_flag, check_scalar

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


# --------------------------------------------------------------------------------------
# Grids


class Grid(NamedTuple):
  """A validated time grid of ``N + 1`` points (``N`` solver steps), noise decreasing.

  Attributes:
    t: network times in the schedule's units, shape ``(N + 1,)``.
    alpha, sigma: signal and noise scales at ``t``.
    lam: half log-SNR ``log(alpha / sigma)``, clipped to ``[-LAM_MAX, LAM_MAX]``.
    dalpha, dsigma: ``d alpha / dt`` and ``d sigma / dt`` (0 at an appended sigma = 0 point).
  """

  t: Array
  alpha: Array
  sigma: Array
  lam: Array
  dalpha: Array
  dsigma: Array

  @property
  def num_steps(self) -> int:
    return self.t.shape[0] - 1


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def validate_grid(grid: Grid) -> Grid:
  """Checks a grid: 1-D, same lengths, finite, noise strictly decreasing, sigma > 0 but last.

  Raises ``ValueError`` with the offending index. Traced grids (built inside ``jit``)
  are checked for shapes only.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import schedules
    >>> g = schedules.timesteps(schedules.flow(), 4)
    >>> schedules.validate_grid(g) is g
    True
    >>> bad = g._replace(sigma=g.sigma.at[1].set(0.0))
    >>> schedules.validate_grid(bad)
    Traceback (most recent call last):
    ...
    ValueError: sigma must be > 0 at every point but the last; sigma[1] = 0
  """
  if not isinstance(grid, Grid):
    raise TypeError(
      "expected a jaxdiff Grid; build one with timesteps(schedule, n) or "
      f"timesteps_from(schedule, t), got {type(grid).__name__}"
    )
  n = grid.t.shape
  for name, v in grid._asdict().items():
    if v.ndim != 1 or v.shape != n:
      raise ValueError(f"grid.{name} must be 1-D of length {n}, got shape {v.shape}")
  if n[0] < 2:
    raise ValueError(f"a grid needs at least 2 points (1 step), got {n[0]}")
  if not all(_is_concrete(v) for v in grid):
    return grid
  g = {k: np.asarray(v, dtype=np.float64) for k, v in grid._asdict().items()}
  for name in ("t", "alpha", "sigma"):
    bad = ~np.isfinite(g[name])
    if bad.any():
      raise ValueError(f"grid.{name} is not finite at index {int(np.argmax(bad))}")
  if (g["alpha"] < 0).any() or (g["sigma"] < 0).any():
    raise ValueError("grid alpha and sigma must be >= 0")
  if (g["sigma"][:-1] <= 0).any():
    i = int(np.argmax(g["sigma"][:-1] <= 0))
    raise ValueError(f"sigma must be > 0 at every point but the last; sigma[{i}] = 0")
  if g["alpha"][-1] <= 0:
    raise ValueError("the last grid point must have alpha > 0")
  # Noise-to-signal ratio sigma / alpha must strictly decrease (logSNR strictly increase).
  with np.errstate(divide="ignore"):
    ratio = g["sigma"] / g["alpha"]
  bad = ~(np.diff(ratio) < 0)
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(
      "noise must strictly decrease along the grid: sigma/alpha at index "
      f"{i} is {ratio[i]:.6g} and at {i + 1} is {ratio[i + 1]:.6g}"
    )
  return grid


def _check_schedule(schedule) -> None:
  if not all(callable(getattr(schedule, m, None)) for m in ("alpha", "sigma", "logsnr")):
    raise TypeError(
      "schedule must be a noise schedule with alpha(t), sigma(t) and logsnr(t) (e.g. "
      f"schedules.vp_cosine()), got {type(schedule).__name__}"
    )


def _check_times(schedule, name: str, t) -> None:
  """Concrete times must be finite and inside the schedule's ``domain`` (if it declares one)."""
  if isinstance(t, jax.core.Tracer):
    return
  t = np.asarray(t, dtype=np.float64).reshape(-1)
  bad = ~np.isfinite(t)
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f"{name} is not finite at index {i} (got {t[i]})")
  domain = getattr(schedule, "domain", None)
  if domain is None:
    return
  lo, hi, hi_open = domain
  bad = (t < lo) | ((t >= hi) if hi_open else (t > hi))
  if bad.any():
    i = int(np.argmax(bad))
    where = (
      " (the alphas_cumprod table covers [0, N - 1])" if isinstance(schedule, DiscreteVP) else ""
    )
    raise ValueError(
      f"{name} = {t[i]:g} (index {i}) is outside the time domain "
      f"[{lo:g}, {hi:g}{')' if hi_open else ']'} of {type(schedule).__name__}{where}"
    )


def _derivs(schedule, t):
  one = jnp.ones_like(t)
  a, da = jax.jvp(schedule.alpha, (t,), (one,))
  s, ds = jax.jvp(schedule.sigma, (t,), (one,))
  return a, s, da, ds


def timesteps_from(schedule, t: Any, *, denoise_to_zero: bool = False) -> Grid:
  """A validated :class:`Grid` from an explicit array of network times.

  Args:
    schedule: the schedule ``t`` is measured in.
    t: 1-D array of times, noise strictly decreasing (e.g. a searched grid or another
      library's grid).
    denoise_to_zero: append a final point with ``sigma = 0``, ``alpha = 1`` (the last
      step then returns the clean prediction).

  Returns:
    The grid with alpha, sigma, half-logSNR and time derivatives filled in.

  Raises:
    ValueError: naming ``t``, when a concrete time is not finite or lies outside the
      schedule's ``domain`` (for a table schedule: outside the table, where the network
      was never trained). Traced times are checked for shapes only.

  Example:
    >>> from jaxdiff import schedules
    >>> g = schedules.timesteps_from(schedules.flow(), [1.0, 0.6, 0.2, 0.0])
    >>> g.num_steps
    3
  """
  _check_schedule(schedule)
  denoise_to_zero = check_flag("denoise_to_zero", denoise_to_zero)
  try:
    t = t if isinstance(t, jax.core.Tracer) else jnp.asarray(t)
  except TypeError as err:
    raise TypeError(f"t must be a 1-D real array of times, got {type(t).__name__}") from err
  if t.dtype == bool or not jnp.issubdtype(t.dtype, jnp.number) or jnp.iscomplexobj(t):
    raise TypeError(f"t must be a 1-D real array of times, got dtype {t.dtype}")
  t = _float(t)
  if t.ndim != 1 or t.shape[0] < (1 if denoise_to_zero else 2):
    raise ValueError(f"t must be 1-D with at least 2 points (1 step), got shape {t.shape}")
  _check_times(schedule, "t", t)
  n = t.shape[0]
  if n == 0 or isinstance(t, jax.core.Tracer):
    grid = _fill_grid(schedule, t, bool(denoise_to_zero))
  else:
    # Pad to a power-of-two bucket (edge values) so grids of many lengths share a compile.
    padded = jnp.pad(t, (0, _bucket(n) - n), mode="edge")
    full = _fill_grid(schedule, padded, False)
    grid = Grid(*(v[:n] for v in full))
    if denoise_to_zero:
      app = lambda v, x: jnp.concatenate([v, jnp.full((1,), x, v.dtype)])
      grid = Grid(
        app(grid.t, 0.0),
        app(grid.alpha, 1.0),
        app(grid.sigma, 0.0),
        app(grid.lam, LAM_MAX),
        app(grid.dalpha, 0.0),
        app(grid.dsigma, 0.0),
      )
  return validate_grid(grid)


def _bucket(n: int) -> int:
  return max(32, 1 << (n - 1).bit_length())


@functools.partial(jax.jit, static_argnums=2)
def _fill_grid(schedule, t, denoise_to_zero):
  # One compiled call per (schedule structure, length) instead of dozens of eager ops.
  alpha, sigma, dalpha, dsigma = _derivs(schedule, t)
  lam = 0.5 * schedule.logsnr(t)
  if denoise_to_zero:
    app = lambda v, x: jnp.concatenate([v, jnp.full((1,), x, v.dtype)])
    t, alpha, sigma = app(t, 0.0), app(alpha, 1.0), app(sigma, 0.0)
    lam, dalpha, dsigma = app(lam, LAM_MAX), app(dalpha, 0.0), app(dsigma, 0.0)
  lam = jnp.clip(jnp.nan_to_num(lam, nan=LAM_MAX), -LAM_MAX, LAM_MAX)
  # Exact zero noise is lam = +LAM_MAX even where logsnr(t) evaluated to nan (0 * inf).
  lam = jnp.where(sigma == 0, LAM_MAX, jnp.where(alpha == 0, -LAM_MAX, lam))
  return Grid(t, alpha, sigma, lam, dalpha, dsigma)


@functools.partial(jax.jit, static_argnums=(4, 5))
def _spaced(schedule, u, t_s, t_e, spacing, rho):
  """Grid times for ``u`` in [0, 1] and the logSNR at both ends (checked by the caller)."""
  l_s, l_e = schedule.logsnr(t_s), schedule.logsnr(t_e)
  if spacing == "uniform":
    t = t_s + u * (t_e - t_s)
  elif spacing == "quadratic":
    t = t_e + (t_s - t_e) * (1.0 - u) ** 2
  else:
    if spacing == "logsnr":
      lam = l_s + u * (l_e - l_s)
    else:
      r_s, r_e = jnp.exp(-0.5 * l_s / rho), jnp.exp(-0.5 * l_e / rho)
      lam = -2.0 * rho * jnp.log(r_s + u * (r_e - r_s))
    t = schedule.t_from_logsnr(lam)
  t = t.at[0].set(t_s).at[-1].set(t_e)  # exact end points (no round trip / rounding)
  return t, l_s, l_e


SPACINGS = ("uniform", "logsnr", "karras", "quadratic")


def timesteps(
  schedule,
  n: int,
  *,
  spacing: str = "uniform",
  t_start: float | None = None,
  t_end: float | None = None,
  rho: float = 7.0,
  denoise_to_zero: bool = False,
  dtype: Any = None,
) -> Grid:
  r"""A grid of ``n`` steps from ``t_start`` (most noise) to ``t_end``.

  .. math::
    \text{uniform: } t_k = t_s + \tfrac{k}{n}(t_e - t_s),\qquad
    \text{logsnr: } \lambda_k = \lambda_s + \tfrac{k}{n}(\lambda_e - \lambda_s),\\
    \text{karras: } \tilde\sigma_k = \big(\tilde\sigma_s^{1/\rho} + \tfrac{k}{n}
      (\tilde\sigma_e^{1/\rho} - \tilde\sigma_s^{1/\rho})\big)^{\rho},\
      \tilde\sigma = \sigma/\alpha,\qquad
    \text{quadratic: } t_k = t_e + (t_s - t_e)(1 - \tfrac{k}{n})^2 .

  Args:
    schedule: a schedule from :mod:`jaxdiff.schedules`.
    n: number of solver steps (the grid has ``n + 1`` points).
    spacing: one of ``"uniform"``, ``"logsnr"``, ``"karras"``, ``"quadratic"``.
    t_start, t_end: the range; default ``schedule.t_max`` and ``schedule.t_min``.
    rho: the Karras exponent (7 in EDM).
    denoise_to_zero: the ``n`` steps are ``n - 1`` steps over the range plus a final step
      to ``sigma = 0`` (EDM's convention: the last step returns the clean prediction).
    dtype: float dtype of the grid; default float64 when x64 is enabled, else float32.

  Returns:
    A validated :class:`Grid`.

  Example:
    >>> from jaxdiff import schedules
    >>> g = schedules.timesteps(schedules.vp_cosine(), 10, spacing="logsnr")
    >>> g.t.shape
    (11,)

  References:
    Song et al., "Denoising Diffusion Implicit Models", arXiv:2010.02502 (quadratic);
    Lu et al., "DPM-Solver", arXiv:2206.00927 (logSNR-uniform);
    Karras et al., "Elucidating the Design Space...", arXiv:2206.00364 (eq. 5).
  """
  _check_schedule(schedule)
  n = check_scalar("n", n, lo=1, integer=True, static=True)
  check_choice("spacing", spacing, SPACINGS)
  rho = check_scalar("rho", rho, lo=0.0, lo_open=True, static=True)
  denoise_to_zero = check_flag("denoise_to_zero", denoise_to_zero)
  if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"dtype must be a floating dtype, got {dtype}")
  t_s = check_scalar("t_start", schedule.t_max if t_start is None else t_start, static=True)
  t_e = check_scalar("t_end", schedule.t_min if t_end is None else t_end, static=True)
  _check_times(schedule, "t_start", t_s)
  _check_times(schedule, "t_end", t_e)
  if not t_s > t_e:
    raise ValueError(f"t_start must exceed t_end (noise decreases), got {t_s} <= {t_e}")
  m = n - 1 if denoise_to_zero else n
  if m < 1:
    raise ValueError("denoise_to_zero needs n >= 2")
  # Grids are built in float64 from float64 schedule evaluations, then cast.
  with jax.enable_x64(True):
    u = np.linspace(0.0, 1.0, m + 1)
    u = jnp.asarray(np.pad(u, (0, _bucket(m + 1) - m - 1), mode="edge"))  # shared compiles
    t, l_s, l_e = _spaced(schedule, u, jnp.float64(t_s), jnp.float64(t_e), spacing, rho)
    t = np.array(t)[: m + 1]
    t[-1] = t_e
    if spacing in ("logsnr", "karras") and not (np.isfinite(l_s) and np.isfinite(l_e)):
      raise ValueError(
        f"{spacing!r} spacing needs finite logSNR at both ends; got logsnr(t_start) = "
        f"{float(l_s)}, logsnr(t_end) = {float(l_e)}: move t_start/t_end inside the interval "
        "or use denoise_to_zero=True"
      )
  dtype = dtype or jnp.result_type(float)
  return timesteps_from(schedule, jnp.asarray(t, dtype), denoise_to_zero=denoise_to_zero)
