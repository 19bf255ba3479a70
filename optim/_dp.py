"""Differentially private SGD on per-example gradients: DP-SGD and DiceSGD (error feedback)."""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from optim._tree import tree_probe
from optim._validation import (
  as_key,
  check_dtype,
  check_learning_rate,
  check_scalar,
  concrete,
  guard,
  per_example_batch,
  renamed_kwargs,
)

PyTree = Any


def _check_clip_and_noise(clip_name, clip, noise_multiplier):
  """``clip`` > 0 (``inf``: no clipping) and ``noise_multiplier`` >= 0, finite.

  Without clipping the sensitivity is unbounded, so the Gaussian mechanism has no finite
  noise scale: ``clip = inf`` is accepted only with ``noise_multiplier = 0``.
  """
  c = check_scalar(clip_name, clip, lo=0.0, lo_open=True, allow_inf=True)
  s = check_scalar("noise_multiplier", noise_multiplier, lo=0.0)
  if c is not None and s is not None and math.isinf(c) and s > 0.0:
    raise ValueError(
      f"{clip_name}=inf (no clipping) leaves the sensitivity unbounded, so no noise scale "
      f"protects it: use a finite {clip_name} or noise_multiplier=0 (got {noise_multiplier!r})"
    )
  return c


def _batch_size(grads, who: str) -> int:
  """The per-example gradients' one, non-zero leading batch size (``per_example_batch``)."""
  return per_example_batch(grads, who)


def _f32(x):
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _clip_factor(norm, clip):
  """``min(1, C / |g|)``: 1 for a zero gradient or ``C = inf``, NaN for a NaN gradient.

  Not ``optax.per_example_global_norm_clip``, which computes the same factor for finite
  gradients but maps a NaN factor to 1: an example with one NaN coordinate would then pass
  *unclipped* in all its finite coordinates, silently breaking the sensitivity bound
  :math:`C` there. Here the whole example, hence the whole update, is NaN.
  """
  return jnp.minimum(1.0, clip / norm)


def _weighted_mean(g, weights):
  """``mean_i weights[i] * g[i]`` over the leading axis, as B - 1 fused multiply-adds.

  ``jnp.mean(g * w[:, None, ...], axis=0)`` materializes the broadcast product and reduces
  it through XLA:CPU's unfusable reduction path; the running sum is one elementwise pass.
  Large batches contract with a matrix-vector product instead (an unrolled sum of hundreds
  of terms would bloat the program).
  """
  b = g.shape[0]
  if b > _UNROLL_BATCH:
    return jnp.tensordot(weights.astype(g.dtype), g, axes=1) / b
  acc = g[0] * weights[0]
  for i in range(1, b):
    acc = acc + g[i] * weights[i]
  return acc / b


# Largest batch whose mean is unrolled into multiply-adds (see _weighted_mean).
_UNROLL_BATCH = 32


def _clipped_mean(grads, clip):
  """``mean_i clip(g_i, C)`` over the leading batch axis, in float32 or wider."""
  g32 = jax.tree.map(_f32, grads)
  factor = _clip_factor(jax.vmap(otu.tree_norm)(g32), clip)
  return jax.tree.map(lambda g: _weighted_mean(g, factor.astype(g.dtype)), g32)


def _clip_tree(tree, clip):
  """``tree * min(1, C / |tree|)`` with the global norm of the whole tree."""
  factor = _clip_factor(otu.tree_norm(tree), clip)
  return jax.tree.map(lambda x: (x * factor).astype(x.dtype), tree)


def _noise(key, like, noise_multiplier, clip, b):
  """Gaussian noise of std ``noise_multiplier * clip / b`` (0 when ``noise_multiplier`` is).

  One flat draw (``tree_probe``) for the whole tree: drawing the noise dominates a step.
  """
  # where, not a product: 0 * inf is NaN for an unclipped, noise-free run.
  std = jnp.where(noise_multiplier > 0, noise_multiplier * clip, 0.0) / b
  like32 = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, jnp.promote_types(x.dtype, jnp.float32)), like
  )
  if concrete(noise_multiplier) == 0.0:  # a noise-free run does not pay for the draw
    return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), like32)
  return jax.tree.map(lambda z: (std * z).astype(z.dtype), tree_probe(key, like32, "gaussian"))


