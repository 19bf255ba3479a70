"""jaxdiff.training: training-side methods as pure functions.

Denoising losses for every parameterization and weighting (:func:`denoising_loss`) with
pluggable timestep samplers (:func:`uniform`, :func:`logit_normal`, the U-shaped
:func:`u_shaped` of Lee et al.) and the pseudo-Huber premetric; the difficulty curriculum
of Kim et al. (:func:`curriculum_groups`, :func:`curriculum`); Smooth Diffusion's step-wise
variation regularizer (:func:`step_variation_penalty`); reflow pairs
(:func:`reflow_pairs`); an EMA of the weights as an optax transformation
(:func:`weight_ema`, :func:`ema_params`). Every loss plugs into
:func:`jaxdiff.models.train` or any ``nnx``/optax training step. Implementation in
:mod:`jaxdiff._training`.
"""

from jaxdiff._training import (
  Curriculum,
  DenoisingLoss,
  LogitNormal,
  Uniform,
  UShaped,
  WeightEMAState,
  curriculum,
  curriculum_groups,
  denoising_loss,
  ema_params,
  logit_normal,
  reflow_pairs,
  step_variation_penalty,
  u_shaped,
  uniform,
  weight_ema,
)

__all__ = [
  "Curriculum",
  "DenoisingLoss",
  "LogitNormal",
  "UShaped",
  "Uniform",
  "WeightEMAState",
  "curriculum",
  "curriculum_groups",
  "denoising_loss",
  "ema_params",
  "logit_normal",
  "reflow_pairs",
  "step_variation_penalty",
  "u_shaped",
  "uniform",
  "weight_ema",
]
