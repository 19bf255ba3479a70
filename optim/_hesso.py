"""HESSO: hybrid efficient structured sparse optimizer (Chen et al., 2024)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim._validation import (
  add_decayed_weights,
  check_choice,
  check_dtype,
  check_learning_rate,
  check_scalar,
  guard,
)

PyTree = Any

__all__ = ["HessoState", "hesso", "hesso_structure", "prune_groups", "scale_by_hesso"]

CRITERIA = (
  "magnitude",
  "avg_magnitude",
  "cosine_similarity",
  "taylor_first_order",
  "taylor_second_order",
)
_SAFE = 1e-8  # the official code's safe_guard


class HessoState(NamedTuple):
  """State of :func:`scale_by_hesso`.

  Attributes:
    count: steps taken (int32).
    period: pruning periods started so far (int32).
    active: per group family, a bool mask of the groups being projected to zero in the
      current period (the active redundant groups).
    pruned: per family, a bool mask of the groups already at zero (committed).
  """

  count: jax.Array
  period: jax.Array
  active: tuple[jax.Array, ...]
  pruned: tuple[jax.Array, ...]


def _path_name(path) -> str:
  parts = []
  for k in path:
    parts.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
  return "/".join(parts)


def _resolve(groups, params, where) -> list[list[tuple[int, int]]]:
  """Each family as a list of (leaf index, axis); checks paths, axes and group counts."""
  if isinstance(groups, Mapping) or not isinstance(groups, Sequence) or not len(groups):
    raise ValueError(
      f"{where}: groups must be a non-empty sequence of group families, each a dict "
      "{'path/to/leaf': axis}, e.g. [{'dense1/kernel': 1, 'dense1/bias': 0}]"
    )
  leaves = jax.tree_util.tree_leaves_with_path(params)
  index = {_path_name(p): i for i, (p, _) in enumerate(leaves)}
  families = []
  for f, fam in enumerate(groups):
    if not isinstance(fam, Mapping) or not fam:
      raise ValueError(f"{where}: groups[{f}] must be a non-empty dict {{'path': axis}}")
    members, sizes = [], set()
    for name, axis in fam.items():
      if name not in index:
        raise ValueError(
          f"{where}: groups[{f}] names {name!r}, not a leaf of params (leaves: {sorted(index)})"
        )
      shape = jnp.shape(leaves[index[name]][1])
      if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{where}: groups[{f}][{name!r}] must be an int axis, got {axis!r}")
      if not -len(shape) <= axis < len(shape):
        raise ValueError(
          f"{where}: groups[{f}][{name!r}]: axis {axis} is out of range for shape {shape}"
        )
      sizes.add(shape[axis])
      members.append((index[name], int(axis) % len(shape)))
    if len(sizes) != 1 or 0 in sizes:
      raise ValueError(
        f"{where}: groups[{f}] leaves must have one common, non-zero size along "
        f"their axes, got sizes {sorted(sizes)}"
      )
    families.append(members)
  return families


def _group_sums(leaves, members, fn):
  """Sum over a family's leaves of ``fn(leaf...)`` reduced to one value per group."""
  total = 0.0
  for i, axis in members:
    vals = fn(*(leaf[i] for leaf in leaves))
    total = total + jnp.sum(jnp.moveaxis(vals, axis, 0).reshape(vals.shape[axis], -1), axis=1)
  return total


def _group_mask(mask, shape, axis):
  return jnp.reshape(mask, [-1 if d == axis else 1 for d in range(len(shape))])


