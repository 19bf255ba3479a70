"""jaxdiff.metrics: sample-quality metrics (Frechet distance, precision/recall, saturation,
sliced Wasserstein distance) and the geometry of a denoiser (its Jacobian's spectrum).
Implementation in :mod:`jaxdiff._metrics` and :mod:`jaxdiff._jacobian`."""

from jaxdiff._jacobian import (
  JacobianSpectrum,
  denoiser_jacobian,
  jacobian_asymmetry,
  jacobian_spectrum,
)
from jaxdiff._metrics import (
  frechet_distance,
  gaussian_frechet_distance,
  precision_recall,
  saturation,
  sliced_wasserstein,
)
from jaxdiff._smoothness import istd

__all__ = [
  "JacobianSpectrum",
  "denoiser_jacobian",
  "frechet_distance",
  "gaussian_frechet_distance",
  "istd",
  "jacobian_asymmetry",
  "jacobian_spectrum",
  "precision_recall",
  "saturation",
  "sliced_wasserstein",
]
