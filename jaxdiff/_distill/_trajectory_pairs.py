"""Data-free consistency distillation from the teacher's own trajectories (TBCM).

Tang et al., "Image-Free Timestep Distillation via Continuous-Time Consistency with
Trajectory-Sampled Pairs", arXiv:2511.20410 (TBCM, the Trajectory-Backward Consistency
Model; code github.com/hustvl/TBCM). The training states of continuous-time consistency
distillation are not noised training images: the teacher samples from pure noise with its
own few-step solver, and the states it passes through, with their times, are the student's
``(x_t, t)`` (:func:`trajectory_pairs`). The student learns the continuous-time consistency
objective of sCM (Lu & Song, arXiv:2410.11081) on those states
(:func:`trajectory_consistency_loss`).

What was read: the abstract and introduction of the paper (the method section and the
official code could not be retrieved here). So the pair sampler's two spaces and the loss's
two forms are documented, switchable ``variant=`` options: ``"trajectory"`` (the teacher's
own states: the paper's "generation space", its proposal) and ``"renoise"`` (the teacher's
final sample re-noised by the forward process: the "diffusion space" the paper compares
against); ``"continuous"`` (sCM's tangent objective, in data-prediction form) and
``"discrete"`` (consistency distillation between neighbouring trajectory states).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff._grids import Grid
from jaxdiff._parameterization import eps_from_x0
from jaxdiff._sampling import sample
from jaxdiff._solvers._ddim import DDIM
from jaxdiff._validation import as_key, check_choice, check_finite, check_output, check_scalar

Array = jax.Array

PAIR_VARIANTS = ("trajectory", "renoise")
LOSS_VARIANTS = ("continuous", "discrete", "endpoint")
_DDIM = DDIM(0.0)  # the default teacher sampler: deterministic DDIM


class TrajectoryPairs(NamedTuple):
  """Training states drawn from the teacher's sampling trajectories.

  Attributes:
    x_t: ``(B, ...)`` states at times ``t``.
    t: ``(B,)`` their times (schedule units).
    x_s: ``(B, ...)`` the teacher's next state on the same trajectory (``"trajectory"``)
      or the same re-noised sample at ``s`` (``"renoise"``), at the less noisy time ``s``.
    s: ``(B,)`` the next grid time.
    x_0: ``(B, ...)`` the teacher's final sample of each trajectory.
  """

  x_t: Array
  t: Array
  x_s: Array
  s: Array
  x_0: Array


def trajectory_pairs(
  denoise,
  x_T: Array,
  ts: Grid,
  *,
  key: Any,
  cond: Any = None,
  solver: Any = _DDIM,
  variant: str = "trajectory",
) -> TrajectoryPairs:
  r"""Samples ``(x_t, t)`` training states from the teacher's own trajectories: no data.

  The teacher ``denoise`` runs its sampler ``solver`` over the grid ``ts``
  (:math:`t_0 > t_1 > \dots > t_N`) from the noise ``x_T``, one trajectory
  :math:`x_{t_0}, \dots, x_{t_N}` per row. Each row draws one step index
  :math:`i \sim \mathcal U\{0, \dots, N - 1\}` (a state with :math:`\sigma_{t_i} > 0`) and
  returns (TBCM, Tang et al. 2025, Sec. 1 and Fig. 2: latents extracted from the teacher's
  generation trajectory replace VAE-encoded training images)

  .. math::
    \text{``trajectory''}:\ (x_t, t, x_s, s) = (x_{t_i}, t_i, x_{t_{i+1}}, t_{i+1}),
    \qquad
    \text{``renoise''}:\ x_t = \alpha_{t_i} x_{t_N} + \sigma_{t_i}\epsilon,\
    x_s = \alpha_{t_{i+1}} x_{t_N} + \sigma_{t_{i+1}}\epsilon,

  the second being the forward process applied to the teacher's final samples (the
  "diffusion space" the paper contrasts with its "generation space"; one
  :math:`\epsilon \sim \mathcal N(0, I)` per row).

  Args:
    denoise: the teacher ``denoise(x, t, cond) -> x0_hat`` (the package's denoiser
      protocol; an exact :meth:`jaxdiff.testing.GaussianMixture.denoiser` in tests).
    x_T: ``(B, ...)`` starting noise, one trajectory per row.
    ts: the teacher's grid (:func:`jaxdiff.timesteps`), at least one step.
    key: PRNG key (typed, raw or an int seed) for the step indices, ``"renoise"``'s noise
      and a stochastic solver's noise.
    cond: labels passed to ``denoise``.
    solver: the teacher's sampler (:mod:`jaxdiff.solvers`); default deterministic DDIM,
      whose states lie on the probability-flow trajectory up to its discretisation error.
    variant: ``"trajectory"`` (default) or ``"renoise"``, see above.

  Returns:
    A :class:`TrajectoryPairs` ``(x_t, t, x_s, s, x_0)``.

  Raises:
    ValueError: an unknown ``variant``; a grid without a step; non-finite concrete
      ``x_T``; a denoiser whose output is not shaped like ``x_T``.
    TypeError: a key that is not an int seed or a PRNG key.

  Example:
    >>> import jax.numpy as jnp
    >>> import jaxdiff
    >>> from jaxdiff import distill, schedules
    >>> from jaxdiff.testing import GaussianMixture
    >>> sched = schedules.flow()
    >>> teacher = GaussianMixture(jnp.array([[-2.0], [2.0]]), 0.1).denoiser(sched)
    >>> ts = jaxdiff.timesteps(sched, 8)
    >>> pairs = distill.trajectory_pairs(teacher, jnp.ones((4, 1)), ts, key=0)
    >>> pairs.x_t.shape, bool(jnp.all(pairs.s < pairs.t))
    ((4, 1), True)

  References:
    Tang et al., "Image-Free Timestep Distillation via Continuous-Time Consistency with
    Trajectory-Sampled Pairs", arXiv:2511.20410 (2025).
  """
  check_choice("variant", variant, PAIR_VARIANTS)
  x_T = jnp.asarray(x_T)
  if x_T.ndim < 1 or x_T.shape[0] < 1:
    raise ValueError(f"x_T must have shape (B, ...) with B >= 1, got {x_T.shape}")
  check_finite("x_T", x_T)
  n = ts.t.shape[0] - 1
  if n < 1:
    raise ValueError(f"ts must have at least one step, got {ts.t.shape[0]} time(s)")
  k_idx, k_noise, k_solver = jax.random.split(as_key(key), 3)
  traj = sample(denoise, solver, x_T, ts, key=k_solver, cond=cond, return_trajectory=True)
  states = traj.trajectory  # (N + 1, B, ...)
  b = x_T.shape[0]
  # States with sigma > 0 only: the last one may be the sigma = 0 end point.
  num_valid = jnp.sum(ts.sigma[:-1] > 0)
  u = jax.random.uniform(k_idx, (b,), dtype=ts.t.dtype)
  i = jnp.minimum(jnp.floor(u * num_valid).astype(jnp.int32), num_valid - 1)
  rows = jnp.arange(b)
  t, s = ts.t[i], ts.t[i + 1]
  x_0 = states[-1]
  if variant == "trajectory":
    x_t, x_s = states[i, rows], states[i + 1, rows]
  else:
    eps = jax.random.normal(k_noise, x_0.shape, x_0.dtype)
    bshape = (b,) + (1,) * (x_0.ndim - 1)
    at, st = ts.alpha[i].reshape(bshape), ts.sigma[i].reshape(bshape)
    as_, ss = ts.alpha[i + 1].reshape(bshape), ts.sigma[i + 1].reshape(bshape)
    x_t = (at * x_0 + st * eps).astype(x_0.dtype)
    x_s = (as_ * x_0 + ss * eps).astype(x_0.dtype)
  return TrajectoryPairs(x_t, t, x_s, s, x_0)


def teacher_velocity(denoise, schedule, x: Array, t: Array, cond: Any = None) -> Array:
  r"""The teacher's probability-flow velocity :math:`dx_t/dt` at ``(x, t)``.

  .. math::
    \frac{dx_t}{dt} = \dot\alpha_t D(x_t, t) + \dot\sigma_t\,\frac{x_t - \alpha_t D(x_t, t)}
      {\sigma_t},

  the vector field of :func:`jaxdiff.testing.probability_flow_reference`, with
  :math:`\dot\alpha, \dot\sigma` by forward-mode autodiff of the schedule.

  Args:
    denoise: the teacher ``denoise(x, t, cond) -> x0_hat``.
    schedule: the schedule ``t`` is measured in.
    x: ``(B, ...)`` states.
    t: ``(B,)`` times with :math:`\sigma_t > 0` (at :math:`\sigma_t = 0` the noise term is 0).
    cond: labels passed to ``denoise``.

  Returns:
    The velocity, shaped like ``x``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import distill, schedules
    >>> from jaxdiff.testing import GaussianMixture
    >>> sched = schedules.flow()  # x_t = (1 - t) x0 + t eps: velocity eps - x0
    >>> teacher = GaussianMixture(jnp.array([[1.0]]), 1e-12).denoiser(sched)
    >>> distill.teacher_velocity(teacher, sched, jnp.array([[0.5]]), jnp.array([0.5]))
    Array([[-1.]], dtype=float32)

  References:
    Song et al., "Score-Based Generative Modeling through Stochastic Differential
    Equations", arXiv:2011.13456 (Eq. 13).
  """
  ones = jnp.ones_like(t)
  a, da = jax.jvp(schedule.alpha, (t,), (ones,))
  s, ds = jax.jvp(schedule.sigma, (t,), (ones,))
  x0 = denoise(x, t, cond)
  check_output(x0, like=x, name="teacher(x, t, cond)", where="trajectory_consistency_loss")
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  a, da, s, ds = (v.reshape(shape).astype(x.dtype) for v in (a, da, s, ds))
  return da * x0 + ds * eps_from_x0(x, x0, a, s)


def trajectory_consistency_loss(
  student,
  params: Any,
  pairs: TrajectoryPairs,
  *,
  teacher,
  schedule,
  cond: Any = None,
  variant: str = "continuous",
  tangent_normalization: float | None = None,
) -> Array:
  r"""The consistency-distillation loss of TBCM on trajectory-sampled states.

  The student ``student(params, x, t, cond) -> x0_hat`` is a consistency function
  :math:`f_\theta(x_t, t)` (data prediction, with :math:`f_\theta(x, t_{\min}) = x`
  built in by its parameterization). With :math:`\theta^-` the stop-gradient copy:

  ``"continuous"`` (sCM, Lu & Song 2024, Eq. 8 and Sec. 4: the continuous-time limit of
  consistency distillation, in data-prediction form with unit weighting):

  .. math::
    g = \frac{d f_{\theta^-}(x_t, t)}{dt}
      = \partial_x f_{\theta^-}\,\frac{dx_t}{dt} + \partial_t f_{\theta^-},\qquad
    \mathcal L(\theta) = \operatorname{mean}\big\|f_\theta(x_t, t)
      - \operatorname{sg}\big(f_{\theta^-}(x_t, t) - g\big)\big\|^2,

  with :math:`dx_t/dt` the teacher's probability-flow velocity (:func:`teacher_velocity`)
  and the tangent :math:`g` one Jacobian-vector product. Its value at
  :math:`\theta = \theta^-` is :math:`\operatorname{mean}\|g\|^2`, zero exactly when
  :math:`f` is constant along the teacher's flow (the true flow map); its gradient is
  :math:`2\,\partial_\theta f^\top g`, the continuous-time consistency gradient.
  ``tangent_normalization=c`` replaces :math:`g` by :math:`g / (\|g\| + c)` per row
  (sCM's tangent normalisation, :math:`c = 0.1` there).

  ``"discrete"`` (consistency distillation between neighbouring trajectory states):
  :math:`\mathcal L = \operatorname{mean}\|f_\theta(x_t, t)
  - \operatorname{sg} f_{\theta^-}(x_s, s)\|^2`, with ``(x_s, s)`` the teacher's next
  state from :func:`trajectory_pairs`.

  Args:
    student: ``student(params, x, t, cond) -> x0_hat``, batch first, ``t`` of shape
      ``(B,)``; differentiable in ``params``, ``x`` and ``t``.
    params: the student's parameters (any pytree).
    pairs: the states, a :class:`TrajectoryPairs` from :func:`trajectory_pairs`.
    teacher: the teacher ``denoise(x, t, cond) -> x0_hat`` (for the velocity).
    schedule: the schedule the teacher and the grid are measured in.
    cond: labels passed to the student and the teacher.
    variant: ``"continuous"`` (default), ``"discrete"`` or ``"endpoint"``.
    tangent_normalization: ``c > 0`` of the tangent normalisation, or ``None`` (none).
      Only for ``"continuous"``.

  Returns:
    The scalar loss (mean over rows and features).

  Raises:
    ValueError: an unknown ``variant``; ``tangent_normalization`` not positive; non-finite
      concrete ``pairs.x_t``; ``pairs.t`` not one time per row; a student or teacher whose
      output is not shaped like ``x_t``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff import distill, schedules
    >>> from jaxdiff.testing import GaussianMixture
    >>> sched = schedules.flow()
    >>> teacher = GaussianMixture(jnp.array([[0.0]]), 0.25).denoiser(sched)
    >>> def student(p, x, t, cond):  # the exact flow map of N(0, 0.25) under flow
    ...   return p * x / jnp.sqrt((1 - t) ** 2 * 0.25 + t**2)[:, None]
    >>> x = jnp.array([[0.3], [-1.0]])
    >>> pairs = distill.TrajectoryPairs(x, jnp.array([0.5, 0.8]), x, jnp.zeros(2), x)
    >>> loss = distill.trajectory_consistency_loss(student, 0.5, pairs, teacher=teacher,
    ...                                            schedule=sched)
    >>> bool(loss < 1e-12)  # zero up to float32 rounding: f is constant along the flow
    True

  References:
    Tang et al., "Image-Free Timestep Distillation via Continuous-Time Consistency with
    Trajectory-Sampled Pairs", arXiv:2511.20410 (2025); Lu & Song, "Simplifying,
    Stabilizing and Scaling Continuous-Time Consistency Models", arXiv:2410.11081 (Eq. 8,
    Sec. 4.2); Song et al., "Consistency Models", arXiv:2303.01469 (Thm. 5).
  """
  check_choice("variant", variant, LOSS_VARIANTS)
  if tangent_normalization is not None:
    check_scalar("tangent_normalization", tangent_normalization, lo=0.0, lo_open=True)
  x_t, t = jnp.asarray(pairs.x_t), jnp.asarray(pairs.t)
  if t.shape != (x_t.shape[0],):
    raise ValueError(f"pairs.t must have shape ({x_t.shape[0]},) (one time per row), got {t.shape}")
  check_finite("pairs.x_t", x_t)
  where = "trajectory_consistency_loss"

  def f(p, x, tt):
    out = student(p, x, tt, cond)
    check_output(out, like=x, name="student(params, x, t, cond)", where=where)
    return out

  if variant == "endpoint":
    x_0 = jnp.asarray(pairs.x_0)
    if x_0.shape != x_t.shape:
      raise ValueError(f"pairs.x_0 must have the shape of pairs.x_t {x_t.shape}, got {x_0.shape}")
    return jnp.mean((f(params, x_t, t) - jax.lax.stop_gradient(x_0)) ** 2)
  frozen = jax.lax.stop_gradient(params)
  if variant == "discrete":
    target = f(frozen, jnp.asarray(pairs.x_s), jnp.asarray(pairs.s))
  else:
    v = jax.lax.stop_gradient(teacher_velocity(teacher, schedule, x_t, t, cond))
    f_minus, g = jax.jvp(lambda x, tt: f(frozen, x, tt), (x_t, t), (v, jnp.ones_like(t)))
    if tangent_normalization is not None:
      axes = tuple(range(1, g.ndim))
      norm = jnp.sqrt(jnp.sum(g**2, axis=axes, keepdims=True))
      g = g / (norm + tangent_normalization)
    target = f_minus - g
  target = jax.lax.stop_gradient(target)
  return jnp.mean((f(params, x_t, t) - target) ** 2)
