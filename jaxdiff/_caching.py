"""Feature caching for transformer denoisers: the ``cache`` seam of :func:`jaxdiff.sample`.

The sampler wraps the denoiser in :class:`_CachedDenoiser`, which runs the network's pieces
itself (the protocol below) and, at the steps a rule marks as *reuse*, replaces every
block's residual branches (attention and MLP outputs, before their adaLN gates) by what
the rule makes from its cache. The rule's state rides in the sampling scan's carry, one
slot per network call within a step (slots in trace order: CFG's conditional and
unconditional calls, a second solver stage, a corrector each get their own).

The protocol. A denoiser is cacheable if it, or the network ``denoise.net`` of a
:mod:`jaxdiff.parameterization` wrapper, has

* ``encode(x, t, cond) -> (h, c, aux)``: tokens ``h``, the conditioning vector ``c``;
* ``blocks``: a sequence whose items have ``residual_branches(c) -> [(gate, branch), ...]``
  with ``h <- h + gate[:, None, :] * branch(h, perturb)`` in order;
* ``readout(h, c, aux, x)``: the network output shaped like ``x``;
* optionally ``pag_layers``: the block indices that receive ``perturb`` (PAG).

:class:`jaxdiff.models.DigitDenoiser` implements it. ``encode``, the gates and ``readout``
run at every call (cheap); the branches only at full steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:  # the trace identity flax nnx checks its state updates with (no public equivalent)
  from jax._src.core import get_opaque_trace_state as _trace_state
except ImportError:  # pragma: no cover - a JAX without it: every call counts as in-trace
  _trace_state = lambda convention=None: None  # noqa: E731

from jaxdiff._parameterization import Wrapped
from jaxdiff._validation import check_choice, check_scalar

Array = jax.Array

_PROTOCOL = ("encode", "blocks", "readout")


def cacheable_net(denoise):
  """The network whose features a cache may store, or ``None``: ``denoise`` itself or the
  ``net`` of a parameterization wrapper, if it has ``encode``, ``blocks`` and ``readout``
  and every block has ``residual_branches``."""
  for net in (denoise, getattr(denoise, "net", None)):
    if net is not None and all(hasattr(net, name) for name in _PROTOCOL):
      if all(hasattr(block, "residual_branches") for block in net.blocks):
        return net
  return None


def check_cacheable(denoise) -> None:
  """Raises ``TypeError`` if ``denoise`` exposes no cacheable features (see the protocol)."""
  inner = getattr(denoise, "__wrapped__", denoise)
  if cacheable_net(inner) is None:
    raise TypeError(
      "cache: the denoiser exposes no cacheable features; a cache needs a transformer "
      "denoiser with encode(x, t, cond), blocks (each with residual_branches(c)) and "
      "readout(h, c, aux, x), e.g. parameterization.from_v(models.DigitDenoiser(...), "
      f"schedule), got {type(inner).__name__}"
    )


@dataclasses.dataclass(frozen=True)
class CacheRule:
  """A feature-cache rule: which steps compute fully, and what the others reuse.

  Subclasses define :meth:`full_steps` (static, from the number of steps), and the
  per-feature state: :meth:`init`, :meth:`refresh` (a full step) and :meth:`predict`
  (a reuse step). ``pos`` is the expansion variable at the step (see each rule);
  :meth:`adjust` may correct the denoiser output at a reuse step.

  Example:
    >>> from jaxdiff import caching
    >>> isinstance(caching.taylorseer(3, 1), caching.CacheRule)
    True
  """

  def full_steps(self, num_steps: int) -> np.ndarray:
    raise NotImplementedError

  def init(self, feature: jax.ShapeDtypeStruct):
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


def _every(interval: int, num_steps: int) -> np.ndarray:
  return np.arange(num_steps) % interval == 0


@dataclasses.dataclass(frozen=True)
class _Reuse(CacheRule):
  """The state is the last full step's feature (plain reuse; FORA, ERTACache)."""

  def init(self, feature):
    return jnp.zeros(feature.shape, feature.dtype)

  def refresh(self, state, feature, pos):
    del state, pos
    return feature

  def predict(self, state, pos):
    del pos
    return state


