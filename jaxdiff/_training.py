"""Training-side methods as pure functions: timestep samplers, the denoising loss per
parameterization/weighting/premetric, Smooth Diffusion's regularizer, the difficulty
curriculum, reflow pairs and an EMA of the weights.

Every loss is a hashable frozen dataclass ``loss(model, x0, y, key, *, step=None) ->
scalar``: the signature :func:`jaxdiff.models.train` expects, and a cache key for its
compiled training chunk. ``step`` is passed by :func:`jaxdiff.models.train` to losses that
take it (the curriculum's sampler depends on it; every other sampler ignores it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff._parameterization import PREDICTIONS, _floor, _to_x0
from jaxdiff._validation import as_key, check_choice, check_flag, check_scalar

Array = jax.Array


WEIGHTINGS = ("native", "x0", "eps", "v", "velocity", "min_snr")
PREMETRICS = ("l2", "pseudo_huber")


def _check_schedule(where: str, schedule) -> None:
  if not all(hasattr(schedule, a) for a in ("alpha", "sigma", "logsnr", "t_min", "t_max")):
    raise TypeError(
      f"{where}: schedule must be a jaxdiff schedule (alpha, sigma, logsnr, t_min, t_max), "
      f"got {type(schedule).__name__}"
    )


def _expand(v: Array, ndim: int) -> Array:
  """``(B,) -> (B, 1, ..., 1)`` against an array of rank ``ndim``."""
  return v.reshape(v.shape + (1,) * (ndim - 1))


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


# -- the denoising loss ------------------------------------------------------------------


def _target(x0, eps, alpha, sigma, prediction):
  if prediction == "x0":
    return x0
  if prediction == "eps":
    return eps
  if prediction == "v":
    return alpha * eps - sigma * x0
  return eps - x0  # velocity


def _x0_weight(name, alpha, sigma, gamma):
  """The x0-space weight of a named objective (Kingma & Gao's w(lambda) up to a factor)."""
  s2 = _floor(sigma) ** 2
  if name == "x0":
    return jnp.ones_like(alpha)
  if name == "eps":
    return alpha**2 / s2
  if name == "v":
    return (alpha**2 + sigma**2) ** 2 / s2
  if name == "velocity":
    return (alpha + sigma) ** 2 / s2
  return jnp.minimum(alpha**2 / s2, gamma)  # min_snr


def _inverse_native(prediction, alpha, sigma):
  """``||x0 error||^2 / ||prediction error||^2`` (so the x0-space weight is native * this)."""
  if prediction == "x0":
    return jnp.ones_like(alpha)
  if prediction == "eps":
    return sigma**2 / _floor(alpha) ** 2
  if prediction == "v":
    return sigma**2 / (alpha**2 + sigma**2) ** 2
  return sigma**2 / (alpha + sigma) ** 2  # velocity


def step_variation_penalty(fn: Callable[[Array], Array], eps: Array, *, key, target=None):
  r"""Smooth Diffusion's step-wise variation regularizer on ``x0_hat = fn(eps)``.

  A random output direction :math:`y \sim \mathcal N(0, I/d)` and the vector-Jacobian
  product give the per-example variation length
  :math:`\ell = \lVert J_\epsilon^\top y\rVert`, which equals the ratio
  :math:`\lVert\Delta \hat x_0\rVert / \lVert\Delta\epsilon\rVert` on average over
  directions; the penalty keeps it constant:

  .. math:: \mathcal L_{\text{reg}} = \mathbb E\big[(\ell - a)^2\big]

  with ``a = target``, or, when ``target is None``, the batch mean of :math:`\ell` held
  constant (a stateless stand-in for the paper's running mean, as in StyleGAN2's
  path-length penalty it follows).

  Args:
    fn: ``eps (B, ...) -> x0_hat (B, ...)`` (the network at fixed ``x0``, ``t``, labels).
    eps: the noise the training step drew.
    key: PRNG key of the direction ``y``.
    target: the constant ``a`` (``None``: the batch mean, stop-gradient).

  Returns:
    ``(penalty, lengths)``: the scalar penalty and ``lengths`` ``(B,)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff import training
    >>> pen, ell = training.step_variation_penalty(lambda e: 2.0 * e, jnp.ones((3, 8)), key=0)
    >>> _, ell1 = training.step_variation_penalty(lambda e: e, jnp.ones((3, 8)), key=0)
    >>> bool(jnp.allclose(ell, 2.0 * ell1)), pen.shape  # lengths scale with the gain
    (True, ())

  References:
    Guo et al., "Smooth Diffusion: Crafting Smooth Latent Spaces in Diffusion Models",
    CVPR 2024, arXiv:2312.04410 (Sec. 3.2, eq. 6); Karras et al., "Analyzing and
    Improving the Image Quality of StyleGAN", arXiv:1912.04958 (Sec. 3.2).
  """
  if not callable(fn):
    raise TypeError(f"step_variation_penalty: fn must be callable fn(eps), got {fn!r}")
  eps = jnp.asarray(eps)
  d = math.prod(eps.shape[1:])
  out, vjp = jax.vjp(fn, eps)
  y = jax.random.normal(as_key(key), out.shape, out.dtype) / math.sqrt(d)
  (g,) = vjp(y)
  lengths = jnp.sqrt(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1))
  a = jax.lax.stop_gradient(jnp.mean(lengths)) if target is None else target
  return jnp.mean((lengths - a) ** 2), lengths


