"""The denoising loss for every parameterization, weighting, timestep sampler and premetric,
and Smooth Diffusion's step-wise variation regularizer it can add.

Every loss is a hashable frozen dataclass ``loss(model, x0, y, key, *, step=None) ->
scalar``: the signature :func:`jaxdiff.models.train` expects, and a cache key for its
compiled training chunk. ``step`` is passed by :func:`jaxdiff.models.train` to losses that
take it (the curriculum's sampler depends on it; every other sampler ignores it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff._parameterization import PREDICTIONS, _floor, _to_x0
from jaxdiff._training._samplers import _check_schedule, uniform
from jaxdiff._validation import (
  as_key,
  check_batch,
  check_choice,
  check_flag,
  check_output,
  check_scalar,
)

Array = jax.Array


WEIGHTINGS = ("native", "x0", "eps", "v", "velocity", "min_snr")
PREMETRICS = ("l2", "pseudo_huber")


def _expand(v: Array, ndim: int) -> Array:
  """``(B,) -> (B, 1, ..., 1)`` against an array of rank ``ndim``."""
  return v.reshape(v.shape + (1,) * (ndim - 1))


def _target(x0, eps, alpha, sigma, prediction):
  if prediction == "x0":
    return x0
  if prediction == "eps":
    return eps
  if prediction == "v":
    return alpha * eps - sigma * x0
  return eps - x0  # velocity


def _x0_weight(name, alpha, sigma, gamma):
  """The x0-space weight of a named objective (Kingma & Gao's w(lambda) up to a factor)."""
  s2 = _floor(sigma) ** 2
  if name == "x0":
    return jnp.ones_like(alpha)
  if name == "eps":
    return alpha**2 / s2
  if name == "v":
    return (alpha**2 + sigma**2) ** 2 / s2
  if name == "velocity":
    return (alpha + sigma) ** 2 / s2
  return jnp.minimum(alpha**2 / s2, gamma)  # min_snr


def _inverse_native(prediction, alpha, sigma):
  """``||x0 error||^2 / ||prediction error||^2`` (so the x0-space weight is native * this)."""
  if prediction == "x0":
    return jnp.ones_like(alpha)
  if prediction == "eps":
    return sigma**2 / _floor(alpha) ** 2
  if prediction == "v":
    return sigma**2 / (alpha**2 + sigma**2) ** 2
  return sigma**2 / (alpha + sigma) ** 2  # velocity


def step_variation_penalty(fn: Callable[[Array], Array], eps: Array, *, key, target=None):
  r"""Smooth Diffusion's step-wise variation regularizer on ``x0_hat = fn(eps)``.

  A random output direction :math:`y \sim \mathcal N(0, I/d)` and the vector-Jacobian
  product give the per-example variation length
  :math:`\ell = \lVert J_\epsilon^\top y\rVert`, which equals the ratio
  :math:`\lVert\Delta \hat x_0\rVert / \lVert\Delta\epsilon\rVert` on average over
  directions; the penalty keeps it constant:

  .. math:: \mathcal L_{\text{reg}} = \mathbb E\big[(\ell - a)^2\big]

  with ``a = target``, or, when ``target is None``, the batch mean of :math:`\ell` held
  constant (a stateless stand-in for the paper's running mean, as in StyleGAN2's
  path-length penalty it follows).

  Args:
    fn: ``eps (B, ...) -> x0_hat (B, ...)`` (the network at fixed ``x0``, ``t``, labels).
    eps: the noise the training step drew.
    key: PRNG key of the direction ``y``.
    target: the constant ``a`` (``None``: the batch mean, stop-gradient).

  Returns:
    ``(penalty, lengths)``: the scalar penalty and ``lengths`` ``(B,)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff import training
    >>> pen, ell = training.step_variation_penalty(lambda e: 2.0 * e, jnp.ones((3, 8)), key=0)
    >>> _, ell1 = training.step_variation_penalty(lambda e: e, jnp.ones((3, 8)), key=0)
    >>> bool(jnp.allclose(ell, 2.0 * ell1)), pen.shape  # lengths scale with the gain
    (True, ())

  References:
    Guo et al., "Smooth Diffusion: Crafting Smooth Latent Spaces in Diffusion Models",
    CVPR 2024, arXiv:2312.04410 (Sec. 3.2, eq. 6); Karras et al., "Analyzing and
    Improving the Image Quality of StyleGAN", arXiv:1912.04958 (Sec. 3.2).
  """
  if not callable(fn):
    raise TypeError(f"step_variation_penalty: fn must be callable fn(eps), got {fn!r}")
  eps = jnp.asarray(eps)
  d = math.prod(eps.shape[1:])
  out, vjp = jax.vjp(fn, eps)
  check_output(
    out, like=eps, dtype="floating", name="fn(eps)", where="step_variation_penalty", like_name="eps"
  )
  y = jax.random.normal(as_key(key), out.shape, out.dtype) / math.sqrt(d)
  (g,) = vjp(y)
  lengths = jnp.sqrt(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1))
  a = jax.lax.stop_gradient(jnp.mean(lengths)) if target is None else target
  return jnp.mean((lengths - a) ** 2), lengths


