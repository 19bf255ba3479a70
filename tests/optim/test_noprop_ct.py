"""optim.local NoProp-CT and NoProp-FM against float64 transcriptions of the paper's losses,
and on exact testbeds (the exact denoiser / conditional vector field in closed form)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim.local import noprop_ct_loss, noprop_ct_predict, noprop_fm_loss, noprop_fm_predict


def _data(n=10, d=4, c=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)), rng.integers(0, c, n)


def _net(w, x, z, t):
  return jnp.concatenate([x, z, t[:, None]], 1) @ w


def _readout(w, z):
  return z @ w


def _softmax(logits):
  sm = np.exp(logits - logits.max(1, keepdims=True))
  return sm / sm.sum(1, keepdims=True)


def _alpha_bar_and_dsnr(t, variant, ab_max, s=0.008):
  """The fixed schedules and SNR'(t) = alpha_bar' / (1 - alpha_bar)^2 by hand."""
  if variant == "linear":
    ab, dab = ab_max * t, ab_max * np.ones_like(t)
  else:
    th = lambda u: 0.5 * np.pi * (u + s) / (1 + s)  # noqa: E731
    f0 = np.cos(th(0.0)) ** 2
    g = np.cos(th(1 - t)) ** 2 / f0
    dg = np.sin(2 * th(1 - t)) * 0.5 * np.pi / (1 + s) / f0
    ab, dab = np.where(g < ab_max, g, ab_max), np.where(g < ab_max, dg, 0.0)
  return ab, dab / (1 - ab) ** 2


def _ct_reference(w, w_out, x, y, t, eps, eta, variant, ab_max):
  """The NoProp-CT loss with a linear net and one-hot embedding; value and gradients."""
  n, c = x.shape[0], w_out.shape[1]
  u = np.eye(c)[y]
  ab, dsnr = _alpha_bar_and_dsnr(t, variant, ab_max)
  z = np.sqrt(ab)[:, None] * u + np.sqrt(1 - ab)[:, None] * eps[0]
  A = np.concatenate([x, z, t[:, None]], 1)
  r = A @ w - u
  loss = 0.5 * eta * np.mean(dsnr * np.sum(r**2, 1))
  g_w = eta / n * A.T @ (dsnr[:, None] * r)
  ab1, _ = _alpha_bar_and_dsnr(np.ones(1), variant, ab_max)
  ab0, _ = _alpha_bar_and_dsnr(np.zeros(1), variant, ab_max)
  z1 = np.sqrt(ab1) * u + np.sqrt(1 - ab1) * eps[1]
  sm = _softmax(z1 @ w_out)
  loss += -np.mean(np.log(sm[np.arange(n), y]))
  loss += 0.5 * (ab0[0] * 1.0 - c * ab0[0] - c * np.log1p(-ab0[0]))  # ||u_y||^2 = 1
  return loss, g_w, z1.T @ (sm - u) / n


@pytest.mark.parametrize("variant", ["cosine", "linear"])
def test_noprop_ct_loss_matches_the_paper_over_10_steps(x64, variant):
  x, y = _data()
  n, c, lr, eta, ab_max = 10, 3, 0.02, 0.5, 0.99
  rng = np.random.default_rng(1)
  w, w_out = rng.normal(size=(4 + c + 1, c)) * 0.3, rng.normal(size=(c, c))
  params = {"net": jnp.asarray(w), "readout": jnp.asarray(w_out)}
  kw = {"denoise": _net, "readout": _readout, "eta": eta, "num_classes": c}
  kw |= {"schedule": variant, "alpha_bar_max": ab_max}
  grad = jax.jit(jax.value_and_grad(lambda p, k: noprop_ct_loss(p, x, y, key=k, **kw)[0]))
  for step in range(10):
    key = jax.random.key(step)
    k_t, k_z = jax.random.split(key)
    t = np.asarray(jax.random.uniform(k_t, (n,), jnp.float64))
    eps = np.asarray(jax.random.normal(k_z, (2, n, c), jnp.float64))
    want, g_w, g_out = _ct_reference(w, w_out, x, y, t, eps, eta, variant, ab_max)
    got, g = grad(params, key)
    np.testing.assert_allclose(got, want, rtol=1e-11)
    w, w_out = w - lr * g_w, w_out - lr * g_out
    params = jax.tree.map(lambda p, g: p - lr * g, params, g)
  np.testing.assert_allclose(params["net"], w, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(params["readout"], w_out, rtol=1e-10, atol=1e-12)


def test_noprop_ct_learned_schedule(x64):
  """sigma(-gamma(t)), gamma(t) = g0 + (g1 - g0) t: SNR = exp(-gamma), SNR' = -(g1 - g0) SNR;
  the schedule's parameters get the gradient of the loss (checked by central differences)."""
  x, y = _data()
  n, c = 10, 3
  w = np.random.default_rng(1).normal(size=(4 + c + 1, c)) * 0.3

  def sched(g, t):
    return jax.nn.sigmoid(-(g[0] + (g[1] - g[0]) * t))

  params = {"net": jnp.asarray(w), "readout": jnp.eye(c), "schedule": jnp.array([6.0, -5.0])}
  kw = {"denoise": _net, "readout": _readout, "key": 4, "schedule": sched, "num_classes": c}
  f = jax.jit(lambda p: noprop_ct_loss(p, x, y, **kw))
  loss, terms = f(params)
  k_t, k_z = jax.random.split(jax.random.key(4))
  t = np.asarray(jax.random.uniform(k_t, (n,), jnp.float64))
  eps = np.asarray(jax.random.normal(k_z, (2, n, c), jnp.float64))
  gam = 6.0 - 11.0 * t
  ab = 1 / (1 + np.exp(gam))
  u = np.eye(c)[y]
  z = np.sqrt(ab)[:, None] * u + np.sqrt(1 - ab)[:, None] * eps[0]
  r = np.concatenate([x, z, t[:, None]], 1) @ w - u
  want = 0.5 * np.mean(11.0 * np.exp(-gam) * np.sum(r**2, 1))
  np.testing.assert_allclose(terms["denoise"], want, rtol=1e-12)
  g = jax.jit(jax.grad(lambda p: noprop_ct_loss(p, x, y, **kw)[0]))(params)["schedule"]
  for i in range(2):
    e = jnp.zeros(2).at[i].set(1e-6)
    up = f(dict(params, schedule=params["schedule"] + e))[0]
    dn = f(dict(params, schedule=params["schedule"] - e))[0]
    np.testing.assert_allclose(g[i], (up - dn) / 2e-6, rtol=1e-6)


