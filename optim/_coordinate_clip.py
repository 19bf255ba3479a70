"""Coordinate-wise clipping of an update direction (Pan & Li)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from optim._validation import check_scalar, guard


def _kth_largest_magnitude(leaves, k: int) -> jax.Array:
  """Exact k-th largest ``|x|`` over all leaves, by bisection on the float bit patterns.

  Non-negative IEEE floats order like their bit patterns read as signed integers, so a
  binary search over the integers (one counting pass over the data per bit) finds the exact
  order statistic with O(bits) streaming passes and no sort or copy of the data;
  ``lax.top_k`` over millions of coordinates is orders of magnitude slower on CPU.
  """
  ct = jnp.promote_types(jnp.result_type(*leaves), jnp.float32)
  it = jnp.int64 if ct == jnp.float64 else jnp.int32
  bits = [jax.lax.bitcast_convert_type(jnp.abs(x.astype(ct)), it) for x in leaves]
  hi0 = jnp.max(jnp.stack([jnp.max(b) for b in bits]))

  def count_at_least(t):
    return sum(jnp.sum(b >= t, dtype=jnp.int64 if it == jnp.int64 else jnp.int32) for b in bits)

  def body(_, lohi):
    lo, hi = lohi  # invariant: count(>= lo) >= k, count(>= hi + 1) < k
    mid = lo + (hi - lo + 1) // 2
    ok = count_at_least(mid) >= k
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

  n_bits = 64 if it == jnp.int64 else 32
  lo, _ = jax.lax.fori_loop(0, n_bits, body, (jnp.zeros((), it), hi0))
  return jax.lax.bitcast_convert_type(lo, ct)


# coordinate_clip is stateless; the public name stays for the one release that still exports
# it.
CoordinateClipState = optax.EmptyState


def coordinate_clip(
  threshold: float | None = None, *, fraction: float | None = None
) -> optax.GradientTransformationExtraArgs:
  r"""Clips every coordinate of the update to :math:`[-\tau, \tau]` (coordinate-wise clipping).

  .. math::
    \operatorname{clip}(u, \tau)_i = \operatorname{sign}(u_i)\,\min(|u_i|, \tau).

  Either ``threshold`` gives a fixed :math:`\tau`, or ``fraction`` :math:`= q` picks it
  adaptively at every step as the magnitude of the :math:`\lceil q\,d\rceil`-th largest
  coordinate over the *whole* pytree (:math:`d` coordinates), so that exactly the top
  :math:`q` fraction of coordinates is clipped down to the smallest of them. Pan & Li show
  that a small fraction of coordinates carries most of SGD's bad directional sharpness;
  clipping them lowers :math:`u^\top H u / \|u\|^2`-type sharpness of the update and speeds up
  SGD and Adam alike. Chain it after the optimizer whose direction it clips, before the
  learning rate, e.g. ``optax.chain(coordinate_clip(fraction=0.1), optax.sgd(lr))`` clips
  the gradient; placing it after ``scale_by_adam`` clips Adam's direction.

  Caveat of the adaptive rule: every coordinate moves at most as fast as the
  :math:`\lceil q d\rceil`-th largest one, so once fewer than that many coordinates still
  have a sizeable gradient (late in a deterministic run), progress stalls; use a fixed
  ``threshold`` (or a schedule on the base learning rate) where that matters.

  The adaptive threshold is the exact order statistic, found by bisection on the float bit
  patterns (32 counting passes over the update for float32, no sort). Zero-size leaves are
  ignored (an update with no coordinates at all is returned as it is).

  Non-finite gradients: NaN coordinates propagate (they stay NaN; the adaptive rule counts
  them among the largest). A ``±inf`` coordinate is clipped to :math:`\pm\tau` like any
  other large one: clipping is this transformation's purpose. Wrap the optimizer in
  ``optax.apply_if_finite`` to skip such steps instead. There is no state to poison.

  Args:
    threshold: fixed :math:`\tau > 0` (``inf``: no clipping). May be traced, e.g. by
      ``optax.inject_hyperparams``.
    fraction: adaptive rule, fraction :math:`q \in (0, 1]` of coordinates clipped.
      Static, because it sets the rank :math:`\lceil q d\rceil` of the order statistic:
      under ``optax.inject_hyperparams`` pass ``static_args=("fraction",)`` (a traced
      ``fraction`` raises a ``TypeError`` that says so).

  Returns:
    A stateless ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim import coordinate_clip
    >>> tx = coordinate_clip(fraction=0.25)
    >>> u, _ = tx.update(jnp.array([4.0, -3.0, 1.0, 0.5]), tx.init(None))
    >>> u.tolist()
    [4.0, -3.0, 1.0, 0.5]
    >>> u, _ = coordinate_clip(fraction=0.5).update(jnp.array([4.0, -3.0, 1.0, 0.5]), ())
    >>> u.tolist()
    [3.0, -3.0, 1.0, 0.5]

  References:
    Pan, Li, "Toward Understanding Why Adam Converges Faster Than SGD for Transformers",
    arXiv:2306.00204 (Section 5, coordinate-wise clipping).
  """
  if (threshold is None) == (fraction is None):
    raise ValueError("coordinate_clip needs exactly one of `threshold` or `fraction`.")
  if threshold is not None:
    check_scalar("threshold", threshold, lo=0.0, lo_open=True, allow_inf=True)
  else:
    fraction = check_scalar("fraction", fraction, lo=0.0, hi=1.0, lo_open=True, static=True)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    leaves = [x for x in jax.tree.leaves(updates) if x.size]  # zero-size leaves: nothing to clip
    if threshold is not None:
      tau = threshold
    elif not leaves:
      return updates, state
    else:
      size = sum(x.size for x in leaves)
      tau = _kth_largest_magnitude(leaves, max(1, math.ceil(fraction * size)))
    clip = lambda x: jnp.clip(x, -tau, tau).astype(x.dtype)
    return jax.tree.map(clip, updates), state

  return guard(optax.GradientTransformationExtraArgs(init_fn, update_fn), "coordinate_clip")