def scale_by_hesso(
  groups: Sequence[Mapping[str, int]],
  target_group_sparsity: float = 0.5,
  start_pruning_step: int = 0,
  pruning_steps: int = 1,
  pruning_periods: int = 1,
  importance_weights: Mapping[str, float] | None = None,
) -> optax.GradientTransformation:
  r"""HESSO's progressive group projection, applied after any base optimizer.

  The incoming update :math:`u_t = -\alpha_t d_t` is a base optimizer's step (SGD, Adam,
  ...). Parameters are partitioned into user-declared groups (e.g. an output channel: a
  column of a kernel, an entry of its bias and a row of the next kernel). With
  :math:`T = \lfloor` ``pruning_steps / pruning_periods`` :math:`\rfloor` and
  :math:`t = (s - s_0) \bmod T` at step :math:`s` (from 1),

  * at the start of each of the ``pruning_periods`` periods (:math:`t = 1`, or every step
    when :math:`T = 1`) the previous period's groups are committed to the pruned set and
    :math:`K_p` new redundant groups are identified: the :math:`K_p` unpruned groups with the
    lowest saliency :math:`\sum_c w_c\, s_c(G) / \|s_c\|_2` over the criteria :math:`c`
    (magnitude :math:`\|x_G\|`, average magnitude :math:`\|x_G\|/|G|`, cosine
    :math:`\cos(x_G, d_G) + 1`, first-order Taylor :math:`|x_G^\top d_G|`, second-order
    Taylor :math:`\tfrac12 (x_G^\top d_G)^2`; default weights 0.2 each), the norms taken over
    all groups of all families; :math:`\sum_p K_p = \lfloor` ``target_group_sparsity``
    :math:`\cdot N_G\rfloor`;
  * every step, important groups take the base step, the active redundant groups are
    shrunk toward zero by the hybrid step (paper, Alg. 1)

    .. math::
      x_G \leftarrow \frac{T - t - 1}{T - t}\,(x_G + u_G),

    which reaches exactly zero at the end of the period; pruned groups stay at zero.

  Non-finite gradients: propagate (the base step's NaN reaches the params; a NaN saliency
  ranks last, i.e. is never chosen as redundant). Compose with ``optax.apply_if_finite``.

  Assumptions: the official code's ``group_divisible`` is 1 here, and the identification
  takes the :math:`K_p` lowest-scoring unpruned groups (the official code takes a
  :math:`K`-lowest set including pruned groups and then truncates it by index, which agrees
  whenever the pruned groups score lowest). The paper's CRIC (corrective redundant
  identification cycle) is not implemented: neither its equations nor its code were
  available to us.

  Args:
    groups: a sequence of group families, each a dict ``{"path/to/leaf": axis}`` naming
      leaves of params (keys joined with ``/``) and the axis that indexes the groups; the
      leaves of a family share the group count along their axes.
    target_group_sparsity: fraction of all groups to prune, in [0, 1) (capped at 0.999).
    start_pruning_step: :math:`s_0 \ge 0`, the step at which pruning begins.
    pruning_steps: steps over which pruning happens (:math:`\ge` ``pruning_periods``).
    pruning_periods: :math:`P \ge 1`, periods that each identify :math:`K_p` groups.
    importance_weights: ``{criterion: weight}`` among ``CRITERIA`` (default 0.2 each).

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` needs ``params``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optim import scale_by_hesso
    >>> p = {"w": jnp.array([[1.0, 0.1, 2.0], [1.0, 0.1, 2.0]])}
    >>> tx = optax.chain(optax.sgd(0.1), scale_by_hesso([{"w": 1}], 1 / 3, pruning_steps=2))
    >>> step = jax.jit(lambda p, s: tx.update({"w": jnp.zeros((2, 3))}, s, p))
    >>> state = tx.init(p)
    >>> for _ in range(3):
    ...   u, state = step(p, state)
    ...   p = optax.apply_updates(p, u)
    >>> p["w"][:, 1]
    Array([0., 0.], dtype=float32)

  References:
    Chen, Qu, Zharkov, Liang, "HESSO: Towards Automatic Efficient and User Friendly Any
    Neural Network Training and Pruning", arXiv:2409.09085; the official Only-Train-Once
    optimizer ``hesso.py``.
  """
  where = "scale_by_hesso"
  check_scalar("target_group_sparsity", target_group_sparsity, lo=0.0, hi=1.0, hi_open=True)
  start = check_scalar("start_pruning_step", start_pruning_step, lo=0, integer=True, static=True)
  periods = check_scalar("pruning_periods", pruning_periods, lo=1, integer=True, static=True)
  steps = check_scalar("pruning_steps", pruning_steps, lo=periods, integer=True, static=True)
  weights = dict.fromkeys(CRITERIA, 0.2) if importance_weights is None else importance_weights
  if not isinstance(weights, Mapping) or not weights:
    raise TypeError(f"{where}: importance_weights must be a non-empty dict {{criterion: weight}}")
  for c, w in weights.items():
    check_choice("importance_weights key", c, CRITERIA)
    check_scalar(f"importance_weights[{c!r}]", w, lo=0.0, static=True)
  if isinstance(groups, Mapping) or not isinstance(groups, Sequence) or not len(groups):
    raise ValueError(
      f"{where}: groups must be a non-empty sequence of group families, each a dict "
      "{'path/to/leaf': axis}"
    )
  duration = steps // periods

  def plan(params):
    families = _resolve(groups, params, where)
    leaves = jax.tree.leaves(params)
    sizes = [jnp.shape(leaves[m[0][0]])[m[0][1]] for m in families]
    target = int(sum(sizes) * min(float(target_group_sparsity), 0.999))
    per_period = [target // periods] * (periods - 1) + [
      target - (target // periods) * (periods - 1)
    ]
    return families, sizes, np.asarray(per_period, np.int32)

  def init_fn(params):
    _, sizes, _ = plan(params)
    masks = tuple(jnp.zeros((n,), bool) for n in sizes)
    return HessoState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32), masks, masks)

  def scores(x, d, families):
    """The weighted, globally normalized saliency of every group (families concatenated)."""
    raw = {c: [] for c in weights}
    for members in families:
      sq = _group_sums([x], members, lambda a: a * a)
      numel = sum(int(np.prod(jnp.shape(x[i]))) // jnp.shape(x[i])[ax] for i, ax in members)
      xd = _group_sums([x, d], members, lambda a, b: a * b)
      dd = _group_sums([d], members, lambda b: b * b)
      per = {
        "magnitude": jnp.sqrt(sq),
        "avg_magnitude": jnp.sqrt(sq) / (numel + 1e-6),
        "cosine_similarity": xd / (jnp.sqrt(sq) + _SAFE) / (jnp.sqrt(dd) + _SAFE) + 1.0,
        "taylor_first_order": jnp.abs(xd),
        "taylor_second_order": 0.5 * xd**2,
      }
      for c in weights:
        raw[c].append(per[c])
    total = 0.0
    for c, w in weights.items():
      s = jnp.concatenate(raw[c])
      total = total + s * (w / (jnp.sqrt(_SAFE + jnp.sum(s**2)) + _SAFE))
    return total

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(f"{where} needs the current parameters: call update(updates, state, params)")
    families, sizes, per_period = plan(params)
    x, u = jax.tree.leaves(params), jax.tree.leaves(updates)
    d = [-v for v in u]  # a positive multiple of the base direction
    s = state.count + 1
    split = np.cumsum(sizes)[:-1]
    pruned = jnp.concatenate(state.pruned)
    active = jnp.concatenate(state.active)

    identify = (s >= start) & (state.period < periods) & ((s - start - 1) % duration == 0)

    def new_active(pruned):
      score = jnp.where(pruned, jnp.inf, jnp.nan_to_num(scores(x, d, families), nan=jnp.inf))
      rank = jnp.argsort(jnp.argsort(score, stable=True), stable=True)
      k = jnp.asarray(per_period)[jnp.minimum(state.period, periods - 1)]
      return (rank < k) & ~pruned

    pruned = jnp.where(identify, pruned | active, pruned)
    active = jnp.where(identify, new_active(pruned), active)
    period = state.period + identify.astype(jnp.int32)

    t = jnp.mod(s - start, duration)
    factor = (duration - t - 1.0) / (duration - t)
    new_x = [xi + ui for xi, ui in zip(x, u)]
    act_f, pru_f = jnp.split(active, split), jnp.split(pruned, split)
    for members, a, p in zip(families, act_f, pru_f):
      for i, axis in members:
        shape = jnp.shape(x[i])
        scale = jnp.where(_group_mask(a, shape, axis), factor, 1.0)
        scale = jnp.where(_group_mask(p, shape, axis), 0.0, scale)
        new_x[i] = (new_x[i] * scale).astype(x[i].dtype)
    commit = (s >= start) & (t == duration - 1)
    pruned = jnp.where(commit, pruned | active, pruned)
    active = jnp.where(commit, jnp.zeros_like(active), active)
    out = jax.tree.unflatten(
      jax.tree.structure(updates), [(n - xi).astype(ui.dtype) for n, xi, ui in zip(new_x, x, u)]
    )
    state = HessoState(
      optax.safe_increment(state.count),
      period,
      tuple(jnp.split(active, split)),
      tuple(jnp.split(pruned, split)),
    )
    return out, state

  return guard(optax.GradientTransformation(init_fn, update_fn), where)


def _scale_by_adam(b1, b2, eps, mu_dtype) -> optax.GradientTransformation:
  r"""``optax.scale_by_adam``, where ``eps = 0`` gives 0 (not 0/0) on a zero second moment.

  With a concrete ``eps > 0`` it is optax's transformation itself; otherwise (``eps = 0``
  or traced) the update is 0 wherever the denominator :math:`\sqrt{\hat v} + \epsilon` is
  (second moment 0 and ``eps`` 0), the state unchanged: the same state structure.
  """
  tx = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype)
  e = check_scalar("eps", eps, lo=0.0)
  if e is not None and e > 0.0:
    return tx

  def update_fn(updates, state, params=None):
    out, new = tx.update(updates, state, params)
    zero_div = lambda v: (v == 0) & (jnp.asarray(eps) == 0)
    out = jax.tree.map(lambda u, v: jnp.where(zero_div(v), jnp.zeros((), u.dtype), u), out, new.nu)
    return out, new

  return optax.GradientTransformation(tx.init, update_fn)


