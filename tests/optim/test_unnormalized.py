"""optim.unnormalized: MECO against a float64 transcription of its algorithm, and MECO / NCE
on an unnormalized Gaussian, whose partition function is known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optim.unnormalized import (
  MECOState,
  log_partition_estimate,
  meco,
  meco_grads,
  meco_init,
  nce_loss,
)

# The testbed: E(x) = |x - mu|^2 / (2 s^2), s = exp(log_s); Z = (2 pi s^2)^(d/2).


def energy(p, x):
  return 0.5 * jnp.sum((x - p["mu"]) ** 2, -1) * jnp.exp(-2 * p["log_s"])


def log_z(p, d):
  return 0.5 * d * (jnp.log(2 * jnp.pi) + 2 * p["log_s"])


def noise_log_prob(scale):
  def log_q(x):
    d = x.shape[-1]
    return -0.5 * jnp.sum(x**2, -1) / scale**2 - 0.5 * d * jnp.log(2 * jnp.pi * scale**2)

  return log_q


# ---------------------------------------------------------------- float64 transcription


def _reference(mu, log_s, xs, zs, scale, lr, beta, gammas, lagged=False):
  """Algorithm 1 written out in NumPy float64: u in linear scale, hand gradients."""
  mu, log_s = np.array(mu, np.float64), float(log_s)
  v_mu, v_s, u = np.zeros_like(mu), 0.0, None
  history = []
  for t, (x, z) in enumerate(zip(xs, zs, strict=True)):
    prec = np.exp(-2 * log_s)
    d = z.shape[1]
    log_q = -0.5 * np.sum(z**2, 1) / scale**2 - 0.5 * d * np.log(2 * np.pi * scale**2)
    ratio = np.exp(-0.5 * np.sum((z - mu) ** 2, 1) * prec - log_q)  # e^{-E(z)} / q(z)
    u_prev = u
    u = ratio.mean() if t == 0 else (1 - gammas[t]) * u + gammas[t] * ratio.mean()
    u_used = u if (not lagged or t == 0) else u_prev
    # grad E(x) wrt mu: -(x - mu) prec; wrt log_s: -|x - mu|^2 prec
    g_mu = np.mean(-(x - mu) * prec, 0) - np.mean(ratio[:, None] * (-(z - mu) * prec), 0) / u_used
    g_s = (
      np.mean(-np.sum((x - mu) ** 2, 1) * prec)
      - np.mean(ratio * (-np.sum((z - mu) ** 2, 1) * prec)) / u_used
    )
    v_mu = (1 - beta) * v_mu + beta * g_mu
    v_s = (1 - beta) * v_s + beta * g_s
    mu, log_s = mu - lr * v_mu, log_s - lr * v_s
    history.append((mu.copy(), log_s, np.log(u)))
  return history


@pytest.mark.parametrize("variant", ["moving_average", "lagged"])
def test_meco_matches_algorithm_1_over_12_steps(x64, variant):
  rng = np.random.default_rng(0)
  steps, d, scale, lr, beta = 12, 3, 2.0, 0.3, 0.4
  xs = [1.5 + 0.7 * rng.normal(size=(16, d)) for _ in range(steps)]
  zs = [scale * rng.normal(size=(32, d)) for _ in range(steps)]
  gammas = np.linspace(0.9, 0.2, steps)
  ref = _reference(np.zeros(d), 0.3, xs, zs, scale, lr, beta, gammas, variant == "lagged")

  params = {"mu": jnp.zeros(d), "log_s": jnp.asarray(0.3)}
  state, tx = meco_init(params), meco(lr, beta=beta)
  opt = tx.init(params)
  assert state.log_u.dtype == jnp.float64
  sched = lambda c: jnp.asarray(gammas)[c]  # noqa: E731 - a schedule of the count
  step = jax.jit(
    lambda p, s, x, z: meco_grads(
      energy, p, s, x, z, noise_log_prob(scale), gamma=sched, variant=variant
    )
  )
  for t in range(steps):
    (loss, g), state = step(params, state, xs[t], zs[t])
    upd, opt = tx.update(g, opt)
    params = optax.apply_updates(params, upd)
    mu_ref, s_ref, log_u_ref = ref[t]
    np.testing.assert_allclose(params["mu"], mu_ref, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(params["log_s"], s_ref, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(state.log_u, log_u_ref, rtol=1e-11, atol=1e-12)
  assert int(state.count) == steps
  # The loss is mean E(x) + log u_t at the parameters the gradient was taken at.
  assert np.isfinite(float(loss))


def test_meco_grads_jit_equals_eager_and_gamma_one_is_the_minibatch_gradient(x64):
  rng = np.random.default_rng(1)
  x, z = rng.normal(size=(8, 2)) + 1.0, 2.0 * rng.normal(size=(16, 2))
  params = {"mu": jnp.array([0.2, -0.1]), "log_s": jnp.asarray(0.1)}
  state = MECOState(jnp.asarray(5, jnp.int32), jnp.asarray(3.0))
  lq = noise_log_prob(2.0)
  eager = meco_grads(energy, params, state, x, z, lq, gamma=1.0)
  jitted = jax.jit(lambda p, s: meco_grads(energy, p, s, x, z, lq, gamma=1.0))(params, state)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-12)
  # gamma = 1: the state is forgotten, G is the gradient of mean E(x) + log Zhat(batch).
  direct = jax.grad(
    lambda p: jnp.mean(energy(p, jnp.asarray(x))) + log_partition_estimate(energy, p, z, lq)
  )(params)
  (_, grads), new = eager
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(direct), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-12)
  np.testing.assert_allclose(new.log_u, log_partition_estimate(energy, params, z, lq), rtol=1e-12)


# ---------------------------------------------------------------- exact testbed


def test_log_partition_estimate_is_consistent_its_bias_shrinks_with_samples(x64):
  params, d, scale = {"mu": jnp.array([0.5, -0.5]), "log_s": jnp.asarray(-0.2)}, 2, 1.5
  truth = float(log_z(params, d))
  lq = noise_log_prob(scale)

  def bias(m, reps=2000):
    z = scale * jax.random.normal(jax.random.key(m), (reps, m, d), jnp.float64)
    est = jax.vmap(lambda zz: log_partition_estimate(energy, params, zz, lq))(z)
    return float(jnp.mean(est)) - truth, float(jnp.std(est)) / np.sqrt(reps)

  b4, se4 = bias(4)
  b256, se256 = bias(256)
  assert b4 < -3 * se4  # Jensen: the log of an unbiased estimate is biased downward
  assert abs(b256) < abs(b4) / 20 and abs(b256) < 4 * se256 + 2e-3


def test_moving_average_converges_to_the_true_inner_expectation(x64):
  # Fixed parameters: with gamma_t = 1 / (t + 1), u_t is the running mean of all batches,
  # so log u_T -> log Z; a constant gamma fluctuates around it with a shrinking spread.
  params, d, scale = {"mu": jnp.array([0.3, 0.0, -0.3]), "log_s": jnp.asarray(0.1)}, 3, 2.0
  truth = float(log_z(params, d))
  lq = noise_log_prob(scale)
  zs = scale * jax.random.normal(jax.random.key(0), (1000, 16, d), jnp.float64)
  x = jnp.zeros((1, d))

  def run(gamma):
    def body(state, z):
      (_, _), state = meco_grads(energy, params, state, x, z, lq, gamma=gamma)
      return state, state.log_u

    return jax.lax.scan(body, meco_init(params), zs)[1]

  running = run(lambda c: 1.0 / (c + 1.0))
  errors = np.abs(np.asarray(running) - truth)
  assert errors[-1] < 0.02
  assert errors[900:].max() < errors[:20].mean()
  one_batch = np.asarray(jax.vmap(lambda z: log_partition_estimate(energy, params, z, lq))(zs))
  ema = np.asarray(run(0.05))
  # The moving average's error is several times smaller than one batch's.
  rms = lambda a: float(np.sqrt(np.mean((a - truth) ** 2)))  # noqa: E731
  assert rms(ema[100:]) < rms(one_batch) / 3


def _fit_data(d=2, n=4000):
  mu_true, s_true = np.array([1.0, -0.5])[:d], 0.7
  x = mu_true + s_true * np.random.default_rng(3).normal(size=(n, d))
  mu_hat = x.mean(0)
  s_hat = np.sqrt(np.mean(np.sum((x - mu_hat) ** 2, 1)) / d)  # the MLE
  return jnp.asarray(x), mu_hat, s_hat


def test_meco_fit_recovers_the_maximum_likelihood_parameters(x64):
  x, mu_hat, s_hat = _fit_data()
  d, scale, lq = 2, 2.0, noise_log_prob(2.0)
  params = {"mu": jnp.zeros(d), "log_s": jnp.asarray(0.5)}
  tx = meco(0.2, beta=0.2)

  def body(carry, key):
    params, state, opt = carry
    kx, kz = jax.random.split(key)
    xb = x[jax.random.randint(kx, (256,), 0, x.shape[0])]
    z = scale * jax.random.normal(kz, (512, d), jnp.float64)
    (loss, g), state = meco_grads(energy, params, state, xb, z, lq, gamma=0.1)
    upd, opt = tx.update(g, opt)
    return (optax.apply_updates(params, upd), state, opt), loss

  keys = jax.random.split(jax.random.key(0), 800)
  (params, state, _), _ = jax.lax.scan(body, (params, meco_init(params), tx.init(params)), keys)
  np.testing.assert_allclose(params["mu"], mu_hat, atol=0.05)
  np.testing.assert_allclose(np.exp(params["log_s"]), s_hat, atol=0.03)
  # The state tracks log Z of the fitted model.
  np.testing.assert_allclose(state.log_u, log_z(params, d), atol=0.1)


def test_nce_fit_recovers_the_parameters_and_the_log_partition(x64):
  x, mu_hat, s_hat = _fit_data()
  d, scale, lq = 2, 2.0, noise_log_prob(2.0)
  theta = ({"mu": jnp.zeros(d), "log_s": jnp.asarray(0.5)}, jnp.asarray(0.0))
  tx = optax.adam(0.05)

  def body(carry, key):
    theta, opt = carry
    kx, kz = jax.random.split(key)
    xb = x[jax.random.randint(kx, (256,), 0, x.shape[0])]
    z = scale * jax.random.normal(kz, (256, d), jnp.float64)
    loss, g = jax.value_and_grad(lambda t: nce_loss(energy, t[0], t[1], xb, z, lq))(theta)
    upd, opt = tx.update(g, opt)
    return (optax.apply_updates(theta, upd), opt), loss

  keys = jax.random.split(jax.random.key(1), 800)
  ((params, c), _), _ = jax.lax.scan(body, (theta, tx.init(theta)), keys)
  np.testing.assert_allclose(params["mu"], mu_hat, atol=0.08)
  np.testing.assert_allclose(np.exp(params["log_s"]), s_hat, atol=0.05)
  np.testing.assert_allclose(c, log_z(params, d), atol=0.1)


def test_nce_loss_at_the_noise_is_2_log_2_and_its_minimum_is_the_truth(x64):
  rng = np.random.default_rng(5)
  d, lq = 2, noise_log_prob(1.0)
  z = rng.normal(size=(64, d))
  p0 = {"mu": jnp.zeros(d), "log_s": jnp.asarray(0.0)}
  np.testing.assert_allclose(nce_loss(energy, p0, log_z(p0, d), z, z, lq), 2 * np.log(2), 1e-12)
  # Population gradient at the truth vanishes: large equal batches of data and noise.
  xt = 0.5 + rng.normal(size=(50000, d))
  zt = rng.normal(size=(50000, d))
  pt = {"mu": jnp.full(d, 0.5), "log_s": jnp.asarray(0.0)}
  g = jax.grad(lambda c: nce_loss(energy, pt, c, xt, zt, lq))(log_z(pt, d))
  assert abs(float(g)) < 0.01
