"""AutoDiffusion's evolutionary population loop, once for every genome it evolves.

:func:`jaxdiff.search.evolve_timesteps` evolves grids of table indices;
:func:`jaxdiff.search.evolve_skips` evolves (grid, block mask) pairs. Both are this loop
(Li et al., AutoDiffusion, Alg. 1) with their own :class:`Genome`: seed the population,
fill it with random candidates, then each generation keep the ``top_k`` fittest (lower is
better) and breed ``population - top_k`` children, half by crossover of two parents and
the rest by mutation of one, repaired before they are scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxdiff._search._grid import Table
from jaxdiff._validation import check_output, check_scalar


class Genome(NamedTuple):
  """How a search draws and breeds its candidates; each callable takes the search's
  generator first, and the loop calls them in a fixed order (so a key fixes the result).

  Attributes:
    sample: ``sample(rng) -> candidate``, a random candidate.
    crossover: ``crossover(rng, a, b) -> child`` of two parents.
    mutate: ``mutate(rng, parent) -> child``.
    repair: ``repair(rng, child) -> child``, applied to every child once the generation's
      children are all drawn (``None``: none). A repair whose draws go with each child's own
      (the grid's, :func:`~jaxdiff._search._grid.repair`) belongs to ``crossover``/``mutate``.
  """

  sample: Callable[[np.random.Generator], Any]
  crossover: Callable[[np.random.Generator, Any, Any], Any]
  mutate: Callable[[np.random.Generator, Any], Any]
  repair: Callable[[np.random.Generator, Any], Any] | None = None


class Evolved(NamedTuple):
  """What :func:`evolve` returns: the best candidate, its fitness, the best fitness after
  the initial population and after each generation, and the evaluations made."""

  best: Any
  fitness: float
  history: np.ndarray
  evaluations: int


def fitness_value(out, name: str, where: str) -> float:
  """A fitness call's value as a float: a real scalar (a Python number, a NumPy scalar or a
  0-d array), else an error naming the fitness (never a conversion error from inside).
  Non-finite values pass: the searches rank them last (documented in each)."""
  check_output(
    out,
    scalar=True,
    dtype="real",
    name=name,
    where=where,
    hint="lower is better: one number per candidate",
  )
  return float(out)


def check_evolution(num_steps, population, generations, top_k, mutation_prob, resolution, t0, t1):
  """Validates the arguments the evolutionary searches share.

  Returns:
    ``(num_steps, population, generations, top_k, mutation_prob, table)`` with the
    :class:`~jaxdiff._search._grid.Table` of ``resolution`` steps from ``t0`` down to ``t1``.
  """
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
  t0 = check_scalar("t_start", t0, static=True)
  t1 = check_scalar("t_end", t1, static=True)
  if not t0 > t1:
    raise ValueError(f"t_start must exceed t_end (noise decreasing), got {t0} <= {t1}")
  return num_steps, population, generations, top_k, mutation_prob, Table(t0, t1, resolution)


def evolve(
  rng: np.random.Generator,
  genome: Genome,
  score: Callable[[list], tuple[np.ndarray, int]],
  seeds: Sequence,
  *,
  population: int,
  generations: int,
  top_k: int,
  first: str,
) -> Evolved:
  """The evolution: ``seeds[:population]`` filled up with ``genome.sample``, then
  ``generations`` rounds of selection and breeding.

  Args:
    rng: the search's generator (:func:`~jaxdiff._search._grid.numpy_rng`).
    genome: how candidates are drawn and bred.
    score: ``score(candidates) -> (fitness, evaluations)``: the ``(P,)`` float fitness
      (non-finite as ``inf``) and how many fitness calls it made (a cache may make fewer).
    seeds: the first candidates, in order (the first must have a finite fitness).
    population, generations, top_k: validated by :func:`check_evolution`.
    first: what the first seed is, for the error its non-finite fitness raises.

  Parents survive each generation (the ``top_k`` of the stable sort), so the history never
  increases. The draws: a crossover takes its two parents (``rng.choice(top_k, 2)``,
  distinct when ``top_k >= 2``) then its own; a mutation takes its parent
  (``rng.integers(top_k)``) then its own; the repairs come after every child is drawn.
  """
  pop = list(seeds)[:population]
  while len(pop) < population:
    pop.append(genome.sample(rng))
  fit, evaluations = score(pop)
  if not np.isfinite(fit[0]):
    raise ValueError(f"fitness of the {first} is not finite; check the fitness function")
  history = [float(fit.min())]
  for _ in range(generations):
    order = np.argsort(fit, kind="stable")[:top_k]
    parents, parent_fit = [pop[i] for i in order], fit[order]
    children = []
    for _ in range((population - top_k) // 2):
      a, b = rng.choice(top_k, size=2, replace=top_k < 2)
      children.append(genome.crossover(rng, parents[a], parents[b]))
    while len(children) < population - top_k:
      children.append(genome.mutate(rng, parents[int(rng.integers(top_k))]))
    if genome.repair is not None:
      children = [genome.repair(rng, child) for child in children]
    child_fit, made = score(children)
    evaluations += made
    pop, fit = parents + children, np.concatenate([parent_fit, child_fit])
    history.append(float(fit.min()))
  best = int(np.argmin(fit))
  return Evolved(pop[best], float(fit[best]), np.asarray(history), evaluations)
