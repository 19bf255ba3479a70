"""Linear measurement operators ``y = A x`` with their transposes, for inverse problems.

An :class:`Operator` is written for one example (``in_shape -> out_shape``) and applied
to a batch with ``jax.vmap``, like a layer. Each factory gives the forward map and its
exact transpose as pure functions (a gather and its scatter, a pooling and its spreading,
a convolution and its correlation), so no solver differentiates through them to get
``A^T``; the adjoint identity ``<A x, y> = <x, A^T y>`` is tested for every factory.

Dtypes: an operator computes in floating point. A floating batch keeps its dtype (the
operator's constants are cast to it, as a layer's weights are); an integer or bool batch
(e.g. a ``uint8`` image) is promoted to the default float dtype first (float32, float64
under x64), so ``matrix(A)(x_int)`` is ``A x``, never ``A`` truncated to integers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.signal import convolve

from jaxdiff._validation import as_key, check_finite, check_output, check_scalar

Array = jax.Array


def _shape(name: str, shape) -> tuple[int, ...]:
  try:
    out = tuple(int(d) for d in shape)
  except TypeError as err:
    raise TypeError(f"{name} must be a tuple of positive ints, got {shape!r}") from err
  if not out or any(d < 1 for d in out) or any(int(d) != d for d in shape):
    raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {shape!r}")
  return out


@dataclasses.dataclass(frozen=True, eq=False)
class Operator:
  """A linear map ``A`` between per-example shapes, with its transpose ``A^T``.

  ``op(x)`` maps a batch ``(B, *in_shape) -> (B, *out_shape)``, ``op.T(y)`` back; a batch
  of the wrong per-example shape raises a ``ValueError`` naming the operator (no silent
  broadcast), and so does a ``forward`` or ``transpose_fn`` of one's own whose output is
  not one array of the declared per-example shape (checked at trace time); an integer or
  bool batch is promoted to the default float dtype (a floating one keeps its dtype).
  Operators are static objects (equality is identity), so a rule built from one compiles
  :func:`jaxdiff.sample` once.

  Attributes:
    name: what the operator is, for messages and tables.
    forward: ``x -> A x`` for one example.
    transpose_fn: ``y -> A^T y`` for one example.
    in_shape: per-example input shape.
    out_shape: per-example measurement shape.
  """

  name: str
  forward: Callable[[Array], Array]
  transpose_fn: Callable[[Array], Array]
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]

  def _batched(self, fn, v, shape, what, out_shape, fn_name):
    v = jnp.asarray(v)
    if v.ndim != len(shape) + 1 or v.shape[1:] != shape:
      raise ValueError(f"{self.name}: {what} must have shape (B, *{shape}), got {v.shape}")
    if not jnp.issubdtype(v.dtype, jnp.inexact):
      # Casting the operator to an integer batch's dtype would truncate it (A x = 0).
      v = v.astype(jnp.result_type(float))
    # A user's forward/transpose: one example in, one example of the declared shape out.
    out = jax.vmap(fn)(v)
    return check_output(out, shape=(v.shape[0], *out_shape), name=fn_name, where=self.name)

  def __call__(self, x) -> Array:
    return self._batched(self.forward, x, self.in_shape, "x", self.out_shape, "forward(x)")

  def transpose(self, y) -> Array:
    """``A^T y`` for a batch of measurements ``(B, *out_shape)``."""
    return self._batched(
      self.transpose_fn, y, self.out_shape, "y", self.in_shape, "transpose_fn(y)"
    )

  @property
  def T(self) -> Callable[[Array], Array]:  # noqa: N802 - the matrix convention
    return self.transpose

  def matrix(self, dtype=None) -> Array:
    """The dense ``(M, D)`` matrix (``M = prod(out_shape)``, ``D = prod(in_shape)``)."""
    d = math.prod(self.in_shape)
    eye = jnp.eye(d, dtype=dtype or jnp.result_type(float)).reshape((d, *self.in_shape))
    return self(eye).reshape(d, -1).T

  def check_measurement(self, y, batch: int | None, where: str) -> Array:
    """``y`` as an array ``(batch, *out_shape)`` (any batch if ``None``), else a ``ValueError``.

    A concrete ``y`` must also be finite (:func:`~jaxdiff._validation.check_finite`, the
    check the exact posterior makes): a NaN measurement would turn every sample guided by
    it into NaN. A traced ``y`` cannot be checked; its NaN or inf reaches the samples of
    its rows as NaN (documented in each sampler)."""
    y = jnp.asarray(y)
    check_finite(f"{where}: y", y)
    if batch is None:
      if y.ndim < 1 or y.shape[1:] != self.out_shape:
        raise ValueError(
          f"{where}: y must have shape (B, *{self.out_shape}) (measurements of {self.name}), "
          f"got {y.shape}"
        )
      return y
    if y.shape != (batch, *self.out_shape):
      raise ValueError(
        f"{where}: the measurement y must have shape (B, *out_shape) = "
        f"{(batch, *self.out_shape)} for a batch of {batch} ({self.name}), got {y.shape}"
      )
    return y


def _gather(name: str, shape: tuple[int, ...], keep: np.ndarray) -> Operator:
  idx = jnp.asarray(np.flatnonzero(keep), jnp.int32)
  size = math.prod(shape)

  def forward(x):
    return x.reshape(size)[idx]

  def transpose(y):
    return jnp.zeros((size,), y.dtype).at[idx].set(y).reshape(shape)

  return Operator(name, forward, transpose, shape, (int(idx.shape[0]),))


def random_mask(shape, keep: float = 0.5, *, key) -> Operator:
  r"""Random inpainting: observe each pixel independently with probability ``keep``.

  .. math:: (A x)_j = x_{i_j},\qquad A^\top y = \sum_j y_j e_{i_j},

  over the observed indices :math:`i_1 < \dots < i_M` (at least one is kept).

  Args:
    shape: per-example image shape, e.g. ``(8, 8)``.
    keep: fraction of observed pixels, in ``(0, 1]``.
    key: PRNG key of the mask (typed key, raw key or int seed).

  Returns:
    An :class:`Operator` ``shape -> (M,)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import inverse
    >>> op = inverse.random_mask((4, 4), 0.5, key=0)
    >>> op(jnp.ones((2, 4, 4))).shape == (2, *op.out_shape)
    True

  References:
    Chung et al., "Diffusion Posterior Sampling for General Noisy Inverse Problems",
    arXiv:2209.14687 (Sec. 4, random inpainting).
  """
  shape = _shape("random_mask: shape", shape)
  keep = check_scalar("random_mask: keep", keep, lo=0.0, hi=1.0, lo_open=True)
  mask = np.asarray(jax.random.uniform(as_key(key), shape)) < keep
  if not mask.any():
    mask.flat[0] = True
  return _gather(f"random_mask(keep={keep:g})", shape, mask)


def box_mask(shape, top: int, left: int, height: int, width: int) -> Operator:
  r"""Box inpainting: observe every pixel outside a ``height x width`` box.

  .. math:: A x = (x_i)_{i \notin \text{box}},

  the box's top-left corner at ``(top, left)`` of the last two axes.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import inverse
    >>> inverse.box_mask((8, 8), 2, 2, 4, 4).out_shape
    (48,)

  References:
    Chung et al., arXiv:2209.14687 (Sec. 4, box inpainting).
  """
  shape = _shape("box_mask: shape", shape)
  if len(shape) < 2:
    raise ValueError(f"box_mask: shape must have at least 2 axes (H, W), got {shape}")
  h, w = shape[-2:]
  top = check_scalar("box_mask: top", top, lo=0, hi=h - 1, integer=True, static=True)
  left = check_scalar("box_mask: left", left, lo=0, hi=w - 1, integer=True, static=True)
  height = check_scalar("box_mask: height", height, lo=1, hi=h - top, integer=True, static=True)
  width = check_scalar("box_mask: width", width, lo=1, hi=w - left, integer=True, static=True)
  keep = np.ones(shape, bool)
  keep[..., top : top + height, left : left + width] = False
  if not keep.any():
    raise ValueError("box_mask: the box covers the whole image (nothing is observed)")
  return _gather(f"box_mask({height}x{width})", shape, keep)


def avg_pool(shape, factor: int = 2) -> Operator:
  r"""Super-resolution: ``factor x factor`` average pooling of the last two axes.

  .. math:: (A x)_{ij} = \frac{1}{f^2}\sum_{a,b<f} x_{fi+a,\,fj+b},\qquad
    A^\top y = \frac{1}{f^2}\, y \otimes \mathbf 1_{f\times f}.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import inverse
    >>> op = inverse.avg_pool((8, 8), 2)
    >>> op(jnp.ones((1, 8, 8))).shape, float(op.T(jnp.ones((1, 4, 4))).sum())
    ((1, 4, 4), 16.0)

  References:
    Chung et al., arXiv:2209.14687 (Sec. 4, super-resolution by average pooling).
  """
  shape = _shape("avg_pool: shape", shape)
  f = check_scalar("avg_pool: factor", factor, lo=1, integer=True, static=True)
  if len(shape) < 2 or shape[-2] % f or shape[-1] % f:
    raise ValueError(f"avg_pool: the last two axes of {shape} must be multiples of {f}")
  lead, (h, w) = shape[:-2], shape[-2:]

  def forward(x):
    return x.reshape(*lead, h // f, f, w // f, f).mean(axis=(-3, -1))

  def transpose(y):
    up = jnp.repeat(jnp.repeat(y, f, axis=-2), f, axis=-1)
    return up / (f * f)

  return Operator(f"avg_pool({f}x)", forward, transpose, shape, (*lead, h // f, w // f))


def gaussian_blur(shape, sigma: float = 1.0, size: int | None = None) -> Operator:
  r"""Gaussian blur: convolution with a normalised Gaussian kernel, zero padding, ``same`` size.

  .. math:: A x = k * x,\quad k_u \propto e^{-|u|^2 / 2\sigma^2},\ |u_i| \le r,\qquad
    A^\top y = \tilde k * y,\ \tilde k_u = k_{-u},

  on every axis of ``shape`` (1-D vectors and 2-D images alike); ``size = 2r + 1``
  (default the odd number nearest ``6 sigma``, at least 3). Any kernel size works with any
  image shape, including a kernel longer than some image axes (the zero padding is then
  all the kernel sees beyond them).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import inverse
    >>> op = inverse.gaussian_blur((8, 8), 1.0)
    >>> op(jnp.ones((1, 8, 8))).shape
    (1, 8, 8)

  References:
    Chung et al., arXiv:2209.14687 (Sec. 4, Gaussian deblurring).
  """
  shape = _shape("gaussian_blur: shape", shape)
  sigma = check_scalar("gaussian_blur: sigma", sigma, lo=0.0, lo_open=True)
  if size is None:
    size = max(3, 2 * round(3 * sigma) + 1)
  size = check_scalar("gaussian_blur: size", size, lo=1, integer=True, static=True)
  if size % 2 == 0:
    raise ValueError(f"gaussian_blur: size must be odd (a centred kernel), got {size}")
  u = np.arange(size) - size // 2
  k1 = np.exp(-0.5 * (u / sigma) ** 2)
  k1 /= k1.sum()
  kernel = k1
  for _ in shape[1:]:
    kernel = np.multiply.outer(kernel, k1)
  flipped = kernel[(slice(None, None, -1),) * kernel.ndim]
  # jax.scipy.signal.convolve needs one input no larger than the other along every axis.
  # Where the kernel is longer than some image axes but not all, those axes are padded with
  # zeros (the boundary convention) to the kernel's length and cropped back afterwards:
  # exact, since a centred odd kernel's "same" output at an original pixel only reads
  # zeros there. Other shapes take the plain call, as before.
  mixed = not (all(n >= size for n in shape) or all(n <= size for n in shape))
  pads = [(0, 0) if n >= size else ((size - n) // 2, size - n - (size - n) // 2) for n in shape]
  crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, shape))

  def conv(k):
    def apply(x):
      k_x = jnp.asarray(k, x.dtype)
      if not mixed:
        return convolve(x, k_x, mode="same")
      return convolve(jnp.pad(x, pads), k_x, mode="same")[crop]

    return apply

  return Operator(f"gaussian_blur(sigma={sigma:g})", conv(kernel), conv(flipped), shape, shape)


def matrix(a, in_shape=None) -> Operator:
  r"""A dense operator ``A x`` from an ``(M, D)`` matrix (e.g. a random projection).

  ``in_shape`` (default ``(D,)``) is the per-example shape, flattened before the product.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import inverse
    >>> op = inverse.matrix(jnp.array([[1.0, 1.0]]))
    >>> op(jnp.array([[2.0, 3.0]])), op.T(jnp.array([[1.0]]))
    (Array([[5.]], dtype=float32), Array([[1., 1.]], dtype=float32))
  """
  a = jnp.asarray(a)
  if a.ndim != 2 or 0 in a.shape or not jnp.issubdtype(a.dtype, jnp.floating):
    raise ValueError(f"matrix: a must be a non-empty floating (M, D) array, got {a.dtype}{a.shape}")
  in_shape = (a.shape[1],) if in_shape is None else _shape("matrix: in_shape", in_shape)
  if math.prod(in_shape) != a.shape[1]:
    raise ValueError(f"matrix: in_shape {in_shape} does not have D = {a.shape[1]} entries")

  def forward(x):
    return a.astype(x.dtype) @ x.reshape(-1)

  def transpose(y):
    return (a.T.astype(y.dtype) @ y).reshape(in_shape)

  return Operator(f"matrix({a.shape[0]}x{a.shape[1]})", forward, transpose, in_shape, (a.shape[0],))


def measure(op: Operator, x, noise_std=0.0, *, key=0) -> Array:
  r"""A noisy measurement ``y = A x + s n``, ``n ~ N(0, I)``.

  Args:
    op: the :class:`Operator`.
    x: clean batch ``(B, *op.in_shape)``.
    noise_std: ``s >= 0``.
    key: PRNG key of the noise.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import inverse
    >>> inverse.measure(inverse.avg_pool((4, 4)), jnp.ones((3, 4, 4)), 0.0).shape
    (3, 2, 2)
  """
  check_operator(op, "measure")
  s = check_scalar("measure: noise_std", noise_std, lo=0.0)
  y = op(x)
  if s == 0:
    return y
  return y + jnp.asarray(noise_std, y.dtype) * jax.random.normal(as_key(key), y.shape, y.dtype)


def check_operator(op, where: str) -> Operator:
  if not isinstance(op, Operator):
    raise TypeError(
      f"{where}: operator must be a jaxdiff.inverse.Operator (random_mask, box_mask, "
      f"avg_pool, gaussian_blur, matrix), got {type(op).__name__}"
    )
  return op


def residual_norm(r: Array) -> Array:
  """Per-example ``||r||`` over all non-batch axes."""
  return jnp.sqrt(jnp.sum(r.reshape(r.shape[0], -1) ** 2, axis=1))
