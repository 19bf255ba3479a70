"""optim.local: tpSGD and NoProp-DT against float64 transcriptions of the papers' updates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optim.local import (
  mlp_apply,
  mlp_init,
  noprop_coefficients,
  noprop_dt_loss,
  noprop_predict,
  noprop_schedule,
  tpsgd_grads,
  tpsgd_projections,
)


def _data(n=12, d=5, c=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)), rng.integers(0, c, n)


# ----------------------------------------------------------------------------- tpSGD


def _tpsgd_reference(params, projections, x, y, lr, steps, variant):
  """The paper's delta rule, written out in NumPy float64 (tanh hidden units)."""
  ws = [(np.array(p["w"]), np.array(p["b"])) for p in params]
  ps = [np.array(p) for p in projections]
  c = ws[-1][0].shape[1]
  onehot = np.eye(c)[y]
  n = x.shape[0]
  history = []
  for _ in range(steps):
    h, new, losses = x, [], []
    for (w, b), p in zip(ws[:-1], ps, strict=True):
      z = h @ w + b
      out = np.tanh(z)
      r = onehot @ p - out
      losses.append(
        0.5 * np.mean(np.sum(r**2, 1)) if variant == "l2" else np.mean(np.abs(r).sum(1))
      )
      delta = (r if variant == "l2" else np.sign(r)) * (1 - out**2)
      new.append((w + lr * h.T @ delta / n, b + lr * delta.mean(0)))
      h = out
    w, b = ws[-1]
    logits = h @ w + b
    sm = np.exp(logits - logits.max(1, keepdims=True))
    sm /= sm.sum(1, keepdims=True)
    losses.append(-np.mean(np.log(sm[np.arange(n), y])))
    g = (sm - onehot) / n
    new.append((w - lr * h.T @ g, b - lr * g.sum(0)))
    ws = new
    history.append(losses)
  return ws, np.array(history)


