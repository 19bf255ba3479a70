"""jaxdiff.schedules: noise schedules and validated time grids."""

from jaxdiff._grids import SPACINGS, Grid, timesteps, timesteps_from, validate_grid
from jaxdiff._schedules import (
  EDM,
  LAM_MAX,
  DiscreteVP,
  Flow,
  VPCosine,
  VPLinear,
  edm,
  flow,
  from_alphas_cumprod,
  vp_cosine,
  vp_linear,
)

__all__ = [
  "EDM",
  "LAM_MAX",
  "SPACINGS",
  "DiscreteVP",
  "Flow",
  "Grid",
  "VPCosine",
  "VPLinear",
  "edm",
  "flow",
  "from_alphas_cumprod",
  "timesteps",
  "timesteps_from",
  "validate_grid",
  "vp_cosine",
  "vp_linear",
]
