"""⊥Grad: keep only the part of each leaf's gradient orthogonal to the leaf itself."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from optim._validation import check_scalar, guard, require_params

# perp_grad is stateless; the public name stays for the one release that still exports it.
PerpGradState = optax.EmptyState

# Below this fraction of ||g||^2, ||g_perp||^2 is recomputed exactly: the identity's rounding
# error is about eps_mach * ||g||^2, i.e. at most 16 eps_mach relative to ||g_perp||^2 above it.
_PARALLEL = 1.0 / 16


def perp_grad(eps: float = 1e-30) -> optax.GradientTransformationExtraArgs:
  r"""Projects each leaf's gradient orthogonally to the leaf and restores its norm (⊥Grad).

  For every leaf :math:`w` with gradient :math:`g` (flattened),

  .. math::
    g_\perp = g - \frac{\langle w, g\rangle}{\langle w, w\rangle + \epsilon}\, w, \qquad
    u = g_\perp\, \frac{\|g\|}{\|g_\perp\| + \epsilon}.

  Chain it *before* any base optimizer: ``optax.chain(perp_grad(), optax.adamw(...))``.
  Removing the radial component stops the "naive loss minimization" that scales the
  logits up until softmax collapses numerically; restoring the norm keeps the base
  optimizer's step size meaningful.

  Numerics: inner products and norms are accumulated in float32 (or float64) and the result
  cast back, so bf16/fp16 gradients are safe (no overflow of :math:`\|g\|^2` in fp16). A zero
  leaf leaves :math:`g` unchanged; a zero gradient stays zero. When :math:`g` is parallel
  to :math:`w` (always so for scalar leaves), :math:`g_\perp` is made of rounding errors
  that the rescaling would blow up to norm :math:`\|g\|` (the reference code does); here a
  :math:`g_\perp` with :math:`\|g_\perp\| \le 32\,\varepsilon_{\mathrm{mach}}\|g\|` gives
  a zero update instead. Zero-size leaves give empty updates. Cost: one pass computing
  :math:`\langle w,w\rangle, \langle w,g\rangle, \|g\|^2` together and
  :math:`\|g_\perp\|^2` from them; only where :math:`\|g_\perp\|^2 < \|g\|^2/16` (the
  identity would lose digits) a second, exact pass.

  Non-finite gradients: propagate: a NaN or inf anywhere in a leaf's gradient makes that
  whole leaf's update NaN (its norm is non-finite). There is no state to poison; compose
  with ``optax.apply_if_finite`` to skip such steps.

  Args:
    eps: guard added to :math:`\langle w, w\rangle` and :math:`\|g_\perp\|`, finite and
      > 0 (1e-30 as in the authors' code; 0 would turn a zero leaf into NaN).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optim import perp_grad
    >>> tx = optax.chain(perp_grad(), optax.sgd(0.1))
    >>> w = jnp.array([1.0, 0.0]); s = tx.init(w)
    >>> u, s = tx.update(jnp.array([1.0, 1.0]), s, w)
    >>> [round(abs(float(x)), 4) for x in u]  # radial part removed, norm sqrt(2) kept
    [0.0, 0.1414]

  References:
    Prieto, Barsbey, Mediano, Birdal, "Grokking at the Edge of Numerical Stability",
    ICLR 2025, arXiv:2501.04697 (Section 5; ⊥AdamW in the authors' code).
  """

  check_scalar("eps", eps, lo=0.0, lo_open=True)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    require_params(params, "perp_grad")

    def leaf(g, w):
      ct = jnp.promote_types(g.dtype, jnp.float32)
      gc, wc = g.astype(ct), w.astype(ct)
      # One pass of three sums (XLA fuses them), then ||g_perp||^2 from the identity
      # ||g - c w||^2 = gg - 2 c wg + c^2 ww: no second pass over the leaf to form g_perp.
      ww, wg, gg = jnp.vdot(wc, wc), jnp.vdot(wc, gc), jnp.vdot(gc, gc)
      c = wg / (ww + eps)
      perp_sq = gg - 2 * c * wg + c * c * ww
      # The identity cancels catastrophically when g is nearly parallel to w (it loses
      # log2(gg / perp_sq) bits); there, and only there, take the exact second pass.
      perp_sq = jax.lax.cond(
        perp_sq > _PARALLEL * gg,
        lambda: perp_sq,
        lambda: jnp.vdot(gc - c * wc, gc - c * wc),
      )
      g_norm, perp_norm = jnp.sqrt(gg), jnp.sqrt(jnp.maximum(perp_sq, 0.0))
      scale = g_norm / (perp_norm + eps)
      # A g_perp at rounding level is no direction at all: return 0 rather than noise.
      scale = jnp.where(perp_norm > 32 * jnp.finfo(ct).eps * g_norm, scale, 0.0)
      return ((gc - c * wc) * scale).astype(g.dtype)

    return jax.tree.map(leaf, updates, params), state

  return guard(optax.GradientTransformationExtraArgs(init_fn, update_fn), "perp_grad")
