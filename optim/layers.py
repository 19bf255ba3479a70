"""optim.layers: flax ``nnx`` layers of the training recipes.

Not optimizer steps: layers that change how a network trains. :class:`GhostBatchNorm`
normalizes per ghost batch (Hoffer et al., with :func:`optim.schedules.regime_adaptation`
for the learning rate and the number of updates); :class:`MultiSampleDropout` averages the
loss over several dropout masks through one shared head (Inoue).
"""

from optim._ghost_bn import GhostBatchNorm
from optim._multi_sample_dropout import MultiSampleDropout

__all__ = ["GhostBatchNorm", "MultiSampleDropout"]
