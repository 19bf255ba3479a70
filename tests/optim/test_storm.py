"""STORM against float64 transcriptions of the paper and its official code: the Table 1
features (a NumPy port of ``utils_storm.Results/Filter`` and ``storm.call_rescaler``), the
Eq. 6 rescaler (a NumPy port of the torch module) and the meta step (Eqs. 1 and 5: the
meta-gradient through an SGD step in closed form from per-example gradients; through Adam
by a hand-written, unrolled Adam)."""

import math
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optim.loops import StormState, storm_step
from optim.losses import storm_features, storm_rescaler, storm_rescaler_init

EPS = 1e-8


# ----------------------------------------------------------------------------- features port


def _gaussian_kl(p_mu, p_std, q_mu, q_std):  # utils_storm.gaussian_KL
  if p_std == 0 or q_std == 0:
    return 0.0
  x = np.log(q_std / p_std)
  x += (pow(p_std, 2) + pow(p_mu - q_mu, 2)) / (2 * pow(q_std, 2))
  return x - 0.5


def _std(a):  # torch.std (unbiased) of a 1-D tensor
  return float(np.std(a, ddof=1)) if len(a) > 1 else EPS


def _mean(a):  # torch.mean of an empty tensor is NaN
  return float(np.mean(a)) if len(a) else math.nan


def _official_features(losses, probs, labels, num_labels):
  """One batch through a fresh official Filter (window 1), then call_rescaler's features."""
  g = losses.shape[0]
  preds = probs.argmax(2)
  agree0 = preds[0] == labels
  cnt = (preds == labels).sum(0)
  agreement = cnt >= g / 2
  tie = cnt == g / 2
  agreement[tie] = agree0[tie]
  nan0 = lambda a: np.nan_to_num(a) if g > 1 else np.zeros_like(a[0])
  lm, ls = losses.mean(0), nan0(losses.std(0, ddof=1) if g > 1 else losses)
  conf = probs.max(2)
  pm, ps = conf.mean(0), nan0(conf.std(0, ddof=1) if g > 1 else conf)

  def by_cat(x, cat, agr):
    return x if cat == 0 else (x[agr] if cat == 1 else x[~agr])

  st = {}
  for l in range(num_labels):
    m = labels == l
    agr = agreement[m]
    for name, means, stds in (("loss", lm[m], ls[m]), ("prob", pm[m], ps[m])):
      for cat in range(3):
        cm, cs = by_cat(means, cat, agr), by_cat(stds, cat, agr)
        st[name, "means_mean", l, cat] = _mean(cm)
        st[name, "means_std", l, cat] = _std(cm)
        st[name, "stds_mean", l, cat] = _mean(cs)
        st[name, "stds_std", l, cat] = _std(cs)
    for cat in range(3):
      cm, cs = by_cat(lm[m], cat, agr), by_cat(ls[m], cat, agr)
      q_mu, q_sd = st["loss", "means_mean", l, cat], st["loss", "stds_mean", l, cat]
      kls = [_gaussian_kl(a, b, q_mu, q_sd) for a, b in zip(cm, cs)]
      ovls = [
        NormalDist(a, max(b, EPS)).overlap(NormalDist(q_mu, max(q_sd, EPS))) for a, b in zip(cm, cs)
      ]
      st["kl", l, cat] = (_mean(kls), _std(kls))
      st["ovl", l, cat] = (_mean(ovls), _std(ovls))
  rows = []
  for i in range(len(labels)):
    l, c = int(labels[i]), 2 - int(agreement[i])
    q_mu, q_sd = st["loss", "means_mean", l, c], st["loss", "stds_mean", l, c]
    kl = _gaussian_kl(lm[i], ls[i], q_mu, q_sd)
    ovl = NormalDist(lm[i], max(ls[i], EPS)).overlap(NormalDist(q_mu, max(q_sd, EPS)))
    rows.append(
      [
        lm[i], st["loss", "means_mean", l, c], st["loss", "means_std", l, c],
        ls[i], st["loss", "stds_mean", l, c], st["loss", "stds_std", l, c],
        pm[i], st["prob", "means_mean", l, c], st["prob", "means_std", l, c],
        ps[i], st["prob", "stds_mean", l, c], st["prob", "stds_std", l, c],
        kl, *st["kl", l, c], ovl, *st["ovl", l, c], float(agreement[i]),
      ]
    )  # fmt: skip
  return np.asarray(rows)


