"""jaxdiff.distill's data-free consistency distillation (TBCM) on exact testbeds, float64.

The pair sampler against a transcription of the teacher's DDIM trajectory and against a
tight ODE solve of the probability flow; the continuous-time consistency loss zero at the
exact flow map (closed form for one Gaussian, a diffrax solve for the mixture), positive
for a wrong map, and its gradient against sCM's ``2 df/dtheta^T g`` over 10 SGD steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import distill, schedules
from jaxdiff.testing import GaussianMixture, probability_flow_reference

S2 = 0.25  # variance of the single-Gaussian testbed N(0.5, S2)
MU = 0.5


def _gauss_flow_map(x, t, sched):
  """The exact probability-flow map of N(MU, S2) from (x, t) to t = 0 (a clean sample)."""
  a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
  return MU + np.sqrt(S2) * (x - a * MU) / jnp.sqrt(a**2 * S2 + s**2)


def _ddim_states(denoise, ts, x):
  """Transcription: deterministic DDIM x_{i+1} = a_{i+1} D + s_{i+1} (x_i - a_i D) / s_i."""
  out = [x]
  for i in range(ts.t.shape[0] - 1):
    t = jnp.full((x.shape[0],), ts.t[i])
    d = denoise(x, t, None)
    eps = (x - ts.alpha[i] * d) / ts.sigma[i]
    x = ts.alpha[i + 1] * d + ts.sigma[i + 1] * eps
    out.append(x)
  return jnp.stack(out)


@pytest.mark.parametrize("variant", ["trajectory", "renoise"])
def test_pairs_transcribe_the_teacher_trajectory(x64, gmm, variant):
  sched = schedules.flow()
  den = gmm.denoiser(sched)
  ts = jaxdiff.timesteps(sched, 6)
  x_T = jax.random.normal(jax.random.key(3), (16, 2))
  pairs = distill.trajectory_pairs(den, x_T, ts, key=7, variant=variant)
  states = _ddim_states(den, ts, x_T)
  k_idx, k_noise, _ = jax.random.split(jax.random.key(7), 3)
  num_valid = int(np.sum(np.asarray(ts.sigma[:-1]) > 0))
  u = np.asarray(jax.random.uniform(k_idx, (16,), dtype=jnp.float64))
  i = np.minimum(np.floor(u * num_valid).astype(int), num_valid - 1)
  rows = np.arange(16)
  np.testing.assert_array_equal(pairs.t, np.asarray(ts.t)[i])
  np.testing.assert_array_equal(pairs.s, np.asarray(ts.t)[i + 1])
  np.testing.assert_allclose(pairs.x_0, states[-1], rtol=0, atol=1e-12)
  if variant == "trajectory":
    want_t, want_s = np.asarray(states)[i, rows], np.asarray(states)[i + 1, rows]
  else:
    eps = np.asarray(jax.random.normal(k_noise, (16, 2), jnp.float64))
    a, s = np.asarray(ts.alpha), np.asarray(ts.sigma)
    want_t = a[i, None] * np.asarray(states[-1]) + s[i, None] * eps
    want_s = a[i + 1, None] * np.asarray(states[-1]) + s[i + 1, None] * eps
  np.testing.assert_allclose(pairs.x_t, want_t, rtol=0, atol=1e-12)
  np.testing.assert_allclose(pairs.x_s, want_s, rtol=0, atol=1e-12)
  assert len(set(i.tolist())) > 2  # several steps drawn, not one


@pytest.mark.slow
def test_trajectory_pairs_lie_on_the_probability_flow_and_renoised_ones_do_not(x64, gmm):
  sched = schedules.flow()
  den = gmm.denoiser(sched)
  x_T = jax.random.normal(jax.random.key(0), (6, 2))
  t0 = 1.0  # the flow grid starts at pure noise

  @jax.jit
  def flow_to(x, t1):  # one tight solve per row, compiled once
    def one(xb, tb):
      return probability_flow_reference(den, sched, xb[None], t0, tb, rtol=1e-10, atol=1e-10)[0]

    return jax.vmap(one)(x, t1)

  errs = {}
  for n in (50, 200):
    ts = jaxdiff.timesteps(sched, n)
    assert float(ts.t[0]) == t0
    for variant in ("trajectory", "renoise"):
      pairs = distill.trajectory_pairs(den, x_T, ts, key=1, variant=variant)
      start = pairs.t >= t0
      want = jnp.where(start[:, None], x_T, flow_to(x_T, jnp.where(start, 0.5, pairs.t)))
      errs[n, variant] = float(jnp.max(jnp.abs(pairs.x_t - want)))
  assert errs[200, "trajectory"] < 1e-2
  assert errs[200, "trajectory"] < errs[50, "trajectory"] / 3  # DDIM's first order
  assert errs[200, "renoise"] > 0.1  # the forward process leaves the teacher's trajectory


@pytest.mark.integration  # heavy (3-7 s each): CI's second tier keeps make test within 5 min
def test_continuous_loss_is_zero_at_the_exact_flow_map_of_a_gaussian(x64):
  sched = schedules.vp_cosine()
  teacher = GaussianMixture(jnp.array([[MU, MU]]), S2).denoiser(sched)
  x = jax.random.normal(jax.random.key(0), (32, 2))
  t = jax.random.uniform(jax.random.key(1), (32,), minval=0.05, maxval=0.95)
  pairs = distill.TrajectoryPairs(x, t, x, t, x)

  def exact(p, x, t, cond):
    return p * _gauss_flow_map(x, t, sched)

  def denoiser_as_student(p, x, t, cond):  # E[x0 | x_t]: not constant along the flow
    return p * teacher(x, t)

  kw = dict(teacher=teacher, schedule=sched)
  assert float(distill.trajectory_consistency_loss(exact, 1.0, pairs, **kw)) < 1e-28
  assert float(distill.trajectory_consistency_loss(denoiser_as_student, 1.0, pairs, **kw)) > 1e-3


@pytest.mark.slow
def test_continuous_loss_is_zero_at_the_ode_flow_map_of_the_mixture(x64, gmm):
  sched = schedules.flow()
  den = gmm.denoiser(sched)

  diffrax = pytest.importorskip("diffrax")

  def field(t, x, args):  # the probability-flow vector field of the teacher
    return distill.teacher_velocity(den, sched, x, jnp.full((x.shape[0],), t))

  def ode_map(p, x, t, cond):  # the flow map to t = 1e-3 by a tight, forward-mode solve
    def one(xb, tb):
      sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field), diffrax.Dopri8(), tb, 1e-3, None, xb[None],
        stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-12),
        adjoint=diffrax.ForwardMode(), max_steps=100_000,
      )  # fmt: skip
      return sol.ys[-1, 0]

    return p * jax.vmap(one)(x, t)

  x = 1.5 * jax.random.normal(jax.random.key(2), (4, 2))
  t = jnp.array([0.3, 0.5, 0.7, 0.9])
  pairs = distill.TrajectoryPairs(x, t, x, t, x)
  kw = dict(teacher=den, schedule=sched)
  loss = float(distill.trajectory_consistency_loss(ode_map, 1.0, pairs, **kw))
  denoiser_as_student = lambda p, x, t, c: p * den(x, t)  # noqa: E731
  wrong = float(distill.trajectory_consistency_loss(denoiser_as_student, 1.0, pairs, **kw))
  assert loss < 1e-14 and wrong > 1e-2


def test_discrete_loss_vanishes_with_the_teacher_step(x64):
  sched = schedules.flow()
  teacher = GaussianMixture(jnp.array([[MU]]), S2).denoiser(sched)
  x_T = jax.random.normal(jax.random.key(0), (64, 1))

  def exact(p, x, t, cond):
    return p * _gauss_flow_map(x, t, sched)

  losses = []
  for n in (10, 40):
    pairs = distill.trajectory_pairs(teacher, x_T, jaxdiff.timesteps(sched, n), key=0)
    losses.append(
      float(
        distill.trajectory_consistency_loss(
          exact, 1.0, pairs, teacher=teacher, schedule=sched, variant="discrete"
        )
      )
    )
  # one DDIM step's local error is O(h^2): the squared loss falls as h^4 (256x for 4x steps)
  assert losses[1] < losses[0] / 50 and losses[0] > 0


def test_endpoint_loss_is_the_regression_onto_the_trajectory_end(x64):
  """``"endpoint"``: mean |f(x_t, t) - x_0|^2 with x_0 the teacher's final sample: zero for
  the map that returns it; for the exact flow map it falls with the teacher's step error."""
  sched = schedules.flow()
  teacher = GaussianMixture(jnp.array([[MU]]), S2).denoiser(sched)
  x_T = jax.random.normal(jax.random.key(2), (64, 1))
  kw = dict(teacher=teacher, schedule=sched, variant="endpoint")

  def exact(p, x, t, cond):
    return p * _gauss_flow_map(x, t, sched)

  losses = []
  for n in (10, 40):
    ts = jaxdiff.timesteps(sched, n)
    pairs = distill.trajectory_pairs(teacher, x_T, ts, key=1)
    losses.append(float(distill.trajectory_consistency_loss(exact, 1.0, pairs, **kw)))
  assert 0 < losses[1] < losses[0] / 10  # DDIM is first order: error O(h), squared h^2 (16x)
  # Transcription: the mean squared distance to pairs.x_0, and its gradient in p.
  pairs = distill.trajectory_pairs(teacher, x_T, jaxdiff.timesteps(sched, 10), key=1)
  m = np.asarray(_gauss_flow_map(pairs.x_t, pairs.t, sched))
  x0 = np.asarray(pairs.x_0)
  for p in (1.0, 0.7):
    val, grad = jax.value_and_grad(
      lambda q: distill.trajectory_consistency_loss(exact, q, pairs, **kw)
    )(p)
    np.testing.assert_allclose(val, np.mean((p * m - x0) ** 2), rtol=1e-12)
    np.testing.assert_allclose(grad, np.mean(2 * (p * m - x0) * m), rtol=1e-12)
  # Zero at the student that returns the trajectory's end.
  returns_end = lambda p, x, t, cond: p * x + (1 - p) * pairs.x_0  # noqa: E731
  assert float(distill.trajectory_consistency_loss(returns_end, 0.0, pairs, **kw)) == 0.0


