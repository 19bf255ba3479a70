"""AdaHessian (Yao et al., arXiv:2006.00719) against a float64 NumPy transcription.

On a diagonal quadratic, |z * (H z)| = |a| for every Rademacher probe z, so the
trajectory is deterministic. The transcription follows the paper's Algorithm 1 with the
official image-classification variant's details (abs before the spatial average of conv
kernels, eps after the Hessian power, decoupled weight decay).
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
  return lambda p: sum(
    jnp.sum(0.5 * ai * x**2 - bi * x)
    for x, ai, bi in zip(jax.tree.leaves(p), jax.tree.leaves(a), jax.tree.leaves(b))
  )


def _problem():
  """A Flax-layout 2-D conv kernel (H, W, in, out), a dense kernel and a bias."""
  rng = np.random.default_rng(1)
  shapes = {"conv": (3, 3, 2, 2), "dense": (3, 2), "bias": (4,)}
  a = {
    k: rng.uniform(0.2, 3.0, size=s) * rng.choice([-1.0, 1.0], size=s) for k, s in shapes.items()
  }
  b = {k: rng.normal(size=s) for k, s in shapes.items()}
  theta0 = {k: rng.normal(size=s) for k, s in shapes.items()}
  return a, b, theta0


def adahessian_reference(theta, a, b, *, lr, b1, b2, eps, k, n, wd, steps):
  """Algorithm 1 of the paper per leaf (dicts of arrays), written from the paper."""
  # Spatial averaging (paper Eq. 10): conv kernels share one diagonal value per (in, out)
  # over the kernel's spatial window; other leaves are not averaged.
  d = {
    key: np.broadcast_to(np.abs(v).mean(axis=(0, 1), keepdims=True), v.shape)
    if v.ndim == 4
    else np.abs(v)
    for key, v in a.items()
  }
  m = {key: np.zeros_like(v) for key, v in theta.items()}
  v = {key: np.zeros_like(x) for key, x in theta.items()}
  refreshes, out = 0, []
  for t in range(1, steps + 1):
    if (t - 1) % n == 0:
      refreshes += 1
      v = {key: b2 * v[key] + (1 - b2) * d[key] ** 2 for key in v}
    new = {}
    for key in theta:
      g = a[key] * theta[key] - b[key]
      m[key] = b1 * m[key] + (1 - b1) * g
      m_hat = m[key] / (1 - b1**t)
      denom = np.sqrt(v[key] / (1 - b2**refreshes)) ** k + eps
      new[key] = theta[key] - lr * (m_hat / denom + wd * theta[key])
    theta = new
    out.append(np.concatenate([np.ravel(theta[key]) for key in sorted(theta)]))
  return np.stack(out)


CONFIGS = {
  "paper_defaults": dict(lr=0.15, b1=0.9, b2=0.999, eps=1e-4, k=1.0, n=1, wd=0.0),
  "power_half_every3_wd": dict(lr=0.05, b1=0.8, b2=0.9, eps=1e-3, k=0.5, n=3, wd=1e-2),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_matches_numpy_transcription_with_conv_spatial_averaging(x64, name):
  cfg = CONFIGS[name]
  a, b, theta0 = _problem()
  f = _quadratic(a, b)
  opt = optim.adahessian(
    cfg["lr"],
    b1=cfg["b1"],
    b2=cfg["b2"],
    eps=cfg["eps"],
    hessian_power=cfg["k"],
    update_interval=cfg["n"],
    weight_decay=cfg["wd"],
    key=7,
  )
  step = jax.jit(lambda p, s: opt.update(jax.grad(f)(p), s, p, obj_fn=f))
  p, s = jax.tree.map(jnp.asarray, theta0), opt.init(theta0)
  traj = []
  for _ in range(STEPS):
    u, s = step(p, s)
    p = optax.apply_updates(p, u)
    traj.append(np.concatenate([np.ravel(p[key]) for key in sorted(p)]))
  ref = adahessian_reference(theta0, a, b, steps=STEPS, **cfg)
  np.testing.assert_allclose(np.stack(traj), ref, rtol=1e-6, atol=1e-12)


def test_spatial_rule_for_each_rank_and_custom_override(x64):
  """Rank >= 4 averages the leading rank-2 axes; ranks <= 3 are not averaged by default."""
  assert optim.layouts.conv_spatial_axes(()) == ()
  assert optim.layouts.conv_spatial_axes((5,)) == ()
  assert optim.layouts.conv_spatial_axes((4, 3)) == ()
  assert optim.layouts.conv_spatial_axes((3, 4, 5)) == ()
  assert optim.layouts.conv_spatial_axes((3, 3, 4, 5)) == (0, 1)
  assert optim.layouts.conv_spatial_axes((2, 3, 3, 4, 5)) == (0, 1, 2)

  rng = np.random.default_rng(2)
  a = {"conv1d": rng.uniform(0.5, 2.0, (3, 2, 2))}
  f = _quadratic(a, {"conv1d": np.zeros((3, 2, 2))})
  p = {"conv1d": jnp.ones((3, 2, 2))}

  def first_nu(spatial_axes):
    opt = optim.scale_by_adahessian(b2=0.0, spatial_axes=spatial_axes)
    _, s = opt.update(jax.grad(f)(p), opt.init(p), p, obj_fn=f)
    return np.sqrt(np.asarray(s.nu["conv1d"]))

  np.testing.assert_allclose(first_nu(optim.layouts.conv_spatial_axes), a["conv1d"])
  conv1d_rule = lambda shape: (0,) if len(shape) == 3 else optim.layouts.conv_spatial_axes(shape)
  expected = np.broadcast_to(a["conv1d"].mean(axis=0, keepdims=True), (3, 2, 2))
  np.testing.assert_allclose(first_nu(conv1d_rule), expected)

  with pytest.raises(ValueError, match="spatial_axes"):
    first_nu(lambda shape: (5,))


def test_hessian_is_drawn_only_every_n_steps():
  calls = []
  a = {"w": jnp.array([1.0, 2.0])}
  f = _quadratic(a, {"w": jnp.zeros(2)})

  def counting_obj(p):
    jax.debug.callback(lambda: calls.append(1))
    return f(p)

  opt = optim.scale_by_adahessian(update_interval=3)
  step = jax.jit(lambda p, s: opt.update(jax.grad(f)(p), s, p, obj_fn=counting_obj))
  p, s = {"w": jnp.ones(2)}, opt.init({"w": jnp.ones(2)})
  hess_counts = []
  for _ in range(7):
    _, s = step(p, s)
    hess_counts.append(int(s.hess_count))
  jax.effects_barrier()
  assert hess_counts == [1, 1, 1, 2, 2, 2, 3]
  # The HVP (a jvp of the gradient) evaluates the objective only on refresh steps.
  assert len(calls) > 0 and len(calls) % 3 == 0


def test_non_finite_curvature_keeps_previous_second_moment(x64):
  a = {"w": jnp.array([1.0, 2.0, 3.0])}
  f = _quadratic(a, {"w": jnp.zeros(3)})
  bad = lambda p: f(p) + jnp.inf * p["w"][1] ** 2
  opt = optim.scale_by_adahessian(b2=0.5)
  p = {"w": jnp.ones(3)}
  step = jax.jit(lambda s, obj: opt.update(jax.grad(f)(p), s, p, obj_fn=obj), static_argnums=1)
  _, s1 = step(opt.init(p), f)
  u, s2 = step(s1, bad)
  np.testing.assert_array_equal(s2.nu["w"][1], s1.nu["w"][1])
  ok = np.array([0, 2])
  np.testing.assert_allclose(s2.nu["w"][ok], 0.5 * s1.nu["w"][ok] + 0.5 * a["w"][ok] ** 2)
  assert np.all(np.isfinite(u["w"]))


def test_missing_objective_raises_a_clear_error():
  p = jnp.ones(2)
  opt = optim.adahessian(0.15)
  with pytest.raises(ValueError, match="obj_fn"):
    opt.update(p, opt.init(p), p)
  with pytest.raises(TypeError, match="obj_fn must be callable"):
    opt.update(p, opt.init(p), p, obj_fn=3.0)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(hessian_power=0.0), "hessian_power"),
    (dict(hessian_power=1.5), "hessian_power"),
    (dict(b1=1.0), "b1"),
    (dict(b2=float("nan")), "b2"),
    (dict(eps=0.0), "eps"),
    (dict(eps=float("inf")), "eps"),
    (dict(update_interval=0), "update_interval"),
    (dict(update_interval=2.5), "update_interval"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(learning_rate=-0.1), "learning_rate"),
  ],
)
def test_invalid_hyperparameters_raise_at_construction(kwargs, match):
  kwargs = {"learning_rate": 0.15, **kwargs}
  with pytest.raises(ValueError, match=match):
    optim.adahessian(**kwargs)


def test_non_numeric_hyperparameter_and_bad_key_raise_type_errors():
  with pytest.raises(TypeError, match="b1"):
    optim.adahessian(0.15, b1="0.9")
  with pytest.raises(TypeError, match="key"):
    optim.adahessian(0.15, key="seed")


def test_update_interval_is_static_under_inject_hyperparams():
  f = _quadratic({"w": jnp.array([1.0, 2.0])}, {"w": jnp.zeros(2)})
  p = {"w": jnp.ones(2)}

  def jitted_step(tx):
    return jax.jit(lambda s: tx.update(jax.grad(f)(p), s, p, obj_fn=f))(tx.init(p))

  # spatial_axes is callable: inject_hyperparams would take it for a schedule.
  inject = lambda static_args: optax.inject_hyperparams(optim.adahessian, static_args=static_args)
  traced = inject(("spatial_axes",))(learning_rate=0.1, update_interval=2)
  with pytest.raises(TypeError, match="update_interval.*static_args"):
    jitted_step(traced)
  static = inject(("spatial_axes", "update_interval"))(learning_rate=0.1, update_interval=2)
  u, _ = jitted_step(static)
  u_ref, _ = jitted_step(optim.adahessian(0.1, update_interval=2))
  np.testing.assert_allclose(u["w"], u_ref["w"], rtol=1e-6)


def _first_update(opt, p):
  f = _quadratic({"w": jnp.array([1.0, 4.0])}, {"w": jnp.array([0.5, -0.5])})
  g = jax.tree.map(lambda x: x.astype(p["w"].dtype), jax.grad(f)(p))
  return opt.update(g, opt.init(p), p, obj_fn=f)


def test_omitted_learning_rate_warns_and_uses_the_paper_default():
  p = {"w": jnp.array([1.0, -2.0])}
  with pytest.warns(DeprecationWarning, match="learning_rate"):
    opt = optim.adahessian(key=0)
  u, _ = _first_update(opt, p)
  u_ref, _ = _first_update(optim.adahessian(0.15, key=0), p)
  np.testing.assert_array_equal(u["w"], u_ref["w"])


def test_key_is_keyword_only_and_accepts_seed_raw_and_typed_keys():
  with pytest.raises(TypeError):
    optim.scale_by_adahessian(0.9, 0.999, 1e-4, 1.0, 1, optim.layouts.conv_spatial_axes, None, 0)
  keys = [5, jax.random.PRNGKey(5), jax.random.key(5)]
  states = [optim.scale_by_adahessian(key=k).init(jnp.ones(2)) for k in keys]
  for s in states:
    assert jax.dtypes.issubdtype(s.key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(s.key), jax.random.key_data(states[0].key))


def test_mu_dtype_sets_the_first_moment_dtype_only():
  p32 = {"w": jnp.array([1.0, -2.0])}
  u, s = _first_update(optim.adahessian(0.15, mu_dtype=jnp.bfloat16), p32)
  assert s[0].mu["w"].dtype == jnp.bfloat16 and s[0].nu["w"].dtype == jnp.float32
  assert u["w"].dtype == jnp.float32
  # float32 moments for bf16 parameters: the updates stay in the parameters' dtype.
  p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), p32)
  u, s = _first_update(optim.adahessian(0.15, mu_dtype=jnp.float32), p16)
  assert s[0].mu["w"].dtype == jnp.float32 and s[0].nu["w"].dtype == jnp.bfloat16
  assert u["w"].dtype == jnp.bfloat16
  # mu_dtype equal to the parameters' dtype is the default, bit for bit.
  u_a, _ = _first_update(optim.adahessian(0.15, mu_dtype=jnp.float32), p32)
  u_b, _ = _first_update(optim.adahessian(0.15), p32)
  np.testing.assert_array_equal(u_a["w"], u_b["w"])
