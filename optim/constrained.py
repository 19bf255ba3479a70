"""optim.constrained: equality-constrained optimization, min_x f(x) subject to c(x) = 0.

:func:`eal_sketch_minimize` (AdaSketch-Newton): inexact Newton steps on the KKT system,
solved by randomized iterative sketching to an adaptive accuracy, with a line search on the
exact augmented Lagrangian merit function.
"""

from optim._constrained_sketch import EALSketchResult, eal_sketch_minimize

__all__: list[str] = ["EALSketchResult", "eal_sketch_minimize"]
