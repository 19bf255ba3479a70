"""Diff-Instruct*: reward maximisation of a one-step generator under a score-based divergence.

Luo, Zhang, Zhang & Geng, "Diff-Instruct*: Towards Human-Preferred One-step Text-to-image
Generative Models", arXiv:2410.20898. A one-step generator ``x = g_theta(z)`` is tuned,
without image data, to maximise a reward while its noised distributions ``p_theta,t`` stay
close to a frozen reference diffusion's ``q_t`` in a *score-based* divergence

.. math::
  \\mathcal D(\\theta) = \\int w(t)\\,\\mathbb E_{x_t\\sim p_{\\theta,t}}
    \\mathbf d\\big(s_{p_\\theta,t}(x_t) - s_{q,t}(x_t)\\big)\\,dt,

with ``d`` the pseudo-Huber distance (the paper's choice) or the squared L2 norm, instead
of the KL divergence of Diff-Instruct / Diff-Instruct++. The generator's score
``s_p`` is not known; an online ("fake") score trained on generator samples stands in for
it (its loss is :func:`jaxdiff.distill.fake_score_loss`), and the gradient of the
divergence is computed by the tractable loss of Score Implicit Matching (SIM: Luo, Huang,
Geng, Kolter & Qi, arXiv:2410.16794), :func:`sim_loss`. The paper's reference score is the
teacher with classifier-free guidance (:func:`cfg_reference`): its CFG term is an implicit
reward ``(w - 1) log p(c | x_t)``.

What was read: the official repository (inference code and README, whose ablation table
names the reward scale ``alpha_rew`` and the CFG scale ``alpha_cfg``); the SIM paper's
method section could not be retrieved here. The tractable loss was therefore derived
again from SIM's score-projection identity and checked on an exact Gaussian testbed
(``tests/jaxdiff/test_diff_instruct_star.py``): the form whose gradient equals the
divergence's gradient, ``variant="exact"``, is the default; ``variant="sim"`` is the form
``-d'(y)^T (s_ref - grad log q(x_t | x_0))``, SIM's Theorem 3.1 as secondary sources
describe it (the paper's text was not read), kept switchable: with every network evaluated
at the differentiable ``x_t`` its gradient differs from the exact one by the gradient of
``E[d'(y)^T y - d(y)]`` (measured in the tests); where the paper places its stop-gradients
differently, the two may agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff._distill._distribution_matching import _expand, _per_example, _real_array
from jaxdiff._training._samplers import _check_schedule
from jaxdiff._validation import as_key, check_choice, check_output, check_scalar, poison
from jaxdiff.guidance._common import null_fn

Array = jax.Array

DISTANCES = ("pseudo_huber", "l2")
VARIANTS = ("exact", "sim")


def _sum_flat(a: Array) -> Array:
  return jnp.sum(a.reshape(a.shape[0], -1), axis=1)


def _distance(y: Array, distance: str, c) -> tuple[Array, Array]:
  """``d(y)`` ``(B,)`` and ``d'(y)`` shaped like ``y`` (norms over the non-batch axes)."""
  sq = _sum_flat(y**2)
  if distance == "l2":
    return sq, 2.0 * y
  root = jnp.sqrt(sq + c**2)
  return root - c, y / _expand(root, y.ndim)


def _check_c(distance: str, c):
  if distance == "pseudo_huber":
    check_scalar("c", c, lo=0.0, lo_open=True)
  return c


def _score_scale(where: str, x: Array, alpha, sigma) -> Array:
  """``alpha / sigma^2`` per example, shaped to broadcast against ``x``.

  ``s(x_t) = (alpha x0_hat - x_t) / sigma^2``, so a difference of two scores at one
  ``x_t`` is ``alpha / sigma^2`` times the difference of the x0 predictions. A traced
  ``sigma <= 0`` poisons its rows (value and gradient).
  """
  a = _per_example(where, "alpha", alpha, x)
  s = _per_example(where, "sigma", sigma, x, positive=True)
  valid = s > 0
  return _expand(poison(a / jnp.where(valid, s, 1.0) ** 2, valid), x.ndim)


