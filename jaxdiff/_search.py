"""Sampling-schedule search: AutoDiffusion's timestep and block-skipping evolution, S³'s
solver search.

Results are plain data: an array of times (``jaxdiff.timesteps_from(schedule, t)`` builds
the grid); for S³, a tuple of per-step :class:`~jaxdiff.solvers.StepChoice` that
:func:`jaxdiff.solvers.usf` turns into a solver (:class:`SolverSchedule`); for block
skipping, per-step bool block masks that :func:`skip_blocks` applies to a network
(:class:`SkipSchedule`). Both schedules round-trip through JSON.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff._schedules import Grid, timesteps_from
from jaxdiff._solvers._usf import DERIVATIVES, PREDICTIONS, USF, StepChoice, usf, usf_steps
from jaxdiff._validation import as_key, check_choice, check_flag, check_scalar, is_traced

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


def _numpy_rng(key) -> np.random.Generator:
  """The host-side generator of a search (its candidates are NumPy data)."""
  return np.random.default_rng(int(np.asarray(jax.random.key_data(as_key(key))).sum()))


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


def _evolution(num_steps, population, generations, top_k, mutation_prob, resolution, t0, t1):
  """Validates the arguments the evolutionary searches share; returns them, then ``to_t``
  (table indices to times)."""
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
  to_t = lambda idx: t1 + (t0 - t1) * np.asarray(idx, np.float64) / resolution
  return num_steps, population, generations, top_k, mutation_prob, resolution, t0, t1, to_t


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
  args = num_steps, population, generations, top_k, mutation_prob, resolution, t_start, t_end
  num_steps, population, generations, top_k, mutation_prob, resolution, *rest = _evolution(*args)
  t_start, t_end, to_t = rest
  rng = _numpy_rng(key)

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


# --------------------------------------------------------------------------------------
# S³: predictor-based search over USF solver schedules


class SolverSchedule(NamedTuple):
  """A searched solver schedule: per-step decisions and the grid's times (plain data).

  Attributes:
    steps: one :class:`~jaxdiff.solvers.StepChoice` per step.
    t: the ``(len(steps) + 1,)`` network times, noise decreasing (NumPy float64).
  """

  steps: tuple[StepChoice, ...]
  t: np.ndarray

  def solver(self) -> USF:
    """The :func:`jaxdiff.solvers.usf` solver of ``steps``."""
    return usf(self.steps)

  def grid(self, schedule) -> Grid:
    """``jaxdiff.timesteps_from(schedule, t)``."""
    return timesteps_from(schedule, self.t)

  def to_json(self) -> str:
    """A JSON text that :meth:`from_json` reads back exactly (times as float64 reprs)."""
    steps = [s._asdict() for s in self.steps]
    return json.dumps({"steps": steps, "t": [float(v) for v in self.t]})

  @classmethod
  def from_json(cls, text: str) -> SolverSchedule:
    """The schedule :meth:`to_json` wrote (validated as :func:`~jaxdiff.solvers.usf` does)."""
    data = json.loads(text)
    steps = usf([StepChoice(**s) for s in data["steps"]]).steps
    t = np.asarray(data["t"], np.float64)
    if t.shape != (len(steps) + 1,):
      raise ValueError(f"t must have {len(steps) + 1} times for {len(steps)} steps, got {t.shape}")
    return cls(steps, t)


class S3Result(NamedTuple):
  """What :func:`s3_search` returns.

  Attributes:
    schedule: the best :class:`SolverSchedule` truly evaluated.
    fitness: its fitness (lower is better).
    history: best true fitness after the initial evaluations and after each round.
    evaluations: true fitness evaluations made (``<= budget``).
    predictor_corr: Spearman rank correlation of the predictor's scores with the true
      fitness of the candidates it chose in the last round (NaN when no round ran or it
      chose fewer than 3).
  """

  schedule: SolverSchedule
  fitness: float
  history: np.ndarray
  evaluations: int
  predictor_corr: float


def _choice_set(name: str, values, check) -> tuple:
  values = tuple(values)
  if not values:
    raise ValueError(f"{name} must hold at least one choice, got an empty set")
  return tuple(check(name, v) for v in values)


class _Space(NamedTuple):
  orders: tuple
  predictions: tuple
  derivatives: tuple
  correctors: tuple
  nfe: int
  resolution: int


def _random_steps(rng, sp: _Space) -> tuple[StepChoice, ...]:
  out = []
  for i in range(sp.nfe):
    order = min(int(rng.choice(sp.orders)), i + 1)  # warm-up steps cannot reach high orders
    pick = lambda v: v[int(rng.integers(len(v)))]
    corr = pick(sp.correctors) and i < sp.nfe - 1
    out.append(StepChoice(order, pick(sp.predictions), pick(sp.derivatives), corr))
  return tuple(out)


def _random_times(rng, sp: _Space) -> np.ndarray:
  """A power grid ``u^gamma`` (log-uniform gamma in [0.5, 3]: uniform-t to log-SNR-like)."""
  gamma = math.exp(rng.uniform(math.log(0.5), math.log(3.0)))
  u = np.linspace(1.0, 0.0, sp.nfe + 1) ** gamma
  return _repair(rng, np.round(u * sp.resolution).astype(np.int64), sp.resolution, sp.nfe)


def _mutate(rng, steps, idx, sp: _Space):
  """Each step's decisions redrawn with probability 1/N + 0.1; each time point jittered."""
  fresh = _random_steps(rng, sp)
  p = 1.0 / sp.nfe + 0.1
  steps = tuple(f if rng.random() < p else s for s, f in zip(steps, fresh))
  idx = idx.copy()
  jitter = rng.random(sp.nfe + 1) < 0.5
  jitter[[0, -1]] = False
  scale = max(1.0, sp.resolution / (4.0 * sp.nfe))
  idx[jitter] += np.round(rng.normal(0.0, scale, int(jitter.sum()))).astype(np.int64)
  idx = np.clip(idx, 1, sp.resolution - 1)
  idx[0], idx[-1] = sp.resolution, 0
  return steps, _repair(rng, np.sort(idx)[::-1], sp.resolution, sp.nfe)