def _check_data(x0, name: str) -> Array:
  """The training data: a floating array with a leading batch axis."""
  if not hasattr(x0, "shape") or not hasattr(x0, "dtype"):
    raise TypeError(f"denoising_loss: {name} must be a floating (B, ...) array, got {x0!r}")
  x0 = jnp.asarray(x0)
  if x0.ndim < 1 or not jnp.issubdtype(x0.dtype, jnp.floating):
    raise TypeError(
      f"denoising_loss: {name} must be a floating (B, ...) array, got {x0.dtype}{x0.shape}"
    )
  return x0


def _check_pairs(x0) -> None:
  """``coupled=True``: ``x0`` holds reflow pairs ``(B, 2, *data_shape)``."""
  if x0.ndim < 3 or x0.shape[1] != 2:
    raise ValueError(
      "denoising_loss: coupled=True needs x0 of paired data, shape (B, 2, *data_shape) "
      "with at least one data axis: x0[:, 0] the samples and x0[:, 1] the noise each was "
      f"drawn from (training.reflow_pairs); got shape {x0.shape} (unpaired data? use "
      "coupled=False)"
    )


@dataclasses.dataclass(frozen=True)
class DenoisingLoss:
  """``loss(model, x0, y, key, *, step=None) -> scalar`` (see :func:`denoising_loss`)."""

  schedule: Any
  prediction: str
  weighting: Any
  timesteps: Any
  premetric: str
  huber_c: float | None
  min_snr_gamma: float
  perceptual: Any
  smoothness: float
  label_dropout: float
  null_label: int
  coupled: bool

  def _scales(self, t, ndim):
    a = _expand(self.schedule.alpha(t), ndim)
    s = _expand(self.schedule.sigma(t), ndim)
    return a, s

  def _weight(self, t, a, s):
    """Per-example factor on the prediction-space error (1 for the native objective)."""
    if self.weighting == "native" or self.weighting == self.prediction:
      return None
    if callable(self.weighting):
      w = self.weighting(self.schedule.logsnr(t))
      name, where = "weighting(logsnr)", "denoising_loss"
      if jnp.ndim(w) == 0:  # one weight for every example
        check_output(w, scalar=True, dtype="real", name=name, where=where, what="or (B,) weight")
      else:
        check_output(w, shape=t.shape, dtype="real", name=name, where=where)
      w = _expand(jnp.asarray(w, a.dtype), a.ndim)
    else:
      w = _x0_weight(self.weighting, a, s, self.min_snr_gamma)
    return (w * _inverse_native(self.prediction, a, s)).reshape(t.shape)

  def _distance(self, err):
    """Per-example premetric of the prediction error ``(B, ...)`` -> ``(B,)``."""
    flat = err.reshape(err.shape[0], -1)
    if self.premetric == "l2":
      return jnp.mean(flat**2, axis=1)
    c = 0.00054 * math.sqrt(flat.shape[1]) if self.huber_c is None else self.huber_c
    return jnp.sqrt(jnp.sum(flat**2, axis=1) + c**2) - c

  def per_example(self, model, x0, eps, t, y) -> Array:
    """The loss of each example at given noise ``eps`` and times ``t`` ``(B,)``, no label
    dropout and no smoothness term (for measurements: per-group loss, convergence)."""
    x0 = _check_data(x0, "x0")
    check_output(jnp.asarray(eps), like=x0, name="eps", where="denoising_loss.per_example")
    t = jnp.asarray(t)
    check_output(
      t, shape=x0.shape[:1], dtype="floating", name="t", where="denoising_loss.per_example"
    )
    check_batch(y, x0.shape[0], name="y", like_name="x0", where="denoising_loss")
    return self._terms(model, x0, eps, t, y)[0]

  @staticmethod
  def _model(model, xt, t, y):
    """``model(x_t, t, y)``, checked: one floating array shaped like ``x_t``."""
    return check_output(
      model(xt, t, y),
      like=xt,
      dtype="floating",
      name="model(x, t, y)",
      where="denoising_loss",
      like_name="x_t",
    )

  def _terms(self, model, x0, eps, t, y):
    a, s = self._scales(t, x0.ndim)
    xt = a * x0 + s * eps
    out = self._model(model, xt, t, y)
    d = self._distance(out - _target(x0, eps, a, s, self.prediction))
    if self.perceptual is not None:
      x0_hat = _to_x0(out, xt, a, s, self.prediction)
      f = jax.lax.stop_gradient(self.perceptual(x0))
      name = "perceptual(x)"
      check_output(f, dtype="floating", shape=jnp.shape(f), name=name, where="denoising_loss")
      check_batch(f, x0.shape[0], name=name, like_name="x0", where="denoising_loss")
      f_hat = check_output(self.perceptual(x0_hat), like=f, name=name, where="denoising_loss")
      d = d + jnp.mean((f_hat - f).reshape(f.shape[0], -1) ** 2, axis=1)
    w = self._weight(t, a, s)
    return (d if w is None else w * d), xt, (a, s)

  def __call__(self, model, x0, y, key, *, step=None) -> Array:
    x0 = _check_data(x0, "x0")
    if self.coupled:  # reflow: x0 holds (data, noise) pairs
      _check_pairs(x0)
      x0, eps_pair = x0[:, 0], x0[:, 1]
    keys = jax.random.split(as_key(key), 4 if self.smoothness else 3)
    kt, ke, kd = keys[0], keys[1], keys[2]
    b = x0.shape[0]
    check_batch(y, b, name="y", like_name="x0", where="denoising_loss")
    t = self.timesteps(
      kt, (b,), t_min=float(self.schedule.t_min), t_max=float(self.schedule.t_max), step=step
    )
    check_output(
      t, shape=(b,), dtype="floating", name="timesteps(key, shape)", where="denoising_loss"
    )
    eps = eps_pair if self.coupled else jax.random.normal(ke, x0.shape, x0.dtype)
    if self.label_dropout:
      y = jnp.where(jax.random.bernoulli(kd, self.label_dropout, (b,)), self.null_label, y)
    if (
      self.premetric == "l2"
      and self.perceptual is None
      and self._weight(t, *self._scales(t, x0.ndim)) is None
    ):
      # The plain objective as one mean over every element (the demo's weights are
      # bit-identical to the hand-written loss this replaced).
      a, s = self._scales(t, x0.ndim)
      out = self._model(model, a * x0 + s * eps, t, y)
      loss = jnp.mean((out - _target(x0, eps, a, s, self.prediction)) ** 2)
    else:
      loss = jnp.mean(self._terms(model, x0, eps, t, y)[0])
    if self.smoothness:
      a, s = self._scales(t, x0.ndim)

      def x0_of_eps(e):
        xt = a * x0 + s * e
        return _to_x0(self._model(model, xt, t, y), xt, a, s, self.prediction)

      penalty, _ = step_variation_penalty(x0_of_eps, eps, key=keys[3])
      loss = loss + self.smoothness * penalty
    return loss