def hesso(
  learning_rate: optax.ScalarOrSchedule,
  groups: Sequence[Mapping[str, int]],
  target_group_sparsity: float = 0.5,
  start_pruning_step: int = 0,
  pruning_steps: int = 1,
  pruning_periods: int = 1,
  variant: Literal["sgd", "adam", "adamw"] = "sgd",
  momentum: float = 0.0,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
  weight_decay_mask: Any = None,
  importance_weights: Mapping[str, float] | None = None,
  mu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""HESSO: a base optimizer (SGD / Adam / AdamW) followed by :func:`scale_by_hesso`.

  .. math::
    x_{t+1} = \Pi_t\big(x_t - \alpha_t d_t\big), \qquad
    \Pi_t(x)_G = \begin{cases} x_G & G \text{ important} \\
      \frac{T - t - 1}{T - t} x_G & G \text{ active redundant} \\ 0 & G \text{ pruned}
    \end{cases}

  with :math:`d_t` the base direction: the (momentum) gradient for ``"sgd"``, Adam's
  bias-corrected :math:`\hat m / (\sqrt{\hat v} + \epsilon)` for ``"adam"`` (coupled weight
  decay added to the gradient, as in the official code) and ``"adamw"`` (decoupled decay).
  Non-finite gradients: propagate (see :func:`scale_by_hesso`).

  Args:
    learning_rate: :math:`\alpha_t \ge 0` or a schedule.
    groups, target_group_sparsity, start_pruning_step, pruning_steps, pruning_periods,
      importance_weights: see :func:`scale_by_hesso`.
    variant: the base optimizer, ``"sgd"``, ``"adam"`` or ``"adamw"``.
    momentum: SGD momentum (``"sgd"`` only).
    b1, b2, eps: Adam's moments and stabilizer; with ``eps = 0`` a coordinate whose
      second moment is 0 (all its gradients 0, as on a pruned group) gets update 0
      (:math:`0/0 = 0`), never NaN.
    weight_decay: :math:`\lambda \ge 0` (coupled for sgd/adam, decoupled for adamw).
    weight_decay_mask: optional mask (pytree or callable) of the parameters to decay.
    mu_dtype: dtype of the base optimizer's momentum / first moment (``None``: the
      params' dtypes).

  Returns:
    An ``optax.GradientTransformation``; read the pruned structure with
    :func:`optim.pruning.hesso_structure` and slice it out with
    :func:`optim.pruning.prune_groups`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optim import hesso
    >>> from optim.pruning import hesso_structure
    >>> p = {"w": jnp.array([[1.0, 0.1, 2.0, 0.2]])}
    >>> opt = hesso(0.1, [{"w": 1}], target_group_sparsity=0.5, pruning_steps=4)
    >>> @jax.jit
    ... def step(p, state):
    ...   u, state = opt.update(jax.grad(lambda q: jnp.sum(q["w"] ** 2))(p), state, p)
    ...   return optax.apply_updates(p, u), state
    >>> state = opt.init(p)
    >>> for _ in range(5):
    ...   p, state = step(p, state)
    >>> hesso_structure(state)
    [array([0, 2])]

  References:
    Chen, Qu, Zharkov, Liang, "HESSO: Towards Automatic Efficient and User Friendly Any
    Neural Network Training and Pruning", arXiv:2409.09085.
  """
  check_learning_rate(learning_rate)
  variant = check_choice("variant", variant, ("sgd", "adam", "adamw"))
  check_scalar("momentum", momentum, lo=0.0, hi=1.0, hi_open=True)
  check_scalar("b1", b1, lo=0.0, hi=1.0, hi_open=True)
  check_scalar("b2", b2, lo=0.0, hi=1.0, hi_open=True)
  check_scalar("eps", eps, lo=0.0)
  check_scalar("weight_decay", weight_decay, lo=0.0)
  mu_dtype = check_dtype("mu_dtype", mu_dtype)
  decay = add_decayed_weights(weight_decay, weight_decay_mask, "hesso")
  if variant == "sgd":
    sgd = optax.sgd(learning_rate, momentum=momentum or None, accumulator_dtype=mu_dtype)
    base = optax.chain(decay, sgd)
  elif variant == "adam":
    # optax.adam is this chain; with eps = 0 the scaling defines 0/0 = 0 (_scale_by_adam).
    adam = optax.chain(
      _scale_by_adam(b1, b2, eps, mu_dtype), optax.scale_by_learning_rate(learning_rate)
    )
    base = optax.chain(decay, adam)
  else:
    base = optax.chain(
      _scale_by_adam(b1, b2, eps, mu_dtype),
      decay,
      optax.scale_by_learning_rate(learning_rate),
    )
  return optax.chain(
    base,
    scale_by_hesso(
      groups,
      target_group_sparsity,
      start_pruning_step,
      pruning_steps,
      pruning_periods,
      importance_weights,
    ),
  )


def _hesso_state(state) -> HessoState:
  for s in jax.tree.leaves(state, is_leaf=lambda z: isinstance(z, HessoState)):
    if isinstance(s, HessoState):
      return s
  raise TypeError("expected the state of hesso / scale_by_hesso (no HessoState inside)")


def hesso_structure(state: Any) -> list[np.ndarray]:
  """The kept (unpruned) group indices of every family: the pruned structure.

  Groups still being projected (the current period's active redundant groups) count as
  pruned, as they reach zero at the end of the period.

  Args:
    state: the state of :func:`hesso` or :func:`scale_by_hesso` (or a chain holding it).

  Returns:
    One sorted ``int`` index array per family, the groups that stay.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim import scale_by_hesso
    >>> from optim.pruning import hesso_structure
    >>> state = scale_by_hesso([{"w": 0}]).init({"w": jnp.ones((3, 2))})
    >>> hesso_structure(state)
    [array([0, 1, 2])]

  References:
    Chen et al., "HESSO", arXiv:2409.09085 (sub-network construction).
  """
  s = _hesso_state(state)
  return [np.flatnonzero(~(np.asarray(a) | np.asarray(p))) for a, p in zip(s.active, s.pruned)]


def prune_groups(params: PyTree, groups: Sequence[Mapping[str, int]], state: Any) -> PyTree:
  """The smaller network: every family's leaves sliced to their kept groups.

  Args:
    params: the trained parameters.
    groups: the group families given to :func:`hesso`.
    state: its state.

  Returns:
    params with the pruned groups removed along each named axis (other leaves unchanged).

  Example:
    >>> import jax.numpy as jnp
    >>> from optim import scale_by_hesso
    >>> from optim.pruning import prune_groups
    >>> p = {"w": jnp.ones((3, 2))}
    >>> state = scale_by_hesso([{"w": 0}]).init(p)
    >>> prune_groups(p, [{"w": 0}], state)["w"].shape
    (3, 2)

  References:
    Chen et al., "HESSO", arXiv:2409.09085.
  """
  families = _resolve(groups, params, "prune_groups")
  keep = hesso_structure(state)
  if len(keep) != len(families):
    raise ValueError("prune_groups: groups and the state have different numbers of families")
  leaves = list(jax.tree.leaves(params))
  for members, idx in zip(families, keep):
    for i, axis in members:
      leaves[i] = jnp.take(leaves[i], jnp.asarray(idx, jnp.int32), axis=axis)
  return jax.tree.unflatten(jax.tree.structure(params), leaves)
