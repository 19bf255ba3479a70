"""Latent-space smoothness: Smooth Diffusion's interpolation standard deviation (ISTD)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff._validation import check_choice

Array = jax.Array

__all__ = ["istd"]


def istd(frames, *, variant: str = "mse") -> Array:
  r"""Interpolation standard deviation: how evenly a latent interpolation changes the image.

  For each of ``B`` interpolation sequences of ``K`` images :math:`x^{(1)},\dots,x^{(K)}`
  (generated from latents interpolated at evenly spaced ratios), the distances between
  neighbours :math:`d_k = \delta(x^{(k+1)}, x^{(k)})` should be equal in a smooth latent
  space; ISTD is their standard deviation, averaged over sequences:

  .. math:: \mathrm{ISTD} = \frac1B\sum_b \operatorname{std}_k\, d^{(b)}_k

  ``variant="mse"``: :math:`\delta` is the mean squared pixel difference; ``"l2"``: the
  Euclidean distance. (The paper measures image distances of interpolations between
  inverted real images; the choice of ``delta`` is ours, stated here.)

  Args:
    frames: ``(B, K, ...)`` with ``K >= 3`` (at least two neighbour distances).
    variant: ``"mse"`` or ``"l2"``.

  Returns:
    The scalar ISTD (0 for evenly spaced changes, e.g. a linear path).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff.metrics import istd
    >>> line = jnp.linspace(0.0, 1.0, 5)[None, :, None] * jnp.ones((1, 5, 4))
    >>> float(istd(line))  # equal steps
    0.0

  References:
    Guo et al., "Smooth Diffusion: Crafting Smooth Latent Spaces in Diffusion Models",
    CVPR 2024, arXiv:2312.04410 (Sec. 4.1, ISTD).
  """
  check_choice("istd: variant", variant, ("mse", "l2"))
  x = jnp.asarray(frames)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"istd: frames must be floating point, got {x.dtype}")
  if x.ndim < 3 or x.shape[1] < 3 or x.shape[0] < 1:
    raise ValueError(f"istd: frames must have shape (B, K, ...) with B >= 1, K >= 3, got {x.shape}")
  diff = (x[:, 1:] - x[:, :-1]).reshape(x.shape[0], x.shape[1] - 1, -1)
  sq = jnp.mean(diff**2, axis=-1) if variant == "mse" else jnp.sqrt(jnp.sum(diff**2, axis=-1))
  return jnp.mean(jnp.std(sq, axis=1))
