"""MaskSparsity (Jiang et al.): an L1 penalty on the normalization scales a pruning mask selects."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim._hesso import _group_mask, _group_sums, _resolve
from optim._validation import check_scalar, guard

PyTree = Any
Masks = Sequence[Any]

_WHERE = "mask_sparsity"


def _check_groups(groups, where):
  if isinstance(groups, Mapping) or not isinstance(groups, Sequence) or not len(groups):
    raise ValueError(
      f"{where}: groups must be a non-empty sequence of group families, each a dict "
      "{'path/to/leaf': axis}, e.g. [{'bn1/scale': 0}] (optim.hesso's format)"
    )


def _masks(mask, params, families, sizes, where) -> list[jax.Array]:
  """``mask`` (or ``mask(params)``) as one bool vector per family, checked against them."""
  m = mask(params) if callable(mask) else mask
  if isinstance(m, Mapping) or not isinstance(m, Sequence) or isinstance(m, str):
    raise TypeError(
      f"{where}: mask must be a sequence with one bool array per group family (or a "
      f"callable params -> such a sequence), got {type(m).__name__}"
    )
  if len(m) != len(families):
    raise ValueError(
      f"{where}: mask has {len(m)} entries but groups has {len(families)} families "
      "(one bool array per family)"
    )
  out = []
  for f, (mf, n) in enumerate(zip(m, sizes)):
    dtype = getattr(mf, "dtype", None)
    dtype = np.asarray(mf).dtype if dtype is None else dtype
    if dtype != np.bool_:
      raise TypeError(f"{where}: mask[{f}] must be a bool array (True = penalized), got {dtype}")
    if jnp.shape(mf) != (n,):
      raise ValueError(
        f"{where}: mask[{f}] has shape {jnp.shape(mf)} but groups[{f}] has {n} groups "
        f"(expected shape ({n},))"
      )
    out.append(jnp.asarray(mf))
  return out


def _sizes(families, params):
  leaves = jax.tree.leaves(params)
  return [jnp.shape(leaves[m[0][0]])[m[0][1]] for m in families]


def mask_sparsity(
  strength: Any,
  groups: Sequence[Mapping[str, int]],
  mask: Masks | Callable[[PyTree], Masks],
) -> optax.GradientTransformation:
  r"""MaskSparsity: the L1 subgradient on the normalization scales of the masked groups only.

  Adds to the gradient, before any optimizer,

  .. math::
    g_\gamma \leftarrow g_\gamma + \lambda\, \operatorname{sign}(\gamma) \odot m,

  the subgradient of :math:`\lambda \sum_c m_c |\gamma_c|`, where :math:`\gamma` are the
  scales of the normalization layers named by ``groups`` and :math:`m_c = 1` on the groups
  (channels, filters) the pruning mask selects for removal. Global sparsity training
  (network slimming) penalizes every scale; the paper finds that penalizing the channels
  that will be kept only restricts capacity, so MaskSparsity drives the selected scales to
  zero and leaves the rest free, and pruning them afterwards costs less accuracy. This is
  the official code's ``update_bn_by_names_dict`` with ``regular_method='L1'`` (the
  gradient's ``add_(s * sign(weight) * mask)`` between ``backward`` and the optimizer step),
  so chain it first: ``optax.chain(mask_sparsity(...), optax.sgd(...))``.
  :math:`\operatorname{sign}(0) = 0` (PyTorch's and JAX's).

  The groups use :func:`optim.hesso`'s format, a family per layer ``{"path/to/scale":
  axis}``; name the scale leaves (a family that also names kernels penalizes them the same
  way). In the ``nnx.State`` of a flax ``nnx`` model the paths end in the variable's
  ``value``: ``{"bn1/scale/value": 0}``. The mask is one bool vector per family, True where
  a group is to be pruned: from a global sparsity run with
  :func:`optim.pruning.smallest_groups`, from the complement of
  :func:`optim.pruning.hesso_structure`, or by hand.

  Non-finite gradients: propagate (stateless: a NaN gradient gives a NaN update, the next
  finite one is finite).

  Args:
    strength: :math:`\lambda \ge 0`, the official code's sparsity factor ``s`` (the paper
      uses 5e-4 on ImageNet). A traced value (``optax.inject_hyperparams``) is not checked.
    groups: a sequence of group families ``{"path/to/leaf": axis}`` (``optim.hesso``'s).
    mask: one bool array per family, shape ``(num_groups,)``, True = penalized; or a
      callable ``params -> such a sequence`` (evaluated at ``init`` and every ``update``).

  Returns:
    An ``optax.GradientTransformation`` (state ``optax.EmptyState``) whose ``update``
    needs ``params``.

  Raises:
    ValueError: bad groups (paths not in params, axes out of range, unequal group counts),
      a mask with another number of families or a wrong length, a negative ``strength``,
      or ``update`` called without params.
    TypeError: a mask that is not a sequence of bool arrays.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import optim
    >>> p = {"bn": {"scale": jnp.array([0.5, -0.2, 1.0])}}
    >>> tx = optim.mask_sparsity(0.1, [{"bn/scale": 0}], [jnp.array([False, True, True])])
    >>> u, _ = tx.update({"bn": {"scale": jnp.zeros(3)}}, tx.init(p), p)
    >>> u["bn"]["scale"].tolist()
    [0.0, -0.10000000149011612, 0.10000000149011612]

  References:
    Jiang, Zhao, Zhao, Tang, Wang, "Pruning-aware Sparse Regularization for Network
    Pruning", Machine Intelligence Research 2023, arXiv:2201.06776; official code
    github.com/CASIA-IVA-Lab/MaskSparsity (``netslim/sparse.py``).
  """
  check_scalar("strength", strength, lo=0.0)
  _check_groups(groups, _WHERE)
  if not callable(mask):
    if isinstance(mask, Mapping) or not isinstance(mask, Sequence) or isinstance(mask, str):
      raise TypeError(
        f"{_WHERE}: mask must be a sequence with one bool array per group family (or a "
        f"callable params -> such a sequence), got {type(mask).__name__}"
      )
    mask = [np.asarray(m) if isinstance(m, (list, tuple)) else m for m in mask]

  def init_fn(params):
    families = _resolve(groups, params, _WHERE)
    _masks(mask, params, families, _sizes(families, params), _WHERE)
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
        f"{_WHERE} needs the current parameters: call update(updates, state, params)"
      )
    families = _resolve(groups, params, _WHERE)
    masks = _masks(mask, params, families, _sizes(families, params), _WHERE)
    x, u = jax.tree.leaves(params), list(jax.tree.leaves(updates))
    for members, m in zip(families, masks):
      for i, axis in members:
        shape = jnp.shape(x[i])
        lam = jnp.asarray(strength, u[i].dtype)
        penalty = jnp.where(_group_mask(m, shape, axis), jnp.sign(x[i]).astype(u[i].dtype), 0)
        u[i] = u[i] + lam * penalty
    return jax.tree.unflatten(jax.tree.structure(updates), u), state

  return guard(optax.GradientTransformation(init_fn, update_fn), _WHERE)


def smallest_groups(
  params: PyTree, groups: Sequence[Mapping[str, int]], fraction: float
) -> list[jax.Array]:
  r"""The pruning mask of a global threshold: the ``fraction`` of groups of smallest norm.

  Ranks every group of every family together by :math:`\|x_G\|_2` over the family's leaves
  (for a family that names one normalization scale, :math:`|\gamma_c|`) and marks the
  :math:`\lfloor \text{fraction} \cdot N_G \rfloor` smallest (ties broken by position):
  network slimming's global threshold on the scales after sparsity training, the mask
  MaskSparsity's second stage regularizes (:func:`optim.mask_sparsity`).

  Args:
    params: the parameters (after global sparsity training, in the paper's pipeline).
    groups: group families ``{"path/to/leaf": axis}`` (``optim.hesso``'s format).
    fraction: the share of all groups to mark, in ``[0, 1]``.

  Returns:
    One bool array per family, True = to be pruned.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.pruning import smallest_groups
    >>> p = {"bn1": jnp.array([0.9, 0.01, 0.5]), "bn2": jnp.array([0.02, 0.7])}
    >>> [m.tolist() for m in smallest_groups(p, [{"bn1": 0}, {"bn2": 0}], 0.4)]
    [[False, True, False], [True, False]]

  References:
    Liu, Li, Shen, Huang, Yan, Zhang, "Learning Efficient Convolutional Networks through
    Network Slimming", ICCV 2017, arXiv:1708.06519; Jiang et al., "Pruning-aware Sparse
    Regularization for Network Pruning", arXiv:2201.06776 (the mask's first stage).
  """
  where = "smallest_groups"
  _check_groups(groups, where)
  fraction = check_scalar("fraction", fraction, lo=0.0, hi=1.0, static=True)
  families = _resolve(groups, params, where)
  x = jax.tree.leaves(params)
  sizes = _sizes(families, params)
  square = lambda a: jnp.square(a.astype(jnp.promote_types(a.dtype, jnp.float32)))
  norms = jnp.concatenate([jnp.sqrt(_group_sums([x], members, square)) for members in families])
  k = int(fraction * norms.size)
  rank = jnp.argsort(jnp.argsort(norms, stable=True), stable=True)
  chosen = rank < k
  return list(jnp.split(chosen, np.cumsum(sizes)[:-1]))
