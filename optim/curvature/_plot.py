"""A matplotlib helper for spectral densities (matplotlib is imported on first use)."""

from __future__ import annotations

from typing import Any

import numpy as np

from optim._validation import check_scalar, import_extra
from optim.curvature._slq import SpectralDensity

__all__ = ["plot_density"]


def plot_density(
  density: SpectralDensity,
  ax: Any = None,
  *,
  floor: float | None = None,
  label: str | None = None,
  **plot_kwargs: Any,
) -> Any:
  """Plots an SLQ eigenvalue density on a logarithmic density axis.

  The density of a neural-network Hessian spans many decades (a tall bulk near zero and
  thin outliers), so the y axis is logarithmic; values below ``floor`` are clipped to it
  so that the Gaussian tails do not stretch the axis to ``1e-300``.

  Args:
    density: a :class:`SpectralDensity` from :func:`slq_density`.
    ax: a matplotlib ``Axes``; a new figure is made when ``None``.
    floor: smallest density shown; default ``1e-8 * max(density)``.
    label: legend label.
    **plot_kwargs: forwarded to ``ax.semilogy``.

  Returns:
    The ``Axes``.

  Raises:
    TypeError: ``density`` is not a :class:`SpectralDensity`, or ``ax`` is not an
      ``Axes``.
    ValueError: a ``floor`` that is not finite and positive (the axis is logarithmic), or
      non-finite density values (a NaN from the operator would be left out of the plot
      silently).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.curvature import LinearOperator, plot_density, slq_density
    >>> d = jnp.linspace(0.0, 1.0, 20)
    >>> op = LinearOperator(lambda v: d * v, jax.ShapeDtypeStruct((20,), jnp.float32))
    >>> ax = plot_density(slq_density(op, key=jax.random.key(0), num_iterations=10))
    >>> ax.get_yscale()
    'log'

  References:
    Ghorbani, Krishnan & Xiao, "An Investigation into Neural Net Optimization via Hessian
    Eigenvalue Density", arXiv:1901.10159 (Fig. 1 style).
  """
  plt = import_extra("matplotlib.pyplot", caller="optim.curvature.plot_density")

  if not isinstance(density, SpectralDensity):
    raise TypeError(
      f"plot_density: density must be a SpectralDensity (from slq_density), got "
      f"{type(density).__name__}"
    )
  if ax is not None and not hasattr(ax, "semilogy"):
    raise TypeError(f"plot_density: ax must be a matplotlib Axes, got {type(ax).__name__}")
  grid = np.asarray(density.grid, np.float64)
  values = np.asarray(density.density, np.float64)
  if not (np.all(np.isfinite(values)) and np.all(np.isfinite(grid))):
    raise ValueError(
      "plot_density: density has non-finite values (grid or density); the operator "
      "probably produced NaN/inf"
    )
  if floor is None:
    peak = float(np.max(values)) if values.size else 1.0
    floor = 1e-8 * peak if peak > 0 else 1e-300
  else:
    check_scalar("floor", floor, lo=0.0, lo_open=True)
  if ax is None:
    _, ax = plt.subplots(figsize=(6, 4))
  ax.semilogy(grid, np.maximum(values, floor), label=label, **plot_kwargs)
  ax.set_xlabel("eigenvalue")
  ax.set_ylabel("density (log scale)")
  ax.set_ylim(bottom=floor)
  if label is not None:
    ax.legend()
  return ax
