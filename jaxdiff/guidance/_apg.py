"""Adaptive Projected Guidance (APG)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff._module import module, setfield, static
from jaxdiff._types import GuidanceRule, Prediction
from jaxdiff._validation import static_equal
from jaxdiff.guidance._common import (
  batch_t,
  bcast,
  compute_dtype,
  evaluate,
  hypers,
  null_fn,
  poison,
  sum_ps,
)

Array = jax.Array


class APGState(NamedTuple):
  """Adaptive Projected Guidance state: the reverse-momentum running average."""

  running: Array


@module
class APG(GuidanceRule):
  """Adaptive Projected Guidance; built by :func:`apg`.

  ``scale``, ``eta``, ``norm_threshold`` and ``momentum`` are leaves (a new value does not
  recompile ``sample``); ``clip`` (whether ``norm_threshold`` was given finite) is static.

  Example:
    >>> from jaxdiff import guidance
    >>> rule = guidance.apg(5.0, momentum=-0.5)
    >>> isinstance(rule, guidance.APG), rule.calls
    (True, (2,))
  """

  scale: Any
  eta: Any = 0.0
  norm_threshold: Any = math.inf
  momentum: Any = 0.0
  null_cond: Any = -1
  clip: bool = static(False)
  traced: tuple = static(())

  calls = (2,)

  def __post_init__(self):
    traced = hypers(
      "apg",
      self,
      scale={},
      eta={},
      norm_threshold=dict(lo=0.0, lo_open=True, allow_inf=True),
      momentum=dict(lo=-1.0, hi=0.0, lo_open=True),
    )
    setfield(self, "traced", traced)
    null_fn(self.null_cond, "apg")
    setfield(self, "clip", not static_equal(self.norm_threshold, math.inf))

  def init(self, x_T, cond):
    del cond
    return APGState(jnp.zeros(x_T.shape, compute_dtype(x_T)))

  def guide(self, net, x, cond, ctx, state):
    null = null_fn(self.null_cond, "apg")
    (x_c, x_u), net = evaluate(net, x, batch_t(ctx, x), [cond, null(cond)])
    dt = compute_dtype(x_c)
    xc, xu = x_c.astype(dt), x_u.astype(dt)
    running = (xc - xu) + jnp.asarray(self.momentum, dt) * state.running
    diff = running
    if self.clip:
      norm = jnp.sqrt(sum_ps(diff * diff))
      r = jnp.asarray(self.norm_threshold, dt)
      factor = jnp.where(norm > r, r / jnp.where(norm > 0, norm, 1), 1)
      diff = diff * bcast(factor, diff)
    cnorm = jnp.sqrt(sum_ps(xc * xc))
    unit = xc / bcast(jnp.where(cnorm > 0, cnorm, 1), xc)
    parallel = bcast(sum_ps(diff * unit), diff) * unit
    update = (diff - parallel) + jnp.asarray(self.eta, dt) * parallel
    x0 = xc + (jnp.asarray(self.scale, dt) - 1) * update
    x0 = poison(self, x0.astype(x_c.dtype), self.traced)
    return Prediction.of(x0), APGState(running), net


def apg(scale, *, eta=0.0, norm_threshold=math.inf, momentum=0.0, null_cond=-1) -> APG:
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
    scale: guidance scale ``w`` (same convention as :func:`cfg`), finite.
    eta: weight of the component parallel to ``x_c`` (paper: 0), finite.
    norm_threshold: ``r > 0``, the radius the (momentum) update is clipped to; ``inf``
      disables the clipping.
    momentum: ``beta`` in ``(-1, 0]``; the paper uses negative ("reverse") momentum, e.g.
      -0.5. The running average lives in the rule state, reset at every sampling call.
    null_cond: unconditional label or ``cond -> null`` callable.

  Traced hyperparameters are not checked; one that is NaN or out of range poisons the output
  (NaN), see :mod:`jaxdiff.guidance._common`.

  Returns:
    An :class:`APG` rule with state :class:`APGState` (``nfe = 2``).

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
  return APG(scale, eta, norm_threshold, momentum, null_cond)
