"""Small flax.nnx networks for the digits demo: a class-conditional transformer denoiser whose
self-attention honours the PAG flag, and an MLP classifier (features, accuracy, guidance,
curvature)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff._blocks import run_blocks
from jaxdiff._validation import check_labels, poison
from jaxdiff.models._attention import SelfAttention
from jaxdiff.models._checks import check_size

Array = jax.Array

__all__ = ["DigitClassifier", "DigitDenoiser"]


def _timestep_embedding(t: Array, dim: int, max_period: float = 1000.0) -> Array:
  """Sinusoidal features of ``1000 t`` (Vaswani et al. 2017; DDPM's time embedding)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = 1000.0 * t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _modulate(h: Array, shift: Array, scale: Array) -> Array:
  return h * (1.0 + scale[:, None, :]) + shift[:, None, :]


class _Block(nnx.Module):
  """Pre-norm transformer block with adaLN-Zero conditioning (Peebles & Xie, DiT)."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: int, *, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(dim, use_bias=False, use_scale=False, rngs=rngs)
    self.attn = SelfAttention(dim, num_heads, rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, use_bias=False, use_scale=False, rngs=rngs)
    self.mlp_in = nnx.Linear(dim, mlp_ratio * dim, rngs=rngs)
    self.mlp_out = nnx.Linear(mlp_ratio * dim, dim, rngs=rngs)
    # adaLN-Zero: the modulation starts at zero, so every block starts as the identity.
    self.ada = nnx.Linear(
      dim, 6 * dim, kernel_init=nnx.initializers.zeros, bias_init=nnx.initializers.zeros, rngs=rngs
    )

  def __call__(self, x: Array, c: Array, perturb: Array | None) -> Array:
    for gate, branch in self.residual_branches(c):
      x = x + gate[:, None, :] * branch(x, perturb)
    return x

  def residual_branches(self, c: Array):
    """The block as its two gated residual branches, in order: ``[(g1, attn), (g2, mlp)]``
    with ``h <- h + g[:, None, :] * branch(h, perturb)``.

    The gates ``(B, dim)`` depend on ``c`` alone; ``branch(h, perturb)`` is the attention
    (resp. MLP) output before gating, ``(B, T, dim)``: what feature caches (FORA,
    TaylorSeer; :mod:`jaxdiff.caching`) store and forecast, re-gated with the current
    step's ``c``. The MLP branch ignores ``perturb``.
    """
    s1, g1, b1, s2, g2, b2 = jnp.split(self.ada(c), 6, axis=-1)

    def attn(h: Array, perturb: Array | None) -> Array:
      return self.attn(_modulate(self.norm1(h), b1, s1), perturb=perturb)

    def mlp(h: Array, perturb: Array | None) -> Array:
      del perturb
      return self.mlp_out(nnx.gelu(self.mlp_in(_modulate(self.norm2(h), b2, s2))))

    return [(g1, attn), (g2, mlp)]


class DigitDenoiser(nnx.Module):
  """A small class-conditional diffusion transformer for ``(B, H, W)`` grayscale images.

  The image is cut into ``patch x patch`` tokens (a DiT, Peebles & Xie), embedded with a
  learned position embedding, and processed by ``depth`` pre-norm transformer blocks whose
  LayerNorms are modulated (adaLN-Zero) by the sum of a sinusoidal time embedding and a
  class embedding:

  .. math::

    c = \\mathrm{MLP}(\\mathrm{emb}(t)) + E[y], \\qquad
    h \\leftarrow h + g_1 \\odot \\mathrm{SA}\\big(\\mathrm{LN}(h)(1 + s_1) + b_1\\big), \\quad
    h \\leftarrow h + g_2 \\odot \\mathrm{MLP}\\big(\\mathrm{LN}(h)(1 + s_2) + b_2\\big)

  with ``(s, g, b) = Linear(silu(c))``. The label ``-1`` selects a learned *null*
  embedding (the unconditional model of classifier-free guidance, trained by label
  dropout). The self-attention is :class:`jaxdiff.models.SelfAttention`: the keyword
  ``perturb`` (bool ``(B,)``) replaces the attention maps of the blocks listed in
  ``pag_layers`` by the identity for the flagged samples (Perturbed-Attention Guidance).

  The output has the input's shape; what it predicts (noise, velocity, data) is fixed by
  the training loss, and a :mod:`jaxdiff.parameterization` wrapper turns it into a
  denoiser ``(x, t, cond) -> x0_hat``.

  Args:
    num_classes: number of classes ``K`` (labels ``0..K-1``; ``-1`` is the null label).
    image_size: side length of the square input.
    patch: patch side (must divide ``image_size``).
    dim: token width (even, a multiple of ``num_heads``).
    depth: number of transformer blocks.
    num_heads: attention heads per block.
    mlp_ratio: hidden width of the MLP as a multiple of ``dim``.
    pag_layers: indices of the blocks whose attention ``perturb`` replaces (default: all).
    rngs: ``nnx.Rngs`` for initialisation.

  Sizes are concrete ints ``>= 1`` (a bad one raises naming it). Labels follow the one
  label policy: integers in ``[0, K)`` or ``-1``; concrete labels outside raise
  (float/bool labels: ``TypeError``), traced ones (under ``jit``) give NaN outputs for
  the samples that carry them, never another class's prediction.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxdiff.models import DigitDenoiser
    >>> net = DigitDenoiser(dim=32, depth=1, rngs=nnx.Rngs(0))
    >>> x, t, y = jnp.zeros((2, 8, 8)), jnp.full((2,), 0.5), jnp.array([3, -1])
    >>> net(x, t, y, perturb=jnp.array([False, True])).shape
    (2, 8, 8)

  References:
    Peebles & Xie, "Scalable Diffusion Models with Transformers", arXiv:2212.09748
    (adaLN-Zero, Sec. 3.2). Ho & Salimans, "Classifier-Free Diffusion Guidance",
    arXiv:2207.12598 (null label, label dropout). Ahn et al., "Self-Rectifying Diffusion
    Sampling with Perturbed-Attention Guidance", arXiv:2403.17377.
  """

  def __init__(
    self,
    num_classes: int = 10,
    *,
    image_size: int = 8,
    patch: int = 2,
    dim: int = 64,
    depth: int = 3,
    num_heads: int = 4,
    mlp_ratio: int = 2,
    pag_layers: Sequence[int] | None = None,
    rngs: nnx.Rngs,
  ):
    size = lambda name, v: check_size(f"DigitDenoiser: {name}", v)
    num_classes, image_size, patch = (
      size("num_classes", num_classes),
      size("image_size", image_size),
      size("patch", patch),
    )
    dim, depth = size("dim", dim), size("depth", depth)
    num_heads, mlp_ratio = size("num_heads", num_heads), size("mlp_ratio", mlp_ratio)
    if image_size % patch:
      raise ValueError(f"DigitDenoiser: patch ({patch}) must divide image_size ({image_size}).")
    if dim % 2 or dim % num_heads:
      raise ValueError(
        f"DigitDenoiser: dim ({dim}) must be even (sin/cos time features) and a multiple of "
        f"num_heads ({num_heads})."
      )
    self.num_classes = num_classes
    self.image_size = image_size
    self.patch = patch
    self.dim = dim
    if pag_layers is None:
      pag_layers = range(depth)
    elif isinstance(pag_layers, (str, bytes)) or not hasattr(pag_layers, "__iter__"):
      raise TypeError(
        f"DigitDenoiser: pag_layers must be a sequence of block indices, got {pag_layers!r}."
      )
    self.pag_layers = tuple(check_size("DigitDenoiser: pag_layers", i, lo=0) for i in pag_layers)
    if any(not 0 <= i < depth for i in self.pag_layers):
      raise ValueError(f"DigitDenoiser: pag_layers {self.pag_layers} outside range({depth}).")
    num_tokens = (image_size // patch) ** 2
    self.embed = nnx.Linear(patch * patch, dim, rngs=rngs)
    self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (num_tokens, dim)))
    self.time_in = nnx.Linear(dim, dim, rngs=rngs)
    self.time_out = nnx.Linear(dim, dim, rngs=rngs)
    self.label = nnx.Embed(num_classes + 1, dim, rngs=rngs)  # row K is the null label
    self.blocks = nnx.List([_Block(dim, num_heads, mlp_ratio, rngs=rngs) for _ in range(depth)])
    self.norm_out = nnx.LayerNorm(dim, use_bias=False, use_scale=False, rngs=rngs)
    zeros = nnx.initializers.zeros
    self.ada_out = nnx.Linear(dim, 2 * dim, kernel_init=zeros, bias_init=zeros, rngs=rngs)
    self.head = nnx.Linear(dim, patch * patch, kernel_init=zeros, bias_init=zeros, rngs=rngs)

  def __call__(self, x: Array, t: Array, cond: Array, *, perturb: Array | None = None) -> Array:
    """Network output for images ``x (B, H, W)``, times ``t (B,)``, labels ``cond (B,)``.

    ``perturb`` is an optional bool ``(B,)`` (PAG); ``None`` perturbs nothing. The call is
    :meth:`encode`, then every block in ``self.blocks`` (``block(h, c, perturb)``, with
    ``perturb`` for the blocks in ``pag_layers``), then :meth:`readout`: the block interface
    of ``jaxdiff._blocks``, whose loop feature caching, block skipping and early exit run
    too (storing, skipping or stopping after some blocks).
    """
    return run_blocks(self, x, t, cond, perturb=perturb)

  def encode(self, x: Array, t: Array, cond: Array) -> tuple[Array, Array, Array]:
    """Checks the inputs and returns ``(h, c, valid)``: tokens ``(B, T, dim)``, the
    conditioning vector ``c (B, dim)`` that modulates every block, and the bool ``(B,)``
    label-validity mask that :meth:`readout` applies."""
    s, p = self.image_size, self.patch
    if x.ndim != 3 or x.shape[1:] != (s, s):
      raise ValueError(f"DigitDenoiser: expected x of shape (B, {s}, {s}), got {x.shape}.")
    b, n = x.shape[0], s // p
    t = jnp.broadcast_to(jnp.asarray(t), (b,))
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"DigitDenoiser: x must be floating point, got {x.dtype}.")
    valid = check_labels("DigitDenoiser: cond", cond, self.num_classes, allow_null=True)
    cond = jnp.broadcast_to(jnp.asarray(cond), (b,))
    valid = jnp.broadcast_to(valid, (b,))
    tokens = x.reshape(b, n, p, n, p).transpose(0, 1, 3, 2, 4).reshape(b, n * n, p * p)
    h = self.embed(tokens) + self.pos[...]
    temb = self.time_out(nnx.silu(self.time_in(_timestep_embedding(t, self.dim))))
    label = jnp.where((cond < 0) | ~valid, self.num_classes, cond)
    c = nnx.silu(temb + self.label(label))
    return h, c, valid

  def readout(self, h: Array, c: Array, valid: Array, x: Array) -> Array:
    """The final adaLN-modulated head: tokens ``h`` back to an image shaped like ``x``
    (NaN for the samples whose traced label was invalid)."""
    s, p = self.image_size, self.patch
    b, n = h.shape[0], s // p
    shift, scale = jnp.split(self.ada_out(c), 2, axis=-1)
    out = self.head(_modulate(self.norm_out(h), shift, scale))
    out = out.reshape(b, n, n, p, p).transpose(0, 1, 3, 2, 4).reshape(b, s, s)
    out = poison(out, valid)  # invalid traced labels: NaN in value and gradient
    return out.astype(x.dtype)


class DigitClassifier(nnx.Module):
  """An MLP classifier on flattened images with smooth (SiLU) activations.

  .. math::

    \\phi(x) = \\mathrm{silu}(W_2\\,\\mathrm{silu}(W_1 \\mathrm{vec}(x) + b_1) + b_2),
    \\qquad \\mathrm{logits}(x) = W_3 \\phi(x) + b_3

  ``features(x)`` returns :math:`\\phi(x)`, the penultimate activations used as the feature
  space of the demo's Frechet distance and precision/recall (the role Inception-v3 plays
  for FID). The activations are smooth because EluCD (Ma et al., Sec. 4.3) finds that
  smooth classifiers give better guidance gradients than ReLU ones.

  Args:
    num_classes: number of classes.
    in_features: flattened input size (64 for 8x8 digits).
    hidden: width of the first hidden layer.
    feature_dim: width of the feature layer.
    rngs: ``nnx.Rngs`` for initialisation.

  All sizes are concrete ints ``>= 1`` (``num_classes >= 2``); a bad one raises naming it.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxdiff.models import DigitClassifier
    >>> clf = DigitClassifier(rngs=nnx.Rngs(0))
    >>> clf(jnp.zeros((5, 8, 8))).shape, clf.features(jnp.zeros((5, 8, 8))).shape
    ((5, 10), (5, 32))

  References:
    Ma et al., "Elucidating The Design Space of Classifier-Guided Diffusion Generation",
    arXiv:2310.11311 (Sec. 4.3).
  """

  def __init__(
    self,
    num_classes: int = 10,
    *,
    in_features: int = 64,
    hidden: int = 128,
    feature_dim: int = 32,
    rngs: nnx.Rngs,
  ):
    num_classes = check_size("DigitClassifier: num_classes", num_classes, lo=2)
    in_features = check_size("DigitClassifier: in_features", in_features)
    hidden = check_size("DigitClassifier: hidden", hidden)
    feature_dim = check_size("DigitClassifier: feature_dim", feature_dim)
    self.in_features = in_features
    self.fc1 = nnx.Linear(in_features, hidden, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, feature_dim, rngs=rngs)
    self.fc3 = nnx.Linear(feature_dim, num_classes, rngs=rngs)

  def features(self, x: Array) -> Array:
    """Penultimate activations ``(B, feature_dim)`` of images ``(B, ...)``."""
    if jnp.ndim(x) < 1:
      raise ValueError(
        f"DigitClassifier: x must be batch-first (B, ...), got shape {jnp.shape(x)}."
      )
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != self.in_features:
      raise ValueError(
        f"DigitClassifier: expected {self.in_features} input values per sample, got {x.shape}."
      )
    return nnx.silu(self.fc2(nnx.silu(self.fc1(flat))))

  def __call__(self, x: Array) -> Array:
    """Logits ``(B, num_classes)``."""
    return self.fc3(self.features(x))
