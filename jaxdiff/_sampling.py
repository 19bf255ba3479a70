"""The sampling loop: one jitted ``lax.scan`` wiring denoiser -> guidance -> solver."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._caching import check_rule
from jaxdiff._correctors import Corrector, NoCorrector
from jaxdiff._grids import Grid, validate_grid
from jaxdiff._network import Network, NoCache
from jaxdiff._solvers._base import Solver
from jaxdiff._timeshift import NoShift, Shift
from jaxdiff._types import Conditional, GuidanceRule, Prediction, StepContext
from jaxdiff._validation import as_key, check_batch, check_flag, check_labels, check_output
from jaxdiff._wrappers import wrapper

Array = jax.Array


class SampleResult(NamedTuple):
  """What :func:`sample` returns, whatever the add-ons.

  Attributes:
    x: the final sample, shape and dtype of ``x_T``.
    nfe: int32 scalar, network evaluations per sample actually made (a CFG step counts 2).
    trajectory: ``(N + 1, *x_T.shape)`` states ``x_T, x_1, ..., x_N`` if requested, else None.
    stats: extra int32 counters, by name: ``"full_nfe"`` (the evaluations that ran the
      whole network, with a cache), the counters a denoiser reports (an early-exit
      network's ``"blocks"``); empty when there are none.
  """

  x: Array
  nfe: Array
  trajectory: Array | None
  stats: dict = {}

  @property
  def full_nfe(self) -> Array:
    """Deprecated: ``stats["full_nfe"]``."""
    warnings.warn(
      "SampleResult.full_nfe is deprecated; use result.stats['full_nfe'] (the attribute "
      "will be removed in the next release)",
      DeprecationWarning,
      stacklevel=2,
    )
    return self.stats["full_nfe"]


def _is_array(leaf) -> bool:
  return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


# The (denoiser, solver, guidance) triple is split the way equinox.filter_jit splits its
# arguments: array leaves are traced, everything else (callables, solver dataclasses,
# hyperparameters) is static and part of the compilation cache key. equinox is only a
# test dependency and nnx.jit would make the core import flax, so the filter is built
# on public jax API instead: each non-array leaf is boxed in `_Static`, registered with
# `jax.tree_util.register_static`, i.e. a pytree node without children whose value lives
# in the treedef. jit then hashes and compares it with the rest of the treedef; no
# static_argnums bookkeeping. A pytree denoiser (the Gaussian mixture's, a flax nnx
# module) thus shares one compilation across instances of the same structure, while a
# plain closure is static.
@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Static:
  # Equality is the field tuple's, which tries identity first: callables and solvers
  # compare cheaply and an object whose __eq__ is unusual still matches itself.
  value: Any


def _box(tree):
  return jax.tree.map(lambda leaf: leaf if _is_array(leaf) else _Static(leaf), tree)


def _is_number(leaf) -> bool:
  return isinstance(leaf, (int, float, complex)) and not isinstance(leaf, bool)


def _box_addons(tree):
  """Add-ons: array and number leaves are traced (a new scale does not recompile)."""
  keep = lambda leaf: _is_array(leaf) or _is_number(leaf)
  return jax.tree.map(lambda leaf: leaf if keep(leaf) else _Static(leaf), tree)


def _unbox(tree):
  is_static = lambda leaf: isinstance(leaf, _Static)
  return jax.tree.map(lambda leaf: leaf.value if is_static(leaf) else leaf, tree, is_leaf=is_static)


def _check_addons(guidance, corrector, time_shift, cache, ts, denoise, solver) -> None:
  if not isinstance(guidance, GuidanceRule):
    raise TypeError(
      f"guidance must be a GuidanceRule (e.g. guidance.cfg(3.0)), got {type(guidance).__name__}"
    )
  if not isinstance(corrector, Corrector):
    raise TypeError(
      "corrector must be a jaxdiff corrector (e.g. correctors.langevin()), got "
      f"{type(corrector).__name__}"
    )
  if not isinstance(time_shift, Shift):
    raise TypeError(
      f"time_shift must be a jaxdiff.time_shift(...) rule, got {type(time_shift).__name__}"
    )
  check_rule(cache)
  if not isinstance(cache, NoCache):
    from jaxdiff._caching import cacheable_net

    cacheable_net(denoise)
  time_shift.check_solver(solver)
  if all(not isinstance(v, jax.core.Tracer) for v in ts):
    time_shift.check_grid(ts)
  # Components built for one grid check it (the guidance rule; a denoiser or the network
  # inside its wrappers, which forward check_grid: jaxdiff._wrappers).
  guidance.check_grid(ts)
  check_grid = getattr(denoise, "check_grid", None)
  if callable(check_grid):
    check_grid(ts)


def _check_inputs(denoise, solver, x_T, ts, cond, guidance, return_trajectory):
  if not callable(denoise):
    raise TypeError(f"denoise must be callable denoise(x, t, cond), got {type(denoise).__name__}")
  if not isinstance(solver, Solver):
    raise TypeError(
      f"solver must be a jaxdiff solver (e.g. solvers.ddim()), got {type(solver).__name__}"
    )
  check_flag("return_trajectory", return_trajectory)
  if not isinstance(ts, Grid):
    raise TypeError(
      "ts must be a jaxdiff Grid (build one with timesteps(schedule, n) or "
      f"timesteps_from(schedule, t)), got {type(ts).__name__}"
    )
  validate_grid(ts)
  if all(not isinstance(v, jax.core.Tracer) for v in ts):
    solver.check_grid(ts)
  if not isinstance(x_T, (jax.Array, np.ndarray)) or x_T.ndim < 1:
    raise TypeError(
      f"x_T must be an array with a leading batch axis, got {type(x_T).__name__}"
      + (f" of shape {x_T.shape}" if hasattr(x_T, "shape") else "")
    )
  if not jnp.issubdtype(x_T.dtype, jnp.floating):
    raise TypeError(f"x_T must be floating point, got {x_T.dtype}")
  if x_T.size == 0:
    raise ValueError(f"x_T must hold at least one sample of non-zero size, got shape {x_T.shape}")
  check_batch(cond, x_T.shape[0], name="cond", like_name="x_T")
  # The denoiser and the guidance rule may each declare num_classes (jaxdiff._types).
  for num_classes in (
    getattr(denoise, "num_classes", None),
    getattr(guidance, "num_classes", None),
  ):
    if isinstance(num_classes, int) and isinstance(cond, (jax.Array, np.ndarray)):
      check_labels("cond", cond, num_classes, allow_null=True)


@wrapper(inner="_denoise", blocks=True)
class _Checked:
  """``denoise`` wrapped so that every call's output is checked against its ``x`` (trace time)."""

  def __init__(self, denoise):
    self._denoise = denoise
    self.__wrapped__ = denoise  # inspect.signature sees the real denoiser (PAG's check)

  def __getattr__(self, name):
    return getattr(self._denoise, name)

  @staticmethod
  def check_output(out, x) -> None:
    check_output(out, like=x, name="denoise(x, t, cond)")

  def __call__(self, x, t, cond=None, **kwargs):
    out = self._denoise(x, t, cond, **kwargs)
    self.check_output(out, x)
    return out

  def with_stats(self, x, t, cond=None, **kwargs):
    out, stats = self._denoise.with_stats(x, t, cond, **kwargs)
    self.check_output(out, x)
    return out, stats


def _check_prediction(pred, x) -> None:
  """The rule's prediction is shaped like the state (trace time; no broadcasting)."""
  if not isinstance(pred, Prediction):
    raise TypeError(
      "guidance: the rule's guide must return (Prediction, state, net) (a rule built "
      "from functions: its apply must return (Prediction, state, nfe)), got "
      f"{type(pred).__name__}"
    )
  for name, leaf in pred._asdict().items():
    if getattr(leaf, "shape", None) != x.shape:
      raise ValueError(
        f"guidance: the rule's Prediction.{name} must have x_T's shape {tuple(x.shape)}, got "
        f"{getattr(leaf, 'shape', type(leaf).__name__)}"
      )


# The do-nothing add-ons (immutable, so one instance serves every call).
_DEFAULTS = (Conditional(), NoCorrector(), NoShift(), NoCache())


def sample(
  denoise,
  solver: Solver,
  x_T: Array,
  ts: Grid,
  *,
  key: Array,
  cond: Any = None,
  guidance: GuidanceRule = _DEFAULTS[0],
  return_trajectory: bool = False,
  corrector: Corrector = _DEFAULTS[1],
  time_shift: Shift = _DEFAULTS[2],
  cache: Any = _DEFAULTS[3],
) -> SampleResult:
  r"""Runs a whole sampling trajectory in one jitted ``lax.scan``.

  At each of the ``N = ts.num_steps`` steps and each of the solver's stages ``j``, the
  loop builds a :class:`~jaxdiff.StepContext` at grid point ``i + solver.stage_offsets[j]``,
  asks the guidance rule for a :class:`~jaxdiff.Prediction` (default
  :class:`~jaxdiff.guidance.Conditional`: one plain conditional call
  ``denoise(x, t, cond)``), and feeds it to ``solver.step``:

  .. math::
    (\hat x_0, \hat x_0^{\text{renoise}}), s_g, n \leftarrow
      \text{guidance}(D, x_i, c, \text{ctx}_i, s_g),\qquad
    x_{i+1}, s \leftarrow \text{solver.step}(s, x_i, i, \text{pred}) .

  Every add-on (``guidance``, ``corrector``, ``time_shift``, ``cache``) is an immutable
  pytree with an ``init`` and a step method, plugged the same way, and each defaults to
  a do-nothing object (the base sampler, bit for bit, traces nothing of it). Their float
  hyperparameters are leaves: a new guidance scale, corrector ``snr`` or time-shift
  cutoff does not recompile, and neither does an equal add-on built again.
  ``time_shift`` (:func:`jaxdiff.time_shift`) chooses the time of the first stage's
  evaluation from the state ``x_i`` and hands the solver the noise direction seen from
  there (Time-Shift sampling). ``corrector`` (:mod:`jaxdiff.correctors`) runs after the
  solver step at grid point ``i + 1`` when :math:`\sigma_{i+1} > 0`, with its own
  evaluations through the same guidance rule:

  .. math::
    x_{i+1}, s_c, s_g, n_c \leftarrow \text{corrector}(D_g, x_{i+1}, \text{ctx}_{i+1}, s_c, s_g) .

  ``cache`` (:mod:`jaxdiff.caching`: FORA, TaylorSeer, ERTACache) wraps the network
  itself, ``grid -> [cache o network] -> guidance``: at the steps the rule marks as
  reuse, every transformer block's residual branches come from the rule's cache instead
  of being computed. The network reaches the guidance rule and the corrector as a
  :class:`~jaxdiff.Network`, whose calls return its new state explicitly (the counts and
  the cache's slots, one per declared network call of a step), and the loop carries it
  in its state :class:`LoopState`.

  Stages after the first run under a top-level ``lax.cond`` so that a skipped stage
  (Heun's last step) costs no evaluation; ``nfe`` sums what the rule reports, so it is
  exact also for data-dependent rules. The compiled loop is cached on the static parts
  (solver hyperparameters, denoiser/guidance callables, shapes): a new key, new ``x_T``
  or new array leaves of a pytree denoiser do not retrace.

  Inputs are checked before anything is compiled or run: ``denoise``, ``solver`` and
  ``guidance`` types, the grid, ``x_T`` (a floating array with a non-empty batch),
  ``cond`` (batch-first; integer labels range-checked when ``denoise`` declares
  ``num_classes``, see :mod:`jaxdiff._types`), ``key`` and ``return_trajectory`` (a bool).
  The outputs of ``denoise`` (one array of the calling ``x``'s shape and dtype, never
  broadcast) and of the guidance rule (a :class:`~jaxdiff.Prediction` shaped like
  ``x_T``) are checked while the loop is traced, i.e. once per compilation and before it
  runs; each error names the component at fault. Non-finite values in ``x_T`` propagate.

  Args:
    denoise: ``denoise(x, t, cond) -> x0_hat`` with ``t`` of shape ``(B,)``, returning
      ``x``'s shape and dtype; may declare ``num_classes`` (label range check).
    solver: a solver from :mod:`jaxdiff.solvers`.
    x_T: initial noise ``(B, ...)``, e.g. ``sigma(t_0) * normal`` for VE, ``normal`` for VP.
    ts: a :class:`~jaxdiff.schedules.Grid` (``timesteps`` or ``timesteps_from``).
    key: PRNG key: a typed key, a raw ``uint32`` key or an int seed (stochastic solvers
      and rules draw from per-step subkeys).
    cond: batch-first conditioning pytree or ``None``. Class labels: integers in
      ``[0, num_classes)``, ``-1`` = unconditional.
    guidance: a :class:`~jaxdiff.GuidanceRule` (``None``: the default).
    return_trajectory: also return all intermediate states (a bool).
    corrector: a corrector from :mod:`jaxdiff.correctors` (``None``: the default); its
      evaluations are counted in ``nfe`` (none at a ``sigma = 0`` point).
    time_shift: a :func:`jaxdiff.time_shift` rule (``None``: the default).
    cache: a :mod:`jaxdiff.caching` rule (``None``: the default; a denoiser without
      cacheable features raises ``TypeError``).

  Returns:
    A :class:`SampleResult` ``(x, nfe, trajectory, stats)``: ``stats["full_nfe"]`` with a
    cache, the counters a denoiser reports (an early-exit network's ``"blocks"``).

  Raises:
    TypeError, ValueError: naming the argument at fault (see above).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxdiff
    >>> from jaxdiff import schedules, solvers
    >>> from jaxdiff.testing import GaussianMixture
    >>> gmm = GaussianMixture(jnp.array([[-2.0], [2.0]]), 0.1)
    >>> sched = schedules.vp_cosine()
    >>> ts = schedules.timesteps(sched, 10, spacing="logsnr")
    >>> x_T = jax.random.normal(jax.random.key(0), (4, 1))
    >>> out = jaxdiff.sample(gmm.denoiser(sched), solvers.dpmpp_2m(), x_T, ts,
    ...                      key=jax.random.key(1))
    >>> out.x.shape, int(out.nfe), out.stats
    ((4, 1), 10, {})

  References:
    Lu et al., "DPM-Solver++", arXiv:2211.01095 (the multistep loop, Alg. 2);
    Karras et al., arXiv:2206.00364 (Alg. 1/2, stage skipping at sigma = 0);
    Song et al., arXiv:2011.13456 (predictor-corrector sampling).
  """
  guidance = Conditional() if guidance is None else guidance
  corrector = NoCorrector() if corrector is None else corrector
  time_shift = NoShift() if time_shift is None else time_shift
  cache = NoCache() if cache is None else cache
  _check_inputs(denoise, solver, x_T, ts, cond, guidance, return_trajectory)
  _check_addons(guidance, corrector, time_shift, cache, ts, denoise, solver)
  key = as_key(key)
  addons = _box_addons((guidance, corrector, time_shift, cache))
  x, nfe, traj, stats = _sample_jit(
    _box((denoise, solver)), addons, x_T, ts, key, cond, bool(return_trajectory)
  )
  return SampleResult(x, nfe, traj, stats)


class LoopState(NamedTuple):
  """The carry of :func:`sample`'s scan: the state, then each component's own state."""

  x: Array
  solver: Any
  guidance: Any
  corrector: Any
  net: Network


def _step_calls(guidance, solver, corrector) -> tuple[int, ...] | None:
  """The row multiples of the network calls one step makes, in order (``None``: unknown)."""
  if guidance.calls is None:
    return None
  return tuple(guidance.calls) * (solver.stages + corrector.evals_per_step)


@functools.partial(jax.jit, static_argnums=6)
def _sample_jit(parts, addons, x_T, ts, key, cond, return_trajectory):
  denoise, solver = _unbox(parts)
  guidance, corrector, time_shift, cache = _unbox(addons)
  fn = _Checked(denoise)
  calls = _step_calls(guidance, solver, corrector)
  per_call = 0 if guidance.calls is None else len(guidance.calls)
  # A rule that does not declare its calls (calls=None) gets the network uncached.
  net = Network.of(
    fn,
    batch=x_T.shape[0],
    cache=cache,
    cache_state=cache.init(fn, x_T, ts, cond, calls),
    live=calls is not None,
  )
  n = ts.num_steps
  num_steps = jnp.asarray(n, jnp.int32)

  def predict(x, ctx, aux):
    gstate, net = aux
    pred, gstate, net = guidance.guide(net, x, cond, ctx, gstate)
    _check_prediction(pred, x)
    return pred, (gstate, net)

  def skip(aux):  # a stage or corrector iteration that makes no call: its slots pass
    gstate, net = aux
    return gstate, net.skip_calls(per_call)

  def context(idx, i, k):
    return StepContext(ts.t[idx], ts.alpha[idx], ts.sigma[idx], i, num_steps, k)

  def body(carry: LoopState, i):
    x, sstate = carry.x, carry.solver
    aux = (carry.guidance, carry.net.at_step(i))
    step_key = jax.random.fold_in(key, i)
    for j in range(solver.stages):
      k_eval, k_solve = jax.random.split(jax.random.fold_in(step_key, j))
      ctx = context(i + solver.stage_offsets[j], i, k_eval)

      def evaluate(x, sstate, aux, ctx=ctx, k_solve=k_solve, j=j):
        if j == 0:
          pred, x, aux = time_shift.evaluate(predict, x, ctx, ts, aux)
        else:
          pred, aux = predict(x, ctx, aux)
        x_new, sstate = solver.step(sstate, x, i, pred, k_solve, stage=j)
        return x_new, sstate, aux

      if j == 0:
        x, sstate, aux = evaluate(x, sstate, aux)
      else:
        x, sstate, aux = jax.lax.cond(
          solver.stage_active(sstate, i, j),
          evaluate,
          lambda x, sstate, aux: (x, sstate, skip(aux)),
          x,
          sstate,
          aux,
        )
    k_eval, k_corr = jax.random.split(jax.random.fold_in(step_key, solver.stages))
    ctx = context(i + 1, i, k_eval)
    x, cstate, aux = corrector.run(
      lambda x, aux, ctx=ctx: _corrector_call(predict, x, ctx, aux),
      x,
      ctx,
      carry.corrector,
      aux,
      key=k_corr,
      skip=lambda aux: _skip_many(skip, aux, corrector.evals_per_step),
    )
    gstate, net = aux
    out = LoopState(x, sstate, gstate, cstate, net.at_step(i))  # the slots start again
    return out, (x if return_trajectory else None)

  init = LoopState(x_T, solver.init(x_T, ts), guidance.init(x_T, cond), corrector.init(x_T), net)
  final, traj = jax.lax.scan(body, init, jnp.arange(n, dtype=jnp.int32))
  if return_trajectory:
    traj = jnp.concatenate([x_T[None], traj], axis=0)
  return final.x, final.net.nfe, traj, final.net.stats


def _corrector_call(predict, x, ctx, aux):
  """The corrector's view of the loop's call: ``(Prediction, aux, nfe)``."""
  before = aux[1].nfe
  pred, aux = predict(x, ctx, aux)
  return pred, aux, aux[1].nfe - before


def _skip_many(skip, aux, n: int):
  for _ in range(n):
    aux = skip(aux)
  return aux