@dataclasses.dataclass(frozen=True)
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

  interval: int = 2

  def __post_init__(self):
    v = check_scalar("interval", self.interval, lo=1, integer=True, static=True)
    object.__setattr__(self, "interval", v)

  def full_steps(self, num_steps: int) -> np.ndarray:
    return _every(self.interval, num_steps)


@dataclasses.dataclass(frozen=True)
class TaylorSeer(CacheRule):
  r"""TaylorSeer: features at skipped steps forecast by a Taylor expansion of order ``m``.

  Full steps are :math:`i \bmod N = 0`. At a full step :math:`k` with fresh features
  :math:`F(k)` and the previous full step :math:`k'`, the derivative estimates are
  updated by divided differences of the previous ones (the official code's recursion;
  for a constant interval it is the paper's :math:`\Delta^j F / N^j`, Eq. 8):

  .. math::
    \mathcal D^0(k) = F(k),\qquad
    \mathcal D^{j+1}(k) = \frac{\mathcal D^{j}(k) - \mathcal D^{j}(k')}{p_k - p_{k'}},
    \quad j < m,

  where a :math:`\mathcal D^{j+1}` is kept only once :math:`\mathcal D^j(k')` exists (after
  :math:`j + 1` full steps; the order ramps up). At a skipped step :math:`i` after the
  last full step :math:`k` (Eq. 9):

  .. math:: \hat F(i) = \sum_{j=0}^{m} \frac{\mathcal D^j(k)}{j!}\,(p_i - p_k)^j .

  ``variant="step"`` expands in the step index :math:`p_i = i` (the official DiT code);
  ``variant="t"`` in the grid time :math:`p_i = t_i`. ``order=0`` is FORA; ``interval=1``
  the base sampler.

  Example:
    >>> from jaxdiff import caching
    >>> rule = caching.taylorseer(interval=4, order=2)
    >>> rule.full_steps(6).astype(int).tolist()
    [1, 0, 0, 0, 1, 0]

  References:
    Liu et al., "From Reusing to Forecasting: Accelerating Diffusion Models with
    TaylorSeers", ICCV 2025, arXiv:2503.06923 (Eqs. 8-9).
  """

  interval: int = 4
  order: int = 2
  variant: str = "step"

  def __post_init__(self):
    set_ = lambda name, v: object.__setattr__(self, name, v)
    set_("interval", check_scalar("interval", self.interval, lo=1, integer=True, static=True))
    set_("order", check_scalar("order", self.order, lo=0, integer=True, static=True))
    check_choice("variant", self.variant, ("step", "t"))

  def full_steps(self, num_steps: int) -> np.ndarray:
    return _every(self.interval, num_steps)

  def position(self, step, t):
    return t if self.variant == "t" else step

  def init(self, feature):
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


def taylorseer(interval: int = 4, order: int = 2, *, variant: str = "step") -> TaylorSeer:
  """TaylorSeer (Taylor forecast of order ``order``); see :class:`TaylorSeer`.

  Example:
    >>> from jaxdiff import caching
    >>> caching.taylorseer(interval=3, order=1).order
    1
  """
  return TaylorSeer(interval, order, variant)


