"""The sampling loop: one jitted ``lax.scan`` wiring denoiser -> guidance -> solver."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import _caching
from jaxdiff._correctors import Corrector
from jaxdiff._schedules import Grid, validate_grid
from jaxdiff._solvers._base import Solver
from jaxdiff._timeshift import TimeShift
from jaxdiff._types import GuidanceRule, Prediction, StepContext
from jaxdiff._validation import as_key, check_flag, check_labels

Array = jax.Array


class SampleResult(NamedTuple):
  """What :func:`sample` returns.

  Attributes:
    x: the final sample, shape and dtype of ``x_T``.
    nfe: int32 scalar, network evaluations per sample actually made (a CFG step counts 2).
    trajectory: ``(N + 1, *x_T.shape)`` states ``x_T, x_1, ..., x_N`` if requested, else None.
  """

  x: Array
  nfe: Array
  trajectory: Array | None


class CachedSampleResult(NamedTuple):
  """What :func:`sample` returns with a ``cache``: :class:`SampleResult`'s fields, then
  ``full_nfe``, the evaluations that ran the whole network (int32 scalar). ``nfe`` counts
  every evaluation as before; ``nfe - full_nfe`` are the partial ones (embedding, gates
  and readout around cached block features)."""

  x: Array
  nfe: Array
  trajectory: Array | None
  full_nfe: Array


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


def _unbox(tree):
  is_static = lambda leaf: isinstance(leaf, _Static)
  return jax.tree.map(lambda leaf: leaf.value if is_static(leaf) else leaf, tree, is_leaf=is_static)


def _plain_call(denoise, x, cond, ctx: StepContext, gstate):
  t = jnp.broadcast_to(ctx.t, (x.shape[0],))
  return Prediction.of(denoise(x, t, cond)), gstate, jnp.ones((), jnp.int32)


def _check_seams(corrector, time_shift, ts, cache=None, denoise=None) -> None:
  if cache is not None:
    _caching.check_rule(cache)
    _caching.check_cacheable(denoise)
  if corrector is not None and not isinstance(corrector, Corrector):
    raise TypeError(
      "corrector must be a jaxdiff corrector (e.g. correctors.langevin()) or None, got "
      f"{type(corrector).__name__}"
    )
  if time_shift is not None:
    if not isinstance(time_shift, TimeShift):
      raise TypeError(
        "time_shift must be a jaxdiff.time_shift(...) rule or None, got "
        f"{type(time_shift).__name__}"
      )
    if all(not isinstance(v, jax.core.Tracer) for v in ts):
      time_shift.check_grid(ts)


def _check_inputs(denoise, solver, x_T, ts, cond, guidance, return_trajectory):
  if not callable(denoise):
    raise TypeError(f"denoise must be callable denoise(x, t, cond), got {type(denoise).__name__}")
  if not isinstance(solver, Solver):
    raise TypeError(
      f"solver must be a jaxdiff solver (e.g. solvers.ddim()), got {type(solver).__name__}"
    )
  if guidance is not None and not isinstance(guidance, GuidanceRule):
    raise TypeError(f"guidance must be a GuidanceRule or None, got {type(guidance).__name__}")
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
  batch = x_T.shape[0]
  for path, leaf in jax.tree_util.tree_leaves_with_path(cond):
    shape = jnp.shape(leaf)
    if len(shape) < 1 or shape[0] != batch:
      raise ValueError(
        f"cond{jax.tree_util.keystr(path)} must be batch-first with leading size {batch} "
        f"(like x_T), got shape {shape}"
      )
  # The denoiser and the guidance rule may each declare num_classes (jaxdiff._types).
  for num_classes in (
    getattr(denoise, "num_classes", None),
    getattr(guidance, "num_classes", None),
  ):
    if isinstance(num_classes, int) and isinstance(cond, (jax.Array, np.ndarray)):
      check_labels("cond", cond, num_classes, allow_null=True)


class _Checked:
  """``denoise`` wrapped so that every call's output is checked against its ``x`` (trace time)."""

  def __init__(self, denoise):
    self._denoise = denoise
    self.__wrapped__ = denoise  # inspect.signature sees the real denoiser (PAG's check)

  def __getattr__(self, name):
    return getattr(self._denoise, name)

  def __call__(self, x, t, cond=None, **kwargs):
    out = self._denoise(x, t, cond, **kwargs)
    if not isinstance(out, jax.Array):
      raise TypeError(
        f"denoise(x, t, cond) must return one array shaped like x {tuple(x.shape)}, got "
        f"{type(out).__name__}"
        + ("" if jax.tree_util.treedef_is_leaf(jax.tree.structure(out)) else " (a pytree)")
      )
    if out.shape != x.shape or out.dtype != x.dtype:
      raise ValueError(
        f"denoise(x, t, cond) must return x's shape and dtype {tuple(x.shape)} {x.dtype} "
        f"(no broadcasting), got {tuple(out.shape)} {out.dtype}"
      )
    return out


