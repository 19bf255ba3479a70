"""Feature caches (FORA, TaylorSeer, ERTACache): the ``cache`` seam of ``jaxdiff.sample``."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxdiff
from jaxdiff import caching, correctors, from_v, guidance, schedules, solvers
from jaxdiff.models import DigitDenoiser
from jaxdiff.testing import GaussianMixture

SCHED = schedules.vp_cosine()
LABELS = jnp.array([1, 2, -1, 7])


@pytest.fixture(scope="module")
def den():
  """A tiny DiT with random (not zero-initialised) weights: every branch matters."""
  net = DigitDenoiser(dim=8, depth=1, num_heads=2, mlp_ratio=1, rngs=nnx.Rngs(0))
  graph, state = nnx.split(net)
  leaves, treedef = jax.tree.flatten(state)
  rng = np.random.default_rng(1)
  leaves = [jnp.asarray(np.asarray(v) + 0.1 * rng.normal(size=v.shape), v.dtype) for v in leaves]
  return from_v(nnx.merge(graph, jax.tree.unflatten(treedef, leaves)), SCHED)


@pytest.fixture(scope="module")
def x_T():
  return jax.random.normal(jax.random.key(0), (4, 8, 8))


TS6 = schedules.timesteps(SCHED, 6)


@pytest.fixture(scope="module")
def base(den, x_T):
  """The base DDIM sampler on the 6-step grid (one compilation shared by the tests)."""
  return jaxdiff.sample(den, solvers.ddim(), x_T, TS6, key=0, cond=LABELS)


def _official_taylorseer(features, full, order):
  """float64 transcription of the official TaylorSeer recursion (dicts of factors,
  ``activated_steps``, ``derivative_approximation`` / ``taylor_formula``)."""
  cache, activated, out = {}, [], []
  for i, feature in enumerate(features):
    if full[i]:
      activated.append(i)
      new = {0: np.asarray(feature, np.float64)}
      for j in range(order):
        if cache.get(j) is None:
          break
        new[j + 1] = (new[j] - cache[j]) / (activated[-1] - activated[-2])
      cache = new
      out.append(new[0])
    else:
      dx = i - activated[-1]
      out.append(sum(cache[j] * dx**j / math.factorial(j) for j in range(len(cache))))
  return out


def _official_full_steps(num_steps, interval, first_enhance):
  """TaylorSeer-DiT's cal_type, in sampling order: the first ``first_enhance`` steps are
  full (the counter resets), then a step is full when the counter reaches interval - 1."""
  full, counter = [], 0
  for k in range(num_steps):
    if k < first_enhance or counter == interval - 1:
      full.append(True)
      counter = 0
    else:
      full.append(False)
      counter += 1
  return np.array(full)


@pytest.mark.parametrize("interval, warmup", [(4, 2), (3, 2), (5, 3), (2, 1), (1, 2)])
def test_taylorseer_full_steps_are_the_official_schedule(interval, warmup):
  rule = caching.taylorseer(interval, 1, warmup=warmup)
  np.testing.assert_array_equal(rule.full_steps(23), _official_full_steps(23, interval, warmup))
  assert caching.taylorseer(4, 1).full_steps(10).nonzero()[0].tolist() == [0, 1, 5, 9]


def test_taylorseer_forecast_equals_the_official_recursion_in_float64(x64):
  # Full at 0, 3, 6, 9: the third derivative is formed at step 9 (the ramp-up) and used
  # at steps 10, 11.
  order = 3
  rule = caching.taylorseer(interval=3, order=order, warmup=1)
  full = rule.full_steps(12)
  feats = np.random.default_rng(order).normal(size=(12, 5))
  want = _official_taylorseer(feats, full, order)
  state = rule.init_feature(jax.ShapeDtypeStruct((5,), jnp.float64))
  got = []
  for i in range(12):
    if full[i]:
      state = rule.refresh(state, jnp.asarray(feats[i]), i)
      got.append(state[0][0])
    else:
      got.append(rule.predict(state, i))
  np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-13, atol=1e-13)


def _ddim_with_taylorseer(den, x, ts, order, interval, warmup):
  """DDIM with the network run piece by piece (its encode / residual_branches / readout),
  the branch features at skipped steps from the float64 transcription above."""
  net, n = den.net, ts.num_steps

  def run(x, t, given):  # given: None (compute every branch) or the branch features
    h, c, aux = net.encode(x, t, LABELS)
    feats = []
    for block in net.blocks:
      for gate, branch in block.residual_branches(c):
        feats.append(branch(h, None) if given is None else given[len(feats)])
        h = h + gate[:, None, :] * feats[-1]
    return net.readout(h, c, aux, x), feats

  full_pass, reuse_pass = jax.jit(lambda x, t: run(x, t, None)), jax.jit(run)
  full = _official_full_steps(n, interval, warmup)
  history = []  # per step: the branch features (full steps) or None
  for i in range(n):
    t = jnp.full((x.shape[0],), ts.t[i])
    if full[i]:
      v, feats = full_pass(x, t)
      history.append([np.asarray(f, np.float64) for f in feats])
    else:
      history.append(None)
      feats = []
      for k in range(len(history[0])):
        seq = [None if h is None else h[k] for h in history]
        feats.append(jnp.asarray(_official_taylorseer(seq, full[: i + 1], order)[i], jnp.float32))
      v, _ = reuse_pass(x, t, feats)
    a, s = ts.alpha[i], ts.sigma[i]
    x0 = (a * x - s * v) / (a**2 + s**2)
    eps = (x - a * x0) / s
    x = ts.alpha[i + 1] * x0 + ts.sigma[i + 1] * eps
  return x


def test_sampler_with_taylorseer_equals_the_hand_written_cached_loop(den, x_T):
  # The official schedule: full at steps 0, 1 (warm-up), 3, 5; the reuse steps 2 and 4
  # forecast at order 1 and 2 (ramp-up).
  out = jaxdiff.sample(
    den, solvers.ddim(), x_T, TS6, key=0, cond=LABELS, cache=caching.taylorseer(2, 2)
  )
  want = _ddim_with_taylorseer(den, x_T, TS6, order=2, interval=2, warmup=2)
  np.testing.assert_allclose(out.x, want, rtol=2e-4, atol=2e-5)
  assert (int(out.nfe), int(out.stats["full_nfe"])) == (6, 4)


def test_cache_none_is_the_base_sampler_bit_for_bit():
  # The seam is left out of the trace (the pre-cache loop gave the same bits for
  # heun+corrector, dpmpp_2m+CFG and unipc); the result is the one SampleResult, no stats.
  den = GaussianMixture(np.array([[-2.0, 0.0], [2.0, 1.0]]), 0.2).denoiser(SCHED)
  x = jax.random.normal(jax.random.key(0), (4, 2))
  base = jaxdiff.sample(den, solvers.ddim(), x, TS6, key=0)
  off = jaxdiff.sample(den, solvers.ddim(), x, TS6, key=0, cache=None)
  assert type(off) is jaxdiff.SampleResult and off.stats == {}
  np.testing.assert_array_equal(off.x, base.x)


@pytest.mark.slow
@pytest.mark.parametrize("rule", [caching.fora(1), caching.taylorseer(1, 2)], ids=str)
def test_interval_one_is_the_base_sampler_bit_for_bit(den, x_T, base, rule):
  one = jaxdiff.sample(den, solvers.ddim(), x_T, TS6, key=0, cond=LABELS, cache=rule)
  np.testing.assert_array_equal(one.x, base.x)
  assert (int(one.nfe), int(one.stats["full_nfe"])) == (6, 6)


@pytest.mark.slow
def test_caches_compose_with_cfg_pag_heun_and_a_corrector_counting_full_and_partial(den, x_T):
  ts = schedules.timesteps(SCHED, 4)
  run = lambda solver, rule, **kw: jaxdiff.sample(
    den, solver, x_T, ts, key=0, cond=LABELS, cache=rule, **kw
  )
  # CFG: two evaluations per step, each with its own slot; full at steps 0 and 2.
  cfg = run(solvers.dpmpp_2m(), caching.fora(2), guidance=guidance.cfg(2.0))
  assert (int(cfg.nfe), int(cfg.stats["full_nfe"])) == (8, 4)
  pag = run(solvers.ddim(), caching.taylorseer(2, 1), guidance=guidance.pag(1.0))
  # TaylorSeer at interval 2 is full at 0, 1 (warm-up) and 3: 3 of 4 steps.
  assert (int(pag.nfe), int(pag.stats["full_nfe"])) == (8, 6) and np.isfinite(pag.x).all()
  # Heun (2 stages) + a Langevin move after each step (sigma > 0 at every grid point):
  # 3 calls (slots) per step, full at steps 0 and 2.
  heun = run(solvers.heun(), caching.fora(2), corrector=correctors.langevin(0.1))
  assert (int(heun.nfe), int(heun.stats["full_nfe"])) == (4 * 3, 2 * 3)
  assert np.isfinite(heun.x).all()
  # A rule that calls the network inside its own lax.cond (through Network.cond) gets the
  # full network there; so does one that declares no calls.
  ada = run(solvers.ddim(), caching.fora(2), guidance=guidance.adaptive(2.0, 0.99))
  assert int(ada.stats["full_nfe"]) == int(ada.nfe) and np.isfinite(ada.x).all()


@pytest.mark.slow
def test_erta_profile_schedule_and_coefficients(den, x_T):
  ts = schedules.timesteps(SCHED, 6)
  every = caching.ertacache(den, solvers.ddim(), x_T, ts, key=0, cond=LABELS, threshold=0.0)
  assert every.full == (True,) * 6  # nothing reusable at zero tolerance
  rule = caching.ertacache(den, solvers.ddim(), x_T, ts, key=0, cond=LABELS, threshold=1.0)
  assert rule.full == (True,) + (False,) * 5  # everything within 100% relative error
  assert all(g != 0 for g in rule.gain[1:]) and all(p > 0 for p in rule.phi[1:])
  # The corrections bring the cached run closer to the full one than plain reuse.
  base = jaxdiff.sample(den, solvers.ddim(), x_T, ts, key=0, cond=LABELS).x
  err = lambda r: float(
    jnp.linalg.norm(
      jaxdiff.sample(den, solvers.ddim(), x_T, ts, key=0, cond=LABELS, cache=r).x - base
    )
  )
  plain = caching.ERTACache(rule.full, rule.gain, rule.phi, variant="none")
  assert err(rule) < err(plain)


@pytest.mark.slow
def test_no_retrace_vmap_and_sharding_with_a_cache(den, mesh8):
  ts = schedules.timesteps(SCHED, 4)
  rule = caching.taylorseer(2, 1)
  run = lambda x, key, y: (
    jaxdiff.sample(den, solvers.dpmpp_2m(), x, ts, key=key, cond=y, cache=rule).x
  )
  x_T = jax.random.normal(jax.random.key(0), (8, 8, 8))
  y = jnp.arange(8) % 10
  single = run(x_T, 5, y)
  before = jaxdiff._sampling._sample_jit._cache_size()
  run(x_T + 1.0, 6, y)
  run(x_T, jax.random.key(7), (y + 1) % 10)
  assert jaxdiff._sampling._sample_jit._cache_size() == before
  sharded = run(jax.device_put(x_T, NamedSharding(mesh8, P("d"))), 5, y)
  np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-6)
  xs, ys = x_T.reshape(2, 4, 8, 8), y.reshape(2, 4)
  np.testing.assert_allclose(
    jax.vmap(lambda x, y: run(x, 5, y))(xs, ys),
    jnp.stack([run(x, 5, y) for x, y in zip(xs, ys)]),
    rtol=1e-5,
    atol=1e-6,
  )
