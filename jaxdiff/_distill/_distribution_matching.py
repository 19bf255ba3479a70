"""Distribution-matching distillation: DMD / VSD, f-distill and decoupled DMD.

A one-step (or few-step) generator ``x = G(z)`` is trained so that its noised output
distribution ``q_t`` matches the teacher's ``p_t`` at every noise level. The gradient of
the divergence w.r.t. the generator output is a difference of two scores at a noised
generator sample: the frozen teacher's ("real") and a "fake" score trained alongside on
the generator's own samples (:func:`fake_score_loss`). The papers:

* Yin et al., "One-step Diffusion with Distribution Matching Distillation", CVPR 2024
  (arXiv:2311.18828) and "Improved Distribution Matching Distillation" (DMD2,
  arXiv:2405.14867): reverse KL, the per-sample weighting ``1 / mean|x - x0_real|``.
* Xu, Nie & Vahdat, "One-step Diffusion Models with f-Divergence Distribution Matching"
  (f-distill, arXiv:2502.15681): any f-divergence; the score difference is weighted by
  ``h(r) = r^2 f''(r)`` of the density ratio ``r = p/q``, estimated by a discriminator's
  logit. The weighting table, ratio clipping and batch normalisation of ``h`` follow the
  official code (NVlabs FastGen, ``fastgen/methods/distribution_matching/f_distill.py``).
* Liu et al., "Decoupled DMD: CFG Augmentation as the Spear, Distribution Matching as the
  Shield" (arXiv:2511.22677): DMD with a CFG teacher is the sum of a distribution-matching
  (DM) term and a CFG-augmentation (CA) term (their Eq. 6), each with its own re-noising
  time (Eq. 8; :func:`decoupled_timesteps`).

Every function is pure on arrays: the caller evaluates the networks (teacher, fake score,
discriminator) at the noised sample and passes their x0 predictions; the predictions are
wrapped in ``stop_gradient`` here, so gradients flow only into the generator through
``x`` (:func:`generator_loss`).

Time convention: jaxdiff's ``t = 0`` is clean data, ``t = 1`` (``t_max``) noise; the
decoupled-DMD paper's flow time runs the other way, so its ``tau > t`` is ``tau < t``
here.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._training._samplers import _check_schedule
from jaxdiff._validation import (
  as_key,
  check_choice,
  check_finite,
  check_flag,
  check_output,
  check_scalar,
  is_traced,
  poison,
)

Array = jax.Array

DIVERGENCES = (
  "reverse_kl",
  "forward_kl",
  "jensen_shannon",
  "softened_reverse_kl",
  "squared_hellinger",
  "jeffreys",
  "neyman_chi2",
)
WEIGHTINGS = ("dmd", "score")
DECOUPLED_VARIANTS = ("hybrid", "shared", "full", "constrained")

# h(r) = r^2 f''(r) for the generator f of each divergence D_f(p || q) = E_q f(p / q)
# (f-distill, Table 1; the official code's weighting table). The f below (_F) are the
# ones for which the identity is exact; constant factors are immaterial once h is
# normalised by its batch mean.
_H: dict[str, Callable[[Array], Array]] = {
  "reverse_kl": lambda r: jnp.ones_like(r),
  "forward_kl": lambda r: r,
  "jensen_shannon": lambda r: r / (1.0 + r),
  "softened_reverse_kl": lambda r: 1.0 / (1.0 + r),
  "squared_hellinger": lambda r: jnp.sqrt(r),
  "jeffreys": lambda r: 1.0 + r,
  "neyman_chi2": lambda r: 1.0 / r,
}


def _js(r):
  return r * jnp.log(r) - (1.0 + r) * jnp.log((1.0 + r) / 2.0)


_F: dict[str, Callable[[Array], Array]] = {
  "reverse_kl": lambda r: -jnp.log(r),
  "forward_kl": lambda r: r * jnp.log(r),
  "jensen_shannon": _js,
  "softened_reverse_kl": lambda r: -jnp.log(r) - _js(r),
  "squared_hellinger": lambda r: 2.0 * (jnp.sqrt(r) - 1.0) ** 2,
  "jeffreys": lambda r: (r - 1.0) * jnp.log(r),
  "neyman_chi2": lambda r: (1.0 - r) ** 2 / (2.0 * r),
}


def _expand(v: Array, ndim: int) -> Array:
  return jnp.reshape(v, jnp.shape(v) + (1,) * (ndim - jnp.ndim(v)))


def _real_array(where: str, name: str, value, *, like=None) -> Array:
  """A floating array, finite where concrete, shaped like ``like`` when given."""
  dt = jnp.result_type(value)
  if not jnp.issubdtype(dt, jnp.floating):
    raise TypeError(f"{where}: {name} must be a floating array, got dtype {dt}")
  if like is not None and jnp.shape(value) != jnp.shape(like):
    raise ValueError(
      f"{where}: {name} must have the shape of x {jnp.shape(like)}, got {jnp.shape(value)}"
    )
  check_finite(f"{where}: {name}", value)
  return jnp.asarray(value)


def _per_example(where: str, name: str, value, x: Array, *, positive: bool = False) -> Array:
  """A scalar or ``(B,)`` per-example quantity (a noise scale, a logit) as ``(B,)``."""
  if value is None:
    raise ValueError(f"{where}: {name} is required here, got None")
  if isinstance(value, (bool, np.bool_)) or not jnp.issubdtype(jnp.result_type(value), jnp.number):
    raise TypeError(f"{where}: {name} must be a real scalar or (B,) array, got {value!r}")
  v = jnp.asarray(value, x.dtype)
  batch = x.shape[0]
  if v.shape not in ((), (batch,)):
    raise ValueError(f"{where}: {name} must be a scalar or shaped ({batch},), got {v.shape}")
  check_finite(f"{where}: {name}", value)
  if positive and not is_traced(value) and not np.all(np.asarray(value) > 0):
    raise ValueError(f"{where}: {name} must be positive, got {np.min(np.asarray(value))}")
  return jnp.broadcast_to(v, (batch,))


def _floor(v: Array) -> Array:
  return jnp.maximum(v, jnp.sqrt(jnp.finfo(v.dtype).tiny))


def _dmd_normaliser(x: Array, x0_ref: Array) -> Array:
  """DMD's per-sample ``1 / mean|x - x0_ref|`` over the non-batch axes (DMD2 code)."""
  axes = tuple(range(1, x.ndim))
  return 1.0 / _floor(jnp.mean(jnp.abs(x - x0_ref), axis=axes, keepdims=True))