@pytest.mark.parametrize("c", [None, 0.1])
def test_gradient_is_the_continuous_time_consistency_gradient_over_sgd_steps(x64, c):
  """sCM's gradient 2 (df/dtheta)^T g / n, with g = df/dt (normalised: g / (|g| + c))."""
  sched = schedules.flow()
  teacher = GaussianMixture(jnp.array([[MU, -MU]]), S2).denoiser(sched)
  x = jax.random.normal(jax.random.key(4), (8, 2))
  t = jax.random.uniform(jax.random.key(5), (8,), minval=0.1, maxval=0.9)
  pairs = distill.TrajectoryPairs(x, t, x, t, x)

  def student(p, x, t, cond):  # linear in p: f = p0 x + p1 t x + p2 t^2
    return p[0] * x + p[1] * t[:, None] * x + p[2] * t[:, None] ** 2

  a, s = 1 - t[:, None], t[:, None]
  d = teacher(x, t)
  v = -d + (x - a * d) / s  # flow: alpha' = -1, sigma' = 1
  dfdp = [x, t[:, None] * x, t[:, None] ** 2 * jnp.ones_like(x)]
  p_jax = p_ref = jnp.array([0.3, -0.2, 0.1])
  for _ in range(10):
    g = p_ref[0] * v + p_ref[1] * (x + t[:, None] * v) + p_ref[2] * 2 * t[:, None]
    if c is not None:
      g = g / (jnp.linalg.norm(g, axis=1, keepdims=True) + c)
    want = jnp.array([2 * jnp.sum(df * g) / g.size for df in dfdp])
    got = jax.grad(
      lambda p: distill.trajectory_consistency_loss(
        student, p, pairs, teacher=teacher, schedule=sched, tangent_normalization=c
      )
    )(p_jax)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    value = distill.trajectory_consistency_loss(
      student, p_jax, pairs, teacher=teacher, schedule=sched, tangent_normalization=c
    )
    np.testing.assert_allclose(value, jnp.mean(g**2), rtol=1e-12)  # mean |g|^2 at theta-
    p_jax, p_ref = p_jax - 0.1 * got, p_ref - 0.1 * want
