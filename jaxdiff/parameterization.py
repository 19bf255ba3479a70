"""jaxdiff.parameterization: eps / x0 / v / score / velocity conversions and wrappers."""

from jaxdiff._parameterization import (
  KINDS,
  PREDICTIONS,
  Wrapped,
  convert,
  eps_from_x0,
  from_eps,
  from_flow,
  from_v,
  from_x0,
)

__all__ = [
  "KINDS",
  "PREDICTIONS",
  "Wrapped",
  "convert",
  "eps_from_x0",
  "from_eps",
  "from_flow",
  "from_v",
  "from_x0",
]
