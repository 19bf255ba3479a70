"""TrAct: float64 transcription of the least-squares update, the official Woodbury form,
composition with optax.partition, bad extra arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim


def _least_squares_step(w, x, grad_z, lr, lam):
  """The paper's derivation, solved as an (augmented) least-squares problem in float64.

  z* = z - lr * b * dL/dz;  W* = argmin (1/b)|X W' - Z*|^2 + lam |W' - W|^2.
  """
  b, n = x.shape
  z_star = x @ w - lr * b * grad_z
  a = np.vstack([x / np.sqrt(b), np.sqrt(lam) * np.eye(n)])
  rhs = np.vstack([z_star / np.sqrt(b), np.sqrt(lam) * w])
  return np.linalg.lstsq(a, rhs, rcond=None)[0]


def _problem(seed=0, b=32, n=6, k=3):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, n)) * rng.uniform(0.1, 3.0, size=(b, 1))  # contrasts differ
  y = rng.integers(0, k, size=b)
  w0 = rng.normal(size=(n, k)) * 0.1
  return x, y, w0


def _loss(w, x, y):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x @ w, y))


@pytest.mark.parametrize("b", [32, 4], ids=["b>n", "b<n"])
def test_sgd_with_tract_matches_least_squares_transcription_over_20_steps(x64, b):
  x, y, w0 = _problem(b=b)
  lr, lam = 0.3, 0.1
  tx = optax.chain(optim.scale_by_tract(lam), optax.sgd(lr))
  loss = lambda w: _loss(w, jnp.asarray(x), jnp.asarray(y))

  @jax.jit
  def step(w, s):
    u, s = tx.update(jax.grad(loss)(w), s, w, first_layer_inputs=jnp.asarray(x))
    return optax.apply_updates(w, u), s

  w, s, ref = jnp.asarray(w0), tx.init(jnp.asarray(w0)), w0.copy()
  for _ in range(20):
    grad_z = np.asarray(
      jax.grad(
        lambda z: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, jnp.asarray(y)))
      )(x @ ref)
    )
    ref = _least_squares_step(ref, x, grad_z, lr, lam)
    w, s = step(w, s)
  np.testing.assert_allclose(np.asarray(w), ref, rtol=1e-6, atol=1e-12)
  assert not np.allclose(ref, w0)  # it moved


def test_matches_official_woodbury_form_when_batch_smaller_than_fan_in(x64):
  # Petersen et al.'s code uses, for b < n (their layout W: (out, n), X: (b, n)):
  #   grad_W = G_z^T (I_b - 1/lam * A (A/lam + I_b)^{-1}) X / lam,  A = X X^T / b.
  rng = np.random.default_rng(3)
  b, n, k, lam = 3, 8, 2, 0.1
  x, gz = rng.normal(size=(b, n)), rng.normal(size=(b, k))
  a = x @ x.T / b
  official = gz.T @ (np.eye(b) - a @ np.linalg.inv(a / lam + np.eye(b)) / lam) @ x / lam
  u, _ = optim.scale_by_tract(lam).update(
    {"kernel": jnp.asarray(x.T @ gz)}, optax.EmptyState(), first_layer_inputs=jnp.asarray(x)
  )
  np.testing.assert_allclose(np.asarray(u["kernel"]), official.T, rtol=1e-9)


def test_bias_passes_through_and_other_groups_ignore_the_extra_argument():
  params = {"first": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}, "head": jnp.ones((3, 2))}
  labels = {"first": {"kernel": "tract", "bias": "tract"}, "head": "adam"}
  tx = optax.partition({"tract": optim.scale_by_tract(), "adam": optax.scale_by_adam()}, labels)
  g = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  x = jnp.arange(20.0).reshape(5, 4) / 10
  u, _ = jax.jit(lambda g, s: tx.update(g, s, params, first_layer_inputs=x))(g, tx.init(params))
  np.testing.assert_array_equal(u["first"]["bias"], g["first"]["bias"])
  gram = x.T @ x / 5 + 0.1 * jnp.eye(4)
  np.testing.assert_allclose(gram @ u["first"]["kernel"], g["first"]["kernel"], rtol=2e-4)
  assert u["head"].shape == (3, 2)
