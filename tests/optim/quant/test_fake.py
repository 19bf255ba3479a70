"""Fake quantization: grid round trips, error bounds, per-channel scales, STE, bit accounting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim.quant import fake_quant, model_size_bits, quantize_params

X = jax.random.normal(jax.random.key(0), (6, 5))


def test_symmetric_grid_points_round_trip_exactly():
  for bits in (2, 3, 4, 8):
    qmax = 2 ** (bits - 1) - 1
    levels = jnp.arange(-qmax, qmax + 1, dtype=jnp.float32) * 0.25  # max |x| = 0.25 qmax
    np.testing.assert_array_equal(fake_quant(levels, bits), levels)


@pytest.mark.parametrize("symmetric", [True, False])
def test_quantization_is_idempotent_and_uses_at_most_2_to_the_b_levels(symmetric):
  for bits in (2, 3, 8):
    q = fake_quant(X, bits, symmetric=symmetric)
    np.testing.assert_allclose(fake_quant(q, bits, symmetric=symmetric), q, atol=1e-6)
    assert len(np.unique(np.asarray(q))) <= 2**bits - (1 if symmetric else 0)


@pytest.mark.parametrize("bits", [2, 8])
def test_error_is_at_most_half_a_step(bits):
  step = float(jnp.max(jnp.abs(X))) / (2 ** (bits - 1) - 1)
  assert float(jnp.max(jnp.abs(fake_quant(X, bits) - X))) <= step / 2 + 1e-6
  lo, hi = min(float(X.min()), 0.0), max(float(X.max()), 0.0)
  astep = (hi - lo) / (2**bits - 1)
  # the rounded zero point may push the top of the range one step out: clipped, < 1 step.
  assert float(jnp.max(jnp.abs(fake_quant(X, bits, symmetric=False) - X))) <= astep + 1e-6


def test_asymmetric_keeps_zero_exact_and_one_bit_is_two_levels():
  x = jnp.array([0.0, 0.3, 1.7, 2.0])
  q = fake_quant(x, 3, symmetric=False)
  assert float(q[0]) == 0.0
  np.testing.assert_allclose(fake_quant(x, 1, symmetric=False), [0.0, 0.0, 2.0, 2.0])


@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_equals_per_tensor_on_each_channel(symmetric):
  q = fake_quant(X, 3, symmetric=symmetric, axis=1)
  for c in range(X.shape[1]):
    np.testing.assert_allclose(q[:, c], fake_quant(X[:, c], 3, symmetric=symmetric), atol=1e-6)
  q0 = fake_quant(X, 3, symmetric=symmetric, axis=-2)
  for r in range(X.shape[0]):
    np.testing.assert_allclose(q0[r], fake_quant(X[r], 3, symmetric=symmetric), atol=1e-6)


def test_all_zero_tensor_and_channel_are_exact():
  z = jnp.zeros((3, 2)).at[:, 1].set(jnp.array([1.0, -2.0, 0.5]))
  np.testing.assert_array_equal(fake_quant(jnp.zeros(4), 4), jnp.zeros(4))
  q = fake_quant(z, 4, axis=1)
  np.testing.assert_array_equal(q[:, 0], 0.0)
  assert bool(jnp.all(jnp.isfinite(q)))


def test_straight_through_gradient_is_the_identity():
  c = jax.random.normal(jax.random.key(1), X.shape)
  for symmetric in (True, False):
    g = jax.grad(lambda x: jnp.sum(c * fake_quant(x, 2, symmetric=symmetric, axis=0)))(X)
    np.testing.assert_allclose(g, c)


def test_dtype_is_preserved(x64):
  x = jnp.asarray(np.linspace(-1, 1, 7), jnp.float64)
  assert fake_quant(x, 4).dtype == jnp.float64
  assert fake_quant(x.astype(jnp.bfloat16), 4).dtype == jnp.bfloat16


def test_quantize_params_matches_fake_quant_per_leaf_and_keeps_none_leaves():
  p = {"w": X, "b": X[0], "s": jnp.array(0.123)}
  q = quantize_params(p, {"w": 3, "b": 2, "s": None}, axis=-1)
  np.testing.assert_array_equal(q["w"], fake_quant(X, 3, axis=-1))
  np.testing.assert_array_equal(q["b"], fake_quant(X[0], 2))  # vectors: per tensor
  assert q["s"] is p["s"]
  np.testing.assert_array_equal(quantize_params(p, 4)["w"], fake_quant(X, 4))


def test_model_size_counts_bits_per_parameter():
  p = {"w": jnp.zeros((6, 5)), "b": jnp.zeros(5, jnp.bfloat16)}
  assert model_size_bits(p, 4) == 35 * 4
  assert model_size_bits(p, {"w": 3, "b": None}) == 30 * 3 + 5 * 16
  assert model_size_bits(jax.eval_shape(lambda: p), {"w": 8, "b": 2}) == 30 * 8 + 5 * 2
