"""optim.local: learning rules without end-to-end backpropagation.

Each layer or block of the network learns from a loss of its own, so no gradient passes
from one layer to another. :func:`tpsgd_grads` (tpSGD, Lomnitz et al.) trains each hidden
layer of a fully connected network towards a fixed random projection of the labels
(:func:`tpsgd_projections`) with forward passes only; the network is :func:`mlp_init` /
:func:`mlp_apply`, and :func:`tpsgd_rnn_grads` does the same for the hidden states of a
stacked RNN (:func:`rnn_init` / :func:`rnn_apply`), one time step at a time.
:func:`noprop_dt_loss` (NoProp-DT, Li, Teh, Pascanu) trains each block to denoise a noisy
label embedding on its own, with the schedule :func:`noprop_schedule`, and
:func:`noprop_predict` runs the denoising chain (:func:`noprop_coefficients`) at inference.
Their continuous-time variants train one network conditioned on the time:
:func:`noprop_ct_loss` / :func:`noprop_ct_predict` (NoProp-CT) and :func:`noprop_fm_loss` /
:func:`noprop_fm_predict` (NoProp-FM, flow matching to the label embedding).
They return gradients or losses that any optax optimizer steps; they are neither optax
transformations (the gradient itself changes, not its preconditioning) nor whole loops.
"""

from optim._noprop import noprop_coefficients, noprop_dt_loss, noprop_predict, noprop_schedule
from optim._noprop_ct import (
  noprop_ct_loss,
  noprop_ct_predict,
  noprop_fm_loss,
  noprop_fm_predict,
)
from optim._tpsgd import mlp_apply, mlp_init, tpsgd_grads, tpsgd_projections
from optim._tpsgd_rnn import rnn_apply, rnn_init, tpsgd_rnn_grads

__all__ = [
  "mlp_apply",
  "mlp_init",
  "noprop_coefficients",
  "noprop_ct_loss",
  "noprop_ct_predict",
  "noprop_dt_loss",
  "noprop_fm_loss",
  "noprop_fm_predict",
  "noprop_predict",
  "noprop_schedule",
  "rnn_apply",
  "rnn_init",
  "tpsgd_grads",
  "tpsgd_projections",
  "tpsgd_rnn_grads",
]
