"""Normalized LR+GD: gradient descent with the step divided by the current loss (Tyurin)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim._validation import check_learning_rate, concrete, guard

# scale_by_inverse_loss is stateless; the public name stays for the one release that still
# exports it.
ScaleByLossState = optax.EmptyState


def scale_by_inverse_loss() -> optax.GradientTransformationExtraArgs:
  r"""Divides the update by the current loss, read from the ``value`` extra argument.

  .. math::
    u_t = \frac{g_t}{\max(f(w_t), \text{tiny})}

  where ``tiny`` is the smallest normal number of the loss dtype: a loss that underflowed
  to zero comes with a gradient that did too, so the guarded quotient is 0, never NaN.
  The loss must be non-negative (a logistic or cross-entropy loss): a concrete negative
  ``value`` is a ``ValueError``; a traced one is not checked inside ``jit`` and would flip
  the step.

  Non-finite gradients: propagate. A non-finite loss (``value`` NaN or inf) gives a NaN
  update too, never the silent zero step that :math:`g / \infty` would be. There is no
  state to poison; compose with ``optax.apply_if_finite`` to skip such steps.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes ``value=loss``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim import scale_by_inverse_loss
    >>> tx = scale_by_inverse_loss()
    >>> u, _ = tx.update(jnp.array([1.0, 2.0]), tx.init(None), value=jnp.array(0.5))
    >>> u.tolist()
    [2.0, 4.0]

  References:
    Tyurin, "From Logistic Regression to the Perceptron Algorithm: Exploring Gradient
    Descent with Large Step Sizes", arXiv:2412.08424 (Normalized LR+GD).
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    del params, extra_args
    if value is None:
      raise ValueError(
        "normalized_gd divides the step by the current loss: pass it as the `value` extra "
        "argument, e.g. `tx.update(grads, state, params, value=loss)` (with "
        "`loss, grads = jax.value_and_grad(f)(params)`)."
      )
    if not isinstance(value, (jax.Array, np.ndarray, float, np.floating)):
      raise TypeError(
        f"scale_by_inverse_loss: `value` must be the floating-point scalar loss, got "
        f"{type(value).__name__}"
      )
    value = jnp.asarray(value)
    if value.ndim != 0:
      raise ValueError(f"`value` must be the scalar loss, got shape {value.shape}")
    if not jnp.issubdtype(value.dtype, jnp.floating):
      raise TypeError(f"`value` must be a floating-point loss, got dtype {value.dtype}")
    v = concrete(value)
    if v is not None and v < 0:
      raise ValueError(
        f"`value` is the loss and must be >= 0 (a negative one flips the step), got {v}"
      )
    inv = 1.0 / jnp.maximum(value, jnp.finfo(value.dtype).tiny)
    inv = jnp.where(jnp.isfinite(value), inv, jnp.nan)  # an infinite loss is no zero step
    return jax.tree.map(lambda g: (g * inv).astype(g.dtype), updates), state

  return guard(optax.GradientTransformationExtraArgs(init_fn, update_fn), "scale_by_inverse_loss")


def normalized_gd(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
  r"""Normalized LR+GD: gradient descent whose step is divided by the current loss.

  .. math::
    w_{t+1} = w_t - \frac{\gamma}{f(w_t)}\, \nabla f(w_t).

  On linearly separable logistic regression the loss decays exponentially along the GD path,
  so :math:`\gamma / f(w_t)` grows and the method reaches zero training error in far fewer
  steps than GD with any fixed step (Tyurin shows LR+GD with a large step behaves like the
  Perceptron; the normalization makes the effective step grow as the loss vanishes).

  Non-finite gradients: propagate, and a non-finite loss gives a NaN update (see
  :func:`scale_by_inverse_loss`); compose with ``optax.apply_if_finite`` to skip such steps.

  Args:
    learning_rate: :math:`\gamma`, a float (finite, >= 0) or an optax schedule (a
      schedule's values are not checked: one returning NaN gives NaN updates).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` requires ``value=loss``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optim import normalized_gd
    >>> x = jnp.array([[1.0, 2.0], [-1.0, -1.5], [2.0, 0.5]]); y = jnp.array([1.0, -1.0, 1.0])
    >>> f = lambda w: jnp.mean(jnp.logaddexp(0.0, -y * (x @ w)))
    >>> tx = normalized_gd(1.0); w = jnp.zeros(2); s = tx.init(w)
    >>> for _ in range(5):
    ...   loss, g = jax.value_and_grad(f)(w)
    ...   u, s = tx.update(g, s, w, value=loss); w = optax.apply_updates(w, u)
    >>> bool(jnp.all(jnp.sign(x @ w) == y))
    True

  References:
    Tyurin, "From Logistic Regression to the Perceptron Algorithm: Exploring Gradient
    Descent with Large Step Sizes", arXiv:2412.08424.
  """
  check_learning_rate(learning_rate)
  return optax.chain(scale_by_inverse_loss(), optax.scale_by_learning_rate(learning_rate))
