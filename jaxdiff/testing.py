"""jaxdiff.testing: ground truth for solvers and guidance (exact mixture, ODE reference)."""

from jaxdiff._analytic import (
  EmpiricalDenoiser,
  WienerDenoiser,
  empirical_denoiser,
  locality,
  wiener_denoiser,
)
from jaxdiff._gmm import GaussianMixture, GMMDenoiser
from jaxdiff._lowrank import (
  LowRankDenoiser,
  LowRankGaussianMixture,
  LowRankGMMDenoiser,
  low_rank_denoiser,
)
from jaxdiff._multiplicative import LogNormalMixture
from jaxdiff._reference import probability_flow_reference

__all__ = [
  "EmpiricalDenoiser",
  "GMMDenoiser",
  "GaussianMixture",
  "LowRankDenoiser",
  "LowRankGMMDenoiser",
  "LowRankGaussianMixture",
  "LogNormalMixture",
  "WienerDenoiser",
  "empirical_denoiser",
  "locality",
  "low_rank_denoiser",
  "probability_flow_reference",
  "wiener_denoiser",
]
