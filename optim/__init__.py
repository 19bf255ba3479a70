"""optim: optimizers as optax transformations and the curvature toolkit under them."""

from optim import curvature, data_scores, losses, ot, quant, schedules
from optim._adadagrad import (
  AdaptiveBatchResult,
  BatchTest,
  adaptive_batch_train,
  augmented_inner_product_test,
  norm_test,
)
from optim._adahessian import (
  ScaleByAdaHessianState,
  adahessian,
  conv_spatial_axes,
  scale_by_adahessian,
)
from optim._adamp import (
  ScaleByAdamPState,
  ScaleBySGDPState,
  adamp,
  scale_by_adamp,
  scale_by_sgdp,
  sgdp,
)
from optim._compander import compand_weights, expand_weights, nnx_companded
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
from optim._hesso import HessoState, hesso, hesso_structure, prune_groups, scale_by_hesso
from optim._mfac import ScaleByMFACState, mfac, scale_by_mfac
from optim._newton import (
  RegNewtonResult,
  ScaleByRegNewtonState,
  reg_newton,
  reg_newton_minimize,
  scale_by_reg_newton,
)
from optim._normalized_gd import ScaleByLossState, normalized_gd, scale_by_inverse_loss
from optim._perp_grad import PerpGradState, perp_grad
from optim._sophia import ScaleBySophiaState, scale_by_sophia, sophia
from optim._tract import scale_by_tract

__all__ = [
  "curvature",
  "data_scores",
  "losses",
  "quant",
  "schedules",
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
  "conv_spatial_axes",
  "mfac",
  "scale_by_adahessian",
  "scale_by_mfac",
  "scale_by_sophia",
  "sophia",
  "AdaptiveBatchResult",
  "BatchTest",
  "DIFF2State",
  "adaptive_batch_train",
  "augmented_inner_product_test",
  "compand_weights",
  "diff2",
  "expand_weights",
  "nnx_companded",
  "norm_test",
  "scale_by_diff2",
  "scale_by_tract",
  "ot",
  "HessoState",
  "hesso",
  "hesso_structure",
  "prune_groups",
  "scale_by_hesso",
  "RegNewtonResult",
  "ScaleByRegNewtonState",
  "reg_newton",
  "reg_newton_minimize",
  "scale_by_reg_newton",
  "WeightEMAState",
  "ema_params",
  "weight_ema",
]
