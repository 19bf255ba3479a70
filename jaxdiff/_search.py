"""Timestep search: AutoDiffusion's evolutionary search over sampling grids.

The result is an ordinary array of times: ``jaxdiff.timesteps_from(schedule, result.t)``
builds the grid, which can be saved (``numpy.save``) and reused with any solver.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._validation import as_key, check_scalar

Array = jax.Array


class SearchResult(NamedTuple):
  """What :func:`evolve_timesteps` returns.

  Attributes:
    t: the best grid found, ``(num_steps + 1,)`` times, noise decreasing (NumPy float64).
    fitness: its fitness (lower is better).
    history: best fitness after each generation, ``(generations + 1,)`` (entry 0: the
      initial population, which contains the uniform grid).
    evaluations: how many candidate grids were scored in all.
  """

  t: np.ndarray
  fitness: float
  history: np.ndarray
  evaluations: int


def _uniform(resolution: int, num_steps: int) -> np.ndarray:
  return np.round(np.linspace(resolution, 0, num_steps + 1)).astype(np.int64)


def _random_grid(rng, resolution: int, num_steps: int) -> np.ndarray:
  inner = rng.choice(np.arange(1, resolution), size=num_steps - 1, replace=False)
  return np.concatenate([[resolution], np.sort(inner)[::-1], [0]])


def _repair(rng, idx: np.ndarray, resolution: int, num_steps: int) -> np.ndarray:
  """Distinct interior indices, sorted decreasing; duplicates are redrawn."""
  inner = set(int(v) for v in idx[1:-1] if 0 < v < resolution)
  while len(inner) < num_steps - 1:
    inner.add(int(rng.integers(1, resolution)))
  return np.concatenate([[resolution], sorted(inner, reverse=True), [0]])


def evolve_timesteps(
  fitness: Callable[[Array], Array],
  t_start: float,
  t_end: float,
  num_steps: int,
  *,
  key,
  population: int = 16,
  generations: int = 8,
  top_k: int = 4,
  mutation_prob: float = 0.25,
  resolution: int = 1000,
  batched: bool = False,
  initial=(),
) -> SearchResult:
  r"""AutoDiffusion's evolutionary search for a ``num_steps``-step time grid.

  Candidates are grids :math:`t_0 = t_{\text{start}} > t_1 > \dots > t_N = t_{\text{end}}`
  whose interior points lie on a table of ``resolution`` equal steps (the 1000 training
  steps in the paper). The initial population is the uniform grid plus random ones; each
  generation keeps the ``top_k`` fittest (lower is better) and fills the population with
  half crossovers (the interior points of two parents pooled and ``N - 1`` of them drawn)
  and half mutations (each interior point of a parent redrawn with probability
  ``mutation_prob``), as in AutoDiffusion's Alg. 1. The fitness is the user's: e.g. the
  error against :func:`jaxdiff.testing.probability_flow_reference` or the sliced
  Wasserstein distance to true samples (see the README's study), or a Fréchet distance.

  Args:
    fitness: ``fitness(t) -> scalar`` for one ``(N + 1,)`` grid of times (``batched=True``:
      ``fitness(ts) -> (P,)`` for a ``(P, N + 1)`` population, e.g. a ``jax.vmap``).
    t_start, t_end: the fixed first and last times (schedule units, ``t_start > t_end``).
    num_steps: ``N >= 1`` steps of the searched grid.
    key: PRNG key (typed key, raw key or int seed) for the evolution.
    population: candidates per generation (>= 2).
    generations: evolution rounds (>= 1; the search budget is
      ``population + generations * (population - top_k)`` fitness evaluations).
    top_k: parents kept per generation (in ``[1, population)``).
    mutation_prob: per-point redraw probability in ``(0, 1]``.
    resolution: points of the table the interior times lie on (``> num_steps``).
    batched: whether ``fitness`` scores a whole population in one call.
    initial: grids (``(N + 1,)`` times each) to seed the population with next to the
      uniform one, e.g. a log-SNR grid; snapped to the table.

  Returns:
    A :class:`SearchResult`; ``jaxdiff.timesteps_from(schedule, result.t)`` is the grid.

  Raises:
    ValueError: a zero budget (``population`` < 2 or ``generations`` < 1), a table too
      coarse for ``num_steps``, ``t_start <= t_end`` or a non-finite fitness of the
      uniform grid.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import search
    >>> # Toy fitness: prefer grids whose first step is small.
    >>> res = search.evolve_timesteps(lambda t: t[0] - t[1], 1.0, 0.0, 4, key=0,
    ...                               population=6, generations=2, top_k=2)
    >>> res.t.shape, bool(res.fitness <= 0.25), res.evaluations
    ((5,), True, 14)

  References:
    Li et al., "AutoDiffusion: Training-Free Optimization of Time Steps and Architectures
    for Automated Diffusion Model Acceleration", ICCV 2023, arXiv:2309.10438 (Sec. 3.3,
    Alg. 1).
  """
  if not callable(fitness):
    raise TypeError(f"fitness must be callable fitness(t) -> scalar, got {type(fitness).__name__}")
  num_steps = check_scalar("num_steps", num_steps, lo=1, integer=True, static=True)
  population = check_scalar("population", population, lo=0, integer=True, static=True)
  generations = check_scalar("generations", generations, lo=0, integer=True, static=True)
  if population < 2 or generations < 1:
    raise ValueError(
      "the search budget must be positive: population >= 2 and generations >= 1, got "
      f"population={population}, generations={generations}"
    )
  top_k = check_scalar("top_k", top_k, lo=1, hi=population - 1, integer=True, static=True)
  mutation_prob = check_scalar("mutation_prob", mutation_prob, lo=0.0, lo_open=True, hi=1.0)
  resolution = check_scalar("resolution", resolution, lo=1, integer=True, static=True)
  if resolution <= num_steps:
    raise ValueError(f"resolution must exceed num_steps = {num_steps}, got {resolution}")
  t_start = check_scalar("t_start", t_start, static=True)
  t_end = check_scalar("t_end", t_end, static=True)
  if not t_start > t_end:
    raise ValueError(f"t_start must exceed t_end (noise decreasing), got {t_start} <= {t_end}")
  seed = np.asarray(jax.random.key_data(as_key(key))).astype(np.uint64).sum()
  rng = np.random.default_rng(int(seed))
  to_t = lambda idx: t_end + (t_start - t_end) * np.asarray(idx, np.float64) / resolution

  def score(pop: list[np.ndarray]) -> np.ndarray:
    ts = np.stack([to_t(p) for p in pop])
    if batched:
      vals = np.asarray(fitness(jnp.asarray(ts)), np.float64).reshape(len(pop))
    else:
      vals = np.array([float(fitness(jnp.asarray(t))) for t in ts])
    return np.where(np.isfinite(vals), vals, np.inf)

  pop = [_uniform(resolution, num_steps)]
  for t in initial:
    t = np.asarray(t, np.float64)
    if t.shape != (num_steps + 1,):
      raise ValueError(f"initial grids must have shape ({num_steps + 1},), got {t.shape}")
    idx = np.round((t - t_end) / (t_start - t_end) * resolution).astype(np.int64)
    pop.append(_repair(rng, idx, resolution, num_steps))
  pop = pop[:population]
  pop += [_random_grid(rng, resolution, num_steps) for _ in range(population - len(pop))]
  fit = score(pop)
  if not np.isfinite(fit[0]):
    raise ValueError("fitness of the uniform grid is not finite; check the fitness function")
  evaluations = len(pop)
  history = [float(fit.min())]
  for _ in range(generations):
    order = np.argsort(fit, kind="stable")[:top_k]
    parents, parent_fit = [pop[i] for i in order], fit[order]
    children = []
    n_cross = (population - top_k) // 2
    for _ in range(n_cross):
      a, b = rng.choice(top_k, size=2, replace=top_k < 2)
      pool = np.union1d(parents[a][1:-1], parents[b][1:-1])
      inner = rng.choice(pool, size=num_steps - 1, replace=False) if pool.size else pool
      children.append(_repair(rng, np.concatenate([[0], inner, [0]]), resolution, num_steps))
    while len(children) < population - top_k:
      p = parents[rng.integers(top_k)].copy()
      redraw = rng.random(num_steps + 1) < mutation_prob
      redraw[[0, -1]] = False
      p[redraw] = rng.integers(1, resolution, size=int(redraw.sum()))
      children.append(_repair(rng, p, resolution, num_steps))
    child_fit = score(children)
    evaluations += len(children)
    pop, fit = parents + children, np.concatenate([parent_fit, child_fit])
    history.append(float(fit.min()))
  best = int(np.argmin(fit))
  return SearchResult(to_t(pop[best]), float(fit[best]), np.asarray(history), evaluations)
