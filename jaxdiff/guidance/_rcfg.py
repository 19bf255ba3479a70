"""Residual classifier-free guidance (RCFG, StreamDiffusion)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._module import module, setfield, static
from jaxdiff._types import GuidanceRule, Prediction
from jaxdiff._validation import check_choice, is_traced, static_equal
from jaxdiff.guidance._common import (
  as_array,
  batch_t,
  cfg_combine,
  evaluate,
  hypers,
  null_fn,
  poison,
)

Array = jax.Array

VARIANTS = ("self", "onetime")


class RCFGState(NamedTuple):
  """RCFG state: the reference denoised latent the virtual negative noise points to."""

  reference: Array


@module
class RCFG(GuidanceRule):
  """Residual classifier-free guidance; built by :func:`rcfg`.

  ``scale``, ``delta`` and an array ``reference`` are leaves; ``variant`` and
  ``unit_delta`` (``delta`` given as 1) are static. ``"self"`` makes one call per step
  (``calls = (1,)``); ``"onetime"`` chooses its calls by a ``lax.cond`` on the step
  (:meth:`~jaxdiff.Network.cond`: ``calls = ()``).

  Example:
    >>> from jaxdiff import guidance
    >>> guidance.rcfg(1.2, variant="onetime").calls
    ()
  """

  scale: Any
  variant: str = static("self")
  reference: Any = None
  delta: Any = 1.0
  null_cond: Any = -1
  unit_delta: bool = static(True)
  traced: tuple = static(())

  def __post_init__(self):
    variant, reference = self.variant, self.reference
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
      # NumPy, not jnp: a concrete reference inside the user's jit stays checkable.
      if not is_traced(reference) and not np.isfinite(np.asarray(reference)).all():
        raise ValueError("rcfg: reference must be finite (no NaN or inf).")
      setfield(self, "reference", reference)
    setfield(self, "traced", hypers("rcfg", self, scale={}, delta=dict(lo=0.0)))
    null_fn(self.null_cond, "rcfg")
    setfield(self, "unit_delta", static_equal(self.delta, 1.0))

  @property
  def calls(self) -> tuple[int, ...]:
    return (1,) if self.variant == "self" else ()

  def init(self, x_T, cond):
    if self.variant == "self":
      reference = self.reference
      ref = as_array(reference(cond) if callable(reference) else reference, "rcfg: reference")
      if ref.shape != x_T.shape:
        raise ValueError(f"rcfg: reference has shape {ref.shape}, samples have {x_T.shape}.")
      if not jnp.issubdtype(ref.dtype, jnp.floating):
        raise TypeError(f"rcfg: reference must be a floating latent, got dtype {ref.dtype}.")
      return RCFGState(ref.astype(x_T.dtype))
    return RCFGState(jnp.zeros(x_T.shape, x_T.dtype))

  def _combine(self, x, x_c, ref, ctx):
    ref = ref.astype(x_c.dtype)
    if self.unit_delta:
      x_n = ref
    else:
      alpha = jnp.asarray(ctx.alpha, x_c.dtype)
      d = jnp.asarray(self.delta, x_c.dtype)
      x_n = d * ref + (1 - d) * x / alpha
    return poison(self, cfg_combine(x_c, x_n, self.scale), self.traced)

  def guide(self, net, x, cond, ctx, state):
    t = batch_t(ctx, x)
    if self.variant == "self":
      x_c, net = net(x, t, cond)
      return Prediction.of(self._combine(x, x_c, state.reference, ctx)), state, net
    null = null_fn(self.null_cond, "rcfg")

    def first(net, reference):
      (x_c, x_n), net = evaluate(net, x, t, [cond, null(cond)])
      return (x_c, x_n.astype(reference.dtype)), net

    def later(net, reference):
      x_c, net = net(x, t, cond)
      return (x_c, reference), net

    (x_c, ref), net = net.cond(ctx.step == 0, first, later, state.reference)
    return Prediction.of(self._combine(x, x_c, ref, ctx)), RCFGState(ref), net


def rcfg(scale, *, variant="self", reference=None, delta=1.0, null_cond=-1) -> RCFG:
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
    An :class:`RCFG` rule with state :class:`RCFGState`.

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
  return RCFG(scale, variant, reference, delta, null_cond)
