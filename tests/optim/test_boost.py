"""optim.loops.boost_layer: gradient boosting stages of a hidden layer (Emfevid & Nyberg)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optim.loops import boost_layer, boosted_layer_apply


def _identity(z):
  return z


@pytest.mark.parametrize("shrinkage", [1.0, 0.5])
def test_linear_blocks_are_least_squares_boosting_stages(x64, shrinkage):
  rng = np.random.default_rng(0)
  n, d, k = 30, 3, 2
  x = rng.normal(size=(n, d))
  y = x @ rng.normal(size=(d, k)) + np.sin(3 * x[:, :k]) + 0.5
  layer = boost_layer(
    jnp.asarray(x),
    jnp.asarray(y),
    num_blocks=4,
    block_size=3,
    optimizer=optax.lbfgs(),
    num_steps=300,
    key=0,
    activation=_identity,
    shrinkage=shrinkage,
  )
  # closed form: F_0 = mean, F_j = F_0 + (1 - (1 - nu)^j) P (y - F_0), P the hat matrix of [x, 1]
  a = np.concatenate([x, np.ones((n, 1))], 1)
  hat = a @ np.linalg.solve(a.T @ a, a.T)
  r0 = y - y.mean(0)
  for j in range(5):
    want = y.mean(0) + (1 - (1 - shrinkage) ** j) * hat @ r0
    got = boosted_layer_apply(layer, jnp.asarray(x), activation=_identity, num_blocks=j)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
  resid = np.mean(np.sum(((np.eye(n) - hat) @ r0) ** 2, 1))
  np.testing.assert_allclose(layer.losses, resid, rtol=1e-9)


def test_cross_entropy_starts_from_log_priors_and_merges_blocks(x64):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(40, 4))
  y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)
  layer = boost_layer(
    jnp.asarray(x),
    jnp.asarray(y),
    num_blocks=3,
    block_size=5,
    optimizer=optax.adam(0.05),
    num_steps=200,
    key=1,
    loss="cross_entropy",
    num_classes=3,
  )
  priors = np.bincount(y, minlength=3) / len(y)
  np.testing.assert_allclose(boosted_layer_apply(layer, x, num_blocks=0)[0], np.log(priors))
  # the merged layer = F_0 + the sum of its blocks' outputs
  total = np.log(priors) + sum(
    np.tanh(x @ layer.w[:, j] + layer.b[j]) @ layer.v[j] for j in range(3)
  )
  np.testing.assert_allclose(boosted_layer_apply(layer, x), total, rtol=1e-12)
  ce = [
    float(
      optax.softmax_cross_entropy_with_integer_labels(
        boosted_layer_apply(layer, x, num_blocks=j), y
      ).mean()
    )
    for j in range(4)
  ]
  assert ce[0] > ce[1] > ce[2] > ce[3]


def test_boost_layer_under_jit_apply_and_bad_input():
  x = jnp.linspace(-1, 1, 16)[:, None]
  y = jnp.sin(3 * x)
  layer = boost_layer(
    x, y, num_blocks=2, block_size=3, optimizer=optax.sgd(0.1), num_steps=20, key=0
  )
  f = jax.jit(lambda layer, x: boosted_layer_apply(layer, x, num_blocks=1))
  np.testing.assert_allclose(f(layer, x), boosted_layer_apply(layer, x, num_blocks=1), rtol=1e-6)
  with pytest.raises(ValueError, match="num_blocks"):
    boosted_layer_apply(layer, x, num_blocks=3)
  with pytest.raises(ValueError, match="targets"):
    boost_layer(x, y[:5], num_blocks=1, block_size=1, optimizer=optax.sgd(0.1), num_steps=1, key=0)
  with pytest.raises(ValueError, match="targets"):
    boost_layer(
      x,
      jnp.zeros(16, int).at[0].set(5),
      num_blocks=1,
      block_size=1,
      optimizer=optax.sgd(0.1),
      num_steps=1,
      key=0,
      loss="cross_entropy",
      num_classes=3,
    )
  with pytest.raises(ValueError, match="num_classes"):
    boost_layer(
      x,
      jnp.zeros(16, int),
      num_blocks=1,
      block_size=1,
      optimizer=optax.sgd(0.1),
      num_steps=1,
      key=0,
      loss="cross_entropy",
    )
  with pytest.raises(ValueError, match="shrinkage"):
    boost_layer(
      x, y, num_blocks=1, block_size=1, optimizer=optax.sgd(0.1), num_steps=1, key=0, shrinkage=0.0
    )
  with pytest.raises(ValueError, match="non-finite"):
    boost_layer(x, y, num_blocks=1, block_size=2, optimizer=optax.sgd(1e6), num_steps=30, key=0)
