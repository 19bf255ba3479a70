"""optim.ot: entropic optimal transport by Sinkhorn-Newton-Sparse (ott-jax is the reference)."""

from optim._sinkhorn_newton import SNSOutput, sinkhorn_newton_sparse, sq_euclidean_cost

__all__ = ["SNSOutput", "sinkhorn_newton_sparse", "sq_euclidean_cost"]