def score_divergence(x0_fake, x0_ref, *, alpha, sigma, distance: str = "pseudo_huber", c=1.0):
  r"""The integrand of the score-based divergence at one noised sample, per example.

  With :math:`s = (\alpha_t\hat x_0 - x_t)/\sigma_t^2` the score of a denoiser,

  .. math::
    \mathbf d(y),\qquad y = s_{p}(x_t) - s_{q}(x_t)
      = \frac{\alpha_t}{\sigma_t^2}\big(\hat x_0^{\text{fake}} - \hat x_0^{\text{ref}}\big),
    \qquad \mathbf d(y) = \sqrt{\|y\|^2 + c^2} - c\ \ (\texttt{"pseudo\_huber"}),\quad
    \|y\|^2\ \ (\texttt{"l2"}),

  whose mean over :math:`x_t\sim p_{\theta,t}` (and weighted integral over :math:`t`) is
  the divergence :math:`\mathcal D` that Diff-Instruct* regularises with. A monitor: its
  gradient is not the divergence's (use :func:`sim_loss` for that).

  Args:
    x0_fake: ``(B, ...)`` the generator's (fake) score as an x0 prediction at :math:`x_t`.
    x0_ref: the reference's x0 prediction at :math:`x_t`, shaped like ``x0_fake``.
    alpha, sigma: the schedule at :math:`t`, scalars or ``(B,)``; ``sigma > 0``.
    distance: ``"pseudo_huber"`` (the paper's) or ``"l2"``.
    c: the pseudo-Huber constant, ``c > 0`` (in score units).

  Returns:
    ``(B,)`` values of :math:`\mathbf d(y)`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import finetune
    >>> x = jnp.zeros((1, 2))
    >>> finetune.score_divergence(x + 0.5, x - 0.5, alpha=1.0, sigma=1.0, distance="l2")
    Array([2.], dtype=float32)

  References:
    Luo et al., "One-Step Diffusion Distillation through Score Implicit Matching",
    arXiv:2410.16794 (Sec. 3.1, the pseudo-Huber distance of Sec. 3.3).
  """
  where = "score_divergence"
  check_choice("distance", distance, DISTANCES)
  _check_c(distance, c)
  xf = _real_array(where, "x0_fake", x0_fake)
  if xf.ndim < 1 or xf.shape[0] == 0:
    raise ValueError(f"{where}: x0_fake must be a non-empty batch (B, ...), got {xf.shape}")
  xr = _real_array(where, "x0_ref", x0_ref, like=xf)
  y = _score_scale(where, xf, alpha, sigma) * (xf - xr)
  return _distance(y, distance, c)[0]