def test_noprop_ct_exact_denoiser(x64):
  """x is the one-hot label, the denoiser x @ E returns u_y exactly: the denoising term is 0;
  the ODE sampler lands on sqrt(ab_1) u_y + sqrt(1 - ab_1) z_0 for any grid, and the
  ancestral chain has the law q(z_1 | y)."""
  c, d, n = 3, 2, 1500
  embed = jnp.asarray(np.random.default_rng(0).normal(size=(c, d)))
  y = jnp.arange(n) % c
  x = jax.nn.one_hot(y, c, dtype=jnp.float64)

  def exact(w, x, z, t):
    return x @ w

  params = {"net": embed, "readout": jnp.eye(d), "embed": embed}
  kw = {"denoise": exact, "readout": _readout}
  _, terms = noprop_ct_loss(dict(params, readout=embed.T), x[:12], y[:12], key=0, **kw)
  assert terms["denoise"] == 0.0
  ab1 = 0.999
  for steps in (1, 4):
    z1 = jax.jit(
      lambda p, steps=steps: noprop_ct_predict(
        p, x[:12], key=3, num_steps=steps, variant="ode", **kw
      )
    )(params)
    z0 = jax.random.normal(jax.random.key(3), (steps + 1, 12, d), jnp.float64)[0]
    np.testing.assert_allclose(z1, np.sqrt(ab1) * embed[y[:12]] + np.sqrt(1 - ab1) * z0, 1e-12)


