"""jaxdiff: diffusion schedules, solvers and guidance rules as pure, jit-able JAX functions."""

from jaxdiff import guidance, metrics, parameterization, schedules, solvers, testing
from jaxdiff._types import GuidanceRule, Prediction, StepContext

# --- core: sampling loop, grids, wrappers (issue 5) ---

__all__ = [
  "GuidanceRule",
  "Prediction",
  "StepContext",
  "guidance",
  "metrics",
  "parameterization",
  "schedules",
  "solvers",
  "testing",
]
