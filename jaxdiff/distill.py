"""jaxdiff.distill: few-step generators trained from a diffusion model or from data.

Consistency training, distribution-matching distillation (reverse-KL and f-divergence
DMD, decoupled DMD), data-free consistency distillation from the teacher's own
trajectories, and guidance distillation into adapters, each as pure losses over
``(params, batch, key)`` that plug into :func:`jaxdiff.models.train` or any nnx/optax
step. Implementation in :mod:`jaxdiff._distill` (one module per method family).
"""

from jaxdiff._distill._consistency import (
  PREMETRICS,
  adaptive_c,
  cauchy_premetric,
  consistency_function,
  consistency_sample,
  consistency_scalings,
  consistency_training_loss,
  ict_num_scales,
  ict_timestep_probs,
  karras_sigmas,
  ot_pairing,
  pseudo_huber_premetric,
)
from jaxdiff._distill._distribution_matching import (
  DECOUPLED_VARIANTS,
  DIVERGENCES,
  cfg_augmentation_grad,
  decoupled_timesteps,
  distribution_matching_grad,
  f_divergence_weight,
  fake_score_loss,
  generator_loss,
  ratio_discriminator_loss,
)
from jaxdiff._distill._guidance_adapters import (
  GuidanceStates,
  agd_loss,
  freeze_base,
  guided_states,
  noised_states,
)
from jaxdiff._distill._trajectory_pairs import (
  TrajectoryPairs,
  teacher_velocity,
  trajectory_consistency_loss,
  trajectory_pairs,
)

__all__: list[str] = [
  # consistency training (iCT with the Cauchy premetric, OT pairing, adaptive c)
  "PREMETRICS",
  "adaptive_c",
  "cauchy_premetric",
  "consistency_function",
  "consistency_sample",
  "consistency_scalings",
  "consistency_training_loss",
  "ict_num_scales",
  "ict_timestep_probs",
  "karras_sigmas",
  "ot_pairing",
  "pseudo_huber_premetric",
  # distribution matching (DMD / VSD, f-distill, decoupled DMD)
  "DECOUPLED_VARIANTS",
  "DIVERGENCES",
  "cfg_augmentation_grad",
  "decoupled_timesteps",
  "distribution_matching_grad",
  "f_divergence_weight",
  "fake_score_loss",
  "generator_loss",
  "ratio_discriminator_loss",
  # data-free consistency distillation on the teacher's trajectories (TBCM)
  "TrajectoryPairs",
  "teacher_velocity",
  "trajectory_consistency_loss",
  "trajectory_pairs",
  # guidance distillation into adapters on a frozen denoiser (AGD)
  "GuidanceAdapter",  # noqa: F822 - loaded by __getattr__ (flax)
  "GuidanceStates",
  "agd_loss",
  "freeze_base",
  "guided_states",
  "noised_states",
]


def __getattr__(name):
  # The nnx adapter imports flax: loaded on first use, so `import jaxdiff` stays flax-free.
  if name == "GuidanceAdapter":
    from jaxdiff._distill._adapter_net import GuidanceAdapter

    return GuidanceAdapter
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
