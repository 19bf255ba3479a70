"""Losses: StableMax cross-entropy (Prieto et al.); PPO and GPPO clipped policy losses."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from optim._validation import check_labels, check_scalar, poison


def _log_s(x: jax.Array) -> jax.Array:
  r""":math:`\log s(x)` with :math:`s(x) = x + 1` for :math:`x \ge 0`, :math:`1/(1-x)` else.

  Both branches are evaluated on inputs clamped to their own half-line (the "double where"
  trick), so the unselected branch never produces an infinite value whose zero cotangent
  would turn the gradient into NaN.
  """
  # `where`, not maximum/minimum: those split the derivative 1/2-1/2 at a tie (x = 0).
  # NaN fails ``x >= 0``, so it reaches the negative branch and propagates (a NaN logit
  # used to be read as 0 by both clamps, giving a plausible finite loss).
  pos = jnp.where(x >= 0, x, 0.0)
  neg = jnp.where(x >= 0, 0.0, x)
  return jnp.where(x >= 0, jnp.log1p(pos), -jnp.log1p(-neg))


def stablemax_cross_entropy(logits: jax.Array, labels: jax.Array, *, axis: int = -1) -> jax.Array:
  r"""Cross-entropy of the StableMax distribution, with finite gradients for all finite logits.

  .. math::
    s(x) = \begin{cases} x + 1 & x \ge 0 \\ \dfrac{1}{1 - x} & x < 0 \end{cases}, \qquad
    \operatorname{StableMax}(x)_i = \frac{s(x_i)}{\sum_j s(x_j)}, \\
    \ell(x, y) = -\log \operatorname{StableMax}(x)_y
      = \log \sum_j s(x_j) - \log s(x_y).

  :math:`s` is continuous with a continuous first derivative at 0 (both branches have value
  and slope 1), grows linearly instead of exponentially, so the loss saturates only
  polynomially and "Softmax Collapse" (all probability mass rounding to one class in
  float32) does not occur. :math:`\log s` is computed with ``log1p`` on each branch's own
  half-line, so there is no ``inf * 0`` in the backward pass; a NaN logit makes its
  example's loss NaN (propagated, never read as a finite logit). The sum is accumulated in
  float32 or wider and the loss returned in the logits' dtype (at least float32).

  **Labels.** Class labels are integers in ``[0, num_classes)``. Concrete labels are
  checked: a float or bool array is a ``TypeError``, a label out of range (``-1``
  included: it is not "the last class") a ``ValueError`` naming ``labels``, the range and
  the first offending value. Traced labels (under ``jit``) cannot raise: the loss of an
  example with an invalid label is NaN, and so is its gradient (explicit poisoning, caught
  by ``jax_debug_nans`` or ``checkify``), never the loss of another class.

  Args:
    logits: array ``(..., num_classes)`` (class axis given by ``axis``).
    labels: integer class indices in ``[0, num_classes)``, of shape ``logits.shape``
      without ``axis``.
    axis: the class axis, an int in ``[-logits.ndim, logits.ndim)``.

  Returns:
    The per-example loss, shape of ``labels`` (NaN where a traced label is invalid).

  Raises:
    TypeError: ``labels`` is not an integer array.
    ValueError: a concrete label outside ``[0, num_classes)``, ``labels`` of the wrong
      shape, scalar ``logits`` or an ``axis`` outside the logits.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.losses import stablemax_cross_entropy
    >>> loss = stablemax_cross_entropy(jnp.array([[0.0, 1.0, -1.0]]), jnp.array([1]))
    >>> round(float(loss[0]), 4)  # -log(2 / (1 + 2 + 0.5))
    0.5596

  References:
    Prieto, Barsbey, Mediano, Birdal, "Grokking at the Edge of Numerical Stability",
    ICLR 2025, arXiv:2501.04697 (Section 4, StableMax).
  """
  logits = jnp.asarray(logits)
  if logits.ndim == 0:
    raise ValueError("logits must have a class axis, got a scalar")
  axis = check_scalar("axis", axis, lo=-logits.ndim, hi=logits.ndim - 1, integer=True, static=True)
  axis %= logits.ndim
  valid = check_labels("labels", labels, logits.shape[axis])
  labels = jnp.asarray(labels)
  expected = logits.shape[:axis] + logits.shape[axis + 1 :]
  if labels.shape != expected:
    raise ValueError(
      f"labels shape {labels.shape} does not match logits shape {logits.shape} without "
      f"axis {axis} ({expected})"
    )
  ct = jnp.promote_types(logits.dtype, jnp.float32)
  x = jnp.moveaxis(logits.astype(ct), axis, -1)
  log_s = _log_s(x)
  # log sum_j s(x_j) = logsumexp(log s): stable for very large and very negative logits.
  log_total = jax.nn.logsumexp(log_s, axis=-1)
  index = jnp.where(valid, labels, 0).astype(jnp.int32)[..., None]
  log_sy = jnp.take_along_axis(log_s, index, axis=-1)[..., 0]
  return poison(log_total - log_sy, valid)


def _policy_inputs(log_probs, old_log_probs, advantages, mask, epsilon_low, epsilon_high, who):
  """Validates the shared inputs of the clipped policy losses; returns arrays and weights."""
  check_scalar(f"{who}: epsilon_low", epsilon_low, lo=0.0, hi=1.0, hi_open=True)
  check_scalar(f"{who}: epsilon_high", epsilon_high, lo=0.0)
  log_probs, old_log_probs = jnp.asarray(log_probs), jnp.asarray(old_log_probs)
  advantages = jnp.asarray(advantages)
  for name, x in (
    ("log_probs", log_probs),
    ("old_log_probs", old_log_probs),
    ("advantages", advantages),
  ):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"{who}: {name} must be a floating-point array, got dtype {x.dtype}")
  if old_log_probs.shape != log_probs.shape:
    raise ValueError(
      f"{who}: old_log_probs shape {old_log_probs.shape} differs from log_probs shape "
      f"{log_probs.shape} (one log-probability per sampled token)"
    )
  try:
    advantages = jnp.broadcast_to(advantages, log_probs.shape)
  except ValueError as err:
    raise ValueError(
      f"{who}: advantages of shape {advantages.shape} do not broadcast to log_probs shape "
      f"{log_probs.shape} (per sequence: shape (batch, 1); per token: the same shape)"
    ) from err
  if mask is None:
    weights = jnp.ones(log_probs.shape, log_probs.dtype)
  else:
    mask = jnp.asarray(mask)
    if mask.shape != log_probs.shape:
      raise ValueError(f"{who}: mask shape {mask.shape} differs from log_probs {log_probs.shape}")
    weights = mask.astype(log_probs.dtype)
  if log_probs.size == 0:
    raise ValueError(f"{who}: log_probs is empty (no tokens): the mean loss is undefined")
  return log_probs - jax.lax.stop_gradient(old_log_probs), advantages, weights


def _token_mean(per_token, weights):
  """Token-level mean over the valid tokens (DAPO's and Klear-Reasoner's averaging).

  A batch without valid tokens gives 0 (and zero gradient), not 0/0.
  """
  return jnp.sum(per_token * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def ppo_clip_loss(
  log_probs: jax.Array,
  old_log_probs: jax.Array,
  advantages: jax.Array,
  *,
  epsilon_low: float = 0.2,
  epsilon_high: float = 0.2,
  mask: jax.Array | None = None,
) -> jax.Array:
  r"""PPO's clipped surrogate loss, averaged over tokens (the baseline of :func:`gppo_loss`).

  With the importance ratio :math:`\delta_t = \pi_\theta(a_t)/\pi_{\text{old}}(a_t)`,

  .. math::
    \mathcal{L}(\theta) = -\frac{1}{\sum_t m_t}\sum_t m_t
      \min\big(\delta_t A_t,\ \operatorname{clip}(\delta_t, 1-\epsilon_l, 1+\epsilon_h) A_t\big).

  Where the clipped branch is the minimum (:math:`A_t > 0,\ \delta_t > 1+\epsilon_h` or
  :math:`A_t < 0,\ \delta_t < 1-\epsilon_l`) the token's gradient is exactly zero: that is
  what GPPO changes. ``epsilon_high > epsilon_low`` is DAPO's "clip-higher".

  Args:
    log_probs: :math:`\log\pi_\theta(a_t)` of the sampled tokens, any shape (differentiated).
    old_log_probs: :math:`\log\pi_{\text{old}}(a_t)`, same shape (treated as constant).
    advantages: :math:`A_t`, broadcastable to ``log_probs`` (e.g. ``(batch, 1)`` for one
      advantage per sequence, as in GRPO).
    epsilon_low: :math:`\epsilon_l \in [0, 1)`.
    epsilon_high: :math:`\epsilon_h \ge 0`.
    mask: optional 0/1 token mask of ``log_probs``' shape (padding = 0).

  Returns:
    The scalar loss (to minimize). No valid token gives 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.losses import ppo_clip_loss
    >>> lp, old = jnp.log(jnp.array([0.6, 0.1])), jnp.log(jnp.array([0.4, 0.2]))
    >>> round(float(ppo_clip_loss(lp, old, jnp.array([1.0, -1.0]))), 4)  # -(1.2 - 0.8) / 2
    -0.2

  References:
    Schulman, Wolski, Dhariwal, Radford, Klimov, "Proximal Policy Optimization Algorithms",
    arXiv:1707.06347 (Eq. 7); Yu et al., "DAPO", arXiv:2503.14476 (clip-higher,
    token-level mean).
  """
  log_ratio, adv, w = _policy_inputs(
    log_probs, old_log_probs, advantages, mask, epsilon_low, epsilon_high, "ppo_clip_loss"
  )
  ratio = jnp.exp(log_ratio)
  clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
  return -_token_mean(jnp.minimum(ratio * adv, clipped * adv), w)


def gppo_loss(
  log_probs: jax.Array,
  old_log_probs: jax.Array,
  advantages: jax.Array,
  *,
  epsilon_low: float = 0.2,
  epsilon_high: float = 0.28,
  dual_clip: float | None = 3.0,
  mask: jax.Array | None = None,
) -> jax.Array:
  r"""GPPO: PPO clipping that keeps a bounded gradient on the clipped tokens (Klear-Reasoner).

  With :math:`\delta_t = \pi_\theta(a_t)/\pi_{\text{old}}(a_t)` and :math:`\operatorname{sg}`
  the stop-gradient, the paper's objective (Su et al., Section 3.2) is

  .. math::
    \ell_t = -\min\Big(\delta_t A_t,\ \operatorname{clip}\Big(\delta_t,
        \frac{1-\epsilon_l}{\operatorname{sg}(\delta_t)}\delta_t,
        \frac{1+\epsilon_h}{\operatorname{sg}(\delta_t)}\delta_t\Big) A_t\Big),

  and the official code (``compute_gppo_loss``) also applies dual-clip PPO (Ye et al.) to
  the negative-advantage tokens, with :math:`c` = ``dual_clip``:

  .. math::
    \ell^{\text{dual}}_t = \begin{cases} \min(\ell_t,\ -c A_t) & A_t < 0 \\
      \ell_t & A_t \ge 0 \end{cases}, \qquad
    \mathcal{L}(\theta) = \frac{1}{\sum_t m_t}\sum_t m_t\, \ell^{\text{dual}}_t.

  The bounds of the clip evaluate to :math:`1 \mp \epsilon`, so :math:`\ell_t` has PPO's
  value; only the backward pass differs. A token in the clipped branch contributes
  :math:`-(1+\epsilon_h) A_t \nabla\log\pi_\theta(a_t)` (if :math:`A_t > 0,\
  \delta_t > 1+\epsilon_h`) or :math:`-(1-\epsilon_l) A_t \nabla\log\pi_\theta(a_t)` (if
  :math:`A_t < 0,\ \delta_t < 1-\epsilon_l`) instead of PPO's zero: the gradient is
  kept, with its magnitude capped at the clip boundary (it no longer grows with
  :math:`\delta_t`). A token with :math:`A_t < 0,\ \delta_t > c` is dual-clipped: its
  loss is the constant :math:`-c A_t` and its gradient zero. Other tokens get PPO's
  :math:`-\delta_t A_t \nabla\log\pi_\theta`.

  **Which is which.** The default ``dual_clip=3.0`` is the official code (the default of
  its ``compute_gppo_loss`` and of its ``ppo_trainer.yaml``; the paper's training scripts
  pass 10). ``dual_clip=None`` is the paper's Section 3.2 objective without the dual clip
  (this function's only form before the official one became the default); its value then
  equals :func:`ppo_clip_loss`'s exactly. The defaults :math:`\epsilon_l = 0.2,\
  \epsilon_h = 0.28` are the official training scripts' ``clip_ratio_low`` /
  ``clip_ratio_high`` (DAPO's clip-higher values).

  Args:
    log_probs: :math:`\log\pi_\theta(a_t)` of the sampled tokens, any shape (differentiated).
    old_log_probs: :math:`\log\pi_{\text{old}}(a_t)`, same shape (treated as constant).
    advantages: :math:`A_t`, broadcastable to ``log_probs``.
    epsilon_low: :math:`\epsilon_l \in [0, 1)`.
    epsilon_high: :math:`\epsilon_h \ge 0`.
    dual_clip: :math:`c > 1`, the dual-clip bound on the ratio of negative-advantage
      tokens (official default 3), or ``None`` (or ``inf``) for none.
    mask: optional 0/1 token mask of ``log_probs``' shape.

  Returns:
    The scalar loss (to minimize); with ``dual_clip=None`` its value is
    :func:`ppo_clip_loss`'s. No valid token gives 0.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.losses import gppo_loss, ppo_clip_loss
    >>> old = jnp.log(jnp.array([0.4]))
    >>> lp = jnp.log(jnp.array([0.6]))
    >>> f = lambda loss: jax.grad(lambda x: loss(x, old, jnp.array([1.0])))(lp)
    >>> float(f(ppo_clip_loss)[0]), round(float(f(gppo_loss)[0]), 4)  # ratio 1.5: clipped
    (-0.0, -1.28)
    >>> lp4, neg = jnp.log(jnp.array([1.6])), jnp.array([-1.0])  # ratio 4, A < 0
    >>> float(gppo_loss(lp4, old, neg)), float(gppo_loss(lp4, old, neg, dual_clip=None))
    (3.0, 4.0)

  References:
    Su, Pan, Bai, Liu, Dong, Huang, Hu, Zhang, Gai, Zhou, "Klear-Reasoner: Advancing
    Reasoning Capability via Gradient-Preserving Clipping Policy Optimization",
    arXiv:2508.07629 (2025), Section 3.2; official code: github.com/Kwai-Klear/KlearReasoner,
    ``verl/trainer/ppo/core_algos.py`` (``compute_gppo_loss``). Ye et al., "Mastering
    Complex Control in MOBA Games with Deep Reinforcement Learning", AAAI 2020,
    arXiv:1912.09729 (dual clip).
  """
  log_ratio, adv, w = _policy_inputs(
    log_probs, old_log_probs, advantages, mask, epsilon_low, epsilon_high, "gppo_loss"
  )
  if dual_clip is not None:
    c = check_scalar("gppo_loss: dual_clip", dual_clip, lo=1.0, lo_open=True, allow_inf=True)
    dual_clip = None if c == math.inf else dual_clip

  def gppo_tokens(log_ratio):
    ratio = jnp.exp(log_ratio)
    sg = jax.lax.stop_gradient(ratio)
    # delta / sg(delta) written as exp(l - sg(l)): value exactly 1, derivative d log pi, and
    # no 0/0 when the ratio underflows. `where`, not jnp.clip, so unclipped tokens keep delta.
    unit = jnp.exp(log_ratio - jax.lax.stop_gradient(log_ratio))
    bound = jnp.where(
      sg > 1.0 + epsilon_high,
      (1.0 + epsilon_high) * unit,
      jnp.where(sg < 1.0 - epsilon_low, (1.0 - epsilon_low) * unit, ratio),
    )
    return -jnp.minimum(ratio * adv, bound * adv)

  if dual_clip is None:
    return _token_mean(gppo_tokens(log_ratio), w)
  # The official loss: min(-A c, loss) on A < 0, so a token above the dual clip has the
  # constant loss -A c. Its ratio is then replaced by 1 (log-ratio 0) in the PPO branch:
  # its gradient is zero either way, and an overflowing ratio cannot give 0 * inf = NaN.
  cap = -adv * dual_clip
  capped = (adv < 0) & (jax.lax.stop_gradient(gppo_tokens(log_ratio)) > cap)
  per_token = gppo_tokens(jnp.where(capped, 0.0, log_ratio))
  per_token = jnp.where(adv < 0, jnp.minimum(per_token, cap), per_token)  # ties: 1/2 each
  per_token = jnp.where(capped, cap, per_token)
  return _token_mean(per_token, w)
