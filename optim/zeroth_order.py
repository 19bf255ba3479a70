"""optim.zeroth_order: optimization from function values only (gradient estimators, surrogates).

* :func:`zo_gradient` (two-point estimators) and the federated runners: :func:`fzoos_round` /
  :func:`fzoos_minimize` (FZooS: Gaussian-process surrogate gradients from each client's
  query history, with an adaptive correction towards the global surrogate) and
  :func:`fedzo_round` / :func:`fedzo_minimize` (the FedZO-style baseline); clients are a
  leading ``vmap`` axis that ``client_sharding=`` places on a mesh;
* :func:`zo_subspace_step` (ZOODiP: a zeroth-order estimate denoised by the subspace of past
  iterates, as used to personalise a quantized denoiser without backpropagation).
"""

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
