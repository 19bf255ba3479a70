"""jaxdiff.guidance: guidance rules (one module each) and the name -> rule registry.

Guidance rules are immutable pytree objects (subclasses of :class:`jaxdiff.GuidanceRule`,
one class per method, e.g. :class:`CFG`) built by factories (:func:`cfg`); pass one to
``jaxdiff.sample(..., guidance=rule)``. :data:`REGISTRY` maps a name to a
:class:`RuleSpec` (label, builder, default scale, evaluations per step); :func:`make`
builds a rule by name. The demo, the CLI and the bench read only the registry.

Every rule acts on *data predictions* (denoised estimates ``x0``). The rules are affine
in the predictions they combine unless stated otherwise, so the same weights applied to
noise predictions ``eps = (x - alpha x0) / sigma`` give the same update: they are exact
transcriptions of the papers, which write them on ``eps`` (CFG, PAG, CFG++, RCFG) or
directly on the denoised prediction (APG, autoguidance, EluCD). The exceptions (APG's
norms and projections, guidance rescale's standard deviations, Adaptive Guidance's
cosine similarity) state in their docstrings which quantity they act on.

Conventions shared by all rules:

* ``denoise(x, t, cond) -> x0_hat``, batch first, ``t`` of shape ``(B,)``.
* Class labels are integers; the unconditional ("null") label is ``-1`` unless a rule
  gets ``null_cond`` (an array broadcast over the batch, or a callable ``cond -> null``).
* The main strength of every rule is ``scale``, in the rule's own convention.
* The evaluations a step needs are concatenated along the batch axis into one network
  call wherever the inputs allow it; ``nfe`` counts evaluations *per sample*.

A new rule is one module here, its test, and one line in :data:`REGISTRY`.
"""

import warnings
from types import MappingProxyType

from jaxdiff._types import Conditional, FunctionRule, GuidanceRule
from jaxdiff.guidance._adaptive import (
  AdaptiveGuidance,
  AdaptiveState,
  LinearAG,
  LinearAGState,
  adaptive,
  fit_linear_ag,
  linear_ag,
)
from jaxdiff.guidance._agd import AGD, agd
from jaxdiff.guidance._apg import APG, APGState, apg
from jaxdiff.guidance._autoguidance import Autoguidance, autoguidance
from jaxdiff.guidance._cfg import CFG, cfg
from jaxdiff.guidance._cfgpp import CFGPP, cfgpp
from jaxdiff.guidance._classifier import ClassifierGuidance, classifier, smooth_relu
from jaxdiff.guidance._diffusehigh import DiffuseHigh, diffusehigh
from jaxdiff.guidance._dps import DPS, dps
from jaxdiff.guidance._flowchef import FlowChef, flowchef
from jaxdiff.guidance._functions import conditional, from_functions
from jaxdiff.guidance._gfcg import GFCG, gfcg
from jaxdiff.guidance._minority import MinorityGuidance, minority, minority_levels, minority_score
from jaxdiff.guidance._oneactor import OneActor, oneactor
from jaxdiff.guidance._pag import PAG, pag
from jaxdiff.guidance._rcfg import RCFG, RCFGState, rcfg
from jaxdiff.guidance._registry import RESOURCES, RuleSpec
from jaxdiff.guidance._registry import make as _make
from jaxdiff.guidance._stsl import STSL, stsl

