"""tpSGD for RNNs against a NumPy float64 transcription of the one-step-truncated delta rule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optim.local import rnn_apply, rnn_init, tpsgd_projections, tpsgd_rnn_grads

SIZES = [3, 5, 4, 3]  # 3 features, recurrent layers of 5 and 4 units, 3 classes


def _data(n=10, t=4, d=3, c=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, t, d)), rng.integers(0, c, n)


def _reference(params, projections, x, y, lr, steps, variant, target_steps):
  """Per step and layer: z = x_t W + h_{t-1} U + b, h = tanh z, delta = r * (1 - h^2),
  gradients accumulated with h_{t-1} and the layer's input held fixed (NumPy float64)."""
  layers = [{k: np.array(v) for k, v in p.items()} for p in params]
  ps = [np.array(p) for p in projections]
  n, T, _ = x.shape
  onehot = np.eye(layers[-1]["w"].shape[1])[y]
  omega = np.full(T, 1 / T) if target_steps == "all" else np.eye(T)[-1]
  history = []
  for _ in range(steps):
    states = [np.zeros((n, p["u"].shape[0])) for p in layers[:-1]]
    grads = [{k: np.zeros_like(v) for k, v in p.items()} for p in layers[:-1]]
    losses = np.zeros(len(layers))
    for t in range(T):
      inp = x[:, t]
      for i, (p, P) in enumerate(zip(layers[:-1], ps, strict=True)):
        h = np.tanh(inp @ p["w"] + states[i] @ p["u"] + p["b"])
        r = onehot @ P - h
        losses[i] += omega[t] * (
          0.5 * np.mean(np.sum(r**2, 1)) if variant == "l2" else np.mean(np.abs(r).sum(1))
        )
        delta = (r if variant == "l2" else np.sign(r)) * (1 - h**2)
        grads[i]["w"] -= omega[t] * inp.T @ delta / n
        grads[i]["u"] -= omega[t] * states[i].T @ delta / n
        grads[i]["b"] -= omega[t] * delta.mean(0)
        states[i] = inp = h
    out = layers[-1]
    logits = states[-1] @ out["w"] + out["b"]
    sm = np.exp(logits - logits.max(1, keepdims=True))
    sm /= sm.sum(1, keepdims=True)
    losses[-1] = -np.mean(np.log(sm[np.arange(n), y]))
    g = (sm - onehot) / n
    grads.append({"w": states[-1].T @ g, "b": g.sum(0)})
    layers = [{k: p[k] - lr * gp[k] for k in p} for p, gp in zip(layers, grads, strict=True)]
    history.append(losses)
  return layers, np.array(history)


def _step(tx, params, state, proj, x, y, **kw):
  grads, losses = tpsgd_rnn_grads(params, proj, x, y, **kw)
  updates, state = tx.update(grads, state)
  return optax.apply_updates(params, updates), state, losses


@pytest.mark.parametrize("variant,target_steps", [("l2", "all"), ("l1", "all"), ("l2", "last")])
def test_tpsgd_rnn_matches_the_truncated_delta_rule_over_12_steps(x64, variant, target_steps):
  x, y = _data()
  params = rnn_init(SIZES, key=0, dtype=jnp.float64)
  proj = tpsgd_projections(SIZES, key=1, dtype=jnp.float64)
  want, want_losses = _reference(params, proj, x, y, 0.3, 12, variant, target_steps)
  tx = optax.sgd(0.3)
  state = tx.init(params)
  kw = {"variant": variant, "target_steps": target_steps}
  step = jax.jit(lambda p, s: _step(tx, p, s, proj, x, y, **kw))
  got = []
  for _ in range(12):
    params, state, losses = step(params, state)
    got.append(losses)
  for layer, ref in zip(params, want, strict=True):
    for k in ref:
      np.testing.assert_allclose(layer[k], ref[k], rtol=1e-12, atol=1e-13)
  np.testing.assert_allclose(np.array(got), want_losses, rtol=1e-12)