def _score_factor(where: str, x: Array, alpha, sigma) -> Array:
  """``alpha^2 / sigma^2``: ``alpha (s_a - s_b) = alpha^2 / sigma^2 (x0_a - x0_b)``."""
  a = _per_example(where, "alpha", alpha, x)
  s = _per_example(where, "sigma", sigma, x, positive=True)
  # A traced sigma <= 0 (no score there) poisons its rows with NaN, value and gradient.
  valid = s > 0
  return _expand(poison(a**2 / jnp.where(valid, s, 1.0) ** 2, valid), x.ndim)


def _check_bounds(where: str, ratio_bounds):
  if ratio_bounds is None:
    return None
  if not isinstance(ratio_bounds, (tuple, list)) or len(ratio_bounds) != 2:
    raise TypeError(f"{where}: ratio_bounds must be a pair (lo, hi) or None, got {ratio_bounds!r}")
  lo = check_scalar("ratio_bounds[0]", ratio_bounds[0], lo=0.0, lo_open=True)
  hi = check_scalar("ratio_bounds[1]", ratio_bounds[1], lo=0.0, lo_open=True, allow_inf=True)
  if lo is not None and hi is not None and not lo < hi:
    raise ValueError(f"{where}: ratio_bounds must satisfy lo < hi, got ({lo}, {hi})")
  return ratio_bounds