# One line per rule. ``build(scale, **resources, **hyperparameters)``.
REGISTRY = MappingProxyType(
  {
    "cfg": RuleSpec("CFG", cfg, 3.0, 2),
    "apg": RuleSpec("APG", apg, 3.0, 2),
    "cfgpp": RuleSpec("CFG++", cfgpp, 0.6, 2),
    "adaptive": RuleSpec(
      "Adaptive Guidance", lambda s, threshold=0.99, **kw: adaptive(s, threshold, **kw), 3.0, 2
    ),
    "pag": RuleSpec("PAG", pag, 3.0, lambda cfg_scale=1.0, **_: 2 if cfg_scale == 1.0 else 3),
    "autoguidance": RuleSpec(
      "Autoguidance",
      lambda s, weak_denoise, **kw: autoguidance(weak_denoise, s, **kw),
      2.0,
      2,
      requires=("weak_denoise",),
    ),
    # EluCD's official DDPM script uses s = 1 with a ResNet on 128x128 ImageNet; the push
    # s sigma^2/alpha grad log p(y | x0_hat) scales with the classifier's input gradient,
    # and on the 8x8 digits (|grad| ~ 10 where x0_hat is still the mean digit, sigma^2/alpha
    # up to 119) s = 1 moves x0_hat by ~10^3 against |x0_hat| ~ 5: FD 124 vs the
    # unconditional model's 31 (demo, DPM-Solver++(2M)). 0.1 is the digits' best FD
    # (15.6, with the official temperatures, see docs/methods/guidance.md).
    "classifier": RuleSpec(
      "Classifier (EluCD)",
      lambda s, classifier_fn, num_classes, **kw: classifier(classifier_fn, num_classes, s, **kw),
      0.1,
      1,
      requires=("classifier_fn", "num_classes"),
    ),
    # StreamDiffusion's examples run its "initialize" (onetime) RCFG at guidance_scale 1.2:
    # the fixed negative is the step-0 prediction, so larger scales push every later step
    # away from it and saturate (digits demo at 3.0: saturation 14-43 vs CFG's 0.02).
    "rcfg": RuleSpec(
      "RCFG",
      lambda s, variant="onetime", **kw: rcfg(s, variant=variant, **kw),
      1.2,
      lambda variant="onetime", **_: 1 if variant == "self" else 2,
    ),
    # OneActor's official inference uses eta_1 = 7.5 on SDXL; 3.0 is CFG's digits default
    # (without target_cond/aux_cond the rule is CFG, the demo's resources hold no clusters).
    "oneactor": RuleSpec(
      "OneActor",
      oneactor,
      3.0,
      lambda aux_cond=None, aux_scale=0.0, **_: 2 if aux_cond is None or aux_scale == 0 else 3,
    ),
    # AGD needs a guidance-distilled denoiser (jaxdiff.distill.GuidanceAdapter), which takes
    # the scale as the keyword guidance_scale; 3.0 is CFG's default (the paper trains w in
    # [1, 6]).
    "agd": RuleSpec("AGD", agd, 3.0, 1, keyword="guidance_scale"),
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
    ['adaptive', 'agd', 'apg']
  """
  return _make(REGISTRY, name, scale, **kwargs)


def __getattr__(name):
  # Deprecated for one release: SelfAttention is a network layer (needs flax), so it lives
  # in jaxdiff.models; importing it lazily keeps `import jaxdiff` free of flax.
  if name == "SelfAttention":
    warnings.warn(
      "jaxdiff.guidance.SelfAttention is deprecated; use jaxdiff.models.SelfAttention "
      "(the old location will be removed in the next release)",
      DeprecationWarning,
      stacklevel=2,
    )
    from jaxdiff.models._attention import SelfAttention

    return SelfAttention
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
  "GuidanceRule",
  "AGD",
  "CFG",
  "APG",
  "CFGPP",
  "AdaptiveGuidance",
  "LinearAG",
  "PAG",
  "Autoguidance",
  "ClassifierGuidance",
  "RCFG",
  "GFCG",
  "DPS",
  "STSL",
  "FlowChef",
  "MinorityGuidance",
  "DiffuseHigh",
  "OneActor",
  "Conditional",
  "FunctionRule",
  "conditional",
  "from_functions",
  "REGISTRY",
  "RESOURCES",
  "RuleSpec",
  "make",
  "APGState",
  "AdaptiveState",
  "LinearAGState",
  "RCFGState",
  "adaptive",
  "agd",
  "apg",
  "autoguidance",
  "cfg",
  "cfgpp",
  "classifier",
  "diffusehigh",
  "dps",
  "flowchef",
  "fit_linear_ag",
  "gfcg",
  "linear_ag",
  "minority",
  "minority_levels",
  "minority_score",
  "oneactor",
  "pag",
  "rcfg",
  "smooth_relu",
  "stsl",
]
