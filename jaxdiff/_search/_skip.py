"""AutoDiffusion's block skipping: a network that evaluates, per step of a grid, only the
blocks a mask selects (:func:`skip_blocks`), and the joint evolution of the grid and the
masks under a block budget (:func:`evolve_skips`)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._blocks import apply_blocks, block_network
from jaxdiff._grids import Grid, timesteps_from
from jaxdiff._search._files import block_mask, read_object, times
from jaxdiff._search._grid import numpy_rng, random_grid, repair, uniform
from jaxdiff._search._population import Genome, check_evolution, evolve, fitness_value
from jaxdiff._validation import check_choice, check_scalar, is_traced
from jaxdiff._wrappers import wrapper


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


@wrapper(inner="net", blocks=False)
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

  It forwards what ``net`` declares (``num_classes``; :mod:`jaxdiff._wrappers`) but not its
  block interface (it runs the blocks itself: a feature cache of it is an error, never a
  cache that ignores the mask), and it checks the grid it is sampled on
  (:meth:`check_grid`).

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

  def check_grid(self, grid) -> None:
    """Raises ``ValueError`` unless ``grid`` is the one the mask was built for: one step per
    mask row (a shape, always checked) and, when both are concrete, the times ``t``."""
    n = int(jnp.shape(self.mask)[0])
    if grid.num_steps != n:
      raise ValueError(
        f"skip_blocks: the mask has one row per step of a {n}-step grid, but the grid ts has "
        f"{grid.num_steps} steps; sample on timesteps_from(schedule, t) of the mask's t"
      )
    if is_traced(self.t) or is_traced(grid.t):
      return
    mine, theirs = np.asarray(self.t, np.float64), np.asarray(grid.t, np.float64)
    tol = max(1e-5, 4 * float(jnp.finfo(jnp.asarray(grid.t).dtype).eps))
    bad = ~np.isclose(theirs, mine, rtol=tol, atol=tol)
    if bad.any():
      i = int(np.argmax(bad))
      raise ValueError(
        f"skip_blocks: the grid ts is not the mask's grid: ts.t[{i}] = {theirs[i]:.6g} but the "
        f"mask's t[{i}] = {mine[i]:.6g}; sample on timesteps_from(schedule, t) of the mask's t"
      )

  def __call__(self, x, t, cond=None, *, perturb=None):
    net = self.net
    h, c, aux = net.encode(x, t, cond)
    tb = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (h.shape[0],))
    table = jnp.asarray(self.t[:-1], jnp.float32)
    rows = jnp.argmin(jnp.abs(table[None, :] - tb[:, None]), axis=1)
    use = jnp.asarray(self.mask)[rows]  # (B, K)

    def masked(k, block, h, c, p):
      on = use[:, k]
      run = lambda h: jnp.where(on[:, None, None], block(h, c, p), h)
      return jax.lax.cond(jnp.any(on), run, lambda h: h, h) if self.variant == "cond" else run(h)

    h = apply_blocks(net, h, c, perturb=perturb, block_fn=masked)
    return net.readout(h, c, aux, x)


def skip_blocks(net, mask, t, *, variant: str = "select") -> SkipBlocks:
  r"""``net`` evaluating at step ``i`` of the grid ``t`` only the blocks ``mask[i]`` selects.

  See :class:`SkipBlocks` for the definition. Wrap the result like the network itself,
  e.g. ``parameterization.from_v(search.skip_blocks(net, mask, t), schedule)``, and sample
  on ``jaxdiff.timesteps_from(schedule, t)`` with a one-evaluation-per-step solver (DDIM,
  DPM-Solver++(2M), UniPC, USF): the blocks evaluated per sample are ``mask.sum()``.

  Args:
    net: a network with ``encode(x, t, cond) -> (h, c, aux)``, ``blocks`` (each
      ``block(h, c, perturb) -> h``; ``perturb`` reaches the blocks in ``net.pag_layers``)
      and ``readout(h, c, aux, x)``: the network itself, not its parameterization
      wrapper (wrap the result).
    mask: bool ``(N, len(net.blocks))``.
    t: the ``(N + 1,)`` grid times, strictly decreasing.
    variant: ``"select"`` (bit for bit with ``net`` when nothing is skipped; the skipped
      blocks are computed and discarded) or ``"cond"`` (skipped blocks cost nothing under
      ``jit``; equal to ``net`` to rounding). See :class:`SkipBlocks`.

  Returns:
    A :class:`SkipBlocks` (a pytree; ``mask`` and ``t`` are traced leaves).

  Raises:
    TypeError: ``net`` lacks the protocol or is a wrapper around a network that has it,
      or ``mask`` is not bool.
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
  found = block_network(net, who="skip_blocks")
  if found is not net:
    raise TypeError(
      "skip_blocks: net is a wrapper (a parameterization?) around a network with the block "
      "interface; pass the network itself and wrap the result, e.g. "
      f"from_v(search.skip_blocks(net, mask, t), schedule); got {type(net).__name__}"
    )
  depth = len(net.blocks)
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
  def from_json(cls, text) -> SkipSchedule:
    """The schedule :meth:`to_json` wrote, from its text or a file (``pathlib.Path``).

    Validated against the schema: exactly the fields ``t`` (finite times, strictly
    decreasing) and ``mask`` (``len(t) - 1`` rows of equal length, entries 0/1), then as
    :func:`skip_blocks` validates. Any problem is one ``ValueError`` naming the file (or
    "JSON text") and the field; a :class:`SolverSchedule`'s JSON is recognised and named.
    """
    data, src = read_object(text, "SkipSchedule")
    t = times(data, src)
    mask = block_mask(data, src)
    mask, t = src.wrap("mask", lambda: _check_masks(mask, t, mask.shape[1]))
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
    fitness: ``fitness(schedule) -> float`` (a real scalar, else an error naming
      ``fitness``; a non-finite value ranks last), lower is better (e.g. a Fréchet distance of
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
  num_steps, population, generations, top_k, mutation_prob, table = check_evolution(*args)
  resolution = table.resolution
  rng = numpy_rng(key)
  shape = (num_steps, depth)
  seen: dict = {}

  def score(cands) -> tuple[np.ndarray, int]:
    n_seen, out = len(seen), []
    for idx, mask in cands:
      k = (tuple(idx), mask.tobytes())
      if k not in seen:
        val = fitness(SkipSchedule(table.times(idx), mask.copy()))
        val = fitness_value(val, "fitness(schedule)", "evolve_skips")
        seen[k] = val if math.isfinite(val) else math.inf
      out.append(seen[k])
    return np.asarray(out), len(seen) - n_seen

  def sample(rng):
    return random_grid(rng, resolution, num_steps), _random_mask(rng, shape, budget)

  def crossover(rng, a, b):
    """Per step, the time and the mask row of either parent."""
    pick = rng.random(num_steps) < 0.5
    idx = np.where(np.concatenate([[False], pick[1:], [False]]), b[0], a[0])
    mask = np.where(pick[:, None], b[1], a[1])
    return repair(rng, np.sort(idx)[::-1], resolution, num_steps), mask

  def mutate(rng, parent):
    """Each interior time redrawn, each evaluated block moved to a skipped place."""
    idx, mask = parent[0].copy(), parent[1].copy()
    redraw = rng.random(num_steps - 1) < mutation_prob
    idx[1:-1][redraw] = rng.integers(1, resolution, size=int(redraw.sum()))
    for j in np.flatnonzero(mask.ravel() & (rng.random(mask.size) < mutation_prob)):
      off = np.flatnonzero(~mask.ravel())
      if off.size:
        mask.flat[j], mask.flat[rng.choice(off)] = False, True
    return repair(rng, np.sort(idx)[::-1], resolution, num_steps), mask

  def within_budget(rng, child):
    return child[0], _fit_budget(rng, child[1], budget)

  seeds = []
  for s in initial:
    mask, t = _check_masks(s.mask, s.t, depth)
    if mask.shape != shape or mask.sum() > budget:
      raise ValueError(
        f"initial schedules must have {num_steps} steps of {depth} blocks within the budget "
        f"of {budget} blocks, got mask {mask.shape} with {int(mask.sum())} blocks"
      )
    seeds.append((repair(rng, table.indices(t), resolution, num_steps), mask))
  grid = uniform(resolution, num_steps)
  seeds.append((grid, SkipSchedule.spread(table.times(grid), depth, budget).mask))
  genome = Genome(sample, crossover, mutate, within_budget)
  kw = dict(population=population, generations=generations, top_k=top_k, first="first candidate")
  res = evolve(rng, genome, score, seeds, **kw)
  (idx, mask), fit = res.best, res.fitness
  return SkipSearchResult(SkipSchedule(table.times(idx), mask), fit, res.history, res.evaluations)
