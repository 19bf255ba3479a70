"""tpSGD for recurrent networks (Lomnitz et al. 2022): local targets on the hidden states,
gradients truncated to one time step, forward passes only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim._tpsgd import _check_finite, _check_sizes, _poison_rows
from optim._validation import as_key, check_choice, check_labels, is_traced

_WHERE = "tpsgd_rnn_grads"


def rnn_init(sizes: Sequence[int], *, key: Any, dtype: Any = jnp.float32) -> list[dict]:
  r"""Parameters of a stacked Elman RNN with layer widths ``sizes`` (input first, classes last).

  Recurrent layer :math:`l = 1, \dots, L` maps its input sequence :math:`h^{l-1}_t` to
  :math:`h^l_t = \sigma(h^{l-1}_t W_l + h^l_{t-1} U_l + b_l)`, :math:`h^l_0 = 0`, with
  :math:`W_l` drawn from :math:`\mathcal{N}(0, 1/n_{l-1})` (LeCun normal), :math:`U_l`
  a random orthogonal :math:`n_l \times n_l` matrix and :math:`b_l = 0`; the output layer
  :math:`h^L_T W_{L+1} + b_{L+1}` reads the last time step. The list holds one
  ``{"w": (n_{l-1}, n_l), "u": (n_l, n_l), "b": (n_l,)}`` dict per recurrent layer, then
  ``{"w": (n_L, C), "b": (C,)}``: the parameters :func:`tpsgd_rnn_grads` and
  :func:`rnn_apply` take.

  Args:
    sizes: the widths, input features first and number of classes last (at least three
      entries: one recurrent layer).
    key: PRNG key (typed, raw or an int seed).
    dtype: the parameters' dtype.

  Returns:
    A list of ``len(sizes) - 1`` layer dicts.

  Example:
    >>> from optim.local import rnn_init
    >>> [sorted(p) for p in rnn_init([8, 16, 10], key=0)]
    [['b', 'u', 'w'], ['b', 'w']]

  References:
    Lomnitz, Daniels, Zhang, Piacentino, "Learning with Local Gradients at the Edge",
    AAAI 2023, https://arxiv.org/abs/2208.08503
  """
  sizes = _check_sizes(sizes)
  if len(sizes) < 3:
    raise ValueError(
      f"sizes must list the input width, at least one recurrent width and the classes, got {sizes}"
    )
  keys = jax.random.split(as_key(key), 2 * (len(sizes) - 1))
  ortho = jax.nn.initializers.orthogonal()
  layers = []
  for i, (n_in, n_out) in enumerate(zip(sizes[:-2], sizes[1:-1], strict=True)):
    layers.append(
      {
        "w": jax.random.normal(keys[2 * i], (n_in, n_out), dtype) / np.sqrt(n_in).astype(dtype),
        "u": ortho(keys[2 * i + 1], (n_out, n_out), dtype),
        "b": jnp.zeros((n_out,), dtype),
      }
    )
  n_in, n_out = sizes[-2], sizes[-1]
  layers.append(
    {
      "w": jax.random.normal(keys[-1], (n_in, n_out), dtype) / np.sqrt(n_in).astype(dtype),
      "b": jnp.zeros((n_out,), dtype),
    }
  )
  return layers


def rnn_apply(params: Sequence[dict], x: jax.Array, *, activation: Callable = jnp.tanh):
  r"""Logits of the RNN of :func:`rnn_init` for sequences ``x`` of shape
  ``(batch, time, features)``: :math:`h^L_T W_{L+1} + b_{L+1}`, the recurrence
  :math:`h^l_t = \sigma(h^{l-1}_t W_l + h^l_{t-1} U_l + b_l)` from :math:`h^l_0 = 0`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.local import rnn_apply, rnn_init
    >>> rnn_apply(rnn_init([4, 8, 3], key=0), jnp.ones((5, 6, 4))).shape
    (5, 3)
  """
  params = list(params)
  h = jnp.swapaxes(x, 0, 1)  # (time, batch, features)
  for layer in params[:-1]:

    def cell(prev, inp, layer=layer):
      out = activation(inp @ layer["w"] + prev @ layer["u"] + layer["b"])
      return out, out

    h0 = jnp.zeros((h.shape[1], layer["u"].shape[0]), h.dtype)
    _, h = jax.lax.scan(cell, h0, h)
  return h[-1] @ params[-1]["w"] + params[-1]["b"]


def tpsgd_rnn_grads(
  params: Sequence[dict],
  projections: Sequence[jax.Array],
  x: jax.Array,
  labels: jax.Array,
  *,
  activation: Callable = jnp.tanh,
  variant: str = "l2",
  target_steps: str = "all",
) -> tuple[list[dict], jax.Array]:
  r"""Local gradients of tpSGD for a stacked RNN: each layer's hidden state is pulled
  towards a fixed projection of the labels, one time step at a time, forward passes only.

  For sequences :math:`x_1, \dots, x_T` (a batch of :math:`B`, :math:`h^0_t = x_t`) with
  one-hot labels :math:`y^*`, recurrent layer :math:`l` computes
  :math:`z^l_t = h^{l-1}_t W_l + h^l_{t-1} U_l + b_l`, :math:`h^l_t = \sigma(z^l_t)` and,
  at each step, the local loss against its target :math:`\tau_l = y^* P_l`
  (``projections[l-1]``, see :func:`tpsgd_projections`),

  .. math::
    J^l_t = \frac{1}{2B} \sum_b \lVert \tau_{l,b} - h^l_{t,b} \rVert_2^2 \;\; (\ell_2),
    \qquad J^l_t = \frac{1}{B} \sum_b \lVert \tau_{l,b} - h^l_{t,b} \rVert_1 \;\; (\ell_1),

  with :math:`J^l = \frac{1}{T}\sum_t J^l_t` (``target_steps="all"``) or
  :math:`J^l = J^l_T` (``"last"``). The gradient is truncated to one step: the layer's
  input :math:`h^{l-1}_t` and its previous state :math:`h^l_{t-1}` are held fixed, so no
  gradient flows back in time or into another layer, and with
  :math:`\delta^l_t = r^l_t \odot \sigma'(z^l_t)`, :math:`r^l_t = \tau_l - h^l_t` (ℓ₂) or
  :math:`\operatorname{sign}(\tau_l - h^l_t)` (ℓ₁), and :math:`\omega_t` the step weights
  (:math:`1/T` each, or 1 at :math:`T` only),

  .. math::
    \nabla_{W_l} = -\tfrac{1}{B} \textstyle\sum_t \omega_t\, h^{l-1\,\top}_t \delta^l_t,
    \quad \nabla_{U_l} = -\tfrac{1}{B} \sum_t \omega_t\, h^{l\,\top}_{t-1} \delta^l_t,
    \quad \nabla_{b_l} = -\tfrac{1}{B} \sum_t \omega_t \sum_b \delta^l_{t,b}.

  These sums are accumulated during the forward pass (one ``lax.scan`` over time that
  carries the states and the running gradients), so nothing of the sequence is stored
  for a backward pass: the memory of a step does not grow with :math:`T` beyond the
  input itself, where backpropagation through time keeps every hidden state. The output
  layer :math:`h^L_T W_{L+1} + b_{L+1}` is trained on softmax cross-entropy with the
  labels (mean over the batch), its input held fixed. Feed the gradients to
  ``optax.sgd`` for the paper's update, or to any optax optimizer.

  The paper extends target projection to RNNs without the equations of the recurrent
  case; two readings are assumed and switchable: the target on every step or on the
  last one (``target_steps``), and the one-step truncation (what "forward passes only"
  allows; it is not switchable).

  Args:
    params: the layers, as built by :func:`rnn_init` (recurrent layers, then the output layer).
    projections: one fixed ``(num_classes, width)`` matrix per recurrent layer (e.g.
      ``tpsgd_projections(sizes, key=...)`` with the same ``sizes``).
    x: input sequences, shape ``(batch, time, sizes[0])``.
    labels: integer class labels in ``[0, num_classes)``, shape ``(batch,)``.
    activation: the hidden units' :math:`\sigma` (differentiable, elementwise).
    variant: ``"l2"`` (the squared-error local loss) or ``"l1"`` (its sign variant).
    target_steps: ``"all"`` (the local target at every time step, losses averaged over
      time) or ``"last"`` (at the last step only).

  Returns:
    ``(grads, losses)``: gradients shaped like ``params`` and the local losses, shape
    ``(len(params),)`` (the recurrent layers' :math:`J^l`, then the output cross-entropy).

  Raises:
    ValueError: projections or layers that do not match (number or shape), ``x`` of the
      wrong shape or empty, labels out of range, or (when the values are concrete) a
      non-finite local loss or gradient. Under ``jit`` invalid labels poison the result
      with NaN (the class-label policy) and non-finite losses are returned as they are.
    TypeError: a non-floating ``x`` or non-integer labels.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optim.local import rnn_init, tpsgd_projections, tpsgd_rnn_grads
    >>> sizes = [4, 16, 3]
    >>> params, P = rnn_init(sizes, key=0), tpsgd_projections(sizes, key=1)
    >>> x, y = jnp.ones((8, 5, 4)), jnp.arange(8) % 3
    >>> tx = optax.sgd(0.1)
    >>> state = tx.init(params)
    >>> grads, losses = tpsgd_rnn_grads(params, P, x, y)
    >>> updates, state = tx.update(grads, state)
    >>> params = optax.apply_updates(params, updates)
    >>> losses.shape
    (2,)

  References:
    Lomnitz, Daniels, Zhang, Piacentino, "Learning with Local Gradients at the Edge",
    AAAI 2023, https://arxiv.org/abs/2208.08503
  """
  check_choice("variant", variant, ("l2", "l1"))
  check_choice("target_steps", target_steps, ("all", "last"))
  params, projections = list(params), list(projections)
  num_classes = _check_rnn(params, projections, x)
  valid = check_labels("labels", labels, num_classes)
  if jnp.shape(labels) != (x.shape[0],):
    raise ValueError(
      f"labels must have shape ({x.shape[0]},) like x's batch, got {jnp.shape(labels)}"
    )
  onehot = _poison_rows(jax.nn.one_hot(labels, num_classes, dtype=x.dtype), valid)
  targets = [onehot @ p for p in projections]
  T = x.shape[1]
  if target_steps == "all":
    weights = jnp.full((T,), 1.0 / T, x.dtype)
  else:
    weights = jnp.zeros((T,), x.dtype).at[-1].set(1.0)

  def step_loss(layer, inp, prev, target):
    out = activation(inp @ layer["w"] + prev @ layer["u"] + layer["b"])
    r = target - out
    per = 0.5 * jnp.sum(r**2, -1) if variant == "l2" else jnp.sum(jnp.abs(r), -1)
    return jnp.mean(per), out

  step_grad = jax.value_and_grad(step_loss, has_aux=True)
  recurrent = params[:-1]

  def body(carry, xs):
    states, grads, losses = carry
    x_t, w_t = xs
    inp, new_states, new_grads, new_losses = x_t, [], [], []
    for layer, prev, target, g, loss in zip(recurrent, states, targets, grads, losses, strict=True):
      (value, out), gl = step_grad(layer, inp, prev, target)
      new_grads.append(jax.tree.map(lambda a, b: a + w_t * b, g, gl))
      new_losses.append(loss + w_t * value)
      new_states.append(out)
      inp = out
    return (new_states, new_grads, new_losses), None

  batch = x.shape[0]
  init = (
    [jnp.zeros((batch, layer["u"].shape[0]), x.dtype) for layer in recurrent],
    [jax.tree.map(jnp.zeros_like, layer) for layer in recurrent],
    [jnp.zeros((), x.dtype) for _ in recurrent],
  )
  (states, grads, losses), _ = jax.lax.scan(body, init, (jnp.swapaxes(x, 0, 1), weights))
  grads = [jax.tree.map(lambda a, p: a.astype(p.dtype), g, p) for g, p in zip(grads, recurrent)]

  def output_loss(layer, h):
    logits = h @ layer["w"] + layer["b"]
    return jnp.mean(optax.softmax_cross_entropy(logits, onehot))

  loss, g = jax.value_and_grad(output_loss)(params[-1], states[-1])
  grads.append(g)
  losses = jnp.stack([*losses, loss])
  _check_finite(losses, _WHERE, "local loss of params[{i}]")
  if not is_traced(grads):
    for i, gi in enumerate(grads):
      if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(gi)):
        raise ValueError(
          f"{_WHERE}: non-finite gradient of params[{i}] (an infinite input or activation); "
          "check x and the parameters"
        )
  return grads, losses


def _check_rnn(params, projections, x) -> int:
  if len(params) < 2:
    raise ValueError(
      f"params must hold at least one recurrent layer and the output layer (see rnn_init), "
      f"got {len(params)} layer(s)"
    )
  if len(projections) != len(params) - 1:
    raise ValueError(
      f"projections must hold one matrix per recurrent layer ({len(params) - 1}), "
      f"got {len(projections)}"
    )
  width = None
  for i, layer in enumerate(params[:-1]):
    if not isinstance(layer, dict) or set(layer) != {"w", "u", "b"}:
      raise ValueError(f'params[{i}] must be a dict with keys "w", "u" and "b" (see rnn_init)')
    w, u, b = (jnp.shape(layer[k]) for k in ("w", "u", "b"))
    if len(w) != 2 or u != (w[1], w[1]) or b != (w[1],):
      raise ValueError(
        f'params[{i}] must hold "w" (n_in, n), "u" (n, n) and "b" (n,), got {w}, {u} and {b}'
      )
    if width is not None and w[0] != width:
      raise ValueError(
        f"params[{i}]['w'] must take the previous layer's {width} outputs, got shape {w}"
      )
    width = w[1]
  out = params[-1]
  if not isinstance(out, dict) or set(out) != {"w", "b"}:
    raise ValueError(
      f'params[{len(params) - 1}] (the output layer) must be a dict with keys "w"'
      ' and "b" (see rnn_init)'
    )
  w, b = jnp.shape(out["w"]), jnp.shape(out["b"])
  if len(w) != 2 or w[0] != width or b != w[1:]:
    raise ValueError(
      f'params[{len(params) - 1}] (the output layer) must hold "w" ({width}, num_classes) and '
      f'"b" (num_classes,), got {w} and {b}'
    )
  num_classes = w[1]
  for i, (proj, layer) in enumerate(zip(projections, params[:-1], strict=True)):
    want = (num_classes, jnp.shape(layer["w"])[1])
    if jnp.shape(proj) != want:
      raise ValueError(
        f"projections[{i}] must have shape {want} (num_classes, width of recurrent layer "
        f"{i + 1}), got {jnp.shape(proj)}"
      )
  n_in = jnp.shape(params[0]["w"])[0]
  if jnp.ndim(x) != 3 or jnp.shape(x)[2] != n_in:
    raise ValueError(f"x must have shape (batch, time, {n_in}), got {jnp.shape(x)}")
  if jnp.shape(x)[0] == 0 or jnp.shape(x)[1] == 0:
    raise ValueError(f"x must hold at least one sequence of at least one step, got {jnp.shape(x)}")
  if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
    raise TypeError(f"x must be floating point, got dtype {jnp.asarray(x).dtype}")
  return int(num_classes)