@dataclasses.dataclass(frozen=True)
class DenoisingLoss:
  """``loss(model, x0, y, key, *, step=None) -> scalar`` (see :func:`denoising_loss`)."""

  schedule: Any
  prediction: str
  weighting: Any
  timesteps: Any
  premetric: str
  huber_c: float | None
  min_snr_gamma: float
  perceptual: Any
  smoothness: float
  label_dropout: float
  null_label: int
  coupled: bool

  def _scales(self, t, ndim):
    a = _expand(self.schedule.alpha(t), ndim)
    s = _expand(self.schedule.sigma(t), ndim)
    return a, s

  def _weight(self, t, a, s):
    """Per-example factor on the prediction-space error (1 for the native objective)."""
    if self.weighting == "native" or self.weighting == self.prediction:
      return None
    if callable(self.weighting):
      w = self.weighting(self.schedule.logsnr(t))
      w = _expand(jnp.asarray(w, a.dtype), a.ndim)
    else:
      w = _x0_weight(self.weighting, a, s, self.min_snr_gamma)
    return (w * _inverse_native(self.prediction, a, s)).reshape(t.shape)

  def _distance(self, err):
    """Per-example premetric of the prediction error ``(B, ...)`` -> ``(B,)``."""
    flat = err.reshape(err.shape[0], -1)
    if self.premetric == "l2":
      return jnp.mean(flat**2, axis=1)
    c = 0.00054 * math.sqrt(flat.shape[1]) if self.huber_c is None else self.huber_c
    return jnp.sqrt(jnp.sum(flat**2, axis=1) + c**2) - c

  def per_example(self, model, x0, eps, t, y) -> Array:
    """The loss of each example at given noise ``eps`` and times ``t`` ``(B,)``, no label
    dropout and no smoothness term (for measurements: per-group loss, convergence)."""
    return self._terms(model, x0, eps, t, y)[0]

  def _terms(self, model, x0, eps, t, y):
    a, s = self._scales(t, x0.ndim)
    xt = a * x0 + s * eps
    out = model(xt, t, y)
    d = self._distance(out - _target(x0, eps, a, s, self.prediction))
    if self.perceptual is not None:
      x0_hat = _to_x0(out, xt, a, s, self.prediction)
      f_hat, f = self.perceptual(x0_hat), jax.lax.stop_gradient(self.perceptual(x0))
      d = d + jnp.mean((f_hat - f).reshape(f.shape[0], -1) ** 2, axis=1)
    w = self._weight(t, a, s)
    return (d if w is None else w * d), xt, (a, s)

  def __call__(self, model, x0, y, key, *, step=None) -> Array:
    if self.coupled:  # reflow: x0 holds (data, noise) pairs
      x0, eps_pair = x0[:, 0], x0[:, 1]
    keys = jax.random.split(as_key(key), 4 if self.smoothness else 3)
    kt, ke, kd = keys[0], keys[1], keys[2]
    b = x0.shape[0]
    t = self.timesteps(
      kt, (b,), t_min=float(self.schedule.t_min), t_max=float(self.schedule.t_max), step=step
    )
    eps = eps_pair if self.coupled else jax.random.normal(ke, x0.shape, x0.dtype)
    if self.label_dropout:
      y = jnp.where(jax.random.bernoulli(kd, self.label_dropout, (b,)), self.null_label, y)
    if (
      self.premetric == "l2"
      and self.perceptual is None
      and self._weight(t, *self._scales(t, x0.ndim)) is None
    ):
      # The plain objective as one mean over every element (the demo's weights are
      # bit-identical to the hand-written loss this replaced).
      a, s = self._scales(t, x0.ndim)
      out = model(a * x0 + s * eps, t, y)
      loss = jnp.mean((out - _target(x0, eps, a, s, self.prediction)) ** 2)
    else:
      loss = jnp.mean(self._terms(model, x0, eps, t, y)[0])
    if self.smoothness:
      a, s = self._scales(t, x0.ndim)

      def x0_of_eps(e):
        xt = a * x0 + s * e
        return _to_x0(model(xt, t, y), xt, a, s, self.prediction)

      penalty, _ = step_variation_penalty(x0_of_eps, eps, key=keys[3])
      loss = loss + self.smoothness * penalty
    return loss


