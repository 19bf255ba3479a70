"""The time table every search's candidates live on: grids of ``N + 1`` integer indices on
``resolution`` equal steps from ``t_end`` (index 0) to ``t_start`` (index ``resolution``),
noise decreasing, and the host-side generator that draws them (candidates are NumPy data).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from jaxdiff._validation import as_key


class Table(NamedTuple):
  """``resolution`` equal steps between ``t_end`` (index 0) and ``t_start``."""

  t_start: float
  t_end: float
  resolution: int

  def times(self, idx) -> np.ndarray:
    """The float64 times of table indices."""
    return self.t_end + (self.t_start - self.t_end) * np.asarray(idx, np.float64) / self.resolution

  def indices(self, t) -> np.ndarray:
    """Times snapped to the nearest table indices (int64; not yet :func:`repair`-ed)."""
    t = np.asarray(t, np.float64)
    return np.round((t - self.t_end) / (self.t_start - self.t_end) * self.resolution).astype(
      np.int64
    )


def numpy_rng(key) -> np.random.Generator:
  """The host-side generator of a search, seeded by the key's data."""
  return np.random.default_rng(int(np.asarray(jax.random.key_data(as_key(key))).sum()))


def uniform(resolution: int, num_steps: int) -> np.ndarray:
  """The uniform grid's indices."""
  return np.round(np.linspace(resolution, 0, num_steps + 1)).astype(np.int64)


def random_grid(rng, resolution: int, num_steps: int) -> np.ndarray:
  """``num_steps - 1`` distinct random interior indices, sorted decreasing, between the ends."""
  inner = rng.choice(np.arange(1, resolution), size=num_steps - 1, replace=False)
  return np.concatenate([[resolution], np.sort(inner)[::-1], [0]])


def repair(rng, idx: np.ndarray, resolution: int, num_steps: int) -> np.ndarray:
  """Distinct interior indices, sorted decreasing; duplicates are redrawn."""
  inner = set(int(v) for v in idx[1:-1] if 0 < v < resolution)
  while len(inner) < num_steps - 1:
    inner.add(int(rng.integers(1, resolution)))
  return np.concatenate([[resolution], sorted(inner, reverse=True), [0]])