def _features(steps, idx, resolution: int) -> np.ndarray:
  """One-hot order, prediction, derivative, corrector per step, and the interior times."""
  f = []
  for s in steps:
    f += [s.order == 1, s.order == 2, s.order == 3, s.prediction == "eps"]
    f += [s.derivative == "unipc", s.corrector]
  return np.concatenate([np.asarray(f, np.float32), idx[1:-1] / resolution]).astype(np.float32)


def _mlp(params, x):
  for w, b in params[:-1]:
    x = jax.nn.gelu(x @ w + b)
  w, b = params[-1]
  return (x @ w + b)[..., 0]


@functools.partial(jax.jit, static_argnums=0)
def _predict(hidden: int, key, x, y, weight, pool):
  """Trains the MLP predictor on ``(x, y)`` (rows of weight 0 are padding); scores ``pool``.

  Full-batch AdamW (lr 1e-2, 400 steps) on the weighted squared error; one compilation
  per (budget, candidates, features) shape.
  """
  sizes = (x.shape[1], hidden, hidden, 1)
  keys = jax.random.split(key, len(sizes) - 1)
  params = [
    (jax.random.normal(k, (a, b)) / math.sqrt(a), jnp.zeros((b,)))
    for k, a, b in zip(keys, sizes[:-1], sizes[1:])
  ]
  tx = optax.adamw(1e-2, weight_decay=1e-3)

  def loss(p):
    return jnp.sum(weight * jnp.square(_mlp(p, x) - y)) / jnp.sum(weight)

  def body(carry, _):
    p, s = carry
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return (optax.apply_updates(p, u), s), None

  (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=400)
  return _mlp(params, pool)


def _spearman(a, b) -> float:
  if len(a) < 3:
    return float("nan")
  ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
  c = np.corrcoef(ra, rb)[0, 1]
  return float(c) if np.isfinite(c) else float("nan")


