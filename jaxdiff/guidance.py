"""jaxdiff.guidance (public namespace; implementation in private modules).

Guidance rules are :class:`jaxdiff.GuidanceRule` factories; pass one to
``jaxdiff.sample(..., guidance=rule)``. :class:`SelfAttention` is the flax.nnx attention
block that honours the Perturbed-Attention Guidance flag used by :func:`pag`.
"""

from jaxdiff._attention import SelfAttention
from jaxdiff._guidance import (
  AdaptiveState,
  APGState,
  LinearAGState,
  RCFGState,
  adaptive,
  apg,
  autoguidance,
  cfg,
  cfgpp,
  classifier,
  fit_linear_ag,
  gfcg,
  linear_ag,
  pag,
  rcfg,
  smooth_relu,
)

__all__ = [
  "APGState",
  "AdaptiveState",
  "LinearAGState",
  "RCFGState",
  "SelfAttention",
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
