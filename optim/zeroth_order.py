"""optim.zeroth_order: optimization from function values only (gradient estimators, surrogates)."""

from optim._zo_subspace import (
  ZOSubspaceEstimate,
  ZOSubspaceState,
  zo_subspace_init,
  zo_subspace_step,
)

__all__: list[str] = [
  "ZOSubspaceEstimate",
  "ZOSubspaceState",
  "zo_subspace_init",
  "zo_subspace_step",
]
