"""Inter-layer (cross-block) terms of the second-order quantization loss model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from optim._validation import check_choice, check_flag
from optim.curvature import hessian_matvec
from optim.quant._hawq import check_bit_set, quantization_errors, select_layers

PyTree = Any

__all__ = ["interlayer_sensitivity"]

VARIANTS = ("hessian", "loss")


def interlayer_sensitivity(
  loss_fn: Callable[..., jax.Array],
  params: PyTree,
  *args: Any,
  bits: Sequence[int] = (2, 3, 4, 8),
  variant: str = "hessian",
  layers: Any = None,
  symmetric: bool = True,
  axis: int | None = None,
) -> jax.Array:
  """Cross-layer terms :math:`C_{ij}(b, c)` that layer-wise sensitivities leave out.

  With :math:`\\Delta_i(b) = Q_b(W_i) - W_i`, the second-order model of the loss change is

  .. math::
    \\Delta L \\approx g^\\top \\Delta + \\tfrac12 \\Big(\\sum_i \\Delta_i^\\top H_{ii} \\Delta_i
    + \\sum_{i \\ne j} \\Delta_i^\\top H_{ij} \\Delta_j\\Big).

  HAWQ-V2 keeps the diagonal blocks only (its :math:`\\Omega_i` estimates
  :math:`\\Delta_i^\\top H_{ii} \\Delta_i`); this function returns the off-diagonal terms

  * ``variant="hessian"``: :math:`C_{ij}(b, c) = \\Delta_i(b)^\\top H_{ij}\\, \\Delta_j(c)`,
    exactly, from one Hessian-vector product per (layer, width) pair (vmapped);
  * ``variant="loss"``: the measured interaction
    :math:`L(W + \\Delta_i + \\Delta_j) - L(W + \\Delta_i) - L(W + \\Delta_j) + L(W)`,
    forward passes only (vmapped over all pairs). For a quadratic loss the two agree.

  ``pareto_bit_allocation(sensitivity, budget, cross=C)`` then minimizes
  :math:`\\sum_i \\Omega_i(b_i) + \\sum_{i \\ne j} C_{ij}(b_i, b_j)`, the whole quadratic
  model (up to its factor 1/2).

  Assumption (``variant``): Schaefer et al. augment the layer-wise Hessian sensitivities
  with inter-layer dependencies and use them to order layers for a bisection search; the
  text available to us does not give the exact estimator of the dependency term. We take
  the two readings above (the exact cross-block Hessian term, and its forward-only
  measurement by joint quantization of layer pairs) and feed both into the exact
  allocator instead of the bisection search.

  Args:
    loss_fn: ``loss_fn(params, *args) -> scalar``.
    params: the trained parameters.
    *args: extra arguments of ``loss_fn`` (the calibration batch).
    bits: candidate bit widths, as given to :func:`layer_sensitivity`.
    variant: ``"hessian"`` or ``"loss"``.
    layers, symmetric, axis: as in :func:`layer_sensitivity`.

  Returns:
    An ``(L, B, L, B)`` array; the blocks ``i == j`` are zero.

  Raises:
    ValueError: a selected layer without parameters, bad ``bits`` or ``variant``.
    TypeError: ``loss_fn`` not returning a scalar; non-floating params.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.quant import interlayer_sensitivity
    >>> loss = lambda p: (jnp.sum(p["a"]) + jnp.sum(p["b"])) ** 2  # H_ab = 2 * ones
    >>> p = {"a": jnp.array([0.3, 1.0]), "b": jnp.array([0.4, 1.0])}
    >>> c = interlayer_sensitivity(loss, p, bits=(2,))
    >>> round(float(c[0, 0, 1, 0]), 4)  # 2 * sum(Q(a) - a) * sum(Q(b) - b) = 2 * 0.3 * 0.4
    0.24

  References:
    Schaefer et al., "Augmenting Hessians with Inter-Layer Dependencies for Mixed-Precision
    Post-Training Quantization", arXiv:2306.04879. Deng et al., "Mixed-Precision
    Quantization for Deep Vision Models with Integer Quadratic Programming" (CLADO),
    arXiv:2307.05657.
  """
  variant = check_choice("variant", variant, VARIANTS)
  symmetric = check_flag("symmetric", symmetric)
  bits = check_bit_set(bits, symmetric)
  positions, _, _ = select_layers(params, layers, "interlayer_sensitivity")
  op = hessian_matvec(loss_fn, params, *args)  # checks loss_fn and params
  num_layers, num_bits = len(positions), len(bits)

  @jax.jit
  def compute(params):
    leaves, treedef = jax.tree.flatten(params)
    errors = quantization_errors(leaves, positions, bits, symmetric, axis)

    def perturbation(i, b):  # the full-size tree with Delta_i(b) at layer i, zeros elsewhere
      full = [jnp.zeros_like(leaf) for leaf in leaves]
      full[positions[i]] = errors[i][b]
      return jax.tree.unflatten(treedef, full)

    pairs = [(i, b) for i in range(num_layers) for b in range(num_bits)]
    deltas = jax.tree.map(lambda *xs: jnp.stack(xs), *[perturbation(i, b) for i, b in pairs])
    if variant == "hessian":
      h_deltas = jax.vmap(op)(deltas)  # (L*B) products, one per perturbation
      flat = [jax.tree.leaves(h_deltas)[p] for p in positions]  # (L*B, *shape_i) per layer
      # C[i, b, j, c] = <Delta_i(b), (H Delta_j(c))_i>
      rows = [
        jnp.stack(
          [jnp.tensordot(flat[i], errors[i][b], axes=errors[i][b].ndim) for b in range(num_bits)]
        )
        for i in range(num_layers)
      ]
      out = jnp.stack(rows).reshape(num_layers, num_bits, num_layers, num_bits)
    else:
      f = lambda d: loss_fn(jax.tree.map(jnp.add, params, d), *args)
      single = jax.vmap(f)(deltas)  # (L*B,)
      both = jax.vmap(lambda d1: jax.vmap(lambda d2: f(jax.tree.map(jnp.add, d1, d2)))(deltas))(
        deltas
      )
      base = loss_fn(params, *args)
      out = (both - single[:, None] - single[None, :] + base).reshape(
        num_layers, num_bits, num_layers, num_bits
      )
    off = 1.0 - jnp.eye(num_layers, dtype=out.dtype)[:, None, :, None]
    return out * off

  return compute(params)