def denoising_loss(
  schedule,
  *,
  prediction: str = "v",
  weighting: str | Callable[[Array], Array] = "native",
  timesteps=None,
  premetric: str = "l2",
  huber_c: float | None = None,
  min_snr_gamma: float = 5.0,
  perceptual: Callable[[Array], Array] | None = None,
  smoothness: float = 0.0,
  label_dropout: float = 0.0,
  null_label: int = -1,
  coupled: bool = False,
) -> DenoisingLoss:
  r"""The denoising objective for any parameterization, weighting, sampler and premetric.

  .. math::
    t \sim p_T,\ \epsilon \sim \mathcal N(0, I),\ x_t = \alpha_t x_0 + \sigma_t\epsilon,\
    \mathcal L = \mathbb E\Big[\frac{w(\lambda_t)}{w_{\text{pred}}(\lambda_t)}\,
      d\big(f_\theta(x_t, t, \tilde y),\ \text{target}\big)\Big]

  with target :math:`x_0`, :math:`\epsilon`, :math:`v = \alpha\epsilon - \sigma x_0` or
  :math:`u = \epsilon - x_0` for ``prediction`` ``"x0"``, ``"eps"``, ``"v"``,
  ``"velocity"``. Weightings are stated in x0 space (Kingma & Gao): the prediction's
  own squared error is the x0 error times :math:`w_{\text{pred}}` = 1, SNR,
  :math:`(\alpha^2+\sigma^2)^2/\sigma^2`, :math:`(\alpha+\sigma)^2/\sigma^2` for x0, eps,
  v, velocity; ``"native"`` (or the prediction's own name) trains exactly that;
  ``"min_snr"`` is :math:`\min(\mathrm{SNR}, \gamma)` (Hang et al.); a callable
  ``w(logsnr)`` is any x0-space weight.

  The premetric ``d`` is the mean squared error (``"l2"``) or the pseudo-Huber distance
  :math:`\sqrt{\lVert e\rVert^2 + c^2} - c`, ``c = 0.00054\sqrt{D}`` by default (Lee et
  al., from Song & Dhariwal). LPIPS is not available offline: ``perceptual`` (a feature
  map, e.g. the demo classifier's penultimate layer) adds the mean squared feature
  distance of the x0 prediction as the perceptual stand-in. ``smoothness > 0`` adds
  Smooth Diffusion's regularizer (:func:`step_variation_penalty`) with that weight.

  Labels are dropped to ``null_label`` with probability ``label_dropout`` (classifier-free
  guidance training). With ``coupled=True`` the data are reflow pairs ``(B, 2, ...)``:
  ``[:, 0]`` the sample, ``[:, 1]`` its noise (:func:`reflow_pairs`).

  Args:
    schedule: a jaxdiff schedule (``t`` is drawn in ``[t_min, t_max]``).
    prediction: what the network predicts: ``"x0"``, ``"eps"``, ``"v"``, ``"velocity"``.
    weighting: ``"native"``, ``"x0"``, ``"eps"``, ``"v"``, ``"velocity"``, ``"min_snr"``
      or a callable of log-SNR.
    timesteps: a timestep sampler (:func:`uniform` by default, :func:`logit_normal`,
      :func:`u_shaped`, :func:`curriculum`).
    premetric: ``"l2"`` or ``"pseudo_huber"``.
    huber_c: the pseudo-Huber ``c > 0`` (default ``0.00054 sqrt(D)``).
    min_snr_gamma: ``gamma > 0`` of ``"min_snr"``.
    perceptual: optional feature map ``x (B, ...) -> features (B, ...)``.
    smoothness: weight ``>= 0`` of the step-wise variation regularizer.
    label_dropout: probability in ``[0, 1]``.
    null_label: the label of the unconditional model.
    coupled: data are (sample, noise) pairs.

  Returns:
    A :class:`DenoisingLoss`, called ``loss(model, x0, y, key, *, step=None)``; ``model`` is
    any ``net(x, t, y) -> prediction``. ``loss.per_example(model, x0, eps, t, y)`` is the
    deterministic per-example loss (for measurements).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff import schedules, training
    >>> loss = training.denoising_loss(schedules.flow(), prediction="velocity",
    ...                                timesteps=training.u_shaped())
    >>> zero = lambda x, t, y: jnp.zeros_like(x)
    >>> float(loss(zero, jnp.zeros((4, 2)), jnp.zeros(4, int), jax.random.key(0))) > 0
    True

  References:
    Kingma & Gao, "Understanding Diffusion Objectives as the ELBO with Simple Data
    Augmentation", arXiv:2303.00848 (weightings); Salimans & Ho, arXiv:2202.00512 (v);
    Liu et al., "Flow Straight and Fast", arXiv:2209.03003 (velocity); Hang et al.,
    "Efficient Diffusion Training via Min-SNR Weighting Strategy", arXiv:2303.09556;
    Lee, Lin & Fanti, "Improving the Training of Rectified Flows", arXiv:2405.20320
    (pseudo-Huber, Sec. 4.2); Song & Dhariwal, "Improved Techniques for Training
    Consistency Models", arXiv:2310.14189 (the constant ``c``).
  """
  _check_schedule("denoising_loss", schedule)
  check_choice(
    "denoising_loss: prediction", prediction, tuple(p for p in PREDICTIONS if p != "score")
  )
  if not callable(weighting):
    check_choice("denoising_loss: weighting", weighting, WEIGHTINGS)
  timesteps = uniform() if timesteps is None else timesteps
  if not callable(timesteps):
    raise TypeError(
      "denoising_loss: timesteps must be a timestep sampler (training.uniform(), "
      f"logit_normal(), u_shaped(), curriculum(...)), got {timesteps!r}"
    )
  check_choice("denoising_loss: premetric", premetric, PREMETRICS)
  if huber_c is not None:
    huber_c = float(check_scalar("denoising_loss: huber_c", huber_c, lo=0.0, lo_open=True))
  check_scalar("denoising_loss: min_snr_gamma", min_snr_gamma, lo=0.0, lo_open=True)
  if perceptual is not None and not callable(perceptual):
    raise TypeError(f"denoising_loss: perceptual must be a feature map or None, got {perceptual!r}")
  check_scalar("denoising_loss: smoothness", smoothness, lo=0.0)
  check_scalar("denoising_loss: label_dropout", label_dropout, lo=0.0, hi=1.0)
  check_scalar("denoising_loss: null_label", null_label, integer=True)
  check_flag("denoising_loss: coupled", coupled)
  return DenoisingLoss(
    schedule,
    prediction,
    weighting,
    timesteps,
    premetric,
    huber_c,
    float(min_snr_gamma),
    perceptual,
    float(smoothness),
    float(label_dropout),
    int(null_label),
    bool(coupled),
  )


