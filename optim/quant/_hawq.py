"""HAWQ / HAWQ-V2 layer sensitivities and the exact Pareto bit allocation under a size budget."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optim._tree import tree_vdot
from optim._validation import as_key, check_choice, check_flag, check_scalar, renamed_kwargs
from optim.curvature import LinearOperator, hessian_matvec, hutchinson_trace, top_eigenvalues
from optim.quant._fake import _leaf_axis, check_bits, fake_quant

PyTree = Any

__all__ = ["Allocation", "Sensitivity", "layer_sensitivity", "pareto_bit_allocation"]

VARIANTS = ("hawq-v2", "hawq")
# Exhaustive search over configurations (only with inter-layer terms) stops being cheap here.
MAX_CONFIGURATIONS = 2**22


class Sensitivity(NamedTuple):
  """Result of :func:`layer_sensitivity` (and input of :func:`pareto_bit_allocation`).

  Attributes:
    omega: ``(L, B)`` array, :math:`\\Omega_i(b)` for layer ``i`` at ``bits[b]``.
    curvature: ``(L,)`` the per-parameter curvature of each layer: :math:`\\mathrm{Tr}(H_{ii})
      / n_i` (``"hawq-v2"``) or :math:`\\lambda_{\\max}(H_{ii}) / n_i` (``"hawq"``, the
      quantity HAWQ sorts layers by; most sensitive first is ``argsort(-curvature)``).
    sizes: ``(L,)`` numbers of parameters :math:`n_i` (Python ints).
    bits: the candidate bit widths, a tuple of ints.
    names: the layers' pytree paths (``"['w']"``, ...).
    leaves: the positions of the layers among ``jax.tree.leaves(params)``.
    treedef: the structure of ``params``.
  """

  omega: jax.Array
  curvature: jax.Array
  sizes: tuple[int, ...]
  bits: tuple[int, ...]
  names: tuple[str, ...]
  leaves: tuple[int, ...]
  treedef: Any


class Allocation(NamedTuple):
  """Result of :func:`pareto_bit_allocation`.

  Attributes:
    bits: a pytree like ``params``: the chosen width of each layer, ``None`` for leaves that
      are not layers (kept in floating point); pass it to :func:`quantize_params`.
    choice: the chosen widths in layer order (a tuple of ints).
    size: the layers' size in bits, :math:`\\sum_i n_i b_i \\le` ``budget``.
    cost: the total sensitivity of the choice (plus the inter-layer terms when given).
    frontier_sizes: sizes of the Pareto-optimal configurations within the budget, increasing.
    frontier_costs: their (strictly decreasing) total sensitivities.
  """

  bits: PyTree
  choice: tuple[int, ...]
  size: int
  cost: float
  frontier_sizes: np.ndarray
  frontier_costs: np.ndarray


def check_bit_set(bits: Any, symmetric: bool) -> tuple[int, ...]:
  """A non-empty sequence of distinct static integer widths, returned sorted."""
  if isinstance(bits, (int, np.integer)) and not isinstance(bits, bool):
    bits = (bits,)
  if not isinstance(bits, Sequence) or isinstance(bits, str) or not bits:
    raise TypeError(f"bits must be a non-empty sequence of candidate bit widths, got {bits!r}")
  out = tuple(sorted(check_bits(b, symmetric) for b in bits))
  if len(set(out)) != len(out):
    raise ValueError(f"bits must be distinct, got {tuple(bits)}")
  return out


def select_layers(params: PyTree, layers: Any, where: str) -> tuple[list, list[str], Any]:
  """``(positions, names, treedef)`` of the leaves that are quantized layers.

  ``layers`` is ``None`` (every leaf), a pytree of bools like ``params`` or a callable
  ``params -> that pytree``. A selected leaf without entries cannot be a layer.
  """
  with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  if not with_path:
    raise ValueError(f"{where}: params must hold at least one array, got {params!r}")
  if callable(layers):
    layers = layers(params)
  if layers is None:
    mask = [True] * len(with_path)
  else:
    mask_leaves, mask_def = jax.tree.flatten(layers)
    if mask_def != treedef:
      raise ValueError(
        f"{where}: layers must be a pytree of bools with the structure of params; got\n"
        f"  layers: {mask_def}\n  params: {treedef}"
      )
    mask = [
      check_flag(f"layers{jax.tree_util.keystr(p)}", m) for (p, _), m in zip(with_path, mask_leaves)
    ]
  positions, names = [], []
  for index, ((path, leaf), keep) in enumerate(zip(with_path, mask)):
    if not keep:
      continue
    name = jax.tree_util.keystr(path)
    if jnp.size(leaf) == 0:
      raise ValueError(
        f"{where}: layer params{name} has no parameters (shape {jnp.shape(leaf)}); its "
        "per-parameter curvature Tr(H)/n is undefined. Leave it out with layers=..."
      )
    positions.append(index)
    names.append(name)
  if not positions:
    raise ValueError(f"{where}: layers selects no leaf of params")
  return positions, names, treedef


def quantization_errors(
  leaves: list, positions: list, bits: tuple, symmetric: bool, axis: int | None
) -> list[list]:
  """``errors[i][b] = Q_b(W_i) - W_i`` for every layer ``i`` and candidate width ``b``."""
  return [
    [
      fake_quant(leaves[p], b, symmetric=symmetric, axis=_leaf_axis(axis, leaves[p])) - leaves[p]
      for b in bits
    ]
    for p in positions
  ]


def block_operator(op: LinearOperator, like: list, position: int) -> LinearOperator:
  """The diagonal block :math:`H_{ii}` of ``op`` for leaf ``position`` (a pytree-free view)."""
  zeros = [jnp.zeros(l.shape, l.dtype) for l in like]
  treedef = jax.tree.structure(op.like)

  def matvec(v):
    full = list(zeros)
    full[position] = v
    return jax.tree.leaves(op(jax.tree.unflatten(treedef, full)))[position]

  return LinearOperator(matvec, like[position])


def exact_block_trace(op: LinearOperator, like: list, position: int) -> jax.Array:
  """:math:`\\mathrm{Tr}(H_{ii})` from ``n_i`` products with the unit vectors, vmapped."""
  block = block_operator(op, like, position)
  shape = like[position].shape
  n = int(np.prod(shape))
  basis = jnp.eye(n, dtype=like[position].dtype).reshape((n, *shape))
  columns = jax.vmap(block)(basis)
  return jnp.sum(basis * columns)


@renamed_kwargs(max_iters="max_iterations")
def layer_sensitivity(
  loss_fn: Callable[..., jax.Array],
  params: PyTree,
  *args: Any,
  bits: Sequence[int] = (2, 3, 4, 8),
  key: Any = 0,
  num_probes: int | None = 100,
  variant: str = "hawq-v2",
  layers: Any = None,
  symmetric: bool = True,
  axis: int | None = None,
  max_iterations: int = 100,
) -> Sensitivity:
  """Per-layer quantization sensitivities :math:`\\Omega_i(b)` (HAWQ-V2, or HAWQ's ordering).

  HAWQ-V2 (``variant="hawq-v2"``, Dong et al. 2020, Eq. 4):

  .. math::
    \\Omega_i(b) = \\frac{\\mathrm{Tr}(H_{ii})}{n_i}\\,\\big\\|Q_b(W_i) - W_i\\big\\|_2^2,

  where :math:`H_{ii}` is the diagonal block of the loss Hessian for layer :math:`i`
  (:math:`n_i` parameters): the expected second-order loss increase
  :math:`\\Delta_i^\\top H_{ii} \\Delta_i` for a perturbation of that norm in a random
  direction. The block traces come from one :func:`optim.curvature.hutchinson_trace`
  (its per-leaf traces, all layers from the same probes), or exactly from :math:`n_i`
  Hessian-vector products per layer (``num_probes=None``, vmapped). HAWQ
  (``variant="hawq"``, Dong et al. 2019) measures a layer by the top eigenvalue of its block
  instead (power iteration on :math:`H_{ii}`, :func:`optim.curvature.top_eigenvalues`);
  here :math:`\\Omega_i(b) = \\lambda_{\\max}(H_{ii}) \\|Q_b(W_i) - W_i\\|^2`, the
  worst-direction bound, and ``curvature`` holds HAWQ's ordering statistic
  :math:`\\lambda_{\\max}/n_i`. Feed the result to :func:`pareto_bit_allocation`.

  Negative curvature (a block trace below 0, away from a minimum) is kept as it is: it
  says the quadratic model predicts a loss *decrease*; the allocation then spends no bits
  there. Near a minimum, as HAWQ assumes, the blocks are positive semidefinite.

  Args:
    loss_fn: ``loss_fn(params, *args) -> scalar`` (e.g. the mean training loss on a batch).
    params: the trained parameters.
    *args: extra arguments of ``loss_fn`` (the calibration batch).
    bits: candidate bit widths (static ints).
    key: PRNG key of the probes / power iteration (typed, raw or int seed).
    num_probes: Hutchinson probes (static, >= 1); ``None`` for the exact block traces.
    variant: ``"hawq-v2"`` (average trace) or ``"hawq"`` (top eigenvalue).
    layers: which leaves are quantized layers: ``None`` (all), a pytree of bools like
      ``params`` or a callable ``params -> mask``. Every selected leaf must be non-empty.
    symmetric, axis: the quantizer, as in :func:`quantize_params`.
    max_iterations: power-iteration budget per layer (``"hawq"``; formerly ``max_iters``).

  Returns:
    A :class:`Sensitivity`.

  Raises:
    ValueError: a selected layer without parameters, an empty selection, bad ``bits``.
    TypeError: ``loss_fn`` not returning a scalar, non-floating params, a bad ``layers``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.quant import layer_sensitivity
    >>> loss = lambda p: jnp.sum(p["a"] ** 2) + 10 * jnp.sum(p["b"] ** 2)
    >>> p = {"a": jnp.array([0.3, -1.0, 0.5]), "b": jnp.array([0.3, -1.0, 0.5])}
    >>> s = layer_sensitivity(loss, p, bits=(2, 8), num_probes=None)
    >>> s.curvature  # Tr(H_ii) / n_i
    Array([ 2., 20.], dtype=float32)

  References:
    Dong, Yao, Gholami, Mahoney & Keutzer, "HAWQ: Hessian AWare Quantization of Neural
    Networks with Mixed-Precision", arXiv:1905.03696. Dong, Yao, Arfeen, Gholami, Mahoney
    & Keutzer, "HAWQ-V2: Hessian Aware trace-Weighted Quantization of Neural Networks",
    arXiv:1911.03852.
  """
  variant = check_choice("variant", variant, VARIANTS)
  symmetric = check_flag("symmetric", symmetric)
  bits = check_bit_set(bits, symmetric)
  if num_probes is not None:
    num_probes = check_scalar("num_probes", num_probes, lo=1, integer=True, static=True)
  max_iterations = check_scalar("max_iterations", max_iterations, lo=1, integer=True, static=True)
  key = as_key(key)
  positions, names, treedef = select_layers(params, layers, "layer_sensitivity")
  op = hessian_matvec(loss_fn, params, *args)  # checks loss_fn and params
  like = jax.tree.leaves(op.like)
  sizes = tuple(int(np.prod(like[p].shape)) for p in positions)

  @jax.jit
  def compute(params, key):
    leaves = jax.tree.leaves(params)
    if variant == "hawq":
      keys = jax.random.split(key, len(positions))
      stat = jnp.stack(
        [
          top_eigenvalues(
            block_operator(op, like, p), key=k, k=1, max_iterations=max_iterations
          ).eigenvalues[0]
          for p, k in zip(positions, keys)
        ]
      )
    elif num_probes is None:
      stat = jnp.stack([exact_block_trace(op, like, p) for p in positions])
    else:
      per_leaf = jax.tree.leaves(hutchinson_trace(op, key=key, num_probes=num_probes).per_leaf)
      stat = jnp.stack([per_leaf[p] for p in positions])
    errors = quantization_errors(leaves, positions, bits, symmetric, axis)
    sq = jnp.stack([jnp.stack([tree_vdot(e, e) for e in row]) for row in errors])
    n = jnp.asarray(sizes, stat.dtype)
    per_parameter = stat / n
    weight = stat if variant == "hawq" else per_parameter
    return weight[:, None] * sq, per_parameter

  omega, curvature = compute(params, key)
  return Sensitivity(omega, curvature, sizes, bits, tuple(names), tuple(positions), treedef)


def _frontier(sizes: np.ndarray, costs: np.ndarray) -> np.ndarray:
  """Indices of the Pareto-optimal points: increasing size, strictly decreasing cost."""
  order = np.lexsort((costs, sizes))
  keep, best = [], np.inf
  for k in order:
    if costs[k] < best:
      keep.append(k)
      best = costs[k]
  return np.asarray(keep, dtype=int)


def pareto_bit_allocation(
  sensitivity: Sensitivity, budget: int, *, cross: Any = None
) -> Allocation:
  """The bit widths minimizing total sensitivity under a model-size budget (exact).

  .. math::
    \\min_{b_1, \\dots, b_L} \\sum_i \\Omega_i(b_i)
    \\;\\Big[+ \\sum_{i \\ne j} C_{ij}(b_i, b_j)\\Big]
    \\quad \\text{s.t.} \\quad \\sum_i n_i b_i \\le \\text{budget}.

  HAWQ-V2 (Sec. 3.3) picks the configuration on the Pareto frontier of (size, total
  :math:`\\Omega`) at the target size. Without ``cross`` the objective is separable, and
  a dynamic program over layers that keeps only the Pareto-optimal partial configurations
  (a dominated partial configuration stays dominated after any completion) finds the
  exact optimum and the whole frontier; its work is bounded by the number of distinct
  partial sizes, not by :math:`B^L`. With inter-layer terms ``cross`` (from
  :func:`interlayer_sensitivity`) the objective is quadratic in the choice and every
  configuration is enumerated (vectorized; at most 2^22 of them).

  Args:
    sensitivity: a :class:`Sensitivity` from :func:`layer_sensitivity`.
    budget: the layers' total size in bits (int), at least :math:`\\sum_i n_i \\min b`.
    cross: optional ``(L, B, L, B)`` inter-layer terms :math:`C_{ij}(b, c)` (the diagonal
      blocks ``i == j`` are ignored).

  Returns:
    An :class:`Allocation` (the chosen widths as a pytree like ``params`` and the frontier).

  Raises:
    ValueError: ``budget`` below the smallest configuration; ``cross`` of the wrong shape
      or non-finite; too many configurations to enumerate with ``cross``.
    TypeError: ``sensitivity`` is not a :class:`Sensitivity`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.quant import layer_sensitivity, pareto_bit_allocation
    >>> loss = lambda p: jnp.sum(p["a"] ** 2) + 100 * jnp.sum(p["b"] ** 2)
    >>> p = {"a": jnp.linspace(-1, 1, 8), "b": jnp.linspace(-1, 1, 8)}
    >>> s = layer_sensitivity(loss, p, bits=(2, 8), num_probes=None)
    >>> pareto_bit_allocation(s, budget=8 * 2 + 8 * 8).bits  # the sharp layer gets 8 bits
    {'a': 2, 'b': 8}

  References:
    Dong et al., "HAWQ-V2: Hessian Aware trace-Weighted Quantization of Neural Networks",
    arXiv:1911.03852, Sec. 3.3.
  """
  if not isinstance(sensitivity, Sensitivity):
    raise TypeError(
      f"sensitivity must be a Sensitivity from layer_sensitivity, got {type(sensitivity).__name__}"
    )
  omega = np.asarray(sensitivity.omega, dtype=np.float64)
  sizes = np.asarray(sensitivity.sizes, dtype=np.int64)
  bits = np.asarray(sensitivity.bits, dtype=np.int64)
  num_layers, num_bits = omega.shape
  if not np.all(np.isfinite(omega)):
    raise ValueError("sensitivity.omega must be finite (a non-finite loss or Hessian upstream)")
  smallest = int(np.sum(sizes) * bits.min())
  budget = check_scalar("budget", budget, lo=0, integer=True, allow_inf=False)
  if budget < smallest:
    raise ValueError(
      f"budget must be at least {smallest} bits (every layer at {int(bits.min())} bits: "
      f"{int(np.sum(sizes))} parameters), got {budget}"
    )
  if cross is None:
    choice, cost, fr_sizes, fr_costs = _dynamic_program(omega, sizes, bits, budget)
  else:
    cross = np.asarray(cross, dtype=np.float64)
    if cross.shape != (num_layers, num_bits, num_layers, num_bits):
      raise ValueError(
        f"cross must have shape (L, B, L, B) = {(num_layers, num_bits) * 2}, got {cross.shape}"
      )
    if not np.all(np.isfinite(cross)):
      raise ValueError("cross must be finite")
    choice, cost, fr_sizes, fr_costs = _enumerate(omega, cross, sizes, bits, budget)
  chosen = tuple(int(bits[c]) for c in choice)
  size = int(np.sum(sizes * np.asarray(chosen)))
  per_leaf = [None] * sensitivity.treedef.num_leaves
  for position, b in zip(sensitivity.leaves, chosen):
    per_leaf[position] = b
  tree = jax.tree.unflatten(sensitivity.treedef, per_leaf)
  return Allocation(tree, chosen, size, float(cost), fr_sizes, fr_costs)


def _dynamic_program(omega, sizes, bits, budget):
  # states: size -> (cost, choice indices); pruned to the Pareto frontier after each layer.
  states = {0: (0.0, ())}
  for i in range(omega.shape[0]):
    grown: dict[int, tuple[float, tuple]] = {}
    for size, (cost, choice) in states.items():
      for b in range(len(bits)):
        s = size + int(sizes[i] * bits[b])
        if s > budget:
          continue
        c = cost + omega[i, b]
        if s not in grown or c < grown[s][0]:
          grown[s] = (c, choice + (b,))
    keys = np.fromiter(grown, dtype=np.int64)
    costs = np.asarray([grown[k][0] for k in keys])
    states = {int(keys[k]): grown[int(keys[k])] for k in _frontier(keys, costs)}
  fr_sizes = np.asarray(sorted(states), dtype=np.int64)
  fr_costs = np.asarray([states[int(s)][0] for s in fr_sizes])
  best = states[int(fr_sizes[-1])]  # costs decrease along the frontier: the largest size
  return best[1], best[0], fr_sizes, fr_costs


def _enumerate(omega, cross, sizes, bits, budget):
  num_layers, num_bits = omega.shape
  if num_bits**num_layers > MAX_CONFIGURATIONS:
    raise ValueError(
      f"cross: {num_bits}^{num_layers} configurations are too many to enumerate (at most "
      f"{MAX_CONFIGURATIONS}); use fewer candidate bits or layers"
    )
  configs = np.asarray(list(itertools.product(range(num_bits), repeat=num_layers)), np.int64)
  layer = np.arange(num_layers)
  cost = omega[layer, configs].sum(axis=1)
  pair = cross[layer[:, None], configs[:, :, None], layer[None, :], configs[:, None, :]]
  off = ~np.eye(num_layers, dtype=bool)
  cost = cost + (pair * off).sum(axis=(1, 2))
  size = (sizes * bits[configs]).sum(axis=1)
  ok = size <= budget
  configs, cost, size = configs[ok], cost[ok], size[ok]
  keep = _frontier(size, cost)
  best = keep[-1]  # the frontier's costs decrease with size
  return tuple(int(c) for c in configs[best]), cost[best], size[keep], cost[keep]
