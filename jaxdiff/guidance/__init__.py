"""jaxdiff.guidance: guidance rules (one module each) and the name -> rule registry.

Guidance rules are :class:`jaxdiff.GuidanceRule` factories; pass one to
``jaxdiff.sample(..., guidance=rule)``. :data:`REGISTRY` maps a name to a
:class:`RuleSpec` (label, builder, default scale, evaluations per step); :func:`make`
builds a rule by name. The demo, the CLI and the bench read only the registry.
"""

from types import MappingProxyType

from jaxdiff._attention import SelfAttention
from jaxdiff._guidance import (
  AdaptiveState,
  APGState,
  LinearAGState,
  RCFGState,
  adaptive,
  apg,
  autoguidance,
  cfg,
  cfgpp,
  classifier,
  fit_linear_ag,
  gfcg,
  linear_ag,
  pag,
  rcfg,
  smooth_relu,
)
from jaxdiff._types import GuidanceRule
from jaxdiff.guidance._registry import RESOURCES, RuleSpec
from jaxdiff.guidance._registry import make as _make

# One line per rule. ``build(scale, **resources, **hyperparameters)``.
REGISTRY = MappingProxyType(
  {
    "cfg": RuleSpec("CFG", lambda s, **kw: cfg(s, **kw), 3.0, 2, sweep=(1.0, 2.0, 3.0, 5.0, 8.0)),
    "apg": RuleSpec("APG", lambda s, **kw: apg(s, **kw), 3.0, 2, sweep=(1.0, 2.0, 3.0, 5.0, 8.0)),
    "cfgpp": RuleSpec(
      "CFG++", lambda s, **kw: cfgpp(s, **kw), 0.6, 2, sweep=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    ),
    "adaptive": RuleSpec(
      "Adaptive Guidance", lambda s, threshold=0.99, **kw: adaptive(s, threshold, **kw), 3.0, 2
    ),
    "pag": RuleSpec("PAG", lambda s, **kw: pag(s, **kw), 3.0, 2),
    "autoguidance": RuleSpec(
      "Autoguidance",
      lambda s, weak_denoise, **kw: autoguidance(weak_denoise, s, **kw),
      2.0,
      2,
      requires=("weak_denoise",),
    ),
    "classifier": RuleSpec(
      "Classifier (EluCD)",
      lambda s, classifier_fn, num_classes, **kw: classifier(classifier_fn, num_classes, s, **kw),
      1.0,
      1,
      requires=("classifier_fn", "num_classes"),
    ),
    "rcfg": RuleSpec("RCFG", lambda s, **kw: rcfg(s, **kw), 3.0, 2),
  }
)


def make(name: str, scale=None, **kwargs) -> GuidanceRule:
  """Builds the registered rule ``name`` (see :data:`REGISTRY`).

  ``scale`` is the rule's main strength in its own convention (default: the registry's);
  ``kwargs`` are resources (``weak_denoise``, ``classifier_fn``, ``num_classes``; ones a
  rule does not use are ignored) and the factory's own keyword hyperparameters.

  Example:
    >>> from jaxdiff import guidance
    >>> rule = guidance.make("apg", 5.0, momentum=-0.5)
    >>> sorted(guidance.REGISTRY)[:3]
    ['adaptive', 'apg', 'autoguidance']
  """
  return _make(REGISTRY, name, scale, **kwargs)


__all__ = [
  "REGISTRY",
  "RESOURCES",
  "RuleSpec",
  "make",
  "APGState",
  "AdaptiveState",
  "LinearAGState",
  "RCFGState",
  "SelfAttention",
  "adaptive",
  "apg",
  "autoguidance",
  "cfg",
  "cfgpp",
  "classifier",
  "fit_linear_ag",
  "gfcg",
  "linear_ag",
  "pag",
  "rcfg",
  "smooth_relu",
]
