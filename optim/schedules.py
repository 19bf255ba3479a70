"""optim.schedules (public namespace; implementation in private modules)."""

from optim._schedules import linear_decay, refined, scale_for_batch_size

__all__: list[str] = ["linear_decay", "refined", "scale_for_batch_size"]