def test_tpsgd_rnn_no_gradient_through_time(x64):
  # Planted dependency: the last input is zero, so the last step's local loss depends on W
  # only through h_{T-1} (through time). Truncated to one step, W's gradient is exactly 0;
  # backprop through time of the same loss is not.
  x, y = _data()
  x[:, -1] = 0.0
  sizes = [3, 5, 3]
  params = rnn_init(sizes, key=0, dtype=jnp.float64)
  proj = tpsgd_projections(sizes, key=1, dtype=jnp.float64)
  g, losses = tpsgd_rnn_grads(params, proj, x, y, target_steps="last")
  np.testing.assert_array_equal(g[0]["w"], 0.0)
  assert np.abs(g[0]["u"]).sum() > 0 and np.abs(g[0]["b"]).sum() > 0

  def bptt_last(w):
    p = dict(params[0], w=w)
    h = jnp.zeros((x.shape[0], 5))
    for t in range(x.shape[1]):
      h = jnp.tanh(x[:, t] @ p["w"] + h @ p["u"] + p["b"])
    target = jax.nn.one_hot(y, 3) @ proj[0]
    return 0.5 * jnp.mean(jnp.sum((target - h) ** 2, 1))

  np.testing.assert_allclose(bptt_last(params[0]["w"]), losses[0], rtol=1e-13)
  assert np.abs(jax.grad(bptt_last)(params[0]["w"])).max() > 1e-3


def test_tpsgd_rnn_no_gradient_crosses_layers(x64):
  x, y = _data()
  params = rnn_init(SIZES, key=0, dtype=jnp.float64)
  proj = tpsgd_projections(SIZES, key=1, dtype=jnp.float64)
  g, _ = tpsgd_rnn_grads(params, proj, x, y)
  moved = [params[0], jax.tree.map(lambda a: 3 * a + 1, params[1]), params[2]]
  g2, _ = tpsgd_rnn_grads(moved, proj, x, y)
  for k in ("w", "u", "b"):  # layer 1 ignores what lies above it
    np.testing.assert_array_equal(g[0][k], g2[0][k])
  assert not np.allclose(g[2]["w"], g2[2]["w"])


def test_tpsgd_rnn_trains_a_sequence_task_and_rnn_apply_agrees(x64):
  # class = which of the 3 features has the largest sum over the sequence
  rng = np.random.default_rng(1)
  x = rng.normal(size=(60, 5, 3))
  y = np.argmax(x.sum(1), 1)
  sizes = [3, 12, 3]
  params = rnn_init(sizes, key=0, dtype=jnp.float64)
  proj = tpsgd_projections(sizes, key=1, dtype=jnp.float64)
  tx = optax.sgd(0.5)
  state = tx.init(params)
  step = jax.jit(lambda p, s: _step(tx, p, s, proj, x, y))
  first = None
  for _ in range(60):
    params, state, losses = step(params, state)
    first = losses if first is None else first
  assert losses[0] < 0.9 * first[0] and losses[-1] < 0.7 * first[-1]
  logits = rnn_apply(params, x)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  _, now = tpsgd_rnn_grads(params, proj, x, y)
  np.testing.assert_allclose(ce, now[-1], rtol=1e-12)


def test_tpsgd_rnn_traced_bad_label_poisons():
  x, y = _data()
  sizes = [3, 4, 3]
  params, proj = rnn_init(sizes, key=0), tpsgd_projections(sizes, key=1)
  f = jax.jit(lambda y: tpsgd_rnn_grads(params, proj, jnp.asarray(x, jnp.float32), y))
  grads, losses = f(jnp.asarray(y).at[0].set(7))
  assert np.isnan(losses).all() and np.isnan(grads[0]["w"]).all()
  grads, losses = f(jnp.asarray(y))
  assert np.isfinite(losses).all()