def f_divergence_weight(
  log_ratio, *, divergence: str = "reverse_kl", ratio_bounds=(0.1, 20.0), normalize: bool = True
) -> Array:
  r"""The f-distill weight :math:`h(r) = r^2 f''(r)` of each sample from its log density ratio.

  The gradient of :math:`D_f(p\,\|\,q) = \mathbb E_q f(p/q)` w.r.t. a generator sample is
  :math:`h(r)(\nabla\log q - \nabla\log p)` (f-distill, Theorem 1), with

  .. math::
    h(r) = r^2 f''(r),\qquad r = \frac{p_t(x_t)}{q_t(x_t)} = \exp(d(x_t)),

  where :math:`d` is the logit of a discriminator trained with :func:`ratio_discriminator_loss`.
  ``divergence``: ``"reverse_kl"`` (:math:`h = 1`: DMD), ``"forward_kl"`` (:math:`r`),
  ``"jensen_shannon"`` (:math:`r/(1+r)`), ``"softened_reverse_kl"`` (:math:`1/(1+r)`),
  ``"squared_hellinger"`` (:math:`\sqrt r`), ``"jeffreys"`` (:math:`1+r`),
  ``"neyman_chi2"`` (:math:`1/r`). As in the official code, the logit is clipped to
  :math:`[-10, 10]` and the ratio to ``ratio_bounds`` before :math:`h`, and :math:`h` is
  divided by its batch mean (``normalize=True``, the paper's normalisation that keeps the
  gradient's scale that of DMD).

  Args:
    log_ratio: ``(B,)`` estimates of :math:`\log p_t/q_t` at the noised generator samples
      (the discriminator's logits); finite where concrete.
    divergence: one of ``DIVERGENCES``.
    ratio_bounds: ``(lo, hi)`` with ``0 < lo < hi`` to clip :math:`r` (and the logit to
      :math:`[-10, 10]`), or ``None`` for the exact weight.
    normalize: divide :math:`h` by its batch mean (floored at ``sqrt(tiny)``; the official
      code adds ``1e-6`` instead, a relative difference of about ``1e-6``).

  Returns:
    ``(B,)`` weights, in ``log_ratio``'s dtype. A concrete non-finite logit raises; a
    traced one makes every weight NaN (through the batch mean).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import distill
    >>> r = jnp.array([0.5, 1.0, 2.0])
    >>> distill.f_divergence_weight(jnp.log(r), divergence="forward_kl", normalize=False)
    Array([0.5, 1. , 2. ], dtype=float32)

  References:
    Xu, Nie & Vahdat, "One-step Diffusion Models with f-Divergence Distribution
    Matching", arXiv:2502.15681 (Sec. 3, Table 1).
  """
  where = "f_divergence_weight"
  check_choice("divergence", divergence, DIVERGENCES)
  check_flag("normalize", normalize)
  bounds = _check_bounds(where, ratio_bounds)
  d = _real_array(where, "log_ratio", log_ratio)
  if d.ndim != 1:
    raise ValueError(f"{where}: log_ratio must be one value per example (B,), got {d.shape}")
  if bounds is None:
    r = jnp.exp(d)
  else:
    r = jnp.clip(jnp.exp(jnp.clip(d, -10.0, 10.0)), bounds[0], bounds[1])
  h = _H[divergence](r)
  if normalize:
    # The official code adds 1e-6 to the mean; a floor keeps a constant h exactly 1 (so
    # every divergence at a constant ratio, and reverse KL always, is DMD bit for bit).
    h = h / _floor(jnp.mean(h))
  return jax.lax.stop_gradient(h)