def s3_search(
  fitness: Callable[[SolverSchedule], float],
  t_start: float,
  t_end: float,
  nfe: int,
  *,
  key,
  budget: int = 32,
  rounds: int = 4,
  candidates: int = 1024,
  orders: Sequence[int] = (1, 2, 3),
  predictions: Sequence[str] = PREDICTIONS,
  derivatives: Sequence[str] = DERIVATIVES,
  correctors: Sequence[bool] = (False, True),
  resolution: int = 1000,
  hidden: int = 64,
  initial: Sequence[SolverSchedule] = (),
) -> S3Result:
  r"""S³: predictor-based search for the best USF solver schedule at a given NFE.

  A candidate is a :class:`SolverSchedule`: ``nfe`` per-step decisions (order, prediction,
  derivative estimate, UniC corrector; see :class:`~jaxdiff.solvers.USF`) and a grid
  :math:`t_0 = t_{\text{start}} > \dots > t_{\text{nfe}} = t_{\text{end}}` on a table of
  ``resolution`` equal steps. UniC costs no evaluation, so every candidate makes exactly
  ``nfe`` network evaluations. The search (Liu et al., Sec. 5):

  1. evaluates ``ceil(budget / 2)`` candidates truly: the ``initial`` ones, the
     DPM-Solver++(2M) and UniPC schedules on the uniform grid (where the choice sets allow
     them), then random ones (random decisions, power grids :math:`u^\gamma`);
  2. for each of ``rounds`` rounds: trains a light predictor (a 2-hidden-layer MLP of width
     ``hidden`` on one-hot decisions and normalized times, regressing the standardized
     log-fitness) on every evaluation so far; proposes ``candidates`` schedules (mutations
     of the 8 best evaluated and random ones); truly evaluates the ones the predictor
     ranks best, its share of the remaining budget;
  3. returns the best truly evaluated schedule.

  Args:
    fitness: ``fitness(schedule) -> float``, lower is better (e.g. the error against
      :func:`jaxdiff.testing.probability_flow_reference`, a sliced Wasserstein distance or
      a Fréchet distance). Jit it on ``(schedule.solver(), schedule.grid(...))``: the
      :class:`~jaxdiff.solvers.USF` decisions are array leaves, so every candidate reuses
      one compilation.
    t_start, t_end: the fixed first and last times (``t_start > t_end``).
    nfe: network evaluations (= steps) per sample, ``1 <= nfe < resolution``.
    key: PRNG key (typed key, raw key or int seed).
    budget: true fitness evaluations in all (>= 1; with 1, only the first candidate).
    rounds: predictor rounds (>= 1) sharing the second half of the budget.
    candidates: schedules the predictor scores per round.
    orders, predictions, derivatives, correctors: the non-empty choice sets per step
      (orders above ``i + 1`` are clipped to ``i + 1`` at step ``i``; the last step never
      gets a corrector).
    resolution: points of the time table.
    hidden: the predictor's width.
    initial: schedules to evaluate first (each with ``nfe`` steps).

  Returns:
    An :class:`S3Result`.

  Raises:
    ValueError: a zero budget, an empty choice set, an ``nfe`` the table cannot meet
      (``nfe >= resolution``), ``t_start <= t_end`` or an ``initial`` schedule of another
      length.

  Example:
    >>> import numpy as np
    >>> from jaxdiff import search
    >>> # Toy fitness: prefers order 2 wherever it is allowed, and a small first step.
    >>> miss = lambda s: sum(c.order != min(2, i + 1) for i, c in enumerate(s.steps))
    >>> fit = lambda s: miss(s) + s.t[0] - s.t[1]
    >>> res = search.s3_search(fit, 1.0, 0.0, 3, key=0, budget=12, rounds=2, candidates=64)
    >>> res.evaluations, [c.order for c in res.schedule.steps]
    (12, [1, 2, 2])
    >>> again = search.SolverSchedule.from_json(res.schedule.to_json())
    >>> again.steps == res.schedule.steps and bool(np.all(again.t == res.schedule.t))
    True

  References:
    Liu et al., "A Unified Sampling Framework for Solver Searching of Diffusion
    Probabilistic Models", ICLR 2024, arXiv:2312.07243 (Sec. 5, "S³").
  """
  if not callable(fitness):
    raise TypeError(f"fitness must be callable fitness(schedule) -> float, got {fitness!r}")
  budget = check_scalar("budget", budget, lo=0, integer=True, static=True)
  if budget == 0:
    raise ValueError("budget must be >= 1 true fitness evaluations, got 0")
  rounds = check_scalar("rounds", rounds, lo=1, integer=True, static=True)
  candidates = check_scalar("candidates", candidates, lo=1, integer=True, static=True)
  hidden = check_scalar("hidden", hidden, lo=1, integer=True, static=True)
  resolution = check_scalar("resolution", resolution, lo=2, integer=True, static=True)
  nfe = check_scalar("nfe", nfe, lo=1, integer=True, static=True)
  if nfe >= resolution:
    raise ValueError(
      f"nfe = {nfe} steps need distinct times on the table of resolution {resolution}; "
      f"use nfe < resolution"
    )
  t_start = check_scalar("t_start", t_start, static=True)
  t_end = check_scalar("t_end", t_end, static=True)
  if not t_start > t_end:
    raise ValueError(f"t_start must exceed t_end (noise decreasing), got {t_start} <= {t_end}")
  check_order = lambda n, v: check_scalar(n, v, lo=1, hi=3, integer=True, static=True)
  sp = _Space(
    _choice_set("orders", orders, check_order),
    _choice_set("predictions", predictions, lambda n, v: check_choice(n, v, PREDICTIONS)),
    _choice_set("derivatives", derivatives, lambda n, v: check_choice(n, v, DERIVATIVES)),
    _choice_set("correctors", correctors, check_flag),
    nfe,
    resolution,
  )
  rng = _numpy_rng(key)
  to_t = lambda idx: t_end + (t_start - t_end) * np.asarray(idx, np.float64) / resolution
  to_idx = lambda t: np.round((np.asarray(t, np.float64) - t_end) / (t_start - t_end) * resolution)

  seen: dict = {}
  evaluated: list = []  # (steps, idx, fitness)

  def evaluate(steps, idx) -> float:
    val = float(fitness(SolverSchedule(steps, to_t(idx))))
    val = val if math.isfinite(val) else math.inf
    evaluated.append((steps, idx, val))
    seen[(steps, tuple(idx))] = val
    return val

  seeds = []
  for s in initial:
    steps = usf(s.steps).steps
    if len(steps) != nfe or np.shape(s.t) != (nfe + 1,):
      raise ValueError(f"initial schedules must have nfe = {nfe} steps, got {len(steps)}")
    seeds.append((steps, _repair(rng, to_idx(s.t).astype(np.int64), resolution, nfe)))
  for like in ("dpmpp_2m", "unipc"):
    steps = usf_steps(like, nfe)
    if all(_allowed(i, c, sp) for i, c in enumerate(steps)):
      seeds.append((steps, _uniform(resolution, nfe)))
  n_init = min(budget, max(1, math.ceil(budget / 2)))
  while len(seeds) < n_init:
    seeds.append((_random_steps(rng, sp), _random_times(rng, sp)))
  for steps, idx in seeds[:n_init]:
    if (steps, tuple(idx)) not in seen:
      evaluate(steps, idx)
  history = [min(v for *_, v in evaluated)]

  corr = float("nan")
  width = len(_features(*seeds[0], resolution))
  pkey = as_key(int(rng.integers(2**31)))
  for r in range(rounds):
    left = budget - len(evaluated)
    if left <= 0:
      break
    take = math.ceil(left / (rounds - r))
    vals = np.asarray([v for *_, v in evaluated])
    finite = np.isfinite(vals)
    if not finite.any():
      raise ValueError("every evaluated schedule has a non-finite fitness; check fitness")
    logs = np.log(np.maximum(vals, 1e-30))
    worst = logs[finite].max() + 1.0
    logs = np.where(finite, logs, worst)
    y = (logs - logs.mean()) / (logs.std() + 1e-8)
    x = np.zeros((budget, width), np.float32)
    w = np.zeros((budget,), np.float32)
    yy = np.zeros((budget,), np.float32)
    x[: len(evaluated)] = [_features(s, i, resolution) for s, i, _ in evaluated]
    w[: len(evaluated)], yy[: len(evaluated)] = 1.0, y
    best = [evaluated[j] for j in np.argsort(vals, kind="stable")[:8]]
    pool, keys = [], set(seen)
    for j in range(candidates):
      if j % 4 == 3:
        cand = (_random_steps(rng, sp), _random_times(rng, sp))
      else:
        s, i, _ = best[int(rng.integers(len(best)))]
        cand = _mutate(rng, s, i, sp)
      k = (cand[0], tuple(cand[1]))
      if k not in keys:
        keys.add(k)
        pool.append(cand)
    if not pool:
      continue
    feats = np.zeros((candidates, width), np.float32)
    feats[: len(pool)] = [_features(*c, resolution) for c in pool]
    pkey, k_round = jax.random.split(pkey)
    scores = np.asarray(_predict(hidden, k_round, x, yy, w, feats))[: len(pool)]
    chosen = np.argsort(scores, kind="stable")[:take]
    true = [evaluate(*pool[j]) for j in chosen]
    corr = _spearman(scores[chosen], np.asarray(true))
    history.append(min(v for *_, v in evaluated))
  j = int(np.argmin([v for *_, v in evaluated]))
  steps, idx, val = evaluated[j]
  return S3Result(SolverSchedule(steps, to_t(idx)), val, np.asarray(history), len(evaluated), corr)


