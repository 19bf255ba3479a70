"""jaxdiff.models: small flax.nnx networks and the deterministic, resumable training used by
the digits demo, the CLI and the notebooks."""

from jaxdiff.models._attention import SelfAttention
from jaxdiff.models._nets import DigitClassifier, DigitDenoiser
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
  "SelfAttention",
  "TrainResult",
  "batch_indices",
  "classifier_loss",
  "load_digits",
  "train",
  "v_prediction_loss",
]
