"""Guidance rules: which network evaluations to make at a step and how to combine them.

Every rule is a :class:`~jaxdiff.GuidanceRule` ``(init, apply)`` acting on *data
predictions* (denoised estimates ``x0``). All rules below are affine in the predictions
they combine unless stated otherwise, so the same weights applied to noise predictions
``eps = (x - alpha x0) / sigma`` give the same update: the rules are exact transcriptions
of the papers, which write them on ``eps`` (CFG, PAG, CFG++, RCFG) or directly on the
denoised prediction (APG, autoguidance, EluCD). The exceptions (APG's norms and
projections, guidance rescale's standard deviations, Adaptive Guidance's cosine
similarity) state in their docstrings which quantity they act on.

Conventions shared by all rules:

* ``denoise(x, t, cond) -> x0_hat``, batch first, ``t`` of shape ``(B,)``.
* Class labels are integers; the unconditional ("null") label is ``-1`` unless a rule
  gets ``null_cond`` (an array broadcast over the batch, or a callable ``cond -> null``).
* The evaluations a step needs are concatenated along the batch axis into one network
  call wherever the inputs allow it; ``nfe`` counts evaluations *per sample*.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jax_core

from jaxdiff._types import Denoiser, GuidanceRule, Prediction, StepContext

Array = jax.Array
PyTree = Any

__all__ = [
  "adaptive",
  "apg",
  "autoguidance",
  "cfg",
  "cfgpp",
  "classifier",
  "fit_linear_ag",
  "gfcg",
  "linear_ag",
  "pag",
  "rcfg",
  "smooth_relu",
]


# ----------------------------------------------------------------------------------------
# Helpers.


def _check(name: str, value, ok: Callable[[float], bool], what: str) -> None:
  """Validates a hyperparameter when it is concrete (traced values are the caller's job)."""
  if isinstance(value, jax.core.Tracer):
    return
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise TypeError(f"{name} must be a real scalar, got {value!r}.") from None
  if math.isnan(v) or not ok(v):
    raise ValueError(f"{name} must be {what}, got {v}.")


def _static_equal(value, target: float) -> bool:
  """True only when ``value`` is concrete and equals ``target`` (then work can be skipped)."""
  if isinstance(value, jax.core.Tracer):
    return False
  try:
    return float(value) == target
  except (TypeError, ValueError):
    return False


def _null_fn(null_cond) -> Callable[[PyTree], PyTree]:
  """Builds ``cond -> null cond`` from the ``null_cond`` argument of a rule."""
  if callable(null_cond):
    return null_cond

  def make(cond):
    if cond is None:
      raise ValueError(
        "this guidance rule needs a conditional batch: pass `cond` to jaxdiff.sample."
      )
    return jax.tree.map(lambda c: jnp.broadcast_to(jnp.asarray(null_cond, c.dtype), c.shape), cond)

  return make


def _batch_t(ctx: StepContext, x: Array) -> Array:
  return jnp.broadcast_to(jnp.asarray(ctx.t), (x.shape[0],))


def _cat(*trees):
  return jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *trees)


def _evaluate(denoise: Denoiser, x: Array, t: Array, conds: list, **kwargs) -> list[Array]:
  """Evaluates ``denoise`` at the same ``(x, t)`` for several conditions in ONE call."""
  n = len(conds)
  if n == 1:
    return [denoise(x, t, conds[0], **kwargs)]
  out = denoise(
    jnp.concatenate([x] * n, axis=0), jnp.concatenate([t] * n, axis=0), _cat(*conds), **kwargs
  )
  return list(jnp.split(out, n, axis=0))


