"""jaxdiff.finetune: tuning a (distilled) diffusion sampler towards a goal.

Pairwise sample optimization, reinforcement learning of the sampler's stochastic steps
against sparse rewards, policy optimisation of the starting-noise distribution, and
reward maximisation of a one-step generator regularised by a score divergence, each as
pure losses and estimators over pytrees. Implementation in :mod:`jaxdiff._finetune` (one
module per method family).
"""

from jaxdiff._finetune._b2diffurl import (
  BranchAdvantages,
  BranchRollout,
  b2diffurl_loss,
  branch_advantages,
  branch_rollout,
  progressive_windows,
)
from jaxdiff._finetune._diff_instruct_star import (
  cfg_reference,
  diff_instruct_star_loss,
  score_divergence,
  sim_loss,
)
from jaxdiff._finetune._find import (
  NoisePolicy,
  find_calibration,
  find_clamp,
  find_loss,
  find_sample,
  noise_policy,
)
from jaxdiff._finetune._policy import (
  Rollout,
  ddim_transition,
  gaussian_log_prob,
  stochastic_rollout,
  trajectory_log_probs,
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
  # the sampler as a policy (shared by the RL methods)
  "Rollout",
  "ddim_transition",
  "gaussian_log_prob",
  "stochastic_rollout",
  "trajectory_log_probs",
  # B²-DiffuRL: backward progressive training, branch-based sampling
  "BranchAdvantages",
  "BranchRollout",
  "b2diffurl_loss",
  "branch_advantages",
  "branch_rollout",
  "progressive_windows",
  # FIND: the starting-noise distribution as a policy
  "NoisePolicy",
  "find_calibration",
  "find_clamp",
  "find_loss",
  "find_sample",
  "noise_policy",
]
