"""optim.losses (public namespace; implementation in private modules)."""

from optim._losses import gppo_loss, ppo_clip_loss, stablemax_cross_entropy

__all__: list[str] = ["gppo_loss", "ppo_clip_loss", "stablemax_cross_entropy"]
