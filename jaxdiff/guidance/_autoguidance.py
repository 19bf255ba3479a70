"""Autoguidance: guiding a model with a bad version of itself."""

from __future__ import annotations

from typing import Any

from jaxdiff._module import module, setfield, static
from jaxdiff._types import Denoiser, GuidanceRule, Prediction
from jaxdiff.guidance._common import (
  batch_t,
  cfg_combine,
  hypers,
  poison,
  weak_output,
)


@module
class Autoguidance(GuidanceRule):
  """Autoguidance; built by :func:`autoguidance`.

  ``scale`` is a leaf; ``weak_denoise`` is static (part of the compilation key, as a
  denoiser closure is). The network makes one call per step (``calls = (1,)``); the weak
  model's evaluation is counted too (``nfe = 2``).

  Example:
    >>> from jaxdiff import guidance
    >>> rule = guidance.autoguidance(lambda x, t, c: 0.5 * x, 2.0)
    >>> isinstance(rule, guidance.Autoguidance), rule.calls
    (True, (1,))
  """

  weak_denoise: Denoiser = static()
  scale: Any
  traced: tuple = static(())

  calls = (1,)

  def __post_init__(self):
    if not callable(self.weak_denoise):
      raise TypeError(
        "autoguidance: weak_denoise must be a denoiser callable, got "
        f"{type(self.weak_denoise).__name__}."
      )
    setfield(self, "traced", hypers("autoguidance", self, scale={}))

  def guide(self, net, x, cond, ctx, state):
    t = batch_t(ctx, x)
    x_1, net = net(x, t, cond)
    x_0 = weak_output(self.weak_denoise, x, t, cond, x_1, "autoguidance")
    x0 = poison(self, cfg_combine(x_1, x_0, self.scale), self.traced)
    return Prediction.of(x0), state, net.count(1)


def autoguidance(weak_denoise: Denoiser, scale) -> Autoguidance:
  r"""Autoguidance: guide the model away from a weaker version of itself.

  .. math::

    \hat x = \hat x_1 + (w - 1)\,(\hat x_1 - \hat x_0)
           = w\,D_1(x; \sigma, c) + (1 - w)\,D_0(x; \sigma, c)

  ``D_1`` is the main denoiser and ``D_0 = weak_denoise`` a smaller / less-trained model
  with the same conditioning (both conditional). The two networks differ, so they cannot
  share a call: ``nfe = 2`` (one evaluation of each model per sample). ``w = 1`` is the
  main model, ``w = 0`` the weak one.

  Args:
    weak_denoise: the guiding model ``denoise(x, t, cond) -> x0_hat``.
    scale: ``w``, finite (the paper's best ImageNet-512 settings use 2.0 - 2.5).

  Traced hyperparameters are not checked; one that is NaN or out of range poisons the output
  (NaN), see :mod:`jaxdiff.guidance._common`.

  Returns:
    A stateless :class:`Autoguidance` rule (``nfe = 2``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, StepContext
    >>> main, weak = (lambda x, t, c: x), (lambda x, t, c: 0.5 * x)
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> pred, _, _ = guidance.autoguidance(weak, 2.0).apply(main, jnp.ones((1, 2)), None, ctx, ())
    >>> float(pred.x0[0, 0])
    1.5

  References:
    Karras, Aittala, Kynkäänniemi, Lehtinen, Aila & Laine, "Guiding a Diffusion Model with
    a Bad Version of Itself", arXiv:2406.02507 (Eq. 1).
  """
  return Autoguidance(weak_denoise, scale)