def _check_without_params(updates) -> None:
  """``scale_by_dp_sgd``'s ``update`` without params: its state (a key) has no shapes to check.

  A mean gradient would then be read as a batch: its first axis averaged away (a 1-D
  leaf gives a scalar update). A 1-D leaf is therefore an error (it is either that or the
  per-example gradients of a scalar parameter, which only params can tell apart); any
  other call still works for this release, with a ``DeprecationWarning``.
  """
  leaves = jax.tree_util.tree_leaves_with_path(updates)
  for path, g in leaves:
    if jnp.ndim(g) == 1:
      raise ValueError(
        f"scale_by_dp_sgd: update got no params, and updates{jax.tree_util.keystr(path)} "
        f"has shape {jnp.shape(g)}: a mean gradient (whose update would be a scalar) or "
        "the per-example gradients of a scalar parameter. Pass the params, "
        "update(per_example_grads, state, params), so the shapes can be checked"
      )
  if leaves:
    warnings.warn(
      "scale_by_dp_sgd: update(updates, state) without params is deprecated (a mean "
      "gradient cannot be told from per-example gradients without them); pass "
      "update(per_example_grads, state, params). Calls without params will be removed in "
      "the next release",
      DeprecationWarning,
      stacklevel=4,
    )


class DPSGDState(NamedTuple):
  """State of :func:`scale_by_dp_sgd`: the PRNG key of the next step's noise."""

  key: jax.Array


class DiceSGDState(NamedTuple):
  """State of :func:`scale_by_dice_sgd`.

  Attributes:
    key: PRNG key of the next step's noise.
    error: the error-feedback accumulator :math:`e_t` (hidden, non-privatized state).
  """

  key: jax.Array
  error: PyTree


