"""Values at non-default settings, where the value is known in closed form.

The fast tests of a hyperparameter at its default (DDIM's eta at 0 and 1, a cache
interval at 2, a short grid on which ``lower_order_final`` hides the sigma = 0 rule)
cannot tell it from a constant. Each test here sets it elsewhere and checks the value
against a formula written out in the test:

* DDIM at eta = 0.3 and 0.7: one step against Song et al. eq. 12/16 in float64;
* the exact last step of every solver of :data:`jaxdiff.solvers.REGISTRY` (every
  option that changes its order: ``lower_order_final``, ``order``, ``diffusers_compat``,
  ``eta``) on grids that end at sigma = 0: it is the first-order step to ``alpha x0``,
  with a network whose ``x0`` moves by O(1) between the last two evaluations, so a
  higher-order update would move the result by O(1);
* ``lower_order_final`` on a short grid ending at sigma > 0: the last step is the DDIM
  step (and is not with ``lower_order_final=False``);
* every cache rule of :mod:`jaxdiff.caching` at a non-default interval / warm-up /
  profiled schedule: which steps run the whole network, counted per step by a network
  that records its own evaluations, against the schedule its docstring and paper state;
* classifier guidance with ``guide_conditional=True`` (EluCD on a conditional model).
"""

from __future__ import annotations

import collections
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import Prediction, caching, guidance, schedules, solvers
from jaxdiff.caching import CacheRule
from tests.jaxdiff.guidance.testbed import ctx, step

# ---------------------------------------------------------------------------------------
# DDIM with 0 < eta < 1 (Song et al., arXiv:2010.02502, eq. 12 and 16).


def _song_ddim(x, x0, abar_t, abar_prev, eta, z):
  """One DDIM step from t to the previous time, in Song et al.'s alpha-bar notation."""
  sig = eta * np.sqrt((1 - abar_prev) / (1 - abar_t)) * np.sqrt(1 - abar_t / abar_prev)  # eq. 16
  eps = (x - np.sqrt(abar_t) * x0) / np.sqrt(1 - abar_t)
  keep = np.sqrt(1 - abar_prev - sig**2)
  return np.sqrt(abar_prev) * x0 + keep * eps + sig * z, keep, sig  # eq. 12


