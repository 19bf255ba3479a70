"""⊥Grad against a float64 NumPy transcription of Prieto et al.'s projection."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim


def perp_reference(w, g, eps=1e-30):
  """g_perp = g - (w.g / (w.w + eps)) w, rescaled to ||g|| (arXiv:2501.04697, Sec. 5)."""
  w, g = w.ravel().astype(np.float64), g.ravel().astype(np.float64)
  gp = g - (w @ g) / (w @ w + eps) * w
  return gp * (np.linalg.norm(g) / (np.linalg.norm(gp) + eps))


@pytest.fixture(scope="module")
def perp_sgd():
  tx = optax.chain(optim.perp_grad(), optax.sgd(0.1))
  return tx, jax.jit(tx.update)


def test_perp_grad_matches_float64_transcription_over_20_steps(x64):
  rng = np.random.default_rng(0)
  tx = optim.perp_grad()
  update = jax.jit(tx.update)
  w = {"k": rng.normal(size=(4, 3)), "b": rng.normal(size=(3,))}
  state = tx.init(w)
  for _ in range(20):
    g = {k: rng.normal(size=np.shape(v)) * rng.uniform(0.01, 10) for k, v in w.items()}
    u, state = update(g, state, w)
    for k in w:
      want = perp_reference(np.asarray(w[k]), g[k]).reshape(np.shape(w[k]))
      np.testing.assert_allclose(np.asarray(u[k]), want, rtol=1e-6, atol=1e-300, err_msg=k)
    w = {k: w[k] - 0.1 * np.asarray(u[k]) for k in w}


def test_update_is_orthogonal_to_weights_and_keeps_gradient_norm(perp_sgd):
  tx, update = perp_sgd
  rng = np.random.default_rng(1)
  w = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32) + 3.0 * w  # strong radial part
  u, _ = update(g, tx.init(w), w)
  u = -u / 0.1
  assert abs(float(jnp.vdot(u, w))) < 1e-4 * float(jnp.linalg.norm(u) * jnp.linalg.norm(w))
  np.testing.assert_allclose(jnp.linalg.norm(u), jnp.linalg.norm(g), rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_with_large_gradients_stays_finite_and_accurate(dtype):
  # ||g||^2 = 64 * 300^2 ~ 5.8e6 overflows float16 (max 65504) if accumulated in fp16.
  rng = np.random.default_rng(2)
  w = rng.normal(size=(8, 8))
  g = 300.0 * rng.normal(size=(8, 8))
  tx = optim.perp_grad()
  u, _ = jax.jit(tx.update)(jnp.asarray(g, dtype), tx.init(None), jnp.asarray(w, dtype))
  assert u.dtype == dtype and bool(jnp.all(jnp.isfinite(u)))
  want = perp_reference(
    np.asarray(jnp.asarray(w, dtype), np.float64), np.asarray(jnp.asarray(g, dtype), np.float64)
  ).reshape(8, 8)
  tol = 1e-2 if dtype == jnp.bfloat16 else 2e-3
  np.testing.assert_allclose(np.asarray(u, np.float64), want, rtol=tol, atol=tol * 300)


def test_zero_weights_pass_gradient_through_and_zero_gradient_stays_zero():
  tx = optim.perp_grad()
  update = jax.jit(tx.update)
  g = jnp.array([1.0, -2.0, 3.0])
  u, _ = update(g, tx.init(None), jnp.zeros(3))
  np.testing.assert_allclose(u, g, rtol=1e-6)
  u, _ = update(jnp.zeros(3), tx.init(None), jnp.array([1.0, 2.0, 3.0]))
  np.testing.assert_array_equal(u, jnp.zeros(3))


def test_gradient_parallel_to_weights_gives_zero_not_amplified_rounding_noise():
  tx = optim.perp_grad()
  update = jax.jit(tx.update)
  w = {"scalar": jnp.float32(0.7), "vec": jnp.array([0.3, -1.1, 2.0])}
  g = {"scalar": jnp.float32(-1.3), "vec": 2.5 * w["vec"]}
  u, _ = update(g, tx.init(w), w)
  np.testing.assert_array_equal(u["scalar"], 0.0)
  assert float(jnp.max(jnp.abs(u["vec"]))) == 0.0


def test_missing_params_is_a_clear_error():
  tx = optim.perp_grad()
  with pytest.raises(ValueError, match="params"):
    tx.update(jnp.ones(3), tx.init(None))


@pytest.mark.parametrize("eps", [0.0, -1e-30, float("nan"), float("inf")])
def test_invalid_eps_raises_naming_it(eps):
  with pytest.raises(ValueError, match="eps"):
    optim.perp_grad(eps)


def test_state_is_optax_empty_state():
  assert optim.perp_grad().init({"w": jnp.ones(2)}) == optax.EmptyState()


def _load_repro():
  import importlib.util
  import pathlib

  path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "repro_first_order.py"
  spec = importlib.util.spec_from_file_location("repro_first_order", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.slow
def test_perp_grad_generalizes_on_modular_addition_where_adamw_without_decay_does_not():
  """Prieto et al.: without weight decay AdamW memorizes; ⊥Grad still generalizes."""
  repro = _load_repro()
  kw = dict(p=31, hidden=128, max_steps=1500, seed=0)
  base = repro.steps_to_accuracy(optax.adamw(3e-3, weight_decay=0.0), "softmax", **kw)
  perp = repro.steps_to_accuracy(
    optax.chain(optim.perp_grad(), optax.adamw(3e-3, weight_decay=0.0)), "stablemax", **kw
  )
  assert base["train_95"] is not None  # AdamW does fit the training set ...
  assert perp["test_acc"] > base["test_acc"] + 0.5, (base, perp)  # ... but only ⊥Grad generalizes