def _bcast(v: Array, x: Array) -> Array:
  """Reshapes a per-sample ``(B,)`` array to broadcast against ``x`` of shape ``(B, ...)``."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def _sum_ps(a: Array) -> Array:
  """Per-sample sum over all non-batch axes."""
  return jnp.sum(a, axis=tuple(range(1, a.ndim)))


def _nfe(n) -> Array:
  return jnp.asarray(n, jnp.int32)


def _compute_dtype(x: Array):
  return jnp.promote_types(x.dtype, jnp.float32)


def _stateless_init(x_T, cond):
  del x_T, cond
  return ()


def _cfg_combine(x_c: Array, x_u: Array, scale) -> Array:
  return x_u + jnp.asarray(scale, x_c.dtype) * (x_c - x_u)


# ----------------------------------------------------------------------------------------
# CFG (+ rescale).


def cfg(scale, *, rescale=0.0, null_cond=-1) -> GuidanceRule:
  r"""Classifier-free guidance, optionally with guidance rescale.

  .. math::

    \hat x_{\text{cfg}} = \hat x_u + w\,(\hat x_c - \hat x_u), \qquad
    \hat x = \phi\,\hat x_{\text{cfg}}\,\frac{\operatorname{std}(\hat x_c)}
      {\operatorname{std}(\hat x_{\text{cfg}})} + (1-\phi)\,\hat x_{\text{cfg}}

  with ``x_c = denoise(x, t, cond)`` and ``x_u = denoise(x, t, null)`` evaluated in one
  batched call (``nfe = 2``), standard deviations per sample over all non-batch axes.

  **Scale conventions.** Here ``w = scale`` multiplies the difference from the
  unconditional prediction (diffusers' ``guidance_scale``, Lin et al.): ``w = 0`` is the
  unconditional model, ``w = 1`` the conditional model, ``w > 1`` guidance. Ho & Salimans
  (2022) write :math:`(1 + w')\,\hat\epsilon_c - w'\,\hat\epsilon_u`, i.e. ``w = 1 + w'``
  (``w' = 0`` is the conditional model, ``w' = -1`` the unconditional one). The
  combination is affine, so applying it to ``x0`` or to ``eps`` gives the same step.

  The rescale (Lin et al., Sec. 3.4, Eqs. 15-16) acts here on the denoised prediction
  (the paper's models predict ``v``; std-matching of the prediction is the same idea on
  the quantity every solver here consumes). A zero ``std(x_cfg)`` leaves it unscaled.

  Args:
    scale: guidance scale ``w`` (see conventions above); float or traced scalar.
    rescale: ``phi`` in ``[0, 1]``; 0 disables the rescale (Lin et al. use 0.7).
    null_cond: unconditional label (default ``-1`` broadcast over the batch), or a
      callable ``cond -> null_cond`` for structured conditions.

  Returns:
    A stateless :class:`~jaxdiff.GuidanceRule` (``nfe = 2``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, StepContext
    >>> den = lambda x, t, c: x * (1.0 + (c >= 0)[:, None])
    >>> rule = guidance.cfg(3.0)
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> pred, _, nfe = rule.apply(den, jnp.ones((2, 3)), jnp.array([0, 1]), ctx, ())
    >>> float(pred.x0[0, 0]), int(nfe)
    (4.0, 2)

  References:
    Ho & Salimans, "Classifier-Free Diffusion Guidance", arXiv:2207.12598 (Eq. 6).
    Lin, Liu, Li & Yang, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    arXiv:2305.08891 (Sec. 3.4, Eqs. 15-16).
  """
  _check("cfg: rescale", rescale, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
  null = _null_fn(null_cond)
  use_rescale = not _static_equal(rescale, 0.0)

  def apply(denoise, x, cond, ctx, state):
    x_c, x_u = _evaluate(denoise, x, _batch_t(ctx, x), [cond, null(cond)])
    x0 = _cfg_combine(x_c, x_u, scale)
    if use_rescale:
      x0 = _rescale(x0, x_c, rescale)
    return Prediction.of(x0), state, _nfe(2)

  return GuidanceRule(_stateless_init, apply)


def _rescale(x_cfg: Array, x_c: Array, phi) -> Array:
  axes = tuple(range(1, x_cfg.ndim))
  std_c = jnp.std(x_c, axis=axes, keepdims=True)
  std_cfg = jnp.std(x_cfg, axis=axes, keepdims=True)
  ratio = jnp.where(std_cfg > 0, std_c / jnp.where(std_cfg > 0, std_cfg, 1), 1)
  phi = jnp.asarray(phi, x_cfg.dtype)
  return x_cfg * (phi * ratio + (1 - phi))


# ----------------------------------------------------------------------------------------
# APG.


class APGState(NamedTuple):
  """Adaptive Projected Guidance state: the reverse-momentum running average."""

  running: Array


def apg(scale, *, eta=0.0, norm_threshold=float("inf"), momentum=0.0, null_cond=-1):
  r"""Adaptive Projected Guidance (APG) on the denoised prediction.

  .. math::

    \Delta_t = \hat x_c - \hat x_u,\quad
    m_t = \Delta_t + \beta\, m_{t-1},\quad
    \tilde m_t = m_t \min\!\Big(1, \frac{r}{\lVert m_t\rVert}\Big),

    \tilde m_t = \tilde m_t^{\parallel} + \tilde m_t^{\perp}
    \ \text{w.r.t. } \hat x_c,\qquad
    \hat x = \hat x_c + (w - 1)\,(\tilde m_t^{\perp} + \eta\,\tilde m_t^{\parallel})

  Norms and inner products are per sample over all non-batch axes, computed in at least
  float32. With ``eta = 1, r = inf, beta = 0`` this is exactly CFG with scale ``w``
  (:func:`cfg` convention: ``w = 1`` conditional). Hazards: a zero ``x_c`` has no
  direction, so its parallel part is 0 (everything counts as orthogonal); a zero
  ``m_t`` is not rescaled.

  Args:
    scale: guidance scale ``w`` (same convention as :func:`cfg`).
    eta: weight of the component parallel to ``x_c`` (paper: 0).
    norm_threshold: ``r > 0``, the radius the (momentum) update is clipped to; ``inf``
      disables the clipping.
    momentum: ``beta`` in ``(-1, 0]``; the paper uses negative ("reverse") momentum, e.g.
      -0.5. The running average lives in the rule state, reset at every sampling call.
    null_cond: unconditional label or ``cond -> null`` callable.

  Returns:
    A :class:`~jaxdiff.GuidanceRule` with state :class:`APGState` (``nfe = 2``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, StepContext
    >>> den = lambda x, t, c: x * (1.0 + (c >= 0)[:, None])
    >>> rule = guidance.apg(5.0, eta=0.0, norm_threshold=2.0, momentum=-0.5)
    >>> x = jnp.ones((2, 3))
    >>> state = rule.init(x, jnp.array([0, 1]))
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> pred, state, nfe = rule.apply(den, x, jnp.array([0, 1]), ctx, state)
    >>> pred.x0.shape, int(nfe)
    ((2, 3), 2)

  References:
    Sadat, Hilliges & Weber, "Eliminating Oversaturation and Artifacts of High Guidance
    Scales in Diffusion Models", arXiv:2410.02416 (Sec. 4, Algorithm 1).
  """
  _check("apg: eta", eta, lambda v: math.isfinite(v), "finite")
  _check("apg: norm_threshold", norm_threshold, lambda v: v > 0, "> 0 (inf disables it)")
  _check("apg: momentum", momentum, lambda v: -1.0 < v <= 0.0, "in (-1, 0] (reverse momentum)")
  null = _null_fn(null_cond)
  clip = not _static_equal(norm_threshold, float("inf"))

  def init(x_T, cond):
    del cond
    return APGState(jnp.zeros(x_T.shape, _compute_dtype(x_T)))

  def apply(denoise, x, cond, ctx, state):
    x_c, x_u = _evaluate(denoise, x, _batch_t(ctx, x), [cond, null(cond)])
    dt = _compute_dtype(x_c)
    xc, xu = x_c.astype(dt), x_u.astype(dt)
    running = (xc - xu) + jnp.asarray(momentum, dt) * state.running
    diff = running
    if clip:
      norm = jnp.sqrt(_sum_ps(diff * diff))
      r = jnp.asarray(norm_threshold, dt)
      factor = jnp.where(norm > r, r / jnp.where(norm > 0, norm, 1), 1)
      diff = diff * _bcast(factor, diff)
    cnorm = jnp.sqrt(_sum_ps(xc * xc))
    unit = xc / _bcast(jnp.where(cnorm > 0, cnorm, 1), xc)
    parallel = _bcast(_sum_ps(diff * unit), diff) * unit
    update = (diff - parallel) + jnp.asarray(eta, dt) * parallel
    x0 = xc + (jnp.asarray(scale, dt) - 1) * update
    return Prediction.of(x0.astype(x_c.dtype)), APGState(running), _nfe(2)

  return GuidanceRule(init, apply)


# ----------------------------------------------------------------------------------------
# CFG++.


def cfgpp(scale, *, null_cond=-1) -> GuidanceRule:
  r"""CFG++: guidance interpolated on the manifold, re-noised with the unconditional noise.

  .. math::

    \hat x_0 = \hat x_u + \lambda\,(\hat x_c - \hat x_u),\qquad
    \hat\epsilon_{\text{renoise}} = \hat\epsilon_u
    \ \Leftrightarrow\ \hat x_0^{\text{renoise}} = \hat x_u

  The returned :class:`~jaxdiff.Prediction` denoises to ``x0`` and re-noises with the
  unconditional prediction (the solver recovers ``eps_u = (x - alpha x_u) / sigma``);
  this is Algorithm 1 (DDIM) of the paper and carries over to every solver that uses
  ``x0_renoise`` for its noise direction (Euler, DPM-Solver++(2M): Algorithms 2-3).
  ``lambda = 0`` is unconditional DDIM; ``lambda = 1`` denoises with the conditional
  prediction but still re-noises with the unconditional one (it is *not* the
  conditional trajectory).

  Args:
    scale: ``lambda`` in ``[0, 1]`` (the paper uses 0.2 - 0.8); a negative or ``> 1`` value
      raises ``ValueError`` (when concrete).
    null_cond: unconditional label or ``cond -> null`` callable.

  Returns:
    A stateless :class:`~jaxdiff.GuidanceRule` (``nfe = 2``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, StepContext
    >>> den = lambda x, t, c: x * (1.0 + (c >= 0)[:, None])
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> pred, _, _ = guidance.cfgpp(0.5).apply(den, jnp.ones((1, 2)), jnp.array([3]), ctx, ())
    >>> float(pred.x0[0, 0]), float(pred.x0_renoise[0, 0])
    (1.5, 1.0)

  References:
    Chung, Kim, Park, Nam & Ye, "CFG++: Manifold-constrained Classifier Free Guidance for
    Diffusion Models", arXiv:2406.08070 (Eq. 11, Algorithms 1-3).
  """
  _check("cfgpp: scale (lambda)", scale, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
  null = _null_fn(null_cond)

  def apply(denoise, x, cond, ctx, state):
    x_c, x_u = _evaluate(denoise, x, _batch_t(ctx, x), [cond, null(cond)])
    return Prediction(_cfg_combine(x_c, x_u, scale), x_u), state, _nfe(2)

  return GuidanceRule(_stateless_init, apply)


# ----------------------------------------------------------------------------------------
# Adaptive Guidance and LinearAG.


class AdaptiveState(NamedTuple):
  """Adaptive Guidance state: per-sample flag "guidance switched off"."""

  done: Array


def _eps(x, x0, ctx):
  """Noise prediction from a data prediction; sigma = 0 falls back to ``-alpha x0``."""
  sigma = jnp.asarray(ctx.sigma, x0.dtype)
  alpha = jnp.asarray(ctx.alpha, x0.dtype)
  safe = jnp.where(sigma > 0, sigma, 1)
  return jnp.where(sigma > 0, (x - alpha * x0) / safe, -alpha * x0)


def _cosine(a: Array, b: Array) -> Array:
  """Per-sample cosine similarity; two zero vectors count as identical (cosine 1)."""
  dt = _compute_dtype(a)
  a, b = a.astype(dt), b.astype(dt)
  na, nb = jnp.sqrt(_sum_ps(a * a)), jnp.sqrt(_sum_ps(b * b))
  denom = na * nb
  cos = _sum_ps(a * b) / jnp.where(denom > 0, denom, 1)
  return jnp.where(denom > 0, cos, jnp.where((na == 0) & (nb == 0), 1.0, 0.0))


def adaptive(scale, threshold, *, null_cond=-1) -> GuidanceRule:
  r"""Adaptive Guidance (AG): CFG until the two predictions agree, then conditional only.

  .. math::

    \gamma_t = \cos\!\big(\hat\epsilon_c(x_t), \hat\epsilon_u(x_t)\big),\qquad
    \hat x = \begin{cases} \hat x_u + w(\hat x_c - \hat x_u) & \text{before the switch}\\
      \hat x_c & \text{after } \gamma_s > \bar\gamma \text{ at an earlier step } s\end{cases}

  The cosine similarity is taken between the *noise* predictions
  ``eps = (x - alpha x0) / sigma`` as in the paper (per sample, over all non-batch axes).
  The switch is per sample and permanent for the rest of the call. While some sample of
  the batch still needs guidance both predictions are computed in one batched call
  (``nfe = 2``); once every sample has switched, a top-level ``lax.cond`` on that
  batch-level scalar takes the branch with ONE network call (``nfe = 1``), so the saving
  is real under ``jit``. (Under an outer ``jax.vmap`` the predicate becomes batched and
  XLA evaluates both branches: vmap over the batch axis instead of around the sampler.)

  Args:
    scale: CFG scale ``w`` (:func:`cfg` convention).
    threshold: ``gamma_bar``; the paper's setting is around 0.99 - 0.999. ``> 1`` never
      switches (plain CFG).
    null_cond: unconditional label or ``cond -> null`` callable.

  Returns:
    A :class:`~jaxdiff.GuidanceRule` with state :class:`AdaptiveState`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, StepContext
    >>> den = lambda x, t, c: 0.5 * x + 0.01 * c[:, None]
    >>> rule = guidance.adaptive(3.0, 0.9)
    >>> x, c = jnp.ones((2, 3)), jnp.array([0, 1])
    >>> ctx = StepContext(jnp.array(0.5), 0.8, 0.6, 0, 10, None)
    >>> _, state, nfe = rule.apply(den, x, c, ctx, rule.init(x, c))
    >>> int(nfe), bool(state.done.all())
    (2, True)
    >>> _, state, nfe = rule.apply(den, x, c, ctx, state)
    >>> int(nfe)
    1

  References:
    Castillo, Kumar, Bilen, et al., "Adaptive Guidance: Training-free Acceleration of
    Conditional Diffusion Models", arXiv:2312.12487 (Sec. 4).
  """
  null = _null_fn(null_cond)

  def init(x_T, cond):
    del cond
    return AdaptiveState(jnp.zeros((x_T.shape[0],), jnp.bool_))

  def apply(denoise, x, cond, ctx, state):
    t = _batch_t(ctx, x)

    def conditional_only(done):
      x_c = denoise(x, t, cond)
      return x_c, done, _nfe(1)

    def guided(done):
      x_c, x_u = _evaluate(denoise, x, t, [cond, null(cond)])
      x0 = jnp.where(_bcast(done, x_c), x_c, _cfg_combine(x_c, x_u, scale))
      gamma = _cosine(_eps(x, x_c, ctx), _eps(x, x_u, ctx))
      return x0, done | (gamma > threshold), _nfe(2)

    x0, done, nfe = lax.cond(jnp.all(state.done), conditional_only, guided, state.done)
    return Prediction.of(x0), AdaptiveState(done), nfe

  return GuidanceRule(init, apply)


class LinearAGState(NamedTuple):
  """LinearAG state: previous step's conditional and (real or estimated) unconditional."""

  prev_cond: Array
  prev_uncond: Array


def linear_ag(scale, coefficients, estimate, *, null_cond=-1) -> GuidanceRule:
  r"""LinearAG: replace the unconditional evaluation by a linear estimate from the past.

  .. math::

    \hat x_u(t_i) \approx a_i\,\hat x_c(t_i) + b_i\,\hat x_c(t_{i-1}) + c_i\,\hat x_u(t_{i-1}),
    \qquad \hat x = \hat x_u + w(\hat x_c - \hat x_u)

  On steps with ``estimate[i] = True`` only the conditional network is called (``nfe = 1``,
  chosen by ``lax.cond`` on the step index, so the saving survives ``jit``) and the
  unconditional prediction is the affine estimate; elsewhere both are evaluated in one
  call (``nfe = 2``). The previous step's unconditional term is the estimate itself when
  that step was estimated too. The coefficients are fit per step by least squares on
  recorded CFG trajectories (:func:`fit_linear_ag`). The regression is on ``x0``; since
  ``eps`` is affine in ``x0`` at fixed ``x_t``, regressing on ``eps`` as the paper does
  differs only through the change of ``x_t`` between steps.

  Args:
    scale: CFG scale ``w`` (:func:`cfg` convention).
    coefficients: array ``(num_steps, 3)`` of ``(a_i, b_i, c_i)``.
    estimate: bool array ``(num_steps,)``; step 0 must not be estimated (no history).
    null_cond: unconditional label or ``cond -> null`` callable.

  Returns:
    A :class:`~jaxdiff.GuidanceRule` with state :class:`LinearAGState`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance
    >>> coef = jnp.zeros((4, 3)).at[:, 2].set(1.0)   # "u_t = u_{t-1}"
    >>> rule = guidance.linear_ag(3.0, coef, jnp.array([False, True, False, True]))
    >>> rule.init(jnp.zeros((2, 3)), None).prev_cond.shape
    (2, 3)

  References:
    Castillo, Kumar, Bilen, et al., "Adaptive Guidance: Training-free Acceleration of
    Conditional Diffusion Models", arXiv:2312.12487 (LinearAG, Sec. 5).
  """
  coefficients = jnp.asarray(coefficients)
  estimate = jnp.asarray(estimate)
  if coefficients.ndim != 2 or coefficients.shape[1] != 3:
    raise ValueError(
      f"linear_ag: coefficients must have shape (num_steps, 3), got {coefficients.shape}."
    )
  if estimate.shape != coefficients.shape[:1] or estimate.dtype != jnp.bool_:
    raise ValueError(
      f"linear_ag: estimate must be a bool array of shape {coefficients.shape[:1]}, "
      f"got {estimate.dtype}{estimate.shape}."
    )
  if bool(estimate[0]):
    raise ValueError("linear_ag: step 0 cannot be estimated (there is no previous step).")
  null = _null_fn(null_cond)

  def init(x_T, cond):
    del cond
    z = jnp.zeros(x_T.shape, x_T.dtype)
    return LinearAGState(z, z)

  def apply(denoise, x, cond, ctx, state):
    t = _batch_t(ctx, x)
    if estimate.shape[0] != 0 and not isinstance(ctx.num_steps, jax.core.Tracer):
      if int(ctx.num_steps) != estimate.shape[0]:
        raise ValueError(
          f"linear_ag: built for {estimate.shape[0]} steps, sampling uses {int(ctx.num_steps)}."
        )
    i = jnp.clip(ctx.step, 0, estimate.shape[0] - 1)

    def estimated(_):
      x_c = denoise(x, t, cond)
      a, b, c = (coefficients[i, k].astype(x_c.dtype) for k in range(3))
      x_u = (
        a * x_c + b * state.prev_cond.astype(x_c.dtype) + c * state.prev_uncond.astype(x_c.dtype)
      )
      return x_c, x_u, _nfe(1)

    def evaluated(_):
      x_c, x_u = _evaluate(denoise, x, t, [cond, null(cond)])
      return x_c, x_u, _nfe(2)

    x_c, x_u, nfe = lax.cond(estimate[i], estimated, evaluated, None)
    new = LinearAGState(x_c.astype(state.prev_cond.dtype), x_u.astype(state.prev_uncond.dtype))
    return Prediction.of(_cfg_combine(x_c, x_u, scale)), new, nfe

  return GuidanceRule(init, apply)


def fit_linear_ag(cond_preds: Array, uncond_preds: Array) -> Array:
  r"""Fits LinearAG coefficients per step by least squares on recorded CFG trajectories.

  .. math::

    (a_i, b_i, c_i) = \arg\min \sum \big\lVert \hat x_u(t_i) - a\,\hat x_c(t_i)
      - b\,\hat x_c(t_{i-1}) - c\,\hat x_u(t_{i-1}) \big\rVert^2

  Args:
    cond_preds: conditional predictions along CFG trajectories, shape
      ``(num_steps, N, ...)`` (step-major; ``N`` samples).
    uncond_preds: the matching unconditional predictions, same shape.

  Returns:
    Coefficients ``(num_steps, 3)`` for :func:`linear_ag`; row 0 is ``(0, 0, 0)`` (step 0
    is always evaluated). A singular per-step system gets the minimum-norm solution.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance
    >>> c = jnp.arange(24.0).reshape(3, 2, 4)
    >>> guidance.fit_linear_ag(c, 0.5 * c).shape
    (3, 3)

  References:
    Castillo et al., arXiv:2312.12487 (LinearAG, Sec. 5).
  """
  cond_preds, uncond_preds = jnp.asarray(cond_preds), jnp.asarray(uncond_preds)
  if cond_preds.shape != uncond_preds.shape or cond_preds.ndim < 2:
    raise ValueError(
      "fit_linear_ag: cond_preds and uncond_preds must share a (num_steps, N, ...) shape."
    )
  n = cond_preds.shape[0]
  flat_c = cond_preds.reshape(n, -1)
  flat_u = uncond_preds.reshape(n, -1)
  feats = jnp.stack([flat_c[1:], flat_c[:-1], flat_u[:-1]], axis=-1)  # (n-1, P, 3)
  sol = jax.vmap(lambda a, y: jnp.linalg.lstsq(a, y)[0])(feats, flat_u[1:])
  return jnp.concatenate([jnp.zeros((1, 3), sol.dtype), sol], axis=0)


# ----------------------------------------------------------------------------------------
# PAG.


def _accepts_perturb(fn) -> bool | None:
  try:
    sig = inspect.signature(fn)
  except (TypeError, ValueError):
    return None
  for p in sig.parameters.values():
    if p.kind is inspect.Parameter.VAR_KEYWORD or (
      p.name == "perturb" and p.kind is not inspect.Parameter.POSITIONAL_ONLY
    ):
      return True
  return False


def _depends_on_last_input(jaxpr) -> bool:
  """Whether any output of ``jaxpr`` can depend on its last input (forward taint)."""
  tainted = {id(jaxpr.invars[-1])}
  for eqn in jaxpr.eqns:
    if any(not isinstance(v, jax_core.Literal) and id(v) in tainted for v in eqn.invars):
      tainted.update(id(v) for v in eqn.outvars)
  return any(not isinstance(v, jax_core.Literal) and id(v) in tainted for v in jaxpr.outvars)


def _check_pag_denoiser(denoise, x, t, cond) -> None:
  if _accepts_perturb(denoise) is False:
    raise TypeError(
      "pag: the denoiser does not accept the keyword argument `perturb` (bool (B,)). "
      "Build it on jaxdiff.guidance.SelfAttention (or any layer that honours the flag)."
    )
  b = x.shape[0]
  leaves, treedef = jax.tree.flatten(cond)

  def probe(x_, t_, leaves_, p):
    return denoise(x_, t_, jax.tree.unflatten(treedef, leaves_), perturb=p)

  sds = lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))
  try:
    closed = jax.make_jaxpr(probe)(
      sds(x), sds(t), [sds(leaf) for leaf in leaves], jax.ShapeDtypeStruct((b,), jnp.bool_)
    )
  except TypeError as e:
    if "perturb" in str(e):
      raise TypeError(
        "pag: the denoiser does not accept the keyword argument `perturb` (bool (B,))."
      ) from e
    raise
  if not _depends_on_last_input(closed.jaxpr):
    raise ValueError(
      "pag: the denoiser's output does not depend on `perturb` (it ignores the PAG flag), so "
      "PAG would silently reduce to CFG. Route the flag to its self-attention layers "
      "(jaxdiff.guidance.SelfAttention(...)(h, perturb=perturb))."
    )


def pag(pag_scale, *, cfg_scale=1.0, null_cond=-1) -> GuidanceRule:
  r"""Perturbed-Attention Guidance, optionally combined with CFG.

  .. math::

    \hat x = \hat x_c + (w - 1)\,(\hat x_c - \hat x_u) + s\,(\hat x_c - \tilde x_c)

  where :math:`\tilde x_c` is the conditional prediction of the network whose chosen
  self-attention maps are replaced by the identity (the denoiser is called with
  ``perturb=True`` for those samples; see :class:`jaxdiff.guidance.SelfAttention`).
  In the paper's notation (Eq. 12 and its CFG combination, Sec. 4 / App.) this is
  :math:`\epsilon_c + s(\epsilon_c - \hat\epsilon_c) + w'(\epsilon_c - \epsilon_u)` with
  ``w' = w - 1``; ``w = cfg_scale`` follows the :func:`cfg` convention (``w = 1``: no
  CFG term, and then the unconditional evaluation is skipped). All evaluations of a step
  go in one batched call with a per-sample ``perturb`` flag (``nfe = 2`` without CFG,
  ``3`` with it).

  At trace time the rule checks that the denoiser accepts ``perturb`` and that its
  output depends on it in the jaxpr; a denoiser that ignores the flag raises
  ``ValueError`` (PAG would silently be a no-op).

  Args:
    pag_scale: ``s >= 0`` (the paper uses 3.0 for unconditional sampling).
    cfg_scale: ``w`` in the :func:`cfg` convention; 1 disables the CFG term.
    null_cond: unconditional label or ``cond -> null`` callable (used when CFG is on).

  Returns:
    A stateless :class:`~jaxdiff.GuidanceRule`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, StepContext
    >>> def den(x, t, c, *, perturb=None):
    ...   return jnp.where(perturb[:, None], 0.5 * x, x)
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> pred, _, nfe = guidance.pag(2.0).apply(den, jnp.ones((1, 2)), jnp.array([0]), ctx, ())
    >>> float(pred.x0[0, 0]), int(nfe)
    (2.0, 2)

  References:
    Ahn, Cho, Min, Jang, Kim, Kim, Park, Jin & Kim, "Self-Rectifying Diffusion Sampling
    with Perturbed-Attention Guidance", arXiv:2403.17377 (Eqs. 10-12).
  """
  _check("pag: pag_scale", pag_scale, lambda v: v >= 0, ">= 0")
  null = _null_fn(null_cond)
  use_cfg = not _static_equal(cfg_scale, 1.0)

  def apply(denoise, x, cond, ctx, state):
    t = _batch_t(ctx, x)
    b = x.shape[0]
    _check_pag_denoiser(denoise, x, t, cond)
    conds = [cond, cond] + ([null(cond)] if use_cfg else [])
    n = len(conds)
    flags = jnp.zeros((n, b), jnp.bool_).at[1].set(True).reshape(-1)
    outs = _evaluate(denoise, x, t, conds, perturb=flags)
    x_c, x_p = outs[0], outs[1]
    x0 = x_c + jnp.asarray(pag_scale, x_c.dtype) * (x_c - x_p)
    if use_cfg:
      x0 = x0 + (jnp.asarray(cfg_scale, x_c.dtype) - 1) * (x_c - outs[2])
    return Prediction.of(x0), state, _nfe(n)

  return GuidanceRule(_stateless_init, apply)


# ----------------------------------------------------------------------------------------
# Autoguidance.


def autoguidance(weak_denoise: Denoiser, scale) -> GuidanceRule:
  r"""Autoguidance: guide the model away from a weaker version of itself.

  .. math::

    \hat x = \hat x_1 + (w - 1)\,(\hat x_1 - \hat x_0)
           = w\,D_1(x; \sigma, c) + (1 - w)\,D_0(x; \sigma, c)

  ``D_1`` is the main denoiser and ``D_0 = weak_denoise`` a smaller / less-trained model
  with the same conditioning (both conditional). The two networks differ, so they cannot
  share a call: ``nfe = 2`` (one evaluation of each model per sample). ``w = 1`` is the
  main model, ``w = 0`` the weak one.

  Args:
    weak_denoise: the guiding model ``denoise(x, t, cond) -> x0_hat``.
    scale: ``w`` (the paper's best ImageNet-512 settings use 2.0 - 2.5).

  Returns:
    A stateless :class:`~jaxdiff.GuidanceRule` (``nfe = 2``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, StepContext
    >>> main, weak = (lambda x, t, c: x), (lambda x, t, c: 0.5 * x)
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> pred, _, _ = guidance.autoguidance(weak, 2.0).apply(main, jnp.ones((1, 2)), None, ctx, ())
    >>> float(pred.x0[0, 0])
    1.5

  References:
    Karras, Aittala, Kynkäänniemi, Lehtinen, Aila & Laine, "Guiding a Diffusion Model with
    a Bad Version of Itself", arXiv:2406.02507 (Eq. 1).
  """
  if not callable(weak_denoise):
    raise TypeError("autoguidance: weak_denoise must be a denoiser callable.")

  def apply(denoise, x, cond, ctx, state):
    t = _batch_t(ctx, x)
    x_1 = denoise(x, t, cond)
    x_0 = weak_denoise(x, t, cond).astype(x_1.dtype)
    return Prediction.of(_cfg_combine(x_1, x_0, scale)), state, _nfe(2)

  return GuidanceRule(_stateless_init, apply)


# ----------------------------------------------------------------------------------------
# Classifier-based rules.


def smooth_relu(x: Array, beta=1.0) -> Array:
  r"""Softplus with sharpness ``beta``, the smoothed ReLU EluCD swaps into classifiers.

  .. math:: \operatorname{softplus}_\beta(x) = \tfrac{1}{\beta}\log(1 + e^{\beta x})
    \xrightarrow[\beta\to\infty]{} \max(x, 0)

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff.guidance import smooth_relu
    >>> round(float(smooth_relu(jnp.array(0.0), beta=2.0)), 4)
    0.3466

  References:
    Ma, Hu, Wang & Sun, "Elucidating The Design Space of Classifier-Guided Diffusion
    Generation", arXiv:2310.11311 (Sec. 4.3).
  """
  return jax.nn.softplus(beta * x) / beta


def _labels(cond, name: str) -> Array:
  if cond is None or not isinstance(cond, jax.Array | int) and not hasattr(cond, "dtype"):
    raise TypeError(f"{name}: cond must be an integer label array of shape (B,), got {cond!r}.")
  labels = jnp.asarray(cond)
  if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.ndim != 1:
    raise TypeError(
      f"{name}: cond must be an integer label array of shape (B,), "
      f"got {labels.dtype}{labels.shape}."
    )
  return labels


def _logits(classifier_fn, inputs, b: int, num_classes: int, name: str) -> Array:
  logits = classifier_fn(*inputs)
  if jnp.shape(logits) != (b, num_classes):
    raise ValueError(
      f"{name}: the classifier must return logits of shape (B, num_classes) = "
      f"({b}, {num_classes}), got {jnp.shape(logits)}."
    )
  return logits


def classifier(
  classifier_fn: Callable[..., Array],
  num_classes: int,
  scale,
  *,
  input: str = "denoised",
  joint_temperature=1.0,
  marginal_temperature=None,
  schedule_amplitude=0.0,
  guide_conditional: bool = False,
  null_cond=-1,
) -> GuidanceRule:
  r"""Classifier guidance; EluCD-style with an off-the-shelf classifier on ``x0``.

  .. math::

    g = \nabla_{z}\Big[\tau_1 f_y(z) - \log\sum_k e^{\tau_2 f_k(z)}\Big],\qquad
    \hat x = \hat x_0 + s\,\frac{\sigma_t^2}{\alpha_t}
      \Big(1 + \kappa \sin\!\big(\pi\,\tfrac{N - 1 - i}{N}\big)\Big)\, g

  ``f = classifier_fn(...)`` are logits ``(B, num_classes)``, ``y = cond`` the target
  labels, ``i`` the step index of ``N``.

  * ``input="noisy"``: classic classifier guidance (Dhariwal & Nichol): a noise-aware
    classifier ``classifier_fn(x_t, t)``, ``z = x_t``, ``tau_1 = tau_2 = 1``, ``kappa = 0``.
    By Tweedie, ``x0 = (x + sigma^2 score) / alpha``, so adding ``s sigma^2/alpha
    grad log p(y|x_t)`` to ``x0`` is exactly adding ``s grad log p(y|x_t)`` to the score:
    with the exact posterior and ``s = 1`` the unconditional model becomes the exact
    conditional one.
  * ``input="denoised"`` (EluCD, Sec. 4.2): an off-the-shelf classifier
    ``classifier_fn(x0_hat)`` on the denoised prediction, gradient taken w.r.t. ``x0_hat``
    (not back-propagated through the denoiser, as in the official code). ``tau_1`` is the
    joint temperature and ``tau_2 = marginal_temperature`` (Sec. 4.4; ``tau_2 < tau_1``
    tilts the direction from the conditional ``log p(y|x)`` toward the joint ``f_y``).
    Smoothed activations (Sec. 4.3) belong to the classifier: build it with
    :func:`smooth_relu`.
  * The guidance schedule (Sec. 4.5) multiplies the classic coefficient by
    ``1 + kappa sin(pi (N-1-i)/N)``. The official code adds
    ``kappa sin(pi t/T) max_t Sigma_t`` to the DDPM posterior variance ``Sigma_t`` that
    scales the gradient (``kappa = 0.3``); ``Sigma_t`` maps to ``sigma_t^2/alpha_t`` in
    ``x0`` space, and we keep the sine factor relative to it so the rule does not depend
    on one solver's discretisation. This is our transcription, not the paper's constant.

  The network makes one evaluation per step (``nfe = 1``; classifier calls are not
  network evaluations), on the unconditional label unless ``guide_conditional``.
  At ``alpha_t = 0`` the coefficient is 0 (no guidance at pure noise).

  Args:
    classifier_fn: ``(x0_hat) -> logits`` (``"denoised"``) or ``(x_t, t) -> logits``
      (``"noisy"``), logits of shape ``(B, num_classes)``; a different shape raises
      ``ValueError`` at trace time.
    num_classes: number of classes ``K``.
    scale: guidance scale ``s >= 0``.
    input: ``"denoised"`` (EluCD) or ``"noisy"`` (classic).
    joint_temperature: ``tau_1 > 0``.
    marginal_temperature: ``tau_2 >= 0`` (default ``tau_1``: the conditional
      ``log softmax`` direction).
    schedule_amplitude: ``kappa >= 0`` of the sine schedule (0: constant schedule).
    guide_conditional: evaluate the network on ``cond`` instead of the null label (guiding
      a class-conditional model, as in EluCD's DDPM/EDM experiments).
    null_cond: null label for the unconditional network evaluation.

  Returns:
    A stateless :class:`~jaxdiff.GuidanceRule` (``nfe = 1``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, StepContext
    >>> clf = lambda z: jnp.stack([z.sum(-1), -z.sum(-1)], axis=-1)
    >>> rule = guidance.classifier(clf, 2, 1.0)
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> pred, _, _ = rule.apply(lambda x, t, c: x, jnp.zeros((1, 2)), jnp.array([0]), ctx, ())
    >>> [round(float(v), 3) for v in pred.x0[0]]
    [1.0, 1.0]

  References:
    Ma, Hu, Wang & Sun, "Elucidating The Design Space of Classifier-Guided Diffusion
    Generation", arXiv:2310.11311 (Secs. 4.2-4.5, Algorithm 1).
    Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", arXiv:2105.05233
    (Sec. 4, Algorithm 1).
  """
  if input not in ("denoised", "noisy"):
    raise ValueError(f"classifier: input must be 'denoised' or 'noisy', got {input!r}.")
  if not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"classifier: num_classes must be an int >= 2, got {num_classes!r}.")
  _check("classifier: scale", scale, lambda v: v >= 0, ">= 0")
  _check("classifier: joint_temperature", joint_temperature, lambda v: v > 0, "> 0")
  if marginal_temperature is None:
    marginal_temperature = joint_temperature
  _check("classifier: marginal_temperature", marginal_temperature, lambda v: v >= 0, ">= 0")
  _check("classifier: schedule_amplitude", schedule_amplitude, lambda v: v >= 0, ">= 0")
  null = _null_fn(null_cond)

  def apply(denoise, x, cond, ctx, state):
    labels = _labels(cond, "classifier")
    b = x.shape[0]
    t = _batch_t(ctx, x)
    x0 = denoise(x, t, cond if guide_conditional else null(cond))

    def log_p(z):
      if input == "noisy":
        f = _logits(classifier_fn, (z, t), b, num_classes, "classifier")
      else:
        f = _logits(classifier_fn, (z,), b, num_classes, "classifier")
      f = f.astype(_compute_dtype(z))
      sel = jnp.take_along_axis(f, labels[:, None], axis=1)[:, 0]
      return jnp.sum(joint_temperature * sel - jax.nn.logsumexp(marginal_temperature * f, axis=1))

    z = x if input == "noisy" else lax.stop_gradient(x0)
    g = jax.grad(log_p)(z).astype(x0.dtype)
    alpha = jnp.asarray(ctx.alpha, x0.dtype)
    sigma = jnp.asarray(ctx.sigma, x0.dtype)
    coef = jnp.where(alpha > 0, sigma**2 / jnp.where(alpha > 0, alpha, 1), 0)
    n = jnp.asarray(ctx.num_steps, x0.dtype)
    u = (n - 1 - jnp.asarray(ctx.step, x0.dtype)) / n
    coef = coef * (1 + jnp.asarray(schedule_amplitude, x0.dtype) * jnp.sin(jnp.pi * u))
    return Prediction.of(x0 + jnp.asarray(scale, x0.dtype) * coef * g), state, _nfe(1)

  return GuidanceRule(_stateless_init, apply)


def gfcg(
  classifier_fn: Callable[[Array], Array],
  num_classes: int,
  ref_scale,
  *,
  cfg_scale=1.0,
  weak_denoise: Denoiser | None = None,
  null_cond=-1,
) -> GuidanceRule:
  r"""Gradient-free classifier guidance (GFCG), optionally with CFG or autoguidance.

  .. math::

    p = \operatorname{softmax} C(\hat x_c),\quad
    c_r = \arg\max_{k \ne y} p_k,\quad
    s_t = s_{\max}\,\frac{p_{c_r}}{p_y + p_{c_r}},

    \hat x = \hat x_c + (w - 1)(\hat x_c - \hat x_g) + s_t\,(\hat x_c - \hat x_{c_r})

  The classifier ``C`` runs in inference mode (no gradients) on the conditional denoised
  prediction ``x_c = D(x, t, y)``; the reference class ``c_r`` is the most probable class
  other than the target and the scale ``s_t`` grows with the confusion between them (0
  when the classifier is sure of ``y``, ``s_max/2`` when tied), so both are re-chosen at
  every step (time-adaptive). ``x_g`` is the CFG reference ``D(x, t, null)`` or, with
  ``weak_denoise``, the autoguidance reference ``D_weak(x, t, y)`` (GFCG + ATG, Sec. 4).
  Network calls: ``[y (, null)]`` batched, then the classifier, then ``[c_r]`` (and the
  weak model): ``nfe = 2`` (+1 with CFG/ATG). NOTE: the scale formula above is our
  transcription; check it against the paper's Sec. 3 before relying on exact numbers.

  Args:
    classifier_fn: ``(x0_hat) -> logits`` of shape ``(B, num_classes)``.
    num_classes: number of classes.
    ref_scale: ``s_max >= 0``.
    cfg_scale: ``w`` (:func:`cfg` convention) of the CFG/autoguidance term; 1 disables it.
    weak_denoise: optional weaker denoiser: the ``w`` term becomes autoguidance.
    null_cond: null label for the CFG term.

  Returns:
    A stateless :class:`~jaxdiff.GuidanceRule`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, StepContext
    >>> den = lambda x, t, c: x + c[:, None].astype(x.dtype)
    >>> clf = lambda z: jnp.stack([-z[:, 0], z[:, 0], 0 * z[:, 0]], axis=-1)
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> rule = guidance.gfcg(clf, 3, 2.0)
    >>> pred, _, nfe = rule.apply(den, jnp.zeros((1, 1)), jnp.array([1]), ctx, ())
    >>> int(nfe)
    2

  References:
    Shenoy, Pan, Balakrishnan, Cheng, Jeon, Yang & Kim, "Gradient-Free Classifier Guidance
    for Diffusion Model Sampling", arXiv:2411.15393.
  """
  if not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"gfcg: num_classes must be an int >= 2, got {num_classes!r}.")
  _check("gfcg: ref_scale", ref_scale, lambda v: v >= 0, ">= 0")
  null = _null_fn(null_cond)
  use_w = not _static_equal(cfg_scale, 1.0)

  def apply(denoise, x, cond, ctx, state):
    labels = _labels(cond, "gfcg")
    b = x.shape[0]
    t = _batch_t(ctx, x)
    with_null = use_w and weak_denoise is None
    outs = _evaluate(denoise, x, t, [cond] + ([null(cond)] if with_null else []))
    x_c = outs[0]
    logits = lax.stop_gradient(_logits(classifier_fn, (x_c,), b, num_classes, "gfcg"))
    p = jax.nn.softmax(logits.astype(_compute_dtype(logits)), axis=-1)
    p_y = jnp.take_along_axis(p, labels[:, None], axis=1)[:, 0]
    others = jnp.where(jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_), -jnp.inf, p)
    c_ref = jnp.argmax(others, axis=-1).astype(labels.dtype)
    p_r = jnp.max(others, axis=-1)
    s_t = jnp.asarray(ref_scale, p.dtype) * p_r / jnp.maximum(p_y + p_r, jnp.finfo(p.dtype).tiny)
    x_r = denoise(x, t, c_ref)
    x0 = x_c + _bcast(s_t.astype(x_c.dtype), x_c) * (x_c - x_r)
    n = 2
    if use_w:
      x_g = outs[1] if with_null else weak_denoise(x, t, cond).astype(x_c.dtype)
      x0 = x0 + (jnp.asarray(cfg_scale, x_c.dtype) - 1) * (x_c - x_g)
      n = 3
    return Prediction.of(x0), state, _nfe(n)

  return GuidanceRule(_stateless_init, apply)


