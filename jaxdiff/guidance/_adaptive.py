"""Adaptive Guidance and LinearAG: skip the unconditional evaluation where it is not needed."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._module import module, setfield, static
from jaxdiff._types import GuidanceRule, Prediction
from jaxdiff._validation import check_choice, is_traced
from jaxdiff.guidance._common import (
  as_array,
  batch_t,
  bcast,
  cfg_combine,
  compute_dtype,
  eps,
  evaluate,
  hypers,
  null_fn,
  poison,
  sum_ps,
)

Array = jax.Array

# What Adaptive Guidance compares: the noise predictions (the paper's gamma_t as we read it)
# or the denoised predictions (what community ports of AG compare, e.g. ComfyUI's node).
AG_VARIANTS = ("eps", "x0")
# The space LinearAG's affine estimate lives in: denoised (x0) or noise (eps) predictions.
LINEAR_AG_VARIANTS = ("x0", "eps")


class AdaptiveState(NamedTuple):
  """Adaptive Guidance state: per-sample flag "guidance switched off"."""

  done: Array


def _cosine(a: Array, b: Array) -> Array:
  """Per-sample cosine similarity; two zero vectors count as identical (cosine 1)."""
  dt = compute_dtype(a)
  a, b = a.astype(dt), b.astype(dt)
  na, nb = jnp.sqrt(sum_ps(a * a)), jnp.sqrt(sum_ps(b * b))
  denom = na * nb
  cos = sum_ps(a * b) / jnp.where(denom > 0, denom, 1)
  return jnp.where(denom > 0, cos, jnp.where((na == 0) & (nb == 0), 1.0, 0.0))


@module
class AdaptiveGuidance(GuidanceRule):
  """Adaptive Guidance; built by :func:`adaptive`.

  ``scale`` and ``threshold`` are leaves; ``variant`` is static. Every network call is
  inside the rule's own ``lax.cond`` (:meth:`~jaxdiff.Network.cond`), so ``calls = ()``.

  Example:
    >>> from jaxdiff import guidance
    >>> rule = guidance.adaptive(3.0, 0.99)
    >>> isinstance(rule, guidance.AdaptiveGuidance), rule.calls
    (True, ())
  """

  scale: Any
  threshold: Any
  variant: str = static("eps")
  null_cond: Any = -1
  traced: tuple = static(())

  calls = ()

  def __post_init__(self):
    setfield(self, "traced", hypers("adaptive", self, scale={}, threshold={}))
    check_choice("adaptive: variant", self.variant, AG_VARIANTS)
    null_fn(self.null_cond, "adaptive")

  def init(self, x_T, cond):
    del cond
    return AdaptiveState(jnp.zeros((x_T.shape[0],), jnp.bool_))

  def guide(self, net, x, cond, ctx, state):
    t = batch_t(ctx, x)
    null = null_fn(self.null_cond, "adaptive")

    def conditional_only(net, done):
      x_c, net = net(x, t, cond)
      return (x_c, done), net

    def guided(net, done):
      (x_c, x_u), net = evaluate(net, x, t, [cond, null(cond)])
      x0 = jnp.where(bcast(done, x_c), x_c, cfg_combine(x_c, x_u, self.scale))
      if self.variant == "eps":
        gamma = _cosine(eps(x, x_c, ctx), eps(x, x_u, ctx))
      else:
        gamma = _cosine(x_c, x_u)
      return (x0, done | (gamma > self.threshold)), net

    (x0, done), net = net.cond(jnp.all(state.done), conditional_only, guided, state.done)
    return Prediction.of(poison(self, x0, self.traced)), AdaptiveState(done), net


def adaptive(scale, threshold, *, variant="eps", null_cond=-1) -> AdaptiveGuidance:
  r"""Adaptive Guidance (AG): CFG until the two predictions agree, then conditional only.

  .. math::

    \gamma_t = \cos\!\big(\hat\epsilon_c(x_t), \hat\epsilon_u(x_t)\big),\qquad
    \hat x = \begin{cases} \hat x_u + w(\hat x_c - \hat x_u) & \text{before the switch}\\
      \hat x_c & \text{after } \gamma_s > \bar\gamma \text{ at an earlier step } s\end{cases}

  With ``variant="eps"`` (default) the cosine similarity is taken between the *noise*
  predictions ``eps = (x - alpha x0) / sigma`` as we read the paper's Sec. 4 (per sample,
  over all non-batch axes; at ``sigma = 0`` both are 0, see
  :func:`jaxdiff.parameterization.eps_from_x0`, and two zero vectors count as agreeing).
  Near pure noise ``eps_c`` and ``eps_u`` are both close to ``x / sigma``, so their cosine
  is close to 1 from the start, and at the paper's thresholds (0.99 - 0.999) this variant
  switches early: after the first step at every ``gamma_bar`` from 0.9 to 0.9999 on the
  demo's digits, which makes it unguided sampling (``bench/guidance_study.py``). With
  ``variant="x0"`` the denoised predictions ``x_c, x_u`` are compared instead, which do
  differ at high noise (a class mean vs the data mean), as community ports of AG do; on the
  digits it keeps CFG's samples (FD 0.006 to them at ``gamma_bar = 0.999``) with 18 of 20
  evaluations. Only the paper's abstract and third-party code could be read for this
  choice: which predictions the paper compares is an assumption.

  The switch is per sample and permanent for the rest of the call. While some sample of the
  batch still needs guidance both predictions are computed in one batched call
  (``nfe = 2``); once every sample has switched, a top-level
  ``lax.cond`` on that batch-level scalar takes the branch with ONE network call
  (``nfe = 1``), so the saving is real under ``jit``. (Under an outer ``jax.vmap`` the
  predicate becomes batched and XLA evaluates both branches: vmap over the batch axis
  instead of around the sampler.)

  Args:
    scale: CFG scale ``w`` (:func:`cfg` convention), finite.
    threshold: ``gamma_bar``, finite; the paper's setting is around 0.99 - 0.999. ``> 1``
      never switches (plain CFG).
    variant: ``"eps"`` (compare noise predictions) or ``"x0"`` (compare denoised ones).
    null_cond: unconditional label or ``cond -> null`` callable.

  Traced hyperparameters are not checked; one that is NaN or out of range poisons the output
  (NaN), see :mod:`jaxdiff.guidance._common`. A traced NaN
  ``threshold`` would otherwise never switch, silently giving plain CFG.

  Returns:
    An :class:`AdaptiveGuidance` rule with state :class:`AdaptiveState`.

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
  return AdaptiveGuidance(scale, threshold, variant, null_cond)