def denoising_loss(
  schedule,
  *,
  prediction: str = "v",
  weighting: str | Callable[[Array], Array] = "native",
  timesteps=None,
  premetric: str = "l2",
  huber_c: float | None = None,
  min_snr_gamma: float = 5.0,
  perceptual: Callable[[Array], Array] | None = None,
  smoothness: float = 0.0,
  label_dropout: float = 0.0,
  null_label: int = -1,
  coupled: bool = False,
) -> DenoisingLoss:
  r"""The denoising objective for any parameterization, weighting, sampler and premetric.

  .. math::
    t \sim p_T,\ \epsilon \sim \mathcal N(0, I),\ x_t = \alpha_t x_0 + \sigma_t\epsilon,\
    \mathcal L = \mathbb E\Big[\frac{w(\lambda_t)}{w_{\text{pred}}(\lambda_t)}\,
      d\big(f_\theta(x_t, t, \tilde y),\ \text{target}\big)\Big]

  with target :math:`x_0`, :math:`\epsilon`, :math:`v = \alpha\epsilon - \sigma x_0` or
  :math:`u = \epsilon - x_0` for ``prediction`` ``"x0"``, ``"eps"``, ``"v"``,
  ``"velocity"``. Weightings are stated in x0 space (Kingma & Gao): the prediction's
  own squared error is the x0 error times :math:`w_{\text{pred}}` = 1, SNR,
  :math:`(\alpha^2+\sigma^2)^2/\sigma^2`, :math:`(\alpha+\sigma)^2/\sigma^2` for x0, eps,
  v, velocity; ``"native"`` (or the prediction's own name) trains exactly that;
  ``"min_snr"`` is :math:`\min(\mathrm{SNR}, \gamma)` (Hang et al.); a callable
  ``w(logsnr)`` is any x0-space weight.

  The premetric ``d`` is the mean squared error (``"l2"``) or the pseudo-Huber distance
  :math:`\sqrt{\lVert e\rVert^2 + c^2} - c`, ``c = 0.00054\sqrt{D}`` by default (Lee et
  al., from Song & Dhariwal). LPIPS is not available offline: ``perceptual`` (a feature
  map, e.g. the demo classifier's penultimate layer) adds the mean squared feature
  distance of the x0 prediction as the perceptual stand-in. ``smoothness > 0`` adds
  Smooth Diffusion's regularizer (:func:`step_variation_penalty`) with that weight.

  Labels are dropped to ``null_label`` with probability ``label_dropout`` (classifier-free
  guidance training). With ``coupled=True`` the data are *paired*: reflow pairs of shape
  ``(B, 2, *data_shape)`` with at least one data axis, ``[:, 0]`` the sample and ``[:, 1]``
  the noise it was drawn from (:func:`reflow_pairs`); any other shape raises (an unpaired
  batch would be split into data and noise along its second axis).

  What the loss calls is checked when it is traced (an error names the callable, never a
  broadcast): ``model`` returns one floating array shaped like ``x_t``, the timestep
  sampler a floating ``(B,)`` array, a callable ``weighting`` a real ``(B,)`` or scalar
  weight, ``perceptual`` batch-first floating features of one shape for data and
  prediction; ``x0`` is a floating ``(B, ...)`` array and ``y`` is batch-first like it
  (one label per example, ``None`` for an unconditional model).

  Args:
    schedule: a jaxdiff schedule (``t`` is drawn in ``[t_min, t_max]``).
    prediction: what the network predicts: ``"x0"``, ``"eps"``, ``"v"``, ``"velocity"``.
    weighting: ``"native"``, ``"x0"``, ``"eps"``, ``"v"``, ``"velocity"``, ``"min_snr"``
      or a callable of log-SNR.
    timesteps: a timestep sampler (:func:`uniform` by default, :func:`logit_normal`,
      :func:`u_shaped`, :func:`curriculum`).
    premetric: ``"l2"`` or ``"pseudo_huber"``.
    huber_c: the pseudo-Huber ``c > 0`` (default ``0.00054 sqrt(D)``).
    min_snr_gamma: ``gamma > 0`` of ``"min_snr"``.
    perceptual: optional feature map ``x (B, ...) -> features (B, ...)``.
    smoothness: weight ``>= 0`` of the step-wise variation regularizer.
    label_dropout: probability in ``[0, 1]``.
    null_label: the label of the unconditional model.
    coupled: data are (sample, noise) pairs.

  Returns:
    A :class:`DenoisingLoss`, called ``loss(model, x0, y, key, *, step=None)``; ``model`` is
    any ``net(x, t, y) -> prediction``. ``loss.per_example(model, x0, eps, t, y)`` is the
    deterministic per-example loss (for measurements).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff import schedules, training
    >>> loss = training.denoising_loss(schedules.flow(), prediction="velocity",
    ...                                timesteps=training.u_shaped())
    >>> zero = lambda x, t, y: jnp.zeros_like(x)
    >>> float(loss(zero, jnp.zeros((4, 2)), jnp.zeros(4, int), jax.random.key(0))) > 0
    True

  References:
    Kingma & Gao, "Understanding Diffusion Objectives as the ELBO with Simple Data
    Augmentation", arXiv:2303.00848 (weightings); Salimans & Ho, arXiv:2202.00512 (v);
    Liu et al., "Flow Straight and Fast", arXiv:2209.03003 (velocity); Hang et al.,
    "Efficient Diffusion Training via Min-SNR Weighting Strategy", arXiv:2303.09556;
    Lee, Lin & Fanti, "Improving the Training of Rectified Flows", arXiv:2405.20320
    (pseudo-Huber, Sec. 4.2); Song & Dhariwal, "Improved Techniques for Training
    Consistency Models", arXiv:2310.14189 (the constant ``c``).
  """
  _check_schedule("denoising_loss", schedule)
  check_choice(
    "denoising_loss: prediction", prediction, tuple(p for p in PREDICTIONS if p != "score")
  )
  if not callable(weighting):
    check_choice("denoising_loss: weighting", weighting, WEIGHTINGS)
  timesteps = uniform() if timesteps is None else timesteps
  if not callable(timesteps):
    raise TypeError(
      "denoising_loss: timesteps must be a timestep sampler (training.uniform(), "
      f"logit_normal(), u_shaped(), curriculum(...)), got {timesteps!r}"
    )
  check_choice("denoising_loss: premetric", premetric, PREMETRICS)
  if huber_c is not None:
    huber_c = float(check_scalar("denoising_loss: huber_c", huber_c, lo=0.0, lo_open=True))
  check_scalar("denoising_loss: min_snr_gamma", min_snr_gamma, lo=0.0, lo_open=True)
  if perceptual is not None and not callable(perceptual):
    raise TypeError(f"denoising_loss: perceptual must be a feature map or None, got {perceptual!r}")
  check_scalar("denoising_loss: smoothness", smoothness, lo=0.0)
  check_scalar("denoising_loss: label_dropout", label_dropout, lo=0.0, hi=1.0)
  check_scalar("denoising_loss: null_label", null_label, integer=True)
  check_flag("denoising_loss: coupled", coupled)
  return DenoisingLoss(
    schedule,
    prediction,
    weighting,
    timesteps,
    premetric,
    huber_c,
    float(min_snr_gamma),
    perceptual,
    float(smoothness),
    float(label_dropout),
    int(null_label),
    bool(coupled),
  )
