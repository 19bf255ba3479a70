"""Adapter guidance distillation (AGD): classifier-free guidance in one network evaluation."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff._module import module, setfield, static
from jaxdiff._types import GuidanceRule, Prediction
from jaxdiff.guidance._common import accepts_keyword, batch_t, hypers, poison

Array = jax.Array

_NO_KEYWORD = (
  "agd: the denoiser does not accept the keyword argument `guidance_scale` (float (B,)). "
  "Sample with a guidance-distilled network, e.g. jaxdiff.distill.GuidanceAdapter "
  "wrapped by a jaxdiff.parameterization wrapper."
)


@module
class AGD(GuidanceRule):
  """A guidance-distilled network's one evaluation per step; built by :func:`agd`.

  ``scale`` is a leaf (a new value does not recompile ``sample``). One call per step on
  the conditional batch, with the scale as the keyword ``guidance_scale``: ``calls = (1,)``.

  Example:
    >>> from jaxdiff import guidance
    >>> rule = guidance.agd(3.0)
    >>> isinstance(rule, guidance.AGD), rule.calls
    (True, (1,))
  """

  scale: Any
  traced: tuple = static(())

  calls = (1,)

  def __post_init__(self):
    setfield(self, "traced", hypers("agd", self, scale={}))

  def guide(self, net, x, cond, ctx, state):
    if accepts_keyword(net.fn, "guidance_scale") is False:
      raise TypeError(_NO_KEYWORD)
    w = jnp.full((x.shape[0],), jnp.asarray(self.scale, x.dtype))
    try:
      x0, net = net(x, batch_t(ctx, x), cond, guidance_scale=w)
    except TypeError as e:
      if "guidance_scale" in str(e):
        raise TypeError(_NO_KEYWORD) from e
      raise
    return Prediction.of(poison(self, x0, self.traced)), state, net


def agd(scale) -> AGD:
  r"""Adapter guidance distillation: the distilled network's single evaluation stands in
  for classifier-free guidance's two.

  A guidance-distilled denoiser :math:`D_\psi(x, t, c, w)` (a frozen base with adapters
  that take the guidance scale, :class:`jaxdiff.distill.GuidanceAdapter`, trained by
  :func:`jaxdiff.distill.agd_loss`) approximates CFG's combined prediction

  .. math::
    D_\psi(x, t, c, w) \approx \hat x_u + w\,(\hat x_c - \hat x_u),

  so each step makes one call ``denoise(x, t, cond, guidance_scale=w)`` with ``w``
  broadcast to ``(B,)`` (``nfe = 1``, against CFG's 2). ``w`` follows :func:`cfg`'s
  convention (``w = 1`` the conditional model); the paper trains on ``w`` drawn from
  ``[1, 6]``. A denoiser that does not accept the keyword ``guidance_scale`` raises a
  ``TypeError`` naming it when the rule is traced.

  Args:
    scale: guidance scale ``w``, finite; float or traced scalar.

  Traced hyperparameters are not checked; one that is NaN or inf poisons the output
  (NaN), see :mod:`jaxdiff.guidance._common`.

  Returns:
    A stateless :class:`AGD` rule (``nfe = 1``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, StepContext
    >>> def den(x, t, c, *, guidance_scale):  # an exactly distilled toy: x_c = 2x, x_u = x
    ...   return x + guidance_scale[:, None] * x
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> pred, _, nfe = guidance.agd(3.0).apply(den, jnp.ones((2, 3)), jnp.array([0, 1]), ctx, ())
    >>> float(pred.x0[0, 0]), int(nfe)  # x_u + 3 (x_c - x_u) = 1 + 3, in one evaluation
    (4.0, 1)

  References:
    Jensen & Sadat, "Efficient Distillation of Classifier-Free Guidance using Adapters",
    arXiv:2503.07274 (TMLR 2025; the official code's ``guidance_scale`` adapter input).
  """
  return AGD(scale)