def scale_by_dp_sgd(
  l2_norm_clip: float, noise_multiplier: float, *, key=0
) -> optax.GradientTransformationExtraArgs:
  r"""DP-SGD aggregation: clip each example's gradient, average, add Gaussian noise.

  Incoming updates are per-example gradients :math:`g_i`, a leading batch axis of size
  :math:`B` on every leaf. With :math:`\operatorname{clip}(x, C) = x\min(1, C/\|x\|)` (the
  norm taken over the whole pytree of one example),

  .. math::
    u_t = \frac{1}{B}\sum_{i=1}^{B} \operatorname{clip}(g_i, C) + z_t, \qquad
    z_t \sim \mathcal{N}\!\Big(0, \Big(\frac{\sigma C}{B}\Big)^2 I\Big).

  Noise calibration: this is the Gaussian mechanism on the *sum* of clipped gradients
  (sensitivity :math:`C`) with noise :math:`\mathcal{N}(0, \sigma^2 C^2)`, divided by
  :math:`B`; ``noise_multiplier`` is :math:`\sigma` of Abadi et al., to be chosen with a
  privacy accountant (none is included here). The key is split every step and kept in the
  state, so a restored checkpoint reproduces the same noise. Generating the Gaussian noise
  (one normal per parameter) dominates the cost of a step on CPU.

  Numerical hazards: zero per-example gradients are left at zero (no 0/0); zero-size
  leaves give empty updates; an empty batch (batch size 0) is a ``ValueError``.

  Non-finite gradients: propagate. A NaN or inf in an example's gradient makes that
  example's norm non-finite and the whole update NaN (no silent masking: a non-finite
  gradient is a bug upstream and must be visible); the state (a PRNG key) is not
  poisoned, so the next finite step is normal.
  ``optax.apply_if_finite`` cannot wrap a per-example optimizer: its skipped step returns
  zeros shaped like the incoming (per-example) gradients, which do not match the update's
  shape. Skip such a step in the training loop instead (test the per-example gradients
  with ``jnp.isfinite`` before calling ``update``).

  Args:
    l2_norm_clip: :math:`C > 0`; ``inf`` turns clipping off (then ``noise_multiplier``
      must be 0, since the sensitivity is unbounded).
    noise_multiplier: :math:`\sigma \ge 0`, finite.
    key: int seed or PRNG key of the noise (keyword-only).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``init`` takes the (batch-free) params,
    ``update(per_example_grads, state, params)`` the per-example gradients and the params
    (to check the gradients' shapes against: a mean gradient is a ``ValueError``) and
    returns batch-free updates. Without params (deprecated, removed in the next release)
    a 1-D gradient leaf is a ``ValueError`` (a mean gradient would give a scalar update)
    and anything else works with a ``DeprecationWarning``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim import scale_by_dp_sgd
    >>> tx = scale_by_dp_sgd(l2_norm_clip=1.0, noise_multiplier=0.0)
    >>> per_example = {"w": jnp.array([[3.0, 4.0], [0.3, 0.4]])}  # batch of 2
    >>> params = {"w": jnp.zeros(2)}
    >>> u, _ = tx.update(per_example, tx.init(params), params)
    >>> [round(float(x), 4) for x in u["w"]]
    [0.45, 0.6]

  References:
    Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar, Zhang, "Deep Learning with
    Differential Privacy", CCS 2016, arXiv:1607.00133 (Algorithm 1).
  """
  _check_clip_and_noise("l2_norm_clip", l2_norm_clip, noise_multiplier)
  key = as_key(key)

  def init_fn(params):
    del params
    return DPSGDState(key=key)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      _check_without_params(updates)
    del params
    b = _batch_size(updates, "dp_sgd")
    mean = _clipped_mean(updates, l2_norm_clip)
    key, sub = jax.random.split(state.key)
    noise = _noise(sub, mean, noise_multiplier, l2_norm_clip, b)
    out = jax.tree.map(lambda m, z, g: (m + z).astype(g.dtype), mean, noise, updates)
    return out, DPSGDState(key=key)

  return guard(
    optax.GradientTransformationExtraArgs(init_fn, update_fn), "scale_by_dp_sgd", per_example=True
  )


def dp_sgd(
  learning_rate: optax.ScalarOrSchedule,
  l2_norm_clip: float,
  noise_multiplier: float,
  *,
  key=0,
) -> optax.GradientTransformationExtraArgs:
  r"""DP-SGD: :func:`scale_by_dp_sgd` followed by the learning rate.

  .. math::
    w_{t+1} = w_t - \eta_t\Big(\frac{1}{B}\sum_i \operatorname{clip}(g_i, C) + z_t\Big)

  Non-finite gradients: propagate into the update (see :func:`scale_by_dp_sgd`).

  Args:
    learning_rate: a float (finite, >= 0) or an optax schedule (a schedule's values are not
      checked: one returning NaN gives NaN updates).
    l2_norm_clip: :math:`C > 0` (``inf``: no clipping, with ``noise_multiplier=0``).
    noise_multiplier: :math:`\sigma \ge 0` (noise std :math:`\sigma C / B` on the mean).
    key: int seed or PRNG key of the noise (keyword-only).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` taking per-example gradients.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optim import dp_sgd
    >>> x = jnp.linspace(-1, 1, 8)[:, None]; y = 2.0 * x[:, 0]
    >>> loss = lambda w, xi, yi: (xi @ w - yi) ** 2
    >>> tx = dp_sgd(0.5, l2_norm_clip=10.0, noise_multiplier=0.1, key=0)
    >>> w = jnp.zeros(1); s = tx.init(w)
    >>> for _ in range(100):
    ...   g = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(w, x, y)
    ...   u, s = tx.update(g, s, w); w = optax.apply_updates(w, u)
    >>> bool(abs(w[0] - 2.0) < 0.1)
    True

  References:
    Abadi et al., "Deep Learning with Differential Privacy", arXiv:1607.00133.
  """
  check_learning_rate(learning_rate)
  return optax.chain(
    scale_by_dp_sgd(l2_norm_clip, noise_multiplier, key=key),
    optax.scale_by_learning_rate(learning_rate),
  )


