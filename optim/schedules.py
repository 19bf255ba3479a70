"""optim.schedules (public namespace; implementation in private modules)."""

__all__: list[str] = []
