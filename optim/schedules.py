"""optim.schedules (public namespace; implementation in private modules)."""

from optim._regime import Regime, regime_adaptation
from optim._schedules import linear_decay, refined, scale_for_batch_size

__all__: list[str] = [
  "linear_decay",
  "refined",
  "scale_for_batch_size",
  "Regime",
  "regime_adaptation",
]
