"""A flax.nnx multi-head self-attention block that honours the PAG perturbation flag.

Perturbed-Attention Guidance (Ahn et al., 2024, arXiv:2403.17377, Sec. 3.2) degrades a
denoiser by replacing chosen self-attention maps ``softmax(Q K^T / sqrt(d))`` with the
identity matrix, so each token only attends to itself and the attention output is the
value projection ``V`` itself (Eq. 10: ``SA(Q, K, V) = I V = V``). The structure of the
image is lost while its appearance (carried by ``V``) is kept; guiding away from that
prediction is PAG.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models._checks import check_size

Array = jax.Array

__all__ = ["SelfAttention"]


class SelfAttention(nnx.Module):
  """Multi-head self-attention whose map can be replaced by the identity per sample.

  .. math::

    \\mathrm{SA}(x) = W_o\\,\\big[\\,A\\,V\\,\\big], \\qquad
    A = \\begin{cases} I & \\text{perturb}_b \\\\
        \\mathrm{softmax}(Q K^\\top / \\sqrt{d_h}) & \\text{otherwise} \\end{cases}

  with ``Q, K, V = x W_q, x W_k, x W_v`` split into ``num_heads`` heads of width
  ``d_h = dim / num_heads``. A perturbed sample therefore outputs ``W_o (x W_v)``: the
  value projection path. The block has no residual connection or normalisation; wrap it as
  the surrounding architecture needs (``x + SelfAttention(...)(norm(x))`` for a pre-norm
  transformer block).

  The flag is applied with ``jnp.where`` on traced values, so one compiled function serves
  any mix of perturbed and clean samples, and the network output depends on ``perturb``
  as data (which is how :func:`jaxdiff.guidance.pag` checks a denoiser honours it).

  Args:
    dim: model width (last axis of ``x``), an int ``>= 1`` divisible by ``num_heads``.
    num_heads: number of attention heads, an int ``>= 1``.
    rngs: ``nnx.Rngs`` for the parameter initialisers.
    dtype: computation dtype (``None``: inferred from inputs and params).
    param_dtype: parameter dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxdiff.models import SelfAttention
    >>> attn = SelfAttention(8, 2, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((3, 5, 8))
    >>> attn(x, perturb=jnp.array([False, True, False])).shape
    (3, 5, 8)

  References:
    Ahn et al., "Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance",
    arXiv:2403.17377 (Sec. 3.2, Eq. 10).
  """

  def __init__(
    self,
    dim: int,
    num_heads: int,
    *,
    rngs: nnx.Rngs,
    dtype=None,
    param_dtype=jnp.float32,
  ):
    dim = check_size("SelfAttention: dim", dim)
    num_heads = check_size("SelfAttention: num_heads", num_heads)
    if dim % num_heads:
      raise ValueError(
        f"SelfAttention: dim ({dim}) must be a positive multiple of num_heads ({num_heads})."
      )
    self.dim = dim
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.qkv = nnx.Linear(dim, 3 * dim, use_bias=False, **kw)
    self.out = nnx.Linear(dim, dim, **kw)

  def __call__(self, x: Array, *, perturb: Array | None = None) -> Array:
    """Attends over the token axis.

    Args:
      x: tokens of shape ``(B, L, dim)``.
      perturb: optional bool array of shape ``(B,)``; ``True`` replaces that sample's
        attention map by the identity. ``None`` means no sample is perturbed.

    Returns:
      An array of shape ``(B, L, dim)``.
    """
    if x.ndim != 3 or x.shape[-1] != self.dim:
      raise ValueError(f"SelfAttention: expected x of shape (B, L, {self.dim}), got {x.shape}.")
    b, length, _ = x.shape
    qkv = self.qkv(x).reshape(b, length, 3, self.num_heads, self.head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, L, H, Dh)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(self.head_dim).astype(q.dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    mixed = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    if perturb is not None:
      perturb = jnp.asarray(perturb)
      if perturb.shape != (b,) or perturb.dtype != jnp.bool_:
        raise ValueError(
          f"SelfAttention: perturb must be a bool array of shape ({b},), "
          f"got {perturb.dtype}{perturb.shape}."
        )
      # Identity map: each token attends only to itself, so A V = V (PAG Eq. 10).
      mixed = jnp.where(perturb[:, None, None, None], v, mixed)
    return self.out(mixed.reshape(b, length, self.dim))
