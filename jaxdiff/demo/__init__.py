"""The end-to-end demo behind ``make demo`` / ``python -m jaxdiff demo``.

On sklearn's 8x8 handwritten digits it

1. trains a class-conditional diffusion transformer (with :func:`optim.adamp`), a smaller,
   shorter-trained copy of it (the "bad version" autoguidance needs) and an MLP classifier
   (with :func:`optim.diffgrad`), with tqdm bars and resumable orbax checkpoints in a cache
   directory (:mod:`._training`);
2. samples a grid of guidance rules x solvers at a fixed budget of network evaluations
   (:mod:`._sampling`); the rules and solvers are those of :data:`jaxdiff.guidance.REGISTRY`
   and :data:`jaxdiff.solvers.REGISTRY` that :class:`DemoConfig` names (by default every
   registered rule);
3. measures Frechet distance on the classifier's features against held-out digits, class
   accuracy, precision/recall, saturation, evaluations and wall time (:mod:`._evaluation`);
4. writes ``out/``: ``report.md``, ``metrics.json`` (:mod:`._report`), PNG sample grids and
   plots (:mod:`._figures`: training curves, metrics vs guidance scale, the classifier's
   Hessian spectrum).

Everything here is plain orchestration of the public API; the numbers in the report are
the ones this run measured.
"""

from jaxdiff.demo._config import (
  NO_GUIDANCE,
  DemoConfig,
  check_rule,
  default_cache_dir,
  demo_rules,
  evals_per_step,
  make_rule,
  rule_label,
  solver_label,
  steps_for_budget,
)
from jaxdiff.demo._run import run_demo
from jaxdiff.demo._sampling import sample_digits
from jaxdiff.demo._training import Models, prepare_models

__all__ = [
  "NO_GUIDANCE",
  "DemoConfig",
  "Models",
  "check_rule",
  "default_cache_dir",
  "demo_rules",
  "evals_per_step",
  "make_rule",
  "prepare_models",
  "rule_label",
  "run_demo",
  "sample_digits",
  "solver_label",
  "steps_for_budget",
]
