"""Minority guidance: the minority score and classifier guidance toward a minority level."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._module import module, setfield, static
from jaxdiff._types import GuidanceRule, Prediction
from jaxdiff._validation import as_key, check_batch, check_finite, check_output, check_scalar
from jaxdiff.guidance._common import (
  batch_t,
  check_classifier,
  check_num_classes,
  hypers,
  logits,
  poison,
)
from jaxdiff.guidance._dps import score_coefficient

Array = jax.Array


def minority_score(denoise, schedule, x0, t=0.5, *, key, num_draws: int = 1, cond=None) -> Array:
  r"""Minority score: how badly Tweedie's estimate reconstructs a re-noised sample.

  .. math::
    \ell(x_0) = \mathbb E_{\epsilon}\,\big\| x_0 - \hat x_0(\alpha_t x_0 + \sigma_t
      \epsilon,\ t)\big\|^2 / D

  (Eq. 7 with the squared distance; the paper uses LPIPS on images, and squared L2 where
  no perceptual metric applies). Samples from low-density regions reconstruct worse, so
  larger means rarer.

  Args:
    denoise: ``denoise(x, t, cond) -> x0_hat``.
    schedule: the denoiser's schedule (``alpha(t)``, ``sigma(t)``).
    x0: clean samples ``(B, ...)``, finite when concrete (a traced NaN or inf gives a NaN
      score for its row, which :func:`minority_levels` rejects).
    t: the re-noising time (the paper perturbs to an intermediate time).
    key: PRNG key of the noise draws.
    num_draws: noise draws averaged per sample (static, ``>= 1``).
    cond: passed to ``denoise``; batch-first like ``x0`` (or ``None``).

  Returns:
    ``(B,)`` minority scores. The denoiser's output must have ``x``'s shape and dtype
    (checked when traced, as :func:`jaxdiff.sample` checks it).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, schedules
    >>> from jaxdiff.testing import GaussianMixture
    >>> gmm = GaussianMixture(jnp.array([[0.0, 0.0]]), 1.0)
    >>> den = gmm.denoiser(schedules.vp_cosine())
    >>> s = guidance.minority_score(den, schedules.vp_cosine(), jnp.array([[0.0, 0.0], [3.0, 3.0]]),
    ...                             key=0, num_draws=64)
    >>> bool(s[1] > s[0])
    True

  References:
    Um, Lee & Ye, "Don't Play Favorites: Minority Guidance for Diffusion Models", ICLR
    2024, arXiv:2301.12334 (Sec. 3.1, Eq. 7).
  """
  num_draws = check_scalar("minority_score: num_draws", num_draws, lo=1, integer=True, static=True)
  check_finite("minority_score: x0", x0)
  x0 = jnp.asarray(x0)
  b = x0.shape[0]
  check_batch(cond, b, name="cond", like_name="x0", where="minority_score")
  tt = jnp.full((b,), t, x0.dtype)
  alpha = schedule.alpha(tt).reshape((b,) + (1,) * (x0.ndim - 1))
  sigma = schedule.sigma(tt).reshape((b,) + (1,) * (x0.ndim - 1))

  def one(k):
    eps = jax.random.normal(k, x0.shape, x0.dtype)
    x_t = alpha * x0 + sigma * eps
    x0_hat = denoise(x_t, tt, cond)
    check_output(x0_hat, like=x_t, name="denoise(x, t, cond)", where="minority_score")
    return jnp.mean((x0 - x0_hat).reshape(b, -1) ** 2, axis=1)

  return jnp.mean(jax.lax.map(one, jax.random.split(as_key(key), num_draws)), axis=0)


def minority_levels(scores, num_levels: int) -> tuple[np.ndarray, np.ndarray]:
  """Quantile levels of minority scores: ``(levels (B,) in [0, L), thresholds (L - 1,))``.

  The paper's ordinal labels: the scores of the training data split at their
  ``1/L, ..., (L-1)/L`` quantiles (level ``L - 1``: the rarest).

  Example:
    >>> import numpy as np
    >>> from jaxdiff import guidance
    >>> guidance.minority_levels(np.arange(10.0), 2)[0].tolist()
    [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
  """
  num_levels = check_scalar(
    "minority_levels: num_levels", num_levels, lo=2, integer=True, static=True
  )
  s = np.asarray(scores, np.float64)
  if s.ndim != 1 or not np.all(np.isfinite(s)):
    raise ValueError(f"minority_levels: scores must be a finite (B,) array, got shape {s.shape}")
  thresholds = np.quantile(s, np.arange(1, num_levels) / num_levels)
  return np.searchsorted(thresholds, s, side="right").astype(np.int32), thresholds


@module
class MinorityGuidance(GuidanceRule):
  """Minority guidance; built by :func:`minority`.

  ``scale`` is a leaf; ``classifier_fn``, ``num_levels`` (the logits' shape) and
  ``level`` are static. One network call per step (``calls = (1,)``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance
    >>> clf = lambda x, t: jnp.stack([-x.sum(-1), x.sum(-1)], axis=-1)
    >>> rule = guidance.minority(clf, 2, 1, 1.0)
    >>> isinstance(rule, guidance.MinorityGuidance), rule.calls
    (True, (1,))
  """

  classifier_fn: Callable[[Array, Array], Array] = static()
  num_levels: int = static()
  level: int = static()
  scale: Any = 1.0
  traced: tuple = static(())

  calls = (1,)

  def __post_init__(self):
    check_classifier(self.classifier_fn, "minority")
    num_levels = check_num_classes("minority: num_levels", self.num_levels)
    setfield(self, "num_levels", num_levels)
    level = check_scalar(
      "minority: level", self.level, lo=0, hi=num_levels - 1, integer=True, static=True
    )
    setfield(self, "level", level)
    setfield(self, "traced", hypers("minority", self, scale=dict(lo=0.0)))

  def guide(self, net, x, cond, ctx, state):
    t = batch_t(ctx, x)
    x0, net = net(x, t, cond)

    def log_p(z):
      f = logits(self.classifier_fn, (z, t), x.shape[0], self.num_levels, "minority")
      return jnp.sum(
        jax.nn.log_softmax(f.astype(jnp.promote_types(z.dtype, jnp.float32)))[:, self.level]
      )

    g = jax.grad(log_p)(x).astype(x0.dtype)
    out = x0 + jnp.asarray(self.scale, x0.dtype) * score_coefficient(ctx, x0.dtype) * g
    return Prediction.of(poison(self, out, self.traced)), state, net


def minority(
  classifier_fn: Callable[[Array, Array], Array],
  num_levels: int,
  level: int,
  scale=1.0,
) -> MinorityGuidance:
  r"""Minority guidance: classifier guidance toward minority level ``level``.

  .. math::
    \hat x = \hat x_0 + w\,\frac{\sigma_t^2}{\alpha_t}\,
      \nabla_{x_t}\log p_\psi(\tilde l \mid x_t),

  i.e. the score plus ``w`` times the gradient of a noise-aware classifier
  ``classifier_fn(x_t, t) -> (B, L)`` trained on the quantile levels of the minority
  score (:func:`minority_score`, :func:`minority_levels`) of noised training data. ``cond``
  goes to the denoiser unchanged, so the guidance combines with class conditioning.

  Args:
    classifier_fn: noise-aware level classifier, logits ``(B, num_levels)``.
    num_levels: ``L >= 2``.
    level: the target level ``l~`` in ``[0, L)`` (``L - 1``: the rarest).
    scale: ``w >= 0``.

  Returns:
    A stateless :class:`MinorityGuidance` rule (``nfe = 1``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import StepContext, guidance
    >>> clf = lambda x, t: jnp.stack([-x.sum(-1), x.sum(-1)], axis=-1)
    >>> rule = guidance.minority(clf, 2, 1, 1.0)
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> pred, _, _ = rule.apply(lambda x, t, c: x, jnp.zeros((1, 2)), None, ctx, ())
    >>> pred.x0.tolist()
    [[1.0, 1.0]]

  References:
    Um, Lee & Ye, "Don't Play Favorites: Minority Guidance for Diffusion Models", ICLR
    2024, arXiv:2301.12334 (Sec. 3.2, Eq. 9).
  """
  return MinorityGuidance(classifier_fn, num_levels, level, scale)
