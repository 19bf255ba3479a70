"""Timestep samplers of the denoising loss: uniform, logit-normal (SD3), U-shaped
(2-rectified flow++) and Kim et al.'s easy-to-hard curriculum.

A sampler is a hashable frozen dataclass called ``sampler(key, shape, *, t_min, t_max,
step=None) -> t``; ``step`` is the training step (only the curriculum reads it).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._validation import as_key, check_scalar

Array = jax.Array


def _check_schedule(where: str, schedule) -> None:
  if not all(hasattr(schedule, a) for a in ("alpha", "sigma", "logsnr", "t_min", "t_max")):
    raise TypeError(
      f"{where}: schedule must be a jaxdiff schedule (alpha, sigma, logsnr, t_min, t_max), "
      f"got {type(schedule).__name__}"
    )


# -- timestep samplers -------------------------------------------------------------------
# A sampler draws u in [0, 1] from its density p(u) and maps it to t = t_min + u (t_max -
# t_min). ``pdf``/``cdf`` are those of u (NumPy, float64), for tests and plots.


@dataclasses.dataclass(frozen=True)
class Uniform:
  """``u ~ U[0, 1]``: the DDPM / flow-matching default (see :func:`uniform`)."""

  def __call__(self, key, shape, *, t_min: float = 0.0, t_max: float = 1.0, step=None) -> Array:
    # jax.random.uniform's own affine map, so the demo's weights stay bit-identical.
    return jax.random.uniform(as_key(key), shape, minval=t_min, maxval=t_max)

  def pdf(self, u):
    u = np.asarray(u, np.float64)
    return np.where((u >= 0) & (u <= 1), 1.0, 0.0)

  def cdf(self, u):
    return np.clip(np.asarray(u, np.float64), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class LogitNormal:
  """``u = sigmoid(loc + scale n)``, ``n ~ N(0, 1)`` (see :func:`logit_normal`)."""

  loc: float = 0.0
  scale: float = 1.0

  def __call__(self, key, shape, *, t_min: float = 0.0, t_max: float = 1.0, step=None) -> Array:
    u = jax.nn.sigmoid(self.loc + self.scale * jax.random.normal(as_key(key), shape))
    return t_min + (t_max - t_min) * u

  def _z(self, u):
    u = np.clip(np.asarray(u, np.float64), 1e-300, 1 - 1e-16)
    return (np.log(u) - np.log1p(-u) - self.loc) / self.scale, u

  def pdf(self, u):
    z, uc = self._z(u)
    return np.exp(-0.5 * z**2) / (self.scale * math.sqrt(2 * math.pi) * uc * (1 - uc))

  def cdf(self, u):
    from scipy.special import ndtr

    return ndtr(self._z(u)[0])


@dataclasses.dataclass(frozen=True)
class UShaped:
  """``p(u) ∝ cosh(a (u - 1/2))`` on ``[0, 1]`` (see :func:`u_shaped`)."""

  a: float = 4.0

  def __call__(self, key, shape, *, t_min: float = 0.0, t_max: float = 1.0, step=None) -> Array:
    # Inverse CDF: sinh(a (u - 1/2)) = (2 v - 1) sinh(a / 2), v ~ U[0, 1].
    v = jax.random.uniform(as_key(key), shape)
    u = 0.5 + jnp.arcsinh((2.0 * v - 1.0) * math.sinh(0.5 * self.a)) / self.a
    return t_min + (t_max - t_min) * jnp.clip(u, 0.0, 1.0)

  def pdf(self, u):
    u = np.asarray(u, np.float64)
    p = self.a * np.cosh(self.a * (u - 0.5)) / (2.0 * math.sinh(0.5 * self.a))
    return np.where((u >= 0) & (u <= 1), p, 0.0)

  def cdf(self, u):
    u = np.clip(np.asarray(u, np.float64), 0.0, 1.0)
    s = math.sinh(0.5 * self.a)
    return (np.sinh(self.a * (u - 0.5)) + s) / (2.0 * s)


def uniform() -> Uniform:
  r"""The uniform timestep sampler: :math:`t \sim \mathcal U[t_{\min}, t_{\max}]`.

  A sampler is called ``sampler(key, shape, *, t_min, t_max, step=None) -> t``; its
  ``pdf``/``cdf`` describe ``u = (t - t_min) / (t_max - t_min)``.

  Example:
    >>> import jax
    >>> from jaxdiff import training
    >>> t = training.uniform()(jax.random.key(0), (4,), t_min=0.0, t_max=1.0)
    >>> t.shape, bool((t >= 0).all() & (t <= 1).all())
    ((4,), True)

  References:
    Ho et al., "Denoising Diffusion Probabilistic Models", arXiv:2006.11239 (Alg. 1).
  """
  return Uniform()


def logit_normal(loc: float = 0.0, scale: float = 1.0) -> LogitNormal:
  r"""The logit-normal timestep sampler of Stable Diffusion 3.

  .. math:: u = \mathrm{sigmoid}(m + s\,n),\ n \sim \mathcal N(0, 1),\qquad
    p(u) = \frac{1}{s\sqrt{2\pi}}\frac{1}{u(1-u)}
      \exp\Big(-\frac{(\mathrm{logit}(u) - m)^2}{2 s^2}\Big)

  Args:
    loc: ``m``, finite (``m > 0`` favours noisier times).
    scale: ``s > 0``.

  Example:
    >>> import jax
    >>> from jaxdiff import training
    >>> training.logit_normal(0.0, 1.0)(jax.random.key(0), (3,)).shape
    (3,)

  References:
    Esser et al., "Scaling Rectified Flow Transformers for High-Resolution Image
    Synthesis", arXiv:2403.03206 (Sec. 3.1, eq. 19).
  """
  loc = check_scalar("logit_normal: loc", loc, static=True)
  scale = check_scalar("logit_normal: scale", scale, lo=0.0, lo_open=True, static=True)
  return LogitNormal(float(loc), float(scale))


def u_shaped(a: float = 4.0) -> UShaped:
  r"""The U-shaped timestep sampler of Lee et al. (2-rectified flow++).

  .. math:: p(u) = \frac{a \cosh(a(u - \tfrac12))}{2\sinh(a/2)}\ \text{on}\ [0, 1],\qquad
    u = \tfrac12 + \tfrac1a\,\mathrm{asinh}\big((2v - 1)\sinh(a/2)\big),\ v\sim\mathcal U[0,1]

  It puts more weight at both ends, where the reflow loss is largest (the paper's Fig. 3;
  their code samples ``p(u) ∝ e^{au}`` and mirrors half of the draws, which is this
  density). ``a -> 0`` is the uniform sampler.

  Args:
    a: concentration ``a > 0`` (the paper uses 4).

  Example:
    >>> import jax
    >>> from jaxdiff import training
    >>> s = training.u_shaped(4.0)
    >>> round(float(s.pdf(0.0) / s.pdf(0.5)), 2)  # cosh(2): the ends vs the middle
    3.76

  References:
    Lee, Lin & Fanti, "Improving the Training of Rectified Flows", NeurIPS 2024,
    arXiv:2405.20320 (Sec. 4.1).
  """
  a = check_scalar("u_shaped: a", a, lo=0.0, lo_open=True, hi=700.0, static=True)
  return UShaped(float(a))


# -- curriculum -------------------------------------------------------------------------


def curriculum_groups(schedule, num_groups: int, *, num_timesteps: int = 1000) -> np.ndarray:
  r"""Clusters ``num_timesteps`` training times into ``num_groups`` groups by log-SNR.

  The times are the cell centres :math:`t_i = t_{\min} + (i + \tfrac12)(t_{\max} -
  t_{\min})/T`. Group boundaries are equally spaced in log-SNR between the first and the
  last centre (the paper clusters "by SNR"; equal log-SNR width is our reading, stated
  here); each group is an interval of ``t``, and every group must hold at least one of
  the ``T`` times.

  Args:
    schedule: a jaxdiff schedule.
    num_groups: ``N >= 1``, at most ``num_timesteps``.
    num_timesteps: ``T``, the discretisation of the time axis (the paper's 1000).

  Returns:
    ``(N + 1,)`` float64 boundaries in ``t``, ascending from ``t_min`` to ``t_max``: group
    ``k`` is ``[b_k, b_{k+1}]``; group ``N - 1`` (most noise) is the easiest.

  Example:
    >>> from jaxdiff import schedules, training
    >>> b = training.curriculum_groups(schedules.flow(), 4)
    >>> b.shape, float(b[0]), float(b[-1])
    ((5,), 0.0, 1.0)

  References:
    Kim et al., "Denoising Task Difficulty-based Curriculum for Training Diffusion
    Models", ICLR 2025, arXiv:2403.10348 (Sec. 4).
  """
  _check_schedule("curriculum_groups", schedule)
  num_timesteps = check_scalar(
    "curriculum_groups: num_timesteps", num_timesteps, lo=1, integer=True, static=True
  )
  num_groups = check_scalar(
    "curriculum_groups: num_groups", num_groups, lo=1, integer=True, static=True
  )
  if num_groups > num_timesteps:
    raise ValueError(
      f"curriculum_groups: num_groups ({num_groups}) must not exceed num_timesteps "
      f"({num_timesteps}): a group needs at least one timestep"
    )
  lo, hi = float(schedule.t_min), float(schedule.t_max)
  centres = lo + (np.arange(num_timesteps) + 0.5) * (hi - lo) / num_timesteps
  with jax.enable_x64(True):
    lam = np.asarray(schedule.logsnr(jnp.asarray(centres, jnp.float64)), np.float64)
  edges = np.linspace(lam[0], lam[-1], num_groups + 1)[1:-1]  # logsnr decreases with t
  # first centre index of groups 1..N-1: logsnr falls below the edge
  first = np.searchsorted(-lam, -edges, side="right")
  counts = np.diff(np.concatenate([[0], first, [num_timesteps]]))
  if num_groups > 1 and counts.min() < 1:
    raise ValueError(
      f"curriculum_groups: with num_timesteps={num_timesteps}, {int((counts < 1).sum())} of "
      f"the {num_groups} equal log-SNR groups hold no timestep; use fewer groups or more "
      "timesteps"
    )
  inner = lo + first * (hi - lo) / num_timesteps  # cell edges between groups
  return np.concatenate([[lo], inner, [hi]]).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class Curriculum:
  """Easy-to-hard timestep sampler (see :func:`curriculum`)."""

  boundaries: tuple[float, ...]
  stage_steps: int

  @property
  def num_groups(self) -> int:
    return len(self.boundaries) - 1

  def stage(self, step) -> Array:
    """Index ``k`` of the stage at ``step``: groups ``N-1-k .. N-1`` are open."""
    return jnp.minimum(jnp.asarray(step) // self.stage_steps, self.num_groups - 1)

  def __call__(self, key, shape, *, t_min: float = 0.0, t_max: float = 1.0, step=None) -> Array:
    if step is None:
      raise TypeError(
        "curriculum sampler: needs the training step (train passes step= to losses that take "
        "it; call loss(model, x0, y, key, step=s))"
      )
    b = jnp.asarray(self.boundaries, jnp.float32)
    low = b[self.num_groups - 1 - self.stage(step)]
    return jax.random.uniform(as_key(key), shape, minval=low, maxval=b[-1])

  def pdf(self, u):  # after the last stage: the full interval
    return Uniform().pdf(u)

  def cdf(self, u):
    return Uniform().cdf(u)


def curriculum(boundaries, *, stage_steps: int) -> Curriculum:
  r"""The easy-to-hard curriculum of Kim et al. as a step-dependent timestep sampler.

  With groups :math:`C_0, \dots, C_{N-1}` from :func:`curriculum_groups` (``C_{N-1}``: most
  noise, the easiest task by the paper's observations), stage ``k`` draws ``t`` uniformly
  from :math:`C_{N-1-k} \cup \dots \cup C_{N-1}`; stage ``k`` lasts ``stage_steps`` steps,
  and after the last stage every group is open (uniform over the whole range):

  .. math:: k(s) = \min(\lfloor s / \tau \rfloor, N - 1),\quad
    t \sim \mathcal U[b_{N-1-k(s)},\ t_{\max}]

  The paper's pacing advances when the training loss has converged or after a maximum
  patience ``tau``; this sampler uses the maximum patience only (a stateless pacing: the
  adaptive trigger would need the loss history inside the training step).

  Args:
    boundaries: ``(N + 1,)`` ascending group boundaries in ``t``.
    stage_steps: ``tau >= 1``, training steps per stage.

  Example:
    >>> import jax
    >>> from jaxdiff import schedules, training
    >>> c = training.curriculum(training.curriculum_groups(schedules.flow(), 4), stage_steps=10)
    >>> t = c(jax.random.key(0), (100,), step=0)
    >>> bool(t.min() >= 0.5)  # only the noisiest group at first
    True

  References:
    Kim et al., "Denoising Task Difficulty-based Curriculum for Training Diffusion
    Models", ICLR 2025, arXiv:2403.10348 (Sec. 4, pacing function).
  """
  stage_steps = check_scalar(
    "curriculum: stage_steps", stage_steps, lo=1, integer=True, static=True
  )
  b = np.asarray(boundaries, np.float64)
  if b.ndim != 1 or b.size < 2 or not np.all(np.isfinite(b)) or not np.all(np.diff(b) > 0):
    raise ValueError(
      "curriculum: boundaries must be a strictly increasing 1-D array of at least 2 finite "
      f"times (from curriculum_groups), got {b!r}"
    )
  return Curriculum(tuple(float(v) for v in b), int(stage_steps))
