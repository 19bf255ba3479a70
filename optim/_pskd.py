"""PS-KD (Kim et al. 2021): targets refined progressively by the model's own past predictions."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from optim._validation import check_scalar, is_traced, poison


def pskd_alpha(epoch: Any, num_epochs: int, alpha_T: float = 0.8) -> jax.Array:
  r"""PS-KD's weight of the past predictions at an epoch: linear growth to :math:`\alpha_T`.

  .. math:: \alpha_t = \alpha_T \, \frac{t}{T}, \qquad t = \text{epoch} + 1 \in \{1, \dots, T\},

  the paper's schedule as the official loop computes it (``alpha_T * ((epoch + 1) /
  end_epoch)`` with a 0-based ``epoch``). Use it with :func:`pskd_targets`.

  Args:
    epoch: the 0-based epoch, an integer in ``[0, num_epochs)`` (may be traced; a concrete
      value out of range is a ``ValueError``).
    num_epochs: :math:`T \ge 1`, the epochs of the run (an integer).
    alpha_T: :math:`\alpha_T \in [0, 1]` (the paper's default 0.8). Traced values are not
      checked here; :func:`pskd_targets` poisons a traced weight outside ``[0, 1]``.

  Returns:
    :math:`\alpha_t`, a float32 (float64 under x64) scalar array.

  Example:
    >>> from optim.losses import pskd_alpha
    >>> [round(float(pskd_alpha(e, 4)), 2) for e in range(4)]
    [0.2, 0.4, 0.6, 0.8]

  References:
    Kim, Ji, Yoon, Hwang, "Self-Knowledge Distillation with Progressive Refinement of
    Targets", ICCV 2021, arXiv:2006.12000 (Section 3.2); official code
    github.com/lgcnsai/PS-KD-Pytorch (``main.py``).
  """
  num_epochs = check_scalar("num_epochs", num_epochs, lo=1, integer=True, static=True)
  check_scalar("alpha_T", alpha_T, lo=0.0, hi=1.0)
  if not is_traced(epoch):
    if isinstance(epoch, bool) or not jnp.issubdtype(jnp.result_type(epoch), jnp.integer):
      raise TypeError(f"epoch must be an integer, got {epoch!r}")
    check_scalar("epoch", epoch, lo=0, hi=num_epochs - 1, integer=True)
  elif not jnp.issubdtype(jnp.result_type(epoch), jnp.integer):
    raise TypeError(f"epoch must be an integer array, got dtype {jnp.result_type(epoch)}")
  dtype = jnp.promote_types(jnp.result_type(float), jnp.float32)
  return jnp.asarray(alpha_T, dtype) * (jnp.asarray(epoch, dtype) + 1) / num_epochs


def pskd_targets(labels: jax.Array, predictions: jax.Array, alpha: Any) -> jax.Array:
  r"""PS-KD's soft targets: the labels mixed with the model's predictions of the last epoch.

  .. math:: \tilde y_t = (1 - \alpha_t)\, y + \alpha_t\, p_{t-1}(x),

  with :math:`y` the one-hot label, :math:`p_{t-1}(x)` the softmax the model gave the same
  example in the previous epoch (the official code stores it per example during the
  training pass; at the first epoch it is the one-hot label itself) and :math:`\alpha_t`
  from :func:`pskd_alpha`. The loss is the cross-entropy with these targets,
  ``optax.softmax_cross_entropy(logits, targets)`` averaged over the batch (the official
  ``Custom_CrossEntropy_PSKD``). The model acts as its own teacher, and the targets of hard
  examples (where its past predictions disagree with the label) are softened most, which the
  paper reports improves accuracy and calibration. It is :func:`optax.smooth_labels` with the
  uniform distribution replaced by the past predictions. ``predictions`` are treated as
  constants (``stop_gradient``).

  Args:
    labels: one-hot labels (floating point, ``(..., num_classes)``), as
      ``optax.smooth_labels`` takes them.
    predictions: :math:`p_{t-1}`, probabilities of the same shape.
    alpha: :math:`\alpha_t \in [0, 1]`, a scalar. A concrete value outside is a
      ``ValueError``; a traced one outside gives NaN targets (poisoned, never a silent
      extrapolation).

  Returns:
    The soft targets, ``labels``' shape, in the promoted floating dtype.

  Raises:
    TypeError: integer/bool labels or predictions, or a non-scalar ``alpha``.
    ValueError: shapes that differ, or a concrete ``alpha`` outside ``[0, 1]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.losses import pskd_targets
    >>> y = jnp.array([[0.0, 1.0, 0.0]])
    >>> p = jnp.array([[0.2, 0.5, 0.3]])
    >>> [round(float(v), 2) for v in pskd_targets(y, p, 0.4)[0]]
    [0.08, 0.8, 0.12]

  References:
    Kim, Ji, Yoon, Hwang, "Self-Knowledge Distillation with Progressive Refinement of
    Targets", ICCV 2021, arXiv:2006.12000 (Eq. 6-7); official code
    github.com/lgcnsai/PS-KD-Pytorch (``main.py``, ``loss/pskd_loss.py``).
  """
  labels, predictions = jnp.asarray(labels), jnp.asarray(predictions)
  for name, x in (("labels", labels), ("predictions", predictions)):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      hint = " (one-hot: jax.nn.one_hot(labels, num_classes))" if name == "labels" else ""
      raise TypeError(f"pskd_targets: {name} must be floating point{hint}, got dtype {x.dtype}")
  if labels.shape != predictions.shape:
    raise ValueError(
      f"pskd_targets: predictions shape {predictions.shape} differs from labels shape "
      f"{labels.shape} (one probability vector per one-hot label)"
    )
  if jnp.ndim(alpha) != 0:
    raise TypeError(f"pskd_targets: alpha must be a scalar, got shape {jnp.shape(alpha)}")
  check_scalar("alpha", alpha, lo=0.0, hi=1.0)
  dtype = jnp.result_type(labels, predictions)
  a = jnp.asarray(alpha, dtype)
  out = (1 - a) * labels + a * jax.lax.stop_gradient(predictions)
  if is_traced(alpha):
    out = poison(out, jnp.broadcast_to((a >= 0) & (a <= 1), out.shape))
  return out
