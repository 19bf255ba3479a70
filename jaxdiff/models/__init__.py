"""jaxdiff.models: small flax.nnx networks and the deterministic, resumable training used by
the digits demo, the CLI and the notebooks."""

from jaxdiff.models._attention import SelfAttention
from jaxdiff.models._early_exit import (
  EarlyExit,
  ExitHeads,
  ExitOutputs,
  ExitThreshold,
  early_exit_loss,
)
from jaxdiff.models._nets import DigitClassifier, DigitDenoiser
from jaxdiff.models._norm import NonScalingLayerNorm
from jaxdiff.models._train import (
  Digits,
  TrainResult,
  batch_indices,
  classifier_loss,
  load_digits,
  train,
  v_prediction_loss,
)

__all__ = [
  "DigitClassifier",
  "DigitDenoiser",
  "Digits",
  "EarlyExit",
  "ExitHeads",
  "ExitOutputs",
  "ExitThreshold",
  "NonScalingLayerNorm",
  "SelfAttention",
  "TrainResult",
  "batch_indices",
  "classifier_loss",
  "early_exit_loss",
  "load_digits",
  "train",
  "v_prediction_loss",
]
