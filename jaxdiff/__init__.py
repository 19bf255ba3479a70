"""jaxdiff: diffusion schedules, solvers and guidance rules as pure, jit-able JAX functions."""

from jaxdiff import (
  caching,
  correctors,
  guidance,
  inverse,
  metrics,
  parameterization,
  schedules,
  search,
  solvers,
  testing,
  training,
)
from jaxdiff._parameterization import from_eps, from_flow, from_v, from_x0
from jaxdiff._sampling import CachedSampleResult, SampleResult, sample
from jaxdiff._schedules import Grid, timesteps, timesteps_from
from jaxdiff._timeshift import TimeShift, time_shift
from jaxdiff._types import GuidanceRule, Prediction, StepContext

__all__ = [
  "GuidanceRule",
  "Grid",
  "SampleResult",
  "CachedSampleResult",
  "from_eps",
  "from_flow",
  "from_v",
  "from_x0",
  "sample",
  "TimeShift",
  "time_shift",
  "timesteps",
  "timesteps_from",
  "Prediction",
  "StepContext",
  "caching",
  "correctors",
  "guidance",
  "inverse",
  "metrics",
  "parameterization",
  "schedules",
  "search",
  "solvers",
  "testing",
  "training",
]
