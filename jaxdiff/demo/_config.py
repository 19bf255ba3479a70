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
import math
import numbers
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from jaxdiff import guidance, solvers
from jaxdiff._validation import check_scalar

__all__ = [
  "NO_GUIDANCE",
  "NUM_CLASSES",
  "DemoConfig",
  "check_rule",
  "default_cache_dir",
  "demo_rules",
  "evals_per_step",
  "make_rule",
  "rule_label",
  "solver_label",
  "steps_for_budget",
]

# The demo's and CLI's name for sampling the conditional model without guidance.
NO_GUIDANCE = "none"
_NO_GUIDANCE_LABEL = "conditional (no guidance)"
# The digits' classes.
NUM_CLASSES = 10


def default_cache_dir() -> pathlib.Path:
  """``$JAXDIFF_CACHE_DIR`` or ``.cache/jaxdiff-demo`` under the working directory.

  An empty ``JAXDIFF_CACHE_DIR`` counts as unset (it would otherwise mean the working
  directory itself).

  Example:
    >>> default_cache_dir().name in ("jaxdiff-demo",) or "JAXDIFF_CACHE_DIR" in os.environ
    True
  """
  return pathlib.Path(os.environ.get("JAXDIFF_CACHE_DIR") or ".cache/jaxdiff-demo")


def demo_rules() -> tuple[str, ...]:
  """``"none"`` and every registered rule, in order (the demo provides every resource),
  except the rules that need a keyword its plain denoiser does not take (a
  ``RuleSpec.keyword``: AGD's distilled network).

  Read at call time, so a rule added to :data:`jaxdiff.guidance.REGISTRY` is included.

  Example:
    >>> demo_rules()[:3]
    ('none', 'cfg', 'apg')
  """
  return (NO_GUIDANCE, *(n for n, spec in guidance.REGISTRY.items() if spec.keyword is None))


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


def evals_per_step(name: str, **options: Any) -> int:
  """Network evaluations per step of rule ``name`` built with ``options`` (``"none"``: 1).

  Example:
    >>> evals_per_step("cfg"), evals_per_step("none")
    (2, 1)
  """
  return 1 if name == NO_GUIDANCE else guidance.REGISTRY[name].evals(**options)


