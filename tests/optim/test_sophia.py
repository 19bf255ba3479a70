"""Sophia (Liu et al., arXiv:2305.14342) against a float64 NumPy transcription of Algorithm 3.

On a diagonal quadratic the Hutchinson estimate with a Rademacher probe is exact
(u * (a * u) = a), so the whole trajectory is deterministic and must match the paper's
update to float64 round-off, for both estimators, with weight decay and negative curvature.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim

STEPS = 20


def _quadratic(a, b):
  """f(theta) = sum(0.5 * a * theta^2 - b * theta) over a pytree; Hessian diag(a)."""
  return lambda p: sum(
    jnp.sum(0.5 * ai * x**2 - bi * x)
    for x, ai, bi in zip(jax.tree.leaves(p), jax.tree.leaves(a), jax.tree.leaves(b))
  )


def _problem():
  rng = np.random.default_rng(0)
  a = {"w": np.array([2.0, 0.5, -1.0]), "v": np.array([[4.0, 1e-3], [-0.3, 1.5]])}
  b = {"w": rng.normal(size=3), "v": rng.normal(size=(2, 2))}
  theta0 = {"w": rng.normal(size=3), "v": rng.normal(size=(2, 2))}
  return a, b, theta0


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def sophia_reference(theta, a, b, *, lr, b1, b2, gamma, eps, k, wd, steps, gnb_batch=None):
  """Algorithm 3 of the paper, written from the paper (t counted from 1)."""
  m = np.zeros_like(theta)
  h = np.zeros_like(theta)
  out, wins = [], []
  for t in range(1, steps + 1):
    g = a * theta - b
    m = b1 * m + (1 - b1) * g
    if (t - 1) % k == 0:  # t mod k = 1 (every step when k = 1)
      h_hat = a if gnb_batch is None else gnb_batch * g * g
      h = b2 * h + (1 - b2) * h_hat
    ratio = m / np.maximum(gamma * h, eps)
    wins.append(np.mean(np.abs(ratio) < 1))
    theta = theta - lr * wd * theta - lr * np.clip(ratio, -1, 1)
    out.append(theta)
  return np.stack(out), np.array(wins)


def _run(opt, f, theta0, steps, **extra_fns):
  step = jax.jit(
    lambda p, s: opt.update(jax.grad(f)(p), s, p, obj_fn=f, **extra_fns),
  )
  p, s = theta0, opt.init(theta0)
  traj, wins = [], []
  for _ in range(steps):
    u, s = step(p, s)
    p = optax.apply_updates(p, u)
    traj.append(_flat(p))
    wins.append(float(s[0].win_rate))  # chain state: (sophia, decay, lr)
  return np.stack(traj), np.array(wins), s


CONFIGS = {
  # gamma large enough that some coordinates leave the clipped regime within 20 steps.
  "k3_wd": dict(lr=0.05, b1=0.9, b2=0.5, gamma=0.5, eps=1e-12, k=3, wd=0.1),
  "k1": dict(lr=0.1, b1=0.965, b2=0.99, gamma=0.02, eps=1e-12, k=1, wd=0.0),
  "k10_defaults": dict(lr=0.1, b1=0.965, b2=0.99, gamma=0.01, eps=1e-12, k=10, wd=0.1),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_sophia_h_matches_numpy_transcription_of_algorithm3(x64, name):
  cfg = CONFIGS[name]
  a, b, theta0 = _problem()
  f = _quadratic(a, b)
  opt = optim.sophia(
    cfg["lr"],
    b1=cfg["b1"],
    b2=cfg["b2"],
    gamma=cfg["gamma"],
    eps=cfg["eps"],
    update_interval=cfg["k"],
    weight_decay=cfg["wd"],
    key=3,
  )
  traj, wins, _ = _run(opt, f, jax.tree.map(jnp.asarray, theta0), STEPS)
  ref, ref_wins = sophia_reference(_flat(theta0), _flat(a), _flat(b), steps=STEPS, **cfg)
  np.testing.assert_allclose(traj, ref, rtol=1e-6, atol=1e-12)
  # The default counts the win rate on refresh steps (t = 1, 1 + k, ...) and keeps it between.
  refresh = np.arange(STEPS) // cfg["k"] * cfg["k"]
  np.testing.assert_allclose(wins, ref_wins[refresh])
  # Clipped coordinates occur in every configuration; Newton-like (unclipped) ones too,
  # except with the paper's small gamma, where 20 steps stay in the clipped regime.
  assert ref_wins.min() < 1
  assert ref_wins.max() > 0 or name == "k10_defaults"


def test_win_rate_counted_every_step_on_request(x64):
  cfg = CONFIGS["k3_wd"]
  a, b, theta0 = _problem()
  f = _quadratic(a, b)
  kwargs = dict(b1=cfg["b1"], b2=cfg["b2"], gamma=cfg["gamma"], update_interval=cfg["k"], key=3)
  opt = optim.sophia(cfg["lr"], weight_decay=cfg["wd"], track_win_rate="step", **kwargs)
  traj, wins, _ = _run(opt, f, jax.tree.map(jnp.asarray, theta0), STEPS)
  ref, ref_wins = sophia_reference(_flat(theta0), _flat(a), _flat(b), steps=STEPS, **cfg)
  np.testing.assert_allclose(traj, ref, rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(wins, ref_wins)
  # The rate moves between refreshes, so the two modes differ.
  assert not np.allclose(ref_wins, ref_wins[np.arange(STEPS) // cfg["k"] * cfg["k"]])
  with pytest.raises(ValueError, match="track_win_rate"):
    optim.sophia(0.1, track_win_rate="never")


def test_sophia_g_matches_numpy_transcription_with_batch_size_scaling(x64):
  cfg = CONFIGS["k3_wd"]
  a, b, theta0 = _problem()
  f = _quadratic(a, b)
  batch = 7.0
  opt = optim.sophia(
    cfg["lr"],
    b1=cfg["b1"],
    b2=cfg["b2"],
    gamma=cfg["gamma"],
    eps=cfg["eps"],
    update_interval=cfg["k"],
    weight_decay=cfg["wd"],
    variant="gnb",
    batch_size=batch,
    key=3,
  )
  # A sampled loss that ignores its key: its gradient is the true one, g_hat = g.
  traj, _, _ = _run(
    opt, f, jax.tree.map(jnp.asarray, theta0), STEPS, sampled_obj_fn=lambda p, key: f(p)
  )
  ref, _ = sophia_reference(_flat(theta0), _flat(a), _flat(b), steps=STEPS, gnb_batch=batch, **cfg)
  np.testing.assert_allclose(traj, ref, rtol=1e-6, atol=1e-12)


# Statistical (many sampled labels); the GNB update itself is pinned by the f64
# transcription test above. Slow: the fast suite's time goes elsewhere.
@pytest.mark.slow
def test_gnb_estimate_is_unbiased_for_the_gauss_newton_diagonal(x64):
  """E_y[B * g_hat^2] = diag(GGN) of the mean cross-entropy (= its Hessian: linear model)."""
  n, d, c, samples = 8, 3, 4, 2000
  x = jax.random.normal(jax.random.key(0), (n, d))
  w = 0.7 * jax.random.normal(jax.random.key(1), (d, c))

  def mean_ce(w, y):
    return optax.softmax_cross_entropy_with_integer_labels(x @ w, y).mean()

  def sampled_obj_fn(w, key):
    y = jax.random.categorical(key, jax.lax.stop_gradient(x @ w))
    return mean_ce(w, y)

  opt = optim.scale_by_sophia(b2=0.0, variant="gnb", batch_size=n, update_interval=1)

  def one(key):
    state = opt.init(w)._replace(key=key)
    _, state = opt.update(jnp.zeros_like(w), state, w, sampled_obj_fn=sampled_obj_fn)
    return state.hess

  est = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(2), samples))
  mean, sem = est.mean(0), est.std(0) / np.sqrt(samples)
  # The model is linear in w, so the GGN of the mean CE is its Hessian; the Hessian of
  # the CE in the logits, diag(p) - p p^T, does not depend on the labels.
  hess = jax.hessian(mean_ce)(w, jnp.zeros(n, jnp.int32))
  ggn_diag = jnp.einsum("ijij->ij", hess)
  assert np.all(np.abs(mean - ggn_diag) < 5 * sem + 1e-12), (mean, ggn_diag, sem)
  # Without the batch-size factor the estimate would be off by n: far outside the band.
  assert np.all(np.abs(mean / n - ggn_diag) > 5 * sem)


def test_negative_curvature_gives_a_clipped_sign_step_not_a_flipped_one(x64):
  a = {"w": jnp.array([-3.0, 2.0])}
  b = {"w": jnp.array([1.0, 1.0])}
  f = _quadratic(a, b)
  opt = optim.scale_by_sophia(gamma=10.0, key=0)
  p = {"w": jnp.array([0.5, 0.5])}
  g = jax.grad(f)(p)
  u, state = jax.jit(lambda g, s, p: opt.update(g, s, p, obj_fn=f))(g, opt.init(p), p)
  # h < 0 for coordinate 0: max(gamma h, eps) = eps, so |m / eps| is clipped to 1 with
  # the sign of the momentum (a descent direction), never divided by a negative number.
  assert float(state.hess["w"][0]) < 0
  np.testing.assert_array_equal(u["w"][0], jnp.sign(g["w"][0]))
  assert np.all(np.isfinite(u["w"]))
  # Coordinate 1 has positive curvature and gamma = 10 keeps it unclipped.
  assert abs(float(u["w"][1])) < 1
  assert float(state.win_rate) == 0.5


def test_non_finite_curvature_is_skipped_coordinatewise(x64):
  a = {"w": jnp.array([1.0, 2.0, 3.0])}
  b = {"w": jnp.zeros(3)}
  f = _quadratic(a, b)
  # The curvature objective has an infinite second derivative in coordinate 2.
  bad = lambda p: f(p) + jnp.inf * p["w"][2] ** 2
  opt = optim.scale_by_sophia(b2=0.5, update_interval=1, key=0)
  p = {"w": jnp.array([1.0, 1.0, 1.0])}
  step = jax.jit(lambda s, obj: opt.update(jax.grad(f)(p), s, p, obj_fn=obj), static_argnums=1)
  _, state = step(opt.init(p), f)
  h1 = state.hess["w"]
  u, state = step(state, bad)
  np.testing.assert_allclose(state.hess["w"][:2], 0.5 * h1[:2] + 0.5 * a["w"][:2])
  np.testing.assert_array_equal(state.hess["w"][2], h1[2])  # kept, not NaN/inf
  assert np.all(np.isfinite(u["w"]))


def test_vmapped_states_run_both_cond_branches_and_match_unbatched_steps():
  a = {"w": jnp.array([1.0, 4.0])}
  f = _quadratic(a, {"w": jnp.zeros(2)})
  opt = optim.scale_by_sophia(gamma=1.0, update_interval=2, key=0)
  ps = {"w": jnp.array([[1.0, 1.0], [-1.0, 2.0], [0.5, -0.5]])}
  states = jax.vmap(opt.init)(ps)
  # Desynchronise the step counts so the refresh predicate differs across the batch.
  states = states._replace(count=jnp.array([0, 1, 2], jnp.int32))

  def step(p, s):
    return opt.update(jax.grad(f)(p), s, p, obj_fn=f)

  u_b, s_b = jax.jit(jax.vmap(step))(ps, states)
  step = jax.jit(step)
  for i in range(3):
    p_i = jax.tree.map(lambda x: x[i], ps)
    s_i = jax.tree.map(lambda x: x[i], states)
    u_i, s_i = step(p_i, s_i)
    np.testing.assert_allclose(u_b["w"][i], u_i["w"], rtol=1e-6)
    np.testing.assert_allclose(s_b.hess["w"][i], s_i.hess["w"], rtol=1e-6)


def test_missing_objective_raises_a_clear_error():
  p = jnp.ones(2)
  opt = optim.sophia(0.1)
  with pytest.raises(ValueError, match="obj_fn"):
    opt.update(p, opt.init(p), p)
  opt_g = optim.sophia(0.1, variant="gnb", batch_size=4)
  with pytest.raises(ValueError, match="sampled_obj_fn"):
    opt_g.update(p, opt_g.init(p), p, obj_fn=lambda q: jnp.sum(q**2))
  with pytest.raises(ValueError, match="params"):
    opt.update(p, opt.init(p), obj_fn=lambda q: jnp.sum(q**2))


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(variant="newton"), "variant"),
    (dict(variant="gnb"), "batch_size"),
    (dict(variant="gnb", batch_size=0), "batch_size"),
    (dict(b1=1.0), "b1"),
    (dict(b2=-0.1), "b2"),
    (dict(gamma=0.0), "gamma"),
    (dict(gamma=float("nan")), "gamma"),
    (dict(eps=0.0), "eps"),
    (dict(clip_threshold=0.0), "clip_threshold"),
    (dict(update_interval=0), "update_interval"),
    (dict(update_interval=2.5), "update_interval"),
    (dict(probe="normal"), "probe"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(learning_rate=float("inf")), "learning_rate"),
  ],
)
def test_invalid_hyperparameters_raise_at_construction(kwargs, match):
  kwargs = {"learning_rate": 0.1, **kwargs}
  with pytest.raises(ValueError, match=match):
    optim.sophia(**kwargs)


def test_non_numeric_hyperparameter_and_traced_update_interval_raise_type_errors():
  with pytest.raises(TypeError, match="gamma"):
    optim.sophia(0.1, gamma=None)
  with pytest.raises(TypeError, match="update_interval.*static_args"):
    jax.jit(lambda k: optim.scale_by_sophia(update_interval=k).init(jnp.ones(2)))(3)


def _first_update(opt, p, **extra):
  f = _quadratic({"w": jnp.array([1.0, 4.0])}, {"w": jnp.array([0.5, -0.5])})
  g = jax.tree.map(lambda x: x.astype(p["w"].dtype), jax.grad(f)(p))
  return opt.update(g, opt.init(p), p, obj_fn=f, **extra)


def test_estimator_is_a_deprecated_spelling_of_variant():
  p = {"w": jnp.array([1.0, -2.0])}
  sampled = {"sampled_obj_fn": lambda q, key: jnp.sum(q["w"] ** 2)}
  with pytest.warns(DeprecationWarning, match="variant"):
    old = optim.sophia(0.1, estimator="gnb", batch_size=2, key=0)
  with pytest.warns(DeprecationWarning, match="variant"):
    old_bare = optim.scale_by_sophia(estimator="gnb", batch_size=2, key=0)
  new = optim.sophia(0.1, variant="gnb", batch_size=2, key=0)
  new_bare = optim.scale_by_sophia(variant="gnb", batch_size=2, key=0)
  np.testing.assert_array_equal(
    _first_update(old, p, **sampled)[0]["w"], _first_update(new, p, **sampled)[0]["w"]
  )
  np.testing.assert_array_equal(
    _first_update(old_bare, p, **sampled)[1].hess["w"],
    _first_update(new_bare, p, **sampled)[1].hess["w"],
  )
  with pytest.raises(TypeError, match="variant"):
    optim.sophia(0.1, estimator="gnb", variant="gnb", batch_size=2)


def test_omitted_learning_rate_warns_and_uses_the_old_default():
  p = {"w": jnp.array([1.0, -2.0])}
  with pytest.warns(DeprecationWarning, match="learning_rate"):
    opt = optim.sophia(key=0)
  u, _ = _first_update(opt, p)
  u_ref, _ = _first_update(optim.sophia(1e-4, key=0), p)
  np.testing.assert_array_equal(u["w"], u_ref["w"])


def test_key_is_keyword_only_and_accepts_seed_raw_and_typed_keys():
  with pytest.raises(TypeError):
    optim.scale_by_sophia(0.9, 0.99, 0.01, 1e-12, 10, "hutchinson", None, 1.0, "gaussian", None, 0)
  p = {"w": jnp.array([1.0, -2.0])}
  outs = [
    _first_update(optim.scale_by_sophia(probe="gaussian", key=k), p)
    for k in (5, jax.random.PRNGKey(5), jax.random.key(5))
  ]
  for u, s in outs:
    np.testing.assert_array_equal(u["w"], outs[0][0]["w"])
    np.testing.assert_array_equal(s.hess["w"], outs[0][1].hess["w"])
    np.testing.assert_array_equal(jax.random.key_data(s.key), jax.random.key_data(outs[0][1].key))


def test_mu_dtype_sets_the_first_moment_dtype_only():
  p32 = {"w": jnp.array([1.0, -2.0])}
  u, s = _first_update(optim.scale_by_sophia(mu_dtype=jnp.bfloat16), p32)
  assert s.mu["w"].dtype == jnp.bfloat16 and s.hess["w"].dtype == jnp.float32
  assert u["w"].dtype == jnp.float32
  p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), p32)
  u, s = _first_update(optim.scale_by_sophia(mu_dtype=jnp.float32), p16)
  assert s.mu["w"].dtype == jnp.float32 and s.hess["w"].dtype == jnp.bfloat16
  assert u["w"].dtype == jnp.bfloat16
