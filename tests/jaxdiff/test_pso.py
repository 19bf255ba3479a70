"""jaxdiff.finetune.pso_loss in float64: a transcription of the pairwise loss over 10 SGD
steps, the closed-form likelihood margin of a Gaussian model (whose gradient moves the model
towards the targets and away from its own samples), zero margin for equal pairs, and the
"eps" variant as the "x0" one reweighted by (alpha / sigma)^2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import finetune, schedules

S2 = 0.3  # the Gaussian model N(mu, S2 I)


def _gauss_model(sched):
  def model(mu, x, t, cond):  # the exact denoiser of N(mu, S2 I)
    a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
    return mu + a * S2 / (a**2 * S2 + s**2) * (x - a * mu)

  return model


def _mlp(p, x, t, cond):
  h = jnp.tanh(x @ p["w1"] + t[:, None] * p["b1"])
  return x + h @ p["w2"]


def _transcription(model, params, base, tgt, ref, ts, key, beta, variant, sched):
  """The loss in numpy from the documented draws (k_t, k_eps = split(key))."""
  k_t, k_eps = jax.random.split(jax.random.key(key))
  b = tgt.shape[0]
  t = np.asarray(ts)[np.asarray(jax.random.randint(k_t, (b,), 0, len(ts)))]
  eps = np.asarray(jax.random.normal(k_eps, tgt.shape, jnp.float64))
  a, s = np.asarray(sched.alpha(t))[:, None], np.asarray(sched.sigma(t))[:, None]

  def err(p, x0):
    xt = a * x0 + s * eps
    g = np.asarray(model(p, jnp.asarray(xt), jnp.asarray(t), None))
    if variant == "eps":
      return np.mean((eps - (xt - a * g) / s) ** 2, axis=1)
    return np.mean((x0 - g) ** 2, axis=1)

  inside = -beta * ((err(params, tgt) - err(base, tgt)) - (err(params, ref) - err(base, ref)))
  return np.mean(np.log1p(np.exp(-inside)))  # -log sigmoid


@pytest.mark.parametrize("variant", ["x0", "eps"])
def test_loss_is_the_transcribed_pairwise_objective_over_sgd_steps(x64, variant):
  sched = schedules.flow()
  k = jax.random.split(jax.random.key(0), 4)
  base = {
    "w1": 0.5 * jax.random.normal(k[0], (2, 8)),
    "b1": 0.5 * jax.random.normal(k[1], (8,)),
    "w2": 0.5 * jax.random.normal(k[2], (8, 2)),
  }
  tgt = jax.random.normal(k[3], (16, 2)) + 2.0
  ref = jax.random.normal(jax.random.key(9), (16, 2)) - 1.0
  ts = jnp.array([0.9, 0.6, 0.3])
  kw = dict(schedule=sched, timesteps=ts, beta=3.0, variant=variant)
  loss = jax.jit(lambda p, key: finetune.pso_loss(_mlp, p, base, tgt, ref, key=key, **kw))
  grad = jax.jit(jax.grad(lambda p, key: finetune.pso_loss(_mlp, p, base, tgt, ref, key=key, **kw)))
  params = base
  for step in range(10):
    want = _transcription(_mlp, params, base, tgt, ref, ts, step, 3.0, variant, sched)
    np.testing.assert_allclose(loss(params, step), want, rtol=1e-12)
    params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grad(params, step))
  assert float(loss(params, 0)) < float(loss(base, 0))  # the steps did descend


def test_gaussian_margin_is_closed_form_and_its_gradient_moves_towards_the_targets(x64):
  sched = schedules.flow()
  model = _gauss_model(sched)
  tgt = jax.random.normal(jax.random.key(1), (32, 2)) * np.sqrt(S2) + 1.5
  ref = jax.random.normal(jax.random.key(2), (32, 2)) * np.sqrt(S2) - 1.5
  t, beta, mu0 = 0.6, 2.0, jnp.zeros(2)

  def loss(mu, key=0):
    return finetune.pso_loss(
      model, mu, mu0, tgt, ref, schedule=sched, timesteps=jnp.array([t]), key=key, beta=beta
    )

  a, s = 1 - t, t
  w = (s**2 / (a**2 * S2 + s**2)) ** 2  # (1 - k alpha)^2: the shared noise cancels

  def closed(mu):
    sq = lambda x, m: jnp.mean((x - m) ** 2, axis=1)  # noqa: E731
    margin = w * (sq(tgt, mu) - sq(tgt, mu0) - sq(ref, mu) + sq(ref, mu0))
    return -jnp.mean(jax.nn.log_sigmoid(-beta * margin))

  for mu in (jnp.zeros(2), jnp.array([0.4, -0.2]), jnp.array([-1.0, 2.0])):
    for key in (0, 1):  # any noise draw: the margin does not depend on it
      np.testing.assert_allclose(loss(mu, key), closed(mu), rtol=1e-12)
  g = jax.grad(loss)(mu0)
  direction = jnp.mean(tgt, 0) - jnp.mean(ref, 0)
  assert float(jnp.dot(-g, direction)) > 0  # descent: towards the targets, away from refs
  mu = mu0
  for _ in range(20):
    mu = mu - 1.0 * jax.grad(loss)(mu)
  assert float(jnp.dot(mu, direction)) > 0.5 and float(loss(mu)) < float(loss(mu0))


def test_equal_target_and_reference_give_zero_margin(x64):
  sched = schedules.flow()
  model = _gauss_model(sched)
  x = jax.random.normal(jax.random.key(3), (8, 2))
  loss = lambda mu: finetune.pso_loss(  # noqa: E731
    model, mu, jnp.zeros(2), x, x, schedule=sched, timesteps=jnp.array([0.4, 0.8]), key=5
  )
  mu = jnp.array([0.7, -0.3])
  np.testing.assert_allclose(loss(mu), np.log(2.0), rtol=1e-14)
  np.testing.assert_allclose(jax.grad(loss)(mu), 0.0, atol=1e-15)


def test_eps_variant_is_the_x0_margin_reweighted_by_the_snr(x64):
  sched = schedules.vp_cosine()
  model = _gauss_model(sched)
  tgt = jax.random.normal(jax.random.key(1), (16, 2)) + 1.0
  ref = jax.random.normal(jax.random.key(2), (16, 2)) - 1.0
  t = 0.35
  snr = float(sched.alpha(jnp.array(t)) / sched.sigma(jnp.array(t))) ** 2
  kw = dict(schedule=sched, timesteps=jnp.array([t]), key=0)
  mu = jnp.array([0.3, 0.1])
  eps = finetune.pso_loss(model, mu, jnp.zeros(2), tgt, ref, beta=0.5, variant="eps", **kw)
  x0 = finetune.pso_loss(model, mu, jnp.zeros(2), tgt, ref, beta=0.5 * snr, **kw)
  np.testing.assert_allclose(eps, x0, rtol=1e-12)
  assert abs(snr - 1.0) > 0.5  # the two differ at this t