@dataclasses.dataclass(frozen=True)
class ERTACache(_Reuse):
  r"""ERTACache: a profiled reuse schedule, residual rectification and step adjustment.

  Built by :func:`ertacache`, which profiles the full-computation trajectory offline
  (see there). With the schedule ``full``, at a reuse step :math:`i` after the last full
  step :math:`k` the features are the cached ones with the closed-form linear correction
  of the cache-induced error (``variant`` ``"both"`` or ``"rectify"``),

  .. math:: \hat F(i) = (1 + a_i)\,F(k),

  and the output is moved along the step's direction by the trajectory-aware coefficient
  :math:`\phi_i` (``"both"`` or ``"adjust"``):

  .. math:: \hat x_0 \leftarrow x + \phi_i\,(\hat x_0 - x).

  For the flow schedule's Euler/DDIM step, scaling :math:`\hat x_0 - x` by
  :math:`\phi_i` is exactly scaling the velocity, i.e. the integration interval
  :math:`\Delta t \to \phi_i \Delta t` of the paper's timestep adjustment; for other
  schedules it is the same correction in the data-prediction form. ``variant="none"``
  is the profiled schedule with plain reuse. ``gain`` and ``phi`` hold
  :math:`a_i` and :math:`\phi_i` per step (0 and 1 at full steps).

  Example:
    >>> from jaxdiff import caching
    >>> rule = caching.ERTACache(full=(True, False, True), gain=(0.0, 0.1, 0.0),
    ...                          phi=(1.0, 0.9, 1.0))
    >>> rule.full_steps(3).tolist()
    [True, False, True]

  References:
    Peng et al., "ERTACache: Error Rectification and Timesteps Adjustment for Efficient
    Diffusion", arXiv:2508.21091.
  """

  full: tuple[bool, ...]
  gain: tuple[float, ...]
  phi: tuple[float, ...]
  variant: str = "both"

  def __post_init__(self):
    check_choice("variant", self.variant, ERTA_VARIANTS)
    full = tuple(bool(v) for v in np.asarray(self.full, bool).reshape(-1))
    if not full or not full[0]:
      raise ValueError(f"full must be a non-empty schedule whose first step is full, got {full}")
    object.__setattr__(self, "full", full)
    for name in ("gain", "phi"):
      v = np.asarray(getattr(self, name), np.float64).reshape(-1)
      if v.shape != (len(full),) or not np.isfinite(v).all():
        raise ValueError(f"{name} must hold {len(full)} finite numbers (one per step), got {v}")
      object.__setattr__(self, name, tuple(float(e) for e in v))

  def full_steps(self, num_steps: int) -> np.ndarray:
    if num_steps != len(self.full):
      raise ValueError(
        f"cache: this ertacache schedule was profiled for {len(self.full)} steps, the grid "
        f"has {num_steps}"
      )
    return np.asarray(self.full)

  def predict(self, state, pos):
    if self.variant not in ("both", "rectify"):
      return state
    return state * (1 + jnp.asarray(self.gain, state.dtype)[pos])

  def adjust(self, x0, x, step):
    if self.variant not in ("both", "adjust"):
      return x0
    return x + jnp.asarray(self.phi, x.dtype)[step] * (x0 - x)


ERTA_VARIANTS = ("both", "rectify", "adjust", "none")


def _append(items: list, value):
  items.append(value)
  return value


def check_rule(cache) -> None:
  if not isinstance(cache, CacheRule):
    raise TypeError(
      "cache must be a jaxdiff cache rule (caching.fora(...), caching.taylorseer(...), "
      f"caching.ertacache(...)) or None, got {type(cache).__name__}"
    )