def _allowed(i: int, c: StepChoice, sp: _Space) -> bool:
  return (
    c.order in {min(o, i + 1) for o in sp.orders}
    and c.prediction in sp.predictions
    and c.derivative in sp.derivatives
    and c.corrector in sp.correctors
  )


# ---------------------------------------------------------------------------------------
# AutoDiffusion stage 2: block skipping per step, searched with the timesteps

_NET_PROTOCOL = ("encode", "blocks", "readout")


def _check_net(net) -> int:
  """The number of blocks of a network with ``encode``/``blocks``/``readout``."""
  if not all(hasattr(net, name) for name in _NET_PROTOCOL) or not callable(net.encode):
    raise TypeError(
      "skip_blocks: net must expose encode(x, t, cond) -> (h, c, aux), blocks (each "
      "block(h, c, perturb) -> h) and readout(h, c, aux, x), e.g. models.DigitDenoiser; got "
      f"{type(net).__name__}"
    )
  return len(net.blocks)


def _check_masks(mask, t, depth: int):
  """Validates concrete ``(N, depth)`` bool masks and ``(N + 1,)`` times; traced: shapes only."""
  mask, t = jnp.asarray(mask) if is_traced(mask) else np.asarray(mask), t
  t = jnp.asarray(t) if is_traced(t) else np.asarray(t, np.float64)
  if mask.ndim != 2 or mask.shape[1] != depth:
    raise ValueError(
      f"mask must have shape (num_steps, {depth}) (one row per step), got {mask.shape}"
    )
  if mask.dtype != bool:
    raise TypeError(f"mask must be a bool array (True: evaluate the block), got {mask.dtype}")
  if t.shape != (mask.shape[0] + 1,):
    raise ValueError(
      f"t must hold the {mask.shape[0] + 1} grid times of {mask.shape[0]} mask rows, got {t.shape}"
    )
  if not is_traced(t) and not (np.all(np.isfinite(t)) and np.all(np.diff(t) < 0)):
    raise ValueError(f"t must be finite and strictly decreasing (noise decreasing), got {t}")
  return mask, t


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class SkipBlocks:
  r"""A network that evaluates, at each step of a grid, only the blocks its mask selects.

  For a network ``h, c, aux = net.encode(x, t, cond)``; ``h <- block(h, c, perturb)`` for
  each block; ``net.readout(h, c, aux, x)``, step ``i`` (the row whose grid time
  :math:`t_i`, ``i < N``, is nearest the call's ``t``) runs

  .. math::
    h \leftarrow \begin{cases} \text{block}_k(h, c) & m_{ik} \\ h & \text{otherwise}
    \end{cases}, \qquad k = 0, \dots, K - 1,

  i.e. a skipped block is the identity and the residual stream passes through
  (AutoDiffusion's layer skipping). The mask and the times are array leaves, so every
  schedule of the same shape reuses one compilation of :func:`jaxdiff.sample`. Two ways to
  skip (``variant``):

  * ``"select"`` (default): every block is computed and ``jnp.where`` keeps its output or
    its input; the all-``True`` mask equals ``net`` bit for bit (one program, the same
    arithmetic), but a skipped block still costs its compute: the saving is counted in
    blocks, not realized in time;
  * ``"cond"``: a block no sample of the call evaluates runs under a ``lax.cond`` that skips
    it, so the saving is real under ``jit`` (under ``vmap`` with a batched ``t`` both
    branches run); XLA compiles a ``cond`` branch on its own, so the all-``True`` mask
    equals ``net`` only to rounding (a few ulp).

  Attributes:
    net: the network (e.g. :class:`jaxdiff.models.DigitDenoiser`).
    mask: bool ``(N, K)``, ``mask[i, k]``: whether step ``i`` evaluates block ``k``.
    t: the grid's ``(N + 1,)`` network times (noise decreasing); row ``i`` serves calls at
      times nearest :math:`t_i` (a second stage or a corrector at :math:`t_{i+1}` uses row
      ``i + 1``, and row ``N - 1`` at :math:`t_N`).
    variant: ``"select"`` or ``"cond"`` (static).

  Example:
    >>> import jax, numpy as np
    >>> from jaxdiff import search
    >>> class Net:  # the protocol, with blocks that add 1 and double
    ...   blocks = (lambda h, c, p: h + 1.0, lambda h, c, p: 2.0 * h)
    ...   encode = staticmethod(lambda x, t, cond: (x, None, None))
    ...   readout = staticmethod(lambda h, c, aux, x: h)
    >>> net = search.skip_blocks(Net(), np.array([[True, False]]), np.array([1.0, 0.0]))
    >>> [type(leaf).__name__ for leaf in jax.tree.leaves(net)]  # mask and t are data leaves
    ['Net', 'ndarray', 'ndarray']

  References:
    Li et al., "AutoDiffusion: Training-Free Optimization of Time Steps and Architectures
    for Automated Diffusion Model Acceleration", ICCV 2023, arXiv:2309.10438.
  """

  net: Any
  mask: Any
  t: Any
  variant: str = dataclasses.field(metadata={"static": True}, default="select")

  def __call__(self, x, t, cond=None, *, perturb=None):
    h, c, aux = self.net.encode(x, t, cond)
    tb = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (h.shape[0],))
    table = jnp.asarray(self.t[:-1], jnp.float32)
    rows = jnp.argmin(jnp.abs(table[None, :] - tb[:, None]), axis=1)
    use = jnp.asarray(self.mask)[rows]  # (B, K)
    pag = getattr(self.net, "pag_layers", range(len(self.net.blocks)))
    for k, block in enumerate(self.net.blocks):
      p, on = (perturb if k in pag else None), use[:, k]
      run = lambda h, block=block, p=p, on=on: jnp.where(on[:, None, None], block(h, c, p), h)
      if self.variant == "cond":
        h = jax.lax.cond(jnp.any(on), run, lambda h: h, h)
      else:
        h = run(h)
    return self.net.readout(h, c, aux, x)


