"""jaxdiff.training: training-side methods as pure functions.

Denoising losses for every parameterization and weighting (:func:`denoising_loss`) with
pluggable timestep samplers (:func:`uniform`, :func:`logit_normal`, the U-shaped
:func:`u_shaped` of Lee et al.) and the pseudo-Huber premetric; the difficulty curriculum
of Kim et al. (:func:`curriculum_groups`, :func:`curriculum`); Smooth Diffusion's step-wise
variation regularizer (:func:`step_variation_penalty`); reflow pairs
(:func:`reflow_pairs`). Every loss plugs into :func:`jaxdiff.models.train` or any
``nnx``/optax training step. The EMA of the weights is an optax transformation:
:func:`optim.weight_ema`, read with :func:`optim.ema_params`. Implementation in
:mod:`jaxdiff._training` (one module per topic).
"""

import warnings

from jaxdiff._training._loss import DenoisingLoss, denoising_loss, step_variation_penalty
from jaxdiff._training._reflow import reflow_pairs
from jaxdiff._training._samplers import (
  Curriculum,
  LogitNormal,
  Uniform,
  UShaped,
  curriculum,
  curriculum_groups,
  logit_normal,
  u_shaped,
  uniform,
)

__all__ = [
  "Curriculum",
  "DenoisingLoss",
  "LogitNormal",
  "UShaped",
  "Uniform",
  "curriculum",
  "curriculum_groups",
  "denoising_loss",
  "logit_normal",
  "reflow_pairs",
  "step_variation_penalty",
  "u_shaped",
  "uniform",
]

# Moved to optim (an optax transformation, where an optax user looks for it); the old
# spellings work for one release.
_MOVED_TO_OPTIM = ("WeightEMAState", "ema_params", "weight_ema")


def __getattr__(name):
  if name in _MOVED_TO_OPTIM:
    warnings.warn(
      f"jaxdiff.training.{name} is deprecated; use optim.{name} (the old location will be "
      "removed in the next release)",
      DeprecationWarning,
      stacklevel=2,
    )
    import optim

    return getattr(optim, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