def steps_for_budget(name: str, nfe_budget: int, *, stages: int = 1, **options: Any) -> int:
  r"""Solver steps that spend ``nfe_budget`` evaluations per sample with rule ``name``.

  .. math:: N = \max(1, \lfloor \text{budget} /
    (\text{evals per step} \times \text{solver stages}) \rfloor)

  ``stages`` is the solver's network evaluations per step (Heun: 2); ``options`` are the
  rule's (PAG with a CFG term makes 3 evaluations per stage).

  A rule that may save evaluations (Adaptive Guidance) gets the steps of its maximum: its
  saving is what the demo measures.

  Example:
    >>> steps_for_budget("cfg", 20), steps_for_budget("none", 20), steps_for_budget("cfg", 1)
    (10, 20, 1)
  """
  return max(1, nfe_budget // (evals_per_step(name, **options) * stages))


def make_rule(name: str, scale, *, weak_denoise=None, classifier_fn=None, **hyperparameters):
  """Guidance rule ``name`` at ``scale`` from :data:`jaxdiff.guidance.REGISTRY`.

  ``"none"`` gives ``None`` (plain conditional sampling). ``scale`` follows the rule's own
  convention (see its factory); the resources are the demo's weak denoiser and classifier
  (guiding the *unconditional* model, the classic use of classifier guidance).

  Example:
    >>> make_rule("none", 0.0) is None
    True
    >>> make_rule("apg", 5.0, momentum=-0.5) is not None
    True
  """
  if name == NO_GUIDANCE:
    return None
  return guidance.make(
    name,
    scale,
    weak_denoise=weak_denoise,
    classifier_fn=classifier_fn,
    num_classes=NUM_CLASSES,
    **hyperparameters,
  )


def _stand_in(x, *args, **kwargs):
  return x


def check_rule(name: str, scale, **hyperparameters) -> None:
  """Builds rule ``name`` once with stand-in networks, so that its factory rejects a bad
  ``scale`` or hyperparameter (and an unknown keyword) before any model is trained.

  Raises the factory's ``TypeError``/``ValueError`` unchanged.

  Example:
    >>> check_rule("cfg", 3.0)
    >>> check_rule("cfgpp", 3.0)
    Traceback (most recent call last):
    ...
    ValueError: cfgpp: scale must lie in [0, 1], got 3.0
  """
  make_rule(name, scale, weak_denoise=_stand_in, classifier_fn=_stand_in, **hyperparameters)


def _demo_scales() -> dict[str, float]:
  # Only where the demo departs from the registry's default scale (each rule's own
  # convention: PAG's s, 0 = none).
  return {"pag": 2.0}


def _demo_rule_kwargs() -> dict[str, dict[str, Any]]:
  return {
    # Sadat et al. 2024, Sec. 5: eta = 0, reverse momentum beta = -0.5, a norm threshold r;
    # r is a per-sample L2 radius of the update in data space: for 64 pixels in [-1, 1]
    # (norm about 6) we use 2.
    "apg": {"eta": 0.0, "norm_threshold": 2.0, "momentum": -0.5},
    # Adaptive Guidance compares denoised predictions: the registry's default ("eps",
    # noise predictions) finds cos ~ 1 at pure noise and switches to conditional-only
    # sampling after the first step (11 of 20 evaluations, the unguided samples); "x0"
    # keeps CFG's samples (bench/guidance_study.py --only digits).
    "adaptive": {"variant": "x0"},
    # EluCD's official DDPM script: marginal temperature 0.5 x the joint one (Sec. 4.4) and
    # the sine schedule's 0.3. The temperature is what makes the guidance help here: at
    # s = 0.1 FD 15.6 (FD 39 with the factory's default tau_2 = tau_1) against the
    # unconditional model's 31 (bench: docs/methods/guidance.md#classifier-guidance-elucd-classic).
    "classifier": {"marginal_temperature": 0.5, "schedule_amplitude": 0.3},
  }


def _demo_sweep_rules() -> dict[str, float]:
  # rule -> offset from the CFG-convention w to the rule's scale (PAG: s = w - 1).
  return {"cfg": 0.0, "apg": 0.0, "adaptive": 0.0, "pag": -1.0, "autoguidance": 0.0}


# The positive integer fields of DemoConfig (sizes, step and sample counts).
_SIZES = (
  "batch_size",
  "dim",
  "depth",
  "num_heads",
  "denoiser_steps",
  "weak_dim",
  "weak_depth",
  "weak_steps",
  "flow_steps",
  "classifier_steps",
  "samples_per_class",
  "nfe_budget",
  "hessian_examples",
  "slq_iters",
  "slq_probes",
  "top_k",
  "chunk",
  "checkpoint_every",
  "highres_dim",
  "highres_depth",
  "highres_patch",
  "highres_nfe",
  "jacobian_iters",
)


def _check_int(name: str, value, *, lo: int, hi: float = math.inf) -> None:
  # Strict: a float 64.0 would hash differently in the cache key than 64.
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"DemoConfig: {name} must be an int, got {value!r} ({type(value).__name__})")
  check_scalar(f"DemoConfig: {name}", value, lo=lo, hi=hi)


def _check_real(name: str, value, **bounds) -> None:
  check_scalar(f"DemoConfig: {name}", value, **bounds)


def _check_sequence(name: str, values) -> None:
  if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list)):
    raise TypeError(f"DemoConfig: {name} must be a tuple, got {values!r}")


def _check_numbers(name: str, values) -> None:
  """A non-empty tuple of finite real numbers."""
  _check_sequence(name, values)
  if not values:
    raise ValueError(f"DemoConfig: {name} must not be empty")
  for i, v in enumerate(values):
    _check_real(f"{name}[{i}]", v)


