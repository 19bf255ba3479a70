"""jaxdiff.metrics: sample-quality metrics (Frechet distance, precision/recall, saturation,
sliced Wasserstein distance). Implementation in :mod:`jaxdiff._metrics`."""

from jaxdiff._metrics import (
  frechet_distance,
  gaussian_frechet_distance,
  precision_recall,
  saturation,
  sliced_wasserstein,
)
from jaxdiff._smoothness import istd

__all__ = [
  "frechet_distance",
  "gaussian_frechet_distance",
  "istd",
  "precision_recall",
  "saturation",
  "sliced_wasserstein",
]