def sim_loss(
  x,
  x0_ref,
  x0_fake,
  *,
  alpha,
  sigma,
  distance: str = "pseudo_huber",
  c=1.0,
  weight=None,
  variant: str = "exact",
) -> Array:
  r"""The tractable loss whose generator gradient is that of the score-based divergence.

  For a generator sample :math:`x = g_\theta(z)`, its noised :math:`x_t = \alpha_t x +
  \sigma_t\epsilon`, and the x0 predictions at :math:`x_t` of the reference and of the fake
  score (whose parameters are frozen, :math:`\mathrm{sg}[\theta]`), let
  :math:`y = s_{\text{fake}}(x_t) - s_{\text{ref}}(x_t)` and
  :math:`\nabla\log q_t(x_t\mid x) = -(x_t - \alpha_t x)/\sigma_t^2`. Then

  .. math::
    \mathcal L_{\text{exact}} = \operatorname{mean}_i\, w_i\Big[-\mathbf d'(y)^\top
      \big(s_{\text{fake}}(x_t) - \nabla\log q_t(x_t\mid x)\big) + \mathbf d(y)\Big],
    \qquad
    \mathcal L_{\text{sim}} = \operatorname{mean}_i\, w_i\Big[-\mathbf d'(y)^\top
      \big(s_{\text{ref}}(x_t) - \nabla\log q_t(x_t\mid x)\big)\Big],

  with everything differentiated through :math:`x` and :math:`x_t` (the networks are
  evaluated at the differentiable :math:`x_t`; only the fake score's *parameters* are
  frozen). When the fake score is the exact score of :math:`p_{\theta,t}`,
  :math:`\nabla_\theta\mathcal L_{\text{exact}} = \nabla_\theta\,\mathbb E\,w\,\mathbf
  d(s_{p_\theta} - s_q)`: the score-projection identity :math:`\mathbb E_{p_\theta}
  [u^\top s_{p_\theta}] = \mathbb E[u^\top\nabla\log q_t(x_t\mid x)]` turns the
  intractable :math:`\partial_\theta s_{p_\theta}` into the first term, and
  :math:`\mathbf d(y)` carries the dependence of the sampling distribution on
  :math:`\theta`. ``variant="sim"`` is the form SIM's Theorem 3.1 is described with
  (the paper's text was not read here); differentiated the same way, its gradient
  differs from the exact one by
  :math:`\nabla_\theta\,\mathbb E[\mathbf d'(y)^\top y - \mathbf d(y)]` (zero when the
  generator equals the reference). In x0 predictions, :math:`y = \tfrac{\alpha_t}
  {\sigma_t^2}(\hat x_0^{\text{fake}} - \hat x_0^{\text{ref}})` and
  :math:`s_\bullet - \nabla\log q_t(x_t\mid x) = \tfrac{\alpha_t}{\sigma_t^2}(\hat
  x_0^\bullet - x)`.

  Args:
    x: ``(B, ...)`` generator output, differentiable w.r.t. the generator's parameters.
    x0_ref: the reference's x0 prediction at :math:`x_t` (with CFG for the paper's
      implicit reward, :func:`cfg_reference`), shaped like ``x``.
    x0_fake: the fake score's x0 prediction at :math:`x_t` (frozen parameters).
    alpha, sigma: the schedule at :math:`t`, scalars or ``(B,)``; ``sigma > 0`` (a traced
      ``sigma <= 0`` makes its row NaN).
    distance: ``"pseudo_huber"`` (:math:`\sqrt{\|y\|^2 + c^2} - c`, the paper's) or
      ``"l2"`` (:math:`\|y\|^2`).
    c: the pseudo-Huber constant, ``c > 0``, in score units.
    weight: ``None`` (1) or per-example weights :math:`w(t_i)`, a scalar or ``(B,)``.
    variant: ``"exact"`` (default) or ``"sim"`` (see above).

  Returns:
    The scalar surrogate (its value is not the divergence: see :func:`score_divergence`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff import finetune
    >>> x = jnp.zeros((2, 3))
    >>> same = lambda v: v + 1.0  # reference == fake: no gradient
    >>> g = jax.grad(lambda v: finetune.sim_loss(v, same(v), same(v), alpha=1.0, sigma=1.0))(x)
    >>> float(jnp.abs(g).max())
    0.0

  References:
    Luo et al., "One-Step Diffusion Distillation through Score Implicit Matching",
    arXiv:2410.16794 (Theorem 3.1); Luo, Zhang, Zhang & Geng, arXiv:2410.20898 (Sec. 3).
  """
  where = "sim_loss"
  check_choice("distance", distance, DISTANCES)
  check_choice("variant", variant, VARIANTS)
  _check_c(distance, c)
  x = _real_array(where, "x", x)
  if x.ndim < 1 or x.shape[0] == 0:
    raise ValueError(f"{where}: x must be a non-empty batch (B, ...), got shape {x.shape}")
  xr = _real_array(where, "x0_ref", x0_ref, like=x)
  xf = _real_array(where, "x0_fake", x0_fake, like=x)
  k = _score_scale(where, x, alpha, sigma)
  w = (
    jnp.ones((x.shape[0],), x.dtype) if weight is None else _per_example(where, "weight", weight, x)
  )
  y = k * (xf - xr)
  d, dprime = _distance(y, distance, c)
  if variant == "exact":
    per = -_sum_flat(dprime * k * (xf - x)) + d
  else:
    per = -_sum_flat(dprime * k * (xr - x))
  return jnp.mean(w * per)


