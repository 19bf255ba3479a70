"""AdamP and SGDP: remove the radial component of updates of scale-invariant weights."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from optim._validation import (
  check_dtype,
  check_flag,
  check_learning_rate,
  check_mask,
  check_scalar,
  guard,
  require_params,
)

PyTree = Any


def _check_projection_args(eps, delta, wd_ratio, weight_decay, nesterov, channel_axis):
  """Validates the arguments :func:`scale_by_adamp` and :func:`scale_by_sgdp` share."""
  check_scalar("eps", eps, lo=0.0, lo_open=True)
  check_scalar("delta", delta, lo=0.0)
  check_scalar("wd_ratio", wd_ratio, lo=0.0)
  check_scalar("weight_decay", weight_decay, lo=0.0)
  # Both pick code paths, so neither may be traced; inject_hyperparams keeps bools static.
  check_flag("nesterov", nesterov)
  if channel_axis is not None:
    check_scalar("channel_axis", channel_axis, integer=True, static=True)


def _decay_per_leaf(weight_decay, mask, params, method):
  """``weight_decay`` on the leaves ``mask`` selects, 0 elsewhere (optax's mask semantics).

  ``mask`` is ``None`` (every leaf), a pytree of bools shaped like (a prefix of) ``params``
  or a function of ``params`` returning one, as in ``optax.add_decayed_weights``.
  """
  if mask is None:
    return jax.tree.map(lambda _: weight_decay, params)
  check_mask(mask, params, method)
  if callable(mask):
    mask = mask(params)
  return jax.tree.map(
    lambda m, sub: jax.tree.map(lambda _: weight_decay if m else 0.0, sub), mask, params
  )


def _project_leaf(p, g, u, delta, wd_ratio, eps, channel_axis, where, u_out=None):
  """The AdamP projection of one leaf; returns ``(u_projected, wd_factor)``.

  Computed in float32 or wider. Channel-wise first: the channel view keeps ``channel_axis``
  and reduces over every other axis; the layer-wise view reduces over all axes. ``where``
  names the leaf in errors (``"scale_by_adamp: params['w']"``). ``u_out``: the same values
  as ``u``, computed apart, for the projected output (default ``u``; see ``scale_by_adamp``).
  """
  ct = jnp.promote_types(u.dtype, jnp.float32)
  if p.ndim < 2:  # biases, norms' scales: never scale-invariant by construction
    return u, jnp.ones([], ct)
  ax = -1 if channel_axis is None else int(channel_axis)
  if not -p.ndim <= ax < p.ndim:
    method, leaf = where
    raise ValueError(
      f"{method}: channel_axis={ax} is out of range for params{leaf} of rank {p.ndim} "
      f"(shape {p.shape}); use an axis in [-{p.ndim}, {p.ndim - 1}] (negative axes count "
      "from the end)"
    )
  if p.size == 0:  # no direction to project out (and no cosine to test)
    return u, jnp.ones([], ct)
  u_out = u if u_out is None else u_out
  p, g, u, u_out = p.astype(ct), g.astype(ct), u.astype(ct), u_out.astype(ct)
  ax %= p.ndim
  chan_axes = tuple(i for i in range(p.ndim) if i != ax)
  # One pass of four per-channel reductions; the layer-wise sums are their totals.
  csum = lambda x: jnp.sum(x, axis=chan_axes, keepdims=True)
  pg, pp, gg, pu = csum(p * g), csum(p * p), csum(jnp.abs(g) * jnp.abs(g)), csum(p * u)
  # XLA rewrites sum(csum(x)) into a second full-size reduction of x, and on CPU those run
  # unfused: the barrier makes the layer totals sum the per-channel sums (values unchanged).
  pg, pp, gg, pu = jax.lax.optimization_barrier((pg, pp, gg, pu))
  pn_c, gn_c = jnp.sqrt(pp), jnp.sqrt(gg)
  pn_l, gn_l = jnp.sqrt(jnp.sum(pp)), jnp.sqrt(jnp.sum(gg))
  # torch.nn.functional.cosine_similarity clamps each norm at eps.
  cos_c = jnp.abs(pg) / (jnp.maximum(pn_c, eps) * jnp.maximum(gn_c, eps))
  cos_l = jnp.abs(jnp.sum(pg)) / (jnp.maximum(pn_l, eps) * jnp.maximum(gn_l, eps))
  per_channel = p.size // p.shape[ax]
  use_c = jnp.max(cos_c) < delta / math.sqrt(per_channel)
  use_l = cos_l < delta / math.sqrt(p.size)
  # u - w_hat <w_hat, u> with w_hat = w / (|w| + eps), i.e. u - w <w, u> / (|w| + eps)^2.
  coef_c = pu / (pn_c + eps) ** 2
  coef_l = jnp.sum(pu) / (pn_l + eps) ** 2
  coef = jnp.where(use_c, coef_c, jnp.where(use_l, coef_l, jnp.zeros_like(coef_c)))
  wd = jnp.where(use_c | use_l, jnp.asarray(wd_ratio, ct), jnp.ones([], ct))
  return u_out - p * coef, wd


# Above this many bytes of parameters, AdamP recomputes its direction in the output pass
# rather than storing it (see ``scale_by_adamp``'s update); about a CPU's last-level cache.
# Only for leaves up to _RECOMPUTE_MAX_LEAF_BYTES: the recomputed direction's per-channel
# sum reads scalar operands that XLA:CPU materializes as leaf-sized broadcasts, which stay
# in cache for a 4 MB leaf but not for a 40 MB one (one 10M leaf: 6.1x optax.adam
# recomputing against 3.4x storing; ten 1M leaves: 2.8x against 3.5x; 2 idle cores).
_RECOMPUTE_ABOVE_BYTES = 32 * 2**20
_RECOMPUTE_MAX_LEAF_BYTES = 8 * 2**20


class ScaleByAdamPState(NamedTuple):
  """State of :func:`scale_by_adamp`: step count and Adam's two moments."""

  count: jax.Array
  mu: PyTree
  nu: PyTree


class ScaleBySGDPState(NamedTuple):
  """State of :func:`scale_by_sgdp`: the momentum buffer."""

  momentum: PyTree


def scale_by_adamp(
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  delta: float = 0.1,
  wd_ratio: float = 0.1,
  weight_decay: float = 0.0,
  nesterov: bool = False,
  channel_axis: int | None = None,
  mu_dtype: Any = None,
  weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam preconditioning followed by the AdamP projection (and its scaled weight decay).

  .. math::
    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\\
    p_t &= \frac{m_t}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}
      \quad\Big(\text{nesterov: } \frac{\beta_1 m_t + (1-\beta_1) g_t}{\cdots}\Big),\\
    q_t &= \begin{cases} p_t - \hat w\,\langle \hat w, p_t\rangle & \text{if }
        \max |\cos(w, g_t)| < \delta / \sqrt{\dim} \\ p_t & \text{otherwise}\end{cases},
        \qquad \hat w = w / (\|w\| + \epsilon),\\
    u_t &= \frac{q_t}{1 - \beta_1^t} + \lambda\, r_t\, w,
        \qquad r_t = \text{wd\_ratio if projected else } 1.

  The test is made channel-wise first (one cosine per output channel, ``dim`` = elements
  per channel; projection per channel when *every* channel passes), then layer-wise
  (``dim`` = all elements), exactly as the official implementation does. Kernels in Flax
  layout ``(..., in, out)`` have their channels on ``channel_axis=-1``; leaves with fewer
  than two dimensions are never projected. The weight decay term lives here (not in the
  alias) because its ratio depends on the projection decision; the alias then multiplies
  by the learning rate, reproducing ``w <- w (1 - lr wd r_t)``.

  Zero weights or zero gradients give cosine 0 (norms are clamped at ``eps``), so such a
  leaf is projected against ``w / eps``-scaled zeros: a no-op, never NaN. Zero-size leaves
  are not projected (their update is empty).

  Non-finite gradients: propagate, as in optax's Adam: a NaN or inf gradient makes the
  update and the moments non-finite, hence every later update too. Wrap the optimizer in
  ``optax.apply_if_finite`` to skip such steps; the skipped step leaves the state untouched.

  Args:
    b1, b2, eps: Adam's constants (``eps`` is added to the bias-corrected
      :math:`\sqrt{\hat v_t}`, as in the official code).
    delta: cosine-similarity threshold :math:`\delta \ge 0` (0.1 in the paper).
    wd_ratio: weight-decay multiplier for projected leaves, >= 0 (0.1 in the paper).
    weight_decay: decoupled decay coefficient :math:`\lambda` (finite, >= 0).
    nesterov: use the Nesterov-style first moment (a Python bool).
    channel_axis: the channel axis of kernels, an int valid for every parameter with two
      or more dimensions (``-1``: the last axis of each; an axis that a leaf lacks is an
      error, never wrapped around); ``None`` (default) is ``-1``, Flax's output axis.
      Static: under ``optax.inject_hyperparams`` list it in ``static_args``.
    mu_dtype: optional dtype of ``mu`` and ``nu``.
    weight_decay_mask: which leaves are decayed (``optax.add_decayed_weights`` semantics):
      a pytree of bools shaped like (a prefix of) the params, or a function of the params
      returning one; ``None`` decays every leaf. The decay lives inside this
      transformation (its ratio :math:`r_t` depends on the projection), so the mask is
      applied here; projection itself is unaffected. Under ``optax.inject_hyperparams``
      list a callable mask in ``static_args`` (it would be taken for a schedule).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim import scale_by_adamp
    >>> tx = scale_by_adamp()
    >>> w = {"kernel": jnp.ones((4, 3))}
    >>> u, _ = tx.update({"kernel": jnp.ones((4, 3))}, tx.init(w), w)
    >>> u["kernel"].shape
    (4, 3)

  References:
    Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha, "AdamP: Slowing Down the Slowdown for Momentum
    Optimizers on Scale-invariant Weights", ICLR 2021, arXiv:2006.08217 (Algorithm 2, Eq. 12;
    official code github.com/clovaai/AdamP).
  """
  check_scalar("b1", b1, lo=0.0, hi=1.0, hi_open=True)
  check_scalar("b2", b2, lo=0.0, hi=1.0, hi_open=True)
  _check_projection_args(eps, delta, wd_ratio, weight_decay, nesterov, channel_axis)
  mu_dtype = check_dtype("mu_dtype", mu_dtype)

  def init_fn(params):
    return ScaleByAdamPState(
      count=jnp.zeros([], jnp.int32),
      mu=otu.tree_zeros_like(params, dtype=mu_dtype),
      nu=otu.tree_zeros_like(params, dtype=mu_dtype),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    require_params(params, "scale_by_adamp")
    count = optax.safe_increment(state.count)

    # One function per leaf: the moments are read and written once, in f32 or wider, and
    # the projection's reductions run on the fresh direction. The pieces are optax's
    # (moment updates, bias corrections) applied to the leaf.
    def leaf(path, g, m, v, w, decay):
      acc = m.dtype
      ct = jnp.promote_types(acc, jnp.float32)
      gc = g.astype(ct)
      m_new = otu.tree_update_moment(gc, m.astype(ct), b1, 1)
      v_new = otu.tree_update_moment_per_elem_norm(gc, v.astype(ct), b2, 2)

      def direction(m_new, v_new):
        denom = jnp.sqrt(otu.tree_bias_correction(v_new, b2, count)) + eps
        num = b1 * m_new + (1.0 - b1) * gc if nesterov else m_new
        # Official code: step lr / (1 - b1^t) on the whole (Nesterov) numerator; the
        # projection is linear, so correcting before it is the same update.
        return otu.tree_bias_correction(num, b1, count) / denom

      # The direction feeds a reduction and the output, so XLA stores it to a temporary
      # and reads it twice. For large models a second copy, behind a barrier on the moments
      # (which are stored anyway), is recomputed inside the output pass instead: same values.
      perturb = direction(m_new, v_new)
      perturb_out = None
      if recompute and w.size * w.dtype.itemsize <= _RECOMPUTE_MAX_LEAF_BYTES:
        perturb_out = direction(*jax.lax.optimization_barrier((m_new, v_new)))
      where = ("scale_by_adamp", jax.tree_util.keystr(path))
      perturb, r = _project_leaf(
        w, gc, perturb, delta, wd_ratio, eps, channel_axis, where, u_out=perturb_out
      )
      u = perturb + decay * r * w.astype(ct)
      return u.astype(g.dtype), m_new.astype(acc), v_new.astype(acc)

    # Measured on a 2-core CPU (bench/adamp_store_vs_recompute.py, 1000x1000 leaves):
    # recomputing cost 1.4x at 2-4M parameters, where the stored direction stays in cache
    # between its write and its reads, broke even at 6M and saved 17% at 10M (40 MB).
    n_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    recompute = n_bytes > _RECOMPUTE_ABOVE_BYTES
    decay = _decay_per_leaf(weight_decay, weight_decay_mask, params, "scale_by_adamp")
    out = jax.tree_util.tree_map_with_path(leaf, updates, state.mu, state.nu, params, decay)
    u, m, v = jax.tree.transpose(jax.tree.structure(updates), jax.tree.structure((0, 0, 0)), out)
    return u, ScaleByAdamPState(count=count, mu=m, nu=v)

  return guard(optax.GradientTransformationExtraArgs(init_fn, update_fn), "scale_by_adamp")


def adamp(
  learning_rate: optax.ScalarOrSchedule,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
  delta: float = 0.1,
  wd_ratio: float = 0.1,
  nesterov: bool = False,
  channel_axis: int | None = None,
  mu_dtype: Any = None,
  weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The AdamP optimizer: :func:`scale_by_adamp` then the learning rate.

  .. math::
    w_t = w_{t-1} - \eta_t\,\Big(\frac{q_t}{1-\beta_1^t} + \lambda\, r_t\, w_{t-1}\Big)

  Non-finite gradients: propagate (see :func:`scale_by_adamp`); compose with
  ``optax.apply_if_finite`` to skip such steps.

  Args:
    learning_rate: a float (finite, >= 0) or an optax schedule (a schedule's values are not
      checked: one returning NaN gives NaN updates).
    b1, b2, eps, weight_decay, delta, wd_ratio, nesterov, channel_axis, mu_dtype,
      weight_decay_mask: see :func:`scale_by_adamp`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optim import adamp
    >>> f = lambda p: jnp.sum((p["w"] - 1.0) ** 2)
    >>> tx = adamp(0.1)
    >>> p = {"w": jnp.zeros((2, 2))}; s = tx.init(p)
    >>> for _ in range(200):
    ...   u, s = tx.update(jax.grad(f)(p), s, p); p = optax.apply_updates(p, u)
    >>> bool(f(p) < 1e-2)
    True

  References:
    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
    Scale-invariant Weights", arXiv:2006.08217.
  """
  check_learning_rate(learning_rate)
  return optax.chain(
    scale_by_adamp(
      b1=b1,
      b2=b2,
      eps=eps,
      delta=delta,
      wd_ratio=wd_ratio,
      weight_decay=weight_decay,
      nesterov=nesterov,
      channel_axis=channel_axis,
      mu_dtype=mu_dtype,
      weight_decay_mask=weight_decay_mask,
    ),
    optax.scale_by_learning_rate(learning_rate),
  )


