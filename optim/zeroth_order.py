"""optim.zeroth_order: optimization from function values only (gradient estimators, surrogates)."""

__all__: list[str] = []
