"""M-FAC (Frantar et al., arXiv:2107.03356): static products, the sliding-window optimizer,
and Optimal Brain Surgeon pruning with the inverse diagonal.

References are dense float64 inverses of (lambda I + G^T G / m) and a NumPy transcription
of the paper's recursive (Sherman-Morrison) static algorithm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optim
from optim.curvature import mfac_ihvp, obs_saliency


def _stack_tree(G, shapes):
  """Splits the columns of G (m x d) into a pytree of leaves (m, *shape)."""
  out, i = {}, 0
  for name, shape in shapes.items():
    size = int(np.prod(shape))
    out[name] = jnp.asarray(G[:, i : i + size].reshape(G.shape[0], *shape))
    i += size
  return out


def _unstack(tree, shapes):
  return np.concatenate([np.ravel(np.asarray(tree[k])) for k in shapes])


def _vec_tree(x, shapes):
  return jax.tree.map(lambda leaf: leaf[0], _stack_tree(x[None], shapes))


def paper_static_algorithm(G, damp):
  """Sec. 3.1 of the paper: H_0^{-1} = I / damp; H_i^{-1} = H_{i-1}^{-1} -
  (H_{i-1}^{-1} g_i)(H_{i-1}^{-1} g_i)^T / (m + g_i^T H_{i-1}^{-1} g_i), precomputed as
  v_i = H_{i-1}^{-1} g_i and d_i = m + g_i^T v_i; returns (product, diagonal) functions."""
  m = G.shape[0]
  V, den = np.zeros_like(G), np.zeros(m)
  for i in range(m):
    v = G[i] / damp
    for j in range(i):
      v -= (V[j] @ G[i]) / den[j] * V[j]
    V[i], den[i] = v, m + G[i] @ v
  product = lambda x: x / damp - V.T @ ((V @ x) / den)
  diagonal = 1 / damp - np.sum(V**2 / den[:, None], axis=0)
  return product, diagonal


SHAPES = {"w": (4, 3), "b": (3,), "s": ()}  # d = 16


@pytest.mark.parametrize("m, damp", [(5, 1e-2), (24, 1e-3), (8, 3.0)])
def test_static_products_and_diagonal_match_dense_inverse(x64, m, damp):
  rng = np.random.default_rng(m)
  d = 16
  G = rng.normal(size=(m, d))
  dense = np.linalg.inv(damp * np.eye(d) + G.T @ G / m)
  inv = jax.jit(mfac_ihvp)(_stack_tree(G, SHAPES), damp)
  for _ in range(3):
    x = rng.normal(size=d)
    got = _unstack(inv(_vec_tree(x, SHAPES)), SHAPES)
    np.testing.assert_allclose(got, dense @ x, rtol=1e-8, atol=1e-8 * np.abs(dense @ x).max())
  np.testing.assert_allclose(_unstack(inv.diagonal(), SHAPES), np.diag(dense), rtol=1e-8)
  # ... and the paper's recursive construction gives the same numbers.
  product, diagonal = paper_static_algorithm(G, damp)
  x = rng.normal(size=d)
  np.testing.assert_allclose(_unstack(inv(_vec_tree(x, SHAPES)), SHAPES), product(x), rtol=1e-8)
  np.testing.assert_allclose(_unstack(inv.diagonal(), SHAPES), diagonal, rtol=1e-8)


def test_static_inverse_works_as_a_linear_operator_and_crosses_jit(x64):
  rng = np.random.default_rng(0)
  G = rng.normal(size=(6, 16))
  inv = mfac_ihvp(_stack_tree(G, SHAPES), 0.5)
  op = inv.as_operator()
  assert op.dim == 16
  x = _vec_tree(rng.normal(size=16), SHAPES)
  via_jit = jax.jit(lambda inv, x: inv(x))(inv, x)
  for a, b in zip(jax.tree.leaves(op(x)), jax.tree.leaves(via_jit)):
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_obs_saliency_matches_dense_formula_and_guards_nonpositive_diagonal(x64):
  rng = np.random.default_rng(1)
  G = rng.normal(size=(10, 16))
  w = rng.normal(size=16)
  dense = np.linalg.inv(1e-2 * np.eye(16) + G.T @ G / 10)
  inv = mfac_ihvp(_stack_tree(G, SHAPES), 1e-2)
  sal = obs_saliency(_vec_tree(w, SHAPES), inv.diagonal())
  np.testing.assert_allclose(_unstack(sal, SHAPES), w**2 / (2 * np.diag(dense)), rtol=1e-8)
  guarded = obs_saliency(jnp.array([1.0, 1.0]), jnp.array([0.0, -1.0]))
  assert np.all(np.isinf(guarded)) and np.all(guarded > 0)


def mfac_optimizer_reference(grads, m, damp, momentum):
  """Dense float64 transcription of the optimizer: window of the last m gradients
  (zero-filled before the m-th step), v_t = mu v + (1 - mu) F_t^{-1} g_t."""
  d = grads.shape[1]
  window = np.zeros((m, d))
  v = np.zeros(d)
  out = []
  for t, g in enumerate(grads):
    window[t % m] = g
    F = damp * np.eye(d) + window.T @ window / m
    v = momentum * v + (1 - momentum) * np.linalg.solve(F, g)
    out.append(v.copy())
  return np.stack(out)


@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_sliding_window_optimizer_matches_dense_reference_through_ring_wraparound(x64, momentum):
  m, damp, steps = 6, 1e-2, 20  # 20 steps > 3 m: the ring buffer wraps around 3 times
  rng = np.random.default_rng(3)
  grads = rng.normal(size=(steps, 16)) * np.linspace(0.5, 2.0, steps)[:, None]
  opt = optim.scale_by_mfac(num_grads=m, damping=damp, momentum=momentum)
  step = jax.jit(opt.update)
  state = opt.init(_vec_tree(np.zeros(16), SHAPES))
  got = []
  for g in grads:
    u, state = step(_vec_tree(g, SHAPES), state)
    got.append(_unstack(u, SHAPES))
  ref = mfac_optimizer_reference(grads, m, damp, momentum)
  np.testing.assert_allclose(np.stack(got), ref, rtol=1e-8, atol=1e-10)
  # The incrementally maintained Gram matrix equals the window's Gram matrix.
  G = np.stack([_unstack(jax.tree.map(lambda x: x[i], state.grads), SHAPES) for i in range(m)])
  np.testing.assert_allclose(state.gram, G @ G.T, rtol=1e-12)


def test_optimizer_weight_decay_is_coupled_before_preconditioning(x64):
  m, damp, wd, lr = 4, 0.1, 0.3, 0.5
  rng = np.random.default_rng(4)
  p, g = rng.normal(size=16), rng.normal(size=16)
  opt = optim.mfac(lr, num_grads=m, damping=damp, weight_decay=wd)
  pt = _vec_tree(p, SHAPES)
  u, _ = opt.update(_vec_tree(g, SHAPES), opt.init(pt), pt)
  gw = g + wd * p
  expected = -lr * np.linalg.solve(damp * np.eye(16) + np.outer(gw, gw) / m, gw)
  np.testing.assert_allclose(_unstack(u, SHAPES), expected, rtol=1e-8)


def test_obs_pruning_with_mfac_beats_magnitude_pruning_on_logistic_regression(x64):
  """A small pruning example: remove k of d weights of a trained logistic regression.

  OBS (Hassibi & Stork) with the M-FAC inverse empirical Fisher of the per-example
  gradients picks the k weights of least saliency w^2 / (2 [F^-1]_qq) and corrects the
  others by the group OBS update; magnitude pruning zeroes the k smallest |w|.
  """
  n, d, k = 400, 12, 4
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=d))
  w_true = rng.normal(size=d)
  y = jnp.asarray((rng.uniform(size=n) < 1 / (1 + np.exp(-x @ w_true))).astype(float))

  def example_loss(w, xi, yi):
    z = xi @ w
    return jnp.logaddexp(0.0, z) - yi * z

  loss = lambda w: jnp.mean(jax.vmap(example_loss, (None, 0, 0))(w, x, y))
  newton = jax.jit(lambda w: w - jnp.linalg.solve(jax.hessian(loss)(w), jax.grad(loss)(w)))
  w = jnp.zeros(d)
  for _ in range(30):  # Newton's method to the optimum
    w = newton(w)

  per_example = jax.vmap(jax.grad(example_loss), (None, 0, 0))(w, x, y)
  inv = mfac_ihvp(per_example, damping=1e-6)
  sal = obs_saliency(w, inv.diagonal())
  q = np.argsort(np.asarray(sal))[:k]
  cols = np.asarray(jax.vmap(inv)(jnp.eye(d)[q])).T  # F^-1 E^T, one O(md) product each
  delta = -cols @ np.linalg.solve(cols[q], np.asarray(w)[q])
  w_obs = np.asarray(w) + delta
  assert np.allclose(w_obs[q], 0, atol=1e-10)

  w_mag = np.asarray(w).copy()
  w_mag[np.argsort(np.abs(np.asarray(w)))[:k]] = 0.0
  base = float(loss(w))
  rise_obs, rise_mag = float(loss(w_obs)) - base, float(loss(jnp.asarray(w_mag))) - base
  assert rise_obs < rise_mag, (rise_obs, rise_mag)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(num_grads=0), "num_grads"),
    (dict(num_grads=4.5), "num_grads"),
    (dict(damping=0.0), "damping"),
    (dict(damping=float("inf")), "damping"),
    (dict(momentum=1.0), "momentum"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(learning_rate=float("nan")), "learning_rate"),
  ],
)
def test_invalid_hyperparameters_raise_at_construction(kwargs, match):
  kwargs = {"learning_rate": 1e-3, **kwargs}
  with pytest.raises(ValueError, match=match):
    optim.mfac(**kwargs)


def test_num_grads_must_be_a_concrete_integer():
  with pytest.raises(TypeError, match="num_grads"):
    optim.mfac(1e-3, num_grads="8")
  with pytest.raises(TypeError, match="num_grads.*static_args"):
    jax.jit(lambda m: optim.scale_by_mfac(num_grads=m).init(jnp.ones(2)))(4)
  # An integral float is an integer: the window has 4 rows.
  assert optim.scale_by_mfac(num_grads=4.0).init(jnp.ones(2)).grads.shape == (4, 2)


def test_omitted_learning_rate_warns_and_uses_the_official_default():
  p, g = jnp.array([1.0, -2.0]), jnp.array([0.5, 0.25])
  with pytest.warns(DeprecationWarning, match="learning_rate"):
    opt = optim.mfac(num_grads=4)
  ref = optim.mfac(1e-3, num_grads=4)
  np.testing.assert_array_equal(opt.update(g, opt.init(p), p)[0], ref.update(g, ref.init(p), p)[0])


def test_buffer_dtype_is_a_deprecated_spelling_of_mu_dtype():
  p = jnp.ones(3)
  with pytest.warns(DeprecationWarning, match="mu_dtype"):
    old = optim.mfac(1e-3, num_grads=2, buffer_dtype=jnp.bfloat16)
  with pytest.warns(DeprecationWarning, match="mu_dtype"):
    old_bare = optim.scale_by_mfac(num_grads=2, buffer_dtype=jnp.bfloat16)
  new = optim.mfac(1e-3, num_grads=2, mu_dtype=jnp.bfloat16)
  for opt in (old, new):
    assert opt.init(p)[1].grads.dtype == jnp.bfloat16  # chain: (decay, mfac, lr)
  state = old_bare.init(p)
  assert state.grads.dtype == jnp.bfloat16 and state.momentum.dtype == jnp.float32
  u, state = old_bare.update(p, state)
  assert u.dtype == jnp.float32 and state.grads.dtype == jnp.bfloat16


def test_bad_update_input_raises_clear_errors():
  with pytest.raises(ValueError, match="leading axis"):
    mfac_ihvp({"a": jnp.ones((3, 2)), "b": jnp.ones((4,))})
  with pytest.raises(ValueError, match="damping"):
    mfac_ihvp(jnp.ones((3, 2)), damping=-1.0)
  opt = optim.scale_by_mfac(num_grads=2)
  with pytest.raises(ValueError, match="structure"):
    opt.update({"a": jnp.ones(2)}, opt.init({"b": jnp.ones(2)}))
