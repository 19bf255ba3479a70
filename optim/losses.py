"""optim.losses (public namespace; implementation in private modules)."""

from optim._losses import stablemax_cross_entropy

__all__: list[str] = ["stablemax_cross_entropy"]