# -- reflow -----------------------------------------------------------------------------


def reflow_pairs(denoise, noise, *, cond=None, steps: int = 20, solver=None, key=0) -> Array:
  r"""(sample, noise) pairs of a trained flow: the coupling a 2-rectified flow learns.

  .. math:: z \sim \mathcal N(0, I),\quad x = \mathrm{ODE}_{1 \to 0}[v_\theta](z),\quad
    \text{pairs} = (x, z)

  The next rectified flow is trained on the straight interpolation ``x_t = (1 - t) x + t
  z`` of these pairs (``denoising_loss(..., coupled=True)``). Lee et al. show one round of
  reflow suffices for near-straight paths; they initialise it from the 1-rectified flow.

  Args:
    denoise: the 1-rectified flow as a denoiser (``jaxdiff.from_flow(net, schedules.flow())``).
    noise: ``z`` ``(N, ...)``.
    cond: labels (``None``, a scalar or ``(N,)``).
    steps: solver steps of the flow ``schedules.flow()`` grid from ``t = 1`` to ``0``.
    solver: a jaxdiff solver (default Euler, the flow's own discretisation).
    key: PRNG key (used only by stochastic solvers).

  Returns:
    ``(N, 2, ...)``: ``[:, 0]`` the samples, ``[:, 1]`` the noise.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import schedules, training
    >>> from jaxdiff.testing import GaussianMixture
    >>> gmm = GaussianMixture(jnp.array([[2.0, 0.0]]), 0.1)
    >>> pairs = training.reflow_pairs(gmm.denoiser(schedules.flow()), jnp.zeros((3, 2)), steps=4)
    >>> pairs.shape
    (3, 2, 2)

  References:
    Liu et al., "Flow Straight and Fast", arXiv:2209.03003 (Alg. 1, reflow); Lee, Lin &
    Fanti, "Improving the Training of Rectified Flows", arXiv:2405.20320 (Sec. 3).
  """
  from jaxdiff import _sampling, _schedules, solvers

  steps = check_scalar("reflow_pairs: steps", steps, lo=1, integer=True, static=True)
  noise = jnp.asarray(noise)
  if not jnp.issubdtype(noise.dtype, jnp.floating) or noise.ndim < 2:
    raise TypeError(f"reflow_pairs: noise must be a floating (N, ...) array, got {noise.dtype}")
  solver = solvers.euler() if solver is None else solver
  ts = _schedules.timesteps(_schedules.flow(), steps)
  x = _sampling.sample(denoise, solver, noise, ts, key=key, cond=cond).x
  return jnp.stack([x, noise], axis=1)


