r"""FIND: the starting-noise distribution as a policy over a frozen sampler.

Chen et al., "FIND: Fine-tuning Initial Noise Distribution with Policy Optimization for
Diffusion Models", ACM MM 2024 (https://arxiv.org/abs/2407.19453); official code
github.com/vpx-ecnu/FIND (``dist_train2.py``: ``MyModel``, ``_train_value_func``,
``_train_policy_func``).

Sampling from a fixed denoiser is a one-step MDP whose only action is ``x_T``: the policy
is a diagonal Gaussian :math:`\pi_\theta = \mathcal N(\mu, \operatorname{diag}\sigma^2)`
(initialised at the sampler's :math:`\mathcal N(0, I)`), the reward that of the final
sample. The update is a policy gradient with the reward calibrated by a learned
prediction of the expected reward (:func:`find_calibration`), the importance ratio to the
original policy clipped (:func:`find_loss`) and a squared-distance anchor of the
parameters to :math:`(0, 1)`. Only ``x_T`` is learned; the denoiser is never touched.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff._finetune._policy import gaussian_log_prob
from jaxdiff._validation import as_key, check_choice, check_scalar
from optim.losses import ppo_clip_loss

Array = jax.Array

_VARIANTS = ("find", "ppo")


class NoisePolicy(NamedTuple):
  """A diagonal Gaussian over the starting noise ``x_T`` (a pytree: optax steps it).

  Attributes:
    mean: :math:`\\mu`, shaped like one sample.
    std: :math:`\\sigma > 0`, the same shape.
  """

  mean: Array
  std: Array


def noise_policy(shape, *, dtype=jnp.float32) -> NoisePolicy:
  r"""The sampler's own starting distribution :math:`\mathcal N(0, I)` as a :class:`NoisePolicy`.

  Args:
    shape: the shape of one sample (no batch axis).
    dtype: a floating dtype.

  Returns:
    ``NoisePolicy(zeros(shape), ones(shape))`` (the official ``MyModel`` initialisation).

  Example:
    >>> from jaxdiff.finetune import noise_policy
    >>> p = noise_policy((2, 2))
    >>> p.mean.shape, float(p.std.sum())
    ((2, 2), 4.0)

  References:
    Chen et al., arXiv:2407.19453 (official ``dist_train2.py``, ``MyModel``).
  """
  shape = tuple(int(s) for s in shape)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"noise_policy: dtype must be a floating dtype, got {dtype}")
  return NoisePolicy(jnp.zeros(shape, dtype), jnp.ones(shape, dtype))


def _check_policy(policy, who, name="policy"):
  if not isinstance(policy, NoisePolicy):
    raise TypeError(
      f"{who}: {name} must be a NoisePolicy (noise_policy(shape)), got {type(policy).__name__}"
    )
  if jnp.shape(policy.mean) != jnp.shape(policy.std):
    raise ValueError(
      f"{who}: {name}.std shape {jnp.shape(policy.std)} differs from "
      f"{name}.mean shape {jnp.shape(policy.mean)}"
    )


def find_sample(policy: NoisePolicy, num_samples: int, *, key) -> Array:
  r"""Draws starting noise :math:`x_T = \mu + \sigma\odot z`, :math:`z\sim\mathcal N(0, I)`.

  Args:
    policy: the :class:`NoisePolicy`.
    num_samples: the batch size :math:`\ge 1`.
    key: PRNG key.

  Returns:
    ``(num_samples, *policy.mean.shape)`` in the policy's dtype.

  Example:
    >>> from jaxdiff.finetune import find_sample, noise_policy
    >>> find_sample(noise_policy((3,)), 5, key=0).shape
    (5, 3)

  References:
    Chen et al., arXiv:2407.19453 (official ``MyModel.forward``).
  """
  _check_policy(policy, "find_sample")
  n = int(check_scalar("find_sample: num_samples", num_samples, lo=1, integer=True, static=True))
  mean = jnp.asarray(policy.mean)
  z = jax.random.normal(as_key(key), (n,) + mean.shape, mean.dtype)
  return mean + policy.std * z


def find_clamp(policy: NoisePolicy, *, min_std: float = 1e-4) -> NoisePolicy:
  r"""Projects the policy back to :math:`\sigma \ge \sigma_{\min}` after an optimizer step.

  Args:
    policy: the :class:`NoisePolicy`.
    min_std: :math:`\sigma_{\min} > 0` (the official ``check_std``: ``1e-4``).

  Returns:
    The policy with ``std`` clipped from below.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff.finetune import NoisePolicy, find_clamp
    >>> find_clamp(NoisePolicy(jnp.zeros(1), jnp.array([-1.0])), min_std=0.5).std.tolist()
    [0.5]

  References:
    Chen et al., arXiv:2407.19453 (official ``MyModel.check_std``).
  """
  _check_policy(policy, "find_clamp")
  check_scalar("find_clamp: min_std", min_std, lo=0.0, lo_open=True)
  return NoisePolicy(policy.mean, jnp.maximum(policy.std, min_std))


def find_calibration(predicted: Array, rewards: Array) -> tuple[Array, Array]:
  r"""Dynamic reward calibration: the advantage and the reward predictor's loss.

  A predictor :math:`V_\psi` of the expected reward of the current distribution (the
  official code's ``ValueInit`` network, fed the policy's :math:`(\mu, \sigma)` and the
  prompt) is fitted online by :math:`\mathcal L_\psi = \operatorname{mean}(V_\psi -
  r)^2`, and the policy is trained on the calibrated reward :math:`A = r - V_\psi`, so a
  reward level the policy already reaches no longer pushes it:

  .. math::
    A_j = r_j - \operatorname{sg}(V_j),\qquad
    \mathcal L_\psi = \frac1B\sum_j (V_j - \operatorname{sg}(r_j))^2 .

  Differentiate ``loss`` in the predictor's parameters; ``advantages`` carry no gradient.
  Since :math:`V` does not depend on the sampled :math:`x_T`, subtracting it keeps the
  policy gradient unbiased.

  Args:
    predicted: :math:`V` per sample, ``(B,)`` or a scalar (a predictor of the policy alone).
    rewards: ``(B,)`` rewards of the samples.

  Returns:
    ``(advantages (B,), loss)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff.finetune import find_calibration
    >>> adv, loss = find_calibration(jnp.array(0.5), jnp.array([1.0, 0.0]))
    >>> adv.tolist(), float(loss)
    ([0.5, -0.5], 0.25)

  References:
    Chen et al., arXiv:2407.19453 (dynamic reward calibration; official
    ``_train_value_func`` and the ``adv`` of ``_train_policy_func``).
  """
  r = jnp.asarray(rewards)
  v = jnp.asarray(predicted)
  for name, a in (("predicted", v), ("rewards", r)):
    if not jnp.issubdtype(a.dtype, jnp.floating):
      raise TypeError(
        f"find_calibration: {name} must be a floating-point array, got dtype {a.dtype}"
      )
  if r.ndim != 1 or r.size == 0:
    raise ValueError(f"find_calibration: rewards must be (B,) with B >= 1, got shape {r.shape}")
  if v.shape not in ((), r.shape):
    raise ValueError(
      f"find_calibration: predicted must be a scalar or shaped like rewards "
      f"{r.shape}, got shape {v.shape}"
    )
  adv = r - jax.lax.stop_gradient(v)
  loss = jnp.mean((v - jax.lax.stop_gradient(r)) ** 2)
  return adv, loss


def find_loss(
  policy: NoisePolicy,
  old_policy: NoisePolicy,
  x_T: Array,
  advantages: Array,
  *,
  epsilon: float = 0.2,
  reward_weight: float = 1.0,
  kl_weight: float = 0.0,
  variant: str = "find",
  reduction: str = "mean",
) -> Array:
  r"""FIND's clipped policy loss of the starting-noise policy.

  With :math:`\rho_j = \pi_\theta(x_T^j)/\pi_{\text{old}}(x_T^j)` (log-densities reduced
  per sample as ``reduction`` says),

  .. math::
    \mathcal L = -\frac{w_r}{B}\sum_j A_j \operatorname{clip}(\rho_j, 1-\epsilon, 1+\epsilon)
      + w_{kl}\,\operatorname{mean}\big(\mu^2 + (\sigma - 1)^2\big)

  (``variant="find"``: the official ``_train_policy_func``, whose "old" policy is the
  original :math:`\mathcal N(0, I)`: ``old_mean`` is set once and never updated, so
  clipping keeps the distribution near the sampler's own). The clip is plain: outside
  the band the sample gives no gradient whatever the sign of :math:`A`, unlike PPO.
  ``variant="ppo"`` replaces the first term by :math:`w_r` times PPO's
  :func:`optim.losses.ppo_clip_loss` (pessimistic min; to use with the previous iterate as
  ``old_policy``). The anchor is the official code's ``kl_regularizer``, a squared
  distance of the parameters to :math:`(0, 1)` (not a KL divergence).

  Args:
    policy: the current :class:`NoisePolicy` (differentiated).
    old_policy: the policy the ratio is taken against (not differentiated).
    x_T: ``(B, *shape)`` starting noise that produced the rewards.
    advantages: ``(B,)`` calibrated rewards (:func:`find_calibration`).
    epsilon: the clip range :math:`\epsilon \in [0, 1)` (official ``ratio_clip``: 0.2).
    reward_weight: :math:`w_r \ge 0` (official ``reward_weight``; its README uses 10).
    kl_weight: :math:`w_{kl} \ge 0` (official README: 0.01).
    variant: ``"find"`` or ``"ppo"``.
    reduction: ``"mean"`` (the official per-entry mean of the log-density) or ``"sum"``.

  Returns:
    The scalar loss (to minimize).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff.finetune import find_loss, find_sample, noise_policy
    >>> p = noise_policy((2,))
    >>> x = find_sample(p, 4, key=0)
    >>> float(find_loss(p, p, x, jnp.array([2.0, 0.0, 0.0, 2.0])))  # ratio 1: -mean(A)
    -1.0

  References:
    Chen et al., arXiv:2407.19453 (ratio clipping; official ``dist_train2.py``,
    ``_train_policy_func``, ``calculate_log_prob``).
  """
  who = "find_loss"
  _check_policy(policy, who)
  _check_policy(old_policy, who, "old_policy")
  variant = check_choice(f"{who}: variant", variant, _VARIANTS)
  eps = check_scalar(f"{who}: epsilon", epsilon, lo=0.0, hi=1.0, hi_open=True)
  check_scalar(f"{who}: reward_weight", reward_weight, lo=0.0)
  check_scalar(f"{who}: kl_weight", kl_weight, lo=0.0)
  x = jnp.asarray(x_T)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{who}: x_T must be a floating-point array, got dtype {x.dtype}")
  shape = jnp.shape(policy.mean)
  if x.shape[1:] != shape or x.ndim != len(shape) + 1 or x.shape[0] == 0:
    raise ValueError(f"{who}: x_T must be (B, *{shape}) with B >= 1, got shape {x.shape}")
  if jnp.shape(old_policy.mean) != shape:
    raise ValueError(f"{who}: old_policy has shape {jnp.shape(old_policy.mean)}, policy {shape}")
  adv = jnp.asarray(advantages)
  if adv.shape != (x.shape[0],):
    raise ValueError(f"{who}: advantages must be (B,) = ({x.shape[0]},), got shape {adv.shape}")
  logp = gaussian_log_prob(x, policy.mean[None], policy.std[None], reduction=reduction)
  old = gaussian_log_prob(
    x,
    jax.lax.stop_gradient(old_policy.mean)[None],
    jax.lax.stop_gradient(old_policy.std)[None],
    reduction=reduction,
  )
  if variant == "find":
    if not jnp.issubdtype(adv.dtype, jnp.floating):
      raise TypeError(f"{who}: advantages must be a floating-point array, got dtype {adv.dtype}")
    ratio = jnp.exp(logp - jax.lax.stop_gradient(old))
    ratio = jnp.clip(ratio, 1.0 - eps, 1.0 + eps)
    pg = -jnp.mean(jax.lax.stop_gradient(adv) * ratio)
  else:
    pg = ppo_clip_loss(logp, old, adv, epsilon_low=eps, epsilon_high=eps)
  anchor = jnp.mean(policy.mean**2 + (policy.std - 1.0) ** 2)
  return reward_weight * pg + kl_weight * anchor
