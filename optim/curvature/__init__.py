"""optim.curvature: curvature linear operators on pytrees and the estimators built on them.

Operators (:class:`LinearOperator` from :func:`hessian_matvec`, :func:`ggn_matvec`,
:func:`fisher_matvec`) are matrix-free; the estimators (:func:`hutchinson_trace`,
:func:`hutchinson_diag`, :func:`top_eigenvalues`, :func:`lanczos`, :func:`slq_density`)
take any of them. :func:`run_tour` reproduces Sagun et al.'s Hessian-spectrum experiment.
:func:`hessian_alignment` builds Hemati et al.'s Hessian/gradient alignment regularizers
(HGP, Hutchinson) for domain generalization on the same products.
:func:`opposing_signals` finds Rosenfeld & Risteski's paired outlier groups in a loss
history (:func:`opposing_groups`) and tracks them with the top Hessian eigenvalue.
"""

from optim.curvature._alignment import AlignmentPenalty, hessian_alignment
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
  value_grad_and_hvp,
)
from optim.curvature._opposing import (
  OpposingGroups,
  OpposingSignals,
  opposing_groups,
  opposing_signals,
)
from optim.curvature._plot import plot_density
from optim.curvature._slq import SpectralDensity, slq_density
from optim.curvature._solve import CGResult, conjugate_gradient
from optim.curvature._tour import run_tour

__all__: list[str] = [
  # Operators and products.
  "LinearOperator",
  "directional_sharpness",
  "fisher_matvec",
  "ggn_matvec",
  "hessian_matvec",
  "hvp",
  "sample_categorical",
  "softmax_nll",
  "value_grad_and_hvp",
  # Matrix-free linear solves.
  "CGResult",
  "conjugate_gradient",
  # Estimators and their results.
  "DiagEstimate",
  "EigenResult",
  "LanczosResult",
  "SpectralDensity",
  "TraceEstimate",
  "hutchinson_diag",
  "hutchinson_trace",
  "lanczos",
  "slq_density",
  "top_eigenvalues",
  "tridiagonal",
  # Inverse empirical Fisher (static M-FAC) and pruning saliency.
  "MFACInverse",
  "mfac_ihvp",
  "obs_saliency",
  # Hessian alignment across domains (domain generalization).
  "AlignmentPenalty",
  "hessian_alignment",
  # Opposing signals: paired outlier groups tracked with the sharpness.
  "OpposingGroups",
  "OpposingSignals",
  "opposing_groups",
  "opposing_signals",
  # Plotting and the Sagun et al. reproduction.
  "plot_density",
  "run_tour",
]