def _noised(where, x, t, schedule, key):
  tt = _per_example(where, "t", t, x)
  eps = jax.random.normal(as_key(key), x.shape, x.dtype)
  a = jnp.asarray(schedule.alpha(tt), x.dtype)
  s = jnp.asarray(schedule.sigma(tt), x.dtype)
  return tt, a, s, _expand(a, x.ndim) * x + _expand(s, x.ndim) * eps


def diff_instruct_star_loss(
  reward: Callable,
  denoise_ref: Callable,
  denoise_fake: Callable,
  x,
  t,
  *,
  schedule,
  key,
  cond: Any = None,
  reward_scale=1.0,
  distance: str = "pseudo_huber",
  c=1.0,
  weight=None,
  variant: str = "exact",
) -> Array:
  r"""The Diff-Instruct* generator loss: minus the reward plus the score-divergence surrogate.

  .. math::
    \mathcal L(\theta) = -\alpha_{\text{rew}}\,\operatorname{mean}_i\, r(x_i) +
      \mathcal L_{\text{SIM}}(\theta),\qquad x_i = g_\theta(z_i),\quad
      x_{t,i} = \alpha_{t_i} x_i + \sigma_{t_i}\epsilon_i,

  with :math:`\mathcal L_{\text{SIM}}` :func:`sim_loss` at the reference's and the fake
  score's x0 predictions at :math:`x_t` (both networks evaluated here, at the
  differentiable :math:`x_t`). Its gradient w.r.t. the generator is that of
  :math:`-\alpha_{\text{rew}}\mathbb E\,r + \mathcal D` (image-data free). Alternate with
  :func:`jaxdiff.distill.fake_score_loss` on ``stop_gradient`` generator samples to keep
  the fake score on :math:`p_\theta`. Pass ``denoise_ref=cfg_reference(teacher, scale=w)``
  for the paper's CFG reference (the implicit reward).

  Args:
    reward: ``reward(x) -> (B,)`` differentiable reward of the generator output.
    denoise_ref: the frozen reference ``denoise(x_t, t, cond) -> x0_hat``.
    denoise_fake: the fake (online) score as a denoiser; its parameters get no gradient
      from the caller's ``jax.grad`` w.r.t. the generator only.
    x: ``(B, ...)`` generator output.
    t: ``(B,)`` or scalar noising times in the schedule's domain.
    schedule: a jaxdiff schedule (``alpha(t)``, ``sigma(t)``).
    key: PRNG key for :math:`\epsilon` (keyword-only).
    cond: labels passed to both denoisers.
    reward_scale: :math:`\alpha_{\text{rew}} \ge 0` (the paper: 100 for its reward model;
      0: SIM distillation). Traced: not checked.
    distance, c, weight, variant: as in :func:`sim_loss`.

  Returns:
    The scalar loss.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff import finetune, schedules
    >>> from jaxdiff.testing import GaussianMixture
    >>> ref = GaussianMixture(jnp.array([[-2.0], [2.0]]), 0.25).denoiser(schedules.vp_cosine())
    >>> reward = lambda x: -jnp.sum((x - 2.0) ** 2, axis=1)
    >>> x = jnp.array([[-2.0], [2.0]])
    >>> loss = finetune.diff_instruct_star_loss(
    ...   reward, ref, ref, x, 0.5, schedule=schedules.vp_cosine(), key=0, reward_scale=0.1)
    >>> round(float(loss), 4)  # fake == reference: only the reward term
    0.8

  References:
    Luo, Zhang, Zhang & Geng, "Diff-Instruct*: Towards Human-Preferred One-step
    Text-to-image Generative Models", arXiv:2410.20898; Luo et al., arXiv:2410.16794.
  """
  where = "diff_instruct_star_loss"
  for name, fn in (
    ("reward", reward),
    ("denoise_ref", denoise_ref),
    ("denoise_fake", denoise_fake),
  ):
    if not callable(fn):
      raise TypeError(f"{where}: {name} must be callable, got {fn!r}")
  _check_schedule(where, schedule)
  check_scalar("reward_scale", reward_scale, lo=0.0)
  check_choice("distance", distance, DISTANCES)
  check_choice("variant", variant, VARIANTS)
  _check_c(distance, c)
  x = _real_array(where, "x", x)
  if x.ndim < 1 or x.shape[0] == 0:
    raise ValueError(f"{where}: x must be a non-empty batch (B, ...), got shape {x.shape}")
  r = reward(x)
  check_output(r, shape=(x.shape[0],), dtype="floating", name="reward(x)", where=where)
  tt, a, s, x_t = _noised(where, x, t, schedule, key)
  x0_ref = denoise_ref(x_t, tt, cond)
  check_output(x0_ref, like=x, name="denoise_ref(x_t, t, cond)", where=where)
  x0_fake = denoise_fake(x_t, tt, cond)
  check_output(x0_fake, like=x, name="denoise_fake(x_t, t, cond)", where=where)
  div = sim_loss(
    x, x0_ref, x0_fake, alpha=a, sigma=s, distance=distance, c=c, weight=weight, variant=variant
  )
  return -jnp.asarray(reward_scale, x.dtype) * jnp.mean(r) + div