def _check_names(name: str, values, known: tuple[str, ...], *, empty_ok: bool = False) -> None:
  """A tuple of distinct names from ``known`` (non-empty unless ``empty_ok``)."""
  _check_sequence(name, values)
  if not values and not empty_ok:
    raise ValueError(f"DemoConfig: {name} must not be empty")
  unknown = [v for v in values if v not in known]
  if unknown:
    raise ValueError(f"DemoConfig: {name}: unknown {unknown}; known: {', '.join(sorted(known))}")
  repeated = sorted({v for v in values if values.count(v) > 1})
  if repeated:
    raise ValueError(f"DemoConfig: {name}: {repeated} listed more than once")


def _check_built(field: str, rule: str, scale, kwargs) -> None:
  """:func:`check_rule`, with the error re-raised naming the config field at fault."""
  try:
    check_rule(rule, scale, **kwargs)
  except (TypeError, ValueError) as e:
    raise type(e)(f"DemoConfig: {field}: {e}") from e


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
  # the rectified-flow model (demo/_training.py: prepare_flow_model): the main denoiser's
  # architecture on the flow schedule, velocity prediction, EMA of the weights
  flow_steps: int = 1500
  ema_decay: float = 0.999
  # classifier
  classifier_steps: int = 1500
  classifier_lr: float = 3e-3
  # sampling and evaluation
  samples_per_class: int = 30
  # held-out digits restored by the inverse-problems stage (demo/_inverse.py); 0: skip it
  inverse_digits: int = 16
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
  # s = 0 is the unconditional model alone: the baseline of classifier guidance
  classifier_scales: tuple[float, ...] = (0.0, 0.03, 0.1, 0.3, 1.0)
  # curvature
  hessian_examples: int = 512
  slq_iters: int = 80
  slq_probes: int = 2
  top_k: int = 12
  tour: bool = True
  # feature caching (demo/_run.py): TaylorSeer (interval, order) vs full computation with
  # CFG and DPM-Solver++(2M) at ``cache_steps`` steps; 0 steps: skip the section
  cache_steps: int = 50
  cache_interval: int = 5
  cache_order: int = 2
  # searched schedule (demo/_run.py): the S³ schedule shipped in
  # demo/searched_schedules.json (found by bench/_accel_search.py on the full models) vs
  # DPM-Solver++(2M) on the logSNR grid, unguided, at ``searched_nfe`` evaluations; 0: skip
  searched_nfe: int = 5
  # guidance ablation (demo/_run.py): APG's momentum alone and the paper's settings at the
  # highest w, and Adaptive Guidance (both variants) against CFG on the coarser grids of
  # ``ag_cfg_steps`` (steps) at equal closeness to full CFG
  guidance_ablation: bool = True
  ag_cfg_steps: tuple[int, ...] = (2, 8, 9)
  # high resolution (demo/_highres.py): a denoiser of the digits upsampled to 16x16
  # (demo/_training.py: prepare_highres_model), trained ``highres_steps`` steps (0: skip the
  # section); direct 16x16 sampling against DiffuseHigh's progressive 8 -> 16 sampling at
  # ``highres_nfe`` evaluations, and the leading eigenvectors of its Jacobian
  # (``jacobian_iters`` Lanczos steps)
  highres_steps: int = 1000
  highres_dim: int = 32
  highres_depth: int = 2
  highres_patch: int = 4
  highres_nfe: int = 20
  jacobian_iters: int = 24
  # few-step student (demo/_few_step.py): distilled from ``student_pool`` of the teacher's
  # own DDIM trajectories at ``nfe_budget`` steps (no training digits) for
  # ``student_steps`` steps (0: skip the section), peak lr ``student_lr``; its two-step
  # sampler re-noises to the pool grid's time nearest ``student_mid_t``
  student_steps: int = 400
  student_pool: int = 1024
  student_lr: float = 1e-3
  student_mid_t: float = 0.2
  chunk: int = 100
  checkpoint_every: int = 500
  # XLA's CPU backend optimisation level: 1 compiles ~35% faster than the default (2) at
  # the same speed for these small networks; 0 compiles ~3x faster but runs ~2-3x slower
  # (the smoke configuration, where compilation is all the work).
  xla_opt_level: int = 1

  def __post_init__(self):
    for name in _SIZES:
      _check_int(name, getattr(self, name), lo=1)
    _check_int("seed", self.seed, lo=0, hi=2**31 - 1)
    _check_int("inverse_digits", self.inverse_digits, lo=0, hi=360)
    _check_int("xla_opt_level", self.xla_opt_level, lo=0, hi=3)
    _check_real("ema_decay", self.ema_decay, lo=0.0, hi=1.0, hi_open=True)
    for name in ("learning_rate", "classifier_lr"):
      _check_real(name, getattr(self, name), lo=0.0, lo_open=True)
    _check_int("cache_steps", self.cache_steps, lo=0)
    _check_int("searched_nfe", self.searched_nfe, lo=0)
    _check_int("highres_steps", self.highres_steps, lo=0)
    _check_int("student_steps", self.student_steps, lo=0)
    _check_int("student_pool", self.student_pool, lo=1)
    _check_real("student_lr", self.student_lr, lo=0.0, lo_open=True)
    _check_real("student_mid_t", self.student_mid_t, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    if self.student_steps and self.student_pool * self.nfe_budget < self.batch_size:
      raise ValueError(
        f"DemoConfig: student_pool x nfe_budget ({self.student_pool} x {self.nfe_budget} "
        f"trajectory states) must be at least batch_size ({self.batch_size})"
      )
    _check_int("highres_nfe", self.highres_nfe, lo=2)  # a base step and a re-noised one
    if 16 % self.highres_patch:
      raise ValueError(f"DemoConfig: highres_patch ({self.highres_patch}) must divide 16")
    _check_int("cache_interval", self.cache_interval, lo=1)
    _check_int("cache_order", self.cache_order, lo=0)
    if not isinstance(self.tour, bool):
      raise TypeError(f"DemoConfig: tour must be a bool, got {self.tour!r}")
    if not isinstance(self.guidance_ablation, bool):
      raise TypeError(
        f"DemoConfig: guidance_ablation must be a bool, got {self.guidance_ablation!r}"
      )
    _check_sequence("ag_cfg_steps", self.ag_cfg_steps)
    for i, n in enumerate(self.ag_cfg_steps):
      _check_int(f"ag_cfg_steps[{i}]", n, lo=1)
    for dim in ("dim", "weak_dim", "highres_dim"):
      if getattr(self, dim) % 2 or getattr(self, dim) % self.num_heads:
        raise ValueError(
          f"DemoConfig: {dim} ({getattr(self, dim)}) must be even and a multiple of num_heads "
          f"({self.num_heads})"
        )
    _check_names("rules", self.rules, demo_rules())
    _check_names("solvers", self.solvers, tuple(solvers.REGISTRY))
    _check_names("sweep_solver", (self.sweep_solver,), tuple(solvers.REGISTRY))
    self._check_rule_settings()
    evals = {
      (r, s): evals_per_step(r, **self.rule_kwargs.get(r, {})) * solvers.make(s).stages
      for r in self.rules
      for s in self.solvers
    }
    (rule, solver), need = max(evals.items(), key=lambda item: item[1])
    if self.nfe_budget < need:
      raise ValueError(
        f"DemoConfig: nfe_budget ({self.nfe_budget}) is smaller than the {need} network "
        f"evaluations per step of rule {rule!r} with solver {solver!r}"
      )

  def _check_rule_settings(self) -> None:
    """Every scale and hyperparameter the demo will sample with, built once by its rule's
    factory (:func:`check_rule`), so a bad one fails here, naming the field."""
    registered = tuple(guidance.REGISTRY)
    for field in ("scales", "rule_kwargs", "sweep_rules"):
      mapping = getattr(self, field)
      if not isinstance(mapping, Mapping):
        raise TypeError(f"DemoConfig: {field} must be a dict keyed by rule name, got {mapping!r}")
      _check_names(field, tuple(mapping), registered, empty_ok=True)
    for rule, kw in self.rule_kwargs.items():
      if not isinstance(kw, Mapping):
        raise TypeError(f"DemoConfig: rule_kwargs[{rule!r}] must be a dict, got {kw!r}")
      _check_built(f"rule_kwargs[{rule!r}]", rule, None, kw)
    for rule, scale in self.scales.items():
      _check_real(f"scales[{rule!r}]", scale)
      _check_built(f"scales[{rule!r}]", rule, scale, self.rule_kwargs.get(rule, {}))
    runs = lambda rule: rule in self.rules  # noqa: E731 - settings of rules not run are unused
    _check_numbers("sweep_scales", self.sweep_scales)
    for rule, offset in self.sweep_rules.items():
      _check_real(f"sweep_rules[{rule!r}]", offset)
      for i, w in enumerate(self.sweep_scales if runs(rule) else ()):
        field = f"sweep_scales[{i}] (w = {w:g}, {rule} scale w + {offset:g})"
        _check_built(field, rule, w + offset, self.rule_kwargs.get(rule, {}))
    studies = {
      "cfgpp_lambdas": ("cfgpp", lambda v: {"scale": v}),
      "adaptive_thresholds": ("adaptive", lambda v: {"threshold": v}),
      "classifier_scales": ("classifier", lambda v: {"scale": v}),
    }
    for field, (rule, setting) in studies.items():
      values = getattr(self, field)
      _check_numbers(field, values)
      for i, v in enumerate(values if runs(rule) else ()):
        kw = {"scale": self.scale_of(rule), **self.rule_kwargs.get(rule, {}), **setting(v)}
        _check_built(f"{field}[{i}]", rule, kw.pop("scale"), kw)

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
      flow_steps=20,
      classifier_steps=20,
      samples_per_class=2,
      inverse_digits=2,
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
      cache_steps=4,
      cache_interval=2,
      ag_cfg_steps=(1,),
      highres_steps=20,
      highres_dim=16,
      highres_depth=1,
      highres_nfe=4,
      jacobian_iters=4,
      student_steps=20,
      student_pool=16,
      chunk=10,
      checkpoint_every=10,
      xla_opt_level=0,
    )

  @classmethod
  def from_env(cls) -> DemoConfig:
    """:meth:`small` when ``JAXDIFF_DEMO_SMALL=1``, :meth:`full` when it is ``0`` or unset.

    Any other value is a ``ValueError`` naming the variable (``"true"`` silently meaning the
    full run (minutes, and a training cache of its own) would be a surprise).
    """
    value = os.environ.get("JAXDIFF_DEMO_SMALL", "")
    if value not in ("", "0", "1"):
      raise ValueError(
        f"JAXDIFF_DEMO_SMALL must be 1 (small demo) or 0/unset (full), got {value!r}"
      )
    return cls.small() if value == "1" else cls.full()

  @property
  def compiler_options(self) -> dict[str, Any]:
    return {"xla_backend_optimization_level": self.xla_opt_level}

  def scale_of(self, rule: str) -> float:
    """The demo's scale for ``rule`` (``"none"``: 0; unlisted: the registry's default)."""
    if rule == NO_GUIDANCE:
      return 0.0
    return float(self.scales.get(rule, guidance.REGISTRY[rule].default_scale))

  def steps_for(self, rule: str, solver: str) -> int:
    """Solver steps of ``rule`` with ``solver`` within the NFE budget (its stages count)."""
    return steps_for_budget(
      rule,
      self.nfe_budget,
      stages=solvers.make(solver).stages,
      **self.rule_kwargs.get(rule, {}),
    )

  def key_of(self, *fields: str) -> str:
    """A short hash of the named fields (the cache key of a trained model)."""
    blob = json.dumps({f: getattr(self, f) for f in fields}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]
