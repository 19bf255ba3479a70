"""Coherence of per-example gradients (a data score) and robust-mean SGD (winsorized GD, M3)
against float64 transcriptions of Chatterjee & Zielinski's definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import mstats

import optim
from optim.data_scores import coherence, gradient_coherence


def _pairwise_alpha(g):
  """E_{i,j}[g_i . g_j] / E_i[g_i . g_i] by the O(m^2) double sum (the definition)."""
  flat = np.concatenate([np.asarray(x).reshape(x.shape[0], -1) for x in jax.tree.leaves(g)], 1)
  m = flat.shape[0]
  num = sum(flat[i] @ flat[j] for i in range(m) for j in range(m)) / m**2
  return num / np.mean(np.sum(flat**2, 1))


def test_gradient_coherence_is_the_pairwise_dot_product_ratio(x64):
  k1, k2 = jax.random.split(jax.random.key(0))
  g = {
    "w": jax.random.normal(k1, (6, 3, 2), jnp.float64) + 0.5,
    "b": jax.random.normal(k2, (6, 4), jnp.float64),
  }
  np.testing.assert_allclose(gradient_coherence(g), _pairwise_alpha(g), rtol=1e-12)


def test_coherence_limits_identical_and_orthogonal():
  m = 5
  same = {"w": jnp.tile(jnp.array([[1.0, -2.0, 0.5]]), (m, 1))}
  orth = {"w": 3.0 * jnp.eye(m)}
  assert float(gradient_coherence(same)) == pytest.approx(1.0, rel=1e-6)
  assert float(gradient_coherence(orth)) == pytest.approx(1.0 / m, rel=1e-6)  # alpha_perp
  opposite = {"w": jnp.array([[1.0, 0.0], [-1.0, 0.0]])}
  assert float(gradient_coherence(opposite)) == 0.0


def _model(p, x):
  return jnp.tanh(x @ p["w"] + p["b"]) @ p["v"]


def _problem(runs=None):
  shape = (runs,) if runs else ()
  kw, kv, kx, ky = jax.random.split(jax.random.key(1), 4)
  params = {
    "w": jax.random.normal(kw, (*shape, 5, 4), jnp.float64),
    "b": jnp.zeros((*shape, 4), jnp.float64),
    "v": jax.random.normal(kv, (*shape, 4, 3), jnp.float64),
  }
  x = jax.random.normal(kx, (8, 5), jnp.float64)
  return params, (x, jax.random.randint(ky, (8,), 0, 3))


def _example_grads(params, x, y):
  out = []
  for i in range(x.shape[0]):  # the obvious loop over examples is the reference
    loss = lambda p, i=i: optax.softmax_cross_entropy_with_integer_labels(
      _model(p, x[i][None]), y[i][None]
    )[0]
    out.append(jax.grad(loss)(params))
  return jax.tree.map(lambda *a: jnp.stack(a), *out)


def test_coherence_of_a_batch_is_that_of_its_per_example_gradients(x64):
  params, (x, y) = _problem()
  want = _pairwise_alpha(_example_grads(params, x, y))
  np.testing.assert_allclose(coherence(_model, params, (x, y)), want, rtol=1e-10)


def test_coherence_averages_stacked_runs(x64):
  params, (x, y) = _problem(runs=2)
  runs = [jax.tree.map(lambda a, r=r: a[r], params) for r in range(2)]
  want = np.mean([_pairwise_alpha(_example_grads(p, x, y)) for p in runs])
  np.testing.assert_allclose(coherence(_model, params, (x, y), stacked=True), want, rtol=1e-10)


def test_random_labels_are_less_coherent_than_real_ones():
  # Two well-separated classes: real labels share directions, shuffled ones cancel.
  kx, kp = jax.random.split(jax.random.key(2))
  y = jnp.array([0, 1] * 16)
  x = jax.random.normal(kx, (32, 4)) + 3.0 * jax.nn.one_hot(y, 4)
  params = {
    "w": 0.1 * jax.random.normal(kp, (4, 4)),
    "b": jnp.zeros(4),
    "v": 0.1 * jnp.ones((4, 2)),
  }
  shuffled = jax.random.permutation(jax.random.key(3), y)
  real = float(coherence(_model, params, (x, y)))
  rand = float(coherence(_model, params, (x, shuffled)))
  assert real > 2 * rand


# ----------------------------------------------------------------------------- robust mean


def _np_winsorized_mean(g, c):
  """scipy's winsorize (c values each end) per coordinate, then the mean."""
  b = g.shape[0]
  flat = g.reshape(b, -1)
  cols = [
    np.mean(mstats.winsorize(flat[:, j], limits=(c / b, c / b))) for j in range(flat.shape[1])
  ]
  return np.asarray(cols).reshape(g.shape[1:])


