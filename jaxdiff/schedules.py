"""jaxdiff.schedules: noise schedules and validated time grids."""

from jaxdiff._schedules import (
  EDM,
  LAM_MAX,
  SPACINGS,
  DiscreteVP,
  Flow,
  Grid,
  VPCosine,
  VPLinear,
  edm,
  flow,
  from_alphas_cumprod,
  timesteps,
  timesteps_from,
  validate_grid,
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
