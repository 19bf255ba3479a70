"""optim.pruning: the network that structured pruning leaves behind.

:func:`optim.hesso` (a transformation, at the top level) drives the least salient
parameter groups to zero during training; :func:`hesso_structure` reads the kept groups
from its state and :func:`prune_groups` slices the parameters down to them.
"""

from optim._hesso import hesso_structure, prune_groups
from optim._mask_sparsity import smallest_groups

__all__ = ["hesso_structure", "prune_groups", "smallest_groups"]
