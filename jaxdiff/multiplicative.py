"""jaxdiff.multiplicative: diffusion by geometric Brownian motion on positive data.

The multiplicative denoising diffusion model of Shetty, Prasath & Seelamantula ("Dale meets
Langevin", arXiv:2510.02730): the GBM forward process (:func:`gbm`, :func:`gbm_geometric`,
:func:`perturb`), multiplicative denoising score matching of the Hyvarinen score
``x * grad log p`` (:func:`mdsm_loss`), the log-normal start (:func:`log_normal_prior`) and
the reverse-time samplers, sign-preserving (Dale-Langevin) or ambient (:func:`sample`).
The exact testbed is :class:`jaxdiff.testing.LogNormalMixture`. Implementation in
:mod:`jaxdiff._multiplicative`.
"""

from jaxdiff._multiplicative import (
  ConstantGBM,
  GeometricGBM,
  gbm,
  gbm_geometric,
  log_normal_prior,
  mdsm_loss,
  perturb,
  sample,
)

__all__ = [
  "ConstantGBM",
  "GeometricGBM",
  "gbm",
  "gbm_geometric",
  "log_normal_prior",
  "mdsm_loss",
  "perturb",
  "sample",
]
