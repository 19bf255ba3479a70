"""The fast implementations against float64 transcriptions of the ones they replaced.

Each ``old_*`` function below is the previous implementation's update, kept here (not in the
library) so that a speed change cannot move the numbers unnoticed: 20 steps, float64, max
relative difference <= 1e-6 (most agree to rounding). The random draws must be bit-identical.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
import pytest

import optim
from optim import _coordinate_clip, _tree
from optim.curvature import hvp, value_grad_and_hvp

STEPS = 20


def max_rel(a, b):
  """Max over leaves of ``|a - b| / max(|b|, tiny)``, elementwise."""
  return max(
    float(np.max(np.abs(np.asarray(x) - np.asarray(y)) / np.maximum(np.abs(np.asarray(y)), 1e-30)))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def run(update, params, grads_fn, state, lr=1.0):
  """``STEPS`` steps ``p <- p + lr * update(g, state, p)`` with fresh gradients each step."""
  for t in range(STEPS):
    u, state = update(grads_fn(t, params), state, params)
    params = jax.tree.map(lambda p, x: p + lr * x, params, u)
  return params


# ------------------------------------------------------------------------------------------
# ⊥Grad: g_perp formed, two norms (previous implementation).
# ------------------------------------------------------------------------------------------


def old_perp_grad(g, w, eps=1e-30):
  gc, wc = g.ravel(), w.ravel()
  g_perp = gc - (jnp.vdot(wc, gc) / (jnp.vdot(wc, wc) + eps)) * wc
  g_norm, perp_norm = jnp.linalg.norm(gc), jnp.linalg.norm(g_perp)
  scale = jnp.where(
    perp_norm > 32 * jnp.finfo(gc.dtype).eps * g_norm, g_norm / (perp_norm + eps), 0
  )
  return (g_perp * scale).reshape(g.shape)


def test_perp_grad_equals_previous_implementation(x64):
  # noise = 1e-4: g is within 1e-4 of parallel to w, where the identity alone would lose
  # eight digits; the guarded exact pass must take over.
  rng = np.random.default_rng(0)
  w0 = {"k": jnp.asarray(rng.normal(size=(6, 5))), "b": jnp.asarray(rng.normal(size=(5,)))}
  tx = optim.perp_grad()
  new_update = jax.jit(tx.update)
  old_update = jax.jit(lambda g, s, p: (jax.tree.map(old_perp_grad, g, p), s))
  for radial, noise in [(0.0, 1.0), (1.0, 1.0), (1.0, 1e-4)]:

    def grads(t, w, radial=radial, noise=noise):
      r = np.random.default_rng(t)
      return jax.tree.map(lambda x: radial * x + noise * jnp.asarray(r.normal(size=x.shape)), w)

    new = run(new_update, w0, grads, tx.init(w0), lr=-0.1)
    old = run(old_update, w0, grads, None, lr=-0.1)
    assert max_rel(new, old) <= 1e-6, (radial, noise)


# ------------------------------------------------------------------------------------------
# AdamP / SGDP: per-channel sums with XLA free to re-reduce (previous implementation).
# ------------------------------------------------------------------------------------------


def old_project(p, g, u, delta=0.1, wd_ratio=0.1, eps=1e-8):
  """The previous ``_project_leaf`` for a 2-D leaf with channels on the last axis."""
  csum = lambda x: jnp.sum(x, axis=0, keepdims=True)
  pg, pp, gg, pu = csum(p * g), csum(p * p), csum(g * g), csum(p * u)
  pn_c, gn_c = jnp.sqrt(pp), jnp.sqrt(gg)
  pn_l, gn_l = jnp.sqrt(jnp.sum(pp)), jnp.sqrt(jnp.sum(gg))
  cos_c = jnp.abs(pg) / (jnp.maximum(pn_c, eps) * jnp.maximum(gn_c, eps))
  cos_l = jnp.abs(jnp.sum(pg)) / (jnp.maximum(pn_l, eps) * jnp.maximum(gn_l, eps))
  use_c = jnp.max(cos_c) < delta / math.sqrt(p.shape[0])
  use_l = cos_l < delta / math.sqrt(p.size)
  coef = jnp.where(
    use_c, pu / (pn_c + eps) ** 2, jnp.where(use_l, jnp.sum(pu) / (pn_l + eps) ** 2, 0.0)
  )
  return u - p * coef, jnp.where(use_c | use_l, wd_ratio, 1.0)


def old_adamp(b1=0.9, b2=0.999, eps=1e-8, wd=1e-2):
  def update(g, state, p):
    count, m, v = state
    count = count + 1
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    perturb = (m / (1 - b1**count)) / (jnp.sqrt(v / (1 - b2**count)) + eps)
    perturb, r = old_project(p, g, perturb)
    return perturb + wd * r * p, (count, m, v)

  return update


def old_sgdp(momentum=0.9, wd=1e-2):
  def update(g, b, p):
    b = momentum * b + g
    d, r = old_project(p, g, b)
    return d + wd * r / (1 - momentum) * p, b

  return update


def test_adamp_and_sgdp_equal_previous_implementation(x64):
  w0 = jnp.asarray(np.random.default_rng(1).normal(size=(12, 4)))
  zeros = jnp.zeros((12, 4))
  adamp, sgdp = optim.scale_by_adamp(weight_decay=1e-2), optim.scale_by_sgdp(weight_decay=1e-2)
  cases = [
    (jax.jit(adamp.update), adamp.init(w0), jax.jit(old_adamp()), (0, zeros, zeros)),
    (jax.jit(sgdp.update), sgdp.init(w0), jax.jit(old_sgdp()), zeros),
  ]
  for scale in (0.0, 10.0):  # projected; too radial to be projected

    def grads(t, w, scale=scale):
      return scale * w + jnp.asarray(np.random.default_rng(t).normal(size=w.shape))

    for new_update, new_state, old_update, old_state in cases:
      new = run(new_update, w0, grads, new_state, lr=-1e-2)
      old = run(old_update, w0, grads, old_state, lr=-1e-2)
      assert max_rel(new, old) <= 1e-6, scale


def test_adamp_recomputed_direction_gives_the_stored_directions_numbers(x64, monkeypatch):
  # Large models recompute the direction in the output pass (a barrier keeps XLA from
  # sharing it); small ones store it. Both schedules must give the same updates.
  w0 = {"k": jnp.asarray(np.random.default_rng(2).normal(size=(12, 4))), "b": jnp.ones(4)}
  grads = lambda t, w: jax.tree.map(
    lambda x: 0.3 * x + jnp.asarray(np.random.default_rng(t).normal(size=x.shape)), w
  )
  out = {}
  for threshold in (2**62, 0):
    monkeypatch.setattr(optim._adamp, "_RECOMPUTE_ABOVE_BYTES", threshold)
    tx = optim.scale_by_adamp(weight_decay=1e-2, nesterov=True)
    out[threshold] = run(jax.jit(tx.update), w0, grads, tx.init(w0), lr=-1e-2)
  assert max_rel(out[0], out[2**62]) <= 1e-12


# ------------------------------------------------------------------------------------------
# DP-SGD / DiceSGD: broadcast batch mean and jax.random.normal noise (previous).
# ------------------------------------------------------------------------------------------


def test_unrolled_threefry_is_bit_identical_to_jax_random():
  sizes = (1, 4097)
  draw = jax.jit(lambda k: [(_tree.random_bits(k, n), _tree.random_normal(k, n)) for n in sizes])
  want = jax.jit(
    lambda k: [(jax.random.bits(k, (n,), jnp.uint32), jax.random.normal(k, (n,))) for n in sizes]
  )
  key = jax.random.key(11)
  for (bits, normal), (want_bits, want_normal) in zip(draw(key), want(key)):
    np.testing.assert_array_equal(bits, want_bits)
    np.testing.assert_array_equal(
      np.asarray(normal).view(np.uint32), np.asarray(want_normal).view(np.uint32)
    )


def test_unrolled_threefry_is_bit_identical_in_float64(x64):
  key = jax.random.key(7)
  normal = jax.jit(lambda k: _tree.random_normal(k, 999, jnp.float64))(key)
  want = jax.random.normal(key, (999,), jnp.float64)
  np.testing.assert_array_equal(
    np.asarray(normal).view(np.uint64), np.asarray(want).view(np.uint64)
  )


def test_tree_probe_draws_the_previous_bits():
  key, like = jax.random.key(3), {"a": jnp.zeros((7, 5)), "b": jnp.zeros(40)}
  g, r = jax.jit(lambda k: [_tree.tree_probe(k, like, probe) for probe in _tree.PROBES[::-1]])(key)
  flat = jax.random.normal(key, (75,))
  np.testing.assert_array_equal(g["a"], flat[:35].reshape(7, 5))
  words = jax.random.bits(key, (3,), jnp.uint32)
  signs = 2.0 * ((words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1).reshape(-1)[:75] - 1
  np.testing.assert_array_equal(r["b"], signs[35:])


def old_dp(clip, sigma, clip2=None, key=0):
  """The previous DP-SGD (``clip2=None``) or DiceSGD update."""

  def clipped_mean(g, c):
    norms = jax.vmap(otu.tree_norm)(g)
    f = jnp.minimum(1.0, c / norms)
    return jax.tree.map(lambda x: jnp.mean(x * f.reshape((-1,) + (1,) * (x.ndim - 1)), 0), g)

  def update(g, state, p):
    key, error = state
    b = jax.tree.leaves(g)[0].shape[0]
    v = clipped_mean(g, clip)
    if clip2 is not None:
      v = otu.tree_add(v, otu.tree_scale(jnp.minimum(1.0, clip2 / otu.tree_norm(error)), error))
    key, sub = jax.random.split(key)
    leaves, treedef = jax.tree.flatten(p)
    flat = jax.random.normal(sub, (sum(x.size for x in leaves),), jnp.float64)
    out, start = [], 0
    for x in leaves:
      out.append(flat[start : start + x.size].reshape(x.shape))
      start += x.size
    noise = jax.tree.unflatten(treedef, out)
    u = jax.tree.map(lambda vi, z: vi + sigma * clip / b * z, v, noise)
    if clip2 is not None:
      error = jax.tree.map(lambda e, x, vi: e + jnp.mean(x, 0) - vi, error, g, v)
    return u, (key, error)

  return update


@pytest.mark.parametrize("batch", [3, 40], ids=["unrolled", "matvec"])
def test_dp_sgd_and_dice_sgd_equal_previous_implementation(x64, batch):
  # batch 40 > 32: the mean is a matrix-vector product; DiceSGD shares the code path.
  w0 = {"a": jnp.zeros((4, 3)), "b": jnp.zeros(5)}

  def grads(t, w):
    r = np.random.default_rng(t)
    return jax.tree.map(lambda x: jnp.asarray(3 * r.normal(size=(batch, *x.shape))), w)

  zeros = otu.tree_zeros_like(w0)
  pairs = [(optim.scale_by_dp_sgd(1.0, 0.7, key=5), old_dp(1.0, 0.7, key=5))]
  if batch <= 32:
    pairs.append((optim.scale_by_dice_sgd(1.0, 2.0, 0.7, key=5), old_dp(1.0, 0.7, clip2=2.0)))
  for tx, old in pairs:
    new_p = run(jax.jit(tx.update), w0, grads, tx.init(w0), lr=-0.1)
    old_p = run(jax.jit(old), w0, grads, (jax.random.key(5), zeros), lr=-0.1)
    assert max_rel(new_p, old_p) <= 1e-6


# ------------------------------------------------------------------------------------------
# Coordinate clip by fraction: 32-step bisection over the full bit range (previous).
# ------------------------------------------------------------------------------------------


def old_kth_largest(leaves, k):
  bits = [jax.lax.bitcast_convert_type(jnp.abs(x), jnp.int32) for x in leaves]
  count = lambda t: sum(jnp.sum(b >= t, dtype=jnp.int32) for b in bits)

  def body(_, lohi):
    lo, hi = lohi
    mid = lo + (hi - lo + 1) // 2
    ok = count(mid) >= k
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

  hi0 = jnp.max(jnp.stack([jnp.max(b) for b in bits]))
  lo, _ = jax.lax.fori_loop(0, 32, body, (jnp.zeros((), jnp.int32), hi0))
  return jax.lax.bitcast_convert_type(lo, jnp.float32)


def _clip_cases():
  rng = np.random.default_rng(4)
  heavy = [rng.standard_t(2, size=(80, 60)), rng.normal(size=(900,)), rng.normal(size=(3,))]
  ties = [np.round(2 * x) for x in heavy]
  nan = [x.copy() for x in heavy]
  nan[0][:5] = np.nan
  # Every sampled (64th) coordinate is huge: the sample brackets the wrong range, the
  # bracket check fails and the full bisection must take over.
  fooled = [x.copy() for x in heavy]
  for x in fooled:
    x.reshape(-1)[::64] = 1e3
  return {"heavy": heavy, "ties": ties, "nan": nan, "fooled-sample": fooled}


def test_coordinate_clip_threshold_is_bit_identical_to_full_bisection():
  cases = _clip_cases()
  n = sum(x.size for x in cases["heavy"])
  assert n >= _coordinate_clip._MIN_SIZE  # the bracketed path
  ks = [max(1, math.ceil(fraction * n)) for fraction in (1e-3, 0.3)]
  # The cases share shapes: one compilation each for the new and the old function.
  got = jax.jit(lambda ls: [_coordinate_clip._kth_largest_magnitude(ls, k) for k in ks])
  want = jax.jit(lambda ls: [old_kth_largest(ls, k) for k in ks])
  for case, arrays in cases.items():
    leaves = [jnp.asarray(x, jnp.float32) for x in arrays]
    np.testing.assert_array_equal(
      np.asarray(got(leaves)).view(np.int32), np.asarray(want(leaves)).view(np.int32), case
    )


def test_coordinate_clip_sample_variant_clips_about_the_requested_fraction():
  g = {"a": jax.random.normal(jax.random.key(0), (300, 200)), "b": jnp.linspace(-3, 3, 7000)}
  n = 67000
  for fraction in (0.01, 0.1):
    tx = optim.coordinate_clip(fraction=fraction, variant="sample")
    u, _ = jax.jit(tx.update)(g, tx.init(None))
    clipped = sum(int(jnp.sum(x != y)) for x, y in zip(jax.tree.leaves(u), jax.tree.leaves(g)))
    # 1/64 sample: rank error ~ sqrt(q n / 64); allow 25% of the requested count.
    assert abs(clipped - fraction * n) <= 0.25 * fraction * n, (fraction, clipped)


def test_sample_order_statistic_is_the_sorted_samples_element():
  # The sample's order statistics come from bisection now, formerly from sorting it: the
  # same element, bit for bit, including ties, NaN and the first and last ranks.
  sample_ranks = jax.jit(
    lambda b, rs: [_coordinate_clip._sample_rank(b, r) for r in rs], static_argnums=1
  )
  for case, arrays in _clip_cases().items():
    flat = np.concatenate([np.ravel(x) for x in arrays]).astype(np.float32)
    bits = np.abs(flat).view(np.int32)
    ranks = (0, 7, bits.size // 3, bits.size - 1)
    got = [int(x) for x in sample_ranks(jnp.asarray(bits), ranks)]
    assert got == [int(np.sort(bits)[::-1][r]) for r in ranks], case


# ------------------------------------------------------------------------------------------
# AdaHessian and Sophia-H: loss, gradient and HVP from one pass (hvp=) vs obj_fn.
# ------------------------------------------------------------------------------------------

W = np.random.default_rng(5).normal(size=(6, 4))


def loss(p):
  return jnp.sum(jnp.tanh(jnp.asarray(W) @ p["w"]) ** 2) + jnp.sum(p["b"] ** 4) / 4


P0 = {"w": np.linspace(-1.0, 1.0, 4), "b": np.array([0.5, -2.0])}


def test_value_grad_and_hvp_equals_value_and_grad_and_hvp(x64):
  p = jax.tree.map(jnp.asarray, P0)
  v = jax.tree.map(lambda x: jnp.ones_like(x) * 0.3, p)
  value, grad, hv = value_grad_and_hvp(loss, p, v)
  want_value, want_grad = jax.value_and_grad(loss)(p)
  assert float(value) == float(want_value)
  assert max_rel(grad, want_grad) <= 1e-15 and max_rel(hv, hvp(loss, p, v)) <= 1e-15


def one_pass_run(opt, interval, probe=None):
  """20 one-pass steps (probe drawn in the refresh branch) vs 20 ``obj_fn`` steps."""

  @jax.jit
  def step(p, state):
    inner = state[0]
    z = lambda: inner.probe(p) if probe is None else inner.probe(p, probe)
    _, g, hz = jax.lax.cond(
      inner.count % interval == 0,
      lambda: value_grad_and_hvp(loss, p, z()),
      lambda: (*jax.value_and_grad(loss)(p), otu.tree_zeros_like(p)),
    )
    u, state = opt.update(g, state, p, hvp=hz)
    return optax.apply_updates(p, u), state

  @jax.jit
  def old_step(p, state):
    u, state = opt.update(jax.grad(loss)(p), state, p, obj_fn=loss)
    return optax.apply_updates(p, u), state

  p0 = jax.tree.map(jnp.asarray, P0)
  (p, s), (q, r) = (p0, opt.init(p0)), (p0, opt.init(p0))
  for _ in range(STEPS):
    p, s = step(p, s)
    q, r = old_step(q, r)
  return max_rel(p, q)


def test_adahessian_one_pass_equals_obj_fn_call(x64):
  assert one_pass_run(optim.adahessian(0.1, key=2), 1) <= 1e-6


def test_sophia_h_one_pass_equals_obj_fn_call(x64):
  # Gaussian probes (AdaHessian's test covers Rademacher): state.probe must take probe=.
  opt = optim.sophia(0.05, update_interval=3, gamma=0.5, probe="gaussian", key=2)
  assert one_pass_run(opt, 3, "gaussian") <= 1e-6


def test_sophia_loop_decided_refresh_equals_the_count_decided_one(x64):
  # Two compiled steps chosen by the loop's own counter, no cond traced in either: the
  # plain one passes refresh=False and no objective, the refresh one the one-pass product.
  opt = optim.sophia(0.05, update_interval=3, gamma=0.5, key=2)

  @jax.jit
  def refresh_step(p, state):
    _, g, hz = value_grad_and_hvp(loss, p, state[0].probe(p))
    u, state = opt.update(g, state, p, hvp=hz, refresh=True)
    return optax.apply_updates(p, u), state

  @jax.jit
  def plain_step(p, state):
    u, state = opt.update(jax.grad(loss)(p), state, p, refresh=False)
    return optax.apply_updates(p, u), state

  @jax.jit
  def old_step(p, state):
    u, state = opt.update(jax.grad(loss)(p), state, p, obj_fn=loss)
    return optax.apply_updates(p, u), state

  assert "cond" not in str(jax.make_jaxpr(plain_step)(P0, opt.init(P0)))
  p0 = jax.tree.map(jnp.asarray, P0)
  (p, s), (q, r) = (p0, opt.init(p0)), (p0, opt.init(p0))
  for i in range(STEPS):
    p, s = (refresh_step if i % 3 == 0 else plain_step)(p, s)
    q, r = old_step(q, r)
    assert float(s[0].win_rate) == float(r[0].win_rate)
  assert max_rel(p, q) <= 1e-6
  assert max_rel(s[0].hess, r[0].hess) <= 1e-6


def test_sophia_refresh_flag_bad_input():
  opt = optim.scale_by_sophia(key=0)
  p = {"w": jnp.ones(3)}
  s = opt.init(p)
  with pytest.raises(TypeError, match="refresh= must be a Python bool"):
    opt.update(p, s, p, obj_fn=lambda q: 0.0, refresh=jnp.array(True))
  with pytest.raises(ValueError, match="refresh=False"):
    opt.update(p, s, p, hvp=p, refresh=False)
  with pytest.raises(ValueError, match="obj_fn"):  # a refresh needs its estimate
    opt.update(p, s, p, refresh=True)


def test_sophia_g_rejects_an_hvp():
  opt = optim.scale_by_sophia(variant="gnb", batch_size=4)
  p = jnp.ones(2)
  with pytest.raises(ValueError, match="hvp="):
    opt.update(p, opt.init(p), p, hvp=p, sampled_obj_fn=lambda p, k: jnp.sum(p))


def test_adamp_recomputes_only_leaves_up_to_the_cap(monkeypatch):
  # One leaf past _RECOMPUTE_MAX_LEAF_BYTES stores its direction; a leaf within it
  # recomputes, behind one more barrier (on its moments) than the projection's own.
  monkeypatch.setattr(optim._adamp, "_RECOMPUTE_ABOVE_BYTES", 0)
  w = {"k": jnp.ones((8, 4))}
  barriers = {}
  for cap in (0, 2**20):
    monkeypatch.setattr(optim._adamp, "_RECOMPUTE_MAX_LEAF_BYTES", cap)
    tx = optim.scale_by_adamp()  # a new function: jit would reuse the other cap's trace
    text = jax.jit(tx.update).lower(w, tx.init(w), w).as_text()
    barriers[cap] = text.count("optimization_barrier")
  assert barriers[2**20] == barriers[0] + 1, barriers