@pytest.mark.parametrize("variant", ["l2", "l1"])
def test_tpsgd_matches_the_delta_rule_over_12_steps(x64, variant):
  x, y = _data()
  sizes = [5, 7, 6, 3]
  params = mlp_init(sizes, key=0, dtype=jnp.float64)
  proj = tpsgd_projections(sizes, key=1, dtype=jnp.float64)
  want, want_losses = _tpsgd_reference(params, proj, x, y, 0.3, 12, variant)
  tx = optax.sgd(0.3)
  state = tx.init(params)
  step = jax.jit(lambda p, s: _step(tx, p, s, proj, x, y, variant))
  got_losses = []
  for _ in range(12):
    params, state, losses = step(params, state)
    got_losses.append(losses)
  for layer, (w, b) in zip(params, want, strict=True):
    np.testing.assert_allclose(layer["w"], w, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(layer["b"], b, rtol=1e-12, atol=1e-13)
  np.testing.assert_allclose(np.array(got_losses), want_losses, rtol=1e-12)


def _step(tx, params, state, proj, x, y, variant):
  grads, losses = tpsgd_grads(params, proj, x, y, variant=variant)
  updates, state = tx.update(grads, state)
  return optax.apply_updates(params, updates), state, losses


def test_tpsgd_no_gradient_crosses_layers(x64):
  x, y = _data()
  sizes = [5, 7, 6, 3]
  params = mlp_init(sizes, key=0, dtype=jnp.float64)
  proj = tpsgd_projections(sizes, key=1, dtype=jnp.float64)
  g, _ = tpsgd_grads(params, proj, x, y)
  other = [params[0], jax.tree.map(lambda a: 3 * a + 1, params[1]), params[2]]
  g2, _ = tpsgd_grads(other, proj, x, y)
  np.testing.assert_array_equal(g[0]["w"], g2[0]["w"])  # layer 1 ignores what lies above
  assert not np.allclose(g[2]["w"], g2[2]["w"])


def test_tpsgd_traced_bad_label_poisons():
  x, y = _data()
  sizes = [5, 4, 3]
  params, proj = mlp_init(sizes, key=0), tpsgd_projections(sizes, key=1)
  f = jax.jit(lambda y: tpsgd_grads(params, proj, jnp.asarray(x, jnp.float32), y))
  grads, losses = f(jnp.asarray(y).at[0].set(7))
  assert np.isnan(losses).all() and np.isnan(grads[0]["w"]).all()
  grads, losses = f(jnp.asarray(y))
  assert np.isfinite(losses).all()


def test_tpsgd_trains_and_mlp_apply_agrees(x64):
  x, y = _data(n=60)
  sizes = [5, 16, 3]
  params = mlp_init(sizes, key=0, dtype=jnp.float64)
  proj = tpsgd_projections(sizes, key=1, dtype=jnp.float64)
  tx = optax.sgd(0.5)
  state = tx.init(params)
  first = None
  for _ in range(50):
    params, state, losses = _step(tx, params, state, proj, x, y, "l2")
    first = losses if first is None else first
  assert losses[-1] < first[-1] and losses[0] < first[0]
  logits = mlp_apply(params, x)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  _, now = tpsgd_grads(params, proj, x, y)
  np.testing.assert_allclose(ce, now[-1], rtol=1e-12)


# ----------------------------------------------------------------------------- NoProp-DT


def test_noprop_schedules(x64):
  T = 10
  cos = noprop_schedule(T)
  t = np.arange(T + 1)
  f = np.cos(0.5 * np.pi * ((T - t) / T + 0.008) / 1.008) ** 2
  f0 = np.cos(0.5 * np.pi * 0.008 / 1.008) ** 2
  np.testing.assert_allclose(cos[1:], np.minimum(f / f0, 0.999)[1:], rtol=1e-15)
  assert cos[0] == 0 and cos[-1] == 0.999 and np.all(np.diff(cos) > 0)
  np.testing.assert_allclose(noprop_schedule(T, variant="linear"), 0.999 * t / T, rtol=1e-15)


@pytest.mark.parametrize("variant", ["cosine", "linear"])
def test_noprop_coefficients_are_the_gaussian_posterior(x64, variant):
  ab = noprop_schedule(8, variant=variant)
  a, b, c = (np.asarray(v) for v in noprop_coefficients(ab))
  for t in range(1, 9):
    # z_t = sqrt(ab_t) u + sqrt(1 - ab_t) e,  z_{t-1} = sqrt(alpha) z_t + sqrt(1 - alpha) e'
    alpha = ab[t - 1] / ab[t]
    cov = np.sqrt(alpha) * (1 - ab[t])  # Cov(z_t, z_{t-1}) per coordinate
    var_prev = alpha * (1 - ab[t]) + 1 - alpha
    np.testing.assert_allclose(var_prev, 1 - ab[t - 1], rtol=1e-13)
    k = cov / var_prev
    np.testing.assert_allclose(b[t - 1], k, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(a[t - 1], np.sqrt(ab[t]) - k * np.sqrt(ab[t - 1]), rtol=1e-13)
    np.testing.assert_allclose(c[t - 1], (1 - ab[t]) - k * cov, rtol=1e-13)
  # a perfect denoiser's chain has exactly the marginals q(z_t | y), from z_0 ~ N(0, I)
  mean, var = 0.0, 1.0
  for t in range(1, 9):
    mean, var = a[t - 1] + b[t - 1] * mean, b[t - 1] ** 2 * var + c[t - 1]
    np.testing.assert_allclose([mean, var], [np.sqrt(ab[t]), 1 - ab[t]], rtol=1e-12)


def _linear_den(w, x, z):
  return jnp.concatenate([x, z], 1) @ w


def _readout(w, z):
  return z @ w


def _noprop_reference(blocks, w_out, x, y, ab, eps, eta):
  """Eq. 8 with linear blocks and one-hot embedding, value and gradients by hand (float64)."""
  T, c = len(blocks), w_out.shape[1]
  u = np.eye(c)[y]
  n = x.shape[0]
  snr = ab / (1 - ab)
  loss, grads = 0.0, []
  for t in range(1, T + 1):
    z = np.sqrt(ab[t - 1]) * u + np.sqrt(1 - ab[t - 1]) * eps[t - 1]
    A = np.concatenate([x, z], 1)
    r = A @ blocks[t - 1] - u
    wt = 0.5 * eta * (snr[t] - snr[t - 1])
    loss += wt * np.mean(np.sum(r**2, 1))
    grads.append(2 * wt / n * A.T @ r)
  zT = np.sqrt(ab[T]) * u + np.sqrt(1 - ab[T]) * eps[T]
  logits = zT @ w_out
  sm = np.exp(logits - logits.max(1, keepdims=True))
  sm /= sm.sum(1, keepdims=True)
  loss += -np.mean(np.log(sm[np.arange(n), y]))
  loss += 0.5 * np.mean(ab[0] * np.sum(u**2, 1) - c * ab[0] - c * np.log(1 - ab[0]))
  return loss, grads, zT.T @ (sm - u) / n


@pytest.mark.parametrize("variant", ["cosine", "linear"])
def test_noprop_dt_loss_matches_eq8_over_10_steps(x64, variant):
  x, y = _data(n=10, d=4, c=3)
  T, c, lr, eta = 4, 3, 0.05, 0.1
  ab = noprop_schedule(T, variant=variant, alpha_bar_max=0.99)
  rng = np.random.default_rng(3)
  blocks = [rng.normal(size=(4 + c, c)) * 0.3 for _ in range(T)]
  w_out = rng.normal(size=(c, c))
  params = {"blocks": [jnp.asarray(b) for b in blocks], "readout": jnp.asarray(w_out)}

  def loss_fn(p, key):
    return noprop_dt_loss(
      p, x, y, ab, denoise=_linear_den, readout=_readout, key=key, eta=eta, num_classes=c
    )

  grad = jax.jit(jax.value_and_grad(lambda p, k: loss_fn(p, k)[0]))
  for step in range(10):
    key = jax.random.key(step)
    eps = np.asarray(jax.random.normal(key, (T + 1, 10, c), jnp.float64))
    want, gb, go = _noprop_reference(blocks, w_out, x, y, ab, eps, eta)
    got, g = grad(params, key)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    blocks = [b - lr * gg for b, gg in zip(blocks, gb, strict=True)]
    w_out = w_out - lr * go
    params = jax.tree.map(lambda p, g: p - lr * g, params, g)
  for b, pb in zip(blocks, params["blocks"], strict=True):
    np.testing.assert_allclose(pb, b, rtol=1e-11, atol=1e-13)
  np.testing.assert_allclose(params["readout"], w_out, rtol=1e-11, atol=1e-13)


def test_noprop_blocks_learn_independently_and_embed_is_learned(x64):
  x, y = _data(n=6, d=2, c=3)
  T, d = 3, 4
  params = {
    "blocks": [jnp.full((2 + d, d), 0.1 * (t + 1)) for t in range(T)],
    "readout": jnp.ones((d, 3)),
    "embed": jnp.asarray(np.random.default_rng(0).normal(size=(3, d))),
  }
  ab = noprop_schedule(T)
  kw = {"denoise": _linear_den, "readout": _readout, "key": 1}
  g = jax.grad(lambda p: noprop_dt_loss(p, x, y, ab, **kw)[0])(params)
  moved = dict(params, blocks=[params["blocks"][0], 5 * params["blocks"][1], params["blocks"][2]])
  g2 = jax.grad(lambda p: noprop_dt_loss(p, x, y, ab, **kw)[0])(moved)
  np.testing.assert_array_equal(g["blocks"][0], g2["blocks"][0])
  np.testing.assert_array_equal(g["blocks"][2], g2["blocks"][2])
  assert np.abs(g["embed"]).sum() > 0


def test_noprop_predict_chain(x64):
  x, y = _data(n=5, d=2, c=3)
  T = 4
  ab = noprop_schedule(T)
  params = {"blocks": [jnp.zeros((5, 3))] * T, "readout": jnp.eye(3, dtype=jnp.float64)}
  key = jax.random.key(2)
  got = noprop_predict(params, x, ab, denoise=_linear_den, readout=_readout, key=key, num_classes=3)
  a, b, c = noprop_coefficients(ab)
  eps = jax.random.normal(key, (T + 1, 5, 3), jnp.float64)
  z = eps[0]
  for t in range(T):
    z = b[t] * z + jnp.sqrt(c[t]) * eps[t + 1]  # zero denoiser: a_t * 0
  np.testing.assert_allclose(got, z, rtol=1e-13)
  kw = {"denoise": _linear_den, "readout": _readout, "key": 2, "num_classes": 3}
  jit = jax.jit(lambda p: noprop_predict(p, x, ab, **kw))
  assert jit(params).shape == (5, 3)


def test_noprop_traced_bad_label_poisons():
  x, _ = _data(n=4, d=2, c=3)
  x = jnp.asarray(x, jnp.float32)
  params = {"blocks": [jnp.zeros((5, 3))] * 2, "readout": jnp.eye(3)}
  ab = noprop_schedule(2)

  def f(y):
    return noprop_dt_loss(
      params, x, y, ab, denoise=_linear_den, readout=_readout, key=0, num_classes=3
    )[0]

  assert np.isnan(jax.jit(f)(jnp.array([0, 9, 1, 2])))
  assert np.isfinite(jax.jit(f)(jnp.array([0, 2, 1, 2])))
