"""Residual classifier-free guidance (RCFG, StreamDiffusion)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxdiff._types import GuidanceRule, Prediction
from jaxdiff._validation import check_choice, is_traced, static_equal
from jaxdiff.guidance._common import Hyper, as_array, batch_t, cfg_combine, evaluate, nfe, null_fn

Array = jax.Array

VARIANTS = ("self", "onetime")


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
    scale: ``gamma`` (:func:`cfg` convention), finite.
    variant: ``"self"`` or ``"onetime"``.
    reference: the input latent for ``"self"`` (required there, unused for ``"onetime"``).
    delta: virtual-noise magnitude ``delta >= 0``, finite.
    null_cond: negative label (``"onetime"``).

  ``reference`` with ``variant="onetime"`` raises (it would be ignored); a non-finite or
  non-floating reference raises. With ``delta != 1`` a step at ``alpha_t = 0`` divides by
  zero and gives NaN (loud, never a plausible sample). Traced hyperparameters are not
  checked; one that is NaN or out of range poisons the output (NaN), see
  :mod:`jaxdiff.guidance._common`.

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
  check_choice("rcfg: variant", variant, VARIANTS)
  if variant == "self" and reference is None:
    raise ValueError(
      "rcfg: the self-negative variant needs `reference`, the input image latent x_0 "
      "(an array (B, ...) or a callable cond -> array)."
    )
  if variant == "onetime" and reference is not None:
    raise ValueError(
      "rcfg: reference is used only by variant='self' (the onetime variant computes its "
      "own reference at step 0); drop it or pass variant='self'."
    )
  if reference is not None and not callable(reference):
    reference = as_array(reference, "rcfg: reference")
    if not jnp.issubdtype(reference.dtype, jnp.floating):
      raise TypeError(f"rcfg: reference must be a floating latent, got dtype {reference.dtype}.")
    if not is_traced(reference) and not bool(jnp.all(jnp.isfinite(reference))):
      raise ValueError("rcfg: reference must be finite (no NaN or inf).")
  h = Hyper("rcfg")
  h("scale", scale)
  h("delta", delta, lo=0.0)
  null = null_fn(null_cond, "rcfg")
  unit_delta = static_equal(delta, 1.0)

  def init(x_T, cond):
    if variant == "self":
      ref = as_array(reference(cond) if callable(reference) else reference, "rcfg: reference")
      if ref.shape != x_T.shape:
        raise ValueError(f"rcfg: reference has shape {ref.shape}, samples have {x_T.shape}.")
      if not jnp.issubdtype(ref.dtype, jnp.floating):
        raise TypeError(f"rcfg: reference must be a floating latent, got dtype {ref.dtype}.")
      return RCFGState(ref.astype(x_T.dtype))
    return RCFGState(jnp.zeros(x_T.shape, x_T.dtype))

  def combine(x, x_c, ref, ctx):
    ref = ref.astype(x_c.dtype)
    if unit_delta:
      x_n = ref
    else:
      alpha = jnp.asarray(ctx.alpha, x_c.dtype)
      d = jnp.asarray(delta, x_c.dtype)
      x_n = d * ref + (1 - d) * x / alpha
    return h.poison(cfg_combine(x_c, x_n, scale))

  def apply(denoise, x, cond, ctx, state):
    t = batch_t(ctx, x)
    if variant == "self":
      x_c = denoise(x, t, cond)
      return Prediction.of(combine(x, x_c, state.reference, ctx)), state, nfe(1)

    def first(_):
      x_c, x_n = evaluate(denoise, x, t, [cond, null(cond)])
      return x_c, x_n.astype(state.reference.dtype), nfe(2)

    def later(_):
      return denoise(x, t, cond), state.reference, nfe(1)

    x_c, ref, n = lax.cond(ctx.step == 0, first, later, None)
    return Prediction.of(combine(x, x_c, ref, ctx)), RCFGState(ref), n

  return GuidanceRule(init, apply)