class CachedDenoiser:
  """``denoise`` with its block branches served from the rule's cache (see the module).

  The sampler calls :meth:`begin` at each step, :meth:`load` / :meth:`state` around
  every traced region that evaluates the network (so the slots' new state leaves each
  ``lax.cond`` branch as an output), and reads the counts from the state.
  """

  def __init__(self, rule: CacheRule, denoise, ts, batch: int):
    self.rule = rule
    self.batch = batch  # x_T's: a call on a (2B, ...) CFG batch is two evaluations
    self._denoise = denoise
    inner = getattr(denoise, "__wrapped__", denoise)
    self.net = cacheable_net(inner)
    self._wrapper = inner if self.net is not inner else None
    self.full = jnp.asarray(rule.full_steps(ts.num_steps))
    self.ts = ts
    self.__wrapped__ = inner
    self._slots: list | None = None  # None: the counting pass (shapes only)
    self._shapes: list = []

  def __getattr__(self, name):
    return getattr(self._denoise, name)

  # -- the network, in pieces ------------------------------------------------------------
  def _run(self, x, t, cond, perturb, branch_fn):
    """Network output with every branch value produced by ``branch_fn(k, h, branch)``."""
    net = self.net
    h, c, aux = net.encode(x, t, cond)
    pag = getattr(net, "pag_layers", range(len(net.blocks)))
    k = 0
    for ell, block in enumerate(net.blocks):
      p = perturb if ell in pag else None
      for gate, branch in block.residual_branches(c):
        h = h + gate[:, None, :] * branch_fn(k, h, lambda h, branch=branch, p=p: branch(h, p))
        k += 1
    return net.readout(h, c, aux, x)

  def _features(self, x, t, cond, perturb):
    feats = []
    self._run(x, t, cond, perturb, lambda k, h, branch: _append(feats, branch(h)))
    return feats

  def _output(self, out, x, t):
    if self._wrapper is None:
      return out.astype(x.dtype)
    w = self._wrapper
    return Wrapped(lambda *_, **__: out, w.schedule, w.prediction)(x, t)

  # -- the sampler's side ------------------------------------------------------------------
  def init_state(self):
    """Zero state for every slot the counting pass saw, and the partial-call counter."""
    slots = [[self.rule.init(f) for f in feats] for feats in self._shapes]
    return slots, jnp.zeros((), jnp.int32)

  def begin(self, state, step):
    self._step = step
    self._slot = 0
    self.load(state)

  def load(self, state):
    self._slots, self._partial = (None, None) if state is None else state
    if state is not None:
      self._slots = list(self._slots)
    self._trace = _trace_state(convention="jaxdiff")

  def state(self):
    return None if self._slots is None else (self._slots, self._partial)

  def __call__(self, x, t, cond=None, **kwargs):
    perturb = kwargs.pop("perturb", None)
    if kwargs:
      raise TypeError(f"cache: the cached denoiser takes only `perturb`, got {sorted(kwargs)}")
    if _trace_state(convention="jaxdiff") != self._trace:
      # A call from inside the guidance rule's own control flow or probes (adaptive
      # guidance's lax.cond, PAG's eval_shape check): the full network, no slot, since
      # its state could not leave that trace.
      return self._denoise(x, t, cond, **({} if perturb is None else {"perturb": perturb}))
    slot = self._slot
    self._slot += 1
    if self._slots is None:  # counting pass (shapes only): record the slot's features
      self._shapes.append(jax.eval_shape(lambda x: self._features(x, t, cond, perturb), x))
      return self._denoise(x, t, cond, **({} if perturb is None else {"perturb": perturb}))
    if slot >= len(self._slots):
      raise TypeError("cache: the number of network calls per step changed between steps")
    i = self._step
    pos = self.rule.position(i, self.ts.t[i])
    states = self._slots[slot]

    def full(states):
      feats = []
      out = self._run(x, t, cond, perturb, lambda k, h, branch: _append(feats, branch(h)))
      new = [self.rule.refresh(s, f, pos) for s, f in zip(states, feats)]
      return out, new

    def reuse(states):
      out = self._run(x, t, cond, perturb, lambda k, h, branch: self.rule.predict(states[k], pos))
      return out, states

    out, new = jax.lax.cond(self.full[i], full, reuse, states)
    x0 = self._output(out, x, t)
    if type(self.rule).adjust is not CacheRule.adjust:
      x0 = jnp.where(self.full[i], x0, self.rule.adjust(x0, x, i))
    self._slots[slot] = new
    evaluations = max(x.shape[0] // self.batch, 1)
    self._partial = self._partial + jnp.where(self.full[i], 0, evaluations).astype(jnp.int32)
    return x0


def ertacache(
  denoise,
  solver,
  x_T: Array,
  ts,
  *,
  key,
  cond: Any = None,
  threshold: float = 0.1,
  variant: str = "both",
) -> ERTACache:
  r"""Profiles a denoiser/solver/grid offline and returns the :class:`ERTACache` rule.

  The calibration run is the full-computation sampler from ``x_T`` (conditional calls
  only, no guidance), giving states :math:`x_i` and features :math:`F(i)` (every block's
  residual branches). Then, step by step (``k`` the last full step; step 0 is full):

  1. residual profiling: the reuse error the cache would make,
     :math:`e_i = \|F(i) - F(k)\|_1 / \|F(i)\|_1` (summed over branches and the batch);
     step :math:`i` reuses if :math:`e_i \le` ``threshold``, else it is full (``k = i``);
  2. residual linearization: at a reuse step, the closed-form least-squares gain of the
     additive error along the cached features,
     :math:`a_i = \langle F(i) - F(k), F(k)\rangle / \|F(k)\|^2`;
  3. timestep adjustment: with :math:`\tilde x_0` the output at :math:`x_i` from the
     rectified cache and :math:`x_0` the full one, the closed-form
     :math:`\phi_i = \langle x_0 - x_i, \tilde x_0 - x_i\rangle / \|\tilde x_0 - x_i\|^2`
     (the step-size scale that best matches the full step, see :class:`ERTACache`).

  Assumptions (the official code was not available here): the error is measured on the
  same per-block branch features the other rules cache (the paper caches the
  transformer's residual output), the criterion is the direct reuse error against the
  last full step (not a running sum), and the coefficients are pooled over the
  calibration batch.

  Args:
    denoise: a cacheable denoiser (see :mod:`jaxdiff.caching`).
    solver, x_T, ts, key, cond: the calibration run, as for :func:`jaxdiff.sample`.
    threshold: relative L1 reuse error allowed (``>= 0``; 0 reuses only identical steps).
    variant: corrections applied, ``"both"``, ``"rectify"``, ``"adjust"`` or ``"none"``.

  Returns:
    An :class:`ERTACache` rule for grids of ``ts.num_steps`` steps.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxdiff import caching, from_v, schedules, solvers
    >>> from jaxdiff.models import DigitDenoiser
    >>> sched = schedules.vp_cosine()
    >>> den = from_v(DigitDenoiser(dim=8, depth=1, num_heads=2, rngs=nnx.Rngs(0)), sched)
    >>> ts = schedules.timesteps(sched, 3)
    >>> x_T = jax.random.normal(jax.random.key(0), (2, 8, 8))
    >>> rule = caching.ertacache(den, solvers.ddim(), x_T, ts, key=0, cond=jnp.array([1, 2]))
    >>> len(rule.full), rule.full[0]
    (3, True)

  References:
    Peng et al., "ERTACache: Error Rectification and Timesteps Adjustment for Efficient
    Diffusion", arXiv:2508.21091 (offline residual profiling, trajectory-aware timestep
    adjustment, closed-form residual linearization).
  """
  from jaxdiff._sampling import sample  # the sampler imports this module

  check_cacheable(denoise)
  threshold = check_scalar("threshold", threshold, lo=0.0, static=True)
  check_choice("variant", variant, ERTA_VARIANTS)
  probe = CachedDenoiser(Fora(1), denoise, ts, x_T.shape[0])
  traj = sample(denoise, solver, x_T, ts, key=key, cond=cond, return_trajectory=True).trajectory

  @jax.jit
  def features(x, t):
    return probe._features(x, t, cond, None)

  @jax.jit
  def outputs(x, t, feats, scale):
    out = probe._run(x, t, cond, None, lambda k, h, branch: scale * feats[k])
    return probe._output(out, x, t), probe._output(
      probe._run(x, t, cond, None, lambda k, h, branch: branch(h)), x, t
    )

  dot = lambda a, b: sum(float(jnp.vdot(u, v)) for u, v in zip(a, b))
  l1 = lambda a: sum(float(jnp.sum(jnp.abs(u))) for u in a)
  n = ts.num_steps
  full, gain, phi = [True], [0.0], [1.0]
  cached = None
  for i in range(n):
    x, t = traj[i], jnp.full((x_T.shape[0],), ts.t[i])
    feats = features(x, t)
    if i == 0:
      cached = feats
      continue
    diff = [f - c for f, c in zip(feats, cached)]
    if l1(diff) > threshold * l1(feats):
      full.append(True), gain.append(0.0), phi.append(1.0)
      cached = feats
      continue
    a = dot(diff, cached) / max(dot(cached, cached), np.finfo(np.float32).tiny)
    rectified, exact = outputs(x, t, cached, 1.0 + a)
    u, w = exact - x, rectified - x
    p = float(jnp.vdot(u, w)) / max(float(jnp.vdot(w, w)), np.finfo(np.float32).tiny)
    full.append(False), gain.append(a), phi.append(p)
  return ERTACache(tuple(full), tuple(gain), tuple(phi), variant)


def call_flops(denoise, x: Array, t: Array, cond: Any = None) -> tuple[float, float]:
  """XLA's FLOP count of one full and one partial (cached-branches) call of a cacheable
  ``denoise`` at ``(x, t, cond)``: what the FLOP ratios of the bench and the demo use."""
  check_cacheable(denoise)
  probe = CachedDenoiser(Fora(1), denoise, _OneStep(), x.shape[0])
  feats = probe._features(x, t, cond, None)

  def flops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])

  full = flops(lambda x, t: probe._run(x, t, cond, None, lambda k, h, b: b(h)), x, t)
  part = flops(lambda x, t, f: probe._run(x, t, cond, None, lambda k, h, b: f[k]), x, t, feats)
  return full, part


class _OneStep:
  num_steps = 1
  t = None