# ----------------------------------------------------------------------------------------
# Residual CFG (StreamDiffusion).


class RCFGState(NamedTuple):
  """RCFG state: the reference denoised latent the virtual negative noise points to."""

  reference: Array


def rcfg(scale, *, variant="self", reference=None, delta=1.0, null_cond=-1) -> GuidanceRule:
  r"""Residual classifier-free guidance (RCFG) from StreamDiffusion.

  .. math::

    \bar\epsilon_n(x_{t}) = \delta\,\frac{x_{t} - \alpha_t\,\hat x_{\text{ref}}}{\sigma_t},
    \qquad \hat\epsilon = \bar\epsilon_n + \gamma(\hat\epsilon_c - \bar\epsilon_n)
    \ \Leftrightarrow\
    \hat x = \hat x_n + \gamma(\hat x_c - \hat x_n),\quad
    \hat x_n = \delta\,\hat x_{\text{ref}} + (1 - \delta)\,x_t/\alpha_t

  The negative ("unconditional") noise is *virtual*: the residual between the current
  latent and a fixed reference latent, so no negative network call is needed.

  * ``variant="self"`` (Self-Negative RCFG, Eq. 8): ``x_ref`` is the input image latent
    ``x_0`` of the image-to-image stream (``reference``: an array ``(B, ...)`` or a
    callable ``cond -> array``). ``nfe = 1`` at every step.
  * ``variant="onetime"`` (Onetime-Negative RCFG, Eqs. 9-10): the negative condition is
    evaluated once, at step 0 (batched with the conditional call, ``nfe = 2``), and its
    denoised prediction becomes ``x_ref`` for every later step (``nfe = 1``, chosen by a
    ``lax.cond`` on the step index). The reference lives in the rule state.

  ``delta`` is the magnitude moderation of the virtual noise used in the official code
  (default 1: the paper's equations); ``delta != 1`` needs ``alpha_t > 0``.

  Args:
    scale: ``gamma`` (:func:`cfg` convention).
    variant: ``"self"`` or ``"onetime"``.
    reference: the input latent for ``"self"`` (required there, unused for ``"onetime"``).
    delta: virtual-noise magnitude ``delta``.
    null_cond: negative label (``"onetime"``).

  Returns:
    A :class:`~jaxdiff.GuidanceRule` with state :class:`RCFGState`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, StepContext
    >>> rule = guidance.rcfg(2.0, variant="self", reference=jnp.zeros((1, 2)))
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> x = jnp.ones((1, 2))
    >>> pred, _, nfe = rule.apply(lambda x, t, c: x, x, jnp.array([0]), ctx, rule.init(x, None))
    >>> float(pred.x0[0, 0]), int(nfe)
    (2.0, 1)

  References:
    Kodaira, Xu, Hazama, et al., "StreamDiffusion: A Pipeline-level Solution for Real-time
    Interactive Generation", arXiv:2312.12491 (Sec. 3.3, Eqs. 6-10).
  """
  if variant not in ("self", "onetime"):
    raise ValueError(f"rcfg: variant must be 'self' or 'onetime', got {variant!r}.")
  if variant == "self" and reference is None:
    raise ValueError(
      "rcfg: the self-negative variant needs `reference`, the input image latent x_0 "
      "(an array (B, ...) or a callable cond -> array)."
    )
  _check("rcfg: delta", delta, lambda v: v >= 0, ">= 0")
  null = _null_fn(null_cond)

  def init(x_T, cond):
    if variant == "self":
      ref = reference(cond) if callable(reference) else reference
      ref = jnp.asarray(ref)
      if ref.shape != x_T.shape:
        raise ValueError(f"rcfg: reference has shape {ref.shape}, samples have {x_T.shape}.")
      return RCFGState(ref.astype(x_T.dtype))
    return RCFGState(jnp.zeros(x_T.shape, x_T.dtype))

  def combine(x, x_c, ref, ctx):
    ref = ref.astype(x_c.dtype)
    if _static_equal(delta, 1.0):
      x_n = ref
    else:
      alpha = jnp.asarray(ctx.alpha, x_c.dtype)
      d = jnp.asarray(delta, x_c.dtype)
      x_n = d * ref + (1 - d) * x / alpha
    return _cfg_combine(x_c, x_n, scale)

  def apply(denoise, x, cond, ctx, state):
    t = _batch_t(ctx, x)
    if variant == "self":
      x_c = denoise(x, t, cond)
      return Prediction.of(combine(x, x_c, state.reference, ctx)), state, _nfe(1)

    def first(_):
      x_c, x_n = _evaluate(denoise, x, t, [cond, null(cond)])
      return x_c, x_n.astype(state.reference.dtype), _nfe(2)

    def later(_):
      return denoise(x, t, cond), state.reference, _nfe(1)

    x_c, ref, nfe = lax.cond(ctx.step == 0, first, later, None)
    return Prediction.of(combine(x, x_c, ref, ctx)), RCFGState(ref), nfe

  return GuidanceRule(init, apply)
