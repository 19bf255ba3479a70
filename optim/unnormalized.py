"""optim.unnormalized: learning unnormalized models :math:`p_\\theta \\propto e^{-E_\\theta}`.

:func:`meco_grads` (MECO, Jiang et al. 2023) estimates the gradient of the negative
log-likelihood with the log partition function written as a compositional function of an
expectation under a noise distribution, the expectation tracked by a moving average in
:class:`MECOState` (:func:`meco_init`); :func:`meco` is its parameter step (a moving
average of the gradients). :func:`nce_loss` is noise-contrastive estimation, the baseline,
with the log partition function a learned parameter; :func:`log_partition_estimate` is
the importance-sampling estimate of :math:`\\log Z`. Like :mod:`optim.local`, these return
gradients or losses that an optax optimizer steps.
"""

from optim._unnormalized import (
  MECOState,
  log_partition_estimate,
  meco,
  meco_grads,
  meco_init,
  nce_loss,
)

__all__ = [
  "MECOState",
  "log_partition_estimate",
  "meco",
  "meco_grads",
  "meco_init",
  "nce_loss",
]
