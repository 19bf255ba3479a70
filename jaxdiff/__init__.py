"""jaxdiff: diffusion schedules, solvers and guidance rules as pure, jit-able JAX functions."""

from jaxdiff import guidance, metrics, parameterization, schedules, solvers, testing
from jaxdiff._parameterization import from_eps, from_flow, from_v, from_x0
from jaxdiff._sampling import SampleResult, sample
from jaxdiff._schedules import Grid, timesteps, timesteps_from
from jaxdiff._types import GuidanceRule, Prediction, StepContext

__all__ = [
  "GuidanceRule",
  "Grid",
  "SampleResult",
  "from_eps",
  "from_flow",
  "from_v",
  "from_x0",
  "sample",
  "timesteps",
  "timesteps_from",
  "Prediction",
  "StepContext",
  "guidance",
  "metrics",
  "parameterization",
  "schedules",
  "solvers",
  "testing",
]
