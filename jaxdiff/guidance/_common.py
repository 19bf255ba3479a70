"""What every guidance rule shares: the null condition, batched evaluation, per-sample math.

Conventions of all rules (see :mod:`jaxdiff.guidance`):

* ``denoise(x, t, cond) -> x0_hat``, batch first, ``t`` of shape ``(B,)``.
* Class labels are integers; the unconditional ("null") label is ``-1`` unless a rule
  gets ``null_cond`` (an array broadcast over the batch, or a callable ``cond -> null``).
* The evaluations a step needs are concatenated along the batch axis into one network
  call wherever the inputs allow it; the :class:`~jaxdiff.Network` counts evaluations
  *per sample* (``nfe``).

Bad input (one policy for every rule):

* Hyperparameters are checked in the rule's ``__post_init__`` when concrete
  (:func:`hypers`): finite unless ``inf`` is documented, in range, real scalars (``None``,
  strings, bools and arrays raise naming the argument). Traced ones (a rule built inside a
  ``jit``-compiled sweep) cannot raise: a traced scalar outside its range, or NaN,
  *poisons* the rule's output with NaN instead of giving a plausible wrong sample
  (:func:`poison`).
* ``null_cond`` is a number/array (broadcast over the batch, castable to the condition's
  dtype without truncation) or a callable whose result has the structure, shapes and
  dtypes of ``cond``; anything else raises naming ``null_cond``.
* Class labels of classifier-based rules follow :func:`jaxdiff._validation.check_labels`
  with the null label ``-1`` allowed: concrete labels out of range raise; traced ones
  poison the rows that carry them (NaN); a null label gets no classifier term.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._parameterization import eps_from_x0
from jaxdiff._types import StepContext
from jaxdiff._validation import check_labels, check_output, check_scalar

Array = jax.Array
PyTree = Any


def null_fn(null_cond, rule: str) -> Callable[[PyTree], PyTree]:
  """Builds ``cond -> null cond`` from the ``null_cond`` argument of ``rule``.

  A callable's result must match ``cond`` (structure, leaf shapes and dtypes); a value
  is broadcast to every leaf and must cast to the leaf's dtype without truncation (a
  float null label for integer labels raises). Both are checked at trace time.
  """
  if callable(null_cond):

    def call(cond):
      out = null_cond(cond)
      _check_like_cond(out, cond, rule)
      return out

    return call
  if null_cond is None or isinstance(null_cond, (str, bytes)):
    raise TypeError(
      f"{rule}: null_cond must be a label/array or a callable cond -> null, got {null_cond!r}"
    )
  try:
    value = jnp.asarray(null_cond)
  except (TypeError, ValueError) as e:
    raise TypeError(
      f"{rule}: null_cond must be a label/array or a callable, got {null_cond!r}"
    ) from e
  if not (jnp.issubdtype(value.dtype, jnp.number) or value.dtype == jnp.bool_):
    raise TypeError(f"{rule}: null_cond must be numeric, got dtype {value.dtype}")

  def make(cond):
    if cond is None:
      raise ValueError(
        f"{rule}: this guidance rule needs a conditional batch: pass `cond` to jaxdiff.sample."
      )
    return jax.tree.map(lambda c: _broadcast_null(value, c, rule), cond)

  return make


def _broadcast_null(value: Array, c, rule: str) -> Array:
  dtype = jnp.result_type(c)
  if not jnp.can_cast(value.dtype, dtype, casting="same_kind"):
    raise TypeError(
      f"{rule}: null_cond of dtype {value.dtype} cannot stand for a condition of dtype "
      f"{dtype} without truncation (pass a null of the condition's kind, e.g. -1 for labels)"
    )
  try:
    return jnp.broadcast_to(value.astype(dtype), jnp.shape(c))
  except ValueError as e:
    raise ValueError(
      f"{rule}: null_cond of shape {value.shape} does not broadcast to the condition's "
      f"shape {jnp.shape(c)}"
    ) from e


def _check_like_cond(out, cond, rule: str) -> None:
  if jax.tree.structure(out) != jax.tree.structure(cond):
    raise ValueError(
      f"{rule}: null_cond(cond) must have the structure of cond, got "
      f"{jax.tree.structure(out)} for {jax.tree.structure(cond)}"
    )
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(out), jax.tree.leaves(cond)):
    if jnp.shape(a) != jnp.shape(b) or jnp.result_type(a) != jnp.result_type(b):
      raise ValueError(
        f"{rule}: null_cond(cond){jax.tree_util.keystr(path)} is "
        f"{jnp.result_type(a)}{jnp.shape(a)}, cond has {jnp.result_type(b)}{jnp.shape(b)}"
      )


def hypers(rule: str, obj, **bounds: dict) -> tuple:
  """Checks the scalar hyperparameter fields of the rule ``obj`` (the module's policy).

  ``bounds`` maps each field name to its :func:`~jaxdiff._validation.check_scalar` bounds.
  Concrete values are validated now (naming ``"rule: name"``); the traced ones (a rule
  built inside the user's ``jit``) are returned as ``((name, bounds), ...)``, a hashable
  tuple the rule keeps as a static field for :func:`poison`.
  """
  traced = []
  for name, spec in bounds.items():
    value = getattr(obj, name)
    label = f"{rule}: {name}"
    if isinstance(value, jax.core.Tracer):
      if jnp.ndim(value) != 0:
        raise TypeError(f"{label} must be a scalar, got a traced array of shape {value.shape}")
      traced.append((name, tuple(sorted(spec.items()))))
    check_scalar(label, value, **spec)
  return tuple(traced)


def poison(obj, x: Array, traced: tuple) -> Array:
  """``x``, or NaN everywhere if a hyperparameter that was traced at construction (see
  :func:`hypers`) is NaN or out of its range; nothing is traced when none was."""
  if not traced:
    return x
  ok = jnp.all(jnp.stack([_in_range(getattr(obj, name), **dict(b)) for name, b in traced]))
  return jnp.where(ok, x, jnp.asarray(jnp.nan, x.dtype))


def as_array(value, name: str) -> Array:
  """``jnp.asarray(value)``, or a ``TypeError`` naming ``name`` for a non-numeric value."""
  if value is None or isinstance(value, (str, bytes)):
    raise TypeError(f"{name} must be an array, got {value!r}")
  try:
    return jnp.asarray(value)
  except (TypeError, ValueError) as e:
    raise TypeError(f"{name} must be an array, got {type(value).__name__}: {e}") from e


def weak_output(weak_denoise, x: Array, t: Array, cond, like: Array, rule: str) -> Array:
  """``weak_denoise(x, t, cond)`` in ``like``'s dtype; another shape, a pytree or a
  non-floating output raises at trace time (it must predict x0 for the same batch)."""
  out = check_output(
    weak_denoise(x, t, cond),
    like=like,
    dtype="floating",
    name="weak_denoise(x, t, cond)",
    where=rule,
    like_name="the denoiser's output",
  )
  return jnp.asarray(out).astype(like.dtype)


def _in_range(v, *, lo=-np.inf, hi=np.inf, lo_open=False, hi_open=False, allow_inf=False):
  ok = ~jnp.isnan(v) if allow_inf else jnp.isfinite(v)
  ok &= (v > lo) if lo_open else (v >= lo)
  return ok & ((v < hi) if hi_open else (v <= hi))


def check_classifier(classifier_fn, rule: str) -> None:
  if not callable(classifier_fn):
    raise TypeError(
      f"{rule}: classifier_fn must be callable (returning logits (B, num_classes)), got "
      f"{type(classifier_fn).__name__}"
    )


def check_num_classes(name: str, num_classes) -> int:
  """``num_classes`` fixes the logits' shape: a concrete int >= 2."""
  return check_scalar(name, num_classes, lo=2, integer=True, static=True)


def batch_t(ctx: StepContext, x: Array) -> Array:
  return jnp.broadcast_to(jnp.asarray(ctx.t), (x.shape[0],))


def evaluate(net, x: Array, t: Array, conds: list, **kwargs) -> tuple[list[Array], Any]:
  """Evaluates the :class:`~jaxdiff.Network` ``net`` at the same ``(x, t)`` for several
  conditions in ONE call; returns the outputs and the network after the call."""
  n = len(conds)
  if n == 1:
    out, net = net(x, t, conds[0], **kwargs)
    return [out], net
  cat = jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *conds)
  out, net = net(jnp.concatenate([x] * n, axis=0), jnp.concatenate([t] * n, axis=0), cat, **kwargs)
  return list(jnp.split(out, n, axis=0)), net


def bcast(v: Array, x: Array) -> Array:
  """Reshapes a per-sample ``(B,)`` array to broadcast against ``x`` of shape ``(B, ...)``."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def sum_ps(a: Array) -> Array:
  """Per-sample sum over all non-batch axes."""
  return jnp.sum(a, axis=tuple(range(1, a.ndim)))


def compute_dtype(x: Array):
  return jnp.promote_types(x.dtype, jnp.float32)


def cfg_combine(x_c: Array, x_u: Array, scale) -> Array:
  """``x_u + w (x_c - x_u)``: the affine combination CFG-like rules share."""
  return x_u + jnp.asarray(scale, x_c.dtype) * (x_c - x_u)


def eps(x: Array, x0: Array, ctx: StepContext) -> Array:
  """The noise prediction implied by ``x0`` at this step (``0`` where ``sigma = 0``)."""
  return eps_from_x0(x, x0, jnp.asarray(ctx.alpha, x0.dtype), jnp.asarray(ctx.sigma, x0.dtype))


def labels(cond, num_classes: int, name: str) -> tuple[Array, Array, Array]:
  """The ``(B,)`` class labels a classifier-based rule guides toward, and their masks.

  Returns ``(y, active, valid)``: ``y`` with every null or invalid label replaced by 0 (a
  safe index), ``active`` where a classifier term applies (a valid non-null label) and
  ``valid`` where the label is valid (null included). Concrete labels outside
  ``[0, num_classes)`` other than the null ``-1`` raise (see ``check_labels``); traced ones
  come back with ``valid = False`` and the caller poisons those rows.
  """
  if cond is None or not hasattr(cond, "dtype") and not isinstance(cond, int):
    raise TypeError(f"{name}: cond must be an integer label array of shape (B,), got {cond!r}.")
  out = jnp.asarray(cond)
  if not jnp.issubdtype(out.dtype, jnp.integer) or out.ndim != 1:
    raise TypeError(
      f"{name}: cond must be an integer label array of shape (B,), got {out.dtype}{out.shape}."
    )
  valid = check_labels(f"{name}: cond", cond, num_classes, allow_null=True)
  active = valid & (out >= 0)
  return jnp.where(active, out, 0), active, valid


def logits(classifier_fn, inputs, b: int, num_classes: int, name: str) -> Array:
  """``classifier_fn(*inputs)``, checked to be floating logits ``(B, num_classes)`` at trace
  time (integer logits would have a zero gradient: no guidance, silently)."""
  call = "classifier_fn(x0)" if len(inputs) == 1 else "classifier_fn(x, t)"
  return check_output(
    classifier_fn(*inputs),
    shape=(b, num_classes),
    dtype="floating",
    name=call,
    where=name,
    hint=f"logits of shape (B, num_classes) = ({b}, {num_classes})",
  )


def accepts_keyword(fn, name: str) -> bool | None:
  """Whether ``fn``'s signature takes the keyword argument ``name`` (or ``**kwargs``);
  ``None`` when the signature cannot be read (a builtin, some C callables)."""
  try:
    sig = inspect.signature(fn)
  except (TypeError, ValueError):
    return None
  for p in sig.parameters.values():
    if p.kind is inspect.Parameter.VAR_KEYWORD or (
      p.name == name and p.kind is not inspect.Parameter.POSITIONAL_ONLY
    ):
      return True
  return False