def ratio_discriminator_loss(real_logits, fake_logits) -> Array:
  r"""The logistic (GAN) loss whose optimal logit is the log density ratio :math:`\log p/q`.

  .. math::
    \mathcal L(d) = \mathbb E_{p}\,\mathrm{softplus}(-d(x))
      + \mathbb E_{q}\,\mathrm{softplus}(d(x)),\qquad d^\star(x) = \log\frac{p(x)}{q(x)},

  with ``real_logits`` the discriminator at (noised) teacher/data samples and
  ``fake_logits`` at (noised) generator samples. f-distill reads the ratio of
  :func:`f_divergence_weight` off this discriminator (official code:
  ``gan_loss_discriminator``; the discriminator head sits on the teacher's features).

  Args:
    real_logits: ``(B,)`` or ``(B, K)`` logits at samples of :math:`p` (K heads are averaged
      in the mean).
    fake_logits: logits at samples of :math:`q`, any batch size.

  Returns:
    The scalar loss.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import distill
    >>> float(distill.ratio_discriminator_loss(jnp.zeros(4), jnp.zeros(4)))  # 2 log 2
    1.3862943649291992

  References:
    Xu, Nie & Vahdat, arXiv:2502.15681 (Sec. 3.2); Goodfellow et al., "Generative
    Adversarial Nets", arXiv:1406.2661 (Prop. 1).
  """
  where = "ratio_discriminator_loss"
  real = _real_array(where, "real_logits", real_logits)
  fake = _real_array(where, "fake_logits", fake_logits)
  return jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))


def _grad_inputs(where, x, pairs):
  x = _real_array(where, "x", x)
  if x.ndim < 1 or x.shape[0] == 0:
    raise ValueError(f"{where}: x must be a non-empty batch (B, ...), got shape {x.shape}")
  out = [jax.lax.stop_gradient(_real_array(where, n, v, like=x)) for n, v in pairs]
  return x, out


def distribution_matching_grad(
  x,
  x0_real,
  x0_fake,
  *,
  alpha=None,
  sigma=None,
  weighting: str = "dmd",
  divergence: str = "reverse_kl",
  log_ratio=None,
  ratio_bounds=(0.1, 20.0),
  normalize: bool = True,
  x0_ref=None,
) -> Array:
  r"""The DMD / f-distill gradient w.r.t. the generator output ``x`` (stop-gradient inputs).

  With :math:`x_t = \alpha_t x + \sigma_t\epsilon` a noised generator sample and
  :math:`\hat x_0` the x0 predictions of the teacher ("real") and the fake score at
  :math:`x_t`, the scores are :math:`s = (\alpha_t\hat x_0 - x_t)/\sigma_t^2`, and

  .. math::
    g = h(r)\,w\,(\hat x_0^{\text{fake}} - \hat x_0^{\text{real}}),\qquad
    w = \begin{cases}\alpha_t^2/\sigma_t^2 & \texttt{"score"}:\ g = h(r)\,\alpha_t\,
      (s_{\text{fake}} - s_{\text{real}}) = \nabla_x D_f(p_t\|q_t)\text{ per sample},\\
      1/\operatorname{mean}|x - \hat x_0^{\text{ref}}| & \texttt{"dmd"}\ (\text{DMD Eq. 8,
      DMD2 code}),\end{cases}

  with :math:`h(r)` from :func:`f_divergence_weight` (:math:`h = 1` for reverse KL: DMD /
  VSD). Pass ``x0_real`` the teacher's CFG prediction for the usual text-to-image DMD; see
  :func:`cfg_augmentation_grad` for its decoupled form.

  Args:
    x: ``(B, ...)`` generator output (the gradient flows into it through
      :func:`generator_loss`, not here).
    x0_real: the teacher's x0 prediction at :math:`x_t`, shaped like ``x``.
    x0_fake: the fake score's x0 prediction at :math:`x_t`, shaped like ``x``.
    alpha, sigma: the schedule at the re-noising time, scalars or ``(B,)``; needed for
      ``weighting="score"``.
    weighting: ``"dmd"`` (default) or ``"score"`` (the exact per-level gradient).
    divergence, log_ratio, ratio_bounds, normalize: the f-divergence weight
      (:func:`f_divergence_weight`); ``log_ratio`` ``(B,)`` is needed unless reverse KL.
    x0_ref: the prediction in DMD's normaliser (default ``x0_real``).

  Returns:
    ``g``, shaped like ``x`` (no gradient flows through it). Concrete non-finite inputs
    raise naming the argument; traced ones make the rows that depend on them NaN, and a
    traced ``sigma <= 0`` makes its row NaN (``weighting="score"``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import distill
    >>> x = jnp.zeros((2, 3))
    >>> g = distill.distribution_matching_grad(x, x + 1.0, x + 0.5)
    >>> g[0]
    Array([-0.5, -0.5, -0.5], dtype=float32)

  References:
    Yin et al., "One-step Diffusion with Distribution Matching Distillation",
    arXiv:2311.18828 (Eq. 7-8); Xu, Nie & Vahdat, arXiv:2502.15681 (Eq. 6).
  """
  where = "distribution_matching_grad"
  check_choice("weighting", weighting, WEIGHTINGS)
  check_choice("divergence", divergence, DIVERGENCES)
  pairs = [("x0_real", x0_real), ("x0_fake", x0_fake)]
  if x0_ref is not None:
    pairs.append(("x0_ref", x0_ref))
  x, (xr, xf, *ref) = _grad_inputs(where, x, pairs)
  if weighting == "score":
    w = _score_factor(where, x, alpha, sigma)
  else:
    w = _dmd_normaliser(x, ref[0] if ref else xr)
  g = w * (xf - xr)
  if divergence != "reverse_kl" or log_ratio is not None:
    if log_ratio is None:
      raise ValueError(
        f"{where}: divergence={divergence!r} needs log_ratio (the discriminator's logits)"
      )
    if jnp.shape(log_ratio) != (x.shape[0],):
      raise ValueError(
        f"{where}: log_ratio must be shaped ({x.shape[0]},), got {jnp.shape(log_ratio)}"
      )
    h = f_divergence_weight(
      log_ratio, divergence=divergence, ratio_bounds=ratio_bounds, normalize=normalize
    )
    g = _expand(h.astype(g.dtype), g.ndim) * g
  return jax.lax.stop_gradient(g)


