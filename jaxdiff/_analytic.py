"""Analytic denoisers: the optimal denoiser of a finite training set (it memorises) and the
optimal linear (Wiener) denoiser of the data's first two moments, with the locality
measurement of its receptive field.

Both follow the denoiser protocol ``denoise(x, t, cond) -> x0_hat`` (batch first, output in
``x``'s shape and dtype) and are pytrees, so :func:`jaxdiff.sample` compiles them once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._validation import check_labels, check_scalar, poison

Array = jax.Array

__all__ = [
  "EmpiricalDenoiser",
  "WienerDenoiser",
  "empirical_denoiser",
  "locality",
  "wiener_denoiser",
]


def _data(where: str, data) -> np.ndarray:
  try:
    x = np.asarray(data, np.float64)
  except (TypeError, ValueError) as e:
    raise TypeError(f"{where}: data must be a real (N, ...) array: {e}") from e
  if x.ndim < 2 or x.shape[0] < 1 or math.prod(x.shape[1:]) < 1:
    raise ValueError(f"{where}: data must have shape (N, ...) with N >= 1, got {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{where}: data must be finite")
  return x


def _scales(schedule, t, x):
  t = jnp.asarray(t)
  b = x.shape[0]
  alpha = jnp.broadcast_to(schedule.alpha(t), (b,))
  sigma = jnp.broadcast_to(schedule.sigma(t), (b,))
  return alpha, sigma


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class EmpiricalDenoiser:
  """The exact denoiser of the empirical distribution of ``points`` (see
  :func:`empirical_denoiser`)."""

  points: Array  # (N, D)
  labels: Array | None  # (N,) int32 or None
  schedule: Any = dataclasses.field(metadata={"static": True})
  shape: tuple[int, ...] = dataclasses.field(metadata={"static": True})
  num_classes: int | None = dataclasses.field(metadata={"static": True}, default=None)

  def weights(self, x, t, cond=None) -> Array:
    """The posterior over training points ``(B, N)`` (softmax of the Gaussian log-likelihoods)."""
    x = jnp.asarray(x)
    xf = x.reshape(x.shape[0], -1).astype(self.points.dtype)
    alpha, sigma = _scales(self.schedule, t, xf)
    d2 = (
      jnp.sum(xf**2, 1)[:, None]
      - 2.0 * alpha[:, None] * xf @ self.points.T
      + (alpha**2)[:, None] * jnp.sum(self.points**2, 1)[None]
    )
    # sigma = 0: the nearest point (the limit of the softmax), never 0/0
    tiny = jnp.sqrt(jnp.finfo(xf.dtype).tiny)
    logits = -0.5 * jnp.maximum(d2, 0.0) / jnp.maximum(sigma, tiny)[:, None] ** 2
    if self.labels is not None and cond is not None:
      valid = check_labels("cond", cond, self.num_classes, allow_null=True)
      cond = jnp.broadcast_to(jnp.asarray(cond), (x.shape[0],))
      match = (cond[:, None] == -1) | (cond[:, None] == self.labels[None])
      logits = jnp.where(match, logits, -jnp.inf)
      return poison(jax.nn.softmax(logits, axis=1), jnp.broadcast_to(valid, (x.shape[0],))[:, None])
    return jax.nn.softmax(logits, axis=1)

  def __call__(self, x, t, cond=None):
    x = jnp.asarray(x)
    out = self.weights(x, t, cond) @ self.points
    return out.reshape(x.shape).astype(x.dtype)


def empirical_denoiser(data, schedule, *, labels=None) -> EmpiricalDenoiser:
  r"""The optimal denoiser of a finite training set: it reproduces training points.

  For the empirical distribution :math:`\frac1N\sum_i\delta_{x_i}` the posterior mean is

  .. math:: D(x_t) = \sum_i w_i(x_t)\,x_i,\qquad
    w_i \propto \exp\Big(-\frac{\lVert x_t - \alpha_t x_i\rVert^2}{2\sigma_t^2}\Big),

  restricted to the points of class ``y`` when ``labels`` are given (``-1``: all). As
  :math:`\sigma_t \to 0` it returns the nearest training point: a model that minimises the
  training loss exactly can only copy (the memorisation baseline of Kadkhodaie et al.).

  Args:
    data: ``(N, ...)`` training points.
    schedule: the schedule of ``t``.
    labels: optional ``(N,)`` int class of each point (enables ``cond``).

  Returns:
    An :class:`EmpiricalDenoiser` (``.weights(x, t, cond)`` gives the posterior ``(B, N)``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import schedules
    >>> from jaxdiff.testing import empirical_denoiser
    >>> d = empirical_denoiser(jnp.array([[0.0, 0.0], [4.0, 4.0]]), schedules.flow())
    >>> d(jnp.array([[3.0, 3.5]]), jnp.array([0.01])).round(3).tolist()
    [[4.0, 4.0]]

  References:
    Kadkhodaie et al., "Generalization in diffusion models arises from geometry-adaptive
    harmonic representations", ICLR 2024, arXiv:2310.02557 (Sec. 2); Karras et al.,
    "Elucidating the Design Space of Diffusion-Based Generative Models", arXiv:2206.00364
    (App. B.3, the ideal denoiser of a finite dataset).
  """
  x = _data("empirical_denoiser", data)
  dtype = jnp.result_type(float)
  num_classes, lab = None, None
  if labels is not None:
    lab = np.asarray(labels)
    if lab.shape != (x.shape[0],) or lab.dtype == bool or not np.issubdtype(lab.dtype, np.integer):
      raise ValueError(f"empirical_denoiser: labels must be ({x.shape[0]},) integers, got {lab!r}")
    if lab.min() < 0:
      raise ValueError("empirical_denoiser: labels must be >= 0")
    num_classes, lab = int(lab.max()) + 1, jnp.asarray(lab, jnp.int32)
  points = jnp.asarray(x.reshape(x.shape[0], -1), dtype)
  return EmpiricalDenoiser(points, lab, schedule, tuple(x.shape[1:]), num_classes)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class WienerDenoiser:
  """The optimal linear denoiser of a Gaussian with the data's moments (see
  :func:`wiener_denoiser`)."""

  mean: Array  # (D,)
  eigvals: Array  # (D,) >= 0
  eigvecs: Array  # (D, D) columns
  schedule: Any = dataclasses.field(metadata={"static": True})

  def gains(self, t) -> Array:
    r"""The per-eigendirection gains :math:`\alpha\lambda_k/(\alpha^2\lambda_k + \sigma^2)`."""
    t = jnp.atleast_1d(jnp.asarray(t))
    alpha, sigma = self.schedule.alpha(t)[:, None], self.schedule.sigma(t)[:, None]
    v = alpha**2 * self.eigvals[None] + sigma**2
    # sigma = 0: 1/alpha where lambda > 0; a direction without variance keeps the mean.
    safe = jnp.where(v > 0, v, 1.0)
    return jnp.where(v > 0, alpha * self.eigvals[None] / safe, 0.0)

  def jacobian(self, t) -> Array:
    """``dD/dx`` at time ``t`` (a scalar): ``(D, D)``, the same at every ``x``."""
    g = self.gains(jnp.asarray(t).reshape(()))[0]
    return (self.eigvecs * g[None]) @ self.eigvecs.T

  def __call__(self, x, t, cond=None):
    x = jnp.asarray(x)
    xf = x.reshape(x.shape[0], -1).astype(self.mean.dtype)
    alpha = jnp.broadcast_to(self.schedule.alpha(jnp.asarray(t)), (x.shape[0],))
    g = jnp.broadcast_to(self.gains(t), xf.shape)
    z = (xf - alpha[:, None] * self.mean[None]) @ self.eigvecs
    out = self.mean[None] + (g * z) @ self.eigvecs.T
    return out.reshape(x.shape).astype(x.dtype)


def wiener_denoiser(data, schedule, *, mean=None, covariance=None) -> WienerDenoiser:
  r"""The optimal linear (Wiener) denoiser from the data mean and covariance.

  .. math:: D(x_t) = \mu + \alpha_t\Sigma(\alpha_t^2\Sigma + \sigma_t^2 I)^{-1}
    (x_t - \alpha_t\mu)

  the best affine estimate of :math:`x_0` in mean squared error, and the exact denoiser of
  :math:`\mathcal N(\mu, \Sigma)`. Computed in the eigenbasis of :math:`\Sigma`;
  ``sigma = 0`` is exact and directions without variance return the mean. Lukoianov et
  al. show that its Jacobian is local on natural images, as a trained network's is
  (:func:`locality` measures it).

  Args:
    data: ``(N, ...)`` training points (the moments use ``1/N``), or ``None`` with both
      ``mean`` ``(D,)`` and ``covariance`` ``(D, D)`` given.
    schedule: the schedule of ``t``.
    mean, covariance: explicit moments (instead of ``data``).

  Returns:
    A :class:`WienerDenoiser` (``.jacobian(t)`` is its ``(D, D)`` linear map).

  Example:
    >>> import numpy as np
    >>> from jaxdiff import schedules
    >>> from jaxdiff.testing import wiener_denoiser
    >>> d = wiener_denoiser(None, schedules.flow(), mean=np.zeros(2), covariance=np.eye(2))
    >>> d(np.ones((1, 2)), np.array([0.5])).tolist()  # alpha / (alpha^2 + sigma^2) = 1
    [[1.0, 1.0]]

  References:
    Wiener, "Extrapolation, Interpolation, and Smoothing of Stationary Time Series" (1949);
    Lukoianov et al., "Locality in Image Diffusion Models Emerges from Data Statistics",
    arXiv:2509.09672 (Sec. 3).
  """
  if data is None:
    if mean is None or covariance is None:
      raise TypeError("wiener_denoiser: give data, or both mean and covariance")
    mu = np.asarray(mean, np.float64).reshape(-1)
    cov = np.asarray(covariance, np.float64)
    if cov.shape != (mu.size, mu.size) or not np.all(np.isfinite(cov)):
      raise ValueError(f"wiener_denoiser: covariance must be finite ({mu.size}, {mu.size})")
  else:
    if mean is not None or covariance is not None:
      raise TypeError("wiener_denoiser: give data or (mean, covariance), not both")
    x = _data("wiener_denoiser", data)
    x = x.reshape(x.shape[0], -1)
    mu = x.mean(0)
    cov = (x - mu).T @ (x - mu) / x.shape[0]
  if not np.allclose(cov, cov.T, rtol=1e-10, atol=1e-12):
    raise ValueError("wiener_denoiser: covariance must be symmetric")
  lam, vec = np.linalg.eigh(cov)
  if lam.min() < -1e-8 * max(1.0, lam.max()):
    raise ValueError(
      f"wiener_denoiser: covariance must be positive semi-definite, min eig {lam.min()}"
    )
  dtype = jnp.result_type(float)
  lam = np.clip(lam, 0.0, None)
  return WienerDenoiser(
    jnp.asarray(mu, dtype), jnp.asarray(lam, dtype), jnp.asarray(vec, dtype), schedule
  )


def locality(jacobian, image_shape, *, mass: float = 0.9) -> np.ndarray:
  r"""How local a denoiser is: the radius of each output pixel's receptive field.

  For output pixel ``i`` with sensitivities :math:`J_{ij}^2` (a row of the Jacobian
  ``dD/dx``), the radius is the smallest Chebyshev distance ``r`` such that the pixels
  ``j`` with :math:`\lVert p_j - p_i\rVert_\infty \le r` hold a fraction ``mass`` of
  :math:`\sum_j J_{ij}^2`:

  .. math:: r_i = \min\{r : \textstyle\sum_{j: d(i,j)\le r} J_{ij}^2 \ge m \sum_j J_{ij}^2\}

  A row without sensitivity (a constant pixel) has radius 0.

  Args:
    jacobian: ``(P, P)`` with ``P = prod(image_shape)`` (rows: outputs).
    image_shape: ``(H, W)``.
    mass: ``m`` in ``(0, 1]``.

  Returns:
    ``(P,)`` int radii (0 = the pixel alone).

  Example:
    >>> import numpy as np
    >>> from jaxdiff.testing import locality
    >>> int(locality(np.eye(16), (4, 4)).max())  # the identity sees only its own pixel
    0

  References:
    Lukoianov et al., "Locality in Image Diffusion Models Emerges from Data Statistics",
    arXiv:2509.09672 (Sec. 4, receptive fields of the Wiener filter and trained networks).
  """
  check_scalar("locality: mass", mass, lo=0.0, hi=1.0, lo_open=True)
  j = np.asarray(jacobian, np.float64)
  if len(image_shape) != 2:
    raise ValueError(f"locality: image_shape must be (H, W), got {image_shape}")
  h, w = (int(v) for v in image_shape)
  p = h * w
  if j.shape != (p, p):
    raise ValueError(
      f"locality: jacobian must be ({p}, {p}) for image_shape {image_shape}, got {j.shape}"
    )
  rr, cc = np.divmod(np.arange(p), w)
  dist = np.maximum(np.abs(rr[:, None] - rr[None]), np.abs(cc[:, None] - cc[None]))
  energy = j**2
  total = energy.sum(1)
  radii = np.zeros(p, np.int64)
  for r in range(max(h, w) - 1, -1, -1):  # ends at the smallest r that holds the mass
    inside = np.where(dist <= r, energy, 0.0).sum(1)
    radii = np.where(inside >= mass * total * (1 - 1e-12), r, radii)
  return np.where(total > 0, radii, 0)
