"""optim.layers.MultiSampleDropout (Inoue 2019): K dropout samples through one shared head
equal an explicit loop over K heads with the same keys (outputs and gradients of the
averaged loss); evaluation mode; the layer under jit, vmap, sharding and orbax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from optim.layers import MultiSampleDropout
from tests.helpers import orbax_roundtrip

K, RATE = 5, 0.4


def _head():
  return nnx.Linear(6, 3, rngs=nnx.Rngs(0))


def _msd(seed=1, **kw):
  return MultiSampleDropout(_head(), rate=RATE, num_samples=K, rngs=nnx.Rngs(dropout=seed), **kw)


X = jax.random.normal(jax.random.key(0), (8, 6))
Y = jnp.arange(8) % 3


def _loop(head, x, key):
  """K explicit heads (the same weights), each after its own nnx.Dropout mask."""
  keys = jax.random.split(key, K)
  drop = nnx.Dropout(RATE, deterministic=False)
  return jnp.stack([head(drop(x, rngs=keys[k])) for k in range(K)])


def _loss(outs):
  return optax.softmax_cross_entropy_with_integer_labels(
    outs, jnp.broadcast_to(Y, outs.shape[:-1])
  ).mean()


def test_outputs_equal_an_explicit_loop_over_heads_with_the_same_keys():
  msd = _msd()
  key = jax.random.key(7)
  out = msd(X, key=key)
  assert out.shape == (K, 8, 3)
  np.testing.assert_allclose(out, _loop(msd.head, X, key), rtol=1e-6, atol=1e-6)
  # The samples differ from one another (distinct masks).
  assert not np.allclose(out[0], out[1])


def test_gradient_of_the_averaged_loss_equals_the_loop():
  msd = _msd()
  key = jax.random.key(3)
  g = nnx.grad(lambda m: _loss(m(X, key=key)))(msd)
  g_loop = nnx.grad(lambda h: _loss(_loop(h, X, key)))(msd.head)
  np.testing.assert_allclose(g.head.kernel[...], g_loop.kernel[...], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g.head.bias[...], g_loop.bias[...], rtol=1e-5, atol=1e-7)
  # The average of K per-sample losses, not the loss of the averaged logits.
  outs = msd(X, key=key)
  assert float(_loss(outs)) != pytest.approx(float(_loss(outs.mean(0, keepdims=True))))


def test_default_stream_advances_and_is_reproducible():
  a, b = _msd(seed=4), _msd(seed=4)
  first = a(X)
  np.testing.assert_array_equal(first, b(X))
  assert not np.allclose(a(X), first)


def test_evaluation_mode_runs_the_head_once_without_dropout():
  msd = _msd()
  msd.eval()
  out = msd(X)
  assert out.shape == (K, 8, 3)
  for k in range(K):
    np.testing.assert_array_equal(out[k], msd.head(X))
  msd.train()
  assert not np.allclose(msd(X)[0], msd.head(X))
  # An explicit deterministic=False after eval() still drops out.
  msd.eval()
  np.testing.assert_allclose(
    msd(X, deterministic=False, key=9), _loop(msd.head, X, jax.random.key(9)), rtol=1e-6
  )
  view = nnx.view(msd, deterministic=False)
  assert view.deterministic is False and msd.deterministic is True


def test_one_sample_at_rate_zero_is_the_head():
  msd = MultiSampleDropout(_head(), rate=0.0, num_samples=1, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(msd(X)[0], msd.head(X))


def test_a_head_with_running_statistics_is_refused():
  head = nnx.Sequential(nnx.Linear(6, 3, rngs=nnx.Rngs(0)), nnx.BatchNorm(3, rngs=nnx.Rngs(0)))
  with pytest.raises(TypeError, match="head keeps running statistics"):
    MultiSampleDropout(head, rate=0.5, rngs=nnx.Rngs(0))


def test_jit_train_step_equals_eager_and_does_not_retrace():
  msd = _msd()
  graphdef, state = nnx.split(msd)
  traces = []

  @jax.jit
  def loss_and_state(state):
    traces.append(1)
    m = nnx.merge(graphdef, state)
    value = _loss(m(X))
    return value, nnx.state(m)

  value, state2 = loss_and_state(state)
  assert float(value) == pytest.approx(float(_loss(_msd()(X))), rel=1e-6)
  loss_and_state(state2)
  assert len(traces) == 1


def test_vmap_over_inputs_with_one_key_equals_the_loop():
  msd = _msd()
  xs = jnp.stack([X, 2 * X, -X])
  out = jax.vmap(lambda x: msd(x, key=5))(xs)
  want = jnp.stack([msd(x, key=5) for x in xs])
  np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_sharded_batch_gives_the_unsharded_result(mesh8):
  msd = _msd()
  graphdef, state = nnx.split(msd)
  f = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, key=11))
  x = jax.random.normal(jax.random.key(1), (16, 6))
  ref = f(state, x)
  out = f(state, jax.device_put(x, NamedSharding(mesh8, P("d"))))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_orbax_round_trip_continues_bit_for_bit(tmp_path):
  msd = _msd()
  msd(X)  # advance the dropout stream
  graphdef, state = nnx.split(msd)
  restored = nnx.merge(graphdef, orbax_roundtrip(state, tmp_path))
  np.testing.assert_array_equal(restored(X), msd(X))
