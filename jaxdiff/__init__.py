"""jaxdiff: diffusion schedules, solvers and guidance rules as pure, jit-able JAX functions."""

from jaxdiff import (
  caching,
  correctors,
  distill,
  finetune,
  guidance,
  inverse,
  metrics,
  multiplicative,
  noise2score,
  parameterization,
  schedules,
  search,
  solvers,
  testing,
  training,
  wavelets,
)
from jaxdiff._grids import Grid, timesteps, timesteps_from
from jaxdiff._network import Network
from jaxdiff._parameterization import from_eps, from_flow, from_v, from_x0
from jaxdiff._progressive import ProgressiveResult, progressive_sample
from jaxdiff._sampling import LoopState, SampleResult, sample
from jaxdiff._timeshift import NoShift, Shift, TimeShift, time_shift
from jaxdiff._types import GuidanceRule, Prediction, StepContext
from optim._version import __version__ as __version__

__all__ = [
  "GuidanceRule",
  "Grid",
  "Network",
  "SampleResult",
  "LoopState",
  "from_eps",
  "from_flow",
  "from_v",
  "from_x0",
  "sample",
  "progressive_sample",
  "ProgressiveResult",
  "NoShift",
  "Shift",
  "TimeShift",
  "time_shift",
  "timesteps",
  "timesteps_from",
  "Prediction",
  "StepContext",
  "caching",
  "correctors",
  "distill",
  "finetune",
  "guidance",
  "inverse",
  "metrics",
  "multiplicative",
  "noise2score",
  "parameterization",
  "schedules",
  "search",
  "solvers",
  "testing",
  "training",
  "wavelets",
]


def __getattr__(name):
  # Deprecated for one release: sample returns one SampleResult whatever the add-ons.
  if name == "CachedSampleResult":
    import warnings

    warnings.warn(
      "jaxdiff.CachedSampleResult is deprecated: sample always returns a SampleResult, "
      "with the count of full evaluations in result.stats['full_nfe'] (the old name will "
      "be removed in the next release)",
      DeprecationWarning,
      stacklevel=2,
    )
    return SampleResult
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
