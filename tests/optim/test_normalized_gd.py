"""Normalized LR+GD (Tyurin) against a float64 NumPy transcription; the `value` contract."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim


def _separable(seed=0, n=40, d=5):
  rng = np.random.default_rng(seed)
  w_star = rng.normal(size=d)
  x = rng.normal(size=(n, d))
  y = np.sign(x @ w_star)
  return x, y


def _logistic(w, x, y):
  return jnp.mean(jnp.logaddexp(0.0, -y * (x @ w)))


def normalized_reference(x, y, gamma, steps):
  """w_{t+1} = w_t - gamma * grad f(w_t) / f(w_t), f the mean logistic loss."""
  w = np.zeros(x.shape[1])
  out = []
  for _ in range(steps):
    margins = y * (x @ w)
    f = np.mean(np.logaddexp(0.0, -margins))
    grad = -(x * (y / (1.0 + np.exp(margins)))[:, None]).mean(axis=0)
    w = w - gamma / f * grad
    out.append(w.copy())
  return out


def test_matches_float64_transcription_over_20_steps(x64):
  x, y = _separable()
  tx = optim.normalized_gd(0.5)
  vg = jax.value_and_grad(_logistic)

  @jax.jit
  def step(w, s):
    loss, g = vg(w, x, y)
    u, s = tx.update(g, s, w, value=loss)
    return optax.apply_updates(w, u), s

  w = jnp.zeros(x.shape[1])
  s = tx.init(w)
  for want in normalized_reference(x, y, 0.5, 20):
    w, s = step(w, s)
    np.testing.assert_allclose(np.asarray(w), want, rtol=1e-6)


def test_missing_value_is_a_clear_error():
  tx = optim.normalized_gd(0.1)
  with pytest.raises(ValueError, match="`value`"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)), jnp.ones(2))


def test_non_scalar_value_is_a_clear_error():
  tx = optim.normalized_gd(0.1)
  with pytest.raises(ValueError, match="scalar"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)), jnp.ones(2), value=jnp.ones(2))


def test_zero_loss_gives_zero_step_not_nan():
  tx = optim.normalized_gd(1.0)
  u, _ = jax.jit(tx.update)(jnp.zeros(2), tx.init(None), None, value=jnp.float32(0.0))
  np.testing.assert_array_equal(u, jnp.zeros(2))


def test_accepts_a_schedule():
  tx = optim.normalized_gd(optax.linear_schedule(1.0, 0.0, 10))
  u, s = tx.update(jnp.ones(2), tx.init(jnp.ones(2)), value=jnp.float32(2.0))
  np.testing.assert_allclose(u, -0.5 * jnp.ones(2))


@pytest.mark.parametrize("lr", [-0.1, float("nan"), float("inf")])
def test_invalid_learning_rate_raises_naming_it(lr):
  with pytest.raises(ValueError, match="learning_rate"):
    optim.normalized_gd(lr)


def test_state_is_optax_empty_state():
  assert optim.scale_by_inverse_loss().init(jnp.ones(2)) == optax.EmptyState()