def _check_prediction(pred, x) -> None:
  """The rule's prediction is shaped like the state (trace time; no broadcasting)."""
  if not isinstance(pred, Prediction):
    raise TypeError(
      f"guidance.apply must return (Prediction, state, nfe), got {type(pred).__name__}"
    )
  for name, leaf in pred._asdict().items():
    if getattr(leaf, "shape", None) != x.shape:
      raise ValueError(
        f"guidance: the rule's Prediction.{name} must have x_T's shape {tuple(x.shape)}, got "
        f"{getattr(leaf, 'shape', type(leaf).__name__)}"
      )


def sample(
  denoise,
  solver: Solver,
  x_T: Array,
  ts: Grid,
  *,
  key: Array,
  cond: Any = None,
  guidance: GuidanceRule | None = None,
  return_trajectory: bool = False,
  corrector: Corrector | None = None,
  time_shift: TimeShift | None = None,
  cache: _caching.CacheRule | None = None,
) -> SampleResult | CachedSampleResult:
  r"""Runs a whole sampling trajectory in one jitted ``lax.scan``.

  At each of the ``N = ts.num_steps`` steps and each of the solver's stages ``j``, the
  loop builds a :class:`~jaxdiff.StepContext` at grid point ``i + solver.stage_offsets[j]``,
  asks the guidance rule for a :class:`~jaxdiff.Prediction` (``guidance=None``: one plain
  conditional call ``denoise(x, t, cond)``), and feeds it to ``solver.step``:

  .. math::
    (\hat x_0, \hat x_0^{\text{renoise}}), s_g, n \leftarrow
      \text{guidance}(D, x_i, c, \text{ctx}_i, s_g),\qquad
    x_{i+1}, s \leftarrow \text{solver.step}(s, x_i, i, \text{pred}) .

  Two optional seams wrap this (``None``: the base sampler, bit for bit, as the seam is
  not traced). ``time_shift`` (:func:`jaxdiff.time_shift`) chooses the time of the
  first stage's evaluation from the state ``x_i`` and hands the solver the noise
  direction seen from there (Time-Shift sampling). ``corrector``
  (:mod:`jaxdiff.correctors`) runs after the solver step at grid point ``i + 1`` when
  :math:`\sigma_{i+1} > 0`, with its own evaluations through the same guidance rule:

  .. math::
    x_{i+1}, s_c, s_g, n_c \leftarrow \text{corrector}(D_g, x_{i+1}, \text{ctx}_{i+1}, s_c, s_g) .

  A third seam, ``cache`` (:mod:`jaxdiff.caching`: FORA, TaylorSeer, ERTACache), wraps
  the network itself, ``grid -> [cache o network] -> guidance``: at the steps the rule
  marks as reuse, every transformer block's residual branches come from the rule's
  cache (carried through the scan, one slot per network call within a step) instead of
  being computed; the denoiser must expose the features (:mod:`jaxdiff._caching`), and
  the result is a :class:`CachedSampleResult` that also counts the full evaluations.

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
    guidance: a :class:`~jaxdiff.GuidanceRule` or ``None``.
    return_trajectory: also return all intermediate states (a bool).
    corrector: a corrector from :mod:`jaxdiff.correctors` or ``None``; its evaluations
      are counted in ``nfe`` (none at a ``sigma = 0`` point).
    time_shift: a :func:`jaxdiff.time_shift` rule or ``None``.
    cache: a :mod:`jaxdiff.caching` rule or ``None`` (a denoiser without cacheable
      features raises ``TypeError``).

  Returns:
    A :class:`SampleResult` ``(x, nfe, trajectory)``; with a ``cache``, a
    :class:`CachedSampleResult` ``(x, nfe, trajectory, full_nfe)``.

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
    >>> out.x.shape, int(out.nfe)
    ((4, 1), 10)

  References:
    Lu et al., "DPM-Solver++", arXiv:2211.01095 (the multistep loop, Alg. 2);
    Karras et al., arXiv:2206.00364 (Alg. 1/2, stage skipping at sigma = 0);
    Song et al., arXiv:2011.13456 (predictor-corrector sampling).
  """
  _check_inputs(denoise, solver, x_T, ts, cond, guidance, return_trajectory)
  _check_seams(corrector, time_shift, ts, cache, denoise)
  key = as_key(key)
  if time_shift is not None and not time_shift.active:
    time_shift = None  # window = 0: exactly the base sampler
  parts = _box((denoise, solver, guidance, corrector, time_shift, cache))
  out = _sample_jit(parts, x_T, ts, key, cond, bool(return_trajectory))
  return SampleResult(*out) if cache is None else CachedSampleResult(*out)


