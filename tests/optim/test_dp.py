"""DP-SGD and DiceSGD against float64 NumPy transcriptions; noise calibration; bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim


def _clip(x, c):
  n = np.sqrt(sum(np.sum(v**2) for v in x.values()))
  return {k: v * min(1.0, c / n) if n > 0 else v for k, v in x.items()}


def _example(g, i):
  return {k: v[i] for k, v in g.items()}


def dp_sgd_reference(per_example_grads, c):
  """Abadi et al. (Algorithm 1), noise-free part: mean_i clip(g_i, C)."""
  out = []
  for g in per_example_grads:
    b = next(iter(g.values())).shape[0]
    clipped = [_clip(_example(g, i), c) for i in range(b)]
    out.append({k: np.mean([cl[k] for cl in clipped], axis=0) for k in g})
  return out


def dice_sgd_reference(per_example_grads, c1, c2):
  """Zhang et al. (arXiv:2311.14632) Algorithm 1 with w_t = 0:
  v_t = mean_i clip(g_i, C1) + clip(e_t, C2); e_{t+1} = e_t + mean_i g_i - v_t."""
  g0 = per_example_grads[0]
  e = {k: np.zeros(v.shape[1:]) for k, v in g0.items()}
  out, errs = [], []
  for g in per_example_grads:
    b = next(iter(g.values())).shape[0]
    clipped = [_clip(_example(g, i), c1) for i in range(b)]
    ce = _clip(e, c2)
    v = {k: np.mean([cl[k] for cl in clipped], axis=0) + ce[k] for k in g}
    e = {k: e[k] + g[k].mean(axis=0) - v[k] for k in g}
    out.append(v)
    errs.append(e)
  return out, errs


def _per_example_grads(seed, steps=20, b=6):
  rng = np.random.default_rng(seed)
  # Norms spread over [0.1, 10]: some examples clipped, some not.
  return [
    {
      "w": rng.normal(size=(b, 3, 2)) * rng.uniform(0.05, 4.0, size=(b, 1, 1)),
      "b": rng.normal(size=(b, 2)) * rng.uniform(0.05, 4.0, size=(b, 1)),
    }
    for _ in range(steps)
  ]


PARAMS = {"w": np.zeros((3, 2)), "b": np.zeros(2)}


def test_dp_sgd_matches_float64_transcription_without_noise(x64):
  grads = _per_example_grads(0)
  tx = optim.scale_by_dp_sgd(l2_norm_clip=1.0, noise_multiplier=0.0)
  update = jax.jit(tx.update)
  state = tx.init(PARAMS)
  for g, want in zip(grads, dp_sgd_reference(grads, 1.0)):
    u, state = update(g, state, PARAMS)
    for k in want:
      np.testing.assert_allclose(np.asarray(u[k]), want[k], rtol=1e-6, err_msg=k)


def test_dice_sgd_matches_float64_transcription_without_noise(x64):
  grads = _per_example_grads(1)
  tx = optim.scale_by_dice_sgd(clip1=0.5, clip2=1.5, noise_multiplier=0.0)
  update = jax.jit(tx.update)
  state = tx.init(PARAMS)
  want_u, want_e = dice_sgd_reference(grads, 0.5, 1.5)
  for g, wu, we in zip(grads, want_u, want_e):
    u, state = update(g, state, PARAMS)
    for k in wu:
      np.testing.assert_allclose(np.asarray(u[k]), wu[k], rtol=1e-6, err_msg=k)
      np.testing.assert_allclose(np.asarray(state.error[k]), we[k], rtol=1e-6, atol=1e-12)


def test_dice_sgd_error_state_does_not_see_the_noise(x64):
  grads = _per_example_grads(2, steps=5)
  txs = [optim.scale_by_dice_sgd(0.5, 1.0, s, key=3) for s in (0.0, 2.0)]
  states = [tx.init(PARAMS) for tx in txs]
  for g in grads:
    outs = [tx.update(g, s, PARAMS) for tx, s in zip(txs, states)]
    states = [o[1] for o in outs]
  for k in PARAMS:
    np.testing.assert_allclose(states[0].error[k], states[1].error[k], rtol=1e-12)
  assert not np.allclose(outs[0][0]["w"], outs[1][0]["w"])  # but the updates differ


@pytest.mark.parametrize("which", ["dp_sgd", "dice_sgd"])
def test_noise_std_is_sigma_times_clip_over_batch(which):
  b, sigma, c = 16, 3.0, 0.5
  g = {"w": jnp.zeros((b, 4000))}  # zero gradients: the update is pure noise
  if which == "dp_sgd":
    tx = optim.scale_by_dp_sgd(c, sigma, key=7)
  else:
    tx = optim.scale_by_dice_sgd(c, 2 * c, sigma, key=7)
  update = jax.jit(tx.update)
  params = {"w": jnp.zeros(4000)}
  u1, s = update(g, tx.init(params), params)
  u2, _ = update(g, s, params)
  std = float(jnp.std(u1["w"]))
  # 4000 samples: the sample std is within ~5% of the truth with overwhelming probability.
  np.testing.assert_allclose(std, sigma * c / b, rtol=0.05)
  assert abs(float(jnp.mean(u1["w"]))) < 4 * sigma * c / b / np.sqrt(4000)
  assert not np.allclose(u1["w"], u2["w"])  # the key advances every step


def test_same_key_gives_same_noise_and_int_seed_equals_typed_and_raw_keys():
  g = {"w": jnp.zeros((4, 10))}
  keys = (5, jax.random.key(5), jax.random.PRNGKey(5))
  txs = [optim.dp_sgd(0.1, 1.0, 1.0, key=k) for k in keys]
  params = {"w": jnp.zeros(10)}
  us = [tx.update(g, tx.init(params), params)[0] for tx in txs]
  chex.assert_trees_all_equal(*us)
  assert float(jnp.std(us[0]["w"])) > 0


def test_scalar_leaf_without_batch_axis_is_a_clear_error():
  tx = optim.dp_sgd(0.1, 1.0, 0.0)
  with pytest.raises(ValueError, match="batch axis"):
    params = {"w": jnp.ones(2), "s": jnp.float32(1.0)}
    tx.update({"w": jnp.ones((4, 2)), "s": jnp.float32(1.0)}, tx.init(params), params)


def test_inconsistent_batch_sizes_are_a_clear_error():
  tx = optim.dice_sgd(0.1, 1.0, 1.0, 0.0)
  params = {"w": jnp.zeros(2), "b": jnp.zeros(3)}
  with pytest.raises(ValueError, match="batch size"):
    tx.update({"w": jnp.ones((4, 2)), "b": jnp.ones((5, 3))}, tx.init(params), params)


def test_gradients_missing_the_batch_axis_are_a_clear_error():
  tx = optim.dp_sgd(0.1, 1.0, 0.0)
  params = {"w": jnp.zeros((4, 2))}
  with pytest.raises(ValueError, match="per example"):
    tx.update({"w": jnp.ones((4, 2))}, tx.init(params), params)  # batch-free gradients


@pytest.mark.parametrize(
  "make, match",
  [
    (lambda: optim.dp_sgd(0.1, -1.0, 1.0), "l2_norm_clip"),
    (lambda: optim.dp_sgd(0.1, 0.0, 1.0), "l2_norm_clip"),
    (lambda: optim.dp_sgd(0.1, float("nan"), 1.0), "l2_norm_clip"),
    (lambda: optim.dp_sgd(0.1, 1.0, -0.5), "noise_multiplier"),
    (lambda: optim.dp_sgd(0.1, 1.0, float("inf")), "noise_multiplier"),
    (lambda: optim.dp_sgd(-0.1, 1.0, 1.0), "learning_rate"),
    (lambda: optim.dp_sgd(0.1, float("inf"), 1.0), "unbounded"),
    (lambda: optim.dice_sgd(0.1, -1.0, 1.0, 1.0), "clip1"),
    (lambda: optim.dice_sgd(0.1, 2.0, 1.0, 1.0), "clip2 >= clip1"),
    (lambda: optim.dice_sgd(0.1, 1.0, float("nan"), 1.0), "clip2"),
    (lambda: optim.dice_sgd(0.1, float("inf"), float("inf"), 0.5), "unbounded"),
    (lambda: optim.dice_sgd(float("nan"), 1.0, 1.0, 1.0), "learning_rate"),
  ],
)
def test_invalid_thresholds_and_noise_raise_naming_the_argument(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_infinite_clip_means_no_clipping_dp_sgd_is_the_plain_mean(x64):
  grads = _per_example_grads(3, steps=3)
  tx = optim.scale_by_dp_sgd(l2_norm_clip=float("inf"), noise_multiplier=0.0)
  state = tx.init(PARAMS)
  for g in grads:
    u, state = jax.jit(tx.update)(g, state, PARAMS)
    chex.assert_tree_all_finite(u)
    chex.assert_trees_all_close(u, {k: v.mean(axis=0) for k, v in g.items()}, rtol=1e-12)


def test_infinite_clip2_feeds_the_error_back_unclipped(x64):
  grads = _per_example_grads(4)
  tx = optim.scale_by_dice_sgd(clip1=0.5, clip2=float("inf"), noise_multiplier=0.0)
  state = tx.init(PARAMS)
  want_u, want_e = dice_sgd_reference(grads, 0.5, 1e300)
  for g, wu, we in zip(grads, want_u, want_e):
    u, state = jax.jit(tx.update)(g, state, PARAMS)
    chex.assert_trees_all_close(u, wu, rtol=1e-6)
    chex.assert_trees_all_close(state.error, we, rtol=1e-6, atol=1e-12)


def test_error_dtype_is_deprecated_for_mu_dtype():
  params = {"w": jnp.zeros(2, jnp.bfloat16)}
  with pytest.warns(DeprecationWarning, match="mu_dtype"):
    tx = optim.dice_sgd(0.1, 1.0, 1.0, 0.0, error_dtype=jnp.float32)
  with pytest.warns(DeprecationWarning, match="mu_dtype"):
    inner = optim.scale_by_dice_sgd(1.0, 1.0, 0.0, error_dtype=jnp.float32)
  new = optim.dice_sgd(0.1, 1.0, 1.0, 0.0, mu_dtype=jnp.float32)
  for t in (tx, new):
    chex.assert_trees_all_equal_dtypes(t.init(params)[0].error, {"w": jnp.zeros(2)})
  assert inner.init(params).error["w"].dtype == jnp.float32
  with pytest.raises(TypeError, match="both"):
    optim.dice_sgd(0.1, 1.0, 1.0, 0.0, error_dtype=jnp.float32, mu_dtype=jnp.float32)


def test_key_is_keyword_only_and_checked_at_construction():
  with pytest.raises(TypeError):
    optim.dp_sgd(0.1, 1.0, 1.0, 0)  # a positional key
  with pytest.raises(TypeError, match="key"):
    optim.scale_by_dice_sgd(1.0, 1.0, 1.0, key="seed")


@pytest.mark.parametrize("which", ["dp_sgd", "dice_sgd"])
def test_nan_gradient_propagates_to_the_update_as_documented(which):
  g = {"w": jnp.array([[1.0, jnp.nan], [0.5, 0.5]])}
  tx = optim.dp_sgd(0.1, 1.0, 0.0) if which == "dp_sgd" else optim.dice_sgd(0.1, 1.0, 1.0, 0.0)
  params = {"w": jnp.zeros(2)}
  u, _ = tx.update(g, tx.init(params), params)
  assert bool(jnp.all(jnp.isnan(u["w"])))


def test_zero_per_example_gradients_stay_zero_without_noise():
  tx = optim.dice_sgd(0.1, 1.0, 1.0, 0.0)
  u, s = tx.update({"w": jnp.zeros((3, 2))}, tx.init({"w": jnp.zeros(2)}))
  np.testing.assert_array_equal(u["w"], 0.0)
  np.testing.assert_array_equal(s[0].error["w"], 0.0)


def test_dice_sgd_removes_the_clipping_bias_that_dp_sgd_keeps():
  """Noise-free, small clip: DiceSGD reaches the least-squares optimum, DP-SGD does not."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(32, 3)), jnp.float32)
  y = x @ jnp.array([1.0, -2.0, 0.5]) + jnp.asarray(rng.normal(size=32), jnp.float32)
  loss_i = lambda w, xi, yi: 0.5 * (xi @ w - yi) ** 2
  w_opt = jnp.linalg.lstsq(x, y)[0]

  def run(tx):
    @jax.jit
    def go(w):
      def body(carry, _):
        w, s = carry
        g = jax.vmap(jax.grad(loss_i), in_axes=(None, 0, 0))(w, x, y)
        u, s = tx.update(g, s, w)
        return (optax.apply_updates(w, u), s), None

      return jax.lax.scan(body, (w, tx.init(w)), None, length=1500)[0][0]

    return go(jnp.zeros(3))

  err_dice = float(jnp.linalg.norm(run(optim.dice_sgd(0.1, 0.1, 0.2, 0.0)) - w_opt))
  err_dp = float(jnp.linalg.norm(run(optim.dp_sgd(0.1, 0.1, 0.0)) - w_opt))
  assert err_dice < 1e-3 and err_dp > 30 * err_dice, (err_dice, err_dp)


def _load_repro():
  import importlib.util
  import pathlib

  path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "repro_first_order.py"
  spec = importlib.util.spec_from_file_location("repro_first_order", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.slow
def test_dice_sgd_beats_dp_sgd_at_small_clip_and_equal_noise():
  out = _load_repro().study_dp(quick=True)["results"]
  dice = [v for k, v in out.items() if k.startswith("DiceSGD")]
  dp = next(v for k, v in out.items() if k.startswith("DP-SGD"))
  assert all(d["mean"] < dp["mean"] for d in dice), out