def scale_by_sgdp(
  momentum: float = 0.9,
  dampening: float = 0.0,
  nesterov: bool = False,
  eps: float = 1e-8,
  delta: float = 0.1,
  wd_ratio: float = 0.1,
  weight_decay: float = 0.0,
  channel_axis: int | None = None,
  mu_dtype: Any = None,
  weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Heavy-ball momentum followed by the AdamP projection (SGDP).

  .. math::
    b_t &= \mu\, b_{t-1} + (1 - \tau)\, g_t, \qquad
    p_t = b_t \ (\text{nesterov: } g_t + \mu\, b_t),\\
    u_t &= \Pi(p_t) + \frac{\lambda\, r_t}{1 - \mu}\, w,

  with :math:`\Pi` and :math:`r_t` the projection and weight-decay ratio of
  :func:`scale_by_adamp` (tested on the raw gradient). The :math:`1/(1-\mu)` factor on the
  decay is the official implementation's.

  Non-finite gradients: propagate: a NaN or inf gradient makes the update and the momentum
  buffer non-finite from then on; wrap the optimizer in ``optax.apply_if_finite`` to skip
  such steps (the skipped step leaves the state untouched).

  Args:
    momentum: :math:`\mu` in [0, 1).
    dampening: :math:`\tau` in [0, 1].
    nesterov: Nesterov momentum (a Python bool).
    eps, delta, wd_ratio, weight_decay, channel_axis, weight_decay_mask: see
      :func:`scale_by_adamp`.
    mu_dtype: optional dtype of the momentum buffer.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim import scale_by_sgdp
    >>> tx = scale_by_sgdp()
    >>> w = {"kernel": jnp.ones((4, 3))}
    >>> u, _ = tx.update({"kernel": jnp.ones((4, 3))}, tx.init(w), w)
    >>> u["kernel"].shape
    (4, 3)

  References:
    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
    Scale-invariant Weights", arXiv:2006.08217 (Algorithm 1).
  """
  check_scalar("momentum", momentum, lo=0.0, hi=1.0, hi_open=True)
  check_scalar("dampening", dampening, lo=0.0, hi=1.0)
  _check_projection_args(eps, delta, wd_ratio, weight_decay, nesterov, channel_axis)
  mu_dtype = check_dtype("mu_dtype", mu_dtype)

  def init_fn(params):
    return ScaleBySGDPState(momentum=otu.tree_zeros_like(params, dtype=mu_dtype))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    require_params(params, "scale_by_sgdp")

    def leaf(path, g, b, w, decay):
      ct = jnp.promote_types(b.dtype, jnp.float32)
      gc = g.astype(ct)
      b_new = momentum * b.astype(ct) + (1.0 - dampening) * gc
      d = gc + momentum * b_new if nesterov else b_new
      where = ("scale_by_sgdp", jax.tree_util.keystr(path))
      d, r = _project_leaf(w, gc, d, delta, wd_ratio, eps, channel_axis, where)
      u = d + decay * r / (1.0 - momentum) * w.astype(ct)
      return u.astype(g.dtype), b_new.astype(b.dtype)

    decay = _decay_per_leaf(weight_decay, weight_decay_mask, params, "scale_by_sgdp")
    out = jax.tree_util.tree_map_with_path(leaf, updates, state.momentum, params, decay)
    u, b = jax.tree.transpose(jax.tree.structure(updates), jax.tree.structure((0, 0)), out)
    return u, ScaleBySGDPState(momentum=b)

  return guard(optax.GradientTransformationExtraArgs(init_fn, update_fn), "scale_by_sgdp")


def sgdp(
  learning_rate: optax.ScalarOrSchedule,
  momentum: float = 0.9,
  dampening: float = 0.0,
  nesterov: bool = False,
  weight_decay: float = 0.0,
  eps: float = 1e-8,
  delta: float = 0.1,
  wd_ratio: float = 0.1,
  channel_axis: int | None = None,
  mu_dtype: Any = None,
  weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The SGDP optimizer: :func:`scale_by_sgdp` then the learning rate.

  .. math::
    w_t = w_{t-1} - \eta_t\,\Big(\Pi(p_t) + \frac{\lambda r_t}{1-\mu} w_{t-1}\Big)

  Non-finite gradients: propagate (see :func:`scale_by_sgdp`); compose with
  ``optax.apply_if_finite`` to skip such steps.

  Args:
    learning_rate: a float (finite, >= 0) or an optax schedule (a schedule's values are not
      checked: one returning NaN gives NaN updates).
    momentum, dampening, nesterov, weight_decay, eps, delta, wd_ratio, channel_axis,
      mu_dtype, weight_decay_mask: see :func:`scale_by_sgdp`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optim import sgdp
    >>> f = lambda p: jnp.sum((p["w"] - 1.0) ** 2)
    >>> tx = sgdp(0.05)
    >>> p = {"w": jnp.zeros((2, 2))}; s = tx.init(p)
    >>> for _ in range(200):
    ...   u, s = tx.update(jax.grad(f)(p), s, p); p = optax.apply_updates(p, u)
    >>> bool(f(p) < 1e-2)
    True

  References:
    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
    Scale-invariant Weights", arXiv:2006.08217.
  """
  check_learning_rate(learning_rate)
  return optax.chain(
    scale_by_sgdp(
      momentum=momentum,
      dampening=dampening,
      nesterov=nesterov,
      eps=eps,
      delta=delta,
      wd_ratio=wd_ratio,
      weight_decay=weight_decay,
      channel_axis=channel_axis,
      mu_dtype=mu_dtype,
      weight_decay_mask=weight_decay_mask,
    ),
    optax.scale_by_learning_rate(learning_rate),
  )
