"""GraNd / EL2N against per-example jax.grad and softmax, run averaging, pruning, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from optim.data_scores import el2n, grand, keep_indices


def model(p, x):
  return jnp.tanh(x @ p["w"] + p["b"]) @ p["v"]


def _problem(runs=None):
  shape = (runs,) if runs else ()
  kw, kv, kx, ky = jax.random.split(jax.random.key(0), 4)
  params = {
    "w": jax.random.normal(kw, (*shape, 5, 4), jnp.float64),
    "b": jnp.zeros((*shape, 4), jnp.float64),
    "v": jax.random.normal(kv, (*shape, 4, 3), jnp.float64),
  }
  x = jax.random.normal(kx, (8, 5), jnp.float64)
  return params, (x, jax.random.randint(ky, (8,), 0, 3))


@jax.jit
def _example_grad(params, xi, yi):
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model(p, xi[None]), yi[None])[0]
  return jax.grad(loss)(params)


def _reference_grand(params, x, y):
  out = []
  for i in range(x.shape[0]):  # the obvious loop over examples is the reference
    g = _example_grad(params, x[i], y[i])
    out.append(np.sqrt(sum(float(jnp.sum(leaf**2)) for leaf in jax.tree.leaves(g))))
  return np.asarray(out)


def test_grand_is_the_norm_of_each_examples_gradient(x64):
  params, (x, y) = _problem()
  np.testing.assert_allclose(
    grand(model, params, (x, y)), _reference_grand(params, x, y), rtol=1e-10
  )


@pytest.mark.slow
def test_el2n_is_the_error_norm_averaged_over_stacked_runs(x64):
  params, (x, y) = _problem(runs=3)
  runs = [jax.tree.map(lambda a, r=r: a[r], params) for r in range(3)]
  probs = [np.asarray(jax.nn.softmax(model(p, x))) for p in runs]
  per_run = [np.linalg.norm(pr - np.eye(3)[y], axis=-1) for pr in probs]
  np.testing.assert_allclose(
    el2n(model, params, (x, y), stacked=True), np.mean(per_run, 0), rtol=1e-12
  )
  want = np.mean([_reference_grand(p, x, y) for p in runs[:2]], axis=0)
  two = jax.tree.map(lambda a: a[:2], params)
  np.testing.assert_allclose(grand(model, two, (x, y), stacked=True), want, rtol=1e-10)


def test_sharded_batch_gives_the_unsharded_scores(x64, mesh8):
  params, (x, y) = _problem()
  sharding = NamedSharding(mesh8, P("d"))
  xs, ys = jax.device_put(x, sharding), jax.device_put(y, sharding)
  np.testing.assert_allclose(
    grand(model, params, (xs, ys)), grand(model, params, (x, y)), rtol=1e-12
  )


@pytest.mark.slow
def test_sharded_stacked_runs_give_the_unsharded_scores(x64, mesh8):
  params, (x, y) = _problem(runs=2)
  sharding = NamedSharding(mesh8, P("d"))
  xs, ys = jax.device_put(x, sharding), jax.device_put(y, sharding)
  both = jax.jit(lambda p, b: [s(model, p, b, stacked=True) for s in (grand, el2n)])
  want = both(params, (x, y))  # GraNd over stacked runs: the mean of each run's norms
  runs = [jax.tree.map(lambda a, r=r: a[r], params) for r in range(2)]
  np.testing.assert_allclose(
    want[0], np.mean([_reference_grand(p, x, y) for p in runs], 0), rtol=1e-10
  )
  for g, w in zip(both(params, (xs, ys)), want):
    np.testing.assert_allclose(g, w, rtol=1e-12)


def test_keep_indices_hardest_easiest_random():
  s = jnp.array([0.5, 0.1, 0.9, 0.3, 0.7])
  np.testing.assert_array_equal(keep_indices(s, 0.4), [2, 4])
  np.testing.assert_array_equal(keep_indices(s, 0.4, variant="easiest"), [1, 3])
  np.testing.assert_array_equal(keep_indices(s, 0.5), [0, 2, 4])  # ceil(2.5) = 3
  r = keep_indices(s, 0.6, variant="random", key=0)
  assert len(r) == 3 and len(set(r.tolist())) == 3 and np.all(np.diff(r) > 0)
  np.testing.assert_array_equal(keep_indices(s, 0.6, variant="random", key=0), r)
  np.testing.assert_array_equal(keep_indices(s, 1.0), np.arange(5))
