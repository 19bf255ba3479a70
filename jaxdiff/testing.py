"""jaxdiff.testing: ground truth for solvers and guidance (exact mixture, ODE reference)."""

from jaxdiff._gmm import GaussianMixture, GMMDenoiser
from jaxdiff._reference import probability_flow_reference

__all__ = ["GMMDenoiser", "GaussianMixture", "probability_flow_reference"]
