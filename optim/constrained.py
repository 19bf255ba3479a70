"""optim.constrained: equality-constrained optimization, min_x f(x) subject to c(x) = 0."""

__all__: list[str] = []
