"""optim.ot: entropic optimal transport by Sinkhorn-Newton-Sparse (ott-jax is the reference)."""

from optim._sinkhorn_newton import SNSResult, sinkhorn_newton_sparse, sq_euclidean_cost
from optim._validation import moved_names

__all__ = ["SNSResult", "sinkhorn_newton_sparse", "sq_euclidean_cost"]

# Renamed for one release (docs/design.md, "Deprecated spellings"): a solver's output is a
# ``...Result``.
__getattr__ = moved_names(__name__, {"SNSOutput": "optim.ot.SNSResult"})
