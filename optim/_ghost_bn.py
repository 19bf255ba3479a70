"""Ghost Batch Normalization (Hoffer, Hubara, Soudry 2017) as a flax ``nnx`` layer."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from optim._validation import check_flag, check_scalar

_WHERE = "GhostBatchNorm"
_ZEROS = nnx.initializers.zeros_init()
_ONES = nnx.initializers.ones_init()


class GhostBatchNorm(nnx.Module):
  r"""Batch normalization with statistics per *ghost batch* of ``ghost_batch_size`` examples.

  In training, the batch of :math:`B` examples (axis 0) is split, in order, into
  :math:`K = B / G` ghost batches :math:`X^1, \dots, X^K` of :math:`G` examples, each
  normalized with its own statistics (over its examples and every other non-feature axis):

  .. math::
    \mu^l = \operatorname{mean}(X^l), \quad (\sigma^l)^2 = \operatorname{mean}\big((X^l -
    \mu^l)^2\big), \quad y = \gamma \frac{X^l - \mu^l}{\sqrt{(\sigma^l)^2 + \epsilon}} + \beta,

  and the running statistics take one exponential-moving-average step per ghost batch, in
  order, as the official code's sequential forward passes over the chunks do (the paper's
  Algorithm 1):

  .. math::
    \bar\mu \leftarrow m^K \bar\mu + (1 - m) \sum_{l=1}^{K} m^{K-l} \mu^l, \qquad
    \bar\sigma^2 \leftarrow m^K \bar\sigma^2 + (1 - m) \sum_{l=1}^{K} m^{K-l} (\sigma^l)^2.

  With ``use_running_average`` (evaluation) it is ``nnx.BatchNorm``'s evaluation: the
  running statistics, any batch size. With :math:`G = B` it is ``nnx.BatchNorm`` (same
  variables ``scale``, ``bias``, ``mean``, ``var``, same ``momentum`` convention, so it is a
  drop-in replacement and ``model.train()`` / ``model.eval()`` / ``nnx.view`` switch it).
  Small ghost batches keep the noise of small-batch normalization when the optimizer's batch
  is large, which is what closes part of the large-batch generalization gap in the paper.

  Conventions (assumptions where the sources differ): the running variance is the biased
  ghost-batch variance, as ``nnx.BatchNorm`` keeps it (the official PyTorch code's
  ``BatchNorm`` keeps the unbiased one, a factor :math:`G/(G-1)`; the paper's Algorithm 1
  averages :math:`\sigma` rather than :math:`\sigma^2`); the variance is the two-pass
  :math:`\operatorname{mean}((x - \mu)^2)`; the running statistics are kept in
  ``param_dtype`` and computed in at least float32.

  Args:
    num_features: the size :math:`C` of the feature axis.
    ghost_batch_size: :math:`G \ge 1`; the batch (axis 0) in training must be a multiple
      of it (else a ``ValueError`` naming ``ghost_batch_size`` at trace time).
    use_running_average: evaluation mode (running statistics) when true; may be given per
      call instead.
    axis: the feature axis of the input (not 0, the batch axis).
    momentum: :math:`m \in [0, 1]`, the decay of the running statistics (flax's convention:
      0.99 keeps 99%; PyTorch's ``momentum=0.1`` is :math:`m = 0.9`).
    epsilon: :math:`\epsilon \ge 0` added to the variance (``nnx.BatchNorm``'s name).
    dtype: the output dtype (default: the promotion of the input, the statistics and the
      parameters, as ``nnx.BatchNorm``).
    param_dtype: dtype of ``scale``, ``bias`` and the running statistics.
    use_bias: learn :math:`\beta`.
    use_scale: learn :math:`\gamma`.
    bias_init: initializer of :math:`\beta` (zeros).
    scale_init: initializer of :math:`\gamma` (ones).
    rngs: ``nnx.Rngs`` for the initializers.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from optim.layers import GhostBatchNorm
    >>> gbn = GhostBatchNorm(3, ghost_batch_size=4, rngs=nnx.Rngs(0))
    >>> x = jax.random.normal(jax.random.key(0), (8, 3)) + jnp.arange(8.0)[:, None]
    >>> y = gbn(x)  # two ghost batches, each normalized on its own
    >>> round(float(jnp.abs(y[:4].mean(0)).max()), 4), round(float(jnp.abs(y[4:].mean(0)).max()), 4)
    (0.0, 0.0)
    >>> gbn.eval()
    >>> gbn(x[:3]).shape  # running statistics: any batch size
    (3, 3)

  References:
    Hoffer, Hubara, Soudry, "Train longer, generalize better: closing the generalization
    gap in large batch training of neural networks", NeurIPS 2017, arXiv:1705.08741
    (Section 4.1, Algorithm 1); official code github.com/eladhoffer/bigBatch
    (``main_gbn.py``: the batch split into ``--mini-batch-size`` chunks run one by one).
  """

  def __init__(
    self,
    num_features: int,
    *,
    ghost_batch_size: int,
    use_running_average: bool | None = False,
    axis: int = -1,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Any = _ZEROS,
    scale_init: Any = _ONES,
    rngs: nnx.Rngs,
  ):
    num_features = check_scalar(
      f"{_WHERE}: num_features", num_features, lo=1, integer=True, static=True
    )
    self.ghost_batch_size = check_scalar(
      f"{_WHERE}: ghost_batch_size", ghost_batch_size, lo=1, integer=True, static=True
    )
    if use_running_average is not None:
      use_running_average = check_flag(f"{_WHERE}: use_running_average", use_running_average)
    if isinstance(axis, bool) or not isinstance(axis, int):
      raise TypeError(f"{_WHERE}: axis must be an int (the feature axis), got {axis!r}")
    self.momentum = check_scalar(f"{_WHERE}: momentum", momentum, lo=0.0, hi=1.0, static=True)
    self.epsilon = check_scalar(f"{_WHERE}: epsilon", epsilon, lo=0.0, static=True)
    use_bias = check_flag(f"{_WHERE}: use_bias", use_bias)
    use_scale = check_flag(f"{_WHERE}: use_scale", use_scale)
    shape = (num_features,)
    self.mean = nnx.BatchStat(jnp.zeros(shape, param_dtype))
    self.var = nnx.BatchStat(jnp.ones(shape, param_dtype))
    self.scale = (
      nnx.Param(scale_init(rngs.params(), shape, param_dtype)) if use_scale else nnx.data(None)
    )
    self.bias = (
      nnx.Param(bias_init(rngs.params(), shape, param_dtype)) if use_bias else nnx.data(None)
    )
    self.num_features = num_features
    self.use_running_average = use_running_average
    self.axis = axis
    self.dtype = dtype
    self.param_dtype = param_dtype

  def set_view(self, use_running_average: bool | None = None):
    """Switches evaluation mode for ``nnx.view`` (as ``nnx.BatchNorm.set_view``).

    Args:
      use_running_average: evaluation mode when true; ``None`` leaves it unchanged.
    """
    if use_running_average is not None:
      self.use_running_average = use_running_average

  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """Normalizes ``x`` (batch on axis 0) per ghost batch, or with the running statistics.

    Args:
      x: the input, at least 2-D, ``x.shape[axis] == num_features``.
      use_running_average: overrides the module's mode for this call.

    Returns:
      The normalized input, ``x``'s shape.
    """
    mode = self.use_running_average if use_running_average is None else use_running_average
    if mode is None:
      raise ValueError(
        f"{_WHERE}: use_running_average is None: pass it to the constructor or the call "
        "(or use model.train() / model.eval())"
      )
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"{_WHERE}: x must be a floating-point array, got dtype {x.dtype}")
    if x.ndim < 2:
      raise ValueError(
        f"{_WHERE}: x must have a batch axis (0) and a feature axis, got shape {x.shape}"
      )
    if not -x.ndim <= self.axis < x.ndim or self.axis % x.ndim == 0:
      raise ValueError(
        f"{_WHERE}: axis={self.axis} must name a feature axis of x (not the batch axis 0), "
        f"x has shape {x.shape}"
      )
    axis = self.axis % x.ndim
    if x.shape[axis] != self.num_features:
      raise ValueError(
        f"{_WHERE}: x.shape[{self.axis}] = {x.shape[axis]} but num_features = {self.num_features}"
      )
    scale = None if self.scale is None else self.scale[...]
    bias = None if self.bias is None else self.bias[...]
    running_mean, running_var = self.mean[...], self.var[...]
    out_dtype = self.dtype or jnp.result_type(
      x, running_mean, running_var, *(p for p in (scale, bias) if p is not None)
    )
    ct = jnp.promote_types(out_dtype, jnp.float32)
    feature_shape = [1] * x.ndim
    feature_shape[axis] = self.num_features

    def affine(y, shape):
      if scale is not None:
        y = y * scale.astype(ct).reshape(shape)
      if bias is not None:
        y = y + bias.astype(ct).reshape(shape)
      return y

    if mode:
      mean = running_mean.astype(ct).reshape(feature_shape)
      var = running_var.astype(ct).reshape(feature_shape)
      y = (x.astype(ct) - mean) * jax.lax.rsqrt(var + self.epsilon)
      return affine(y, feature_shape).astype(out_dtype)

    batch, g = x.shape[0], self.ghost_batch_size
    if batch == 0 or batch % g:
      raise ValueError(
        f"{_WHERE}: ghost_batch_size={g} must divide the batch size (x.shape[0] = {batch}) "
        "in training; use a batch that is a multiple of it"
      )
    k = batch // g
    xs = x.astype(ct).reshape((k, g) + x.shape[1:])
    reduce = tuple(i for i in range(1, xs.ndim) if i != axis + 1)
    mean = jnp.mean(xs, axis=reduce, keepdims=True)
    var = jnp.mean(jnp.square(xs - mean), axis=reduce, keepdims=True)
    y = (xs - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = affine(y, [1] + feature_shape).reshape(x.shape)
    # One EMA step per ghost batch, in order: weight (1 - m) m^(K - l) on ghost batch l.
    m = self.momentum
    weights = (1.0 - m) * m ** jnp.arange(k - 1, -1, -1, dtype=ct)
    stat_dtype = running_mean.dtype

    def ema(old, stats):
      new = m**k * old.astype(ct) + weights @ stats.reshape(k, self.num_features)
      return jax.lax.stop_gradient(new.astype(stat_dtype))

    self.mean[...] = ema(running_mean, mean)
    self.var[...] = ema(running_var, var)
    return y.astype(out_dtype)
