"""A hidden layer built by gradient boosting (Emfevid & Nyberg): blocks fitted one at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim._tpsgd import _check_finite
from optim._validation import as_key, check_choice, check_labels, check_scalar


class BoostedLayer(NamedTuple):
  """The merged layer of :func:`boost_layer`: ``J`` blocks of ``m`` units each.

  Fields: ``w`` ``(d, J, m)`` and ``b`` ``(J, m)`` (the hidden units of block ``j`` in
  ``[:, j]``), ``v`` ``(J, m, k)`` (block ``j``'s output weights, shrinkage included),
  ``c`` ``(k,)`` (the loss-minimising constant :math:`F_0`), ``losses`` ``(J,)`` (each
  block's final pseudo-residual fit, mean squared error). Reshaped to ``(d, J * m)``,
  ``(J * m,)`` and ``(J * m, k)`` it is one ordinary dense layer and its output layer.
  """

  w: jax.Array
  b: jax.Array
  v: jax.Array
  c: jax.Array
  losses: jax.Array


def boosted_layer_apply(
  layer: BoostedLayer,
  features: jax.Array,
  *,
  activation: Callable = jnp.tanh,
  num_blocks: int | None = None,
) -> jax.Array:
  r"""The boosted layer's output :math:`F_J(x) = F_0 + \sum_{j \le J} \sigma(x W_j + b_j)
  v_j`, with the later blocks switched off when ``num_blocks`` is smaller than ``J``.

  Switching off units ``> num_blocks * m`` of the merged layer gives exactly the boosting
  model after ``num_blocks`` stages (the paper's test-time trade of size for accuracy).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optim.loops import boost_layer, boosted_layer_apply
    >>> x, y = jnp.linspace(-1, 1, 20)[:, None], jnp.sin(3 * jnp.linspace(-1, 1, 20))[:, None]
    >>> layer = boost_layer(x, y, num_blocks=3, block_size=4, optimizer=optax.adam(0.05),
    ...                     num_steps=100, key=0)
    >>> boosted_layer_apply(layer, x, num_blocks=1).shape
    (20, 1)

  References:
    Emfevid, Nyberg, "Sequential Training of Neural Networks with Gradient Boosting",
    arXiv:2109.12004 (IEEE Access 2023)
  """
  num_total = layer.w.shape[1]
  n = num_total if num_blocks is None else num_blocks
  check_scalar("num_blocks", n, lo=0, hi=num_total, integer=True, static=True)
  d, _, m = layer.w.shape
  w = layer.w[:, :n].reshape(d, n * m)
  h = activation(features @ w + layer.b[:n].reshape(n * m))
  return h @ layer.v[:n].reshape(n * m, layer.v.shape[-1]) + layer.c


def boost_layer(
  features: jax.Array,
  targets: jax.Array,
  *,
  num_blocks: int,
  block_size: int,
  optimizer: optax.GradientTransformation,
  num_steps: int,
  key: Any,
  loss: str = "squared",
  num_classes: int | None = None,
  activation: Callable = jnp.tanh,
  shrinkage: float = 1.0,
) -> BoostedLayer:
  r"""Builds a hidden layer block by block, each block fitted to the pseudo-residuals.

  Gradient boosting with small networks as base learners: start from the
  loss-minimising constant :math:`F_0` (the mean target for the squared loss, the log
  class frequencies for cross-entropy), then for :math:`j = 1, \dots, J`

  .. math::
    r_{j} = -\frac{\partial \ell(y, F)}{\partial F}\Big|_{F = F_{j-1}(x)}, \qquad
    (W_j, b_j, v_j) = \arg\min \tfrac{1}{N} \textstyle\sum_n
    \lVert r_{j,n} - \sigma(x_n W_j + b_j)\, v_j \rVert^2, \qquad
    F_j = F_{j-1} + \nu\, \sigma(x W_j + b_j)\, v_j,

  with :math:`r = y - F` for :math:`\ell = \tfrac12 \lVert y - F \rVert^2` and
  :math:`r = \mathrm{onehot}(y) - \mathrm{softmax}(F)` for cross-entropy; :math:`\nu` is
  ``shrinkage``. Each block (``block_size`` units, :math:`W_j \sim \mathcal N(0, 1/d)`,
  :math:`b_j = 0`, :math:`v_j = 0`) is fitted by ``num_steps`` full-batch steps of
  ``optimizer`` (any optax transformation; ``GradientTransformationExtraArgs`` such as
  ``optax.lbfgs()`` receive ``value``, ``grad`` and ``value_fn``) in one ``lax.scan``;
  earlier blocks stay frozen. The blocks are then one layer (:class:`BoostedLayer`)
  whose later units can be switched off at test time (:func:`boosted_layer_apply`).

  Args:
    features: the inputs of the layer, ``(N, d)`` (e.g. the previous layer's output).
    targets: ``(N, k)`` floating targets (``loss="squared"``) or ``(N,)`` integer labels
      (``loss="cross_entropy"``, with ``num_classes``).
    num_blocks: :math:`J \ge 1`.
    block_size: units per block, :math:`m \ge 1`.
    optimizer: the optax transformation that fits each block.
    num_steps: steps per block.
    key: PRNG key for the blocks' initial weights.
    loss: ``"squared"`` or ``"cross_entropy"``.
    num_classes: the number of classes (``loss="cross_entropy"`` only).
    activation: the hidden units' :math:`\sigma`.
    shrinkage: :math:`\nu \in (0, 1]`.

  Returns:
    The :class:`BoostedLayer`.

  Raises:
    ValueError: bad sizes or counts, targets that do not match ``features``, labels out
      of range, a non-finite pseudo-residual fit.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optim.loops import boost_layer
    >>> x, y = jnp.linspace(-1, 1, 20)[:, None], jnp.sin(3 * jnp.linspace(-1, 1, 20))[:, None]
    >>> layer = boost_layer(x, y, num_blocks=3, block_size=4, optimizer=optax.adam(0.05),
    ...                     num_steps=200, key=0)
    >>> bool(layer.losses[-1] < layer.losses[0])
    True

  References:
    Emfevid, Nyberg, "Sequential Training of Neural Networks with Gradient Boosting",
    arXiv:2109.12004 (IEEE Access 2023)
  """
  check_choice("loss", loss, ("squared", "cross_entropy"))
  check_scalar("num_blocks", num_blocks, lo=1, integer=True, static=True)
  check_scalar("block_size", block_size, lo=1, integer=True, static=True)
  check_scalar("num_steps", num_steps, lo=1, integer=True, static=True)
  check_scalar("shrinkage", shrinkage, lo=0.0, hi=1.0, lo_open=True)
  x = jnp.asarray(features)
  if x.ndim != 2 or x.shape[0] == 0 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"features must be a non-empty floating (N, d) array, got {x.dtype}{x.shape}")
  n, d = x.shape
  if loss == "squared":
    if num_classes is not None:
      raise ValueError('num_classes is for loss="cross_entropy" only')
    y = jnp.asarray(targets)
    if y.ndim != 2 or y.shape[0] != n or not jnp.issubdtype(y.dtype, jnp.floating):
      raise ValueError(f"targets must be floating (N, k) with N = {n}, got {y.dtype}{y.shape}")
    f0 = jnp.mean(y, 0)

    def residual(f):
      return y - f
  else:
    if num_classes is None:
      raise ValueError('num_classes must be given for loss="cross_entropy"')
    check_scalar("num_classes", num_classes, lo=2, integer=True, static=True)
    check_labels("targets", targets, num_classes)
    if jnp.shape(targets) != (n,):
      raise ValueError(f"targets must be labels of shape ({n},), got {jnp.shape(targets)}")
    y = jax.nn.one_hot(targets, num_classes, dtype=x.dtype)
    f0 = jnp.log(jnp.maximum(jnp.mean(y, 0), jnp.finfo(x.dtype).tiny))

    def residual(f):
      return y - jax.nn.softmax(f, -1)

  k = y.shape[1]
  m = int(block_size)

  def block_out(p, x):
    return activation(x @ p["w"] + p["b"]) @ p["v"]

  def fit(r, key):
    p = {
      "w": jax.random.normal(key, (d, m), x.dtype) / np.sqrt(d).astype(x.dtype),
      "b": jnp.zeros((m,), x.dtype),
      "v": jnp.zeros((m, k), x.dtype),
    }

    def obj(p):
      return jnp.mean(jnp.sum((r - block_out(p, x)) ** 2, -1))

    def step(carry, _):
      p, s = carry
      value, g = jax.value_and_grad(obj)(p)
      u, s = optimizer.update(g, s, p, value=value, grad=g, value_fn=obj)
      return (optax.apply_updates(p, u), s), value

    (p, _), _ = jax.lax.scan(step, (p, optimizer.init(p)), None, length=int(num_steps))
    return p, obj(p)

  if not isinstance(optimizer, optax.GradientTransformationExtraArgs):
    optimizer = optax.with_extra_args_support(optimizer)
  fit = jax.jit(fit)
  f = jnp.broadcast_to(f0, (n, k))
  blocks, losses = [], []
  for bkey in jax.random.split(as_key(key), int(num_blocks)):
    p, value = fit(residual(f), bkey)
    p = dict(p, v=shrinkage * p["v"])
    f = f + block_out(p, x)
    blocks.append(p)
    losses.append(value)
  losses = jnp.stack(losses)
  _check_finite(losses, "boost_layer", "pseudo-residual fit of block {i}")
  return BoostedLayer(
    w=jnp.stack([p["w"] for p in blocks], 1),
    b=jnp.stack([p["b"] for p in blocks]),
    v=jnp.stack([p["v"] for p in blocks]),
    c=f0,
    losses=losses,
  )
