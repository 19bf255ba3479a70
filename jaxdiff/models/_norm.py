"""Non-scaling LayerNorm: LayerNorm whose elementwise scale is fixed at one.

Dao et al., "Improved Training Technique for Latent Consistency Models", ICLR 2025
(arXiv:2502.01441): latent consistency training suffers from impulsive outliers, and a
learnable per-feature scale lets a few features be amplified; the paper keeps LayerNorm's
normalisation and its learnable shift but drops the learnable scale (the official code's
``NonScalingLayerNorm`` in ``models/network_dit.py``: the weight is fixed to ones and not
trained, the bias is trained).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff._validation import check_scalar
from jaxdiff.models._checks import check_size

Array = jax.Array

__all__ = ["NonScalingLayerNorm"]


class NonScalingLayerNorm(nnx.Module):
  r"""LayerNorm over the last axis with a learnable shift and no learnable scale.

  .. math::
    y = \frac{x - \mu(x)}{\sqrt{\operatorname{Var}(x) + \epsilon}} + \beta,

  :math:`\mu, \operatorname{Var}` over the last axis (population variance), :math:`\beta`
  a learnable bias initialised at zero (``use_bias=False`` drops it too). The statistics
  are computed in at least float32.

  Args:
    num_features: the width of the last axis, an int ``>= 1``.
    epsilon: :math:`\epsilon > 0` (the official code's ``1e-5``).
    use_bias: learn :math:`\beta`.
    rngs: ``nnx.Rngs`` (unused: the bias starts at zero; accepted for a uniform layer API).
    param_dtype: the bias dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxdiff.models import NonScalingLayerNorm
    >>> norm = NonScalingLayerNorm(4, rngs=nnx.Rngs(0))
    >>> y = norm(jnp.array([[1.0, 2.0, 3.0, 4.0]]))
    >>> round(float(y.mean()), 6), round(float((y**2).mean()), 4)
    (0.0, 1.0)

  References:
    Dao et al., "Improved Training Technique for Latent Consistency Models",
    arXiv:2502.01441; Ba, Kiros & Hinton, "Layer Normalization", arXiv:1607.06450.
  """

  def __init__(
    self,
    num_features: int,
    *,
    epsilon: float = 1e-5,
    use_bias: bool = True,
    rngs: nnx.Rngs | None = None,
    param_dtype=jnp.float32,
  ):
    del rngs
    self.num_features = check_size("NonScalingLayerNorm: num_features", num_features)
    self.epsilon = check_scalar("NonScalingLayerNorm: epsilon", epsilon, lo=0.0, lo_open=True)
    if not isinstance(use_bias, bool):
      raise TypeError(
        f"NonScalingLayerNorm: use_bias must be a bool, got {type(use_bias).__name__}"
      )
    self.bias = nnx.Param(jnp.zeros((self.num_features,), param_dtype)) if use_bias else None

  def __call__(self, x: Array) -> Array:
    """Normalises ``x`` (``(..., num_features)``) over its last axis."""
    if x.shape[-1:] != (self.num_features,):
      raise ValueError(
        f"NonScalingLayerNorm: x must end in num_features = {self.num_features}, "
        f"got shape {x.shape}"
      )
    stat = jnp.promote_types(x.dtype, jnp.float32)
    xs = x.astype(stat)
    mu = xs.mean(-1, keepdims=True)
    var = jnp.mean((xs - mu) ** 2, axis=-1, keepdims=True)
    y = (xs - mu) * jax.lax.rsqrt(var + self.epsilon)
    if self.bias is not None:
      y = y + self.bias[...].astype(stat)
    return y.astype(x.dtype)
