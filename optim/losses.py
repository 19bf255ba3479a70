"""optim.losses (public namespace; implementation in private modules)."""

from optim._losses import gppo_loss, ppo_clip_loss, stablemax_cross_entropy
from optim._pskd import pskd_alpha, pskd_targets
from optim._storm import storm_features, storm_rescaler, storm_rescaler_init

__all__: list[str] = [
  "gppo_loss",
  "ppo_clip_loss",
  "stablemax_cross_entropy",
  "pskd_alpha",
  "pskd_targets",
  "storm_features",
  "storm_rescaler",
  "storm_rescaler_init",
]