def test_noprop_ct_ancestral_exact_denoiser_has_the_law_q(x64):
  c, d, n, ab1 = 3, 2, 1500, 0.999
  embed = jnp.asarray(np.random.default_rng(0).normal(size=(c, d)))
  y = jnp.arange(n) % c
  x = jax.nn.one_hot(y, c, dtype=jnp.float64)
  params = {"net": embed, "readout": jnp.eye(d), "embed": embed}
  kw = {"denoise": lambda w, x, z, t: x @ w, "readout": _readout}
  z1 = jax.jit(lambda p: noprop_ct_predict(p, x, key=5, num_steps=8, **kw))(params)
  resid = (z1 - np.sqrt(ab1) * embed[y]) / np.sqrt(1 - ab1)  # ~ N(0, I)
  assert abs(float(resid.mean())) < 0.07 and abs(float(resid.var()) - 1) < 0.1


def test_noprop_ct_ancestral_chain_transcribed(x64):
  x, _ = _data(n=5, d=2)
  N, c = 4, 3
  params = {"net": jnp.zeros((2 + c + 1, c)), "readout": jnp.eye(c)}
  got = noprop_ct_predict(
    params, x, denoise=_net, readout=_readout, key=2, num_steps=N, schedule="linear", num_classes=c
  )
  ab = 0.999 * np.arange(N + 1) / N
  eps = np.asarray(jax.random.normal(jax.random.key(2), (N + 1, 5, c), jnp.float64))
  z = eps[0]
  for k in range(N):
    alpha = ab[k] / ab[k + 1]
    b = np.sqrt(alpha) * (1 - ab[k + 1]) / (1 - ab[k])
    cc = (1 - ab[k + 1]) * (1 - alpha) / (1 - ab[k])
    z = b * z + np.sqrt(cc) * eps[k + 1]  # zero denoiser
  np.testing.assert_allclose(got, z, rtol=1e-12)


def _fm_reference(w, w_out, x, y, t, z0, eta):
  """NoProp-FM with a linear field, one-hot embedding and the readout term; by hand."""
  n, c = x.shape[0], w_out.shape[1]
  u = np.eye(c)[y]
  zt = t[:, None] * u + (1 - t[:, None]) * z0
  A = np.concatenate([x, zt, t[:, None]], 1)
  v = A @ w
  r = v - (u - z0)
  z1 = zt + (1 - t[:, None]) * v
  sm = _softmax(z1 @ w_out)
  loss = eta * np.mean(np.sum(r**2, 1)) - np.mean(np.log(sm[np.arange(n), y]))
  G = (sm - u) / n
  g_w = 2 * eta / n * A.T @ r + A.T @ ((1 - t[:, None]) * (G @ w_out.T))
  return loss, g_w, z1.T @ G