@functools.partial(jax.jit, static_argnums=5)
def _sample_jit(parts, x_T, ts, key, cond, return_trajectory):
  denoise, solver, guidance, corrector, time_shift, cache = _unbox(parts)
  apply = _plain_call if guidance is None else guidance.apply
  cached = None if cache is None else _caching.CachedDenoiser(cache, denoise, ts, x_T.shape[0])
  # The cache state crosses every traced region that may call the network (a lax.cond
  # stage, the corrector) as an explicit input and output; () without a cache.
  load = (lambda kstate: None) if cached is None else cached.load
  save = (lambda: ()) if cached is None else cached.state
  # The output checks run while the loop is traced (once per compilation, before any
  # execution): an extra jax.eval_shape pass would trace the network a second time.
  denoise = _Checked(denoise if cached is None else cached)
  gstate = () if guidance is None else guidance.init(x_T, cond)
  n = ts.num_steps
  num_steps = jnp.asarray(n, jnp.int32)
  sstate = solver.init(x_T, ts)
  cstate = () if corrector is None else corrector.init(x_T)

  def body(carry, i):
    x, sstate, gstate, cstate, kstate, nfe = carry
    if cached is not None:
      cached.begin(kstate, i)
    step_key = jax.random.fold_in(key, i)
    for j in range(solver.stages):
      k_eval, k_solve = jax.random.split(jax.random.fold_in(step_key, j))
      idx = i + solver.stage_offsets[j]
      ctx = StepContext(ts.t[idx], ts.alpha[idx], ts.sigma[idx], i, num_steps, k_eval)

      def evaluate(x, sstate, gstate, kstate, ctx=ctx, k_solve=k_solve, j=j):
        load(kstate)
        if j == 0 and time_shift is not None:
          ctx_s, moved = time_shift.shifted_context(x, ctx, ts)
          pred, gstate, used = apply(denoise, x, cond, ctx_s, gstate)
          _check_prediction(pred, x)
          x = time_shift.equivalent_state(x, pred, ctx, ctx_s, moved)
        else:
          pred, gstate, used = apply(denoise, x, cond, ctx, gstate)
          _check_prediction(pred, x)
        x_new, sstate = solver.step(sstate, x, i, pred, k_solve, stage=j)
        return x_new, sstate, gstate, jnp.asarray(used, jnp.int32), save()

      if j == 0:
        x, sstate, gstate, used, kstate = evaluate(x, sstate, gstate, kstate)
      else:

        def skip(x, sstate, gstate, kstate):
          return x, sstate, gstate, jnp.zeros((), jnp.int32), kstate

        x, sstate, gstate, used, kstate = jax.lax.cond(
          solver.stage_active(sstate, i, j), evaluate, skip, x, sstate, gstate, kstate
        )
        load(kstate)
      nfe = nfe + used
    if corrector is not None:
      x, cstate, gstate, used, kstate = _correct(
        corrector,
        apply,
        denoise,
        cond,
        ts,
        i,
        num_steps,
        jax.random.fold_in(step_key, solver.stages),
        x,
        cstate,
        gstate,
        kstate,
        load,
        save,
      )
      nfe = nfe + used
    return (x, sstate, gstate, cstate, kstate, nfe), (x if return_trajectory else None)

  carry = (x_T, sstate, gstate, cstate, (), jnp.zeros((), jnp.int32))
  if cached is not None:
    # One shape-only pass over a step counts the network calls (slots) and their features.
    jax.eval_shape(body, carry[:4] + (None,) + carry[5:], jnp.zeros((), jnp.int32))
    carry = carry[:4] + (cached.init_state(),) + carry[5:]
  (x, _, _, _, kstate, nfe), traj = jax.lax.scan(body, carry, jnp.arange(n, dtype=jnp.int32))
  if return_trajectory:
    traj = jnp.concatenate([x_T[None], traj], axis=0)
  if cached is None:
    return x, nfe, traj
  return x, nfe, traj, nfe - kstate[1]


def _correct(
  corrector, apply, denoise, cond, ts, i, num_steps, key, x, cstate, gstate, kstate, load, save
):
  """The corrector at grid point ``i + 1``, skipped (no evaluation) where ``sigma = 0``."""
  k_eval, k_corr = jax.random.split(key)
  ctx = StepContext(ts.t[i + 1], ts.alpha[i + 1], ts.sigma[i + 1], i, num_steps, k_eval)

  def predict(x, gstate):
    pred, gstate, used = apply(denoise, x, cond, ctx, gstate)
    _check_prediction(pred, x)
    return pred, gstate, used

  def run(x, cstate, gstate, kstate):
    load(kstate)
    x_new, cstate, gstate, used = corrector.correct(predict, x, ctx, cstate, gstate, key=k_corr)
    return x_new.astype(x.dtype), cstate, gstate, jnp.asarray(used, jnp.int32), save()

  def skip(x, cstate, gstate, kstate):
    return x, cstate, gstate, jnp.zeros((), jnp.int32), kstate

  out = jax.lax.cond(ts.sigma[i + 1] > 0, run, skip, x, cstate, gstate, kstate)
  load(out[-1])
  return out