def skip_blocks(net, mask, t, *, variant: str = "select") -> SkipBlocks:
  r"""``net`` evaluating at step ``i`` of the grid ``t`` only the blocks ``mask[i]`` selects.

  See :class:`SkipBlocks` for the definition. Wrap the result like the network itself,
  e.g. ``parameterization.from_v(search.skip_blocks(net, mask, t), schedule)``, and sample
  on ``jaxdiff.timesteps_from(schedule, t)`` with a one-evaluation-per-step solver (DDIM,
  DPM-Solver++(2M), UniPC, USF): the blocks evaluated per sample are ``mask.sum()``.

  Args:
    net: a network with ``encode(x, t, cond) -> (h, c, aux)``, ``blocks`` (each
      ``block(h, c, perturb) -> h``; ``perturb`` reaches the blocks in ``net.pag_layers``)
      and ``readout(h, c, aux, x)``.
    mask: bool ``(N, len(net.blocks))``.
    t: the ``(N + 1,)`` grid times, strictly decreasing.
    variant: ``"select"`` (bit for bit with ``net`` when nothing is skipped; the skipped
      blocks are computed and discarded) or ``"cond"`` (skipped blocks cost nothing under
      ``jit``; equal to ``net`` to rounding). See :class:`SkipBlocks`.

  Returns:
    A :class:`SkipBlocks` (a pytree; ``mask`` and ``t`` are traced leaves).

  Raises:
    TypeError: ``net`` lacks the protocol, or ``mask`` is not bool.
    ValueError: ``mask`` of another width than ``len(net.blocks)``, ``t`` of another
      length than ``N + 1`` or not decreasing.

  Example:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from jaxdiff import search
    >>> class Toy:  # the protocol: tokens are x itself, block 0 adds 1, block 1 doubles
    ...   blocks = (lambda h, c, p: h + 1.0, lambda h, c, p: 2.0 * h)
    ...   encode = staticmethod(lambda x, t, cond: (x, None, None))
    ...   readout = staticmethod(lambda h, c, aux, x: h)
    >>> mask = np.array([[True, True], [False, True], [True, False]])
    >>> net = search.skip_blocks(Toy(), mask, np.array([1.0, 0.6, 0.3, 0.0]))
    >>> x = jnp.ones((1, 1, 1))
    >>> [float(net(x, t, None)[0, 0, 0]) for t in (1.0, 0.6, 0.3)]  # (1+1)*2, 1*2, 1+1
    [4.0, 2.0, 2.0]

  References:
    Li et al., "AutoDiffusion: Training-Free Optimization of Time Steps and Architectures
    for Automated Diffusion Model Acceleration", ICCV 2023, arXiv:2309.10438 (Sec. 3.2,
    the architecture part of the search space).
  """
  depth = _check_net(net)
  mask, t = _check_masks(mask, t, depth)
  return SkipBlocks(net, mask, t, check_choice("variant", variant, ("select", "cond")))


