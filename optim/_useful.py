"""USEFUL: cluster the network's early outputs per class, upsample the slow-learnable cluster.

Nguyen, Haddad, Gan & Mirzasoleiman, "Changing the Training Data Distribution to Reduce
Simplicity Bias Improves In-distribution Generalization", NeurIPS 2024, arXiv:2404.17768.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optim._validation import as_key, check_scalar, is_traced


class KMeansResult(NamedTuple):
  """What :func:`kmeans` returns.

  Attributes:
    centroids: ``(k, d)`` cluster centres.
    assignments: ``(n,)`` int32 index of each point's nearest centre (of ``centroids``).
    inertia: the sum of squared distances of the points to their centres.
    n_iters: Lloyd iterations run.
    converged: whether the centres stopped moving (shift within ``tol``) or the
      assignments stopped changing before ``max_iterations``.
  """

  centroids: jax.Array
  assignments: jax.Array
  inertia: jax.Array
  n_iters: jax.Array
  converged: jax.Array


def _sq_dists(x, c):
  """``(n, k)`` squared distances, clamped at 0 (the expanded form can round below it)."""
  d = jnp.sum(x * x, 1)[:, None] - 2.0 * x @ c.T + jnp.sum(c * c, 1)[None, :]
  return jnp.maximum(d, 0.0)


def _plus_plus(key, x, w, k):
  """k-means++ seeding (Arthur & Vassilvitskii): each next centre drawn with probability
  proportional to its squared distance to the nearest centre so far; ``w`` masks points."""
  n = x.shape[0]
  k0, key = jax.random.split(key)
  first = jax.random.choice(k0, n, p=w / jnp.sum(w))
  centers = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
  d2 = jnp.sum((x - x[first]) ** 2, 1)

  def body(i, carry):
    centers, d2, key = carry
    key, sub = jax.random.split(key)
    p = d2 * w
    total = jnp.sum(p)
    # All masked points already coincide with a centre: fall back to uniform over them.
    p = jnp.where(total > 0, p / jnp.where(total > 0, total, 1.0), w / jnp.sum(w))
    j = jax.random.choice(sub, n, p=p)
    centers = centers.at[i].set(x[j])
    return centers, jnp.minimum(d2, jnp.sum((x - x[j]) ** 2, 1)), key

  centers, _, _ = jax.lax.fori_loop(1, k, body, (centers, d2, key))
  return centers


def _lloyd(x, w, centers, max_iterations, tol):
  """Lloyd's iterations from ``centers`` on the points with weight ``w`` (0 or 1).

  The stopping rule is scikit-learn's: stop when the assignments repeat (strict
  convergence) or when the squared centre shift summed over centres is at most
  ``tol * mean_j var(x[:, j])``; then the points are assigned to the final centres.
  A centre that loses all its points stays where it is.
  """
  wsum = jnp.sum(w)
  mean = jnp.sum(x * w[:, None], 0) / wsum
  tol_abs = tol * jnp.mean(jnp.sum(w[:, None] * (x - mean) ** 2, 0) / wsum)
  k = centers.shape[0]

  def assign(c):
    return jnp.argmin(_sq_dists(x, c), axis=1).astype(jnp.int32)

  def step(c, labels):
    onehot = jax.nn.one_hot(labels, k, dtype=x.dtype) * w[:, None]
    count = jnp.sum(onehot, 0)
    new = (onehot.T @ x) / jnp.where(count > 0, count, 1.0)[:, None]
    return jnp.where((count > 0)[:, None], new, c)

  def cond(state):
    _, _, _, it, done = state
    return (it < max_iterations) & ~done

  def body(state):
    c, labels_old, _, it, _ = state
    labels = assign(c)
    new = step(c, labels)
    strict = jnp.all(jnp.where(w > 0, labels == labels_old, True)) & (it > 0)
    shift = jnp.sum((new - c) ** 2)
    # On strict convergence scikit-learn keeps the centres it had (they are the means).
    c_out = jnp.where(strict, c, new)
    return c_out, labels, strict, it + 1, strict | (shift <= tol_abs)

  init = (centers, jnp.full((x.shape[0],), -1, jnp.int32), jnp.array(False), 0, jnp.array(False))
  c, _, _, it, done = jax.lax.while_loop(cond, body, init)
  labels = assign(c)
  inertia = jnp.sum(jnp.min(_sq_dists(x, c), axis=1) * w)
  return KMeansResult(c, labels, inertia, jnp.asarray(it, jnp.int32), done)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _kmeans(key, x, w, k, max_iterations, tol, init):
  centers = _plus_plus(key, x, w, k) if init is None else init
  return _lloyd(x, w, centers, max_iterations, tol)


def _check_points(points, where: str, name: str = "points") -> np.ndarray:
  if is_traced(points):
    raise TypeError(f"{where}: {name} must be a concrete array (call it outside jit)")
  x = np.asarray(points)
  if x.dtype == object or not np.issubdtype(x.dtype, np.floating):
    raise TypeError(f"{where}: {name} must be a floating array, got dtype {x.dtype}")
  if x.ndim != 2:
    raise ValueError(f"{where}: {name} must have shape (n, d); got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    i = tuple(int(v) for v in np.argwhere(~np.isfinite(x))[0])
    raise ValueError(f"{where}: {name} must be finite; got {x[i]} at index {i}")
  return x


def kmeans(
  points: Any,
  k: int,
  *,
  key: Any,
  max_iterations: int = 300,
  tol: float = 1e-4,
  init: Any = None,
) -> KMeansResult:
  r"""k-means clustering (Lloyd's algorithm with k-means++ seeding), in JAX.

  Minimizes the inertia :math:`\sum_i \min_j \|x_i - \mu_j\|^2` by alternating

  .. math::
    a_i \leftarrow \arg\min_j \|x_i - \mu_j\|^2, \qquad
    \mu_j \leftarrow \frac{1}{|\{i: a_i = j\}|}\sum_{i: a_i = j} x_i,

  from centres seeded by k-means++ (each next centre drawn with probability proportional
  to the squared distance to the nearest centre so far) or given as ``init``. Stops like
  scikit-learn's ``KMeans`` (one run, ``algorithm="lloyd"``): when the assignments repeat,
  or when the summed squared centre shift is at most ``tol`` times the mean per-feature
  variance of the points; the points are then assigned to the final centres. A centre that
  loses all its points stays where it is (scikit-learn moves it to a far point instead).
  One ``lax.while_loop``: jit-compiled once per shape.

  Args:
    points: ``(n, d)`` finite floating points (concrete).
    k: the number of clusters, an integer in ``[1, n]``.
    key: PRNG key of the seeding (typed, raw or an int seed); unused with ``init``.
    max_iterations: cap on Lloyd iterations, an integer ``>= 1``.
    tol: relative tolerance on the centre shift, ``>= 0``.
    init: optional ``(k, d)`` initial centres (skips the seeding).

  Returns:
    A :class:`KMeansResult` (centres, assignments, inertia, ``n_iters``, ``converged``).

  Raises:
    ValueError: points not of shape ``(n, d)`` or not finite, ``k > n`` or ``k < 1``,
      ``init`` of the wrong shape, ``max_iterations < 1``, ``tol < 0``.
    TypeError: non-floating or traced points, a non-integer ``k``, a bad key.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.data_scores import kmeans
    >>> x = jnp.array([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
    >>> r = kmeans(x, 2, key=0)
    >>> sorted(r.centroids[:, 0].tolist()), float(r.inertia), bool(r.converged)
    ([0.0, 10.0], 1.0, True)

  References:
    Lloyd, "Least squares quantization in PCM", IEEE Trans. Inf. Theory 1982; Arthur &
    Vassilvitskii, "k-means++: The Advantages of Careful Seeding", SODA 2007. Used by
    USEFUL (Nguyen et al., arXiv:2404.17768) to split each class by its early outputs.
  """
  x = _check_points(points, "kmeans")
  n = x.shape[0]
  k = check_scalar("k", k, lo=1, integer=True, static=True)
  if k > n:
    raise ValueError(f"kmeans: k={k} clusters need at least k points; got n={n} points")
  max_iterations = check_scalar("max_iterations", max_iterations, lo=1, integer=True, static=True)
  tol = check_scalar("tol", tol, lo=0.0)
  if init is not None:
    init = _check_points(init, "kmeans", "init")
    if init.shape != (k, x.shape[1]):
      raise ValueError(f"kmeans: init must have shape (k, d) = {(k, x.shape[1])}; got {init.shape}")
    init = jnp.asarray(init, x.dtype)
  key = as_key(key)
  xj = jnp.asarray(x)
  return _kmeans(key, xj, jnp.ones((n,), xj.dtype), k, max_iterations, tol, init)


def slow_learnable(
  outputs: Any,
  losses: Any,
  labels: Any,
  *,
  key: Any,
  max_iterations: int = 300,
  tol: float = 1e-4,
) -> np.ndarray:
  r"""USEFUL's split: the examples of each class in the early-output cluster of higher loss.

  After training for a few epochs :math:`t` (the paper: about 5-10% of the run), for each
  class :math:`c` the network's outputs :math:`f(x_i)` of its examples are clustered by
  k-means into two groups :math:`C_1, C_2` (:func:`kmeans`), and the examples of the
  cluster with the larger mean loss are *slow-learnable*:

  .. math::
    S_c = \arg\max_{C \in \{C_1, C_2\}} \frac{1}{|C|} \sum_{i \in C} \ell_i .

  Examples of the other cluster contain the features learned early (fast-learnable).
  :func:`upsample` then repeats :math:`S = \cup_c S_c` once and training restarts from
  scratch on the new distribution, with SGD or SAM (``optax.contrib.sam``). A class with
  one example is not split (nothing is slow). Ties in mean loss pick the first cluster.
  All classes are clustered in one vmapped, jit-compiled call (masks, not Python slicing).

  Args:
    outputs: ``(n, d)`` network outputs (logits) at the separating epoch, finite, concrete.
    losses: ``(n,)`` per-example losses at the same point, finite.
    labels: ``(n,)`` integer class labels, ``>= 0``.
    key: PRNG key of the k-means++ seeding (one subkey per class).
    max_iterations, tol: as in :func:`kmeans`.

  Returns:
    A NumPy bool array ``(n,)``: ``True`` for slow-learnable examples.

  Raises:
    ValueError: shapes that disagree on ``n``, non-finite outputs or losses, negative labels.
    TypeError: non-floating outputs/losses, non-integer labels, traced inputs, a bad key.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.data_scores import slow_learnable
    >>> out = jnp.array([[5.0, 0.0], [5.1, 0.0], [0.2, 0.1], [0.0, 0.2]])
    >>> loss = jnp.array([0.01, 0.02, 0.7, 0.8])
    >>> slow_learnable(out, loss, jnp.array([0, 0, 0, 0]), key=0).tolist()
    [False, False, True, True]

  References:
    Nguyen, Haddad, Gan & Mirzasoleiman, "Changing the Training Data Distribution to
    Reduce Simplicity Bias Improves In-distribution Generalization", NeurIPS 2024,
    arXiv:2404.17768 (Sec. 4, Algorithm 1).
  """
  where = "slow_learnable"
  x = _check_points(outputs, where, "outputs")
  n = x.shape[0]
  if is_traced(losses) or is_traced(labels):
    raise TypeError(f"{where}: losses and labels must be concrete arrays (call it outside jit)")
  loss = np.asarray(losses)
  if loss.dtype == object or not np.issubdtype(loss.dtype, np.floating):
    raise TypeError(f"{where}: losses must be a floating array, got dtype {loss.dtype}")
  if loss.shape != (n,):
    raise ValueError(f"{where}: losses must have shape (n,) = ({n},); got {loss.shape}")
  if not np.all(np.isfinite(loss)):
    i = int(np.flatnonzero(~np.isfinite(loss))[0])
    raise ValueError(f"{where}: losses must be finite; got {loss[i]} at index {i}")
  y = np.asarray(labels)
  if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
    raise TypeError(f"{where}: labels must hold integer class labels, got dtype {y.dtype}")
  if y.shape != (n,):
    raise ValueError(f"{where}: labels must have shape (n,) = ({n},); got {y.shape}")
  if np.any(y < 0):
    i = int(np.flatnonzero(y < 0)[0])
    raise ValueError(f"{where}: class labels must be >= 0; got {y[i]} at index {i}")
  max_iterations = check_scalar("max_iterations", max_iterations, lo=1, integer=True, static=True)
  tol = check_scalar("tol", tol, lo=0.0)
  key = as_key(key)
  classes = np.unique(y)
  masks = jnp.asarray(y[None, :] == classes[:, None], x.dtype)
  keys = jax.random.split(key, len(classes))
  slow = np.array(
    _split_classes(keys, jnp.asarray(x), masks, jnp.asarray(loss), max_iterations, tol)
  )
  splittable = np.asarray(masks.sum(1) >= 2)[:, None]  # a class of one example is not split
  return np.any(slow & splittable & np.asarray(masks, bool), axis=0)


@functools.partial(jax.jit, static_argnums=(4,))
def _split_classes(keys, x, masks, loss, max_iterations, tol):
  def one(key, w):
    r = _lloyd(x, w, _plus_plus(key, x, w, 2), max_iterations, tol)
    member = jax.nn.one_hot(r.assignments, 2, dtype=x.dtype) * w[:, None]
    count = jnp.sum(member, 0)
    mean_loss = (member.T @ loss) / jnp.where(count > 0, count, 1.0)
    mean_loss = jnp.where(count > 0, mean_loss, -jnp.inf)  # an empty cluster is never slow
    slow = jnp.argmax(mean_loss)
    return (r.assignments == slow) & (w > 0)

  return jax.vmap(one)(keys, masks)


def upsample(slow: Any, factor: int = 2) -> np.ndarray:
  r"""Indices of the training set with the slow-learnable examples repeated ``factor`` times.

  .. math::
    I = (0, 1, \dots, n - 1) \,\Vert\, \underbrace{S \,\Vert \cdots \Vert\, S}_{
        \text{factor} - 1}

  USEFUL upsamples the slow-learnable examples :math:`S` (:func:`slow_learnable`) once
  (``factor=2``: each appears twice) and restarts training on ``x[I], y[I]``; an epoch then
  has :math:`n + (\text{factor} - 1)|S|` examples.

  Args:
    slow: ``(n,)`` bool mask of the examples to repeat.
    factor: how many times each selected example appears in total, an integer ``>= 1``
      (1: the original indices).

  Returns:
    A NumPy int array: every index once, followed by the selected ones ``factor - 1`` more
    times (ascending within each repetition).

  Raises:
    ValueError: a mask that is not one-dimensional, ``factor < 1``.
    TypeError: a non-bool mask, a non-integer factor.

  Example:
    >>> import numpy as np
    >>> from optim.data_scores import upsample
    >>> upsample(np.array([False, True, False, True])).tolist()
    [0, 1, 2, 3, 1, 3]

  References:
    Nguyen, Haddad, Gan & Mirzasoleiman, arXiv:2404.17768 (Sec. 4: upsampling factor
    :math:`k`, 2 in the paper's main experiments).
  """
  s = np.asarray(slow)
  if s.dtype != bool:
    raise TypeError(f"slow must be a bool mask, got dtype {s.dtype}")
  if s.ndim != 1:
    raise ValueError(f"slow must be a mask of shape (n,); got shape {s.shape}")
  factor = check_scalar("factor", factor, lo=1, integer=True, static=True)
  extra = np.flatnonzero(s)
  return np.concatenate([np.arange(s.shape[0])] + [extra] * (factor - 1)).astype(np.int64)
