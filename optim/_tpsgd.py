"""tpSGD (Lomnitz et al. 2022): layer-wise SGD on local targets projected from the labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim._validation import as_key, check_choice, check_labels, check_scalar, is_traced

_WHERE = "tpsgd_grads"


def mlp_init(sizes: Sequence[int], *, key: Any, dtype: Any = jnp.float32) -> list[dict]:
  r"""Parameters of a fully connected network with layer widths ``sizes`` (input first).

  Layer :math:`i` is :math:`z_i = h_{i-1} W_i + b_i` with :math:`W_i` drawn from
  :math:`\mathcal{N}(0, 1/n_{i-1})` (LeCun normal) and :math:`b_i = 0`; the list holds one
  ``{"w": (n_{i-1}, n_i), "b": (n_i,)}`` dict per layer, the last one the output layer.
  The parameters :func:`tpsgd_grads` and :func:`mlp_apply` take.

  Args:
    sizes: the widths, input first and number of classes last (at least two entries).
    key: PRNG key (typed, raw or an int seed).
    dtype: the parameters' dtype.

  Returns:
    A list of ``len(sizes) - 1`` layer dicts.

  Example:
    >>> from optim.local import mlp_init
    >>> [p["w"].shape for p in mlp_init([64, 32, 10], key=0)]
    [(64, 32), (32, 10)]

  References:
    Lomnitz, Daniels, Zhang, Piacentino, "Learning with Local Gradients at the Edge",
    AAAI 2023, https://arxiv.org/abs/2208.08503
  """
  sizes = _check_sizes(sizes)
  keys = jax.random.split(as_key(key), len(sizes) - 1)
  return [
    {
      "w": jax.random.normal(k, (n_in, n_out), dtype) / np.sqrt(n_in).astype(dtype),
      "b": jnp.zeros((n_out,), dtype),
    }
    for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True)
  ]


def mlp_apply(params: Sequence[dict], x: jax.Array, *, activation: Callable = jnp.tanh):
  r"""Logits of the network of :func:`mlp_init`: :math:`h_i = \sigma(h_{i-1} W_i + b_i)`
  for the hidden layers, the output layer linear.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.local import mlp_apply, mlp_init
    >>> mlp_apply(mlp_init([4, 8, 3], key=0), jnp.ones((5, 4))).shape
    (5, 3)
  """
  h = x
  for layer in params[:-1]:
    h = activation(h @ layer["w"] + layer["b"])
  return h @ params[-1]["w"] + params[-1]["b"]


def tpsgd_projections(
  sizes: Sequence[int], *, key: Any, scale: float = 1.0, dtype: Any = jnp.float32
) -> list[jax.Array]:
  r"""The fixed random projections :math:`P_i` of tpSGD, one per hidden layer.

  For the network ``sizes = [n_0, n_1, ..., n_L, C]`` (input, hidden widths, classes),
  :math:`P_i \in \mathbb{R}^{C \times n_i}` for :math:`i = 1, \dots, L`, entries drawn
  uniformly from :math:`[-s, s]` (``scale``) and never trained. Hidden layer :math:`i`
  is trained towards the target :math:`t_i = y^* P_i` (a row of :math:`P_i` for a
  one-hot label :math:`y^*`); with ``tanh`` units and :math:`s \le 1` every target is
  reachable.

  Args:
    sizes: the network's widths, as given to :func:`mlp_init`.
    key: PRNG key (typed, raw or an int seed).
    scale: the half-width :math:`s > 0` of the uniform distribution.
    dtype: the projections' dtype.

  Returns:
    A list of ``len(sizes) - 2`` arrays, ``P_i`` of shape ``(sizes[-1], sizes[i])``.

  Example:
    >>> from optim.local import tpsgd_projections
    >>> [p.shape for p in tpsgd_projections([64, 32, 16, 10], key=1)]
    [(10, 32), (10, 16)]

  References:
    Lomnitz et al., "Learning with Local Gradients at the Edge", AAAI 2023,
    https://arxiv.org/abs/2208.08503 (target projection: Frenkel, Lefebvre, Bol,
    "Learning without feedback: fixed random learning signals allow for feedforward
    training of deep neural networks", Frontiers in Neuroscience 2021).
  """
  sizes = _check_sizes(sizes)
  check_scalar("scale", scale, lo=0.0, lo_open=True)
  num_classes, hidden = sizes[-1], sizes[1:-1]
  keys = jax.random.split(as_key(key), max(len(hidden), 1))
  return [
    jax.random.uniform(k, (num_classes, n), dtype, -scale, scale)
    for k, n in zip(keys, hidden, strict=False)
  ]


def tpsgd_grads(
  params: Sequence[dict],
  projections: Sequence[jax.Array],
  x: jax.Array,
  labels: jax.Array,
  *,
  activation: Callable = jnp.tanh,
  variant: str = "l2",
) -> tuple[list[dict], jax.Array]:
  r"""Local gradients of tpSGD: each layer against its own target, forward passes only.

  For a batch of :math:`B` inputs :math:`h_0 = x` with one-hot labels :math:`y^*`,
  hidden layer :math:`i = 1, \dots, L` computes :math:`z_i = h_{i-1} W_i + b_i`,
  :math:`h_i = \sigma(z_i)` and its local loss against the projected target
  :math:`t_i = y^* P_i` (``projections[i-1]``, see :func:`tpsgd_projections`),

  .. math::
    J_i = \frac{1}{2B} \sum_b \lVert t_{i,b} - h_{i,b} \rVert_2^2 \;\; (\ell_2), \qquad
    J_i = \frac{1}{B} \sum_b \lVert t_{i,b} - h_{i,b} \rVert_1 \;\; (\ell_1),

  whose gradient with the layer's input held fixed is the delta rule of the paper,

  .. math::
    \nabla_{W_i} J_i = -\tfrac{1}{B}\, h_{i-1}^\top \big(r_i \odot \sigma'(z_i)\big),
    \quad \nabla_{b_i} J_i = -\tfrac{1}{B} \textstyle\sum_b r_{i,b} \odot \sigma'(z_{i,b}),
    \quad r_i = t_i - h_i \;\; (\ell_2), \;\; r_i = \operatorname{sign}(t_i - h_i)
    \;\; (\ell_1).

  The output layer :math:`z_{L+1} = h_L W_{L+1} + b_{L+1}` is trained on the task loss
  itself, softmax cross-entropy with the labels (mean over the batch). No gradient flows
  from one layer into another (each layer's input is a ``stop_gradient``), so a layer's
  update needs only its own input and output: nothing of the network is kept for a
  backward pass, which is the paper's memory claim (measured in
  ``bench/repro_beyond_backprop.py``). Feed the gradients to ``optax.sgd`` for the
  paper's update :math:`w_i \leftarrow w_i - \eta \nabla_{w_i} J_i`, or to any optax
  optimizer.

  Args:
    params: the layers, as built by :func:`mlp_init` (hidden layers, then the output layer).
    projections: one fixed ``(num_classes, width)`` matrix per hidden layer.
    x: inputs, shape ``(batch, sizes[0])``.
    labels: integer class labels in ``[0, num_classes)``, shape ``(batch,)``.
    activation: the hidden units' :math:`\sigma` (differentiable, elementwise).
    variant: ``"l2"`` (the squared-error local loss) or ``"l1"`` (its sign variant).

  Returns:
    ``(grads, losses)``: gradients shaped like ``params`` and the local losses, shape
    ``(len(params),)`` (the hidden layers' :math:`J_i`, then the output cross-entropy).

  Raises:
    ValueError: projections that do not match the layers (number or shape), ``x`` of the
      wrong width, labels out of range, or (when the values are concrete) a non-finite
      local loss or gradient. Under ``jit`` invalid labels poison the result with NaN
      (the class-label policy) and non-finite losses are returned as they are.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optim.local import mlp_init, tpsgd_grads, tpsgd_projections
    >>> sizes = [4, 16, 3]
    >>> params, P = mlp_init(sizes, key=0), tpsgd_projections(sizes, key=1)
    >>> x, y = jnp.ones((8, 4)), jnp.arange(8) % 3
    >>> tx = optax.sgd(0.1)
    >>> state = tx.init(params)
    >>> grads, losses = tpsgd_grads(params, P, x, y)
    >>> updates, state = tx.update(grads, state)
    >>> params = optax.apply_updates(params, updates)
    >>> losses.shape
    (2,)

  References:
    Lomnitz, Daniels, Zhang, Piacentino, "Learning with Local Gradients at the Edge",
    AAAI 2023, https://arxiv.org/abs/2208.08503
  """
  check_choice("variant", variant, ("l2", "l1"))
  params, projections = list(params), list(projections)
  if len(params) < 1:
    raise ValueError("params must hold at least the output layer, got an empty list")
  num_classes = _check_layers(params, projections, x)
  valid = check_labels("labels", labels, num_classes)
  if jnp.shape(labels) != (x.shape[0],):
    raise ValueError(
      f"labels must have shape ({x.shape[0]},) like x's batch, got {jnp.shape(labels)}"
    )
  onehot = _poison_rows(jax.nn.one_hot(labels, num_classes, dtype=x.dtype), valid)

  def hidden_loss(layer, h, target):
    out = activation(h @ layer["w"] + layer["b"])
    r = target - out
    per = 0.5 * jnp.sum(r**2, -1) if variant == "l2" else jnp.sum(jnp.abs(r), -1)
    return jnp.mean(per), out

  grads, losses = [], []
  h = x
  for layer, proj in zip(params[:-1], projections, strict=True):
    (loss, out), g = jax.value_and_grad(hidden_loss, has_aux=True)(
      layer, jax.lax.stop_gradient(h), onehot @ proj
    )
    grads.append(g)
    losses.append(loss)
    h = jax.lax.stop_gradient(out)

  def output_loss(layer, h):
    logits = h @ layer["w"] + layer["b"]
    return jnp.mean(optax.softmax_cross_entropy(logits, onehot))

  loss, g = jax.value_and_grad(output_loss)(params[-1], h)
  grads.append(g)
  losses.append(loss)
  losses = jnp.stack(losses)
  _check_finite(losses, _WHERE, "local loss of params[{i}]")
  if not is_traced(grads):
    for i, g in enumerate(grads):
      if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(g)):
        raise ValueError(
          f"{_WHERE}: non-finite gradient of params[{i}] (an infinite input or activation); "
          "check x and the parameters"
        )
  return grads, losses


def _poison_rows(out: jax.Array, valid: jax.Array) -> jax.Array:
  """``out`` plus NaN in the rows where ``valid`` is false (the class-label policy).

  Added, not multiplied as ``optim._validation.poison`` does: under ``jit`` XLA rewrites
  ``one_hot * where(valid, 1, nan)`` into a select that keeps the one-hot's zeros.
  """
  return out + jnp.where(valid, 0, jnp.nan).astype(out.dtype)[:, None]


def _check_sizes(sizes) -> list[int]:
  sizes = list(sizes)
  if len(sizes) < 2:
    raise ValueError(f"sizes must list at least the input width and the classes, got {sizes}")
  for i, n in enumerate(sizes):
    check_scalar(f"sizes[{i}]", n, lo=1, integer=True, static=True)
  return [int(n) for n in sizes]


def _check_layers(params, projections, x) -> int:
  if len(projections) != len(params) - 1:
    raise ValueError(
      f"projections must hold one matrix per hidden layer ({len(params) - 1}), "
      f"got {len(projections)}"
    )
  for i, layer in enumerate(params):
    if not isinstance(layer, dict) or set(layer) != {"w", "b"}:
      raise ValueError(f'params[{i}] must be a dict with keys "w" and "b" (see mlp_init)')
    if jnp.ndim(layer["w"]) != 2 or jnp.shape(layer["b"]) != jnp.shape(layer["w"])[1:]:
      raise ValueError(
        f'params[{i}] must hold "w" of shape (n_in, n_out) and "b" of shape (n_out,), got '
        f"{jnp.shape(layer['w'])} and {jnp.shape(layer['b'])}"
      )
    if i and jnp.shape(layer["w"])[0] != jnp.shape(params[i - 1]["w"])[1]:
      raise ValueError(
        f"params[{i}]['w'] must take the previous layer's {jnp.shape(params[i - 1]['w'])[1]} "
        f"outputs, got shape {jnp.shape(layer['w'])}"
      )
  num_classes = jnp.shape(params[-1]["w"])[1]
  for i, (proj, layer) in enumerate(zip(projections, params[:-1], strict=True)):
    want = (num_classes, jnp.shape(layer["w"])[1])
    if jnp.shape(proj) != want:
      raise ValueError(
        f"projections[{i}] must have shape {want} (num_classes, width of hidden layer {i + 1}),"
        f" got {jnp.shape(proj)}"
      )
  if jnp.ndim(x) != 2 or jnp.shape(x)[1] != jnp.shape(params[0]["w"])[0]:
    raise ValueError(
      f"x must have shape (batch, {jnp.shape(params[0]['w'])[0]}) for the first layer, "
      f"got {jnp.shape(x)}"
    )
  if jnp.shape(x)[0] == 0:
    raise ValueError("x must hold at least one example, got an empty batch")
  if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
    raise TypeError(f"x must be floating point, got dtype {jnp.asarray(x).dtype}")
  return int(num_classes)


def _check_finite(losses: jax.Array, where: str, what: str) -> None:
  """Eagerly: a ValueError naming the first non-finite entry (``what`` formatted with its
  index ``i``); traced: nothing."""
  if is_traced(losses):
    return
  values = np.atleast_1d(np.asarray(losses))
  bad = np.flatnonzero(~np.isfinite(values))
  if bad.size:
    raise ValueError(
      f"{where}: non-finite {what.format(i=int(bad[0]))} ({float(values[bad[0]])}); "
      "check the inputs, the parameters and the learning rate"
    )
