"""What the demo runs: :class:`DemoConfig`, the cache directory, and the rule/solver lookups.

Rule and solver names, labels, default scales and evaluations per step come from
:data:`jaxdiff.guidance.REGISTRY` and :data:`jaxdiff.solvers.REGISTRY`; the demo adds only
``"none"`` (plain conditional sampling) and its own tuned hyperparameters, as data in
:class:`DemoConfig`. A rule registered there is sampled by the demo and offered by the CLI
without editing either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any

from jaxdiff import guidance, solvers

__all__ = [
  "NO_GUIDANCE",
  "DemoConfig",
  "default_cache_dir",
  "demo_rules",
  "evals_per_step",
  "rule_label",
  "solver_label",
  "steps_for_budget",
]

# The demo's and CLI's name for sampling the conditional model without guidance.
NO_GUIDANCE = "none"
_NO_GUIDANCE_LABEL = "conditional (no guidance)"
# What the demo can hand a rule's builder: every resource the registry knows of.
_PROVIDED = frozenset(guidance.RESOURCES)


def default_cache_dir() -> pathlib.Path:
  """``$JAXDIFF_CACHE_DIR`` or ``.cache/jaxdiff-demo`` under the working directory.

  Example:
    >>> default_cache_dir().name in ("jaxdiff-demo",) or "JAXDIFF_CACHE_DIR" in os.environ
    True
  """
  return pathlib.Path(os.environ.get("JAXDIFF_CACHE_DIR", ".cache/jaxdiff-demo"))


def demo_rules() -> tuple[str, ...]:
  """``"none"`` and every registered rule whose resources the demo provides, in order.

  Read at call time, so a rule added to :data:`jaxdiff.guidance.REGISTRY` is included.

  Example:
    >>> demo_rules()[:3]
    ('none', 'cfg', 'apg')
  """
  runnable = (n for n, spec in guidance.REGISTRY.items() if set(spec.requires) <= _PROVIDED)
  return (NO_GUIDANCE, *runnable)


def rule_label(name: str) -> str:
  """The table label of guidance rule ``name`` (the registry's; ``"none"`` is the demo's).

  Example:
    >>> rule_label("cfg"), rule_label("none")
    ('CFG', 'conditional (no guidance)')
  """
  return _NO_GUIDANCE_LABEL if name == NO_GUIDANCE else guidance.REGISTRY[name].label


def solver_label(name: str) -> str:
  """The table label of solver ``name`` (from :data:`jaxdiff.solvers.REGISTRY`).

  Example:
    >>> solver_label("dpmpp_2m")
    'DPM-Solver++(2M)'
  """
  return solvers.REGISTRY[name].label


def evals_per_step(name: str) -> int:
  """Network evaluations per step of rule ``name`` (``"none"``: 1), what a budget divides.

  Example:
    >>> evals_per_step("cfg"), evals_per_step("none")
    (2, 1)
  """
  return 1 if name == NO_GUIDANCE else guidance.REGISTRY[name].evals_per_step


def steps_for_budget(name: str, nfe_budget: int) -> int:
  r"""Solver steps that spend ``nfe_budget`` evaluations per sample with rule ``name``.

  .. math:: N = \max(1, \lfloor \text{budget} / \text{evals per step} \rfloor)

  A rule that may save evaluations (Adaptive Guidance) gets the steps of its maximum: its
  saving is what the demo measures.

  Example:
    >>> steps_for_budget("cfg", 20), steps_for_budget("none", 20), steps_for_budget("cfg", 1)
    (10, 20, 1)
  """
  return max(1, nfe_budget // evals_per_step(name))


def _demo_scales() -> dict[str, float]:
  # Each rule's own convention: CFG's w for cfg/apg/adaptive/autoguidance (1 = none),
  # PAG's s (0 = none), CFG++'s lambda in [0, 1], the classifier-guidance s.
  return {
    "cfg": 3.0,
    "apg": 3.0,
    "adaptive": 3.0,
    "cfgpp": 0.6,
    "pag": 2.0,
    "autoguidance": 2.0,
    "classifier": 0.3,
  }


def _demo_rule_kwargs() -> dict[str, dict[str, Any]]:
  return {
    # Sadat et al. 2024, Sec. 5: eta = 0, reverse momentum beta = -0.5, a norm threshold r;
    # r is a per-sample L2 radius of the update in data space: for 64 pixels in [-1, 1]
    # (norm about 6) we use 2.
    "apg": {"eta": 0.0, "norm_threshold": 2.0, "momentum": -0.5},
    # gamma_bar, Castillo et al. 2023 (0.99 - 0.999).
    "adaptive": {"threshold": 0.99},
    # The demo has no input image: the negative is evaluated once (Eqs. 9-10).
    "rcfg": {"variant": "onetime"},
  }


def _demo_sweep_rules() -> dict[str, float]:
  # rule -> offset from the CFG-convention w to the rule's scale (PAG: s = w - 1).
  return {"cfg": 0.0, "apg": 0.0, "adaptive": 0.0, "pag": -1.0, "autoguidance": 0.0}


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """Sizes and choices of the demo; :meth:`full` is ``make demo``, :meth:`small` the CI run.

  The cache key of each trained model hashes exactly the fields that determine it, so a
  change of, e.g., the sampling budget reuses the trained networks.

  Which rules and solvers run, and with which hyperparameters, is data:

  * ``rules``: guidance rule names (``"none"`` or keys of
    :data:`jaxdiff.guidance.REGISTRY`); default :func:`demo_rules`, every registered rule.
  * ``scales``: rule -> scale in the rule's own convention; a rule not listed gets the
    registry's ``default_scale``.
  * ``rule_kwargs``: rule -> keyword hyperparameters of its factory. Numbers are traced
    (one compiled sampler serves a sweep over them); anything else is static.
  * ``sweep_rules``: rules of the metric-vs-``w`` sweep, each with the offset from the
    CFG-convention ``w`` to its own scale (PAG: ``s = w - 1``).

  Example:
    >>> c = DemoConfig.small()
    >>> c.scale_of("cfg"), c.scale_of("none"), c.rules[0]
    (3.0, 0.0, 'none')
  """

  seed: int = 0
  batch_size: int = 128
  # main denoiser
  dim: int = 64
  depth: int = 2
  num_heads: int = 4
  denoiser_steps: int = 2000
  learning_rate: float = 2e-3
  # the weak model for autoguidance: smaller and trained for fewer steps
  weak_dim: int = 32
  weak_depth: int = 2
  weak_steps: int = 500
  # classifier
  classifier_steps: int = 1500
  classifier_lr: float = 3e-3
  # sampling and evaluation
  samples_per_class: int = 30
  nfe_budget: int = 20
  solvers: tuple[str, ...] = ("ddim", "dpmpp_2m", "unipc")
  rules: tuple[str, ...] = dataclasses.field(default_factory=demo_rules)
  scales: dict[str, float] = dataclasses.field(default_factory=_demo_scales)
  rule_kwargs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=_demo_rule_kwargs)
  sweep_rules: dict[str, float] = dataclasses.field(default_factory=_demo_sweep_rules)
  sweep_solver: str = "dpmpp_2m"
  sweep_scales: tuple[float, ...] = (2.0, 3.0, 5.0, 8.0)
  cfgpp_lambdas: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
  adaptive_thresholds: tuple[float, ...] = (0.99, 0.9999, 0.99999)
  classifier_scales: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
  # curvature
  hessian_examples: int = 512
  slq_iters: int = 80
  slq_probes: int = 2
  top_k: int = 12
  tour: bool = True
  chunk: int = 100
  checkpoint_every: int = 500
  # XLA's CPU backend optimisation level: 1 compiles ~35% faster than the default (2) at
  # the same speed for these small networks; 0 compiles ~3x faster but runs ~2-3x slower
  # (the smoke configuration, where compilation is all the work).
  xla_opt_level: int = 1

  def __post_init__(self):
    known = set(demo_rules())
    unknown = [r for r in self.rules if r not in known]
    if unknown:
      raise ValueError(f"rules: unknown {unknown}; known: {', '.join(sorted(known))}")
    unknown = [s for s in self.solvers if s not in solvers.REGISTRY]
    if unknown:
      raise ValueError(f"solvers: unknown {unknown}; known: {', '.join(sorted(solvers.REGISTRY))}")

  @classmethod
  def full(cls) -> DemoConfig:
    return cls()

  @classmethod
  def small(cls) -> DemoConfig:
    """A few seconds of training: exercises every stage, proves nothing numerically."""
    return cls(
      batch_size=32,
      dim=16,
      depth=1,
      num_heads=2,
      denoiser_steps=20,
      weak_dim=16,
      weak_depth=1,
      weak_steps=20,
      classifier_steps=20,
      samples_per_class=2,
      nfe_budget=4,
      solvers=("dpmpp_2m",),
      sweep_scales=(3.0, 5.0),
      cfgpp_lambdas=(0.6,),
      adaptive_thresholds=(0.99,),
      classifier_scales=(0.3,),
      hessian_examples=64,
      slq_iters=8,
      slq_probes=1,
      top_k=2,
      tour=False,
      chunk=10,
      checkpoint_every=10,
      xla_opt_level=0,
    )

  @classmethod
  def from_env(cls) -> DemoConfig:
    """:meth:`small` when ``JAXDIFF_DEMO_SMALL=1``, else :meth:`full`."""
    return cls.small() if os.environ.get("JAXDIFF_DEMO_SMALL", "") == "1" else cls.full()

  @property
  def compiler_options(self) -> dict[str, Any]:
    return {"xla_backend_optimization_level": self.xla_opt_level}

  def scale_of(self, rule: str) -> float:
    """The demo's scale for ``rule`` (``"none"``: 0; unlisted: the registry's default)."""
    if rule == NO_GUIDANCE:
      return 0.0
    return float(self.scales.get(rule, guidance.REGISTRY[rule].default_scale))

  def key_of(self, *fields: str) -> str:
    """A short hash of the named fields (the cache key of a trained model)."""
    blob = json.dumps({f: getattr(self, f) for f in fields}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]
