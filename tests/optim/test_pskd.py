"""optim.losses.pskd_targets / pskd_alpha (PS-KD, Kim et al. 2021): the soft targets, the
linear schedule and a float64 transcription of the official training loop over 12 epochs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optim.losses import pskd_alpha, pskd_targets


def test_targets_mix_labels_and_predictions():
  y = jax.nn.one_hot(jnp.array([2, 0]), 3)
  p = jnp.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
  np.testing.assert_allclose(pskd_targets(y, p, 0.0), y)
  np.testing.assert_allclose(pskd_targets(y, p, 1.0), p)
  np.testing.assert_allclose(pskd_targets(y, p, 0.25), 0.75 * y + 0.25 * p, rtol=1e-6)


def test_uniform_predictions_give_optax_smooth_labels():
  y = jax.nn.one_hot(jnp.arange(4), 4)
  np.testing.assert_allclose(
    pskd_targets(y, jnp.full((4, 4), 0.25), 0.3), optax.smooth_labels(y, 0.3), rtol=1e-6
  )


def test_no_gradient_flows_into_the_predictions():
  y = jax.nn.one_hot(jnp.array([1]), 3)
  g = jax.grad(lambda p: jnp.sum(pskd_targets(y, p, 0.5) ** 2))(jnp.full((1, 3), 1 / 3))
  np.testing.assert_array_equal(g, 0.0)


def test_alpha_is_the_official_linear_schedule():
  t = 300
  for epoch in (0, 1, 149, 299):
    assert float(pskd_alpha(epoch, t)) == pytest.approx(0.8 * (epoch + 1) / t, rel=1e-6)
  assert float(pskd_alpha(9, 10, alpha_T=0.5)) == pytest.approx(0.5)
  traced = jax.jit(lambda e: pskd_alpha(e, 10))(jnp.arange(10))
  np.testing.assert_allclose(traced, 0.8 * (np.arange(10) + 1) / 10, rtol=1e-6)


def test_traced_alpha_outside_the_unit_interval_poisons_the_targets():
  y = jax.nn.one_hot(jnp.array([1]), 3)
  p = jnp.full((1, 3), 1 / 3)
  f = jax.jit(lambda a: pskd_targets(y, p, a))
  assert bool(jnp.all(jnp.isfinite(f(0.5))))
  assert bool(jnp.all(jnp.isnan(f(1.5)))) and bool(jnp.all(jnp.isnan(f(-0.1))))


def _official_loop(w0, x, y, batches, epochs, lr, alpha_T):
  """PS-KD-Pytorch main.py's train() for softmax regression, in NumPy float64: one-hot
  targets, all_predictions set to them at epoch 0, soft targets from the stored row, loss
  (-targets * log_softmax).mean(0).sum(), SGD, then the batch's softmax stored."""
  n, c = len(y), w0.shape[1]
  w = w0.copy()
  all_predictions = np.zeros((n, c))
  out = []
  for epoch in range(epochs):
    alpha_t = max(0.0, alpha_T * ((epoch + 1) / epochs))
    for idx in batches[epoch]:
      one_hot = np.eye(c)[y[idx]]
      if epoch == 0:
        all_predictions[idx] = one_hot
      soft = (1 - alpha_t) * one_hot + alpha_t * all_predictions[idx]
      logits = x[idx] @ w
      z = logits - logits.max(1, keepdims=True)
      prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
      grad = x[idx].T @ (prob - soft) / len(idx)  # d/dw of the mean soft cross-entropy
      w = w - lr * grad
      all_predictions[idx] = prob  # softmax_output of the forward pass, detached
    out.append(w.copy())
  return out


def test_float64_transcription_of_the_official_loop_over_12_epochs(x64):
  rng = np.random.default_rng(0)
  n, d, c, bs, epochs = 24, 5, 3, 6, 12
  x = rng.normal(size=(n, d))
  y = rng.integers(0, c, n)
  w0 = 0.1 * rng.normal(size=(d, c))
  batches = [np.split(rng.permutation(n), n // bs) for _ in range(epochs)]
  want = _official_loop(w0, x, y, batches, epochs, lr=0.5, alpha_T=0.8)

  tx = optax.sgd(0.5)

  @jax.jit
  def step(w, state, store, idx, epoch):
    labels = jax.nn.one_hot(jnp.asarray(y)[idx], c, dtype=jnp.float64)
    prev = jnp.where(epoch == 0, labels, store[idx])
    targets = pskd_targets(labels, prev, pskd_alpha(epoch, epochs))

    def loss(w):
      logits = jnp.asarray(x)[idx] @ w
      return optax.softmax_cross_entropy(logits, targets).mean(), jax.nn.softmax(logits)

    (_, prob), g = jax.value_and_grad(loss, has_aux=True)(w)
    u, state = tx.update(g, state, w)
    return optax.apply_updates(w, u), state, store.at[idx].set(prob)

  w, state, store = jnp.asarray(w0), tx.init(jnp.asarray(w0)), jnp.zeros((n, c))
  for epoch in range(epochs):
    for idx in batches[epoch]:
      w, state, store = step(w, state, store, jnp.asarray(idx), jnp.int32(epoch))
    np.testing.assert_allclose(np.asarray(w), want[epoch], rtol=1e-12, atol=1e-13)
  assert w.dtype == jnp.float64
