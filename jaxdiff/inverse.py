"""jaxdiff.inverse: linear measurement operators and RED-diff for inverse problems.

A measurement is ``y = A x + s n``. The operators here (:func:`random_mask`,
:func:`box_mask`, :func:`avg_pool`, :func:`gaussian_blur`, :func:`matrix`) carry their
exact transposes; the samplers that use them are guidance rules of
:mod:`jaxdiff.guidance` (:func:`~jaxdiff.guidance.dps`, :func:`~jaxdiff.guidance.stsl`,
:func:`~jaxdiff.guidance.flowchef` with :func:`measurement_loss`) and the optimisation
loop :func:`red_diff`. The exact posterior of a Gaussian-mixture prior,
:meth:`jaxdiff.testing.GaussianMixture.posterior`, is their ground truth.
"""

import jax
import jax.numpy as jnp

from jaxdiff._operators import (
  Operator,
  avg_pool,
  box_mask,
  check_operator,
  gaussian_blur,
  matrix,
  measure,
  random_mask,
)
from jaxdiff._red_diff import RedDiffResult, red_diff


def measurement_loss(operator: Operator, y):
  r"""The per-sample data-fit loss ``x0 -> 1/2 ||A x0 - y||^2`` (FlowChef's measurement loss).

  Returns ``loss_fn(x0, cond=None) -> (B,)``; a batch whose size differs from ``y``'s
  raises a ``ValueError`` at trace time. A concrete ``y`` holding NaN or inf raises; a
  traced one makes the losses (and their gradients) of its non-finite rows NaN.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import inverse
    >>> loss = inverse.measurement_loss(inverse.matrix(jnp.eye(2)), jnp.ones((1, 2)))
    >>> loss(jnp.zeros((1, 2))).tolist()
    [1.0]
  """
  check_operator(operator, "measurement_loss")
  y = operator.check_measurement(y, None, "measurement_loss")

  def loss_fn(x0, cond=None):
    del cond
    r = operator(x0) - operator.check_measurement(y, x0.shape[0], "measurement_loss")
    return 0.5 * jnp.sum(r.reshape(r.shape[0], -1) ** 2, axis=1)

  return loss_fn


def psnr(x, ref, *, data_range: float = 2.0) -> jax.Array:
  r"""Per-sample peak signal-to-noise ratio in dB, ``10 log10(R^2 / MSE)``.

  ``data_range`` ``R`` is 2 for images in ``[-1, 1]`` (the digits).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import inverse
    >>> inverse.psnr(jnp.zeros((1, 4)), jnp.full((1, 4), 0.2)).round(2).tolist()
    [20.0]
  """
  x, ref = jnp.asarray(x), jnp.asarray(ref)
  if x.shape != ref.shape or x.ndim < 2:
    raise ValueError(
      f"psnr: x and ref must have the same (B, ...) shape, got {x.shape}, {ref.shape}"
    )
  mse = jnp.mean((x - ref).reshape(x.shape[0], -1) ** 2, axis=1)
  return 10 * jnp.log10(data_range**2 / mse)


__all__ = [
  "Operator",
  "RedDiffResult",
  "avg_pool",
  "box_mask",
  "gaussian_blur",
  "matrix",
  "measure",
  "measurement_loss",
  "psnr",
  "random_mask",
  "red_diff",
]
