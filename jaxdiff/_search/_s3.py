"""S³: predictor-based search over USF solver schedules (Liu et al., ICLR 2024).

A candidate is a :class:`SolverSchedule`, per-step :class:`~jaxdiff.solvers.StepChoice`
decisions plus grid times on the search's table; an MLP predictor trained on the true
evaluations so far ranks the proposals each round.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff._grids import Grid, timesteps_from
from jaxdiff._search._files import read_object, records, times
from jaxdiff._search._grid import Table, numpy_rng, repair, uniform
from jaxdiff._search._population import fitness_value
from jaxdiff._solvers._usf import DERIVATIVES, PREDICTIONS, USF, StepChoice, usf, usf_steps
from jaxdiff._validation import as_key, check_choice, check_flag, check_scalar


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
  def from_json(cls, text) -> SolverSchedule:
    """The schedule :meth:`to_json` wrote, from its text or a file (``pathlib.Path``).

    Validated against the schema: exactly the fields ``steps`` (objects with exactly
    :class:`~jaxdiff.solvers.StepChoice`'s fields, checked as :func:`~jaxdiff.solvers.usf`
    checks them) and ``t`` (``len(steps) + 1`` finite times, strictly decreasing). Any
    problem is one ``ValueError`` naming the file (or "JSON text") and the field; a
    :class:`SkipSchedule`'s JSON is recognised and named.
    """
    data, src = read_object(text, "SolverSchedule")
    found = records(data, "steps", StepChoice._fields, src)
    steps = src.wrap("steps", lambda: usf([StepChoice(**s) for s in found]).steps)
    t = times(data, src)
    if t.shape != (len(steps) + 1,):
      raise src.error(
        f"field 't': t must have {len(steps) + 1} times (len(steps) + 1) for "
        f"{len(steps)} steps, got {t.shape[0]}"
      )
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
  return repair(rng, np.round(u * sp.resolution).astype(np.int64), sp.resolution, sp.nfe)


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
  return steps, repair(rng, np.sort(idx)[::-1], sp.resolution, sp.nfe)


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
    fitness: ``fitness(schedule) -> float`` (a real scalar, else an error naming
      ``fitness``; a non-finite value ranks last), lower is better (e.g. the error against
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
  rng = numpy_rng(key)
  table = Table(t_start, t_end, resolution)

  seen: dict = {}
  evaluated: list = []  # (steps, idx, fitness)

  def evaluate(steps, idx) -> float:
    val = fitness(SolverSchedule(steps, table.times(idx)))
    val = fitness_value(val, "fitness(schedule)", "s3_search")
    val = val if math.isfinite(val) else math.inf
    evaluated.append((steps, idx, val))
    seen[(steps, tuple(idx))] = val
    return val

  seeds = []
  for s in initial:
    steps = usf(s.steps).steps
    if len(steps) != nfe or np.shape(s.t) != (nfe + 1,):
      raise ValueError(f"initial schedules must have nfe = {nfe} steps, got {len(steps)}")
    seeds.append((steps, repair(rng, table.indices(s.t), resolution, nfe)))
  for like in ("dpmpp_2m", "unipc"):
    steps = usf_steps(like, nfe)
    if all(_allowed(i, c, sp) for i, c in enumerate(steps)):
      seeds.append((steps, uniform(resolution, nfe)))
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
  found = SolverSchedule(steps, table.times(idx))
  return S3Result(found, val, np.asarray(history), len(evaluated), corr)


def _allowed(i: int, c: StepChoice, sp: _Space) -> bool:
  return (
    c.order in {min(o, i + 1) for o in sp.orders}
    and c.prediction in sp.predictions
    and c.derivative in sp.derivatives
    and c.corrector in sp.correctors
  )