def _passes(key, g, b, c, noisy=0.8):
  k1, k2 = jax.random.split(key)
  logits = np.asarray(
    jax.random.normal(k1, (1, b, c)) * 2 + noisy * jax.random.normal(k2, (g, b, c))
  )
  probs = np.exp(logits) / np.exp(logits).sum(2, keepdims=True)
  return logits, probs


@pytest.mark.parametrize(("g", "b", "c", "seed"), [(3, 16, 2, 0), (3, 24, 3, 1), (4, 12, 2, 2)])
def test_features_match_the_official_filter_on_one_batch(x64, g, b, c, seed):
  _, probs = _passes(jax.random.key(seed), g, b, c)
  labels = np.asarray(jax.random.randint(jax.random.key(seed + 9), (b,), 0, c))
  losses = -np.log(probs[:, np.arange(b), labels])
  want = _official_features(losses, probs, labels, c)
  got = storm_features(jnp.asarray(losses), jnp.asarray(probs), jnp.asarray(labels), num_classes=c)
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_features_with_one_pass_have_zero_stds_and_zero_kl(x64):
  _, probs = _passes(jax.random.key(4), 1, 10, 2)
  labels = np.array([0, 1] * 5)
  losses = -np.log(probs[:, np.arange(10), labels])
  got = storm_features(jnp.asarray(losses), jnp.asarray(probs), jnp.asarray(labels), num_classes=2)
  np.testing.assert_allclose(got, _official_features(losses, probs, labels, 2), rtol=1e-9)
  assert np.all(np.asarray(got)[:, [3, 9, 12]] == 0.0)


# ----------------------------------------------------------------------------- rescaler port


def _torch_rescaler(params, feats, labels):
  """nn.Sequential(Linear, BatchNorm1d(affine=False), ReLU, Linear, BatchNorm1d, Softmax)
  per class in train mode, column 1, each example from its label's rescaler."""

  def bn(h):
    return (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5)

  out = []
  for c in range(params["w1"].shape[0]):
    h = np.maximum(bn(feats @ params["w1"][c] + params["b1"][c]), 0.0)
    o = bn(h @ params["w2"][c] + params["b2"][c])
    e = np.exp(o - o.max(1, keepdims=True))
    out.append((e / e.sum(1, keepdims=True))[:, 1])
  return np.stack(out)[labels, np.arange(len(labels))]


def test_rescaler_matches_the_torch_module(x64):
  p = storm_rescaler_init(key=0, num_classes=3, num_features=5, scale=0.7)
  p = jax.tree.map(lambda a: a.astype(jnp.float64) + 0.1, p)
  f = np.asarray(jax.random.normal(jax.random.key(1), (9, 5), jnp.float64))
  y = np.array([0, 1, 2, 2, 1, 0, 0, 1, 2])
  want = _torch_rescaler(jax.tree.map(np.asarray, p), f, y)
  np.testing.assert_allclose(storm_rescaler(p, jnp.asarray(f), jnp.asarray(y)), want, rtol=1e-12)


def test_rescaler_weights_start_centred_on_one_half():
  p = storm_rescaler_init(key=3, num_classes=2)
  f = jax.random.normal(jax.random.key(4), (64, 19))
  w = storm_rescaler(p, f, jnp.arange(64) % 2)
  # Batch-normalized outputs: the weights straddle 1/2 over the batch.
  assert 0.45 < float(jnp.mean(w)) < 0.55 and 0.0 < float(jnp.min(w)) < float(jnp.max(w)) < 1.0


# ----------------------------------------------------------------------------- meta step


def _data(seed=0, n=12, d=4, c=3, dtype=jnp.float64):
  kx, ky = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, (n, d), dtype)
  return x, jax.random.randint(ky, (n,), 0, c)


def _loss_fn(w, batch):
  x, y = batch
  logits = x @ w
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  feats = jnp.stack([losses, jnp.max(jax.nn.softmax(logits), 1)], 1)
  return losses, feats


def _rescale(p, f, batch):
  return storm_rescaler(p, f, batch[1])