def cfg_augmentation_grad(
  x, x0_cond, x0_uncond, *, scale, alpha=None, sigma=None, weighting: str = "dmd"
) -> Array:
  r"""Decoupled DMD's CFG-augmentation (CA) term: the gradient w.r.t. the generator output.

  DMD with a CFG teacher :math:`s^{\text{cfg}} = s^u + \alpha(s^c - s^u)` splits into a
  distribution-matching term and this one (Liu et al., Eq. 6 and 8), evaluated at its own
  re-noised sample :math:`x_{\tau_{CA}}`:

  .. math::
    g_{CA} = -(\alpha - 1)\,w\,(\hat x_0^{c} - \hat x_0^{u}),\qquad
    w = \alpha_\tau^2/\sigma_\tau^2\ (\texttt{"score"}),\quad
    w = 1/\operatorname{mean}|x - \hat x_0^{\text{cfg}}|\ (\texttt{"dmd"}),

  so :math:`g_{CA} + ` :func:`distribution_matching_grad` (``x0_real`` the conditional
  prediction at the same sample, ``x0_ref`` the CFG one) is DMD's gradient with the CFG
  teacher. Here :math:`\alpha` is ``scale`` (the CFG scale of :mod:`jaxdiff.guidance`).

  Args:
    x: ``(B, ...)`` generator output.
    x0_cond, x0_uncond: the teacher's conditional and unconditional x0 predictions at
      :math:`x_{\tau_{CA}}`, shaped like ``x``.
    scale: the CFG scale :math:`\alpha` (``1``: the term vanishes). Traced: not checked.
    alpha, sigma: the schedule at :math:`\tau_{CA}` (for ``weighting="score"``).
    weighting: ``"dmd"`` or ``"score"``, as in :func:`distribution_matching_grad`.

  Returns:
    ``g_CA`` shaped like ``x`` (no gradient flows through it).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import distill
    >>> x = jnp.zeros((1, 2))
    >>> distill.cfg_augmentation_grad(x, x + 1.0, x, scale=3.0)
    Array([[-0.6666667, -0.6666667]], dtype=float32)

  References:
    Liu et al., "Decoupled DMD: CFG Augmentation as the Spear, Distribution Matching as
    the Shield", arXiv:2511.22677 (Eq. 6, 8).
  """
  where = "cfg_augmentation_grad"
  check_choice("weighting", weighting, WEIGHTINGS)
  check_scalar("scale", scale)
  x, (xc, xu) = _grad_inputs(where, x, [("x0_cond", x0_cond), ("x0_uncond", x0_uncond)])
  scale = jnp.asarray(scale, x.dtype)
  if weighting == "score":
    w = _score_factor(where, x, alpha, sigma)
  else:
    w = _dmd_normaliser(x, xu + scale * (xc - xu))
  return jax.lax.stop_gradient(-(scale - 1.0) * w * (xc - xu))


