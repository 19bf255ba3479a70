"""Feature caching for transformer denoisers: the ``cache`` add-on of :func:`jaxdiff.sample`.

A cache rule serves the network calls of a step from its state: at the steps the rule
marks as *reuse*, every block's residual branches (attention and MLP outputs, before
their adaLN gates) are what the rule makes from its cache instead of being computed.
The state is explicit: it rides in the :class:`~jaxdiff.Network` the loop threads through
the guidance rule and the corrector (``x0, net = net(x, t, cond)``), one *slot* per
network call of a step, allotted from what the step's components declare (the guidance
rule's ``calls`` for each solver stage and each corrector iteration); each slot's
features get their shapes from the network itself (an abstract evaluation of the
feature path, no run).

The network must have the block interface of :mod:`jaxdiff._blocks`, with blocks that
expose ``residual_branches``; :class:`jaxdiff.models.DigitDenoiser` does. ``encode``, the
gates and ``readout`` run at every call (cheap); the branches only at full steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._blocks import block_network, branch_block_fn, run_blocks
from jaxdiff._module import module, setfield, static
from jaxdiff._parameterization import Wrapped
from jaxdiff._validation import check_choice, check_scalar
from jaxdiff._wrappers import through_blocks

Array = jax.Array


def cacheable_net(denoise):
  """The network behind ``denoise`` whose features a cache stores (``TypeError`` if none)."""
  inner = getattr(denoise, "__wrapped__", denoise)
  if getattr(inner, "stats_names", ()):
    raise TypeError(
      "cache: this denoiser runs its own blocks and reports counters per call "
      f"({', '.join(inner.stats_names)}; e.g. an early-exit network), so a feature cache "
      "cannot serve its branches; sample it without a cache"
    )
  try:
    return block_network(inner, who="cache", branches=True)
  except TypeError as e:
    raise TypeError(
      "cache: the denoiser exposes no cacheable features; a cache needs a transformer "
      "denoiser with encode(x, t, cond), blocks (each with residual_branches(c)) and "
      "readout(h, c, aux, x), e.g. parameterization.from_v(models.DigitDenoiser(...), "
      f"schedule), got {type(inner).__name__}"
    ) from e


def _append(items: list, value):
  items.append(value)
  return value


def _run(net, x, t, cond, perturb, branch_fn):
  """The network's output with branch ``j``'s value from ``branch_fn(j, h, run)``."""
  return run_blocks(net, x, t, cond, perturb=perturb, block_fn=branch_block_fn(branch_fn))


def _features(net, x, t, cond, perturb) -> list:
  feats = []
  _run(net, x, t, cond, perturb, lambda j, h, run: _append(feats, run(h)))
  return feats


def _output(denoise, net, out, x, t):
  """The network output as the denoiser's: through each wrapper between them, innermost
  first (a parameterization's ``blocks_output``; a user's ``.net`` wrapper with
  ``schedule`` and ``prediction`` as :class:`Wrapped` converts)."""
  layers = []
  for obj in through_blocks(getattr(denoise, "__wrapped__", denoise)):
    if obj is net:
      break
    layers.append(obj)
  for layer in reversed(layers):
    convert = getattr(layer, "blocks_output", None)
    if convert is None and hasattr(layer, "prediction"):
      convert = Wrapped(layer, layer.schedule, layer.prediction).blocks_output
    out = out if convert is None else convert(out, x, t)
  return out.astype(x.dtype)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Rows:
  """The rows of each slot's call (static: part of the state's structure)."""

  rows: tuple


def _tile(cond, m: int):
  if m == 1 or cond is None:
    return cond
  return jax.tree.map(lambda c: jnp.concatenate([jnp.asarray(c)] * m, axis=0), cond)


class CacheRule:
  """A feature-cache rule: which steps compute fully, and what the others reuse.

  Subclasses are immutable pytrees (:func:`jaxdiff._module.module`) and define
  :meth:`full_steps` (static, from the number of steps) and the per-feature state:
  :meth:`init_feature`, :meth:`refresh` (a full step) and :meth:`predict` (a reuse step).
  ``pos`` is the expansion variable at the step (see each rule); :meth:`adjust` may
  correct the denoiser output at a reuse step. The add-on interface the sampling loop
  uses (:meth:`init`, :meth:`call`) is shared by every rule.

  Example:
    >>> from jaxdiff import caching
    >>> isinstance(caching.taylorseer(3, 1), caching.CacheRule)
    True
  """

  def full_steps(self, num_steps: int) -> np.ndarray:
    raise NotImplementedError

  def init_feature(self, feature: jax.ShapeDtypeStruct):
    raise NotImplementedError

  def refresh(self, state, feature: Array, pos: Array):
    raise NotImplementedError

  def predict(self, state, pos: Array) -> Array:
    raise NotImplementedError

  def position(self, step: Array, t: Array) -> Array:
    del t
    return step

  def adjust(self, x0: Array, x: Array, step: Array) -> Array:
    """The denoiser output at a reuse step (identity here; ERTACache's step adjustment)."""
    del x, step
    return x0

  # -- the add-on interface ----------------------------------------------------------------
  def stat_names(self) -> tuple[str, ...]:
    return ("full_nfe",)

  def external_stats(self, n) -> dict:
    """Evaluations made outside the network ran a whole network: full ones."""
    return {"full_nfe": n}

  def init(self, fn, x_T, ts, cond, calls) -> dict:
    """The cache's state for a loop whose steps make calls on ``m * B`` rows for each ``m``
    in ``calls`` (in order): each slot's per-feature state, the full-step mask and the
    grid times."""
    net = cacheable_net(fn)
    b = x_T.shape[0]
    if calls is None:  # a rule that does not declare its calls runs uncached (no slots)
      calls = ()
    shapes = {}
    for m in sorted(set(calls)):
      x = jax.ShapeDtypeStruct((m * b, *x_T.shape[1:]), x_T.dtype)
      t = jax.ShapeDtypeStruct((m * b,), jnp.result_type(ts.t))
      shapes[m] = jax.eval_shape(lambda x, t, m=m: _features(net, x, t, _tile(cond, m), None), x, t)
    slots = tuple(tuple(self.init_feature(f) for f in shapes[m]) for m in calls)
    full = jnp.asarray(self.full_steps(ts.num_steps))
    return {"full": full, "t": ts.t, "slots": slots, "rows": _Rows(tuple(m * b for m in calls))}

  def call(self, network, x, t, cond, kwargs):
    """One call of the network through the cache (see the module docstring)."""
    if not network.live:  # inside a rule's own control flow: the full network
      out, stats = network.plain(x, t, cond, kwargs)
      return out, network.cache_state, {**stats, "full_nfe": network.evaluations(x)}
    kwargs = dict(kwargs)
    perturb = kwargs.pop("perturb", None)
    if kwargs:
      raise TypeError(f"cache: the cached denoiser takes only `perturb`, got {sorted(kwargs)}")
    state = network.cache_state
    k = network.slot
    rows = state["rows"].rows
    if k >= len(rows) or rows[k] != x.shape[0]:
      raise TypeError(
        f"cache: network call {k} of the step has {x.shape[0]} rows, but the step's "
        f"components declare calls on {list(rows)} rows (the guidance rule's "
        "`calls`, per solver stage and corrector iteration)"
      )
    fn = network.fn
    net = cacheable_net(fn)
    i = network.step
    full = state["full"][i]
    pos = self.position(i, state["t"][i])
    slot = state["slots"][k]

    def compute(slot):
      feats = []
      out = _run(net, x, t, cond, perturb, lambda j, h, run: _append(feats, run(h)))
      return out, tuple(self.refresh(s, f, pos) for s, f in zip(slot, feats))

    def reuse(slot):
      out = _run(net, x, t, cond, perturb, lambda j, h, run: self.predict(slot[j], pos))
      return out, slot

    out, new = jax.lax.cond(full, compute, reuse, slot)
    x0 = _output(fn, net, out, x, t)
    if type(self).adjust is not CacheRule.adjust:
      x0 = jnp.where(full, x0, self.adjust(x0, x, i))
    check = getattr(fn, "check_output", None)
    if check is not None:
      check(x0, x)
    slots = state["slots"][:k] + (new,) + state["slots"][k + 1 :]
    evaluations = network.evaluations(x)
    stats = {"full_nfe": jnp.where(full, evaluations, 0).astype(jnp.int32)}
    return x0, {**state, "slots": slots}, stats


def _every(interval: int, num_steps: int) -> np.ndarray:
  return np.arange(num_steps) % interval == 0


class _Reuse(CacheRule):
  """The state is the last full step's feature (plain reuse; FORA, ERTACache)."""

  def init_feature(self, feature):
    return jnp.zeros(feature.shape, feature.dtype)

  def refresh(self, state, feature, pos):
    del state, pos
    return feature

  def predict(self, state, pos):
    del pos
    return state


@module
class Fora(_Reuse):
  r"""FORA: full computation every ``interval`` steps, plain reuse in between.

  With :math:`F_\ell(i)` the residual branch outputs (attention, MLP; before the adaLN
  gate) of block :math:`\ell` at step :math:`i` and :math:`k(i)` the last full step
  (:math:`i \bmod N = 0`):

  .. math:: \hat F_\ell(i) = F_\ell(k(i)),\qquad
    h \leftarrow h + g_\ell(c_i) \odot \hat F_\ell(i),

  the gates :math:`g_\ell(c_i)`, the embedding and the readout being computed at step
  :math:`i` (FORA caches attention and MLP outputs, Sec. 3). ``interval = 1`` is the
  base sampler.

  Example:
    >>> from jaxdiff import caching
    >>> caching.fora(interval=3).full_steps(7).astype(int).tolist()
    [1, 0, 0, 1, 0, 0, 1]

  References:
    Selvaraju et al., "FORA: Fast-Forward Caching in Diffusion Transformer
    Acceleration", arXiv:2407.01425.
  """

  interval: int = static(2)

  def __post_init__(self):
    setfield(
      self, "interval", check_scalar("interval", self.interval, lo=1, integer=True, static=True)
    )

  def full_steps(self, num_steps: int) -> np.ndarray:
    return _every(self.interval, num_steps)


@module
class TaylorSeer(CacheRule):
  r"""TaylorSeer: features at skipped steps forecast by a Taylor expansion of order ``m``.

  Full steps are the official code's (TaylorSeer-DiT's ``cal_type``): the first ``warmup``
  steps (its ``first_enhance = 2``), then every ``interval``-th step counted from the last
  of them, :math:`i < w` or :math:`(i - w + 1) \bmod N = 0` (``[0, 1, 5, 9, ...]`` for
  :math:`N = 4`, :math:`w = 2`; ``warmup=1`` gives :math:`i \bmod N = 0`). At a full
  step :math:`k` with fresh features :math:`F(k)` and the previous full step :math:`k'`,
  the derivative estimates are updated by divided differences of the previous ones (the
  official code's recursion; for a constant interval it is the paper's
  :math:`\Delta^j F / N^j`, Eq. 8):

  .. math::
    \mathcal D^0(k) = F(k),\qquad
    \mathcal D^{j+1}(k) = \frac{\mathcal D^{j}(k) - \mathcal D^{j}(k')}{p_k - p_{k'}},
    \quad j < m,

  where a :math:`\mathcal D^{j+1}` is kept only once :math:`\mathcal D^j(k')` exists (after
  :math:`j + 1` full steps; the order ramps up). At a skipped step :math:`i` after the
  last full step :math:`k` (Eq. 9):

  .. math:: \hat F(i) = \sum_{j=0}^{m} \frac{\mathcal D^j(k)}{j!}\,(p_i - p_k)^j .

  ``variant="step"`` expands in the step index :math:`p_i = i` (the official DiT code);
  ``variant="t"`` in the grid time :math:`p_i = t_i`. ``order=0`` is plain reuse;
  ``interval=1`` the base sampler.

  Example:
    >>> from jaxdiff import caching
    >>> rule = caching.taylorseer(interval=4, order=2)
    >>> rule.full_steps(7).astype(int).tolist()
    [1, 1, 0, 0, 0, 1, 0]
    >>> caching.taylorseer(interval=4, order=2, warmup=1).full_steps(7).astype(int).tolist()
    [1, 0, 0, 0, 1, 0, 0]

  References:
    Liu et al., "From Reusing to Forecasting: Accelerating Diffusion Models with
    TaylorSeers", ICCV 2025, arXiv:2503.06923 (Eqs. 8-9).
  """

  interval: int = static(4)
  order: int = static(2)
  variant: str = static("step")
  warmup: int = static(2)

  def __post_init__(self):
    set_ = lambda name, v: setfield(self, name, v)
    set_("interval", check_scalar("interval", self.interval, lo=1, integer=True, static=True))
    set_("order", check_scalar("order", self.order, lo=0, integer=True, static=True))
    check_choice("variant", self.variant, ("step", "t"))
    set_("warmup", check_scalar("warmup", self.warmup, lo=1, integer=True, static=True))

  def full_steps(self, num_steps: int) -> np.ndarray:
    i = np.arange(num_steps)
    return (i < self.warmup) | ((i - self.warmup + 1) % self.interval == 0)

  def position(self, step, t):
    return t if self.variant == "t" else step

  def init_feature(self, feature):
    factors = jnp.zeros((self.order + 1, *feature.shape), feature.dtype)
    return factors, jnp.zeros((), feature.dtype), jnp.zeros((), jnp.int32)

  def refresh(self, state, feature, pos):
    old, last, count = state
    pos = jnp.asarray(pos, feature.dtype)
    # The first full step has no predecessor: d is never used there (count = 0).
    d = jnp.where(count > 0, pos - last, jnp.ones_like(last))
    new = [feature]
    for j in range(self.order):
      new.append(jnp.where(count > j, (new[j] - old[j]) / d, jnp.zeros_like(feature)))
    return jnp.stack(new), pos, count + 1

  def predict(self, state, pos):
    factors, last, _ = state
    dx = jnp.asarray(pos, factors.dtype) - last
    out = factors[0]
    for j in range(1, self.order + 1):
      out = out + factors[j] * (dx**j / math.factorial(j))
    return out


def fora(interval: int = 2) -> Fora:
  """FORA (plain reuse every ``interval`` steps); see :class:`Fora`.

  Example:
    >>> from jaxdiff import caching
    >>> caching.fora(2).interval
    2
  """
  return Fora(interval)


def taylorseer(
  interval: int = 4, order: int = 2, *, variant: str = "step", warmup: int = 2
) -> TaylorSeer:
  """TaylorSeer (Taylor forecast of order ``order``); see :class:`TaylorSeer`.

  ``warmup`` (>= 1) steps are computed in full first, as the official code's
  ``first_enhance = 2``; ``warmup=1`` is the schedule :math:`i \bmod N = 0`.

  Example:
    >>> from jaxdiff import caching
    >>> caching.taylorseer(interval=3, order=1).order
    1
  """
  return TaylorSeer(interval, order, variant, warmup)


def check_rule(cache) -> None:
  from jaxdiff._network import NoCache

  if not isinstance(cache, (CacheRule, NoCache)):
    raise TypeError(
      "cache must be a jaxdiff cache rule (caching.fora(...), caching.taylorseer(...), "
      f"caching.ertacache(...)) or caching.NoCache(), got {type(cache).__name__}"
    )


def call_flops(denoise, x: Array, t: Array, cond: Any = None) -> tuple[float, float]:
  """XLA's FLOP count of one full and one partial (cached-branches) call of a cacheable
  ``denoise`` at ``(x, t, cond)``: what the FLOP ratios of the bench and the demo use."""
  net = cacheable_net(denoise)
  feats = _features(net, x, t, cond, None)

  def flops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])

  full = flops(lambda x, t: _run(net, x, t, cond, None, lambda j, h, run: run(h)), x, t)
  part = flops(lambda x, t, f: _run(net, x, t, cond, None, lambda j, h, run: f[j]), x, t, feats)
  return full, part
