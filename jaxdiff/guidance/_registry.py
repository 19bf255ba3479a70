"""Name -> guidance rule registry: the one table the demo, the CLI and the bench read.

A new rule is its own module, its test and one :class:`RuleSpec` line in
``jaxdiff/guidance/__init__.py``; every consumer (``jaxdiff demo``, ``jaxdiff sample
--guidance NAME``, ``bench/``) picks it up from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from jaxdiff._types import GuidanceRule

# Resources a rule may need besides its hyperparameters. The demo and CLI provide these.
RESOURCES = ("weak_denoise", "classifier_fn", "num_classes")


@dataclasses.dataclass(frozen=True)
class RuleSpec:
  """How to build one guidance rule by name.

  Attributes:
    label: human-readable name for tables and plots.
    build: ``build(scale, **resources_and_hyperparameters) -> GuidanceRule``; ``scale`` is
      the rule's main strength in its own convention (see the factory's docstring).
    default_scale: a sensible strength (the paper's recommendation where it gives one).
    evals_per_step: the most network evaluations the rule makes per sample and step
      (what an NFE budget is divided by; a rule that may save evaluations, such as
      Adaptive Guidance, still declares its maximum). An int, or ``options -> int`` when
      the count depends on the builder's options (PAG with a CFG term makes 3); read it
      through :meth:`evals`.
    requires: the entries of :data:`RESOURCES` that ``build`` needs.
    keyword: a keyword argument the rule passes to the denoiser that a plain denoiser
      does not take (AGD's ``guidance_scale``: it needs a guidance-distilled network);
      ``None`` for rules that run on any denoiser. The demo leaves such rules out.
  """

  label: str
  build: Callable[..., GuidanceRule]
  default_scale: float
  evals_per_step: int | Callable[..., int]
  requires: tuple[str, ...] = ()
  keyword: str | None = None

  def evals(self, **options: Any) -> int:
    """Network evaluations per sample and step when built with ``options``."""
    n = self.evals_per_step
    return n(**options) if callable(n) else n

  def __post_init__(self):
    unknown = set(self.requires) - set(RESOURCES)
    if unknown:
      raise ValueError(f"requires: unknown resources {sorted(unknown)}; known: {RESOURCES}")


def make(registry: Mapping[str, RuleSpec], name: str, scale=None, **kwargs: Any) -> GuidanceRule:
  """Builds the rule ``name`` at ``scale`` (its default when ``None``) from ``registry``."""
  if name not in registry:
    raise ValueError(f"unknown guidance rule {name!r}; known: {', '.join(sorted(registry))}")
  spec = registry[name]
  missing = [r for r in spec.requires if kwargs.get(r) is None]
  if missing:
    raise ValueError(f"guidance rule {name!r} needs {', '.join(missing)}")
  resources = {r: kwargs.pop(r) for r in spec.requires}
  for r in RESOURCES:
    kwargs.pop(r, None)  # resources a rule does not use are ignored, so callers pass all
  return spec.build(spec.default_scale if scale is None else scale, **resources, **kwargs)
