"""optim: optimizers as optax transformations and the curvature toolkit under them."""

from optim import (
  bilevel,
  compander,
  constrained,
  curvature,
  data_scores,
  games,
  layouts,
  loops,
  losses,
  ot,
  pruning,
  quant,
  schedules,
  unnormalized,
  xla,
  zeroth_order,
)
from optim._adahessian import ScaleByAdaHessianState, adahessian, scale_by_adahessian
from optim._adamp import (
  ScaleByAdamPState,
  ScaleBySGDPState,
  adamp,
  scale_by_adamp,
  scale_by_sgdp,
  sgdp,
)
from optim._coherence import robust_mean_sgd, scale_by_robust_mean
from optim._coordinate_clip import CoordinateClipState, coordinate_clip
from optim._diff2 import DIFF2State, diff2, scale_by_diff2
from optim._diffgrad import ScaleByDiffGradState, diffgrad, scale_by_diffgrad
from optim._dp import (
  DiceSGDState,
  DPSGDState,
  dice_sgd,
  dp_sgd,
  scale_by_dice_sgd,
  scale_by_dp_sgd,
)
from optim._ema import WeightEMAState, ema_params, weight_ema
from optim._exponentiated_gradient import ExponentiatedGradientState, exponentiated_gradient
from optim._hesso import HessoState, hesso, scale_by_hesso
from optim._mask_sparsity import mask_sparsity
from optim._mfac import ScaleByMFACState, mfac, scale_by_mfac
from optim._newton import ScaleByRegNewtonState, reg_newton, scale_by_reg_newton
from optim._normalized_gd import ScaleByLossState, normalized_gd, scale_by_inverse_loss
from optim._perp_grad import PerpGradState, perp_grad
from optim._sophia import ScaleBySophiaState, scale_by_sophia, sophia
from optim._tract import scale_by_tract
from optim._validation import moved_names
from optim._version import __version__ as __version__

__all__ = [
  "bilevel",
  "compander",
  "constrained",
  "curvature",
  "games",
  "layers",
  "layouts",
  "loops",
  "pruning",
  "data_scores",
  "losses",
  "quant",
  "schedules",
  "unnormalized",
  "xla",
  "zeroth_order",
  "CoordinateClipState",
  "DPSGDState",
  "DiceSGDState",
  "PerpGradState",
  "ScaleByAdamPState",
  "ScaleByDiffGradState",
  "ScaleByLossState",
  "ScaleBySGDPState",
  "adamp",
  "coordinate_clip",
  "dice_sgd",
  "diffgrad",
  "dp_sgd",
  "normalized_gd",
  "ExponentiatedGradientState",
  "exponentiated_gradient",
  "perp_grad",
  "scale_by_adamp",
  "scale_by_dice_sgd",
  "scale_by_diffgrad",
  "scale_by_dp_sgd",
  "scale_by_inverse_loss",
  "scale_by_sgdp",
  "sgdp",
  "ScaleByAdaHessianState",
  "ScaleByMFACState",
  "ScaleBySophiaState",
  "adahessian",
  "mfac",
  "scale_by_adahessian",
  "scale_by_mfac",
  "scale_by_sophia",
  "sophia",
  "DIFF2State",
  "diff2",
  "scale_by_diff2",
  "scale_by_tract",
  "ot",
  "HessoState",
  "hesso",
  "scale_by_hesso",
  "mask_sparsity",
  "ScaleByRegNewtonState",
  "reg_newton",
  "scale_by_reg_newton",
  "WeightEMAState",
  "ema_params",
  "weight_ema",
  "robust_mean_sgd",
  "scale_by_robust_mean",
]

# Moved for one release (docs/design.md, "API conventions"): the top level holds optax
# transformations; whole loops live in optim.loops, helpers beside the method they serve.
_moved = moved_names(
  __name__,
  {
    "reg_newton_minimize": "optim.loops.reg_newton_minimize",
    "RegNewtonResult": "optim.loops.RegNewtonResult",
    "adaptive_batch_train": "optim.loops.adaptive_batch_train",
    "AdaptiveBatchResult": "optim.loops.AdaptiveBatchResult",
    "norm_test": "optim.loops.norm_test",
    "augmented_inner_product_test": "optim.loops.augmented_inner_product_test",
    "BatchTest": "optim.loops.BatchTest",
    "hesso_structure": "optim.pruning.hesso_structure",
    "prune_groups": "optim.pruning.prune_groups",
    "compand_weights": "optim.compander.compand_weights",
    "expand_weights": "optim.compander.expand_weights",
    "nnx_companded": "optim.compander.nnx_companded",
    "conv_spatial_axes": "optim.layouts.conv_spatial_axes",
  },
)


def __getattr__(name):
  # optim.layers holds flax nnx layers: imported on first use, so `import optim` never
  # imports flax (as `import jaxdiff` does not; jaxdiff.models is the same).
  if name == "layers":
    import importlib

    return importlib.import_module("optim.layers")
  return _moved(name)
