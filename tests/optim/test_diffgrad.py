"""diffGrad against a float64 NumPy transcription of the paper's update (authors' v2 code)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim


def diffgrad_reference(grads, params0, lr, b1, b2, eps, wd):
  """Dubey et al. (arXiv:1909.11015), Eqs. 4-7, with the v2 corrections.

  g <- g + wd * theta (coupled L2); m, v Adam moments; xi = 1 / (1 + exp(-|g_{t-1} - g_t|))
  with g_0 = 0; theta <- theta - lr * sqrt(1 - b2^t) / (1 - b1^t) * xi * m / (sqrt(v) + eps).
  Returns the list of parameter increments.
  """
  theta = params0.astype(np.float64).copy()
  m = np.zeros_like(theta)
  v = np.zeros_like(theta)
  g_prev = np.zeros_like(theta)
  deltas = []
  for t, g in enumerate(grads, start=1):
    g = g.astype(np.float64) + wd * theta
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    xi = 1.0 / (1.0 + np.exp(-np.abs(g_prev - g)))
    g_prev = g
    step = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    delta = -step * xi * m / (np.sqrt(v) + eps)
    theta = theta + delta
    deltas.append(delta)
  return deltas


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_diffgrad_matches_float64_paper_transcription(x64, wd):
  rng = np.random.default_rng(0)
  grads = [rng.normal(size=(3, 4)) * rng.uniform(0.1, 3.0) for _ in range(20)]
  p0 = rng.normal(size=(3, 4))
  lr, b1, b2, eps = 0.01, 0.9, 0.99, 1e-8
  expected = diffgrad_reference(grads, p0, lr, b1, b2, eps, wd)
  tx = optim.diffgrad(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd)
  update = jax.jit(tx.update)
  p = jnp.asarray(p0)
  state = tx.init(p)
  for g, d in zip(grads, expected):
    u, state = update(jnp.asarray(g), state, p)
    assert u.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(u), d, rtol=1e-6, atol=0)
    p = optax.apply_updates(p, u)


def test_friction_uses_previous_gradient_not_the_current_one(x64):
  # The v1 bug set g_{t-1} := g_t before differencing, so xi == 1/2 always: then two
  # different gradient histories ending in the same moments would step identically.
  tx = optim.scale_by_diffgrad(b1=0.0, b2=0.0, eps=0.0)
  update = jax.jit(tx.update)
  g = jnp.array([1.0, -2.0])
  s = tx.init(g)
  _, s = update(g, s)
  u, _ = update(g, s)  # |g_prev - g| = 0 -> xi = 1/2; with b1 = b2 = 0, m / sqrt(v) = sign
  np.testing.assert_allclose(u, 0.5 * jnp.sign(g), rtol=1e-12)
  u, _ = update(-g, s)  # |g_prev - g| = 2|g| -> xi = sigmoid(2|g|)
  np.testing.assert_allclose(u, -jax.nn.sigmoid(2 * jnp.abs(g)) * jnp.sign(g), rtol=1e-12)


def test_mu_dtype_keeps_float32_accumulators_for_bf16_gradients():
  tx = optim.diffgrad(0.1, mu_dtype=jnp.float32)
  p = jnp.ones(4, jnp.bfloat16)
  u, s = jax.jit(tx.update)(jnp.full(4, 0.3, jnp.bfloat16), tx.init(p), p)
  assert u.dtype == jnp.bfloat16
  inner = s[1]
  assert inner.mu.dtype == inner.nu.dtype == inner.prev_grad.dtype == jnp.float32


@pytest.mark.parametrize(
  "kwargs",
  [
    {"b1": 1.0},
    {"b1": float("nan")},
    {"b2": -0.1},
    {"eps": -1.0},
    {"eps": float("inf")},
    {"weight_decay": -1e-3},
    {"weight_decay": float("inf")},
    {"learning_rate": -0.1},
    {"learning_rate": float("nan")},
  ],
)
def test_invalid_hyperparameters_raise_naming_the_argument(kwargs):
  (name,) = kwargs
  kwargs = {"learning_rate": 0.1, **kwargs}
  with pytest.raises(ValueError, match=name):
    optim.diffgrad(**kwargs)


def test_non_numeric_hyperparameter_is_a_type_error():
  with pytest.raises(TypeError, match="b1"):
    optim.scale_by_diffgrad(b1="0.9")


@pytest.mark.parametrize(
  "mask",
  [
    {"w": True, "b": False},
    lambda p: jax.tree.map(lambda x: x.ndim > 1, p),
  ],
  ids=["tree", "callable"],
)
def test_weight_decay_mask_decays_exactly_the_selected_leaves(mask):
  rng = np.random.default_rng(2)
  p = {"w": jnp.asarray(rng.normal(size=(3, 2))), "b": jnp.asarray(rng.normal(size=2))}
  g = jax.tree.map(lambda x: 0.3 * x + 0.1, p)

  def first_update(**kw):
    tx = optim.diffgrad(0.1, **kw)
    return tx.update(g, tx.init(p), p)[0]

  masked = first_update(weight_decay=0.5, weight_decay_mask=mask)
  full, none = first_update(weight_decay=0.5), first_update()
  chex.assert_trees_all_close(masked["w"], full["w"])
  chex.assert_trees_all_close(masked["b"], none["b"])
  assert not np.allclose(full["b"], none["b"])  # the decay does change that leaf