def _np_median_of_means(g, r):
  return np.median(np.stack([s.mean(0) for s in np.array_split(g, r)]), axis=0)


@pytest.mark.parametrize("c", [0, 1, 2, 3])
def test_winsorized_mean_matches_scipy_winsorize(x64, c):
  g = jax.random.normal(jax.random.key(c), (8, 3, 2), jnp.float64) ** 3
  tx = optim.scale_by_robust_mean(variant="winsorize", c=c)
  u, _ = tx.update({"w": g}, tx.init({"w": g[0]}))
  np.testing.assert_allclose(u["w"], _np_winsorized_mean(np.asarray(g), c), rtol=1e-13)


@pytest.mark.parametrize("r", [1, 2, 3, 4])
def test_median_of_means_matches_numpy(x64, r):
  g = jax.random.normal(jax.random.key(r), (10, 5), jnp.float64) ** 3
  tx = optim.scale_by_robust_mean(variant="median_of_means", num_groups=r)
  u, _ = tx.update({"w": g}, tx.init({"w": g[0]}))
  np.testing.assert_allclose(u["w"], _np_median_of_means(np.asarray(g), r), rtol=1e-13)


@pytest.mark.parametrize("b", [2, 5, 6])
def test_both_limits_are_the_coordinate_median(x64, b):
  g = jax.random.normal(jax.random.key(b), (b, 4), jnp.float64)
  med = np.median(np.asarray(g), axis=0)
  for tx in (
    optim.scale_by_robust_mean(variant="winsorize", c=b),
    optim.scale_by_robust_mean(variant="median_of_means", num_groups=b + 3),
  ):
    u, _ = tx.update(g, tx.init(g[0]))
    np.testing.assert_allclose(u, med, rtol=1e-13)


def test_winsorized_mean_suppresses_a_single_examples_direction():
  # Seven examples agree on coordinate 0; one pushes coordinate 1 alone (a weak direction).
  g = jnp.zeros((8, 2)).at[:, 0].set(1.0).at[3, 1].set(50.0)
  tx = optim.scale_by_robust_mean(c=1)
  u, _ = tx.update(g, tx.init(g[0]))
  assert u.tolist() == [1.0, 0.0]
  assert jnp.mean(g, 0).tolist() == [1.0, 6.25]


def test_robust_mean_sgd_is_the_transcription_over_12_steps(x64):
  """w <- w - lr * winsor_mean_i grad_i, per-example least-squares gradients by hand."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(9, 3))
  y = x @ np.array([1.0, -2.0, 0.5]) + rng.standard_t(1.5, size=9)  # heavy-tailed noise
  for variant, kw, ref in (
    ("winsorize", {"c": 2}, lambda g: _np_winsorized_mean(g, 2)),
    ("median_of_means", {"num_groups": 3}, lambda g: _np_median_of_means(g, 3)),
  ):
    tx = optim.robust_mean_sgd(0.1, variant=variant, **kw)
    w = jnp.zeros(3, jnp.float64)
    state = tx.init(w)
    w_np = np.zeros(3)
    loss = lambda w, xi, yi: 0.5 * (xi @ w - yi) ** 2
    for _ in range(12):
      g = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(w, x, y)
      u, state = tx.update(g, state, w)
      w = optax.apply_updates(w, u)
      g_np = (x @ w_np - y)[:, None] * x  # d/dw of (x.w - y)^2 / 2
      w_np = w_np - 0.1 * ref(g_np)
    np.testing.assert_allclose(w, w_np, rtol=1e-12)


def test_robust_mean_keeps_bf16_and_does_not_retrace():
  tx = optim.robust_mean_sgd(0.1, c=1)
  p = {"w": jnp.ones((3,), jnp.bfloat16)}
  g = {"w": jnp.arange(12.0).reshape(4, 3).astype(jnp.bfloat16)}
  traces = []

  @jax.jit
  def step(p, s, g):
    traces.append(1)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, u

  s = tx.init(p)
  for _ in range(3):
    p, s, u = step(p, s, g)
  assert u["w"].dtype == jnp.bfloat16 and len(traces) == 1


@pytest.mark.parametrize("c", [1, 3, 9])
def test_order_statistics_equal_the_sort_with_ties_and_infinities(c):
  from optim._coherence import _order_statistic

  g = jnp.round(2 * jax.random.normal(jax.random.key(c), (20, 7)))  # many ties
  g = g.at[0, 0].set(jnp.inf).at[1, 1].set(-jnp.inf).at[2, 1].set(-jnp.inf)
  s = jnp.sort(g, axis=0)
  np.testing.assert_array_equal(_order_statistic(g, c), s[c])
  np.testing.assert_array_equal(-_order_statistic(-g, c), s[-1 - c])
