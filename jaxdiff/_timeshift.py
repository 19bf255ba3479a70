"""The Time-Shift Sampler: evaluate the network at the time whose noise level matches ``x_t``.

:func:`jaxdiff.sample` calls :meth:`TimeShift.evaluate` in place of the plain network call
(through the guidance rule) at the first stage of every step; the solver then steps from
the shifted time's noise direction. Nothing inside any solver changes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._grids import Grid
from jaxdiff._module import module, setfield, static
from jaxdiff._solvers._ddim import DDIM
from jaxdiff._types import StepContext
from jaxdiff._validation import check_choice, check_scalar

Array = jax.Array


def _bcast(v: Array, x: Array) -> Array:
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


class Shift:
  """Base class of the time-shift add-on of :func:`jaxdiff.sample`.

  ``evaluate(predict, x, ctx, grid, aux) -> (pred, x, aux)`` makes the first stage's
  evaluation of a step: ``predict(x, ctx, aux) -> (Prediction, aux)`` is the loop's call
  through the guidance rule (``aux``: the rule's state and the network, passed through);
  the returned ``x`` is the state the solver steps from.

  Example:
    >>> import jaxdiff
    >>> isinstance(jaxdiff.time_shift(jaxdiff.schedules.vp_linear(), 10, 0.3), jaxdiff.Shift)
    True
  """

  def check_grid(self, grid: Grid) -> None:
    del grid

  def check_solver(self, solver) -> None:
    """Raises if the add-on cannot serve ``solver`` (every solver here)."""
    del solver

  def evaluate(self, predict, x, ctx, grid, aux):
    del grid
    pred, aux = predict(x, ctx, aux)
    return pred, x, aux


@module
class NoShift(Shift):
  """No time shift (``sample``'s default): the evaluation at the grid time.

  Example:
    >>> import jaxdiff
    >>> isinstance(jaxdiff.NoShift(), jaxdiff.Shift)
    True
  """


@module
class TimeShift(Shift):
  r"""Time-Shift sampling (TS-DDIM / TS-DPM): variance-matched times.

  Two placements of the shift (``variant``):

  * ``"land"`` (default; the official TS-DPM code's ``pnm_solver``): the network is
    evaluated at the grid time :math:`t_i`, and the step *lands* at the time whose
    marginal variance matches the state's. From step :math:`i \ge 1` (the official code
    never shifts the first step, ``len(img_list) > 1``) and while the next grid time
    :math:`t_{i+1} > c` (the cutoff), each sample's pixel variance
    :math:`\hat v = \mathrm{Var}_{\text{pixels}}(x_i)` (unbiased, as ``torch.var``) is
    matched against the candidates :math:`\tau_k = t_{i+1} + k\Delta`, :math:`k = -w..w`:

    .. math::
      t_L = \tau_{k^*},\quad k^* = \arg\min_k \big(\hat v - (\alpha_{\tau_k}^2
        v_{\text{data}} + \sigma_{\tau_k}^2)\big)^2,\qquad
      x_{i+1} = \alpha_{t_L}\hat x_0 + \sigma_{t_L}\hat\epsilon,

    with :math:`(\hat x_0, \hat\epsilon)` from the evaluation at :math:`(x_i, t_i)`; the
    next step evaluates at the grid time :math:`t_{i+1}` again. This moves the DDIM step
    itself, so it needs ``solvers.ddim()`` with ``eta = 0`` (the official code's ``euler``
    method; checked). It is passed to the solver as the prediction
    :math:`(\tfrac{\alpha_{t_L}}{\alpha_{i+1}}\hat x_0,\ \text{re-noised with }
    \tfrac{\sigma_{t_L}}{\sigma_{i+1}}\hat\epsilon)`, which DDIM turns into exactly the
    landing above.
  * ``"evaluate"`` (ours): at a step from :math:`t_i > c` the candidates are centred at
    :math:`t_i`, the network is evaluated at the matched time :math:`t_s` and the solver
    steps as if ``x`` were at :math:`t_s`: it receives the noise direction
    :math:`\hat\epsilon = (x - \alpha_{t_s}\hat x_0)/\sigma_{t_s}` (formally the
    equivalent state :math:`\tilde x = \alpha_{t_i}\hat x_0 + \sigma_{t_i}\hat\epsilon`).
    It serves every solver and shifts step 0 too. Candidates are clipped to
    ``[t_{N-1}, t_0]`` so ``sigma > 0`` at every evaluation.

  :math:`\Delta = (t_0 - t_N)/R`. Samples not shifted (the cutoff, the first step of
  ``"land"``), and ``window = 0``, use the grid time (``window = 0`` is the base sampler
  bit for bit).
  Choices taken from the official TS-DPM code (Mingxiao-Li/TS-DPM): the window counts
  steps of a fine table of ``resolution = 1000`` points over the time span (its 1000
  training steps), candidates are clipped to the table, ties go to the first candidate,
  and ``data_var = 0`` matches :math:`\sigma^2 = 1 - \bar\alpha` alone, as that code does
  (set ``data_var`` to the data's pixel variance to include the signal term; assumption
  documented in the README). Variant note: the official DPM-Solver variant also moves
  the step's start time (``h``) to :math:`t_s`; here the grid's step sizes are kept, so
  one seam serves every solver. With UniPC the corrector UniC rebuilds :math:`x_i` from
  its own history, so there the shift acts through the evaluation time only. Candidates
  are clipped to ``[t_{N-1}, t_0]`` so ``sigma > 0`` at every evaluation.

  With ``"evaluate"``, only the first stage of a multi-stage solver's step is shifted. The
  shift is per
  sample: guidance rules receive a :class:`~jaxdiff.StepContext` whose ``t`` has shape
  ``(B,)`` and whose ``alpha``/``sigma`` broadcast against ``x`` (rules written with
  ``guidance._common`` helpers handle it).

  Example:
    >>> import jaxdiff
    >>> from jaxdiff import schedules
    >>> rule = jaxdiff.TimeShift(schedules.vp_linear(), window=40, cutoff=0.3)
    >>> rule.active, jaxdiff.time_shift(schedules.vp_linear(), 0, 0.3).active
    (True, False)

  References:
    Li et al., "Alleviating Exposure Bias in Diffusion Models through Sampling with
    Shifted Time Steps", ICLR 2024, arXiv:2305.15583 (Alg. 1-2).
  """

  schedule: Any = static()
  window: int = static()
  cutoff: Any = None
  resolution: int = static(1000)
  data_var: Any = 0.0
  variant: str = static("land")

  def __post_init__(self):
    if not all(callable(getattr(self.schedule, m, None)) for m in ("alpha", "sigma")):
      raise TypeError(
        "schedule must be a noise schedule with alpha(t) and sigma(t) (the one the grid "
        f"was built with), got {type(self.schedule).__name__}"
      )
    set_ = lambda name, v: setfield(self, name, v)
    set_("window", check_scalar("window", self.window, lo=0, integer=True, static=True))
    set_("resolution", check_scalar("resolution", self.resolution, lo=1, integer=True, static=True))
    if self.window > self.resolution:
      raise ValueError(
        f"window must be at most resolution = {self.resolution} (a window larger than the "
        f"grid's time span), got {self.window}"
      )
    set_("cutoff", check_scalar("cutoff", self.cutoff, allow_inf=True))
    set_("data_var", check_scalar("data_var", self.data_var, lo=0.0))
    check_choice("variant", self.variant, ("land", "evaluate"))

  @property
  def active(self) -> bool:
    return self.window > 0

  def check_grid(self, grid: Grid) -> None:
    """Raises ``ValueError`` if the window exceeds the (concrete) grid's steps, ``t`` rises,
    or the grid was built with another schedule than the rule's.

    A grid carries its schedule's ``alpha(t)`` and ``sigma(t)``: the rule's schedule must
    give the same values at the grid's times (to the grid dtype's rounding; an appended
    ``sigma = 0`` point is not compared), or the matched times would be another
    schedule's.
    """
    t = np.asarray(grid.t, np.float64)
    if not (np.diff(t) < 0).all():
      raise ValueError("time_shift needs a grid whose t strictly decreases (noise decreasing)")
    self._check_schedule(grid)
    if self.window > self.resolution * grid.num_steps:
      raise ValueError(
        f"time_shift window {self.window} is larger than the grid ({grid.num_steps} steps "
        f"of resolution {self.resolution})"
      )

  def _check_schedule(self, grid: Grid) -> None:
    t = jnp.asarray(grid.t)
    keep = np.asarray(grid.sigma) > 0  # an appended denoise-to-zero point is the grid's own
    tol = max(1e-5, 4 * float(jnp.finfo(t.dtype).eps))
    for name, values in (("alpha", grid.alpha), ("sigma", grid.sigma)):
      mine = np.asarray(getattr(self.schedule, name)(t), np.float64)[keep]
      theirs = np.asarray(values, np.float64)[keep]
      bad = ~np.isclose(mine, theirs, rtol=tol, atol=tol)
      if bad.any():
        i = int(np.flatnonzero(keep)[np.argmax(bad)])
        raise ValueError(
          f"time_shift was built for another schedule than the grid ts: at ts.t[{i}] = "
          f"{float(t[i]):.6g} the grid has {name} = {float(values[i]):.6g} but the rule's "
          f"{type(self.schedule).__name__} gives {float(getattr(self.schedule, name)(t[i])):.6g}; "
          "build time_shift(schedule, ...) with the schedule of the grid"
        )

  def shifted_context(self, x: Array, ctx: StepContext, grid: Grid):
    """``(ctx_s, moved)``: the per-sample evaluation context and where it moved off the grid."""
    n = grid.num_steps
    t_c, a_c, s_c, k = self._match(self._variance(x), ctx.t, grid.t[n - 1], grid.t[0], grid)
    moved = (ctx.t > self.cutoff) & (k != 0) & (t_c != ctx.t)
    t_s = jnp.where(moved, t_c, ctx.t)
    alpha = jnp.where(moved, a_c, ctx.alpha).astype(grid.alpha.dtype)
    sigma = jnp.where(moved, s_c, ctx.sigma).astype(grid.sigma.dtype)
    ctx_s = ctx._replace(t=t_s, alpha=_bcast(alpha, x), sigma=_bcast(sigma, x))
    return ctx_s, moved

  def check_solver(self, solver) -> None:
    if self.active and self.variant == "land":
      if not isinstance(solver, DDIM) or solver.eta != 0:
        raise ValueError(
          "time_shift: variant='land' (the official TS-DDIM) moves where a DDIM step lands "
          "and needs solvers.ddim() with eta = 0; with another solver use "
          f"variant='evaluate', got {solver!r}"
        )

  def _variance(self, x):
    b = x.shape[0]
    flat = jnp.reshape(x, (b, -1)).astype(jnp.promote_types(x.dtype, jnp.float32))
    return jnp.var(flat, axis=1, ddof=1 if flat.shape[1] > 1 else 0)

  def _match(self, var, center, lo, hi, grid: Grid):
    """The candidate around ``center`` whose marginal variance is nearest ``var``."""
    delta = (grid.t[0] - grid.t[-1]) / self.resolution
    k = jnp.arange(-self.window, self.window + 1)
    cand = jnp.clip(center + k * delta, lo, hi).astype(grid.t.dtype)
    a_c, s_c = self.schedule.alpha(cand), self.schedule.sigma(cand)
    target = jnp.square(a_c) * self.data_var + jnp.square(s_c)
    best = jnp.argmin(jnp.square(var[:, None] - target[None, :].astype(var.dtype)), axis=1)
    return cand[best], a_c[best], s_c[best], k[best]

  def evaluate(self, predict, x, ctx, grid, aux):
    """The evaluation and the state the solver steps from, per ``variant``; with
    ``window = 0`` the plain evaluation (the base sampler, bit for bit)."""
    if not self.active:
      return super().evaluate(predict, x, ctx, grid, aux)
    if self.variant == "land":
      return self._land(predict, x, ctx, grid, aux)
    ctx_s, moved = self.shifted_context(x, ctx, grid)
    pred, aux = predict(x, ctx_s, aux)
    return pred, self.equivalent_state(x, pred, ctx, ctx_s, moved), aux

  def _land(self, predict, x, ctx, grid, aux):
    pred, aux = predict(x, ctx, aux)
    i, n = ctx.step, grid.num_steps
    t_n, a_n, s_n = grid.t[i + 1], grid.alpha[i + 1], grid.sigma[i + 1]
    t_l, a_l, s_l, k = self._match(self._variance(x), t_n, grid.t[n], grid.t[0], grid)
    moved = (i > 0) & (t_n > self.cutoff) & (k != 0) & (t_l != t_n) & (s_n > 0)
    dt = x.dtype
    a_i, s_i = jnp.asarray(ctx.alpha, dt), jnp.asarray(ctx.sigma, dt)
    eps = (x - a_i * pred.x0_renoise.astype(dt)) / s_i
    scale_x0 = _bcast(jnp.where(moved, a_l / a_n, 1.0).astype(dt), x)
    scale_eps = _bcast(jnp.where(moved, s_l / jnp.where(s_n > 0, s_n, 1.0), 1.0).astype(dt), x)
    x0 = scale_x0 * pred.x0.astype(dt)
    x0r = (x - s_i * (scale_eps * eps)) / a_i
    keep = _bcast(moved, x)
    landed = type(pred)(
      jnp.where(keep, x0, pred.x0.astype(dt)), jnp.where(keep, x0r, pred.x0_renoise.astype(dt))
    )
    return landed, x, aux

  def equivalent_state(self, x: Array, pred, ctx: StepContext, ctx_s: StepContext, moved):
    r""":math:`\tilde x = \alpha_i\hat x_0^{r} + (\sigma_i/\sigma_s)(x - \alpha_s\hat x_0^{r})`."""
    x0r = pred.x0_renoise.astype(x.dtype)
    a_s, s_s = ctx_s.alpha.astype(x.dtype), ctx_s.sigma.astype(x.dtype)
    x_eq = ctx.alpha * x0r + (ctx.sigma / s_s) * (x - a_s * x0r)
    return jnp.where(_bcast(moved, x), x_eq.astype(x.dtype), x)


def time_shift(
  schedule,
  window: int,
  cutoff: float,
  *,
  resolution: int = 1000,
  data_var: float = 0.0,
  variant: str = "land",
) -> TimeShift:
  r"""The Time-Shift rule for :func:`jaxdiff.sample`'s ``time_shift=`` (see :class:`TimeShift`).

  Args:
    schedule: the schedule the grid was built with (candidate times' alpha and sigma);
      :func:`jaxdiff.sample` raises before compiling when the grid's ``alpha``/``sigma``
      are another schedule's.
    window: half-width ``w >= 0`` of the search, in steps of the fine table (``0``: off,
      the base sampler bit for bit). At most ``resolution``.
    cutoff: shift only while the grid time is above this (schedule units; the official
      code's ``cut_off_value`` / 1000 on a 1000-step table).
    resolution: points of the fine table over the grid's time span (official: 1000).
    data_var: the data's per-pixel variance in the variance model
      :math:`\alpha^2 v_{\text{data}} + \sigma^2` (official code: 0).
    variant: ``"land"`` (the official code: the step lands at the matched time; DDIM with
      ``eta = 0``) or ``"evaluate"`` (ours: the network is evaluated at the matched
      time; every solver).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxdiff
    >>> from jaxdiff import schedules, solvers
    >>> from jaxdiff.testing import GaussianMixture
    >>> gmm = GaussianMixture(jnp.zeros((1, 16)), 0.5)
    >>> sched = schedules.vp_linear()
    >>> ts = schedules.timesteps(sched, 10)
    >>> x_T = jax.random.normal(jax.random.key(0), (2, 16))
    >>> ts_rule = jaxdiff.time_shift(sched, 20, 0.3)
    >>> out = jaxdiff.sample(gmm.denoiser(sched), solvers.ddim(), x_T, ts, key=0,
    ...                      time_shift=ts_rule)
    >>> out.x.shape, int(out.nfe)
    ((2, 16), 10)

  References:
    Li et al., arXiv:2305.15583 (ICLR 2024); official code Mingxiao-Li/TS-DPM.
  """
  return TimeShift(schedule, window, cutoff, resolution, data_var, variant)
