"""Spectral density estimation by stochastic Lanczos quadrature (SLQ)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optim._tree import PROBES
from optim._validation import as_key, check_choice, check_scalar, is_traced, renamed_kwargs
from optim.curvature._eigen import _lanczos_flat
from optim.curvature._operators import LinearOperator, check_operator

__all__ = ["SpectralDensity", "slq_density"]


class SpectralDensity(NamedTuple):
  """Result of :func:`slq_density`.

  Attributes:
    grid: ``(num_points,)`` eigenvalue axis.
    density: ``(num_points,)`` the broadened density on ``grid`` (integrates to about 1).
    nodes: ``(num_probes, m)`` Ritz values :math:`\\theta_i` of each probe's Lanczos run.
    weights: ``(num_probes, m)`` quadrature weights :math:`\\tau_i` (each row sums to 1);
      :math:`\\sum_i \\tau_i \\theta_i^k = v^\\top A^k v / v^\\top v` exactly for
      :math:`k \\le 2m - 1`, so ``dim * mean(sum(weights * nodes**k, -1))`` estimates
      :math:`\\mathrm{tr}(A^k)`.
    sigma: the Gaussian broadening width used.
  """

  grid: jax.Array
  density: jax.Array
  nodes: jax.Array
  weights: jax.Array
  sigma: jax.Array


@renamed_kwargs(kind="probe", num_iters="num_iterations")
def slq_density(
  op: LinearOperator,
  *,
  key: Any,
  num_iterations: int = 100,
  num_probes: int = 1,
  num_points: int = 1024,
  width_fraction: float = 0.01,
  grid: jax.Array | None = None,
  probe: str = "gaussian",
) -> SpectralDensity:
  """The eigenvalue density of a symmetric operator by stochastic Lanczos quadrature.

  For each random unit probe :math:`v_l`, ``m`` Lanczos steps give
  :math:`T_l = Y \\Theta Y^\\top`; the Gauss quadrature nodes :math:`\\theta_{li}` and
  weights :math:`\\tau_{li} = Y_{1i}^2` integrate the probe's spectral measure, and

  .. math::
    \\phi_\\sigma(t) = \\frac{1}{n_v} \\sum_{l=1}^{n_v} \\sum_{i=1}^{m} \\tau_{li}\\,
    \\frac{1}{\\sqrt{2\\pi}\\sigma} \\exp\\Big(-\\frac{(t - \\theta_{li})^2}{2\\sigma^2}\\Big)

  approximates :math:`\\frac{1}{P}\\sum_k \\delta(t - \\lambda_k)` convolved with a Gaussian
  (Lin, Saad & Yang, Eq. 3.14; Ghorbani et al., Sec. 2.2).

  **Width rule.** :math:`\\sigma = \\mathrm{width\\_fraction} \\times s` with
  :math:`s = \\max_{li}\\theta_{li} - \\min_{li}\\theta_{li}` over nodes of positive weight;
  when all nodes coincide at :math:`c` (e.g. a multiple of the identity) the range is 0
  and :math:`s = \\max(|c|, 1)` instead, so :math:`\\sigma > 0` always. The default grid
  spans the node range padded by :math:`5\\sigma` on each side.

  Args:
    op: a symmetric :class:`LinearOperator`.
    key: PRNG key for the probes (typed key, raw ``uint32`` key or int seed).
    num_iterations: Lanczos steps per probe :math:`m`, a static integer (>= 1; clipped to
      the operator's dimension; formerly ``num_iters``).
    num_probes: number of probes :math:`n_v`, a static integer (>= 1).
    num_points: size of the default grid, a static integer (>= 2).
    width_fraction: :math:`\\sigma` as a fraction of the spectral range (> 0).
    grid: optional explicit eigenvalue axis, used instead of the default one: a 1-D,
      non-empty, finite and strictly increasing array (checked when concrete; a traced
      grid is only checked for its shape, and a NaN point gives a NaN density there).
    probe: probe distribution, ``"gaussian"`` or ``"rademacher"`` (formerly ``kind``).

  Returns:
    A :class:`SpectralDensity` ``(grid, density, nodes, weights, sigma)``.

  Raises:
    ValueError: a count below its minimum, ``width_fraction <= 0``, an unknown ``probe``,
      an operator of dimension 0, or a bad ``grid`` (see above).
    TypeError: ``op`` is not a :class:`LinearOperator`, or a count is traced.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.curvature import LinearOperator, slq_density
    >>> d = jnp.linspace(0.0, 1.0, 50)
    >>> op = LinearOperator(lambda v: d * v, jax.ShapeDtypeStruct((50,), jnp.float32))
    >>> res = slq_density(op, key=jax.random.key(0), num_iterations=20, num_probes=4)
    >>> res.density.shape, bool(jnp.abs(jnp.trapezoid(res.density, res.grid) - 1) < 1e-2)
    ((1024,), True)

  References:
    Lin, Saad & Yang, "Approximating spectral densities of large matrices", SIAM Review
    58(1), 2016, arXiv:1308.5467. Ghorbani, Krishnan & Xiao, "An Investigation into
    Neural Net Optimization via Hessian Eigenvalue Density", arXiv:1901.10159. Yao et al.,
    "PyHessian", arXiv:1912.07145.
  """
  check_operator(op, "slq_density")
  num_iterations = check_scalar("num_iterations", num_iterations, lo=1, integer=True, static=True)
  num_probes = check_scalar("num_probes", num_probes, lo=1, integer=True, static=True)
  num_points = check_scalar("num_points", num_points, lo=2, integer=True, static=True)
  check_scalar("width_fraction", width_fraction, lo=0, lo_open=True)
  check_choice("probe", probe, PROBES)
  key = as_key(key)
  if op.dim == 0:
    raise ValueError("slq_density: op has dimension 0, so it has no spectrum to estimate")
  if grid is not None:
    grid = _check_grid(grid)
  m = min(num_iterations, op.dim)

  def one_probe(k):
    alphas, betas, _, _, _, _ = _lanczos_flat(op, k, m, probe, None)
    t = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
    nodes, vecs = jnp.linalg.eigh(t)
    return nodes, jnp.square(vecs[0, :])

  nodes, weights = jax.lax.map(one_probe, jax.random.split(key, num_probes))
  dtype = nodes.dtype
  live = weights > 0
  hi = jnp.max(jnp.where(live, nodes, -jnp.inf))
  lo = jnp.min(jnp.where(live, nodes, jnp.inf))
  spread = hi - lo
  spread = jnp.where(spread > 0, spread, jnp.maximum(jnp.abs(hi), 1))
  sigma = (width_fraction * spread).astype(dtype)
  if grid is None:
    grid = jnp.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points, dtype=dtype)
  else:
    grid = grid.astype(dtype)
  z = (grid[:, None] - nodes.reshape(-1)[None, :]) / sigma
  kernel = jnp.exp(-0.5 * z * z) / (jnp.sqrt(2 * jnp.pi) * sigma)
  density = kernel @ weights.reshape(-1) / num_probes
  return SpectralDensity(grid, density, nodes, weights, sigma)


def _check_grid(grid) -> jax.Array:
  try:
    grid = jnp.asarray(grid)
  except TypeError as err:
    raise TypeError(f"slq_density: grid must be a 1-D array, got {type(grid).__name__}") from err
  if not jnp.issubdtype(grid.dtype, jnp.integer) and not jnp.issubdtype(grid.dtype, jnp.floating):
    raise TypeError(f"slq_density: grid must be a real array, got dtype {grid.dtype}")
  if grid.ndim != 1 or grid.size == 0:
    raise ValueError(f"slq_density: grid must be 1-D and non-empty, got shape {grid.shape}")
  if not is_traced(grid):
    if not bool(jnp.all(jnp.isfinite(grid))):
      raise ValueError("slq_density: grid must be finite")
    steps = jnp.diff(grid)
    if bool(jnp.any(steps <= 0)):
      i = int(jnp.argmax(steps <= 0))
      raise ValueError(
        f"slq_density: grid must be strictly increasing; grid[{i + 1}] = {float(grid[i + 1])} "
        f"follows grid[{i}] = {float(grid[i])}"
      )
  return grid
