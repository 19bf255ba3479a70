"""The sampling loop: guidance contract, NFE accounting, trajectories, sharding, no retrace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxdiff
from jaxdiff import Prediction, guidance, schedules, solvers
from jaxdiff.testing import GaussianMixture

SCHED = schedules.vp_cosine()


def _manual_ddim(den, x, ts, cond):
  for i in range(ts.num_steps):
    x0 = den(x, jnp.full((x.shape[0],), ts.t[i]), cond)
    eps = (x - ts.alpha[i] * x0) / ts.sigma[i]
    x = ts.alpha[i + 1] * x0 + ts.sigma[i + 1] * eps
  return x


def test_loop_equals_a_hand_written_ddim_and_returns_the_trajectory(x64, gmm):
  ts = schedules.timesteps(SCHED, 7, spacing="logsnr")
  x_T = jax.random.normal(jax.random.key(0), (5, 2), jnp.float64)
  cond = jnp.array([0, 1, -1, 0, 1])
  out = jaxdiff.sample(
    gmm.denoiser(SCHED),
    solvers.ddim(),
    x_T,
    ts,
    key=jax.random.key(1),
    cond=cond,
    return_trajectory=True,
  )
  want = _manual_ddim(gmm.denoiser(SCHED), x_T, ts, cond)
  np.testing.assert_allclose(out.x, want, rtol=1e-12)
  assert out.trajectory.shape == (8, 5, 2)
  np.testing.assert_array_equal(out.trajectory[0], x_T)
  np.testing.assert_array_equal(out.trajectory[-1], out.x)
  assert int(out.nfe) == 7 and out.x.dtype == jnp.float64


def _recording_rule(cost):
  """Counts its calls in state and reports `cost` evaluations when the step is even."""

  def init(x, cond):
    return {"calls": jnp.zeros((), jnp.int32), "ts": jnp.zeros((16,))}

  def apply(den, x, cond, ctx, state):
    x0 = den(x, jnp.full((x.shape[0],), ctx.t), cond)
    nfe = jnp.where(ctx.step % 2 == 0, cost, 1).astype(jnp.int32)
    ts = state["ts"].at[state["calls"]].set(ctx.t)
    return Prediction.of(x0), {"calls": state["calls"] + 1, "ts": ts}, nfe

  return guidance.from_functions(init, apply)


def test_heun_routes_both_evaluations_through_the_rule_and_nfe_is_summed(gmm):
  seen = []

  def den(x, t, c):
    jax.debug.callback(lambda tt: seen.append(float(tt[0])), t)
    return gmm.denoiser(SCHED)(x, t, c)

  ts = schedules.timesteps(SCHED, 4, denoise_to_zero=True)
  out = jaxdiff.sample(
    den, solvers.heun(), jnp.zeros((2, 2)), ts, key=jax.random.key(0), guidance=_recording_rule(3)
  )
  # 4 steps, the last one into sigma = 0 skips its second stage: 7 evaluations, each at
  # the stage's grid point; even steps cost 3 per the rule.
  expected_t = [ts.t[0], ts.t[1], ts.t[1], ts.t[2], ts.t[2], ts.t[3], ts.t[3]]
  np.testing.assert_allclose(seen, expected_t, rtol=1e-6)
  assert int(out.nfe) == 3 + 3 + 1 + 1 + 3 + 3 + 1


def test_rule_state_resets_per_call(gmm):
  ts = schedules.timesteps(SCHED, 3)
  rule = _recording_rule(1)
  calls = []

  def apply(den, x, cond, ctx, state):
    pred, state, n = rule.apply(den, x, cond, ctx, state)
    jax.debug.callback(lambda c: calls.append(int(c)), state["calls"])
    return pred, state, n

  wrapped = guidance.from_functions(rule.init, apply)
  for _ in range(2):
    jaxdiff.sample(
      gmm.denoiser(SCHED),
      solvers.ddim(),
      jnp.ones((2, 2)),
      ts,
      key=jax.random.key(0),
      guidance=wrapped,
    )
  assert calls == [1, 2, 3, 1, 2, 3]


def test_new_key_new_data_and_new_mixture_parameters_do_not_retrace(gmm):
  traces = []

  def counting(x, t, c):
    traces.append(1)
    return gmm.denoiser(SCHED)(x, t, c)

  ts = schedules.timesteps(SCHED, 5)
  for k in range(3):
    x_T = jax.random.normal(jax.random.key(k), (4, 2))
    jaxdiff.sample(counting, solvers.dpmpp_2m(), x_T, ts, key=jax.random.key(10 + k))
  assert len(traces) == 1
  # A pytree denoiser: new mixture *values* of the same structure reuse the compilation.
  # (The cache is emptied first: another test in this process may already have compiled
  # the same program, and then the size would not grow.)
  jaxdiff._sampling._sample_jit.clear_cache()
  before = jaxdiff._sampling._sample_jit._cache_size()
  for scale in (1.0, 2.0):
    g = GaussianMixture(
      scale * np.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]]), 0.2, classes=[0, 1, 1]
    )
    jaxdiff.sample(g.denoiser(SCHED), solvers.unipc(), jnp.ones((4, 2)), ts, key=jax.random.key(0))
  assert jaxdiff._sampling._sample_jit._cache_size() == before + 1


def test_key_may_be_an_int_seed_or_a_raw_key_and_all_share_one_compilation(gmm):
  ts = schedules.timesteps(SCHED, 4)
  run = lambda key: (
    jaxdiff.sample(gmm.denoiser(SCHED), solvers.ddim(eta=1.0), jnp.ones((3, 2)), ts, key=key).x
  )
  want = run(jax.random.key(7))
  before = jaxdiff._sampling._sample_jit._cache_size()
  np.testing.assert_array_equal(run(7), want)
  np.testing.assert_array_equal(run(jax.random.PRNGKey(7)), want)
  np.testing.assert_array_equal(run(np.int64(7)), want)
  assert jaxdiff._sampling._sample_jit._cache_size() == before
  with pytest.raises(TypeError, match="key"):
    run("seven")


def test_a_solver_built_twice_shares_one_compilation(gmm):
  ts = schedules.timesteps(SCHED, 3)
  den = gmm.denoiser(SCHED)
  jaxdiff._sampling._sample_jit.clear_cache()  # see the test above
  jaxdiff.sample(den, solvers.unipc(3), jnp.ones((2, 2)), ts, key=0)
  before = jaxdiff._sampling._sample_jit._cache_size()
  jaxdiff.sample(den, solvers.make("unipc", order=3), jnp.ones((2, 2)), ts, key=1)
  assert jaxdiff._sampling._sample_jit._cache_size() == before
  # A different hyperparameter is a different program.
  jaxdiff.sample(den, solvers.unipc(2), jnp.ones((2, 2)), ts, key=1)
  assert jaxdiff._sampling._sample_jit._cache_size() == before + 1


def test_batch_sharded_over_8_devices_gives_the_single_device_samples(gmm, mesh8):
  ts = schedules.timesteps(SCHED, 6, spacing="logsnr")
  x_T = jax.random.normal(jax.random.key(0), (16, 2))
  cond = jnp.arange(16, dtype=jnp.int32) % 3 - 1
  run = lambda x, c: (
    jaxdiff.sample(
      gmm.denoiser(SCHED), solvers.ddim(eta=0.7), x, ts, key=jax.random.key(5), cond=c
    ).x
  )
  single = run(x_T, cond)
  shard = NamedSharding(mesh8, P("d"))
  sharded = run(jax.device_put(x_T, shard), jax.device_put(cond, shard))
  assert len(sharded.sharding.device_set) == 8
  np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-6)


def test_vmap_over_independent_problems(gmm):
  ts = schedules.timesteps(SCHED, 4)
  xs = jax.random.normal(jax.random.key(0), (3, 4, 2))
  run = lambda x: (
    jaxdiff.sample(gmm.denoiser(SCHED), solvers.dpmpp_3m(), x, ts, key=jax.random.key(1)).x
  )
  np.testing.assert_allclose(
    jax.vmap(run)(xs), jnp.stack([run(x) for x in xs]), rtol=1e-5, atol=1e-6
  )


def test_bfloat16_state_keeps_its_dtype(gmm):
  ts = schedules.timesteps(SCHED, 4)
  x = jnp.ones((2, 2), jnp.bfloat16)
  out = jaxdiff.sample(lambda x, t, c: 0.5 * x, solvers.unipc(), x, ts, key=jax.random.key(0))
  assert out.x.dtype == jnp.bfloat16


def test_bad_inputs_raise_clear_errors(gmm):
  ts = schedules.timesteps(SCHED, 4)
  den = gmm.denoiser(SCHED)
  x = jnp.ones((4, 2))
  with pytest.raises(TypeError, match="Grid"):
    jaxdiff.sample(den, solvers.ddim(), x, jnp.linspace(1, 0, 5), key=jax.random.key(0))
  with pytest.raises(TypeError, match="jaxdiff solver"):
    jaxdiff.sample(den, "ddim", x, ts, key=jax.random.key(0))
  with pytest.raises(ValueError, match="batch-first"):
    jaxdiff.sample(den, solvers.ddim(), x, ts, key=jax.random.key(0), cond=jnp.zeros(3, jnp.int32))
  with pytest.raises(TypeError, match="floating"):
    jaxdiff.sample(den, solvers.ddim(), jnp.ones((4, 2), jnp.int32), ts, key=jax.random.key(0))
  with pytest.raises(TypeError, match="PRNG key"):
    jaxdiff.sample(den, solvers.ddim(), x, ts, key=None)
  with pytest.raises(TypeError, match="GuidanceRule"):
    jaxdiff.sample(den, solvers.ddim(), x, ts, key=jax.random.key(0), guidance=lambda: None)


def test_denoiser_outputs_are_checked_at_trace_time_without_an_extra_trace(gmm):
  ts = schedules.timesteps(SCHED, 4)
  x = jnp.ones((4, 2))
  with pytest.raises(ValueError, match=r"denoise.*\(4, 2\).*got \(1, 2\)"):
    jaxdiff.sample(lambda x, t, c: x[:1], solvers.ddim(), x, ts, key=0)
  with pytest.raises(TypeError, match="denoise.*pytree"):
    jaxdiff.sample(lambda x, t, c: (x, x), solvers.ddim(), x, ts, key=0)
  traces = []

  def counting(x, t, c):
    traces.append(1)
    return 0.5 * x

  jaxdiff.sample(counting, solvers.ddim(), x, ts, key=0)
  assert len(traces) == 1


def test_concrete_labels_are_range_checked_when_the_denoiser_declares_num_classes(gmm):
  ts = schedules.timesteps(SCHED, 4)
  den = gmm.denoiser(SCHED)
  x = jnp.ones((4, 2))
  with pytest.raises(ValueError, match=r"cond.*\[0, 2\).*got 2"):
    jaxdiff.sample(den, solvers.ddim(), x, ts, key=0, cond=jnp.array([0, 1, -1, 2]))
  out = jax.jit(lambda c: jaxdiff.sample(den, solvers.ddim(), x, ts, key=0, cond=c).x)(
    jnp.array([0, 1, -1, 2])
  )
  assert jnp.isfinite(out[:3]).all() and jnp.isnan(out[3]).all()
