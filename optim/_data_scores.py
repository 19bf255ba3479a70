"""Data Diet scores (GraNd, EL2N) per training example, and pruning by score."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim._tree import tree_vdot
from optim._validation import (
  as_key,
  check_choice,
  check_flag,
  check_floating,
  check_labels,
  check_scalar,
)

PyTree = Any

__all__ = ["el2n", "grand", "keep_indices"]

VARIANTS = ("hardest", "easiest", "random")


def _check_batch(model: Any, params: PyTree, batch: Any, stacked: bool, where: str):
  """Validates ``(x, y)`` (batch-first, integer labels) and returns it with ``num_classes``."""
  if not callable(model):
    raise TypeError(f"{where}: model must be callable (model(params, x) -> logits)")
  stacked = check_flag("stacked", stacked)
  if not (isinstance(batch, tuple | list) and len(batch) == 2):
    raise TypeError(f"{where}: batch must be a pair (x, y) of inputs and integer labels")
  x, y = batch
  y = jnp.asarray(y)
  if y.ndim != 1:
    raise ValueError(
      f"{where}: batch labels y must have one batch axis, shape (n,); got shape {y.shape}"
    )
  for path, leaf in jax.tree_util.tree_leaves_with_path(x):
    if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != y.shape[0]:
      raise ValueError(
        f"{where}: batch inputs x{jax.tree_util.keystr(path)} must have the batch axis of "
        f"the labels first ({y.shape[0]} examples); got shape {jnp.shape(leaf)}"
      )
  check_floating(params, "params", where, allow_empty=False)
  if stacked:
    runs = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(params)}
    if len(runs) != 1 or None in runs:
      raise ValueError(
        f"{where}: stacked params need one common leading axis of runs on every leaf; got "
        f"leading sizes {sorted(r for r in runs if r is not None)}"
      )
  one = jax.tree.map(lambda p: p[0], params) if stacked else params
  try:
    logits = jax.eval_shape(model, one, jax.tree.map(lambda a: a[:1], x))
  except (TypeError, ValueError) as err:
    hint = " (stacked=True: each run's params lose the leading axis of runs)" if stacked else ""
    raise TypeError(
      f"{where}: calling model(params, x) on one example failed{hint}: {err}"
    ) from err
  if getattr(logits, "ndim", None) != 2 or logits.shape[0] != min(1, y.shape[0]):
    raise TypeError(
      f"{where}: model(params, x) must return batch-first logits of shape (n, classes); "
      f"got {getattr(logits, 'shape', logits)} for one example"
    )
  valid = check_labels("y", y, logits.shape[1])
  return x, y, stacked, valid


def _over_runs(score: Callable, params: PyTree, stacked: bool) -> jax.Array:
  if not stacked:
    return score(params)
  return jnp.mean(jax.vmap(score)(params), axis=0)


def grand(
  model: Callable[[PyTree, Any], jax.Array],
  params: PyTree,
  batch: tuple[Any, jax.Array],
  *,
  stacked: bool = False,
) -> jax.Array:
  """GraNd: the norm of each example's loss gradient, averaged over training runs.

  .. math::
    \\chi_t(x, y) = \\mathbb{E}_{w_t} \\big\\| \\nabla_{w}\\, \\ell\\big(f(w_t, x), y\\big)
    \\big\\|_2, \\qquad \\ell = \\text{softmax cross-entropy},

  where the expectation is over independent runs (initializations) at the same early step
  :math:`t` (Paul et al., Sec. 2; :math:`t = 0` is the score at initialization). The
  per-example gradients are one ``jax.vmap`` of ``jax.grad`` over the batch (and over the
  runs when ``stacked``): no Python loop over examples, and sharded inputs stay sharded.
  Traced labels outside ``[0, classes)`` give NaN scores for those examples.

  Args:
    model: ``model(params, x) -> logits``, batch first (an example is a batch of one).
    params: the network's parameters; with ``stacked=True`` every leaf has a leading axis
      of runs and the scores are averaged over it.
    batch: ``(x, y)``: inputs with a leading batch axis and integer labels of shape ``(n,)``.
    stacked: whether ``params`` holds several runs.

  Returns:
    ``(n,)`` scores, large for examples that move the weights most (the "hard" ones).

  Raises:
    ValueError: labels without a single batch axis, inputs whose leading axis differs,
      concrete labels out of range, stacked params without a common run axis.
    TypeError: a non-callable model, a model that does not return ``(n, classes)``
      logits, float labels, non-floating params.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.data_scores import grand
    >>> model = lambda w, x: x @ w
    >>> x, y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([0, 1])
    >>> grand(model, jnp.zeros((2, 2)), (x, y))  # ||x|| * ||softmax - onehot||
    Array([0.70710677, 1.4142135 ], dtype=float32)

  References:
    Paul, Ganguli & Dziugaite, "Deep Learning on a Data Diet: Finding Important Examples
    Early in Training", arXiv:2107.07075.
  """
  x, y, stacked, valid = _check_batch(model, params, batch, stacked, "grand")
  return _grand(model, stacked, params, x, y, valid)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _grand(model, stacked, params, x, y, valid):
  def score(p):
    def one(xi, yi):
      logits = lambda w: model(w, xi[None])
      loss = lambda w: optax.softmax_cross_entropy_with_integer_labels(logits(w), yi[None])[0]
      g = jax.grad(loss)(p)
      return jnp.sqrt(tree_vdot(g, g))

    return jax.vmap(one)(x, y)

  return jnp.where(valid, _over_runs(score, params, stacked), jnp.nan)


def el2n(
  model: Callable[[PyTree, Any], jax.Array],
  params: PyTree,
  batch: tuple[Any, jax.Array],
  *,
  stacked: bool = False,
) -> jax.Array:
  """EL2N: the L2 norm of each example's error vector, averaged over training runs.

  .. math::
    \\mathrm{EL2N}(x, y) = \\mathbb{E}_{w_t} \\big\\| \\mathrm{softmax}(f(w_t, x))
    - e_y \\big\\|_2

  (Paul et al., Sec. 2), with :math:`e_y` the one-hot label; computed on the logits of
  the whole batch at once (batch-first model), vmapped over runs when ``stacked``. For the
  last layer's bias this is exactly the per-example gradient norm, which is why EL2N
  approximates GraNd at a fraction of the cost. Traced labels outside the class range give
  NaN scores for those examples.

  Args:
    model, params, batch, stacked: as in :func:`grand`.

  Returns:
    ``(n,)`` scores in :math:`[0, \\sqrt{2}]`.

  Raises:
    ValueError, TypeError: as in :func:`grand`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.data_scores import el2n
    >>> model = lambda w, x: x @ w
    >>> x, y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([0, 1])
    >>> el2n(model, jnp.zeros((2, 2)), (x, y))  # uniform prediction: ||(-1/2, 1/2)||
    Array([0.70710677, 0.70710677], dtype=float32)

  References:
    Paul, Ganguli & Dziugaite, "Deep Learning on a Data Diet: Finding Important Examples
    Early in Training", arXiv:2107.07075.
  """
  x, y, stacked, valid = _check_batch(model, params, batch, stacked, "el2n")
  return _el2n(model, stacked, params, x, y, valid)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _el2n(model, stacked, params, x, y, valid):
  def score(p):
    logits = model(p, x)
    err = jax.nn.softmax(logits, axis=-1) - jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
    return jnp.linalg.norm(err, axis=-1)

  return jnp.where(valid, _over_runs(score, params, stacked), jnp.nan)


def keep_indices(
  scores: Any, fraction: float, *, variant: str = "hardest", key: Any = None
) -> np.ndarray:
  """Indices of the examples to keep when pruning a data set by score.

  .. math::
    K = \\operatorname{top}_{\\lceil f n \\rceil}(\\text{scores})

  ``"hardest"`` keeps the :math:`\\lceil f n \\rceil` highest scores (the Data Diet rule:
  prune the easy, low-score examples), ``"easiest"`` the lowest, ``"random"`` a uniform
  random subset (the baseline; needs ``key``). Ties are broken by index (stable sort).

  Args:
    scores: ``(n,)`` per-example scores (one batch axis), finite.
    fraction: the fraction :math:`f \\in (0, 1]` of examples to keep.
    variant: ``"hardest"``, ``"easiest"`` or ``"random"``.
    key: PRNG key for ``"random"`` (typed, raw or int seed).

  Returns:
    A sorted ``int`` NumPy array of :math:`\\lceil f n \\rceil` distinct indices.

  Raises:
    ValueError: scores without exactly one batch axis or with NaN/inf, an empty batch,
      ``fraction`` outside ``(0, 1]``, an unknown ``variant``, ``"random"`` without a key.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.data_scores import keep_indices
    >>> keep_indices(jnp.array([0.1, 0.9, 0.5, 0.3]), 0.5)
    array([1, 2])

  References:
    Paul, Ganguli & Dziugaite, "Deep Learning on a Data Diet: Finding Important Examples
    Early in Training", arXiv:2107.07075.
  """
  variant = check_choice("variant", variant, VARIANTS)
  fraction = check_scalar("fraction", fraction, lo=0.0, hi=1.0, lo_open=True)
  scores = np.asarray(scores)
  if scores.ndim != 1:
    raise ValueError(
      f"scores must have exactly one (batch) axis, shape (n,); got shape {scores.shape}"
    )
  if scores.shape[0] == 0:
    raise ValueError("scores must hold at least one example")
  if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype, np.bool_):
    raise TypeError(f"scores must be real numbers, got dtype {scores.dtype}")
  if not np.all(np.isfinite(scores)):
    bad = int(np.flatnonzero(~np.isfinite(scores))[0])
    raise ValueError(f"scores must be finite; got {scores[bad]} at index {bad}")
  n = scores.shape[0]
  k = int(np.ceil(fraction * n - 1e-9))
  if variant == "random":
    if key is None:
      raise ValueError("keep_indices(variant='random') needs key=...")
    order = np.asarray(jax.random.permutation(as_key(key), n))
  else:
    order = np.argsort(-scores if variant == "hardest" else scores, kind="stable")
  return np.sort(order[:k])
