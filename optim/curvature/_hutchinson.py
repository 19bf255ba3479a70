"""Stochastic trace and diagonal estimators for linear operators on pytrees."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax.tree_utils as otu
from jax.flatten_util import ravel_pytree

from optim._tree import PROBES, tree_probe, tree_vdot
from optim._validation import as_key, check_choice, check_scalar, renamed_kwargs
from optim.curvature._operators import LinearOperator, check_operator

PyTree = Any

__all__ = ["DiagEstimate", "TraceEstimate", "hutchinson_diag", "hutchinson_trace"]

VARIANTS = ("hutchinson", "hutch++")


def _stderr(samples: jax.Array) -> jax.Array:
  """Standard error of the mean along axis 0; ``inf`` when one sample cannot estimate it."""
  m = samples.shape[0]
  if m < 2:
    return jnp.full(samples.shape[1:], jnp.inf, samples.dtype)
  return jnp.std(samples, axis=0, ddof=1) / jnp.sqrt(jnp.asarray(m, samples.dtype))


class TraceEstimate(NamedTuple):
  """Result of :func:`hutchinson_trace`.

  Attributes:
    trace: the estimate of :math:`\\mathrm{tr}(A)`.
    stderr: its standard error (sample standard deviation of the per-probe estimates over
      :math:`\\sqrt{m}`); ``inf`` with a single probe. For Hutch++ it is the standard error
      of the stochastic (residual) part, conditional on the sketch.
    per_leaf: a pytree with the structure of the operator's domain whose leaves are the
      traces of the diagonal blocks :math:`\\mathrm{tr}(A_{\\ell\\ell})` (layer-wise traces;
      they sum to ``trace``); ``None`` for Hutch++.
    per_leaf_stderr: standard errors of ``per_leaf``; ``None`` for Hutch++.
  """

  trace: jax.Array
  stderr: jax.Array
  per_leaf: PyTree | None
  per_leaf_stderr: PyTree | None


class DiagEstimate(NamedTuple):
  """Result of :func:`hutchinson_diag`.

  Attributes:
    diag: the estimate of :math:`\\mathrm{diag}(A)`, shaped like the operator's domain.
    stderr: the per-entry standard error of the mean of :math:`z \\odot Az` over probes
      (exact for Rademacher probes, the usual large-sample approximation for Gaussian);
      ``inf`` with a single probe.
  """

  diag: PyTree
  stderr: PyTree


@renamed_kwargs(kind="probe", method="variant")
def hutchinson_trace(
  op: LinearOperator,
  *,
  key: Any,
  num_probes: int = 100,
  probe: str = "rademacher",
  variant: str = "hutchinson",
) -> TraceEstimate:
  """Hutchinson (or Hutch++) estimate of the trace of a linear operator, with its error.

  .. math::
    \\widehat{\\mathrm{tr}}(A) = \\frac{1}{m} \\sum_{i=1}^{m} z_i^\\top A z_i, \\qquad
    \\mathbb{E}[z z^\\top] = I,

  with Rademacher (variance :math:`2\\sum_{i \\ne j} A_{ij}^2` per probe) or Gaussian
  probes (variance :math:`2\\|A\\|_F^2`). The per-leaf sums
  :math:`z_\\ell^\\top (Az)_\\ell` estimate the traces of the diagonal blocks from the same
  probes. ``variant="hutch++"`` spends :math:`m/3` products on a sketch
  :math:`Q = \\mathrm{orth}(AS)`, computes :math:`\\mathrm{tr}(Q^\\top A Q)` exactly and runs
  Hutchinson on :math:`(I - QQ^\\top) A (I - QQ^\\top)` with the rest, which needs
  :math:`O(1/\\epsilon)` instead of :math:`O(1/\\epsilon^2)` products for relative error
  :math:`\\epsilon` on PSD matrices (Meyer et al., Alg. 1).

  Args:
    op: a :class:`LinearOperator` (symmetric).
    key: PRNG key for the probes (typed key, raw ``uint32`` key or int seed).
    num_probes: total number of operator products :math:`m`, a static integer (>= 1;
      >= 3 for Hutch++).
    probe: probe distribution, ``"rademacher"`` or ``"gaussian"`` (formerly ``kind``).
    variant: ``"hutchinson"`` or ``"hutch++"`` (formerly ``method``).

  Returns:
    A :class:`TraceEstimate` ``(trace, stderr, per_leaf, per_leaf_stderr)``.

  Raises:
    ValueError: ``num_probes`` too small, unknown ``probe`` or ``variant``.
    TypeError: ``op`` is not a :class:`LinearOperator`, or ``num_probes`` is traced.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.curvature import LinearOperator, hutchinson_trace
    >>> d = jnp.arange(1.0, 5.0)
    >>> op = LinearOperator(lambda v: d * v, jax.ShapeDtypeStruct((4,), jnp.float32))
    >>> est = hutchinson_trace(op, key=jax.random.key(0), num_probes=10)
    >>> float(est.trace), float(est.stderr)  # Rademacher is exact on a diagonal operator
    (10.0, 0.0)

  References:
    Hutchinson, "A stochastic estimator of the trace of the influence matrix for
    Laplacian smoothing splines", 1989. Meyer, Musco, Musco & Woodruff, "Hutch++: Optimal
    Stochastic Trace Estimation", arXiv:2010.09649.
  """
  check_operator(op, "hutchinson_trace")
  check_choice("probe", probe, PROBES)
  check_choice("variant", variant, VARIANTS)
  num_probes = check_scalar("num_probes", num_probes, lo=1, integer=True, static=True)
  key = as_key(key)
  if variant == "hutch++":
    if num_probes < 3:
      raise ValueError(
        f"num_probes must be >= 3 for variant='hutch++' (a third each for the sketch, its "
        f"product and the residual probes), got {num_probes}"
      )
    return _hutchpp(op, key, num_probes, probe)

  def one_probe(k):
    z = tree_probe(k, op.like, probe)
    az = op(z)
    per_leaf = jax.tree.map(lambda a, b: tree_vdot(a, b), z, az)
    return per_leaf

  per_leaf_samples = jax.lax.map(one_probe, jax.random.split(key, num_probes))
  samples = sum(jax.tree.leaves(per_leaf_samples))
  return TraceEstimate(
    trace=jnp.mean(samples),
    stderr=_stderr(samples),
    per_leaf=jax.tree.map(lambda s: jnp.mean(s, axis=0), per_leaf_samples),
    per_leaf_stderr=jax.tree.map(_stderr, per_leaf_samples),
  )


def _hutchpp(op: LinearOperator, key: jax.Array, num_probes: int, probe: str) -> TraceEstimate:
  # QR needs the probes as columns of one matrix, hence the raveling to flat vectors.
  flat_like, unravel = ravel_pytree(otu.tree_zeros_like(op.like))
  dim = flat_like.shape[0]
  sketch = min(num_probes // 3, dim)
  rest = num_probes - 2 * sketch
  ks, kg = jax.random.split(key)
  matvec = lambda x: ravel_pytree(op(unravel(x)))[0]

  def draw(k, n):
    keys = jax.random.split(k, n)
    return jax.vmap(lambda kk: ravel_pytree(tree_probe(kk, op.like, probe))[0])(keys)

  s = draw(ks, sketch)  # (sketch, dim)
  y = jax.lax.map(matvec, s)
  q, _ = jnp.linalg.qr(y.T)  # (dim, sketch), orthonormal columns
  aq = jax.lax.map(matvec, q.T)  # (sketch, dim)
  exact = jnp.sum(q.T * aq)
  g = draw(kg, rest)
  g_perp = g - (g @ q) @ q.T
  samples = jax.vmap(jnp.vdot)(g_perp, jax.lax.map(matvec, g_perp))
  return TraceEstimate(
    trace=exact + jnp.mean(samples), stderr=_stderr(samples), per_leaf=None, per_leaf_stderr=None
  )


@renamed_kwargs(kind="probe")
def hutchinson_diag(
  op: LinearOperator,
  *,
  key: Any,
  num_probes: int = 100,
  probe: str = "rademacher",
) -> DiagEstimate:
  """Stochastic estimate of the diagonal of a linear operator.

  .. math::
    \\widehat{\\mathrm{diag}}(A) = \\Big(\\sum_{i=1}^m z_i \\odot A z_i\\Big) \\oslash
    \\Big(\\sum_{i=1}^m z_i \\odot z_i\\Big)

  (Bekas et al., Eq. 3). With Rademacher probes the denominator is exactly :math:`m` and
  a diagonal operator is recovered exactly from a single probe. Sums are accumulated in
  a ``lax.scan`` (memory of one probe at a time) in at least float32; the result has the
  domain's dtypes.

  Args:
    op: a :class:`LinearOperator`.
    key: PRNG key for the probes (typed key, raw ``uint32`` key or int seed).
    num_probes: number of probes :math:`m`, a static integer (>= 1).
    probe: probe distribution, ``"rademacher"`` or ``"gaussian"`` (formerly ``kind``).

  Returns:
    A :class:`DiagEstimate` ``(diag, stderr)``, both shaped like the domain.

  Raises:
    ValueError: ``num_probes < 1`` or an unknown ``probe``.
    TypeError: ``op`` is not a :class:`LinearOperator`, or ``num_probes`` is traced.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.curvature import LinearOperator, hutchinson_diag
    >>> d = jnp.arange(1.0, 5.0)
    >>> op = LinearOperator(lambda v: d * v, jax.ShapeDtypeStruct((4,), jnp.float32))
    >>> hutchinson_diag(op, key=jax.random.key(0), num_probes=1).diag
    Array([1., 2., 3., 4.], dtype=float32)

  References:
    Bekas, Kokiopoulou & Saad, "An estimator for the diagonal of a matrix", Applied
    Numerical Mathematics 57, 2007. Yao et al., "AdaHessian", arXiv:2006.00719.
  """
  check_operator(op, "hutchinson_diag")
  check_choice("probe", probe, PROBES)
  num_probes = check_scalar("num_probes", num_probes, lo=1, integer=True, static=True)
  key = as_key(key)
  wide = lambda x: jnp.promote_types(x.dtype, jnp.float32)

  def body(carry, k):
    s, s2, zz = carry
    z = tree_probe(k, op.like, probe)
    az = op(z)
    z, az = otu.tree_cast_like(z, s), otu.tree_cast_like(az, s)
    za = otu.tree_mul(z, az)
    s = otu.tree_add(s, za)
    s2 = otu.tree_add(s2, otu.tree_mul(za, za))
    zz = otu.tree_add(zz, otu.tree_mul(z, z))
    return (s, s2, zz), None

  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, wide(x)), op.like)
  (s, s2, zz), _ = jax.lax.scan(body, (zeros, zeros, zeros), jax.random.split(key, num_probes))
  m = num_probes

  def stderr(s_, s2_, like):
    if m < 2:
      return jnp.full(like.shape, jnp.inf, like.dtype)
    var = jnp.maximum(s2_ - s_ * s_ / m, 0.0) / (m - 1)
    return jnp.sqrt(var / m).astype(like.dtype)

  return DiagEstimate(
    diag=otu.tree_cast_like(otu.tree_div(s, zz), op.like),
    stderr=jax.tree.map(stderr, s, s2, op.like),
  )
