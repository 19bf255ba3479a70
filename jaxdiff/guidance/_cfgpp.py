"""CFG++: manifold-constrained classifier-free guidance."""

from __future__ import annotations

from typing import Any

from jaxdiff._module import module, setfield, static
from jaxdiff._types import GuidanceRule, Prediction
from jaxdiff.guidance._common import batch_t, cfg_combine, evaluate, hypers, null_fn, poison


@module
class CFGPP(GuidanceRule):
  """CFG++; built by :func:`cfgpp`. ``scale`` is a leaf (a new value does not recompile).

  Example:
    >>> from jaxdiff import guidance
    >>> rule = guidance.cfgpp(0.6)
    >>> isinstance(rule, guidance.CFGPP), rule.calls
    (True, (2,))
  """

  scale: Any
  null_cond: Any = -1
  traced: tuple = static(())

  calls = (2,)

  def __post_init__(self):
    setfield(self, "traced", hypers("cfgpp", self, scale=dict(lo=0.0, hi=1.0)))
    null_fn(self.null_cond, "cfgpp")

  def guide(self, net, x, cond, ctx, state):
    null = null_fn(self.null_cond, "cfgpp")
    (x_c, x_u), net = evaluate(net, x, batch_t(ctx, x), [cond, null(cond)])
    x0 = poison(self, cfg_combine(x_c, x_u, self.scale), self.traced)
    return Prediction(x0, x_u), state, net


def cfgpp(scale, *, null_cond=-1) -> CFGPP:
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
    scale: ``lambda`` in ``[0, 1]`` (the paper uses 0.2 - 0.8); a value outside raises
      ``ValueError`` (when concrete).
    null_cond: unconditional label or ``cond -> null`` callable.

  Traced hyperparameters are not checked; one that is NaN or out of range poisons the output
  (NaN), see :mod:`jaxdiff.guidance._common`.

  Returns:
    A stateless :class:`CFGPP` rule (``nfe = 2``).

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
  return CFGPP(scale, null_cond)
