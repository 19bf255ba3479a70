"""Gradient-free classifier guidance (GFCG)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxdiff._module import module, setfield, static
from jaxdiff._types import Denoiser, GuidanceRule, Prediction
from jaxdiff._validation import check_choice, renamed_kwargs, static_equal
from jaxdiff._validation import poison as poison_rows
from jaxdiff.guidance._common import (
  batch_t,
  bcast,
  check_classifier,
  check_num_classes,
  compute_dtype,
  evaluate,
  hypers,
  labels,
  logits,
  null_fn,
  poison,
  weak_output,
)

Array = jax.Array

# The adaptive scale's form (see gfcg's docstring): only the paper's abstract could be read,
# so both are assumptions about its Sec. 3.
GFCG_VARIANTS = ("ratio", "complement")


@module
class GFCG(GuidanceRule):
  """Gradient-free classifier guidance; built by :func:`gfcg`.

  ``scale`` and ``cfg_scale`` are leaves; ``classifier_fn``, ``num_classes``,
  ``weak_denoise``, ``variant`` and ``use_w`` (``cfg_scale`` given other than 1) are
  static. The network calls: the conditional one (batched with the null label when the
  ``w`` term is CFG), then the reference class: ``calls = (2, 1)`` or ``(1, 1)``; the weak
  model's evaluation is counted in ``nfe`` but is not a network call.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance
    >>> clf = lambda z: jnp.stack([-z[:, 0], z[:, 0], 0 * z[:, 0]], axis=-1)
    >>> guidance.gfcg(clf, 3, 2.0).calls, guidance.gfcg(clf, 3, 2.0, cfg_scale=3.0).calls
    ((1, 1), (2, 1))
  """

  classifier_fn: Callable[[Array], Array] = static()
  num_classes: int = static()
  scale: Any
  cfg_scale: Any = 1.0
  weak_denoise: Denoiser | None = static(None)
  variant: str = static("ratio")
  null_cond: Any = -1
  use_w: bool = static(False)
  traced: tuple = static(())

  def __post_init__(self):
    check_classifier(self.classifier_fn, "gfcg")
    setfield(self, "num_classes", check_num_classes("gfcg: num_classes", self.num_classes))
    setfield(self, "traced", hypers("gfcg", self, scale=dict(lo=0.0), cfg_scale={}))
    weak = self.weak_denoise
    if weak is not None and not callable(weak):
      raise TypeError(
        f"gfcg: weak_denoise must be a denoiser callable or None, got {type(weak).__name__}."
      )
    check_choice("gfcg: variant", self.variant, GFCG_VARIANTS)
    null_fn(self.null_cond, "gfcg")
    setfield(self, "use_w", not static_equal(self.cfg_scale, 1.0))

  @property
  def _with_null(self) -> bool:
    return self.use_w and self.weak_denoise is None

  @property
  def calls(self) -> tuple[int, ...]:
    return (2, 1) if self._with_null else (1, 1)

  def guide(self, net, x, cond, ctx, state):
    num_classes = self.num_classes
    y, active, valid = labels(cond, num_classes, "gfcg")
    b = x.shape[0]
    t = batch_t(ctx, x)
    with_null = self._with_null
    null = null_fn(self.null_cond, "gfcg")
    outs, net = evaluate(net, x, t, [cond] + ([null(cond)] if with_null else []))
    x_c = outs[0]
    f = lax.stop_gradient(logits(self.classifier_fn, (x_c,), b, num_classes, "gfcg"))
    p = jax.nn.softmax(f.astype(compute_dtype(f)), axis=-1)
    p_y = jnp.take_along_axis(p, y[:, None], axis=1)[:, 0]
    others = jnp.where(jax.nn.one_hot(y, num_classes, dtype=jnp.bool_), -jnp.inf, p)
    # A null (or invalid) target has no reference class: it is evaluated on the null label
    # and gets scale 0, so it never borrows another class's direction.
    c_ref = jnp.where(active, jnp.argmax(others, axis=-1).astype(y.dtype), -1)
    p_r = jnp.max(others, axis=-1)
    if self.variant == "ratio":
      confusion = p_r / jnp.maximum(p_y + p_r, jnp.finfo(p.dtype).tiny)
    else:
      confusion = 1 - p_y
    s_t = jnp.asarray(self.scale, p.dtype) * confusion
    x_r, net = net(x, t, c_ref)
    x0 = x_c + jnp.where(bcast(active, x_c), bcast(s_t.astype(x_c.dtype), x_c) * (x_c - x_r), 0)
    if self.use_w:
      if with_null:
        x_g = outs[1]
      else:
        x_g = weak_output(self.weak_denoise, x, t, cond, x_c, "gfcg")
        net = net.count(1)
      x0 = x0 + (jnp.asarray(self.cfg_scale, x_c.dtype) - 1) * (x_c - x_g)
    return Prediction.of(poison_rows(poison(self, x0, self.traced), valid)), state, net


@renamed_kwargs(ref_scale="scale")
def gfcg(
  classifier_fn: Callable[[Array], Array],
  num_classes: int,
  scale,
  *,
  cfg_scale=1.0,
  weak_denoise: Denoiser | None = None,
  variant: str = "ratio",
  null_cond=-1,
) -> GFCG:
  r"""Gradient-free classifier guidance (GFCG), optionally with CFG or autoguidance.

  .. math::

    p = \operatorname{softmax} C(\hat x_c),\quad
    c_r = \arg\max_{k \ne y} p_k,\quad
    s_t = s_{\max}\,\frac{p_{c_r}}{p_y + p_{c_r}}\ (\texttt{"ratio"})\quad\text{or}\quad
    s_t = s_{\max}\,(1 - p_y)\ (\texttt{"complement"}),

    \hat x = \hat x_c + (w - 1)(\hat x_c - \hat x_g) + s_t\,(\hat x_c - \hat x_{c_r})

  The classifier ``C`` runs in inference mode (no gradients) on the conditional denoised
  prediction ``x_c = D(x, t, y)``; the reference class ``c_r`` is the most probable class
  other than the target and the scale ``s_t`` grows with the confusion between them (0
  when the classifier is sure of ``y``, ``s_max/2`` when tied), so both are re-chosen at
  every step (time-adaptive). ``x_g`` is the CFG reference ``D(x, t, null)`` or, with
  ``weak_denoise``, the autoguidance reference ``D_weak(x, t, y)`` (GFCG + ATG, Sec. 4).
  Network calls: ``[y (, null)]`` batched, then the classifier, then ``[c_r]`` (and the
  weak model): ``nfe = 2`` (+1 with CFG/ATG).

  What is assumed: the paper's method section and code could not be reached (only its
  abstract: "a time-adaptive reference class label and corresponding guidance scale are
  determined at each time step", the scale depending on "how confused" the model is). The
  reference class (the most probable other class, from the classifier on ``x_c``) and the two
  scale forms are our reading, switchable by ``variant``: ``"ratio"`` (default) measures the
  confusion between the target and the reference only, ``"complement"`` the probability
  mass off the target. Both are 0 when the classifier is sure of ``y``; with two classes
  they coincide.

  Args:
    classifier_fn: ``(x0_hat) -> logits`` of shape ``(B, num_classes)``.
    num_classes: number of classes ``K >= 2``.
    scale: ``s_max >= 0``, finite; ``ref_scale=`` is its deprecated spelling.
    cfg_scale: ``w`` (:func:`cfg` convention), finite, of the CFG/autoguidance term; 1
      disables it.
    weak_denoise: optional weaker denoiser: the ``w`` term becomes autoguidance.
    variant: the adaptive scale's form, ``"ratio"`` or ``"complement"`` (see above).
    null_cond: null label for the CFG term.

  Labels (``cond``): integers in ``[0, num_classes)`` or the null label ``-1``. A null
  label gets no classifier term: no reference class, scale 0 (that sample keeps its
  ``x_c``, the unconditional prediction, plus the CFG/autoguidance term). Concrete labels
  out of range raise ``ValueError`` naming ``cond``; traced ones (under ``jit``, e.g. inside
  :func:`jaxdiff.sample`) cannot raise, so the samples that carry them are poisoned
  with NaN, never guided toward another class.
  Traced hyperparameters are not checked; one that is NaN or out of range poisons the output
  (NaN), see :mod:`jaxdiff.guidance._common`.

  Returns:
    A stateless :class:`GFCG` rule.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, StepContext
    >>> den = lambda x, t, c: x + c[:, None].astype(x.dtype)
    >>> clf = lambda z: jnp.stack([-z[:, 0], z[:, 0], 0 * z[:, 0]], axis=-1)
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> rule = guidance.gfcg(clf, 3, 2.0)
    >>> pred, _, nfe = rule.apply(den, jnp.zeros((1, 1)), jnp.array([1]), ctx, ())
    >>> int(nfe)
    2

  References:
    Shenoy, Pan, Balakrishnan, Cheng, Jeon, Yang & Kim, "Gradient-Free Classifier Guidance
    for Diffusion Model Sampling", arXiv:2411.15393.
  """
  return GFCG(classifier_fn, num_classes, scale, cfg_scale, weak_denoise, variant, null_cond)
