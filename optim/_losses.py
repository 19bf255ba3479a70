"""StableMax cross-entropy (Prieto et al.): a softmax replacement that does not overflow."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from optim._validation import check_labels, check_scalar, poison


def _log_s(x: jax.Array) -> jax.Array:
  r""":math:`\log s(x)` with :math:`s(x) = x + 1` for :math:`x \ge 0`, :math:`1/(1-x)` else.

  Both branches are evaluated on inputs clamped to their own half-line (the "double where"
  trick), so the unselected branch never produces an infinite value whose zero cotangent
  would turn the gradient into NaN.
  """
  # `where`, not maximum/minimum: those split the derivative 1/2-1/2 at a tie (x = 0).
  # NaN fails ``x >= 0``, so it reaches the negative branch and propagates (a NaN logit
  # used to be read as 0 by both clamps, giving a plausible finite loss).
  pos = jnp.where(x >= 0, x, 0.0)
  neg = jnp.where(x >= 0, 0.0, x)
  return jnp.where(x >= 0, jnp.log1p(pos), -jnp.log1p(-neg))


def stablemax_cross_entropy(logits: jax.Array, labels: jax.Array, *, axis: int = -1) -> jax.Array:
  r"""Cross-entropy of the StableMax distribution, with finite gradients for all finite logits.

  .. math::
    s(x) = \begin{cases} x + 1 & x \ge 0 \\ \dfrac{1}{1 - x} & x < 0 \end{cases}, \qquad
    \operatorname{StableMax}(x)_i = \frac{s(x_i)}{\sum_j s(x_j)}, \\
    \ell(x, y) = -\log \operatorname{StableMax}(x)_y
      = \log \sum_j s(x_j) - \log s(x_y).

  :math:`s` is continuous with a continuous first derivative at 0 (both branches have value
  and slope 1), grows linearly instead of exponentially, so the loss saturates only
  polynomially and "Softmax Collapse" (all probability mass rounding to one class in
  float32) does not occur. :math:`\log s` is computed with ``log1p`` on each branch's own
  half-line, so there is no ``inf * 0`` in the backward pass; a NaN logit makes its
  example's loss NaN (propagated, never read as a finite logit). The sum is accumulated in
  float32 or wider and the loss returned in the logits' dtype (at least float32).

  **Labels.** Class labels are integers in ``[0, num_classes)``. Concrete labels are
  checked: a float or bool array is a ``TypeError``, a label out of range (``-1``
  included: it is not "the last class") a ``ValueError`` naming ``labels``, the range and
  the first offending value. Traced labels (under ``jit``) cannot raise: the loss of an
  example with an invalid label is NaN, and so is its gradient (explicit poisoning, caught
  by ``jax_debug_nans`` or ``checkify``), never the loss of another class.

  Args:
    logits: array ``(..., num_classes)`` (class axis given by ``axis``).
    labels: integer class indices in ``[0, num_classes)``, of shape ``logits.shape``
      without ``axis``.
    axis: the class axis, an int in ``[-logits.ndim, logits.ndim)``.

  Returns:
    The per-example loss, shape of ``labels`` (NaN where a traced label is invalid).

  Raises:
    TypeError: ``labels`` is not an integer array.
    ValueError: a concrete label outside ``[0, num_classes)``, ``labels`` of the wrong
      shape, scalar ``logits`` or an ``axis`` outside the logits.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.losses import stablemax_cross_entropy
    >>> loss = stablemax_cross_entropy(jnp.array([[0.0, 1.0, -1.0]]), jnp.array([1]))
    >>> round(float(loss[0]), 4)  # -log(2 / (1 + 2 + 0.5))
    0.5596

  References:
    Prieto, Barsbey, Mediano, Birdal, "Grokking at the Edge of Numerical Stability",
    ICLR 2025, arXiv:2501.04697 (Section 4, StableMax).
  """
  logits = jnp.asarray(logits)
  if logits.ndim == 0:
    raise ValueError("logits must have a class axis, got a scalar")
  axis = check_scalar("axis", axis, lo=-logits.ndim, hi=logits.ndim - 1, integer=True, static=True)
  axis %= logits.ndim
  valid = check_labels("labels", labels, logits.shape[axis])
  labels = jnp.asarray(labels)
  expected = logits.shape[:axis] + logits.shape[axis + 1 :]
  if labels.shape != expected:
    raise ValueError(
      f"labels shape {labels.shape} does not match logits shape {logits.shape} without "
      f"axis {axis} ({expected})"
    )
  ct = jnp.promote_types(logits.dtype, jnp.float32)
  x = jnp.moveaxis(logits.astype(ct), axis, -1)
  log_s = _log_s(x)
  # log sum_j s(x_j) = logsumexp(log s): stable for very large and very negative logits.
  log_total = jax.nn.logsumexp(log_s, axis=-1)
  index = jnp.where(valid, labels, 0).astype(jnp.int32)[..., None]
  log_sy = jnp.take_along_axis(log_s, index, axis=-1)[..., 0]
  return poison(log_total - log_sy, valid)
