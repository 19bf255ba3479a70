"""The Jacobian of a denoiser at a point, matrix-free: its eigen-analysis by Lanczos on
``jvp`` / ``vjp`` products (``optim.curvature``), never a dense Jacobian."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff._validation import as_key, check_choice, check_scalar
from optim.curvature import LinearOperator, lanczos, tridiagonal

Array = jax.Array

__all__ = ["JacobianSpectrum", "denoiser_jacobian", "jacobian_asymmetry", "jacobian_spectrum"]

VARIANTS = ("symmetric", "gram")


class JacobianSpectrum(NamedTuple):
  """What :func:`jacobian_spectrum` returns: Ritz pairs of the Jacobian operator.

  Attributes:
    eigenvalues: ``(m,)`` Ritz values, decreasing (``"gram"``: squared singular values).
    eigenvectors: ``(m, *x.shape)`` unit Ritz vectors, in the order of ``eigenvalues``.
    residuals: ``(m,)`` :math:`\\lVert A v - \\theta v\\rVert` of each pair (a converged pair
      has a small one; :math:`|\\theta - \\lambda| \\le` residual for some eigenvalue
      :math:`\\lambda`). Pairs past a breakdown (the Krylov space became invariant after
      ``n_iters < m`` steps) carry no vector: residual ``inf``, eigenvalue 0, listed last.
    n_iters: int32, Lanczos steps taken before the Krylov space became invariant (``m``
      otherwise).
    converged: bool, whether the run found an invariant Krylov space (then every listed
      Ritz value is an eigenvalue).
  """

  eigenvalues: Array
  eigenvectors: Array
  residuals: Array
  n_iters: Array
  converged: Array


def _point_fn(denoise: Callable, x: Array, t, cond) -> Callable[[Array], Array]:
  if not callable(denoise):
    raise TypeError(f"denoise must be callable denoise(x, t, cond), got {type(denoise).__name__}")
  if not hasattr(x, "shape") or not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise TypeError(f"x must be a floating array (one input, no batch axis), got {x!r}")
  if jnp.size(x) == 0:
    raise ValueError(f"x must be non-empty, got shape {jnp.shape(x)}")
  t = jnp.asarray(t)
  if t.size != 1:
    raise ValueError(f"t must be a scalar (the time of the one point x), got shape {t.shape}")
  tb = jnp.reshape(t, (1,))
  x = jnp.asarray(x)

  def f(v):
    out = denoise(v[None], tb.astype(jnp.result_type(tb, float)), cond)
    if jnp.shape(out) != (1, *x.shape):
      raise ValueError(
        f"denoise must return one prediction of x's shape, (1, *{x.shape}), got {jnp.shape(out)}"
      )
    return out[0].astype(x.dtype)

  return f


def denoiser_jacobian(denoise, x, t, cond=None, *, variant: str = "symmetric") -> LinearOperator:
  r"""The Jacobian :math:`J = \partial D(x, t, c)/\partial x` of a denoiser at one point, as a
  symmetric matrix-free operator (:class:`optim.curvature.LinearOperator`).

  .. math::
    \texttt{"symmetric"}:\ v \mapsto \tfrac12(J + J^\top)v,\qquad
    \texttt{"gram"}:\ v \mapsto J^\top J v,

  from one linearisation of :math:`D` at :math:`x` (``jax.linearize``: the ``jvp``) and its
  transpose (the ``vjp``); the dense :math:`P \times P` Jacobian is never formed. The
  Jacobian of the ideal (MMSE) denoiser is symmetric positive semi-definite,
  :math:`J = (\alpha/\sigma^2)\,\mathrm{Cov}[x_0 \mid x_t]`, and a trained one is nearly so
  (Kadkhodaie et al.): ``"symmetric"`` takes its symmetric part, whose eigenvalues are the
  shrinkage factors of the adaptive basis; ``"gram"`` gives the squared singular values and
  the right singular vectors, exact for any :math:`J`. How far :math:`J` is from symmetric:
  :func:`jacobian_asymmetry`. Its trace (the effective dimensionality,
  :math:`\mathrm{tr}\,J`) is ``optim.curvature.hutchinson_trace`` of the ``"symmetric"``
  operator.

  Args:
    denoise: ``denoise(x, t, cond) -> x0_hat``, batch first.
    x: one input, **without** the batch axis (the denoiser is called on ``x[None]``).
    t: its time, a scalar.
    cond: the condition of a batch of one (e.g. ``jnp.array([label])``), or ``None``.
    variant: ``"symmetric"`` (default) or ``"gram"``.

  Returns:
    A :class:`optim.curvature.LinearOperator` on arrays of ``x``'s shape and dtype; build
    it inside the function you ``jit`` (it closes over the linearisation).

  Raises:
    TypeError: ``denoise`` not callable, ``x`` not a floating array.
    ValueError: ``t`` not a scalar, an unknown ``variant``, a denoiser whose output is not
      one prediction of ``x``'s shape.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff.metrics import denoiser_jacobian
    >>> w = jnp.array([[2.0, 1.0], [0.0, 1.0]])
    >>> op = denoiser_jacobian(lambda x, t, c: x @ w.T, jnp.zeros(2), 0.5)
    >>> op(jnp.array([1.0, 0.0]))  # (W + W^T) / 2 e_1
    Array([2. , 0.5], dtype=float32)

  References:
    Kadkhodaie, Guth, Simoncelli & Mallat, "Generalization in diffusion models arises from
    geometry-adaptive harmonic representations", ICLR 2024, arXiv:2310.02557 (Sec. 3,
    the Jacobian eigendecomposition of a denoiser).
  """
  check_choice("variant", variant, VARIANTS)
  f = _point_fn(denoise, x, t, cond)
  x = jnp.asarray(x)
  _, jvp = jax.linearize(f, x)
  vjp = jax.linear_transpose(jvp, x)
  if variant == "symmetric":
    matvec = lambda v: 0.5 * (jvp(v) + vjp(v)[0])  # noqa: E731
  else:
    matvec = lambda v: vjp(jvp(v))[0]  # noqa: E731
  return LinearOperator(matvec, jax.ShapeDtypeStruct(x.shape, x.dtype))


def jacobian_spectrum(
  denoise,
  x,
  t,
  cond=None,
  *,
  key: Any,
  num_iterations: int,
  variant: str = "symmetric",
) -> JacobianSpectrum:
  r"""Leading eigenpairs of a denoiser's Jacobian at one point, by Lanczos on ``jvp``/``vjp``.

  Runs :func:`optim.curvature.lanczos` (full reorthogonalisation, ``num_iterations``
  steps :math:`m`) on :func:`denoiser_jacobian`'s operator :math:`A` and returns its Ritz
  pairs: with :math:`A V_m = V_m T_m + \beta_m q_{m+1} e_m^\top` and
  :math:`T_m = S\,\mathrm{diag}(\theta)\,S^\top`,

  .. math::
    \theta_i,\quad v_i = V_m s_i,\quad r_i = \lVert A v_i - \theta_i v_i\rVert,

  sorted by decreasing :math:`\theta`. The extreme eigenvalues converge first (a handful of
  steps suffice for the top of the shrinkage spectrum); with :math:`m = P` (the input's
  size) the pairs are all of :math:`A`'s. Cost: :math:`m` products for the run and
  :math:`m` for the residuals, two network passes each (``"symmetric"``: a ``jvp`` and a
  ``vjp``; ``"gram"``: both), and an :math:`m \times P` basis in memory.

  For Kadkhodaie et al.'s analysis: with ``"symmetric"`` the eigenvalues are the shrinkage
  factors :math:`\lambda_k \in [0, 1]` of :math:`D(y) \approx \sum_k \lambda_k
  \langle e_k, y\rangle e_k` and the eigenvectors the geometry-adaptive harmonic basis;
  the spectrum's decay across noise levels is the shrinkage spectrum.

  Args:
    denoise, x, t, cond, variant: as :func:`denoiser_jacobian`.
    key: PRNG key of Lanczos's start vector (typed key, raw key or int seed).
    num_iterations: :math:`m`, a static int in ``[1, x.size]``.

  Returns:
    A :class:`JacobianSpectrum` ``(eigenvalues, eigenvectors, residuals, n_iters,
    converged)``.

  Raises:
    As :func:`denoiser_jacobian` and :func:`optim.curvature.lanczos` (``num_iterations``
    outside ``[1, x.size]`` or traced).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff.metrics import jacobian_spectrum
    >>> shrink = jnp.array([0.9, 0.5, 0.1])  # a linear denoiser: J = diag(shrink)
    >>> spec = jacobian_spectrum(lambda x, t, c: x * shrink, jnp.ones(3), 0.3, key=0,
    ...                          num_iterations=3)
    >>> [round(float(v), 4) for v in spec.eigenvalues]
    [0.9, 0.5, 0.1]

  References:
    Kadkhodaie, Guth, Simoncelli & Mallat, "Generalization in diffusion models arises from
    geometry-adaptive harmonic representations", ICLR 2024, arXiv:2310.02557 (Sec. 3:
    eigenvalues and eigenvectors of the Jacobian). Golub & Van Loan, "Matrix
    Computations", 4th ed., Sec. 10.1 (Ritz pairs).
  """
  op = denoiser_jacobian(denoise, x, t, cond, variant=variant)
  num_iterations = check_scalar("num_iterations", num_iterations, lo=1, integer=True, static=True)
  run = lanczos(op, key=as_key(key), num_iterations=num_iterations)
  theta, s = jnp.linalg.eigh(tridiagonal(run))
  basis = run.basis.reshape(num_iterations, -1)
  vecs = s.T.astype(basis.dtype) @ basis  # (m, P) Ritz vectors
  norms = jnp.linalg.norm(vecs, axis=1)
  real = norms > 0.5  # unit vectors; zero past a breakdown
  vecs = vecs / jnp.where(real, norms, 1)[:, None]
  shape = jnp.shape(x)
  products = jax.lax.map(lambda v: op(v.reshape(shape)).reshape(-1), vecs)
  theta = theta.astype(products.dtype)
  res = jnp.linalg.norm(products - theta[:, None] * vecs, axis=1)
  order = jnp.argsort(jnp.where(real, -theta, jnp.inf), stable=True)
  return JacobianSpectrum(
    jnp.where(real, theta, 0)[order],
    vecs[order].reshape(num_iterations, *shape),
    jnp.where(real, res, jnp.inf)[order],
    run.n_iters,
    run.converged,
  )


def jacobian_asymmetry(denoise, x, t, cond=None, *, key: Any, num_probes: int = 16) -> Array:
  r"""How far a denoiser's Jacobian is from symmetric: a Hutchinson estimate of

  .. math::
    a(J) = \frac{\lVert J - J^\top\rVert_F}{2\,\lVert J\rVert_F}
      \approx \sqrt{\frac{\sum_i \lVert (J - J^\top) v_i\rVert^2}{4\sum_i \lVert J v_i\rVert^2}},
    \qquad v_i \sim \mathcal N(0, I),

  0 for a symmetric Jacobian (every MMSE denoiser's), 1 for an antisymmetric one; each
  probe costs a ``jvp`` and a ``vjp``. A zero Jacobian gives 0.

  Args:
    denoise, x, t, cond: as :func:`denoiser_jacobian`.
    key: PRNG key of the Gaussian probes.
    num_probes: number of probes (a static int >= 1).

  Returns:
    A scalar, the estimate of :math:`a(J)` in ``[0, 1]`` (up to the probes' noise).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff.metrics import jacobian_asymmetry
    >>> w = jnp.array([[1.0, 2.0], [-2.0, 1.0]])  # I + an antisymmetric part
    >>> a = jacobian_asymmetry(lambda x, t, c: x @ w.T, jnp.zeros(2), 0.5, key=0)
    >>> round(float(a), 3)  # ||W - W^T|| / (2 ||W||) = 4 sqrt(2) / (2 sqrt(10))
    0.894

  References:
    Kadkhodaie et al., arXiv:2310.02557 (Sec. 3: the Jacobian of a trained denoiser is
    nearly symmetric). Hutchinson, "A stochastic estimator of the trace of the influence
    matrix", 1989.
  """
  num_probes = check_scalar("num_probes", num_probes, lo=1, integer=True, static=True)
  f = _point_fn(denoise, x, t, cond)
  x = jnp.asarray(x)
  _, jvp = jax.linearize(f, x)
  vjp = jax.linear_transpose(jvp, x)
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  probes = jax.random.normal(as_key(key), (num_probes, *x.shape), dtype).astype(x.dtype)

  def one(v):
    jv, jtv = jvp(v), vjp(v)[0]
    wide = lambda a: jnp.sum(a.astype(dtype) ** 2)  # noqa: E731
    return wide(jv - jtv), wide(jv)

  anti, full = jax.lax.map(one, probes)
  den = 4 * jnp.sum(full)
  return jnp.where(den > 0, jnp.sqrt(jnp.sum(anti) / jnp.where(den > 0, den, 1)), 0)
