"""What every guidance rule shares: the null condition, batched evaluation, per-sample math.

Conventions of all rules (see :mod:`jaxdiff.guidance`):

* ``denoise(x, t, cond) -> x0_hat``, batch first, ``t`` of shape ``(B,)``.
* Class labels are integers; the unconditional ("null") label is ``-1`` unless a rule
  gets ``null_cond`` (an array broadcast over the batch, or a callable ``cond -> null``).
* The evaluations a step needs are concatenated along the batch axis into one network
  call wherever the inputs allow it; ``nfe`` counts evaluations *per sample*.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff._parameterization import eps_from_x0
from jaxdiff._types import Denoiser, StepContext
from jaxdiff._validation import check_scalar

Array = jax.Array
PyTree = Any


def null_fn(null_cond) -> Callable[[PyTree], PyTree]:
  """Builds ``cond -> null cond`` from the ``null_cond`` argument of a rule."""
  if callable(null_cond):
    return null_cond

  def make(cond):
    if cond is None:
      raise ValueError(
        "this guidance rule needs a conditional batch: pass `cond` to jaxdiff.sample."
      )
    return jax.tree.map(lambda c: jnp.broadcast_to(jnp.asarray(null_cond, c.dtype), c.shape), cond)

  return make


def check_num_classes(name: str, num_classes) -> int:
  """``num_classes`` fixes the logits' shape: a concrete int >= 2."""
  return check_scalar(name, num_classes, lo=2, integer=True, static=True)


def batch_t(ctx: StepContext, x: Array) -> Array:
  return jnp.broadcast_to(jnp.asarray(ctx.t), (x.shape[0],))


def evaluate(denoise: Denoiser, x: Array, t: Array, conds: list, **kwargs) -> list[Array]:
  """Evaluates ``denoise`` at the same ``(x, t)`` for several conditions in ONE call."""
  n = len(conds)
  if n == 1:
    return [denoise(x, t, conds[0], **kwargs)]
  cat = jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *conds)
  out = denoise(jnp.concatenate([x] * n, axis=0), jnp.concatenate([t] * n, axis=0), cat, **kwargs)
  return list(jnp.split(out, n, axis=0))


def bcast(v: Array, x: Array) -> Array:
  """Reshapes a per-sample ``(B,)`` array to broadcast against ``x`` of shape ``(B, ...)``."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def sum_ps(a: Array) -> Array:
  """Per-sample sum over all non-batch axes."""
  return jnp.sum(a, axis=tuple(range(1, a.ndim)))


def nfe(n) -> Array:
  return jnp.asarray(n, jnp.int32)


def compute_dtype(x: Array):
  return jnp.promote_types(x.dtype, jnp.float32)


def stateless_init(x_T, cond):
  del x_T, cond
  return ()


def cfg_combine(x_c: Array, x_u: Array, scale) -> Array:
  """``x_u + w (x_c - x_u)``: the affine combination CFG-like rules share."""
  return x_u + jnp.asarray(scale, x_c.dtype) * (x_c - x_u)


def eps(x: Array, x0: Array, ctx: StepContext) -> Array:
  """The noise prediction implied by ``x0`` at this step (``0`` where ``sigma = 0``)."""
  return eps_from_x0(x, x0, jnp.asarray(ctx.alpha, x0.dtype), jnp.asarray(ctx.sigma, x0.dtype))


def labels(cond, name: str) -> Array:
  """The integer ``(B,)`` class labels a classifier-based rule guides toward."""
  if cond is None or not isinstance(cond, jax.Array | int) and not hasattr(cond, "dtype"):
    raise TypeError(f"{name}: cond must be an integer label array of shape (B,), got {cond!r}.")
  out = jnp.asarray(cond)
  if not jnp.issubdtype(out.dtype, jnp.integer) or out.ndim != 1:
    raise TypeError(
      f"{name}: cond must be an integer label array of shape (B,), got {out.dtype}{out.shape}."
    )
  return out


def logits(classifier_fn, inputs, b: int, num_classes: int, name: str) -> Array:
  """``classifier_fn(*inputs)``, checked to be ``(B, num_classes)`` at trace time."""
  out = classifier_fn(*inputs)
  if jnp.shape(out) != (b, num_classes):
    raise ValueError(
      f"{name}: the classifier must return logits of shape (B, num_classes) = "
      f"({b}, {num_classes}), got {jnp.shape(out)}."
    )
  return out