def _np_example_grads(w, x, y):
  """d/dW CE(x_i W, y_i) = x_i (p_i - e_{y_i})^T, by hand."""
  logits = x @ w
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  err = p - np.eye(w.shape[1])[y]
  return x[:, :, None] * err[:, None, :], -np.log(p[np.arange(len(y)), y])


def test_meta_step_through_sgd_is_the_closed_form_over_12_steps(x64):
  """Eq. 1 inner SGD step and Eq. 5 meta loss; the meta-gradient in closed form:
  dL/dw = J'^T l(theta') - eta J^T [<grad l_i(theta), sum_j w'_j grad l_j(theta')>]_i."""
  eta, meta_eta = 0.3, 0.05
  x, y = _data()
  xs = [(x[:6], y[:6]), (x[6:], y[6:])]
  w = 0.1 * jax.random.normal(jax.random.key(2), (4, 3), jnp.float64)
  rp = jax.tree.map(
    lambda a: a.astype(jnp.float64),
    storm_rescaler_init(key=3, num_classes=3, num_features=2, scale=0.5),
  )
  tx, meta_tx = optax.sgd(eta), optax.sgd(meta_eta)
  state = StormState(w, tx.init(w), rp, meta_tx.init(rp))
  w_ref, rp_ref = np.asarray(w), jax.tree.map(np.asarray, rp)
  for t in range(12):
    batch, meta_batch = xs[t % 2], xs[(t + 1) % 2]
    state, m = storm_step(_loss_fn, _rescale, tx, meta_tx, state, batch, meta_batch)

    bx, by = map(np.asarray, batch)
    mx, my = map(np.asarray, meta_batch)
    g, losses = _np_example_grads(w_ref, bx, by)
    feats = np.asarray(_loss_fn(jnp.asarray(w_ref), batch)[1])
    wts = np.asarray(_rescale(rp_ref, jnp.asarray(feats), batch))
    w_new = w_ref - eta * np.einsum("i,ijk->jk", wts, g)
    g_m, losses_m = _np_example_grads(w_new, mx, my)
    feats_m = np.asarray(_loss_fn(jnp.asarray(w_new), meta_batch)[1])
    wts_m = np.asarray(_rescale(rp_ref, jnp.asarray(feats_m), meta_batch))
    big_g = np.einsum("j,jkl->kl", wts_m, g_m)
    d = np.einsum("ikl,kl->i", g, big_g)
    jac = jax.jacobian(lambda p: _rescale(p, jnp.asarray(feats), batch))(rp_ref)
    jac_m = jax.jacobian(lambda p: _rescale(p, jnp.asarray(feats_m), meta_batch))(rp_ref)
    meta_grad = jax.tree.map(
      lambda jm, j: (
        np.tensordot(losses_m, np.asarray(jm), 1) - eta * np.tensordot(d, np.asarray(j), 1)
      ),
      jac_m,
      jac,
    )
    rp_ref = jax.tree.map(lambda p, q: p - meta_eta * q, rp_ref, meta_grad)
    np.testing.assert_allclose(m.weights, wts, rtol=1e-11)
    np.testing.assert_allclose(m.meta_loss, wts_m @ losses_m, rtol=1e-11)
    w_ref = w_new
  np.testing.assert_allclose(state.params, w_ref, rtol=1e-10)
  for k in rp_ref:
    np.testing.assert_allclose(state.rescaler_params[k], rp_ref[k], rtol=1e-9, atol=1e-13)


def _adam(g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8):
  """Adam by hand (Kingma & Ba, Alg. 1); differentiable in g."""
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  mh, vh = m / (1 - b1**t), v / (1 - b2**t)
  return -lr * mh / (jnp.sqrt(vh) + eps), m, v


