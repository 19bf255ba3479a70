"""optim.curvature: curvature linear operators on pytrees and the estimators built on them."""

from optim.curvature._eigen import (
  EigenResult,
  LanczosResult,
  lanczos,
  top_eigenvalues,
  tridiagonal,
)
from optim.curvature._hutchinson import (
  DiagEstimate,
  TraceEstimate,
  hutchinson_diag,
  hutchinson_trace,
)
from optim.curvature._mfac import MFACInverse, mfac_ihvp, obs_saliency
from optim.curvature._operators import (
  LinearOperator,
  directional_sharpness,
  fisher_matvec,
  ggn_matvec,
  hessian_matvec,
  hvp,
  sample_categorical,
  softmax_nll,
)
from optim.curvature._plot import plot_density
from optim.curvature._slq import SpectralDensity, slq_density

__all__: list[str] = [
  "DiagEstimate",
  "EigenResult",
  "LanczosResult",
  "LinearOperator",
  "SpectralDensity",
  "TraceEstimate",
  "directional_sharpness",
  "fisher_matvec",
  "ggn_matvec",
  "hessian_matvec",
  "hutchinson_diag",
  "hutchinson_trace",
  "hvp",
  "lanczos",
  "plot_density",
  "sample_categorical",
  "slq_density",
  "softmax_nll",
  "top_eigenvalues",
  "tridiagonal",
  "MFACInverse",
  "mfac_ihvp",
  "obs_saliency",
]
