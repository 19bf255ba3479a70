"""AutoDiffusion's timestep search: the evolution of a ``num_steps``-step time grid."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._search._grid import numpy_rng, random_grid, repair, uniform
from jaxdiff._search._population import Genome, check_evolution, evolve, fitness_value
from jaxdiff._validation import check_output

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
      ``fitness(ts) -> (P,)`` for a ``(P, N + 1)`` population, e.g. a ``jax.vmap``): a
      real scalar (one real ``(P,)`` array), else an error naming ``fitness``; a
      non-finite value ranks last.
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
  args = num_steps, population, generations, top_k, mutation_prob, resolution, t_start, t_end
  num_steps, population, generations, top_k, mutation_prob, table = check_evolution(*args)
  resolution = table.resolution
  rng = numpy_rng(key)

  def score(pop: list[np.ndarray]) -> tuple[np.ndarray, int]:
    ts = np.stack([table.times(p) for p in pop])
    if batched:
      out = fitness(jnp.asarray(ts))
      name = "fitness(ts) (batched=True)"
      check_output(out, shape=(len(pop),), dtype="real", name=name, where="evolve_timesteps")
      vals = np.asarray(out, np.float64)
    else:
      name = "fitness(t)"
      vals = np.array(
        [fitness_value(fitness(jnp.asarray(t)), name, "evolve_timesteps") for t in ts]
      )
    return np.where(np.isfinite(vals), vals, np.inf), len(pop)

  def crossover(rng, a, b):
    """``N - 1`` of the two parents' pooled interior points."""
    pool = np.union1d(a[1:-1], b[1:-1])
    inner = rng.choice(pool, size=num_steps - 1, replace=False) if pool.size else pool
    return repair(rng, np.concatenate([[0], inner, [0]]), resolution, num_steps)

  def mutate(rng, parent):
    """Each interior point redrawn with probability ``mutation_prob``."""
    p = parent.copy()
    redraw = rng.random(num_steps + 1) < mutation_prob
    redraw[[0, -1]] = False
    p[redraw] = rng.integers(1, resolution, size=int(redraw.sum()))
    return repair(rng, p, resolution, num_steps)

  seeds = [uniform(resolution, num_steps)]
  for t in initial:
    t = np.asarray(t, np.float64)
    if t.shape != (num_steps + 1,):
      raise ValueError(f"initial grids must have shape ({num_steps + 1},), got {t.shape}")
    seeds.append(repair(rng, table.indices(t), resolution, num_steps))
  genome = Genome(lambda rng: random_grid(rng, resolution, num_steps), crossover, mutate)
  kw = dict(population=population, generations=generations, top_k=top_k, first="uniform grid")
  res = evolve(rng, genome, score, seeds, **kw)
  return SearchResult(table.times(res.best), res.fitness, res.history, res.evaluations)
