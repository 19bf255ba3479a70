"""AGD's adapters as a flax nnx wrapper around :class:`jaxdiff.models.DigitDenoiser`.

Kept apart from :mod:`jaxdiff._distill._guidance_adapters` so that ``import jaxdiff`` does
not import flax: :mod:`jaxdiff.distill` loads this module on first use of
:class:`GuidanceAdapter`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff._blocks import run_blocks
from jaxdiff._validation import (
  check_choice,
  check_finite,
  check_flag,
  check_scalar,
  is_traced,
  poison,
)
from jaxdiff.models._checks import check_size
from jaxdiff.models._nets import DigitDenoiser, _modulate, _timestep_embedding

Array = jax.Array

VARIANTS = ("additive", "mlp_gate")


class FourierBuffer(nnx.Variable):
  """The fixed random frequencies and phases of a scalar encoder (not trained)."""


class _ScalarEncoder(nnx.Module):
  """``LayerNorm(MLP(cos(2 pi (f v + phi))))`` with fixed ``f ~ N(0, 1)``, ``phi ~ U[0, 1)``."""

  def __init__(self, hidden: int, mlp_ratio: int, *, rngs: nnx.Rngs):
    self.frequencies = FourierBuffer(jax.random.normal(rngs.params(), (hidden,)))
    self.phases = FourierBuffer(jax.random.uniform(rngs.params(), (hidden,)))
    self.fc1 = nnx.Linear(hidden, mlp_ratio * hidden, rngs=rngs)
    self.fc2 = nnx.Linear(mlp_ratio * hidden, hidden, rngs=rngs)
    self.norm = nnx.LayerNorm(hidden, rngs=rngs)

  def __call__(self, v: Array) -> Array:
    feats = jnp.cos(2 * math.pi * (self.frequencies[...] * v[:, None] + self.phases[...]))
    return self.norm(self.fc2(nnx.relu(self.fc1(feats))))


class _Adapter(nnx.Module):
  """One block's adapter. ``"additive"``: ``(w, time, label) -> (B, 1, dim)``, the same for
  every token; ``"mlp_gate"``: also sees the attention input tokens ``u (B, T, dim)``,
  ``sigmoid(G [P u, c]) * O MLP([P u, c])``, per token."""

  def __init__(self, dim, hidden, mlp_ratio, use_timestep, use_class_label, variant, *, rngs):
    zeros = nnx.initializers.zeros  # zero-initialised outputs: the adapter starts at 0
    self.variant = variant
    self.scale_encoder = _ScalarEncoder(hidden, mlp_ratio, rngs=rngs)
    self.time_proj = nnx.Linear(dim, hidden, rngs=rngs) if use_timestep else None
    self.label_proj = nnx.Linear(dim, hidden, rngs=rngs) if use_class_label else None
    if variant == "additive":
      self.out_in = nnx.Linear(hidden, hidden, rngs=rngs)
      self.out_norm = nnx.LayerNorm(hidden, rngs=rngs)
      self.out = nnx.Linear(hidden, dim, kernel_init=zeros, bias_init=zeros, rngs=rngs)
    else:
      self.in_proj = nnx.Linear(dim, hidden, rngs=rngs)
      self.gate = nnx.Linear(2 * hidden, 1, kernel_init=zeros, bias_init=zeros, rngs=rngs)
      self.mlp_in = nnx.Linear(2 * hidden, 2 * hidden, rngs=rngs)
      self.mlp_out = nnx.Linear(2 * hidden, hidden, rngs=rngs)
      self.out = nnx.Linear(hidden, dim, kernel_init=zeros, bias_init=zeros, rngs=rngs)

  def __call__(self, w: Array, temb: Array | None, lemb: Array | None, u: Array) -> Array:
    c = self.scale_encoder(w)
    if self.time_proj is not None:
      c = c + self.time_proj(temb)
    if self.label_proj is not None:
      c = c + self.label_proj(lemb)
    if self.variant == "additive":
      return self.out(self.out_norm(nnx.relu(self.out_in(c))))[:, None, :]
    v = self.in_proj(u)
    v = jnp.concatenate([v, jnp.broadcast_to(c[:, None, :].astype(v.dtype), v.shape)], axis=-1)
    gate = nnx.sigmoid(self.gate(v))
    return gate * self.out(self.mlp_out(nnx.relu(self.mlp_in(v))))


class GuidanceAdapter(nnx.Module):
  r"""AGD's guidance adapters on a frozen :class:`~jaxdiff.models.DigitDenoiser`.

  Every transformer block's attention output gets an additive term from a small adapter
  that sees the guidance scale ``w`` (and, by default, the time and the class label
  through the frozen base's own embeddings plus a trainable projection); with
  ``variant="additive"`` the term is the same for every token,

  .. math::
    a_k = \mathrm{MLP}_k\big(\mathrm{LN}(\mathrm{MLP}(\cos 2\pi(f\,m w + \varphi)))
      + P^t_k\,e_t + P^c_k\,e_c\big), \qquad
    h \leftarrow h + g_1 \odot \big(\mathrm{SA}(\cdot) + a_k\big),

  with fixed random Fourier frequencies :math:`f \sim \mathcal N(0, 1)` and phases
  :math:`\varphi \sim U[0, 1)`, :math:`m` the ``scale_multiplier``, :math:`g_1` the
  block's own adaLN-Zero gate and :math:`e_t, e_c` the base's time and label embeddings.
  The adapters' last layer starts at zero, so an untrained adapter is the base network
  at every ``w``. Only the parameters under ``adapters`` are meant to be trained
  (:func:`freeze_base`); the result is a denoiser network ``(x, t, cond, *,
  guidance_scale) -> output`` in the base's parameterization, for
  :func:`jaxdiff.guidance.agd` after a :mod:`jaxdiff.parameterization` wrapper.

  The structure is the official code's additive adapter (``agd/models/additive.py``:
  ``ScalarEncoder`` of ``w``, optional time and class embeddings of the frozen base
  projected to ``hidden``, an output MLP whose last layer is zero-initialised, added to
  each DiT block's attention output); its sizes here are small.

  Args:
    base: the frozen conditional denoiser network (a :class:`~jaxdiff.models.DigitDenoiser`).
    hidden: the adapters' width.
    mlp_ratio: the scale encoder's hidden width as a multiple of ``hidden``.
    use_timestep: whether the adapters see the time (the base's time embedding).
    use_class_label: whether they see the class label (the base's label embedding).
    scale_multiplier: :math:`m`, the factor on ``w`` before the Fourier features, > 0.
    variant: ``"mlp_gate"`` (default; the official ``mlp_gate.py``: the term also reads
      the attention's input tokens :math:`u`,
      :math:`\sigma(G[Pu, c]) \odot O\,\mathrm{MLP}([Pu, c])` per token; its output
      layer :math:`O` starts at zero here, so it too starts as the base) or
      ``"additive"`` (the official ``additive.py`` and its training script's default: the
      formula above, one term per sample, the same for every token). On the demo's
      2-block digits DiT the additive term barely moves the samples toward CFG's
      (``bench/guidance_distillation.py``), hence the default.
    rngs: ``nnx.Rngs`` for initialisation.

  Calling it: ``adapter(x, t, cond, *, guidance_scale, perturb=None)`` with
  ``guidance_scale`` a number or ``(B,)``; a concrete non-finite one raises, a traced one
  gives NaN in the rows that carry it.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxdiff.distill import GuidanceAdapter
    >>> from jaxdiff.models import DigitDenoiser
    >>> base = DigitDenoiser(dim=16, depth=1, num_heads=2, rngs=nnx.Rngs(0))
    >>> net = GuidanceAdapter(base, hidden=8, rngs=nnx.Rngs(1))
    >>> x, t, y = jnp.ones((2, 8, 8)), jnp.full((2,), 0.5), jnp.array([3, 4])
    >>> bool(jnp.all(net(x, t, y, guidance_scale=3.0) == base(x, t, y)))  # zero-initialised
    True

  References:
    Jensen & Sadat, "Efficient Distillation of Classifier-Free Guidance using Adapters",
    arXiv:2503.07274 (the official ``agd/models/additive.py``, ``agd/dit/adapter.py``).
  """

  def __init__(
    self,
    base: DigitDenoiser,
    *,
    hidden: int = 32,
    mlp_ratio: int = 2,
    use_timestep: bool = True,
    use_class_label: bool = True,
    scale_multiplier: float = 1.0,
    variant: str = "mlp_gate",
    rngs: nnx.Rngs,
  ):
    if not isinstance(base, DigitDenoiser):
      raise TypeError(
        f"GuidanceAdapter: base must be a jaxdiff.models.DigitDenoiser, got {type(base).__name__}"
      )
    hidden = check_size("GuidanceAdapter: hidden", hidden)
    mlp_ratio = check_size("GuidanceAdapter: mlp_ratio", mlp_ratio)
    self.use_timestep = check_flag("GuidanceAdapter: use_timestep", use_timestep)
    self.use_class_label = check_flag("GuidanceAdapter: use_class_label", use_class_label)
    self.scale_multiplier = float(
      check_scalar("GuidanceAdapter: scale_multiplier", scale_multiplier, lo=0.0, lo_open=True)
    )
    self.variant = check_choice("GuidanceAdapter: variant", variant, VARIANTS)
    self.base = base
    dim = base.dim
    flags = (self.use_timestep, self.use_class_label, self.variant)
    self.adapters = nnx.List(
      [_Adapter(dim, hidden, mlp_ratio, *flags, rngs=rngs) for _ in base.blocks]
    )

  @property
  def num_classes(self) -> int:
    return self.base.num_classes

  def _scale(self, guidance_scale, b: int, x: Array) -> Array:
    if guidance_scale is None or isinstance(guidance_scale, (str, bytes, bool)):
      raise TypeError(
        f"GuidanceAdapter: guidance_scale must be a number or a ({b},) array, got "
        f"{guidance_scale!r}"
      )
    w = jnp.asarray(guidance_scale)
    if not (jnp.issubdtype(w.dtype, jnp.floating) or jnp.issubdtype(w.dtype, jnp.integer)):
      raise TypeError(f"GuidanceAdapter: guidance_scale must be real, got dtype {w.dtype}")
    if w.ndim > 1 or (w.ndim == 1 and w.shape[0] != b):
      raise ValueError(
        f"GuidanceAdapter: guidance_scale must be a scalar or of shape ({b},), got {w.shape}"
      )
    check_finite("GuidanceAdapter: guidance_scale", w)
    return jnp.broadcast_to(w.astype(jnp.float32), (b,))

  def __call__(self, x: Array, t: Array, cond: Array, *, guidance_scale, perturb=None) -> Array:
    """Network output for ``x (B, H, W)``, ``t (B,)``, labels ``cond (B,)`` at scale ``w``."""
    base = self.base
    b = jnp.shape(x)[0] if jnp.ndim(x) else 0
    w = self._scale(guidance_scale, b, x)
    tb = jnp.broadcast_to(jnp.asarray(t), (b,))
    temb = lemb = None
    if self.use_timestep:
      temb = base.time_out(nnx.silu(base.time_in(_timestep_embedding(tb, base.dim))))
    if self.use_class_label:
      labels = jnp.broadcast_to(jnp.asarray(cond), (b,))
      lemb = base.label(jnp.where(labels < 0, base.num_classes, labels))
    ws = self.scale_multiplier * w

    def block_fn(k, block, h, c, p):
      (g1, attn), (g2, mlp) = block.residual_branches(c)
      u = None
      if self.variant == "mlp_gate":  # the attention's input, as the block computes it
        s1, _, b1, _, _, _ = jnp.split(block.ada(c), 6, axis=-1)
        u = _modulate(block.norm1(h), b1, s1)
      shift = self.adapters[k](ws, temb, lemb, u).astype(h.dtype)
      h = h + g1[:, None, :] * (attn(h, p) + shift)
      return h + g2[:, None, :] * mlp(h, p)

    out = run_blocks(base, x, t, cond, perturb=perturb, block_fn=block_fn)
    if is_traced(w):
      out = poison(out, jnp.isfinite(w))
    return out
