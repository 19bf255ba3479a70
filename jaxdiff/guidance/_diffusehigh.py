"""DiffuseHigh's structure guidance: the low wavelet band of x0_hat taken from a reference."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff._module import module, setfield, static
from jaxdiff._types import Conditional, GuidanceRule, Prediction
from jaxdiff._validation import check_scalar
from jaxdiff._wavelets import _check_image, haar_dwt, haar_idwt

Array = jax.Array


def _check_rule(rule, where: str) -> None:
  if not isinstance(rule, GuidanceRule):
    raise TypeError(
      f"{where}: rule must be a guidance rule (jaxdiff.guidance.cfg(...), conditional(), ...), "
      f"got {type(rule).__name__}"
    )


def replace_low(x: Array, low: Array, levels: int) -> Array:
  """``x`` with the low band of its ``levels``-level Haar transform replaced by ``low``."""
  _, highs = haar_dwt(x, levels=levels)
  return haar_idwt((low.astype(x.dtype), highs))


@module
class DiffuseHigh(GuidanceRule):
  """DiffuseHigh's structure guidance around another rule; built by :func:`diffusehigh`.

  ``reference`` is a leaf (a new reference image does not recompile ``sample``);
  ``guided_steps`` and ``levels`` are static. The wrapped ``rule`` makes the network
  calls, so ``calls``, ``num_classes`` and the state are its own.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance
    >>> rule = guidance.diffusehigh(jnp.zeros((1, 8, 8)), rule=guidance.cfg(3.0))
    >>> isinstance(rule, guidance.DiffuseHigh), rule.calls
    (True, (2,))
  """

  reference: Any
  rule: Any = None  # the plain conditional call when None (set in __post_init__)
  guided_steps: int = static(5)
  levels: int = static(1)

  def __post_init__(self):
    if self.rule is None:
      setfield(self, "rule", Conditional())
    _check_rule(self.rule, "diffusehigh")
    ref = _check_image(self.reference, "diffusehigh", "reference")
    setfield(self, "reference", ref)
    setfield(
      self,
      "guided_steps",
      check_scalar("diffusehigh: guided_steps", self.guided_steps, lo=0, integer=True, static=True),
    )
    levels = check_scalar("diffusehigh: levels", self.levels, lo=1, integer=True, static=True)
    setfield(self, "levels", levels)
    for axis, label in ((1, "H"), (2, "W")):
      if ref.shape[axis] % 2**levels:
        raise ValueError(
          f"diffusehigh: reference's spatial size {label} = {ref.shape[axis]} must be divisible "
          f"by 2**levels = {2**levels}; got shape {ref.shape}"
        )

  @property
  def calls(self):
    return self.rule.calls

  @property
  def num_classes(self):
    return getattr(self.rule, "num_classes", None)

  def check_grid(self, grid) -> None:
    self.rule.check_grid(grid)  # the wrapped rule's own grid check (e.g. LinearAG's steps)

  def init(self, x_T, cond):
    return self.rule.init(x_T, cond)

  def _reference_low(self, x: Array) -> Array:
    ref = self.reference
    if ref.shape != x.shape and ref.shape != (1, *x.shape[1:]):
      raise ValueError(
        f"diffusehigh: reference must have the sample's shape {x.shape} (or (1, ...) for one "
        f"image shared by the batch), got {ref.shape}"
      )
    low = haar_dwt(ref.astype(x.dtype), levels=self.levels).low
    return jnp.broadcast_to(low, (x.shape[0], *low.shape[1:]))

  def guide(self, net, x, cond, ctx, state):
    low = self._reference_low(x)
    pred, state, net = self.rule.guide(net, x, cond, ctx, state)
    if self.guided_steps == 0:  # the wrapped rule, bit for bit (no select in the program)
      return pred, state, net
    active = jnp.asarray(ctx.step) < self.guided_steps
    fix = lambda x0: jnp.where(active, replace_low(x0, low, self.levels), x0)  # noqa: E731
    return Prediction(fix(pred.x0), fix(pred.x0_renoise)), state, net


def diffusehigh(
  reference, *, rule: GuidanceRule | None = None, guided_steps: int = 5, levels: int = 1
):
  r"""DiffuseHigh's structure guidance: the low-frequency band of :math:`\hat x_0` from a
  reference image during the first steps.

  With :math:`W` the ``levels``-level 2-D Haar transform (:func:`jaxdiff.wavelets.haar_dwt`),
  :math:`\mathrm{LL}` its low band and :math:`\mathrm{H}` its detail bands, the
  prediction of the wrapped ``rule`` (CFG, the plain conditional call, ...) becomes, at the
  solver steps :math:`i < ` ``guided_steps``,

  .. math::
    \hat x_0 \leftarrow W^{-1}\big(\mathrm{LL}(x_{\text{ref}}),\ \mathrm{H}(\hat x_0)\big),

  the structure (low band) of the reference and the details (high bands) of the model;
  later steps keep the rule's prediction. Both predictions of a step (``x0`` and
  ``x0_renoise``) get the reference's low band, so an Euler/DDIM step moves toward the
  corrected :math:`\hat x_0` and re-noises with the noise it implies: the official SDXL
  pipeline's EDM-Euler step, whose derivative is :math:`(x - \hat x_0)/\sigma`.
  :func:`jaxdiff.progressive_sample` builds the reference (the previous scale's sample,
  upsampled and sharpened) and the re-noised start.

  What differs from the official code: it uses the Daubechies-4 wavelet (``pytorch_wavelets``
  ``db4``, symmetric padding, one level) on decoded latents; here the Haar wavelet acts on
  the data the network denoises. Defaults are the official ones: one level, the first 5 of
  the re-noised steps.

  Not in :data:`jaxdiff.guidance.REGISTRY`: a registry rule must be buildable from the
  demo's resources alone, and this one needs a reference image.

  Args:
    reference: the structure reference :math:`x_{\text{ref}}`, a floating array with the
      sample's shape ``(B, H, W, ...)`` or ``(1, H, W, ...)`` (one image for the whole
      batch); ``H`` and ``W`` divisible by ``2**levels``. A leaf: a new reference does not
      recompile :func:`jaxdiff.sample`.
    rule: the guidance rule whose prediction is corrected (default: the plain conditional
      call); it makes every network call (``calls`` and the evaluation count are its own).
    guided_steps: how many first solver steps are corrected (a static int ``>= 0``; 0 is
      the wrapped rule, bit for bit). The official code uses 5 of 15 re-noised steps.
    levels: Haar levels :math:`L \ge 1` of the split (static): the low band keeps
      :math:`2^L \times 2^L` block means.

  Returns:
    A :class:`DiffuseHigh` rule with the state of ``rule``.

  Raises:
    TypeError: ``reference`` is not a floating array, ``rule`` is not a guidance rule,
      ``guided_steps``/``levels`` are not integers (or are traced).
    ValueError: ``reference`` has fewer than 3 axes or spatial sizes not divisible by
      ``2**levels``; at trace time, a reference whose shape is not the sample's.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, StepContext
    >>> from jaxdiff.wavelets import haar_dwt
    >>> ref = jnp.arange(16.0).reshape(1, 4, 4)
    >>> rule = guidance.diffusehigh(ref)
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> pred, _, nfe = rule.apply(lambda x, t, c: -x, jnp.ones((1, 4, 4)), None, ctx, ())
    >>> bool(jnp.allclose(haar_dwt(pred.x0).low, haar_dwt(ref).low)), int(nfe)
    (True, 1)

  References:
    Kim et al., "DiffuseHigh: Training-free Progressive High-Resolution
    Image Synthesis through Structure Guidance", arXiv:2406.18459 (structure guidance; the
    official ``pipeline_diffusehigh_sdxl.py``).
  """
  return DiffuseHigh(reference, rule, guided_steps, levels)
