"""AdamP and SGDP against float64 NumPy transcriptions (paper + official clovaai details)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim


def _cos_max(x, y, eps):
  """Rows of x, y: max over rows of |cos| with norms clamped at eps (torch semantics)."""
  dot = np.abs(np.sum(x * y, axis=1))
  return np.max(
    dot / (np.maximum(np.linalg.norm(x, axis=1), eps) * np.maximum(np.linalg.norm(y, axis=1), eps))
  )


def projection_reference(w, g, p, delta, wd_ratio, eps, channel_axis):
  """Heo et al. (arXiv:2006.08217) Eq. 12 with the official channel-then-layer order.

  The channel axis is moved to the front and the other axes flattened ("channel view"),
  then the whole tensor is one row ("layer view"). Returns (projected p, wd factor).
  """
  if w.ndim < 2:
    return p, 1.0
  shape = np.moveaxis(w, channel_axis, 0).shape
  to_rows = lambda a, rows: np.moveaxis(a, channel_axis, 0).reshape(rows, -1)
  for rows in (shape[0], 1):
    wr, gr, pr = to_rows(w, rows), to_rows(g, rows), to_rows(p, rows)
    if _cos_max(gr, wr, eps) < delta / np.sqrt(wr.shape[1]):
      wn = wr / (np.linalg.norm(wr, axis=1, keepdims=True) + eps)
      pr = pr - wn * np.sum(wn * pr, axis=1, keepdims=True)
      return np.moveaxis(pr.reshape(shape), 0, channel_axis), wd_ratio
  return p, 1.0


def adamp_reference(grads, w0, lr, b1, b2, eps, wd, delta, wd_ratio, nesterov, axis):
  w = {k: v.astype(np.float64).copy() for k, v in w0.items()}
  m = {k: np.zeros_like(v) for k, v in w.items()}
  v2 = {k: np.zeros_like(v) for k, v in w.items()}
  out = []
  for t, g in enumerate(grads, start=1):
    step = {}
    for k in w:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
      denom = np.sqrt(v2[k]) / np.sqrt(1 - b2**t) + eps
      p = (b1 * m[k] + (1 - b1) * g[k]) / denom if nesterov else m[k] / denom
      p, r = projection_reference(w[k], g[k], p, delta, wd_ratio, eps, axis)
      new = w[k] * (1 - lr * wd * r) - lr / (1 - b1**t) * p
      step[k] = new - w[k]
      w[k] = new
    out.append(step)
  return out


def sgdp_reference(grads, w0, lr, mom, damp, nesterov, wd, eps, delta, wd_ratio, axis):
  w = {k: v.astype(np.float64).copy() for k, v in w0.items()}
  buf = {k: np.zeros_like(v) for k, v in w.items()}
  out = []
  for g in grads:
    step = {}
    for k in w:
      buf[k] = mom * buf[k] + (1 - damp) * g[k]
      d = g[k] + mom * buf[k] if nesterov else buf[k]
      d, r = projection_reference(w[k], g[k], d, delta, wd_ratio, eps, axis)
      new = w[k] * (1 - lr * wd * r / (1 - mom)) - lr * d
      step[k] = new - w[k]
      w[k] = new
    out.append(step)
  return out


def _grads_exercising_all_branches(rng, w, n):
  """Per step: 'conv' gradients orthogonal to w per output channel (channel-wise branch),
  'dense' orthogonal to w only as a whole (layer-wise branch), 'head' random (no
  projection), 'bias' 1-D (never projected)."""
  out = []
  for _ in range(n):
    g = {k: rng.normal(size=v.shape) for k, v in w.items()}
    c = g["conv"].reshape(-1, w["conv"].shape[-1])
    wc = w["conv"].reshape(-1, w["conv"].shape[-1])
    c = c - wc * np.sum(wc * c, axis=0) / np.sum(wc * wc, axis=0)
    g["conv"] = c.reshape(w["conv"].shape)
    d, wd_ = g["dense"], w["dense"]
    g["dense"] = d - wd_ * np.sum(wd_ * d) / np.sum(wd_ * wd_)
    out.append(g)
  return out


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  w = {
    "conv": rng.normal(size=(3, 3, 4, 5)),  # Flax (h, w, in, out)
    "dense": rng.normal(size=(6, 5)),
    "head": rng.normal(size=(5, 2)),
    "bias": rng.normal(size=(5,)),
  }
  return w, _grads_exercising_all_branches(rng, w, 20)


def _run(tx, w0, grads):
  update = jax.jit(tx.update)
  w = jax.tree.map(jnp.asarray, w0)
  state = tx.init(w)
  out = []
  for g in grads:
    u, state = update(jax.tree.map(jnp.asarray, g), state, w)
    w = optax.apply_updates(w, u)
    out.append(u)
  return out


def _check_projection_fires(w, g):
  """Sanity of the fixture: the channel and layer branches are really exercised."""
  eps = 1e-8
  _, r_conv = projection_reference(w["conv"], g["conv"], g["conv"], 0.1, 0.5, eps, -1)
  conv_rows = np.moveaxis(w["conv"], -1, 0).reshape(5, -1)
  dense_rows = np.moveaxis(w["dense"], -1, 0).reshape(5, -1)
  dense_g = np.moveaxis(g["dense"], -1, 0).reshape(5, -1)
  assert r_conv == 0.5 and conv_rows.shape[0] == 5
  assert _cos_max(dense_g, dense_rows, eps) >= 0.1 / np.sqrt(6)  # channel test fails
  _, r_dense = projection_reference(w["dense"], g["dense"], g["dense"], 0.1, 0.5, eps, -1)
  _, r_head = projection_reference(w["head"], g["head"], g["head"], 0.1, 0.5, eps, -1)
  assert r_dense == 0.5 and r_head == 1.0


@pytest.mark.parametrize("nesterov", [False, True])
def test_adamp_matches_float64_transcription(x64, problem, nesterov):
  w0, grads = problem
  _check_projection_fires(w0, grads[0])
  hp = dict(lr=0.01, b1=0.9, b2=0.999, eps=1e-8, wd=0.1, delta=0.1, wd_ratio=0.5)
  expected = adamp_reference(grads, w0, **hp, nesterov=nesterov, axis=-1)
  tx = optim.adamp(
    hp["lr"],
    b1=hp["b1"],
    b2=hp["b2"],
    eps=hp["eps"],
    weight_decay=hp["wd"],
    delta=hp["delta"],
    wd_ratio=hp["wd_ratio"],
    nesterov=nesterov,
  )
  for got, want in zip(_run(tx, w0, grads), expected):
    for k in want:
      np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-6, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgdp_matches_float64_transcription(x64, problem, nesterov):
  w0, grads = problem
  hp = dict(lr=0.01, mom=0.9, damp=0.1, wd=0.1, eps=1e-8, delta=0.1, wd_ratio=0.5)
  expected = sgdp_reference(grads, w0, **hp, nesterov=nesterov, axis=-1)
  tx = optim.sgdp(
    hp["lr"],
    momentum=hp["mom"],
    dampening=hp["damp"],
    nesterov=nesterov,
    weight_decay=hp["wd"],
    eps=hp["eps"],
    delta=hp["delta"],
    wd_ratio=hp["wd_ratio"],
  )
  for got, want in zip(_run(tx, w0, grads), expected):
    for k in want:
      np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-6, atol=1e-12, err_msg=k)


def test_projected_update_has_no_radial_component_per_channel(x64, problem):
  w0, grads = problem
  tx = optim.scale_by_adamp()
  w = jax.tree.map(jnp.asarray, w0)
  u, _ = jax.jit(tx.update)(jax.tree.map(jnp.asarray, grads[0]), tx.init(w), w)
  radial = jnp.sum((u["conv"] * w["conv"]).reshape(-1, 5), axis=0)
  scale = jnp.linalg.norm(u["conv"]) * jnp.linalg.norm(w["conv"])
  assert float(jnp.max(jnp.abs(radial))) < 1e-9 * float(scale)
  # 1-D leaves are never projected: the bias update is plain Adam's first step, sign(g).
  np.testing.assert_allclose(u["bias"], jnp.sign(grads[0]["bias"]), rtol=1e-6)


def test_channel_axis_zero_equals_transposed_default(x64):
  rng = np.random.default_rng(1)
  w = rng.normal(size=(4, 6))
  g = rng.normal(size=(4, 6))
  g = g - w * np.sum(w * g, axis=1, keepdims=True) / np.sum(w * w, axis=1, keepdims=True)
  tx0, tx1 = optim.scale_by_adamp(channel_axis=0), optim.scale_by_adamp()
  u0, _ = jax.jit(tx0.update)(jnp.asarray(g), tx0.init(jnp.asarray(w)), jnp.asarray(w))
  u1, _ = jax.jit(tx1.update)(jnp.asarray(g.T), tx1.init(jnp.asarray(w.T)), jnp.asarray(w.T))
  np.testing.assert_allclose(u0, u1.T, rtol=1e-12)
  # ... and differs from treating axis 1 as channels (the projection is per channel).
  u_other, _ = jax.jit(tx1.update)(jnp.asarray(g), tx1.init(jnp.asarray(w)), jnp.asarray(w))
  assert not np.allclose(u0, u_other)


def test_zero_weights_and_zero_gradients_give_finite_updates():
  tx = optim.adamp(0.1, weight_decay=0.1)
  w = {"k": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
  u, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, w), tx.init(w), w)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))


def test_missing_params_is_a_clear_error():
  tx = optim.adamp(0.1)
  w = jnp.ones((2, 2))
  with pytest.raises(ValueError, match="params"):
    tx.update(w, tx.init(w))


@pytest.mark.parametrize(
  "kwargs",
  [
    {"delta": -0.1},
    {"delta": float("inf")},
    {"wd_ratio": -1.0},
    {"eps": 0.0},
    {"b1": 1.0},
    {"b2": float("nan")},
    {"weight_decay": -0.1},
    {"weight_decay": float("inf")},
    {"learning_rate": -0.1},
    {"channel_axis": 1.5},
  ],
)
@pytest.mark.parametrize("alias", ["adamp", "sgdp"])
def test_invalid_hyperparameters_raise_naming_the_argument(alias, kwargs):
  (name,) = kwargs
  if alias == "sgdp" and name in ("b1", "b2"):
    kwargs, name = {"momentum": kwargs[name]}, "momentum"
  with pytest.raises(ValueError, match=name):
    getattr(optim, alias)(**{"learning_rate": 0.1, **kwargs})


@pytest.mark.parametrize("make", [optim.scale_by_adamp, optim.scale_by_sgdp])
def test_nesterov_must_be_a_bool(make):
  with pytest.raises(TypeError, match="nesterov"):
    make(nesterov=1)


@pytest.mark.parametrize("axis", [2, -3])
def test_channel_axis_outside_a_leaf_is_an_error_not_a_wrap_around(axis):
  # Axis 2 of a 2-D kernel used to wrap to axis 0 silently.
  tx = optim.scale_by_adamp(channel_axis=axis)
  w = {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}
  with pytest.raises(ValueError, match="channel_axis"):
    tx.update(w, tx.init(w), w)


def test_channel_axis_is_static_under_inject_hyperparams():
  w = jnp.asarray(np.random.default_rng(3).normal(size=(4, 3)))
  traced = optax.inject_hyperparams(optim.scale_by_adamp)(channel_axis=0)
  with pytest.raises(TypeError, match="static_args"):
    jax.jit(traced.update)(w, traced.init(w), w)
  static = optax.inject_hyperparams(optim.scale_by_adamp, static_args=("channel_axis",))(
    channel_axis=0
  )
  u, _ = jax.jit(static.update)(w, static.init(w), w)
  plain = optim.scale_by_adamp(channel_axis=0)
  # inject_hyperparams stores b2 = 0.999 in float32: 1 - b2 then differs by ~1e-5.
  chex.assert_trees_all_close(u, plain.update(w, plain.init(w), w)[0], rtol=1e-4)


@pytest.mark.parametrize("alias", ["adamp", "sgdp"])
@pytest.mark.parametrize(
  "mask",
  [
    {"conv": True, "dense": False, "head": True, "bias": False},
    lambda p: {k: k in ("conv", "head") for k in p},
  ],
  ids=["tree", "callable"],
)
def test_weight_decay_mask_applies_inside_the_projection_step(x64, problem, alias, mask):
  """Masked-out leaves step as without decay, masked-in ones as with it (ratio r_t and,
  for SGDP, the 1 / (1 - momentum) factor included): the mask acts where the decay is."""
  w0, grads = problem
  make = getattr(optim, alias)

  def run(**kw):
    return _run(make(0.01, **kw), w0, grads[:3])

  masked = run(weight_decay=0.1, weight_decay_mask=mask)
  full, none = run(weight_decay=0.1), run()
  for m, f, n in zip(masked, full, none):
    chex.assert_trees_all_close(
      {k: m[k] for k in ("conv", "head")}, {k: f[k] for k in ("conv", "head")}, rtol=1e-12
    )
    chex.assert_trees_all_close(
      {k: m[k] for k in ("dense", "bias")}, {k: n[k] for k in ("dense", "bias")}, rtol=1e-12
    )
    assert not np.allclose(f["dense"], n["dense"])  # decay matters on the masked-out leaf


def test_weight_decay_mask_prefix_tree_covers_a_whole_subtree():
  w = {"enc": {"k": jnp.ones((3, 2)), "b": jnp.ones(2)}, "head": jnp.ones((2, 2))}
  g = jax.tree.map(lambda x: 0.5 * x, w)
  prefix = optim.adamp(0.1, weight_decay=0.3, weight_decay_mask={"enc": False, "head": True})
  full = optim.adamp(
    0.1, weight_decay=0.3, weight_decay_mask={"enc": {"k": False, "b": False}, "head": True}
  )
  chex.assert_trees_all_close(
    prefix.update(g, prefix.init(w), w)[0], full.update(g, full.init(w), w)[0]
  )


def test_state_dtypes_follow_mu_dtype():
  w = {"k": jnp.ones((3, 2), jnp.bfloat16)}
  tx = optim.scale_by_adamp(mu_dtype=jnp.float32)
  u, s = tx.update(w, tx.init(w), w)
  chex.assert_trees_all_equal_dtypes(u, w)
  chex.assert_trees_all_equal_dtypes(s.mu, s.nu, {"k": jnp.ones((3, 2), jnp.float32)})
