"""AdAdaGrad's batch-size tests against a float64 transcription, their edge cases, and the
training-loop helper (the batch grows, the learning rate follows scale_for_batch_size)."""

import jax.numpy as jnp
import numpy as np
import optax

import optim
from optim.schedules import scale_for_batch_size


def _flat(g):
  return np.concatenate([np.asarray(x).reshape(x.shape[0], -1) for x in g.values()], 1)


def _reference(g, eta, theta, nu):
  b = g.shape[0]
  m = g.mean(0)
  sq = m @ m
  var = ((g - m) ** 2).sum() / (b - 1)
  ip = g @ m
  var_ip = ((ip - sq) ** 2).sum() / (b - 1)
  orth = g - np.outer(ip / sq, m)
  var_orth = (orth**2).sum() / (b - 1)
  norm_b = np.ceil(var / (eta**2 * sq))
  aug_b = np.ceil(max(var_ip / (theta**2 * sq**2), var_orth / (nu**2 * sq)))
  return norm_b, aug_b


def test_tests_match_float64_transcription_on_20_batches(x64):
  rng = np.random.default_rng(0)
  passed = set()
  for k in range(20):
    b = (8, 16)[k % 2]  # two shapes: the eager ops compile once each
    g = {
      "w": rng.normal(size=(b, 3, 2)) + rng.normal(size=(3, 2)) * k / 5,
      "b": rng.normal(size=(b, 4)) * 0.3,
    }
    norm_b, aug_b = _reference(_flat(g), 0.5, 0.9, 5.84)
    gj = {key: jnp.asarray(v) for key, v in g.items()}
    t1 = optim.loops.norm_test(gj, eta=0.5)
    t2 = optim.loops.augmented_inner_product_test(gj, theta=0.9, nu=5.84)
    np.testing.assert_allclose(float(t1.batch_size), norm_b, rtol=1e-6)
    np.testing.assert_allclose(float(t2.batch_size), aug_b, rtol=1e-6)
    assert bool(t1.passed) == (norm_b <= b) and bool(t2.passed) == (aug_b <= b)
    passed |= {bool(t1.passed), bool(t2.passed)}
  assert passed == {True, False}  # both outcomes exercised


def test_identical_gradients_pass_and_zero_mean_with_spread_asks_for_everything():
  same = {"w": jnp.ones((5, 3))}
  assert bool(optim.loops.norm_test(same).passed)
  assert float(optim.loops.augmented_inner_product_test(same).batch_size) == 0.0
  spread = {"w": jnp.array([[1.0, 0.0], [-1.0, 0.0]])}
  t = optim.loops.norm_test(spread)
  assert not bool(t.passed) and float(t.batch_size) == np.inf
  assert float(optim.loops.norm_test({"w": jnp.zeros((3, 2))}).batch_size) == 0.0


def test_training_helper_grows_the_batch_and_rescales_the_learning_rate():
  x = jnp.linspace(-1, 1, 128)
  data = (x, 2 * x + 0.5 * jnp.sin(30 * x))
  loss = lambda w, ex: (w[0] * ex[0] - ex[1]) ** 2
  seen = []

  def make(learning_rate):
    seen.append(learning_rate)
    return optax.adagrad(learning_rate)

  r = optim.loops.adaptive_batch_train(
    loss,
    jnp.zeros(1),
    data,
    make,
    0.3,
    num_steps=12,
    initial_batch_size=4,
    key=0,
    callback=lambda k, p: float(p[0]),
    callback_every=4,
  )
  assert r.batch_sizes[0] == 4 and np.all(np.diff(r.batch_sizes) >= 0)
  assert r.batch_sizes[-1] > 4 and np.all(r.batch_sizes % 4 == 0)
  np.testing.assert_array_equal(r.examples, np.cumsum(r.batch_sizes))
  assert len(r.callbacks) == 4  # steps 0, 4, 8 and the last
  assert scale_for_batch_size(0.3, 4, 16, "adaptive") == 0.6  # the rule reused
