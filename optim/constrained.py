"""optim.constrained: equality-constrained optimization, min_x f(x) subject to c(x) = 0."""

from optim._constrained_sketch import EALSketchResult, eal_sketch_minimize

__all__: list[str] = ["EALSketchResult", "eal_sketch_minimize"]
