"""jaxdiff.testing: ground-truth testbeds (the exact Gaussian mixture)."""

from jaxdiff._gmm import GaussianMixture, GMMDenoiser

__all__ = ["GMMDenoiser", "GaussianMixture"]
