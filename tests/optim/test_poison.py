"""optim._validation.poison: NaN rows in value and gradient, also where XLA sees zeros."""

import jax
import jax.numpy as jnp
import numpy as np

from optim._validation import poison


def test_poison_survives_jit_on_a_one_hot():
  # XLA folds one_hot(y) * where(v, 1, nan) into a select that keeps the one-hot's zeros.
  f = jax.jit(lambda v, y: poison(jax.nn.one_hot(y, 3), v))
  out = np.asarray(f(jnp.array([False, True]), jnp.array([0, 1])))
  assert np.isnan(out[0]).all()
  np.testing.assert_array_equal(out[1], [0.0, 1.0, 0.0])


def test_valid_rows_are_bit_for_bit_and_gradients_of_invalid_rows_are_nan():
  x = jnp.array([[-0.0, 0.0, 1.5], [2.0, -3.0, 0.0]])
  out = poison(x, jnp.array([True, True]))
  np.testing.assert_array_equal(np.asarray(out).view(np.int32), np.asarray(x).view(np.int32))
  g = jax.grad(lambda x: poison(x, jnp.array([False, True])).sum())(x)
  assert np.isnan(np.asarray(g[0])).all()
  np.testing.assert_array_equal(g[1], jnp.ones(3))
