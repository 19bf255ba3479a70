"""jaxdiff.finetune: tuning a (distilled) diffusion sampler towards a goal.

Pairwise sample optimization, reinforcement learning of the sampler's stochastic steps
against sparse rewards, policy optimisation of the starting-noise distribution, and
reward maximisation of a one-step generator regularised by a score divergence, each as
pure losses and estimators over pytrees. Implementation in :mod:`jaxdiff._finetune` (one
module per method family).
"""

from jaxdiff._finetune._diff_instruct_star import (
  cfg_reference,
  diff_instruct_star_loss,
  score_divergence,
  sim_loss,
)
from jaxdiff._finetune._pso import pso_loss

__all__: list[str] = [
  # pairwise sample optimization (PSO)
  "pso_loss",
  # Diff-Instruct*: generator reward under a score-based divergence (SIM)
  "cfg_reference",
  "diff_instruct_star_loss",
  "score_divergence",
  "sim_loss",
]