class SkipSchedule(NamedTuple):
  """A searched (timesteps, block masks) pair: plain data, saved as JSON.

  Attributes:
    t: the ``(N + 1,)`` grid times, noise decreasing (NumPy float64).
    mask: bool ``(N, K)``: the blocks each step evaluates.
  """

  t: np.ndarray
  mask: np.ndarray

  @classmethod
  def spread(cls, t, depth: int, budget: int) -> SkipSchedule:
    """The grid ``t`` with ``min(budget, N depth)`` blocks spread evenly over its ``N``
    steps: each step evaluates its first ``budget // N`` blocks, the first ``budget % N``
    steps one more (the later blocks are skipped first)."""
    t = np.asarray(t, np.float64)
    n = t.shape[0] - 1
    per, extra = divmod(min(budget, n * depth), n)
    mask = np.arange(depth)[None, :] < per + (np.arange(n) < extra)[:, None]
    return cls(t, mask)

  @property
  def blocks(self) -> int:
    """Blocks evaluated per sample (one network call per step)."""
    return int(np.sum(self.mask))

  def denoiser_net(self, net, *, variant: str = "select") -> SkipBlocks:
    """``skip_blocks(net, mask, t, variant=variant)``."""
    return skip_blocks(net, self.mask, self.t, variant=variant)

  def grid(self, schedule) -> Grid:
    """``jaxdiff.timesteps_from(schedule, t)``."""
    return timesteps_from(schedule, self.t)

  def to_json(self) -> str:
    """A JSON text that :meth:`from_json` reads back exactly."""
    mask = np.asarray(self.mask, bool).astype(int).tolist()
    return json.dumps({"t": [float(v) for v in self.t], "mask": mask})

  @classmethod
  def from_json(cls, text: str) -> SkipSchedule:
    """The schedule :meth:`to_json` wrote (validated as :func:`skip_blocks` validates)."""
    data = json.loads(text)
    mask = np.asarray(data["mask"])
    if mask.size and not np.isin(mask, (0, 1)).all():
      raise ValueError("mask entries must be 0 or 1")
    mask = mask.astype(bool).reshape(mask.shape if mask.ndim == 2 else (-1, 0))
    mask, t = _check_masks(mask, data["t"], mask.shape[1])
    return cls(t, mask)


