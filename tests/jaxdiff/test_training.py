"""jaxdiff.training: losses vs float64 transcriptions, samplers vs their densities (KS),
the curriculum's groups and pacing, reflow pairs, the smoothness penalty (the weight EMA,
now optim.weight_ema, is tested in tests/optim/test_ema.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from scipy import stats

import jaxdiff
from jaxdiff import parameterization, schedules, solvers, training
from jaxdiff.models import train, v_prediction_loss
from jaxdiff.testing import GaussianMixture

PREDS = ("x0", "eps", "v", "velocity")


def _net_from_denoiser(denoise, schedule, prediction):
  """The network that predicts ``prediction`` exactly as the denoiser does."""

  def net(x, t, y):
    e = (slice(None),) + (None,) * (x.ndim - 1)
    a, s = schedule.alpha(t)[e], schedule.sigma(t)[e]
    return parameterization.convert(denoise(x, t, y), x, a, s, src="x0", dst=prediction)

  return net


@pytest.mark.parametrize(
  ("prediction", "weighting", "premetric"),
  [(p, "native", "l2") for p in PREDS]
  + [("eps", "x0", "l2"), ("v", "min_snr", "l2"), ("velocity", "native", "pseudo_huber")],
)
def test_loss_is_zero_for_the_exact_denoiser_of_a_point_mass(x64, prediction, weighting, premetric):
  # A one-point training set: its exact (empirical) denoiser returns x0 itself at every t
  # in the interior, so every objective is zero.
  point = jnp.array([[0.5, -1.0, 2.0]])
  sched = schedules.vp_cosine()
  exact = jaxdiff.testing.empirical_denoiser(point, sched)
  net = _net_from_denoiser(exact, sched, prediction)
  loss = training.denoising_loss(
    sched, prediction=prediction, weighting=weighting, premetric=premetric
  )
  x0 = jnp.repeat(point, 64, axis=0)
  value = loss(net, x0, jnp.zeros(64, int), jax.random.key(0))
  assert abs(float(value)) < 1e-9
  # ... and a wrong denoiser is penalised (the test can fail)
  bad = _net_from_denoiser(lambda x, t, y: exact(x, t, y) + 0.1, sched, prediction)
  assert float(loss(bad, x0, jnp.zeros(64, int), jax.random.key(0))) > 1e-4


@pytest.mark.slow  # the point-mass test covers the loss's zero in CI
def test_exact_mixture_denoiser_minimises_the_loss(x64):
  # For a mixture the loss is not zero, but the posterior mean minimises it: scaling the
  # prediction's deviation from it either way raises the (common-noise) Monte Carlo loss.
  gmm = GaussianMixture(jnp.array([[-2.0, 0.0], [2.0, 1.0]]), 0.3)
  sched = schedules.flow(t_min=0.02, t_max=0.98)
  exact = gmm.denoiser(sched)
  x0 = gmm.sample(1, 1024)
  loss = training.denoising_loss(sched, prediction="x0")

  @jax.jit
  def value(c):
    net = lambda x, t, y: (1 + c) * exact(x, t, y) - c * x  # noqa: E731
    return loss(net, x0, jnp.full(1024, -1), jax.random.key(2))  # unconditional

  best = value(0.0)
  assert best < value(0.05) and best < value(-0.05)


def test_weightings_are_x0_space_weights(x64):
  # eps prediction with the "x0" weighting is the x0 objective; "min_snr" is min(SNR, 5)
  # times it; pseudo-Huber is sqrt(|e|^2 + c^2) - c: float64 transcriptions.
  sched = schedules.vp_cosine()
  k1, k2 = jax.random.split(jax.random.key(3))
  x0 = jax.random.normal(k1, (8, 4))
  eps = jax.random.normal(k2, (8, 4))
  t = jnp.linspace(0.05, 0.95, 8)
  y = jnp.zeros(8, int)
  net_x0 = lambda x, t, y: 0.3 * x + 0.1  # noqa: E731 - any network
  net_eps = _net_from_denoiser(net_x0, sched, "eps")
  a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
  err_x0 = np.asarray(net_x0(a * x0 + s * eps, t, y) - x0)
  mse_x0 = np.mean(err_x0**2, 1)
  as_x0 = training.denoising_loss(sched, prediction="eps", weighting="x0")
  np.testing.assert_allclose(as_x0.per_example(net_eps, x0, eps, t, y), mse_x0, rtol=1e-10)
  snr = np.asarray(a[:, 0] ** 2 / s[:, 0] ** 2)
  min_snr = training.denoising_loss(sched, prediction="eps", weighting="min_snr")
  got = min_snr.per_example(net_eps, x0, eps, t, y)
  np.testing.assert_allclose(got, np.minimum(snr, 5.0) * mse_x0, rtol=1e-10)
  native_eps = training.denoising_loss(sched, prediction="eps")
  np.testing.assert_allclose(
    native_eps.per_example(net_eps, x0, eps, t, y), snr * mse_x0, rtol=1e-9
  )
  custom = training.denoising_loss(sched, prediction="eps", weighting=lambda lam: jnp.exp(-lam))
  np.testing.assert_allclose(custom.per_example(net_eps, x0, eps, t, y), mse_x0 / snr, rtol=1e-9)
  huber = training.denoising_loss(sched, prediction="x0", premetric="pseudo_huber", huber_c=0.5)
  want = np.sqrt(np.sum(err_x0**2, 1) + 0.25) - 0.5
  np.testing.assert_allclose(huber.per_example(net_x0, x0, eps, t, y), want, rtol=1e-10)


def test_v_loss_is_the_demo_loss_it_replaced():
  # The hand-written loss of the demo, transcribed: equal values bit for bit.
  sched = schedules.vp_cosine()
  x0 = jax.random.normal(jax.random.key(0), (16, 8, 8))
  y = jnp.arange(16) % 10
  net = lambda x, t, y: 0.5 * x + t[:, None, None]  # noqa: E731
  key = jax.random.key(5)
  kt, ke, kd = jax.random.split(key, 3)
  t = jax.random.uniform(kt, (16,), minval=sched.t_min, maxval=sched.t_max)
  eps = jax.random.normal(ke, x0.shape)
  a, s = sched.alpha(t)[:, None, None], sched.sigma(t)[:, None, None]
  y = jnp.where(jax.random.bernoulli(kd, 0.1, (16,)), -1, y)
  want = jnp.mean((net(a * x0 + s * eps, t, y) - (a * eps - s * x0)) ** 2)
  assert float(v_prediction_loss(sched)(net, x0, y, key)) == float(want)


SAMPLERS = [training.uniform(), training.logit_normal(0.3, 0.8), training.u_shaped(4.0)]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: type(s).__name__)
def test_timestep_samplers_match_their_densities(sampler):
  u = np.asarray(sampler(jax.random.key(0), (4000,)), np.float64)
  assert stats.kstest(u, sampler.cdf).pvalue > 0.01
  grid = np.linspace(1e-4, 1 - 1e-4, 20001)
  np.testing.assert_allclose(np.trapezoid(sampler.pdf(grid), grid), 1.0, atol=2e-3)
  np.testing.assert_allclose(
    np.gradient(sampler.cdf(grid), grid)[1:-1], sampler.pdf(grid)[1:-1], rtol=1e-3, atol=1e-6
  )
  t = np.asarray(sampler(jax.random.key(1), (4000,), t_min=0.2, t_max=0.6))
  assert t.min() >= 0.2 and t.max() <= 0.6
  assert stats.kstest((t - 0.2) / 0.4, sampler.cdf).pvalue > 0.01


def test_u_shaped_is_not_uniform():
  u = np.asarray(training.u_shaped(4.0)(jax.random.key(0), (4000,)), np.float64)
  assert stats.kstest(u, "uniform").pvalue < 1e-6


def test_curriculum_groups_and_pacing():
  sched = schedules.vp_cosine()
  b = training.curriculum_groups(sched, 5, num_timesteps=1000)
  assert b.shape == (6,) and np.all(np.diff(b) > 0)
  assert b[0] == sched.t_min and b[-1] == sched.t_max
  lam = np.asarray(sched.logsnr(jnp.asarray(b, jnp.float32)))
  widths = -np.diff(lam[1:-1])  # inner groups: equal log-SNR width up to the 1/1000 grid
  np.testing.assert_allclose(widths, widths.mean(), rtol=0.1)
  c = training.curriculum(b, stage_steps=10)
  for step, low in [(0, b[4]), (9, b[4]), (10, b[3]), (39, b[1]), (40, b[0]), (1000, b[0])]:
    t = np.asarray(c(jax.random.key(step), (2000,), step=step))
    assert t.min() >= low - 1e-6 and t.max() <= b[-1] + 1e-6
    assert t.min() < low + 0.05 * (b[-1] - low)  # the whole open range is used
  t = jax.jit(lambda s: c(jax.random.key(0), (4,), step=s))(jnp.int32(3))  # traced step
  assert t.shape == (4,)


def test_train_passes_the_step_to_step_dependent_losses():
  class Tiny(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.zeros(()))

  def loss(model, x, y, key, *, step):
    return model.w[...] * 0.0 + step.astype(jnp.float32)

  out = train(
    Tiny(),
    loss,
    optax.sgd(0.1),
    (jnp.zeros((4, 2)), jnp.zeros(4, int)),
    steps=5,
    batch_size=2,
    chunk=5,
    progress=False,
  )
  np.testing.assert_array_equal(out.losses, np.arange(5, dtype=np.float32))


def test_reflow_pairs_are_the_flow_samples_of_their_noise():
  gmm = GaussianMixture(jnp.array([[-2.0, 0.0], [2.0, 1.0]]), 0.3)
  sched = schedules.flow()
  den = gmm.denoiser(sched)
  z = jax.random.normal(jax.random.key(0), (6, 2))
  pairs = training.reflow_pairs(den, z, cond=jnp.array([0, 1, 0, 1, -1, -1]), steps=8)
  want = jaxdiff.sample(
    den,
    solvers.euler(),
    z,
    jaxdiff.timesteps(sched, 8),
    key=0,
    cond=jnp.array([0, 1, 0, 1, -1, -1]),
  ).x
  np.testing.assert_array_equal(pairs[:, 1], z)
  np.testing.assert_allclose(pairs[:, 0], want, rtol=1e-6)
  # The coupled loss interpolates the pair: the straight line's velocity z - x is exact.
  loss = training.denoising_loss(sched, prediction="velocity", coupled=True)
  straight = lambda x, t, y: jnp.broadcast_to(pairs[:, 1] - pairs[:, 0], x.shape)  # noqa: E731
  assert float(loss(straight, pairs, jnp.zeros(6, int), jax.random.key(0))) < 1e-10


def test_step_variation_penalty_measures_the_jacobian(x64):
  eps = jax.random.normal(jax.random.key(0), (3, 4))
  gains = jnp.array([1.0, 2.0, 3.0])[:, None]
  pen, lengths = training.step_variation_penalty(lambda e: gains * e, eps, key=7)
  y = jax.random.normal(jax.random.key(7), (3, 4)) / 2.0  # the direction it draws, 1/sqrt(4)
  want = np.asarray(gains[:, 0]) * np.linalg.norm(np.asarray(y), axis=1)
  np.testing.assert_allclose(lengths, want, rtol=1e-12)
  np.testing.assert_allclose(pen, np.mean((want - want.mean()) ** 2), rtol=1e-12)
  pen_t, _ = training.step_variation_penalty(lambda e: gains * e, eps, key=7, target=0.0)
  np.testing.assert_allclose(pen_t, np.mean(want**2), rtol=1e-12)


def test_smoothness_term_adds_the_penalty():
  sched = schedules.flow()
  x0 = jax.random.normal(jax.random.key(0), (8, 4))
  net = lambda x, t, y: jnp.tanh(3 * x) * t[:, None]  # noqa: E731 - uneven gains
  y = jnp.zeros(8, int)
  plain = training.denoising_loss(sched, prediction="velocity")
  smooth = training.denoising_loss(sched, prediction="velocity", smoothness=2.0)
  key = jax.random.key(1)
  value, grad = jax.value_and_grad(lambda w: smooth(lambda x, t, y: w * net(x, t, y), x0, y, key))(
    1.0
  )
  assert float(value) > float(plain(net, x0, y, key)) and np.isfinite(float(grad))