class LinearAGState(NamedTuple):
  """LinearAG state: previous step's conditional and (real or estimated) unconditional
  predictions, in the space of the rule's ``variant`` (``x0`` or ``eps``)."""

  prev_cond: Array
  prev_uncond: Array


@module
class LinearAG(GuidanceRule):
  """LinearAG; built by :func:`linear_ag`.

  ``scale``, ``coefficients`` and ``estimate`` are leaves (new fitted coefficients do not
  recompile); ``variant`` and the number of steps (``estimate``'s length, a shape) are
  static. Every network call is inside the rule's own ``lax.cond``: ``calls = ()``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance
    >>> rule = guidance.linear_ag(3.0, jnp.zeros((4, 3)), jnp.zeros(4, bool))
    >>> isinstance(rule, guidance.LinearAG), rule.num_steps, rule.calls
    (True, 4, ())
  """

  scale: Any
  coefficients: Any
  estimate: Any
  variant: str = static("x0")
  null_cond: Any = -1
  num_steps: int = static(0)
  # What was traced at construction (cannot raise; poisons the output instead).
  traced: tuple = static(())
  traced_coefficients: bool = static(False)
  traced_estimate: bool = static(False)

  calls = ()

  def __post_init__(self):
    setfield(self, "traced", hypers("linear_ag", self, scale={}))
    coefficients = as_array(self.coefficients, "linear_ag: coefficients")
    estimate = as_array(self.estimate, "linear_ag: estimate")
    if not any(jnp.issubdtype(coefficients.dtype, k) for k in (jnp.floating, jnp.integer)):
      raise TypeError(f"linear_ag: coefficients must be real numbers, got {coefficients.dtype}.")
    if coefficients.ndim != 2 or coefficients.shape[1] != 3 or coefficients.shape[0] < 1:
      raise ValueError(
        "linear_ag: coefficients must have shape (num_steps, 3) with num_steps >= 1, got "
        f"{coefficients.shape}."
      )
    if estimate.shape != coefficients.shape[:1] or estimate.dtype != jnp.bool_:
      raise ValueError(
        f"linear_ag: estimate must be a bool array of shape {coefficients.shape[:1]} (one "
        f"flag per step of coefficients), got {estimate.dtype}{estimate.shape}."
      )
    traced_coefficients = is_traced(coefficients)
    if not traced_coefficients and not np.isfinite(np.asarray(coefficients)).all():
      raise ValueError("linear_ag: coefficients must be finite (no NaN or inf).")
    traced_estimate = is_traced(estimate)
    if not traced_estimate and bool(np.asarray(estimate)[0]):
      raise ValueError(
        "linear_ag: estimate[0] must be False: step 0 cannot be estimated (no previous step)."
      )
    check_choice("linear_ag: variant", self.variant, LINEAR_AG_VARIANTS)
    null_fn(self.null_cond, "linear_ag")
    setfield(self, "coefficients", coefficients)
    setfield(self, "estimate", estimate)
    setfield(self, "num_steps", estimate.shape[0])
    setfield(self, "traced_coefficients", traced_coefficients)
    setfield(self, "traced_estimate", traced_estimate)

  def init(self, x_T, cond):
    del cond
    z = jnp.zeros(x_T.shape, x_T.dtype)
    return LinearAGState(z, z)

  def check_grid(self, grid) -> None:
    """The grid has the rule's number of steps (a shape: checked even for a traced grid)."""
    if grid.num_steps != self.num_steps:
      raise ValueError(
        f"linear_ag: the coefficients were fitted for {self.num_steps} steps, but the grid "
        f"ts has {grid.num_steps}; fit them on a grid of {grid.num_steps} steps"
      )

  def _poison(self, x0):
    """Poisons ``x0`` where what was traced at construction is invalid (NaN or out of range
    hyperparameters, non-finite coefficients, an estimated step 0)."""
    flags = []
    if self.traced_coefficients:
      flags.append(jnp.all(jnp.isfinite(self.coefficients)))
    if self.traced_estimate:
      flags.append(~self.estimate[0])
    x0 = poison(self, x0, self.traced)
    if not flags:
      return x0
    return jnp.where(jnp.all(jnp.stack(flags)), x0, jnp.asarray(jnp.nan, x0.dtype))

  def guide(self, net, x, cond, ctx, state):
    t = batch_t(ctx, x)
    num_steps, coefficients = self.num_steps, self.coefficients
    in_eps = self.variant == "eps"
    if not is_traced(ctx.num_steps) and int(ctx.num_steps) != num_steps:
      raise ValueError(
        f"linear_ag: built for {num_steps} steps, sampling uses {int(ctx.num_steps)}."
      )
    null = null_fn(self.null_cond, "linear_ag")
    i = jnp.clip(ctx.step, 0, num_steps - 1)

    # The regression space: x0 itself, or eps = (x - alpha x0) / sigma.
    space = (lambda x0: eps(x, x0, ctx)) if in_eps else (lambda x0: x0)

    def estimated(net):
      x_c, net = net(x, t, cond)
      a, b, c = (coefficients[i, k].astype(x_c.dtype) for k in range(3))
      f_c = space(x_c)
      f_u = (
        a * f_c + b * state.prev_cond.astype(x_c.dtype) + c * state.prev_uncond.astype(x_c.dtype)
      )
      if in_eps:  # back to x0 at this x_t: x_u - x_c = -(sigma / alpha)(eps_u - eps_c)
        alpha = jnp.asarray(ctx.alpha, x_c.dtype)
        ratio = jnp.asarray(ctx.sigma, x_c.dtype) / jnp.maximum(alpha, jnp.finfo(x_c.dtype).tiny)
        x_u = x_c - ratio * (f_u - f_c)
      else:
        x_u = f_u
      return (x_c, x_u, f_c, f_u), net

    def evaluated(net):
      (x_c, x_u), net = evaluate(net, x, t, [cond, null(cond)])
      return (x_c, x_u, space(x_c), space(x_u)), net

    (x_c, x_u, f_c, f_u), net = net.cond(self.estimate[i], estimated, evaluated)
    new = LinearAGState(f_c.astype(state.prev_cond.dtype), f_u.astype(state.prev_uncond.dtype))
    x0 = cfg_combine(x_c, x_u, self.scale)
    # A traced step count cannot raise: a trajectory of another length is poisoned.
    x0 = jnp.where(ctx.num_steps == num_steps, self._poison(x0), jnp.asarray(jnp.nan, x0.dtype))
    return Prediction.of(x0), new, net