class SkipSearchResult(NamedTuple):
  """What :func:`evolve_skips` returns.

  Attributes:
    schedule: the best :class:`SkipSchedule` found.
    fitness: its fitness (lower is better).
    history: best fitness after the initial population and after each generation.
    evaluations: candidates scored in all.
  """

  schedule: SkipSchedule
  fitness: float
  history: np.ndarray
  evaluations: int


def _fit_budget(rng, mask: np.ndarray, budget: int) -> np.ndarray:
  """Switches random evaluated blocks off until at most ``budget`` remain."""
  mask = mask.copy()
  on = np.flatnonzero(mask)
  if on.size > budget:
    mask.flat[rng.choice(on, size=on.size - budget, replace=False)] = False
  return mask


def _random_mask(rng, shape, budget: int) -> np.ndarray:
  """``min(budget, N K)`` evaluated blocks at random places."""
  mask = np.zeros(shape, bool)
  mask.flat[rng.choice(mask.size, size=min(budget, mask.size), replace=False)] = True
  return mask


def evolve_skips(
  fitness: Callable[[SkipSchedule], float],
  t_start: float,
  t_end: float,
  num_steps: int,
  depth: int,
  *,
  block_budget: int,
  key,
  population: int = 16,
  generations: int = 8,
  top_k: int = 4,
  mutation_prob: float = 0.25,
  resolution: int = 1000,
  initial: Sequence[SkipSchedule] = (),
) -> SkipSearchResult:
  r"""AutoDiffusion's joint search of a time grid and the blocks each step evaluates.

  A candidate is a :class:`SkipSchedule`: a grid :math:`t_0 = t_{\text{start}} > \dots >
  t_N = t_{\text{end}}` on a table of ``resolution`` equal steps and a bool mask
  :math:`m \in \{0, 1\}^{N \times K}` (step ``i`` evaluates block ``k`` iff
  :math:`m_{ik}`; :func:`skip_blocks`) within a compute budget counted in blocks,
  :math:`\sum_{ik} m_{ik} \le B` (the paper's budget is steps times layers of the
  uncompressed sampler, so ``block_budget = n * K`` compares with an ``n``-step sampler and
  ``num_steps > n`` trades blocks for steps). The evolution is :func:`evolve_timesteps`'s:
  each generation keeps the ``top_k`` fittest and fills the population with half
  crossovers (per step, time and mask row from either parent, as the official code does;
  times re-sorted and duplicates redrawn) and half mutations (each interior time redrawn,
  and each evaluated block moved to a random skipped place, with probability
  ``mutation_prob``); a candidate over budget has random blocks switched off.

  The initial population holds the ``initial`` schedules, the uniform grid with the evenly
  spread mask (:meth:`SkipSchedule.spread`), then random ones (random interior times,
  ``min(block_budget, N K)`` blocks at random places). One population evolves times and masks
  together; the official code's first stage (timesteps only, skipping switched on after
  a few generations) is what a ``block_budget >= N K`` search is, and seeding a joint search
  with its result (``initial``) chains the two.

  Args:
    fitness: ``fitness(schedule) -> float``, lower is better (e.g. a Fréchet distance of
      samples drawn with ``schedule.denoiser_net(net)`` on ``schedule.grid(sched)``; jit it
      on the mask and times: they are array leaves, one compilation serves every candidate).
    t_start, t_end: the fixed first and last times (``t_start > t_end``).
    num_steps: ``N >= 1`` steps.
    depth: ``K >= 1`` blocks of the network.
    block_budget: blocks evaluated per sample, ``>= 1``; more than ``N K`` means no
      skipping (named apart from :func:`s3_search`'s ``budget``, which counts fitness
      evaluations).
    key: PRNG key (typed key, raw key or int seed).
    population, generations, top_k, mutation_prob, resolution: as :func:`evolve_timesteps`.
    initial: schedules (``N`` steps, ``K`` blocks, within budget) to seed with.

  Returns:
    A :class:`SkipSearchResult`.

  Raises:
    ValueError: a zero budget (``block_budget`` < 1, ``population`` < 2,
      ``generations`` < 1), a table too coarse, ``t_start <= t_end``, an ``initial``
      schedule of another shape or over budget, or a non-finite fitness of the first
      candidate.

  Example:
    >>> import numpy as np
    >>> from jaxdiff import search
    >>> # Toy fitness: skipping block 1 costs 1, skipping block 0 costs 3 (per step).
    >>> fit = lambda s: float(np.sum(~s.mask * np.array([3.0, 1.0])))
    >>> res = search.evolve_skips(fit, 1.0, 0.0, 3, 2, block_budget=4, key=0, population=8,
    ...                           generations=4, top_k=2)
    >>> res.schedule.mask.sum(), res.schedule.mask[:, 0].all(), res.fitness
    (np.int64(4), np.True_, 2.0)

  References:
    Li et al., "AutoDiffusion: Training-Free Optimization of Time Steps and Architectures
    for Automated Diffusion Model Acceleration", ICCV 2023, arXiv:2309.10438 (Sec. 3.2-3.3;
    official code github.com/lilijiangg/AutoDiffusion, the guided-diffusion layer search).
  """
  if not callable(fitness):
    raise TypeError(f"fitness must be callable fitness(schedule) -> float, got {fitness!r}")
  depth = check_scalar("depth", depth, lo=1, integer=True, static=True)
  budget = check_scalar("block_budget", block_budget, lo=0, integer=True, static=True)
  if budget < 1:
    raise ValueError(f"block_budget must be >= 1 block, got {budget}")
  args = num_steps, population, generations, top_k, mutation_prob, resolution, t_start, t_end
  num_steps, population, generations, top_k, mutation_prob, resolution, *rest = _evolution(*args)
  t_start, t_end, to_t = rest
  rng = _numpy_rng(key)
  shape = (num_steps, depth)
  seen: dict = {}

  def score(cands) -> np.ndarray:
    out = []
    for idx, mask in cands:
      k = (tuple(idx), mask.tobytes())
      if k not in seen:
        val = float(fitness(SkipSchedule(to_t(idx), mask.copy())))
        seen[k] = val if math.isfinite(val) else math.inf
      out.append(seen[k])
    return np.asarray(out)

  pop = []
  for s in initial:
    mask, t = _check_masks(s.mask, s.t, depth)
    if mask.shape != shape or mask.sum() > budget:
      raise ValueError(
        f"initial schedules must have {num_steps} steps of {depth} blocks within the budget "
        f"of {budget} blocks, got mask {mask.shape} with {int(mask.sum())} blocks"
      )
    idx = np.round((t - t_end) / (t_start - t_end) * resolution).astype(np.int64)
    pop.append((_repair(rng, idx, resolution, num_steps), mask))
  uniform = _uniform(resolution, num_steps)
  pop.append((uniform, SkipSchedule.spread(to_t(uniform), depth, budget).mask))
  pop = pop[:population]
  while len(pop) < population:
    pop.append((_random_grid(rng, resolution, num_steps), _random_mask(rng, shape, budget)))
  fit = score(pop)
  if not np.isfinite(fit[0]):
    raise ValueError("fitness of the first candidate is not finite; check the fitness function")
  evaluations = len(seen)
  history = [float(fit.min())]
  for _ in range(generations):
    order = np.argsort(fit, kind="stable")[:top_k]
    parents, parent_fit = [pop[i] for i in order], fit[order]
    children = []
    for _ in range((population - top_k) // 2):
      a, b = (parents[j] for j in rng.choice(top_k, size=2, replace=top_k < 2))
      pick = rng.random(num_steps) < 0.5
      idx = np.where(np.concatenate([[False], pick[1:], [False]]), b[0], a[0])
      mask = np.where(pick[:, None], b[1], a[1])
      children.append((_repair(rng, np.sort(idx)[::-1], resolution, num_steps), mask))
    while len(children) < population - top_k:
      idx, mask = parents[int(rng.integers(top_k))]
      idx, mask = idx.copy(), mask.copy()
      redraw = rng.random(num_steps - 1) < mutation_prob
      idx[1:-1][redraw] = rng.integers(1, resolution, size=int(redraw.sum()))
      for j in np.flatnonzero(mask.ravel() & (rng.random(mask.size) < mutation_prob)):
        off = np.flatnonzero(~mask.ravel())
        if off.size:
          mask.flat[j], mask.flat[rng.choice(off)] = False, True
      children.append((_repair(rng, np.sort(idx)[::-1], resolution, num_steps), mask))
    children = [(i, _fit_budget(rng, m, budget)) for i, m in children]
    n_seen = len(seen)
    child_fit = score(children)
    evaluations += len(seen) - n_seen
    pop, fit = parents + children, np.concatenate([parent_fit, child_fit])
    history.append(float(fit.min()))
  best = int(np.argmin(fit))
  idx, mask = pop[best]
  return SkipSearchResult(
    SkipSchedule(to_t(idx), mask), float(fit[best]), np.asarray(history), evaluations
  )
