"""optim.zeroth_order: optimization from function values only (gradient estimators, surrogates)."""

from optim._zo_federated import (
  FederatedZOResult,
  FedZOState,
  FZooSState,
  fedzo_init,
  fedzo_minimize,
  fedzo_round,
  fzoos_init,
  fzoos_minimize,
  fzoos_round,
  gp_gradient,
  zo_gradient,
)
from optim._zo_subspace import (
  ZOSubspaceEstimate,
  ZOSubspaceState,
  zo_subspace_init,
  zo_subspace_step,
)

__all__: list[str] = [
  "FZooSState",
  "FedZOState",
  "FederatedZOResult",
  "fedzo_init",
  "fedzo_minimize",
  "fedzo_round",
  "fzoos_init",
  "fzoos_minimize",
  "fzoos_round",
  "gp_gradient",
  "zo_gradient",
  "ZOSubspaceEstimate",
  "ZOSubspaceState",
  "zo_subspace_init",
  "zo_subspace_step",
]