@pytest.mark.integration  # heavy (3-7 s each): CI's second tier keeps make test within 5 min
def test_meta_step_through_adam_is_the_unrolled_adam_over_10_steps(x64):
  lr, meta_lr = 0.05, 0.02
  x, y = _data(seed=5, n=16)
  batches = [(x[i : i + 8], y[i : i + 8]) for i in (0, 8)]
  w = 0.1 * jax.random.normal(jax.random.key(6), (4, 3), jnp.float64)
  rp = jax.tree.map(
    lambda a: a.astype(jnp.float64),
    storm_rescaler_init(key=7, num_classes=3, num_features=2, scale=0.5),
  )
  tx, meta_tx = optax.adam(lr), optax.sgd(meta_lr)
  state = StormState(w, tx.init(w), rp, meta_tx.init(rp))
  ref_w, ref_rp = w, rp
  m = v = jnp.zeros_like(w)
  for t in range(1, 11):
    batch, meta_batch = batches[t % 2], batches[(t + 1) % 2]
    state, _ = storm_step(_loss_fn, _rescale, tx, meta_tx, state, batch, meta_batch)

    def meta(p, w=ref_w, m=m, v=v, t=t, batch=batch, meta_batch=meta_batch):
      feats = jax.lax.stop_gradient(_loss_fn(w, batch)[1])
      g = jax.grad(lambda q: jnp.sum(_rescale(p, feats, batch) * _loss_fn(q, batch)[0]))(w)
      u, m2, v2 = _adam(g, m, v, t, lr)
      w2 = w + u
      losses, f2 = _loss_fn(w2, meta_batch)
      return jnp.sum(_rescale(p, jax.lax.stop_gradient(f2), meta_batch) * losses), (w2, m2, v2)

    grads, (ref_w, m, v) = jax.grad(meta, has_aux=True)(ref_rp)
    ref_rp = jax.tree.map(lambda p, q: p - meta_lr * q, ref_rp, grads)
  np.testing.assert_allclose(state.params, ref_w, rtol=1e-10)
  np.testing.assert_allclose(state.opt_state[0].mu, m, rtol=1e-10)
  for k in ref_rp:
    np.testing.assert_allclose(state.rescaler_params[k], ref_rp[k], rtol=1e-9, atol=1e-13)


def test_without_meta_loss_rescaling_the_meta_loss_is_the_plain_sum(x64):
  x, y = _data(seed=8)
  w = jnp.zeros((4, 3), jnp.float64)
  rp = storm_rescaler_init(key=0, num_classes=3, num_features=2)
  tx, meta_tx = optax.sgd(0.1), optax.sgd(0.1)
  state = StormState(w, tx.init(w), rp, meta_tx.init(rp))
  new, m = storm_step(
    _loss_fn, _rescale, tx, meta_tx, state, (x, y), (x, y), meta_loss_rescaling=False
  )
  np.testing.assert_allclose(m.meta_loss, jnp.sum(_loss_fn(new.params, (x, y))[0]), rtol=1e-12)
  _, m2 = storm_step(_loss_fn, _rescale, tx, meta_tx, state, (x, y), (x, y))
  assert float(m2.meta_loss) != pytest.approx(float(m.meta_loss))


def test_storm_step_is_jittable_and_does_not_retrace():
  x, y = _data(seed=9, dtype=jnp.float32)
  w = jnp.zeros((4, 3))
  rp = storm_rescaler_init(key=0, num_classes=3, num_features=2)
  tx, meta_tx = optax.adam(1e-2), optax.adam(1e-2)
  traces = []

  @jax.jit
  def step(state):
    traces.append(1)
    return storm_step(_loss_fn, _rescale, tx, meta_tx, state, (x, y), (x, y))

  state = StormState(w, tx.init(w), rp, meta_tx.init(rp))
  for _ in range(3):
    state, m = step(state)
  assert len(traces) == 1 and bool(jnp.all(jnp.isfinite(state.params)))
  assert m.weights.shape == (12,)


def test_adam_needs_eps_root_where_a_gradient_coordinate_is_zero():
  """The documented hazard: d sqrt(v)/dv at v = 0 (a parameter with zero gradient)."""
  x, y = _data(seed=10, dtype=jnp.float32)
  w = jnp.zeros((5, 3))  # the fifth input is absent: its row of w gets gradient 0
  xb = jnp.concatenate([x, jnp.zeros((x.shape[0], 1))], 1)
  rp = storm_rescaler_init(key=0, num_classes=3, num_features=2)
  meta_tx = optax.sgd(0.1)
  for tx, finite in ((optax.adam(1e-2), False), (optax.adam(1e-2, eps_root=1e-12), True)):
    state = StormState(w, tx.init(w), rp, meta_tx.init(rp))
    new, _ = storm_step(_loss_fn, _rescale, tx, meta_tx, state, (xb, y), (xb, y))
    leaves = jax.tree.leaves(new.rescaler_params)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in leaves) == finite