@renamed_kwargs(error_dtype="mu_dtype")
def scale_by_dice_sgd(
  clip1: float,
  clip2: float,
  noise_multiplier: float,
  *,
  key=0,
  mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""DiceSGD aggregation: clipped per-example mean plus clipped error feedback, plus noise.

  Incoming updates are per-example gradients :math:`g_i` (leading batch axis :math:`B`).
  Following Algorithm 1 of Zhang et al.,

  .. math::
    v_t &= \frac{1}{B}\sum_{i=1}^{B}\operatorname{clip}(g_i, C_1)
           + \operatorname{clip}(e_t, C_2), \\
    u_t &= v_t + z_t, \qquad z_t \sim \mathcal{N}\!\Big(0, \Big(\frac{\sigma C_1}{B}\Big)^2
           I\Big), \\
    e_{t+1} &= e_t + \frac{1}{B}\sum_{i=1}^{B} g_i - v_t, \qquad e_0 = 0,

  so the error :math:`e_t` accumulates exactly what clipping removed and feeds it back
  (clipped at :math:`C_2 \ge C_1`), which removes DP-SGD's constant clipping bias.

  Noise calibration: the std on the averaged update is :math:`\sigma C_1 / B` (the same
  mechanism as :func:`scale_by_dp_sgd` at :math:`C = C_1`), so ``noise_multiplier`` is
  directly comparable between the two. The paper's Rényi-DP analysis of DiceSGD (its
  Section 3) requires a somewhat larger multiplier than DP-SGD for the same
  :math:`(\varepsilon, \delta)` because the hidden error state also depends on the data and
  the fed-back term has norm up to :math:`C_2`; calibrate :math:`\sigma` with that bound.
  No privacy accounting is done here.

  Numerical hazards: zero gradients and a zero error are left at zero; zero-size leaves
  give empty updates; an empty batch (batch size 0) is a ``ValueError``.

  Non-finite gradients: propagate into the update and into the error state :math:`e_t`
  (never silently dropped), so every later update is NaN too: the error feedback carries
  the full mean gradient, and a non-finite one is a bug upstream that must stay visible.
  ``optax.apply_if_finite`` cannot wrap a per-example optimizer: its skipped step returns
  zeros shaped like the incoming (per-example) gradients, which do not match the update's
  shape. Skip such a step in the training loop instead (test the per-example gradients
  with ``jnp.isfinite`` before calling ``update``).

  Args:
    clip1: :math:`C_1 > 0`, per-example clipping threshold (``inf``: no clipping, with
      ``noise_multiplier=0``).
    clip2: :math:`C_2 \ge C_1`, clipping threshold of the fed-back error (``inf``: the
      error is fed back unclipped).
    noise_multiplier: :math:`\sigma \ge 0`, finite.
    key: int seed or PRNG key of the noise (keyword-only).
    mu_dtype: optional dtype of the error accumulator :math:`e_t` (default: the params'
      dtype). Formerly ``error_dtype`` (still accepted, with a ``DeprecationWarning``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` taking per-example gradients.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim import scale_by_dice_sgd
    >>> tx = scale_by_dice_sgd(clip1=1.0, clip2=1.0, noise_multiplier=0.0)
    >>> s = tx.init({"w": jnp.zeros(2)})
    >>> u, s = tx.update({"w": jnp.array([[3.0, 4.0], [0.3, 0.4]])}, s)
    >>> [round(float(x), 4) for x in s.error["w"]]  # what clipping removed
    [1.2, 1.6]

  References:
    Zhang, Bu, Wu, Hong, "Differentially Private SGD Without Clipping Bias: An
    Error-Feedback Approach", ICLR 2024, arXiv:2311.14632 (Algorithm 1).
  """
  c1 = _check_clip_and_noise("clip1", clip1, noise_multiplier)
  c2 = check_scalar("clip2", clip2, lo=0.0, lo_open=True, allow_inf=True)
  if c1 is not None and c2 is not None and c2 < c1:
    raise ValueError(f"DiceSGD needs clip2 >= clip1, got clip1={clip1!r}, clip2={clip2!r}")
  mu_dtype = check_dtype("mu_dtype", mu_dtype)
  key = as_key(key)

  def init_fn(params):
    return DiceSGDState(key=key, error=otu.tree_zeros_like(params, dtype=mu_dtype))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    del params
    b = _batch_size(updates, "dice_sgd")
    full_mean = jax.tree.map(lambda g: _weighted_mean(_f32(g), jnp.ones(b, _f32(g).dtype)), updates)
    error = jax.tree.map(_f32, state.error)
    v = otu.tree_add(_clipped_mean(updates, clip1), _clip_tree(error, clip2))
    key, sub = jax.random.split(state.key)
    noise = _noise(sub, v, noise_multiplier, clip1, b)
    out = jax.tree.map(lambda vi, z, g: (vi + z).astype(g.dtype), v, noise, updates)
    new_error = jax.tree.map(
      lambda e, gm, vi, e0: (e + gm - vi).astype(e0.dtype), error, full_mean, v, state.error
    )
    return out, DiceSGDState(key=key, error=new_error)

  return guard(
    optax.GradientTransformationExtraArgs(init_fn, update_fn),
    "scale_by_dice_sgd",
    per_example=True,
  )


@renamed_kwargs(error_dtype="mu_dtype")
def dice_sgd(
  learning_rate: optax.ScalarOrSchedule,
  clip1: float,
  clip2: float,
  noise_multiplier: float,
  *,
  key=0,
  mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""DiceSGD: :func:`scale_by_dice_sgd` followed by the learning rate.

  .. math::
    w_{t+1} = w_t - \eta_t\,(v_t + z_t)

  Non-finite gradients: propagate into the update and the error state (see
  :func:`scale_by_dice_sgd`).

  Args:
    learning_rate: a float (finite, >= 0) or an optax schedule (a schedule's values are not
      checked: one returning NaN gives NaN updates).
    clip1: :math:`C_1 > 0`.
    clip2: :math:`C_2 \ge C_1`.
    noise_multiplier: :math:`\sigma \ge 0` (std :math:`\sigma C_1/B` on the mean).
    key: int seed or PRNG key of the noise (keyword-only).
    mu_dtype: optional dtype of the error accumulator (formerly ``error_dtype``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` taking per-example gradients.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optim import dice_sgd
    >>> x = jnp.linspace(-1, 1, 8)[:, None]; y = 2.0 * x[:, 0]
    >>> loss = lambda w, xi, yi: (xi @ w - yi) ** 2
    >>> tx = dice_sgd(0.5, clip1=0.1, clip2=0.1, noise_multiplier=0.1, key=0)
    >>> @jax.jit
    ... def step(w, s):
    ...   g = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(w, x, y)
    ...   u, s = tx.update(g, s, w)
    ...   return optax.apply_updates(w, u), s
    >>> w = jnp.zeros(1); s = tx.init(w)
    >>> for _ in range(300):
    ...   w, s = step(w, s)
    >>> bool(abs(w[0] - 2.0) < 0.1)
    True

  References:
    Zhang, Bu, Wu, Hong, "Differentially Private SGD Without Clipping Bias: An
    Error-Feedback Approach", arXiv:2311.14632.
  """
  check_learning_rate(learning_rate)
  return optax.chain(
    scale_by_dice_sgd(clip1, clip2, noise_multiplier, key=key, mu_dtype=mu_dtype),
    optax.scale_by_learning_rate(learning_rate),
  )
