"""Classifier-free guidance, with guidance rescale."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff._module import module, setfield, static
from jaxdiff._types import GuidanceRule, Prediction
from jaxdiff._validation import static_equal
from jaxdiff.guidance._common import batch_t, cfg_combine, evaluate, hypers, null_fn, poison

Array = jax.Array


@module
class CFG(GuidanceRule):
  """Classifier-free guidance, optionally with guidance rescale; built by :func:`cfg`.

  ``scale`` and ``rescale`` are leaves (a new value does not recompile ``sample``);
  ``use_rescale`` (whether ``rescale`` was given non-zero) is static.

  Example:
    >>> from jaxdiff import guidance
    >>> rule = guidance.cfg(3.0)
    >>> isinstance(rule, guidance.CFG), rule.calls
    (True, (2,))
  """

  scale: Any
  rescale: Any = 0.0
  null_cond: Any = -1
  use_rescale: bool = static(False)
  traced: tuple = static(())

  calls = (2,)

  def __post_init__(self):
    setfield(self, "traced", hypers("cfg", self, scale={}, rescale=dict(lo=0.0, hi=1.0)))
    setfield(self, "use_rescale", not static_equal(self.rescale, 0.0))
    null_fn(self.null_cond, "cfg")

  def guide(self, net, x, cond, ctx, state):
    null = null_fn(self.null_cond, "cfg")
    (x_c, x_u), net = evaluate(net, x, batch_t(ctx, x), [cond, null(cond)])
    x0 = cfg_combine(x_c, x_u, self.scale)
    if self.use_rescale:
      x0 = _rescale(x0, x_c, self.rescale)
    return Prediction.of(poison(self, x0, self.traced)), state, net


def cfg(scale, *, rescale=0.0, null_cond=-1) -> CFG:
  r"""Classifier-free guidance, optionally with guidance rescale.

  .. math::

    \hat x_{\text{cfg}} = \hat x_u + w\,(\hat x_c - \hat x_u), \qquad
    \hat x = \phi\,\hat x_{\text{cfg}}\,\frac{\operatorname{std}(\hat x_c)}
      {\operatorname{std}(\hat x_{\text{cfg}})} + (1-\phi)\,\hat x_{\text{cfg}}

  with ``x_c = denoise(x, t, cond)`` and ``x_u = denoise(x, t, null)`` evaluated in one
  batched call (``nfe = 2``), standard deviations per sample over all non-batch axes.

  **Scale conventions.** Here ``w = scale`` multiplies the difference from the
  unconditional prediction (diffusers' ``guidance_scale``, Lin et al.): ``w = 0`` is the
  unconditional model, ``w = 1`` the conditional model, ``w > 1`` guidance. Ho & Salimans
  (2022) write :math:`(1 + w')\,\hat\epsilon_c - w'\,\hat\epsilon_u`, i.e. ``w = 1 + w'``
  (``w' = 0`` is the conditional model, ``w' = -1`` the unconditional one). The
  combination is affine, so applying it to ``x0`` or to ``eps`` gives the same step.

  The rescale (Lin et al., Sec. 3.4, Eqs. 15-16) acts here on the denoised prediction
  (the paper's models predict ``v``; std-matching of the prediction is the same idea on
  the quantity every solver here consumes). A zero ``std(x_cfg)`` leaves it unscaled.

  Args:
    scale: guidance scale ``w`` (see conventions above), finite; float or traced scalar.
    rescale: ``phi`` in ``[0, 1]``; 0 disables the rescale (Lin et al. use 0.7).
    null_cond: unconditional label (default ``-1`` broadcast over the batch), or a
      callable ``cond -> null_cond`` for structured conditions.

  Traced hyperparameters are not checked; one that is NaN or out of range poisons the output
  (NaN), see :mod:`jaxdiff.guidance._common`.

  Returns:
    A stateless :class:`CFG` rule (``nfe = 2``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, StepContext
    >>> den = lambda x, t, c: x * (1.0 + (c >= 0)[:, None])
    >>> rule = guidance.cfg(3.0)
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> pred, _, nfe = rule.apply(den, jnp.ones((2, 3)), jnp.array([0, 1]), ctx, ())
    >>> float(pred.x0[0, 0]), int(nfe)
    (4.0, 2)

  References:
    Ho & Salimans, "Classifier-Free Diffusion Guidance", arXiv:2207.12598 (Eq. 6).
    Lin, Liu, Li & Yang, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    arXiv:2305.08891 (Sec. 3.4, Eqs. 15-16).
  """
  return CFG(scale, rescale, null_cond)


def _rescale(x_cfg: Array, x_c: Array, phi) -> Array:
  axes = tuple(range(1, x_cfg.ndim))
  std_c = jnp.std(x_c, axis=axes, keepdims=True)
  std_cfg = jnp.std(x_cfg, axis=axes, keepdims=True)
  ratio = jnp.where(std_cfg > 0, std_c / jnp.where(std_cfg > 0, std_cfg, 1), 1)
  phi = jnp.asarray(phi, x_cfg.dtype)
  return x_cfg * (phi * ratio + (1 - phi))