def test_noprop_fm_loss_matches_the_paper_over_10_steps(x64):
  x, y = _data()
  n, c, lr, eta = 10, 3, 0.02, 0.7
  rng = np.random.default_rng(2)
  w, w_out = rng.normal(size=(4 + c + 1, c)) * 0.3, rng.normal(size=(c, c))
  params = {"net": jnp.asarray(w), "readout": jnp.asarray(w_out)}
  kw = {"vector_field": _net, "readout": _readout, "eta": eta, "num_classes": c}
  grad = jax.jit(jax.value_and_grad(lambda p, k: noprop_fm_loss(p, x, y, key=k, **kw)[0]))
  for step in range(10):
    key = jax.random.key(step)
    k_t, k_z = jax.random.split(key)
    t = np.asarray(jax.random.uniform(k_t, (n,), jnp.float64))
    z0 = np.asarray(jax.random.normal(k_z, (n, c), jnp.float64))
    want, g_w, g_out = _fm_reference(w, w_out, x, y, t, z0, eta)
    got, g = grad(params, key)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    w, w_out = w - lr * g_w, w_out - lr * g_out
    params = jax.tree.map(lambda p, g: p - lr * g, params, g)
  np.testing.assert_allclose(params["net"], w, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(params["readout"], w_out, rtol=1e-10, atol=1e-12)


def test_noprop_fm_exact_field_minimises_the_loss(x64):
  """x says nothing about y (two classes, 1/2 each, fixed embedding u_0, u_1; Gaussian z_0):
  the minimiser is v*(z, t) = sum_c w_c(z, t) (u_c - z) / (1 - t) with w_c proportional to
  N(z; t u_c, (1 - t)^2 I). Any perturbation raises the loss by its mean square (the cross
  term vanishes up to Monte Carlo error); when x fixes y the loss at v* is 0."""
  n = 40_000
  embed = jnp.array([[1.0, 0.5], [-1.0, 0.5]])
  y = jnp.arange(n) % 2
  x = jnp.zeros((n, 1))

  def vstar(w, x, z, t):
    tc = t[:, None]
    logp = -jnp.sum((z[:, None] - tc[:, None] * embed) ** 2, -1) / (2 * (1 - tc) ** 2)
    wc = jax.nn.softmax(logp, -1)
    return (wc @ embed - z) / (1 - tc)

  params = {"net": None, "embed": embed}
  base = float(noprop_fm_loss(params, x, y, vector_field=vstar, key=1)[0])
  for delta in (lambda z, t: 0.3 + 0 * z, lambda z, t: 0.3 * z, lambda z, t: 0.5 * t[:, None] * z):

    def pert(w, x, z, t, delta=delta):
      return vstar(w, x, z, t) + delta(z, t)

    k_t, k_z = jax.random.split(jax.random.key(1))
    t = jax.random.uniform(k_t, (n,), jnp.float64)
    z0 = jax.random.normal(k_z, (n, 2), jnp.float64)
    zt = t[:, None] * embed[y] + (1 - t[:, None]) * z0
    msq = float(jnp.mean(jnp.sum(delta(zt, t) ** 2, -1)))
    loss = float(noprop_fm_loss(params, x, y, vector_field=pert, key=1)[0])
    assert loss > base
    np.testing.assert_allclose(loss - base, msq, rtol=0.1)
  x = jax.nn.one_hot(y[:20], 2, dtype=jnp.float64)

  def exact(w, x, z, t):
    return (x @ embed - z) / (1 - t[:, None])

  assert float(noprop_fm_loss(params, x, y[:20], vector_field=exact, key=2)[0]) < 1e-24


@pytest.mark.parametrize("num_steps", [1, 5, 40])
def test_noprop_fm_predict_lands_on_the_embedding(x64, num_steps):
  c, d = 4, 3
  embed = jnp.asarray(np.random.default_rng(0).normal(size=(c, d)))
  y = jnp.array([0, 1, 2, 3, 1, 2])
  x = jax.nn.one_hot(y, c, dtype=jnp.float64)

  def exact(w, x, z, t):
    return (x @ w - z) / (1 - t[:, None])

  params = {"net": embed, "embed": embed}
  scores = noprop_fm_predict(params, x, vector_field=exact, key=0, num_steps=num_steps)
  np.testing.assert_allclose(scores[jnp.arange(6), y], 0.0, atol=1e-24)
  np.testing.assert_array_equal(jnp.argmax(scores, 1), y)
  # with a readout the scores are its logits at z_1 = u_y
  logits = noprop_fm_predict(
    dict(params, readout=jnp.eye(d)), x, vector_field=exact, key=0, readout=_readout
  )
  np.testing.assert_allclose(logits, embed[y], rtol=1e-12)


def test_noprop_ct_fm_jit_and_traced_bad_label_poisons():
  x, _ = _data(n=4, d=2)
  x = jnp.asarray(x, jnp.float32)
  ct = {"net": jnp.zeros((6, 3)), "readout": jnp.eye(3)}

  def f(y):
    return noprop_ct_loss(ct, x, y, denoise=_net, readout=_readout, key=0, num_classes=3)[0]

  def g(y):
    return noprop_fm_loss({"net": ct["net"]}, x, y, vector_field=_net, key=0, num_classes=3)[0]

  for fn in (f, g):
    assert np.isnan(jax.jit(fn)(jnp.array([0, 9, 1, 2])))
    assert np.isfinite(jax.jit(fn)(jnp.array([0, 2, 1, 2])))