@pytest.mark.parametrize("eta", [0.3, 0.7])
def test_ddim_step_at_eta_strictly_between_0_and_1_is_song_eq12(x64, eta):
  sched = schedules.vp_cosine()  # alpha^2 + sigma^2 = 1: alpha-bar = alpha^2
  ts = schedules.timesteps(sched, 4)
  rng = np.random.default_rng(0)
  x_a, x_b, x0 = rng.normal(size=(3, 3, 5))
  solver = solvers.ddim(eta=eta)
  key = jax.random.key(2)
  i = 1
  one_step = jax.jit(lambda x: solver.step(solver.init(x, ts), x, i, Prediction.of(x0), key)[0])
  run = lambda x: np.asarray(one_step(jnp.asarray(x)))
  abar_t, abar_prev = float(ts.alpha[i]) ** 2, float(ts.alpha[i + 1]) ** 2
  # Without assuming how the noise is drawn: at one key the noise is the same for both
  # inputs, so the difference of two steps is keep * (x_a - x_b) / sqrt(1 - abar_t).
  _, keep, sig = _song_ddim(x_a, x0, abar_t, abar_prev, eta, 0.0)
  assert sig > 0.05 and keep < np.sqrt(1 - abar_prev) - 1e-3  # the noise term matters
  np.testing.assert_allclose(
    run(x_a) - run(x_b), keep * (x_a - x_b) / np.sqrt(1 - abar_t), rtol=1e-10
  )
  # The whole step, with the solver's standard normal draw from its key.
  z = np.asarray(jax.random.normal(key, x_a.shape, jnp.float64))
  want, _, _ = _song_ddim(x_a, x0, abar_t, abar_prev, eta, z)
  np.testing.assert_allclose(run(x_a), want, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------
# The exact last step into sigma = 0, for every registered solver.


def _moving_denoiser(schedule):
  """x0 = x / 2 + logSNR(t) / 4 (logSNR clipped to [-20, 20]): the prediction moves by
  O(1) between the grid points of any grid, however they are spaced."""

  def denoise(x, t, cond):
    del cond
    t = jnp.reshape(t, (-1,) + (1,) * (x.ndim - 1))
    return 0.5 * x + 0.25 * jnp.clip(schedule.logsnr(t), -20.0, 20.0)

  return denoise


def _variants():
  """(id, solver) for every registry solver: its default and every option that changes
  the order of its steps."""
  out = []
  for name, spec in solvers.REGISTRY.items():
    options = inspect.signature(spec.factory).parameters
    kwargs = [{}]
    if "lower_order_final" in options:
      kwargs.append({"lower_order_final": False})
    if "order" in options:
      kwargs += [{"order": 1}, {"order": 3, "lower_order_final": False}]
    if "corrector" in options:
      kwargs.append({"corrector": False, "lower_order_final": False})
    if "diffusers_compat" in options:
      kwargs.append({"diffusers_compat": True, "lower_order_final": False})
    if "eta" in options:
      kwargs.append({"eta": 0.3})
    for kw in kwargs:
      label = ",".join(f"{k}={v}" for k, v in kw.items())
      out.append((f"{name}({label})", solvers.make(name, **kw)))
  return out


VARIANTS = _variants()
MULTISTEP = [v for v in VARIANTS if getattr(v[1], "lower_order_final", None) is not None]

# Grids that end at sigma = 0: the flow schedule to t = 0 and VP with a final step to
# sigma = 0 (EDM's denoise_to_zero). A multistep solver with lower_order_final (its
# default) runs on 16 steps, where that rule does not apply (it does below 15) and only
# the sigma = 0 rule makes the last step first order; one without it on the 6-step VP
# grid; the single-step solvers on the 6-step flow grid (from pure noise, alpha = 0).
ZERO_GRIDS = {
  "flow6": lambda: (schedules.flow(), schedules.timesteps(schedules.flow(), 6)),
  "flow16": lambda: (schedules.flow(), schedules.timesteps(schedules.flow(), 16)),
  "vp_to_zero6": lambda: (
    schedules.vp_cosine(),
    schedules.timesteps(schedules.vp_cosine(), 6, spacing="logsnr", denoise_to_zero=True),
  ),
}


def _zero_cases():
  cases = []
  for name, solver in VARIANTS:
    lof = getattr(solver, "lower_order_final", None)
    grid = "flow6" if lof is None else "flow16" if lof else "vp_to_zero6"
    cases.append(pytest.param(grid, solver, id=f"{grid}-{name}"))
  return cases


def _x_T():
  return jax.random.normal(jax.random.key(1), (4, 3), jnp.float64)


@pytest.mark.parametrize("grid, solver", _zero_cases())
def test_last_step_into_sigma_zero_is_exactly_alpha_times_x0(x64, grid, solver):
  sched, ts = ZERO_GRIDS[grid]()
  n = ts.num_steps
  assert float(ts.sigma[-1]) == 0.0
  den = _moving_denoiser(sched)
  out = jaxdiff.sample(den, solver, _x_T(), ts, key=jax.random.key(0), return_trajectory=True)
  traj = np.asarray(out.trajectory)
  x0_at = lambda i: np.asarray(den(jnp.asarray(traj[i]), jnp.full((4,), ts.t[i]), None))
  # The network's prediction moves by O(1) over the last steps: a second- or third-order
  # correction built from it would not vanish.
  assert np.min(np.abs(x0_at(n - 1) - x0_at(n - 2))) > 0.3
  np.testing.assert_allclose(np.asarray(out.x), float(ts.alpha[-1]) * x0_at(n - 1), rtol=1e-12)


# The SDE's first-order step is not DDIM's, and UniPC's corrector re-does x_{N-1} before
# the last step (the trajectory does not hold the point that step starts from).
LOF_CASES = [v for v in MULTISTEP if not v[1].stochastic and not getattr(v[1], "corrector", False)]


@pytest.mark.parametrize("name, solver", LOF_CASES, ids=[v[0] for v in LOF_CASES])
def test_lower_order_final_makes_the_last_step_of_a_short_grid_a_ddim_step(x64, name, solver):
  """On a grid of fewer than 15 steps ending at sigma > 0, ``lower_order_final`` (default
  True) makes the last step the first-order one; without it the step differs."""
  sched = schedules.vp_cosine()
  ts = schedules.timesteps(sched, 6, spacing="logsnr")
  n = ts.num_steps
  den = _moving_denoiser(sched)
  out = jaxdiff.sample(den, solver, _x_T(), ts, key=jax.random.key(0), return_trajectory=True)
  x = np.asarray(out.trajectory[n - 1])
  x0 = np.asarray(den(jnp.asarray(x), jnp.full((4,), ts.t[n - 1]), None))
  a0, s0, a1, s1 = (float(v) for v in (ts.alpha[n - 1], ts.sigma[n - 1], ts.alpha[n], ts.sigma[n]))
  ddim = a1 * x0 + s1 * (x - a0 * x0) / s0
  if solver.lower_order_final:
    np.testing.assert_allclose(np.asarray(out.x), ddim, rtol=1e-10, atol=1e-12)
  else:
    assert np.max(np.abs(np.asarray(out.x) - ddim)) > 1e-2


# ---------------------------------------------------------------------------------------
# Cache rules: which steps run the whole network.


class _CountingBlock:
  """One block with one gated residual branch whose value depends on the call's t; the
  branch records the t of every evaluation (a host callback runs only when the branch
  does: at a reuse step the cache serves it and nothing is recorded)."""

  def __init__(self, log):
    self.log = log

  def residual_branches(self, c):
    def branch(h, perturb):
      del perturb
      jax.debug.callback(lambda t: self.log.append(("branch", float(t))), c[0, 0])
      return jnp.broadcast_to(0.1 * c[:, None, :], h.shape)

    return [(jnp.ones_like(c), branch)]

  def __call__(self, h, c, perturb):
    for gate, branch in self.residual_branches(c):
      h = h + gate[:, None, :] * branch(h, perturb)
    return h


class _CountingNet:
  """The block interface (encode -> blocks -> readout) of the smallest transformer: tokens
  are ``x`` itself, the conditioning vector is ``t``; ``encode`` records every call."""

  def __init__(self):
    self.log = []
    self.blocks = (_CountingBlock(self.log),)

  def encode(self, x, t, cond):
    del cond
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    jax.debug.callback(lambda t: self.log.append(("call", float(t))), t[0])
    return x[:, None, :], jnp.broadcast_to(t[:, None], x.shape), None

  def readout(self, h, c, aux, x):
    del c, aux, x
    return 0.9 * h[:, 0, :]

  def __call__(self, x, t, cond=None):
    h, c, aux = self.encode(x, t, cond)
    for block in self.blocks:
      h = block(h, c, None)
    return self.readout(h, c, aux, x)


N_CACHE = 9


def _erta_schedule():
  return (True, False, False, True, False, True, False, False, False)


# For every rule: the rule at a non-default setting and the full steps its docstring (and
# paper) state, written out here from the formula, not from ``rule.full_steps``.
CACHE_CASES = {
  # FORA (Selvaraju et al., Sec. 3): full every N steps from the first, i mod N = 0.
  "fora3": (caching.Fora, lambda: caching.fora(3), [i % 3 == 0 for i in range(N_CACHE)]),
  "fora4": (caching.Fora, lambda: caching.fora(4), [i % 4 == 0 for i in range(N_CACHE)]),
  # TaylorSeer (official cal_type): i < w or (i - w + 1) mod N = 0.
  "taylorseer3_w2": (
    caching.TaylorSeer,
    lambda: caching.taylorseer(3, 1),
    [i < 2 or (i - 1) % 3 == 0 for i in range(N_CACHE)],
  ),
  "taylorseer4_w1": (
    caching.TaylorSeer,
    lambda: caching.taylorseer(4, 2, warmup=1),
    [i % 4 == 0 for i in range(N_CACHE)],
  ),
  "taylorseer2_w3": (
    caching.TaylorSeer,
    lambda: caching.taylorseer(2, 0, warmup=3),
    [i < 3 or (i - 2) % 2 == 0 for i in range(N_CACHE)],
  ),
  # ERTACache: the profiled schedule it is given.
  "ertacache": (
    caching.ERTACache,
    lambda: caching.ERTACache(
      full=_erta_schedule(), gain=np.zeros(N_CACHE), phi=np.ones(N_CACHE), variant="none"
    ),
    list(_erta_schedule()),
  ),
}


def test_every_cache_rule_has_a_schedule_case():
  rules = {
    getattr(caching, n)
    for n in caching.__all__
    if inspect.isclass(getattr(caching, n))
    and issubclass(getattr(caching, n), CacheRule)
    and getattr(caching, n) is not CacheRule
  }
  assert rules and rules <= {case[0] for case in CACHE_CASES.values()}


def _per_time(log, kind, ts):
  """Counts of the recorded evaluations of ``kind`` at each grid point."""
  times = np.asarray(ts.t)
  counts = collections.Counter(int(np.argmin(np.abs(times - t))) for k, t in log if k == kind)
  return [counts.get(i, 0) for i in range(len(times))]


@pytest.mark.parametrize("case", CACHE_CASES)
def test_cache_rule_runs_the_whole_network_exactly_at_its_full_steps(case):
  _, build, full = CACHE_CASES[case]
  full = np.asarray(full, int)
  assert 0 < full.sum() < N_CACHE  # the case tells full steps from reused ones
  net = _CountingNet()
  ts = schedules.timesteps(schedules.vp_cosine(), N_CACHE)
  x_T = jax.random.normal(jax.random.key(0), (2, 3))
  out = jaxdiff.sample(net, solvers.ddim(), x_T, ts, key=0, cache=build())
  jax.effects_barrier()
  calls, branches = _per_time(net.log, "call", ts), _per_time(net.log, "branch", ts)
  assert calls == [1] * N_CACHE + [0]  # one network call per step, at t_i
  assert branches == full.tolist() + [0]  # the whole network exactly at the full steps
  assert (int(out.nfe), int(out.stats["full_nfe"])) == (N_CACHE, int(full.sum()))
  assert np.isfinite(np.asarray(out.x)).all()


@pytest.mark.parametrize("case", ["fora3", "taylorseer3_w2"])
def test_cache_schedule_holds_for_both_calls_of_a_two_stage_step(case):
  """Heun calls the network at t_i and t_{i+1} in step i: both calls are full exactly when
  step i is, so the branch evaluations at t_k are full[k] + full[k - 1]."""
  _, build, full = CACHE_CASES[case]
  full = np.asarray(full, int)
  net = _CountingNet()
  ts = schedules.timesteps(schedules.vp_cosine(), N_CACHE)  # sigma > 0 at every point
  x_T = jax.random.normal(jax.random.key(0), (2, 3))
  out = jaxdiff.sample(net, solvers.heun(), x_T, ts, key=0, cache=build())
  jax.effects_barrier()
  want = np.concatenate([full, [0]]) + np.concatenate([[0], full])
  assert _per_time(net.log, "branch", ts) == want.tolist()
  assert int(out.stats["full_nfe"]) == 2 * int(full.sum())


# ---------------------------------------------------------------------------------------
# Classifier guidance on a conditional model (guide_conditional=True; default False).


def test_classifier_guide_conditional_guides_the_conditional_prediction(x64):
  rng = np.random.default_rng(4)
  w = rng.normal(size=(2, 3))
  x0c, x0u = rng.normal(size=(2, 4, 2))
  den = lambda x, t, c: jnp.where((c >= 0)[:, None], jnp.asarray(x0c), jnp.asarray(x0u))
  cond = jnp.array([0, 2, 1, 2])
  s = 1.5
  c = ctx(0.4)
  for conditional, x0 in ((True, x0c), (False, x0u)):
    rule = guidance.classifier(lambda z: z @ jnp.asarray(w), 3, s, guide_conditional=conditional)
    pred, _, nfe = step(rule, den, jnp.zeros((4, 2)), cond, c)
    # g = grad_z log softmax(z W)_y at z = x0 (tau_1 = tau_2 = 1, kappa = 0).
    logits = x0 @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = w[:, np.asarray(cond)].T - p @ w.T
    coef = s * float(c.sigma) ** 2 / float(c.alpha)
    np.testing.assert_allclose(np.asarray(pred.x0), x0 + coef * g, rtol=1e-10)
    assert int(nfe) == 1