# -- EMA of the weights ------------------------------------------------------------------


class WeightEMAState(NamedTuple):
  """State of :func:`weight_ema`: the step count and the running average ``ema``."""

  count: Array
  ema: Any


def weight_ema(decay: float = 0.999) -> optax.GradientTransformation:
  r"""A bias-corrected exponential moving average of the weights, kept in the optimizer state.

  Chain it last (``optax.chain(opt, weight_ema(0.999))``): it passes the updates through
  and tracks the parameters :math:`\theta_k = \theta_{k-1} + \Delta_k` they produce,

  .. math:: m_k = \beta m_{k-1} + (1 - \beta)\theta_k,\ m_0 = 0,\qquad
    \bar\theta_k = \frac{m_k}{1 - \beta^k}
    = \bar\theta_{k-1} + \frac{1 - \beta}{1 - \beta^k}(\theta_k - \bar\theta_{k-1}),

  stored as :math:`\bar\theta_k` (the second form; :math:`\bar\theta_0 = \theta_0`), so the
  average is a proper weighted mean of the visited weights from the first step on (Adam's
  bias correction: without it, ``beta = 0.999`` would keep ``e^{-1.5} = 22%`` of the
  initial weights after 1500 steps). It lives in checkpoints with the rest of the state and
  restores bit for bit. Read it with :func:`ema_params`. (optax's ``ema`` averages
  *updates*, not weights.)

  Args:
    decay: ``beta`` in ``[0, 1)``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxdiff import training
    >>> tx = optax.chain(optax.sgd(1.0), training.weight_ema(0.5))
    >>> p = {"w": jnp.zeros(2)}
    >>> s = tx.init(p)
    >>> u, s = tx.update({"w": -jnp.ones(2)}, s, p)
    >>> training.ema_params(s)["w"].tolist()  # one step: the average is the new weight
    [1.0, 1.0]

  References:
    Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging" (1992);
    Kingma & Ba, "Adam", arXiv:1412.6980 (bias correction, Sec. 3); Karras et al.,
    "Analyzing and Improving the Training Dynamics of Diffusion Models", arXiv:2312.02696
    (EMA in diffusion training).
  """
  decay = check_scalar("weight_ema: decay", decay, lo=0.0, hi=1.0, hi_open=True)

  def init(params):
    return WeightEMAState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.array, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("weight_ema: update needs params (optax passes them in apply/update)")
    count = optax.safe_int32_increment(state.count)
    rate = (1.0 - decay) / (1.0 - decay ** count.astype(jnp.float32))
    new = optax.apply_updates(params, updates)
    ema = jax.tree.map(
      lambda e, p: e + (rate * (p.astype(e.dtype) - e)).astype(e.dtype), state.ema, new
    )
    return updates, WeightEMAState(count, ema)

  return optax.GradientTransformation(init, update)


def ema_params(opt_state) -> Any:
  """The averaged parameters held by a :func:`weight_ema` anywhere in ``opt_state``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxdiff import training
    >>> s = optax.chain(optax.adam(1e-3), training.weight_ema()).init({"w": jnp.ones(1)})
    >>> training.ema_params(s)["w"].tolist()
    [1.0]
  """
  found = [
    s
    for s in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, WeightEMAState))
    if isinstance(s, WeightEMAState)
  ]
  if len(found) != 1:
    raise ValueError(
      f"ema_params: opt_state must hold exactly one weight_ema state, found {len(found)}"
    )
  return found[0].ema
