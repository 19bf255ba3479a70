"""Validated time grids: the time discretisation handed to solvers.

A :class:`Grid` holds ``N + 1`` points (``N`` steps) carrying ``t`` (what the network is
called with), ``alpha``, ``sigma``, the half-logSNR ``lam = log(alpha / sigma)`` used by
exponential integrators, and the time derivatives ``dalpha``, ``dsigma`` used by the
Euler/Heun probability-flow solvers. Built from a schedule (:mod:`jaxdiff._schedules`) by
:func:`timesteps` or from explicit times by :func:`timesteps_from`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._schedules import LAM_MAX, DiscreteVP, _float
from jaxdiff._validation import check_choice, check_flag, check_scalar

Array = jax.Array


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

  Raises ``ValueError`` with the offending index; for a bfloat16 or float16 grid the
  message names the dtype (its points collide or its small sigmas round to 0 long before
  float32's) and says to build the grid in float32. Traced grids (built inside ``jit``)
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
  try:
    _check_values(grid)
  except ValueError as err:
    dtype = jnp.result_type(grid.t)
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
      # Low precision is the usual cause: name it and what to do, in the same sentence.
      raise ValueError(
        f"{err} (the grid is {dtype}: with a {jnp.finfo(dtype).nmant + 1}-bit significand "
        f"its {n[0]} points collide or its small sigmas round to 0; build it in float32, "
        "e.g. timesteps(..., dtype=jnp.float32): sample keeps x_T's dtype whatever the "
        "grid's)"
      ) from None
    raise
  return grid


def _check_values(grid: Grid) -> None:
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