def generator_loss(x, grad) -> Array:
  r"""The surrogate loss whose gradient w.r.t. ``x`` is ``grad / x.size`` (stop-gradient trick).

  .. math::
    \mathcal L = \tfrac12\operatorname{mean}\big(x - \mathrm{sg}(x - g)\big)^2,\qquad
    \nabla_x\mathcal L = g / N,

  the form of the DMD / DMD2 / f-distill code (``0.5 * mse(x, (x - g).detach())``). Sum
  the directions of several terms (:func:`distribution_matching_grad`,
  :func:`cfg_augmentation_grad`) before calling it, or add the losses.

  Args:
    x: the generator output ``(B, ...)``, differentiable w.r.t. the generator's parameters.
    grad: the direction ``g``, shaped like ``x``.

  Returns:
    The scalar loss.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff import distill
    >>> g = jnp.array([[1.0, -2.0]])
    >>> jax.grad(lambda x: distill.generator_loss(x, g))(jnp.zeros((1, 2))) * 2
    Array([[ 1., -2.]], dtype=float32)

  References:
    Yin et al., arXiv:2405.14867 (DMD2, official code ``compute_distribution_matching_loss``).
  """
  where = "generator_loss"
  x = _real_array(where, "x", x)
  g = jax.lax.stop_gradient(_real_array(where, "grad", grad, like=x))
  target = jax.lax.stop_gradient(x - g)
  return 0.5 * jnp.mean((x - target) ** 2)


def fake_score_loss(denoise: Callable, x, t, *, schedule, key, cond=None) -> Array:
  r"""The fake score's denoising loss on generator samples (the critic DMD trains alongside).

  .. math::
    \mathcal L = \operatorname{mean}\big\|D_\phi(\alpha_t\,\mathrm{sg}(x) + \sigma_t\epsilon,
      t) - \mathrm{sg}(x)\big\|^2,\qquad \epsilon\sim\mathcal N(0, I),

  so that :math:`D_\phi` tracks the generator's noised distribution :math:`q_t` (its
  minimiser is :math:`\mathbb E_q[x \mid x_t]`). No gradient reaches the generator.

  Args:
    denoise: the fake score as a denoiser ``denoise(x_t, t, cond) -> x0_hat``.
    x: ``(B, ...)`` generator samples.
    t: ``(B,)`` or scalar re-noising times in the schedule's domain.
    schedule: a jaxdiff schedule (``alpha(t)``, ``sigma(t)``).
    key: PRNG key for :math:`\epsilon` (keyword-only).
    cond: labels passed to ``denoise``.

  Returns:
    The scalar loss.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import distill, schedules
    >>> x = jnp.ones((4, 2))
    >>> oracle = lambda xt, t, c: jnp.ones_like(xt)  # a point mass at 1 is denoised exactly
    >>> float(distill.fake_score_loss(oracle, x, 0.5, schedule=schedules.flow(), key=0))
    0.0

  References:
    Yin et al., arXiv:2311.18828 (Eq. 6); Yin et al., arXiv:2405.14867 (two time-scale
    update of the fake score).
  """
  where = "fake_score_loss"
  if not callable(denoise):
    raise TypeError(f"{where}: denoise must be callable (x, t, cond) -> x0, got {denoise!r}")
  _check_schedule(where, schedule)
  key = as_key(key)
  x = jax.lax.stop_gradient(_real_array(where, "x", x))
  tt = _per_example(where, "t", t, x)
  eps = jax.random.normal(key, x.shape, x.dtype)
  a = _expand(jnp.asarray(schedule.alpha(tt), x.dtype), x.ndim)
  s = _expand(jnp.asarray(schedule.sigma(tt), x.dtype), x.ndim)
  out = denoise(a * x + s * eps, tt, cond)
  check_output(out, like=x, name="denoise(x_t, t, cond)", where=where)
  return jnp.mean((out - x) ** 2)