def cfg_reference(denoise: Callable, *, scale, null_cond: Any = -1) -> Callable:
  r"""The reference denoiser with classifier-free guidance (Diff-Instruct*'s implicit reward).

  .. math::
    \hat x_0^{\text{cfg}} = \hat x_0(x_t, \varnothing) + w\,\big(\hat x_0(x_t, c) -
      \hat x_0(x_t, \varnothing)\big),\qquad
    s^{\text{cfg}} = s(x_t\mid c) + (w - 1)\,\nabla_{x_t}\log p_t(c\mid x_t),

  so regularising towards :math:`s^{\text{cfg}}` is regularising towards the conditional
  reference tilted by the implicit reward :math:`(w - 1)\log p_t(c\mid x_t)` (the paper's
  "DI*-IN" with :math:`\alpha_{\text{cfg}} = w`; :math:`w = 1`: no guidance).

  Args:
    denoise: the conditional reference ``denoise(x_t, t, cond) -> x0_hat``.
    scale: the CFG scale :math:`w` (the paper: 7.5). Traced: not checked.
    null_cond: the unconditional label (a value or a callable ``cond -> null``), as in
      :mod:`jaxdiff.guidance`.

  Returns:
    ``denoise_cfg(x_t, t, cond) -> x0_hat`` (two calls of ``denoise``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import finetune, schedules
    >>> from jaxdiff.testing import GaussianMixture
    >>> ref = GaussianMixture(jnp.array([[-2.0], [2.0]]), 0.25).denoiser(schedules.vp_cosine())
    >>> guided = finetune.cfg_reference(ref, scale=1.0)
    >>> x = jnp.array([[0.3]])
    >>> bool(jnp.allclose(guided(x, 0.5, 1), ref(x, 0.5, 1)))
    True

  References:
    Luo, Zhang, Zhang & Geng, arXiv:2410.20898 (Sec. 3, the CFG implicit reward); Ho &
    Salimans, "Classifier-Free Diffusion Guidance", arXiv:2207.12598.
  """
  where = "cfg_reference"
  if not callable(denoise):
    raise TypeError(f"{where}: denoise must be callable (x, t, cond) -> x0, got {denoise!r}")
  check_scalar("scale", scale)
  null = null_fn(null_cond, where)

  def denoise_cfg(x_t, t, cond):
    if cond is None:
      raise ValueError(f"{where}: cond is required (the label to guide towards), got None")
    x_c = denoise(x_t, t, cond)
    check_output(x_c, like=x_t, name="denoise(x_t, t, cond)", where=where, like_name="x_t")
    x_u = denoise(x_t, t, null(cond))
    return x_u + jnp.asarray(scale, x_c.dtype) * (x_c - x_u)

  return denoise_cfg
