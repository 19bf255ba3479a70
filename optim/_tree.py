"""Small pytree helpers shared by the optimizers and the curvature toolkit.

Everything here is a pure function over pytrees of arrays; validation helpers raise
at trace time with messages that name the offending structure.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def is_key(x) -> bool:
  """True for a typed PRNG key array (``jax.random.key``)."""
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def keys_to_data(tree: PyTree) -> PyTree:
  """Typed PRNG keys -> their raw key data, so a checkpointer (orbax) can store the tree."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)


def data_to_keys(stored: PyTree, like: PyTree) -> PyTree:
  """Inverse of :func:`keys_to_data`: re-wraps key data where ``like`` holds typed keys."""
  return jax.tree.map(
    lambda s, l: jax.random.wrap_key_data(s, impl=jax.random.key_impl(l)) if is_key(l) else s,
    stored,
    like,
  )


def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
  """Sum over leaves of ``<a_i, b_i>``, accumulated in at least float32."""
  leaves = [
    jnp.vdot(
      x.astype(jnp.promote_types(x.dtype, jnp.float32)),
      y.astype(jnp.promote_types(y.dtype, jnp.float32)),
    )
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  ]
  return sum(leaves, start=jnp.zeros((), leaves[0].dtype if leaves else jnp.float32))


# Threefry-2x32 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011):
# 20 rounds in five groups of four, the key schedule injected after each group.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k1, k2, x1, x2):
  """The Threefry-2x32 hash of the counters ``(x1, x2)``, unrolled.

  XLA:CPU gets JAX's own lowering as a rolled ``while`` loop whose every trip copies the
  whole state arrays; unrolled, the 20 rounds are one elementwise fusion. Integer
  arithmetic only, so the bits equal JAX's.
  """
  ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(0x1BD11BDA))
  x1, x2 = x1 + ks[0], x2 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x1 = x1 + x2
      x2 = x1 ^ ((x2 << jnp.uint32(r)) | (x2 >> jnp.uint32(32 - r)))
    x1, x2 = x1 + ks[(i + 1) % 3], x2 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
  return x1, x2


def _fast_threefry(key) -> bool:
  """Whether :func:`random_bits` reproduces ``jax.random.bits`` for ``key`` bit for bit: one
  typed threefry key under JAX's (default) partitionable counter layout."""
  return (
    is_key(key)
    and key.shape == ()
    and str(jax.random.key_impl(key)) == "threefry2x32"
    and bool(jax.config.jax_threefry_partitionable)
  )


def random_bits(key: jax.Array, n: int, width: int = 32) -> jax.Array:
  """``jax.random.bits(key, (n,), uint32 | uint64)``, bit for bit, with an unrolled threefry.

  Falls back to ``jax.random.bits`` for keys of other PRNG implementations.
  """
  dtype = jnp.uint32 if width == 32 else jnp.uint64
  if not _fast_threefry(key):
    return jax.random.bits(key, (n,), dtype)
  k = jax.random.key_data(key)
  # The counter of entry i is the uint64 i, as two uint32 halves (JAX's iota_2x32_shape).
  lo = jax.lax.iota(jnp.uint32, n)
  hi = jnp.zeros((n,), jnp.uint32)
  if n > 2**32:
    hi = (jax.lax.iota(jnp.uint64, n) >> 32).astype(jnp.uint32)
  b1, b2 = _threefry2x32(k[0], k[1], hi, lo)
  if width == 32:
    return b1 ^ b2
  return (b1.astype(jnp.uint64) << jnp.uint64(32)) | b2.astype(jnp.uint64)


def random_normal(key: jax.Array, n: int, dtype: Any = jnp.float32) -> jax.Array:
  """``jax.random.normal(key, (n,), dtype)``, bit for bit, for float32 and float64.

  JAX's recipe on :func:`random_bits`: mantissa bits -> uniform on
  ``[nextafter(-1, 0), 1)`` -> ``sqrt(2) * erfinv(u)``.
  """
  dtype = jnp.dtype(dtype)
  if dtype not in (jnp.float32, jnp.float64) or not _fast_threefry(key):
    return jax.random.normal(key, (n,), dtype)
  finfo = jnp.finfo(dtype)
  bits = random_bits(key, n, finfo.bits)
  uint = bits.dtype
  one = np.array(1.0, dtype).view(uint)
  floats = jax.lax.bitcast_convert_type(
    (bits >> np.array(finfo.bits - finfo.nmant, uint)) | one, dtype
  ) - np.array(1.0, dtype)
  lo = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype))
  u = jnp.maximum(lo, floats * (np.array(1.0, dtype) - lo) + lo)
  return np.array(np.sqrt(2), dtype) * jax.lax.erf_inv(u)


# The probe distributions of tree_probe (the ``probe=`` choices of the curvature estimators).
PROBES = ("rademacher", "gaussian")


def tree_probe(
  key: jax.Array, like: PyTree, probe: Literal["rademacher", "gaussian"] = "rademacher"
) -> PyTree:
  """A random probe with the structure, shapes and dtypes of ``like``.

  Rademacher entries are +-1 with equal probability; Gaussian entries are standard normal
  (drawn in at least float32, then cast to each leaf's dtype).

  Two choices keep probes cheap, since Hutchinson-type methods draw one per step:

  * one flat draw for the whole pytree, split into leaves afterwards: each ``jax.random``
    call compiles its own threefry kernel, so a per-leaf draw compiled several times slower
    on deep models;
  * Rademacher signs are unpacked 32 per random ``uint32`` word (every bit of a threefry
    word is a fair, independent coin). ``jax.random.rademacher`` spends one word per sign,
    which on CPU made a 10M-parameter probe cost more than a gradient (490 ms vs 16 ms).

  Both are why this is not ``optax.tree_utils.tree_random_like``, which draws leaf by leaf
  with ``jax.random`` samplers.

  Args:
    key: PRNG key.
    like: pytree whose leaves give shapes and dtypes (arrays or ``ShapeDtypeStruct``).
    probe: ``"rademacher"`` or ``"gaussian"``.

  Returns:
    A pytree like ``like`` with random entries.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> z = tree_probe(jax.random.key(0), {"w": jnp.zeros((3, 2))})
    >>> bool(jnp.all(jnp.abs(z["w"]) == 1))
    True
  """
  leaves, treedef = jax.tree.flatten(like)
  shapes = [tuple(jnp.shape(x)) for x in leaves]
  dtypes = [jnp.result_type(x) for x in leaves]
  sizes = [math.prod(shape) for shape in shapes]
  total = sum(sizes)
  wide = jnp.result_type(jnp.float32, *dtypes)
  if probe == "rademacher":
    words = random_bits(key, -(-total // 32))
    bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
    flat = 2 * bits.reshape(-1)[:total].astype(wide) - 1
  elif probe == "gaussian":
    flat = random_normal(key, total, wide)
  else:
    raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
  out, start = [], 0
  for shape, dtype, n in zip(shapes, dtypes, sizes):
    out.append(flat[start : start + n].reshape(shape).astype(dtype))
    start += n
  return jax.tree.unflatten(treedef, out)
