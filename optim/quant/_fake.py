"""Uniform fake quantization (quantize, then dequantize) with a straight-through estimator."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optim._validation import check_flag, check_floating, check_scalar

PyTree = Any

__all__ = ["fake_quant", "model_size_bits", "quantize_params"]


def check_bits(bits: Any, symmetric: bool, name: str = "bits") -> int:
  """A static integer bit width: >= 2 for the symmetric grid (which has 2^(b-1) - 1 positive
  levels, none at b = 1), >= 1 for the asymmetric one; at most 32."""
  lo = 2 if symmetric else 1
  b = check_scalar(name, bits, lo=1, hi=32, integer=True, static=True)
  if b < lo:
    raise ValueError(
      f"{name} must be >= 2 for symmetric quantization (its grid has 2^(b-1) - 1 positive "
      f"levels, none at b = 1); got {b}. Use symmetric=False for 1-bit (two-level) grids."
    )
  return b


def _check_axis(axis: Any, ndim: int, where: str) -> int | None:
  if axis is None:
    return None
  if isinstance(axis, bool) or not isinstance(axis, int):
    raise TypeError(f"{where}: axis must be None (per tensor) or an int, got {axis!r}")
  if ndim == 0 or not -ndim <= axis < ndim:
    raise ValueError(f"{where}: axis {axis} is out of range for an array of {ndim} dimensions")
  return axis % ndim


def _fold(extent, qmax, dtype):
  r"""1, or :math:`2^{-32}` where the grid's extent would overflow or its scale be too large.

  ``extent`` is :math:`\max|x|` (symmetric) or :math:`\max - \min` (asymmetric, inf when
  it overflows). XLA divides by multiplying with the reciprocal, which flushes to zero for
  a scale above :math:`\approx 2^{126}` in float32, so a scale that large would quantize
  everything to 0: the grid is then built for :math:`2^{-32}x` (exact, as any power of 2)
  and the dequantized values scaled back. Below the threshold (every range that is not
  near the dtype's largest value) the fold is 1 and every product with it exact.
  """
  info = jnp.finfo(dtype)
  limit = min(2.0 ** (info.maxexp - 28) * qmax, float(info.max))
  ok = jnp.isfinite(extent) & (extent <= limit)
  return jnp.where(ok, 1.0, 2.0**-32).astype(dtype)


def _grid(x: jax.Array, bits: int, symmetric: bool, axis: int | None):
  r"""``(wide, scale, zero, qmin, qmax, fold)`` of the grid, broadcastable against ``x``.

  The range is taken over the finite entries only, and ``wide`` is ``x`` clipped to it
  (so ``±inf`` lands on the grid's ends, NaN stays NaN), then multiplied by ``fold``
  (:func:`_fold`); the caller divides the dequantized values by ``fold``.
  """
  reduce = None if axis is None else tuple(i for i in range(x.ndim) if i != axis)
  wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  finite = jnp.where(jnp.isfinite(wide), wide, jnp.zeros((), wide.dtype))
  if symmetric:
    qmax = 2 ** (bits - 1) - 1
    amax = jnp.max(jnp.abs(finite), axis=reduce, keepdims=True)
    fold = _fold(amax, qmax, wide.dtype)
    wide = jnp.clip(wide, -amax, amax) * fold
    scale = (amax * fold) / qmax
    zero = jnp.zeros_like(scale)
    qmin = -qmax
  else:
    # A float: 2**32 - 1 does not fit the int32 a Python int becomes (bits=32 raised).
    qmin, qmax = 0, float(2**bits - 1)
    # The range always contains 0 so that zero (padding, pruned weights) is exact.
    lo = jnp.minimum(jnp.min(finite, axis=reduce, keepdims=True), 0.0)
    hi = jnp.maximum(jnp.max(finite, axis=reduce, keepdims=True), 0.0)
    fold = _fold(hi - lo, qmax, wide.dtype)
    wide = jnp.clip(wide, lo, hi) * fold
    lo, hi = lo * fold, hi * fold
    scale = (hi - lo) / qmax
    zero = jnp.round(-lo / jnp.where(scale > 0, scale, 1.0))
  # An all-zero channel has scale 0: any positive scale represents it exactly.
  scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
  return wide, scale, zero, qmin, qmax, fold


def fake_quant(
  x: jax.Array, bits: int, *, symmetric: bool = True, axis: int | None = None
) -> jax.Array:
  """Uniform quantize-dequantize of ``x`` with a straight-through gradient.

  Symmetric (``symmetric=True``; signed grid, zero point 0):

  .. math::
    s = \\frac{\\max|x|}{2^{b-1} - 1}, \\qquad
    Q(x) = s \\cdot \\mathrm{clip}\\big(\\mathrm{round}(x / s), -(2^{b-1} - 1), 2^{b-1} - 1\\big).

  Asymmetric (unsigned grid with zero point :math:`z`; the range is widened to contain 0
  so that zero is exact): :math:`s = (\\max(x, 0) - \\min(x, 0)) / (2^b - 1)`,
  :math:`z = \\mathrm{round}(-\\min(x, 0) / s)`,
  :math:`Q(x) = s\\,(\\mathrm{clip}(\\mathrm{round}(x / s) + z, 0, 2^b - 1) - z)`.

  The statistics are per tensor (``axis=None``) or per channel (one scale per index of
  ``axis``, reduced over the other axes). The gradient is the straight-through estimator
  :math:`\\partial Q / \\partial x = I` (Bengio et al.), implemented as
  ``x + stop_gradient(Q(x) - x)``; the grid is never clipped inside its own range, so no
  gradient is masked. An all-zero tensor or channel is returned exactly (scale 0 is
  replaced by 1). ``Q`` is idempotent: a tensor already on its grid is returned unchanged
  (up to one rounding of the scale).

  Non-finite and extreme entries: the range (:math:`\\max|x|`, or :math:`\\min` and
  :math:`\\max`) is taken over the finite entries of the tensor or channel, so one bad
  entry never changes the others. ``±inf`` is clipped to that range (it lands on the
  grid's end; the range always contains 0, so an all-inf channel gives 0) and NaN stays NaN
  where it is; both get gradient 0. A range near the dtype's largest value (finite input
  up to ``±finfo.max``, where :math:`\\max - \\min` overflows) is quantized exactly as
  :math:`2^{32} Q(2^{-32} x)`, and a grid point past ``finfo(x.dtype).max`` saturates there.

  Args:
    x: a floating-point array.
    bits: static bit width :math:`b` (>= 2 symmetric, >= 1 asymmetric, <= 32).
    symmetric: signed grid with zero point 0 (``True``) or unsigned with a zero point.
    axis: ``None`` for one scale per tensor, or the channel axis for one per channel.

  Returns:
    ``Q(x)`` with the shape and dtype of ``x``.

  Raises:
    TypeError: non-floating ``x``; traced, non-integer-typed or bool ``bits``; a
      non-int ``axis``.
    ValueError: ``bits`` out of range or fractional, ``axis`` out of range.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.quant import fake_quant
    >>> fake_quant(jnp.array([-1.0, -0.4, 0.1, 0.7]), 2)  # grid {-1, 0, 1}
    Array([-1.,  0.,  0.,  1.], dtype=float32)

  References:
    Jacob et al., "Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference", arXiv:1712.05877. Bengio, Leonard & Courville,
    "Estimating or Propagating Gradients Through Stochastic Neurons", arXiv:1308.3432.
  """
  symmetric = check_flag("symmetric", symmetric)
  bits = check_bits(bits, symmetric)
  check_floating(x, "x", "fake_quant")
  x = jnp.asarray(x)
  axis = _check_axis(axis, x.ndim, "fake_quant")
  if x.size == 0:
    return x
  return _fake_quant(x, bits, symmetric, axis)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _fake_quant(x: jax.Array, bits: int, symmetric: bool, axis: int | None) -> jax.Array:
  wide, scale, zero, qmin, qmax, fold = _grid(x, bits, symmetric, axis)
  q = jnp.clip(jnp.round(wide / scale) + zero, qmin, qmax)
  # A grid end past the dtype's largest value (rounding at the top of the range, or a range
  # folded by 1/2) saturates there instead of turning into inf.
  top = jnp.finfo(x.dtype).max
  deq = jnp.clip((q - zero) * scale / fold, -top, top).astype(x.dtype)
  # Straight through where x is finite; a non-finite entry's output is its clipped value
  # (x + (deq - x) would be inf - inf there), with gradient 0.
  return jnp.where(jnp.isfinite(x), x + jax.lax.stop_gradient(deq - x), jax.lax.stop_gradient(deq))


def _leaf_axis(axis: int | None, leaf: jax.Array) -> int | None:
  # Per channel applies to matrices and kernels; vectors (biases, norms) are per tensor.
  return None if axis is None or jnp.ndim(leaf) < 2 else axis


def broadcast_bits(bits: Any, params: PyTree, where: str) -> list:
  """Per-leaf bit widths (``None`` = kept in floating point) from an int or a pytree."""
  leaves, treedef = jax.tree.flatten(params)
  if bits is None or isinstance(bits, (int, float, np.integer, np.floating, str)):
    return [bits] * len(leaves)  # one width for all (a bad one is rejected leaf by leaf)
  got = jax.tree.flatten(bits, is_leaf=lambda b: b is None)
  if got[1] != jax.tree.flatten(params, is_leaf=lambda b: b is None)[1]:
    raise ValueError(
      f"{where}: bits must be an int or a pytree with the structure of params (None where a "
      f"leaf stays in floating point); got\n  bits: {got[1]}\n  params: {treedef}"
    )
  return got[0]


def quantize_params(
  params: PyTree, bits: Any, *, symmetric: bool = True, axis: int | None = None
) -> PyTree:
  """Fake-quantizes every leaf of ``params`` at its own bit width (mixed precision).

  .. math::
    W_\\ell \\mapsto Q_{b_\\ell}(W_\\ell) \\quad\\text{(see } :func:`fake_quant`\\text{)},

  with the straight-through gradient, so the same call serves post-training quantization
  and quantization-aware training (``loss(quantize_params(p, bits), batch)``).

  Args:
    params: a pytree of floating-point arrays.
    bits: one int for every leaf, or a pytree with the structure of ``params`` whose leaves
      are ints or ``None`` (``None`` keeps that leaf in floating point), e.g. the ``bits``
      of a :func:`pareto_bit_allocation`.
    symmetric: as in :func:`fake_quant`.
    axis: per-channel axis for leaves with at least two dimensions (``-1``: output
      channels of a ``(in, out)`` matrix); vectors are always quantized per tensor.

  Returns:
    The quantized parameters, same structure, shapes and dtypes.

  Raises:
    ValueError: ``bits`` has another structure, or a width out of range.
    TypeError: non-floating leaves or a non-integer width.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.quant import quantize_params
    >>> p = {"w": jnp.array([[0.3, -1.0], [0.9, 0.2]]), "b": jnp.array([0.123])}
    >>> quantize_params(p, {"w": 2, "b": None})["w"]
    Array([[ 0., -1.],
           [ 1.,  0.]], dtype=float32)

  References:
    Dong et al., "HAWQ-V2: Hessian Aware trace-Weighted Quantization of Neural Networks",
    arXiv:1911.03852.
  """
  check_floating(params, "params", "quantize_params")
  leaves, treedef = jax.tree.flatten(params)
  per_leaf = broadcast_bits(bits, params, "quantize_params")
  out = []
  for leaf, b in zip(leaves, per_leaf):
    if b is None:
      out.append(leaf)
      continue
    ax = _leaf_axis(axis, leaf)
    if ax is not None:
      _check_axis(ax, jnp.ndim(leaf), "quantize_params")
    out.append(leaf if jnp.size(leaf) == 0 else fake_quant(leaf, b, symmetric=symmetric, axis=ax))
  return jax.tree.unflatten(treedef, out)


def model_size_bits(params: PyTree, bits: Any) -> int:
  """Storage of ``params`` in bits when leaf :math:`\\ell` is stored at :math:`b_\\ell` bits.

  .. math::
    S = \\sum_\\ell n_\\ell\\, b_\\ell,

  where :math:`n_\\ell` is the number of entries of leaf :math:`\\ell`; a leaf with
  ``bits=None`` counts at its dtype's width (32 for float32). The per-tensor or
  per-channel scales and zero points are not counted (a few floats per channel, the
  convention of HAWQ-V2's model sizes).

  Args:
    params: a pytree of arrays (or ``jax.ShapeDtypeStruct``).
    bits: an int for every leaf or a pytree like ``params`` of ints / ``None``.

  Returns:
    The size in bits, a Python int.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.quant import model_size_bits
    >>> model_size_bits({"w": jnp.zeros((4, 4)), "b": jnp.zeros(4)}, {"w": 4, "b": None})
    192
  """
  leaves = jax.tree.leaves(params)
  per_leaf = broadcast_bits(bits, params, "model_size_bits")
  total = 0
  for leaf, b in zip(leaves, per_leaf):
    n = math.prod(leaf.shape)
    if b is None:
      total += n * jnp.dtype(leaf.dtype).itemsize * 8
    else:
      total += n * check_scalar("bits", b, lo=1, hi=32, integer=True, static=True)
  return total