def linear_ag(scale, coefficients, estimate, *, variant="x0", null_cond=-1) -> LinearAG:
  r"""LinearAG: replace the unconditional evaluation by a linear estimate from the past.

  .. math::

    \hat x_u(t_i) \approx a_i\,\hat x_c(t_i) + b_i\,\hat x_c(t_{i-1}) + c_i\,\hat x_u(t_{i-1}),
    \qquad \hat x = \hat x_u + w(\hat x_c - \hat x_u)

  On steps with ``estimate[i] = True`` only the conditional network is called (``nfe = 1``,
  chosen by ``lax.cond`` on the step index, so the saving survives ``jit``) and the
  unconditional prediction is the affine estimate; elsewhere both are evaluated in one
  call (``nfe = 2``). The previous step's unconditional term is the estimate itself when
  that step was estimated too. The coefficients are fit per step by least squares on
  recorded CFG trajectories (:func:`fit_linear_ag`). ``variant`` picks the space of the
  estimate: ``"x0"`` (default) regresses the denoised predictions; ``"eps"`` regresses the
  noise predictions ``eps = (x - alpha x0) / sigma`` (the paper's score estimates, as its
  abstract says: "affine transformations of past score estimates") and maps the estimate
  back by ``x_u = x_c - (sigma / alpha)(eps_u - eps_c)``. At fixed ``x_t`` the two are
  affine images of each other; they differ because ``x_t`` and ``sigma / alpha`` change
  between steps. Fit the coefficients in the same space (record ``eps`` predictions for
  ``"eps"``). The paper's method section could not be read: which space and which
  regressors (here the current conditional and the previous step's pair) it uses is our
  assumption from its abstract.

  Args:
    scale: CFG scale ``w`` (:func:`cfg` convention), finite.
    coefficients: finite array ``(num_steps, 3)`` of ``(a_i, b_i, c_i)``.
    estimate: bool array ``(num_steps,)``; step 0 must not be estimated (no history).
    variant: ``"x0"`` or ``"eps"``, the space of the affine estimate (see above).
    null_cond: unconditional label or ``cond -> null`` callable.

  Sampling with another number of steps raises (concrete) or poisons the output with NaN
  (traced step count). Traced hyperparameters are not checked; one that is NaN or out of
  range poisons the output (NaN), see :mod:`jaxdiff.guidance._common`.

  Returns:
    A :class:`LinearAG` rule with state :class:`LinearAGState`.

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
  return LinearAG(scale, coefficients, estimate, variant, null_cond)


def fit_linear_ag(cond_preds: Array, uncond_preds: Array) -> Array:
  r"""Fits LinearAG coefficients per step by least squares on recorded CFG trajectories.

  .. math::

    (a_i, b_i, c_i) = \arg\min \sum \big\lVert \hat x_u(t_i) - a\,\hat x_c(t_i)
      - b\,\hat x_c(t_{i-1}) - c\,\hat x_u(t_{i-1}) \big\rVert^2

  Fit in the space of the rule's ``variant``: pass denoised predictions for ``"x0"``, noise
  predictions for ``"eps"``.

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