def decoupled_timesteps(
  shape, *, key, t_input=1.0, variant: str = "hybrid", t_min: float = 0.02, t_max: float = 0.98
) -> tuple[Array, Array]:
  r"""The re-noising times ``(tau_dm, tau_ca)`` of the DM and CA terms of decoupled DMD.

  For a generator step whose input sits at noise level ``t_input`` (``t_max`` or above for
  a one-step generator), Liu et al. (Sec. 4.3) compare four schedules, uniform in each
  range (jaxdiff time: ``t = 0`` data, so the paper's "cleaner than the input" is
  :math:`\tau < t_{\text{input}}`):

  * ``"hybrid"`` (the paper's best): :math:`\tau_{CA}\sim U[t_{\min}, \min(t_{\text{input}},
    t_{\max})]`, :math:`\tau_{DM}\sim U[t_{\min}, t_{\max}]`, independent;
  * ``"shared"``: one :math:`\tau = \tau_{CA} = \tau_{DM}` on the full range (DMD);
  * ``"full"``: independent, both full; ``"constrained"``: independent, both below the input.

  Args:
    shape: the shape of the times (``(B,)``).
    key: PRNG key (keyword-only).
    t_input: the generator input's noise level, scalar or broadcastable to ``shape``.
    variant: one of ``DECOUPLED_VARIANTS``.
    t_min, t_max: the re-noising range, ``0 <= t_min < t_max <= 1`` (DMD2: 2% to 98%).

  Returns:
    ``(tau_dm, tau_ca)``, each of ``shape``. A traced ``t_input <= t_min`` gives NaN times
    where the range would be empty.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import distill
    >>> dm, ca = distill.decoupled_timesteps(key=0, shape=(4096,), t_input=0.5)
    >>> bool(ca.max() <= 0.5), bool(dm.max() > 0.9)
    (True, True)

  References:
    Liu et al., arXiv:2511.22677 (Sec. 4.3, Eq. 8, Table 1).
  """
  check_choice("variant", variant, DECOUPLED_VARIANTS)
  lo = check_scalar("t_min", t_min, lo=0.0, hi=1.0)
  hi = check_scalar("t_max", t_max, lo=0.0, hi=1.0)
  if lo is not None and hi is not None and not lo < hi:
    raise ValueError(f"decoupled_timesteps: t_min must be below t_max, got {lo} >= {hi}")
  if isinstance(t_input, (bool, np.bool_)):
    raise TypeError("decoupled_timesteps: t_input must be a real number or array, got a bool")
  check_finite("t_input", t_input)
  if not is_traced(t_input) and np.any(np.asarray(t_input) <= lo):
    raise ValueError(f"decoupled_timesteps: t_input must exceed t_min={lo}, got {t_input}")
  k_dm, k_ca = jax.random.split(as_key(key))
  u_dm = jax.random.uniform(k_dm, shape)
  u_ca = u_dm if variant == "shared" else jax.random.uniform(k_ca, shape)
  full_hi = jnp.asarray(t_max, u_dm.dtype)
  low_hi = jnp.minimum(jnp.asarray(t_input, u_dm.dtype), full_hi)
  dm_hi = low_hi if variant == "constrained" else full_hi
  ca_hi = low_hi if variant in ("hybrid", "constrained") else full_hi
  tau_dm = t_min + u_dm * (dm_hi - t_min)
  tau_ca = t_min + u_ca * (ca_hi - t_min)
  if variant in ("hybrid", "constrained"):  # a traced t_input <= t_min: NaN, not tau < t_min
    ok = jnp.broadcast_to(jnp.asarray(t_input) > t_min, tau_ca.shape)
    tau_ca = jnp.where(ok, tau_ca, jnp.nan)
    tau_dm = jnp.where(ok, tau_dm, jnp.nan) if variant == "constrained" else tau_dm
  return tau_dm, tau_ca
