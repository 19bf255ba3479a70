"""USEFUL's helpers: k-means in JAX against scikit-learn and a hand-checked case, the
per-class slow-learnable split, the upsampled indices, and training on them with optax's SAM."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optim.data_scores import kmeans, slow_learnable, upsample

sklearn_cluster = pytest.importorskip("sklearn.cluster")


def test_kmeans_hand_checked_square():
  # Two pairs 10 apart: centres at the pairs' midpoints, inertia 4 * 0.5^2.
  x = jnp.array([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
  r = kmeans(x, 2, key=0, init=jnp.array([[0.0, 0.0], [10.0, 0.0]]))
  np.testing.assert_allclose(r.centroids, [[0.0, 0.5], [10.0, 0.5]])
  assert r.assignments.tolist() == [0, 0, 1, 1]
  assert float(r.inertia) == 1.0 and bool(r.converged)
  # Lloyd: iteration 1 moves the centres, iteration 2 repeats the assignments.
  assert int(r.n_iters) == 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_matches_sklearn_lloyd_from_the_same_init(x64, seed):
  rng = np.random.default_rng(seed)
  centres = rng.normal(scale=4.0, size=(4, 3))
  x = np.concatenate([c + rng.normal(size=(30, 3)) for c in centres])
  init = x[rng.choice(len(x), 4, replace=False)]
  ref = sklearn_cluster.KMeans(4, init=init, n_init=1, algorithm="lloyd", tol=1e-4).fit(x)
  r = kmeans(jnp.asarray(x), 4, key=0, init=jnp.asarray(init), tol=1e-4)
  np.testing.assert_allclose(r.centroids, ref.cluster_centers_, rtol=1e-10, atol=1e-12)
  np.testing.assert_array_equal(r.assignments, ref.labels_)
  np.testing.assert_allclose(float(r.inertia), ref.inertia_, rtol=1e-10)
  assert int(r.n_iters) == ref.n_iter_


def test_kmeans_plus_plus_finds_separated_clusters():
  rng = np.random.default_rng(3)
  x = np.concatenate([c + 0.1 * rng.normal(size=(20, 2)) for c in ([0, 0], [5, 5], [-5, 5])])
  r = kmeans(jnp.asarray(x, jnp.float32), 3, key=7)
  # Each true cluster is one k-means cluster.
  labels = np.asarray(r.assignments).reshape(3, 20)
  assert all(len(set(row)) == 1 for row in labels) and len({row[0] for row in labels}) == 3


def test_slow_learnable_picks_the_higher_loss_cluster_of_each_class():
  # Class 0: outputs in two blobs, the second with the larger loss. Class 1: the reverse.
  out = jnp.array(
    [[4.0, 0.0], [4.2, 0.1], [0.1, 0.2], [0.0, 0.1], [0.0, 4.0], [0.1, 4.1], [1.0, 1.0], [1.1, 0.9]]
  )
  loss = jnp.array([0.05, 0.04, 0.9, 1.1, 0.02, 0.03, 0.5, 0.6])
  y = jnp.array([0, 0, 0, 0, 1, 1, 1, 1])
  slow = slow_learnable(out, loss, y, key=0)
  assert slow.tolist() == [False, False, True, True, False, False, True, True]


def test_slow_learnable_does_not_split_a_class_of_one():
  out = jnp.array([[0.0, 1.0], [3.0, 0.0], [3.1, 0.0], [0.0, 0.0], [0.1, 0.0]])
  loss = jnp.array([5.0, 0.1, 0.2, 0.8, 0.9])
  slow = slow_learnable(out, loss, jnp.array([2, 0, 0, 0, 0]), key=1)
  assert slow.tolist() == [False, False, False, True, True]


def test_upsample_repeats_the_slow_examples():
  slow = np.array([True, False, False, True, False])
  assert upsample(slow).tolist() == [0, 1, 2, 3, 4, 0, 3]
  assert upsample(slow, factor=3).tolist() == [0, 1, 2, 3, 4, 0, 3, 0, 3]
  assert upsample(slow, factor=1).tolist() == [0, 1, 2, 3, 4]


def test_upsampled_data_trains_with_optax_sam():
  """The recipe end to end on a toy: SAM (optax.contrib.sam) on the USEFUL distribution."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 2)).astype(np.float32)
  y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(np.int32)
  loss_fn = lambda w, xb, yb: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(xb @ w, yb))
  w0 = jnp.zeros((2, 2))
  logits = x @ (0.1 * np.eye(2, dtype=np.float32))
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  idx = upsample(slow_learnable(jnp.asarray(logits), losses, y, key=0))
  assert len(idx) > len(x)
  tx = optax.contrib.sam(optax.sgd(0.5), optax.chain(optax.contrib.normalize(), optax.sgd(0.05)))
  w, s = w0, tx.init(w0)
  for _ in range(40):
    g = jax.grad(loss_fn)(w, x[idx], y[idx])
    u, s = tx.update(g, s, w)
    w = optax.apply_updates(w, u)
  assert float(loss_fn(w, x, y)) < 0.5 * float(loss_fn(w0, x, y))
