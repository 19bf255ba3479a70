"""optim.layers.GhostBatchNorm (Hoffer et al. 2017): per-ghost-batch statistics, the
sequential running-statistics update (float64 transcription over 12 steps), equality with
nnx.BatchNorm at G = B, and the layer under jit, vmap, sharding and an orbax round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from optim.layers import GhostBatchNorm
from tests.helpers import orbax_roundtrip


def _x(key, shape):
  x = jax.random.normal(jax.random.key(key), shape)
  return x + jnp.arange(shape[0], dtype=x.dtype).reshape((-1,) + (1,) * (len(shape) - 1)) / 4


def _with_params(layer, key):
  """Non-trivial scale and bias."""
  c = layer.num_features
  k1, k2 = jax.random.split(jax.random.key(key))
  layer.scale[...] = 1.0 + 0.3 * jax.random.normal(k1, (c,), layer.scale[...].dtype)
  layer.bias[...] = 0.2 * jax.random.normal(k2, (c,), layer.bias[...].dtype)
  return layer


def test_ghost_batch_equal_to_the_batch_is_nnx_batchnorm():
  x = _x(0, (16, 5, 5, 4))
  bn = nnx.BatchNorm(4, momentum=0.9, rngs=nnx.Rngs(0))
  gbn = GhostBatchNorm(4, ghost_batch_size=16, momentum=0.9, rngs=nnx.Rngs(0))
  for _ in range(3):
    np.testing.assert_allclose(gbn(x), bn(x), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gbn.mean[...], bn.mean[...], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(gbn.var[...], bn.var[...], rtol=1e-5, atol=1e-6)
  assert jax.tree.structure(nnx.state(gbn, nnx.Param)) == jax.tree.structure(
    nnx.state(bn, nnx.Param)
  )
  bn.eval(), gbn.eval()
  np.testing.assert_allclose(gbn(x[:3]), bn(x[:3]), rtol=1e-5, atol=1e-5)


def test_each_ghost_batch_is_normalized_with_its_own_statistics():
  gbn = _with_params(GhostBatchNorm(3, ghost_batch_size=4, rngs=nnx.Rngs(0)), 1)
  x = _x(1, (12, 3))
  y = gbn(x)
  for lo in (0, 4, 8):
    alone = _with_params(GhostBatchNorm(3, ghost_batch_size=4, rngs=nnx.Rngs(0)), 1)
    np.testing.assert_allclose(y[lo : lo + 4], alone(x[lo : lo + 4]), rtol=1e-5, atol=1e-6)
  # A change in ghost batch 3 leaves ghost batches 1 and 2 unchanged.
  y2 = _with_params(GhostBatchNorm(3, ghost_batch_size=4, rngs=nnx.Rngs(0)), 1)(x.at[9].set(100.0))
  np.testing.assert_array_equal(y2[:8], y[:8])
  assert not np.allclose(y2[8:], y[8:])


def _official_gbn(x, scale, bias, mean, var, g, m, eps):
  """The official main_gbn.py: the batch in chunks of g run one after another through a
  batch-norm layer, each chunk normalized with its own statistics and taking one running
  update (flax's momentum convention and biased variance; see the class docstring)."""
  ys = []
  for chunk in np.split(x, len(x) // g):
    axes = tuple(range(chunk.ndim - 1))
    mu = chunk.mean(axes)
    var_b = ((chunk - mu) ** 2).mean(axes)
    ys.append(scale * (chunk - mu) / np.sqrt(var_b + eps) + bias)
    mean = m * mean + (1 - m) * mu
    var = m * var + (1 - m) * var_b
  return np.concatenate(ys), mean, var


def test_float64_transcription_of_the_sequential_running_update_over_12_steps(x64):
  g, m, eps, c = 4, 0.9, 1e-5, 3
  gbn = GhostBatchNorm(
    c, ghost_batch_size=g, momentum=m, epsilon=eps, param_dtype=jnp.float64, rngs=nnx.Rngs(0)
  )
  gbn = _with_params(gbn, 2)
  scale, bias = np.asarray(gbn.scale[...]), np.asarray(gbn.bias[...])
  mean, var = np.zeros(c), np.ones(c)
  rng = np.random.default_rng(0)
  for step in range(12):
    x = rng.normal(size=(16, 2, c)) * (1 + step) + step
    y = gbn(jnp.asarray(x))
    want, mean, var = _official_gbn(x, scale, bias, mean, var, g, m, eps)
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(gbn.mean[...]), mean, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.asarray(gbn.var[...]), var, rtol=1e-12, atol=1e-13)
  gbn.eval()
  x = rng.normal(size=(5, 2, c))
  want = scale * (x - mean) / np.sqrt(var + eps) + bias
  np.testing.assert_allclose(np.asarray(gbn(jnp.asarray(x))), want, rtol=1e-12, atol=1e-12)


def test_train_eval_and_view_switch_the_mode():
  gbn = GhostBatchNorm(2, ghost_batch_size=2, rngs=nnx.Rngs(0))
  x = _x(3, (4, 2))
  gbn(x)
  stats = np.asarray(gbn.mean[...])
  gbn.eval()
  assert gbn.use_running_average
  gbn(x[:3])  # any batch size, statistics untouched
  np.testing.assert_array_equal(gbn.mean[...], stats)
  gbn.train()
  assert not gbn.use_running_average
  view = nnx.view(gbn, use_running_average=True)
  assert view.use_running_average and not gbn.use_running_average


def test_gradients_reach_scale_bias_and_the_layer_below():
  class Net(nnx.Module):
    def __init__(self):
      self.lin = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
      self.gbn = GhostBatchNorm(4, ghost_batch_size=2, rngs=nnx.Rngs(0))

    def __call__(self, x):
      return jnp.sum(jnp.tanh(self.gbn(self.lin(x))) ** 2)

  net = Net()
  grads = nnx.grad(lambda m: m(_x(4, (6, 3))))(net)
  assert float(jnp.abs(grads.gbn.scale[...]).sum()) > 0
  assert float(jnp.abs(grads.gbn.bias[...]).sum()) > 0
  assert float(jnp.abs(grads.lin.kernel[...]).sum()) > 0


def _apply(graphdef, state, x):
  layer = nnx.merge(graphdef, state)
  y = layer(x)
  return y, nnx.state(layer)


def test_jit_equals_eager_and_does_not_retrace():
  gbn = _with_params(GhostBatchNorm(3, ghost_batch_size=4, rngs=nnx.Rngs(0)), 5)
  graphdef, state = nnx.split(gbn)
  traces = []

  @jax.jit
  def f(state, x):
    traces.append(1)
    return _apply(graphdef, state, x)

  x = _x(6, (8, 3))
  y_jit, s_jit = f(state, x)
  y_eager = gbn(x)
  np.testing.assert_allclose(y_jit, y_eager, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(s_jit["mean"][...], gbn.mean[...], rtol=1e-6)
  f(s_jit, x + 1)
  assert len(traces) == 1


def test_vmap_over_an_ensemble_equals_each_member():
  members = [
    _with_params(GhostBatchNorm(3, ghost_batch_size=2, rngs=nnx.Rngs(0)), k) for k in range(3)
  ]
  graphdef = nnx.graphdef(members[0])
  stacked = jax.tree.map(lambda *s: jnp.stack(s), *[nnx.state(m) for m in members])
  xs = jnp.stack([_x(10 + k, (6, 3)) for k in range(3)])
  ys, states = jax.vmap(lambda s, x: _apply(graphdef, s, x))(stacked, xs)
  for k, m in enumerate(members):
    np.testing.assert_allclose(ys[k], m(xs[k]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(states["var"][...][k], m.var[...], rtol=1e-6)


def test_vmap_over_inputs_in_evaluation_mode():
  gbn = _with_params(GhostBatchNorm(3, ghost_batch_size=2, rngs=nnx.Rngs(0)), 7)
  gbn(_x(8, (4, 3)))
  gbn.eval()
  xs = jnp.stack([_x(20 + k, (2, 3)) for k in range(4)])
  np.testing.assert_allclose(jax.vmap(gbn)(xs), jnp.stack([gbn(x) for x in xs]), rtol=1e-6)


def test_sharded_batch_gives_the_unsharded_result(mesh8):
  gbn = _with_params(GhostBatchNorm(4, ghost_batch_size=4, rngs=nnx.Rngs(0)), 9)
  graphdef, state = nnx.split(gbn)
  x = _x(11, (32, 4))
  f = jax.jit(lambda s, x: _apply(graphdef, s, x))
  y_ref, s_ref = f(state, x)
  xs = jax.device_put(x, NamedSharding(mesh8, P("d")))
  y, s = f(state, xs)
  assert len(y.sharding.device_set) == 8
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(s_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_orbax_round_trip_continues_bit_for_bit(tmp_path):
  gbn = _with_params(GhostBatchNorm(3, ghost_batch_size=2, rngs=nnx.Rngs(0)), 12)
  gbn(_x(13, (4, 3)))
  graphdef, state = nnx.split(gbn)
  restored = nnx.merge(graphdef, orbax_roundtrip(state, tmp_path))
  x = _x(14, (6, 3))
  np.testing.assert_array_equal(restored(x), gbn(x))
  np.testing.assert_array_equal(restored.mean[...], gbn.mean[...])
  np.testing.assert_array_equal(restored.var[...], gbn.var[...])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_output_dtype_follows_nnx_batchnorm(dtype):
  x = _x(15, (4, 3)).astype(dtype)
  gbn = GhostBatchNorm(3, ghost_batch_size=2, rngs=nnx.Rngs(0))
  bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
  assert gbn(x).dtype == bn(x).dtype
  gbn16 = GhostBatchNorm(3, ghost_batch_size=2, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert gbn16(x).dtype == jnp.bfloat16
