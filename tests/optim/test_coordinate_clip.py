"""Coordinate-wise clipping (Pan & Li) against a float64 NumPy transcription."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim


def clip_reference(tree, threshold=None, fraction=None):
  """clip(u, tau)_i = sign(u_i) min(|u_i|, tau); adaptive tau = ceil(q d)-th largest |u_i|."""
  if threshold is None:
    mags = np.sort(np.concatenate([np.abs(v).ravel() for v in tree.values()]))[::-1]
    threshold = mags[math.ceil(fraction * mags.size) - 1]
  return {k: np.sign(v) * np.minimum(np.abs(v), threshold) for k, v in tree.items()}


@pytest.mark.parametrize("kw", [{"threshold": 0.7}, {"fraction": 0.1}, {"fraction": 1.0}])
def test_matches_float64_transcription_over_20_random_updates(x64, kw):
  rng = np.random.default_rng(0)
  tx = optim.coordinate_clip(**kw)
  update = jax.jit(tx.update)
  for _ in range(20):
    g = {"a": rng.standard_t(2, size=(7, 5)), "b": rng.normal(size=(11,))}
    u, _ = update(g, tx.init(None))
    want = clip_reference(g, **kw)
    for k in g:
      np.testing.assert_allclose(np.asarray(u[k]), want[k], rtol=1e-12, err_msg=k)


def test_fraction_clips_exactly_the_top_coordinates():
  rng = np.random.default_rng(1)
  g = {"a": jnp.asarray(rng.normal(size=(10, 10))), "b": jnp.asarray(rng.normal(size=(20,)))}
  tx = optim.coordinate_clip(fraction=0.05)  # 6 of 120 coordinates
  u, _ = jax.jit(tx.update)(g, tx.init(None))
  mags = jnp.concatenate([jnp.abs(x).ravel() for x in jax.tree.leaves(g)])
  changed = sum(int(jnp.sum(a != b)) for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(g)))
  assert changed == 5  # the 6th largest is the threshold itself, left unchanged
  tau = jnp.sort(mags)[-6]
  assert all(
    float(jnp.max(jnp.abs(x))) == float(tau)
    for x in [jnp.concatenate([jnp.abs(x).ravel() for x in jax.tree.leaves(u)])]
  )


def test_clipping_lowers_directional_sharpness_when_few_coordinates_are_sharp():
  """Pan & Li's mechanism on a quadratic: few coordinates with large curvature and large
  gradient make SGD's direction sharp; clipping those coordinates lowers u^T H u / |u|^2."""
  from optim.curvature import directional_sharpness

  rng = np.random.default_rng(3)
  h = np.ones(200)
  h[:4] = 1e3  # a few sharp coordinates
  x = rng.normal(size=200)
  x[:4] *= 5.0
  f = lambda p: 0.5 * jnp.sum(jnp.asarray(h, jnp.float32) * p**2)
  p = jnp.asarray(x, jnp.float32)
  g = jax.grad(f)(p)
  u, _ = optim.coordinate_clip(fraction=0.05).update(g, ())
  s_sgd = float(directional_sharpness(f, p, g))
  s_clip = float(directional_sharpness(f, p, u))
  assert s_clip < 0.1 * s_sgd, (s_sgd, s_clip)


@pytest.mark.parametrize(
  "kw, match",
  [
    ({}, "exactly one"),
    ({"threshold": 1.0, "fraction": 0.1}, "exactly one"),
    ({"threshold": 0.0}, "threshold"),
    ({"threshold": -1.0}, "threshold"),
    ({"threshold": float("nan")}, "threshold"),
    ({"fraction": 0.0}, "fraction"),
    ({"fraction": 1.5}, "fraction"),
    ({"fraction": float("nan")}, "fraction"),
  ],
)
def test_invalid_arguments_raise(kw, match):
  with pytest.raises(ValueError, match=match):
    optim.coordinate_clip(**kw)


def test_infinite_threshold_clips_nothing():
  g = {"a": jnp.array([1e30, -3.0]), "b": jnp.array([0.5])}
  u, _ = jax.jit(optim.coordinate_clip(threshold=float("inf")).update)(g, optax.EmptyState())
  chex.assert_trees_all_equal(u, g)


def test_traced_fraction_under_inject_hyperparams_says_to_make_it_static():
  g = jnp.array([4.0, -3.0, 1.0, 0.5])
  traced = optax.inject_hyperparams(optim.coordinate_clip)(fraction=0.5)
  with pytest.raises(TypeError, match=r"fraction.*static_args"):
    jax.jit(traced.update)(g, traced.init(g))
  static = optax.inject_hyperparams(optim.coordinate_clip, static_args=("fraction",))(fraction=0.5)
  u, _ = jax.jit(static.update)(g, static.init(g))
  chex.assert_trees_all_equal(u, jnp.array([3.0, -3.0, 1.0, 0.5]))


def test_threshold_may_be_traced_under_inject_hyperparams():
  g = jnp.array([4.0, -3.0, 1.0, 0.5])
  tx = optax.inject_hyperparams(optim.coordinate_clip)(threshold=2.0)
  u, _ = jax.jit(tx.update)(g, tx.init(g))
  chex.assert_trees_all_equal(u, jnp.array([2.0, -2.0, 1.0, 0.5]))


def _load_repro():
  import importlib.util
  import pathlib

  path = pathlib.Path(__file__).resolve().parents[2] / "bench" / "repro_first_order.py"
  spec = importlib.util.spec_from_file_location("repro_first_order", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.slow
def test_sgd_update_is_sharper_than_adams_along_an_adam_run_of_attention():
  """Pan & Li's observation on a tiny attention model (bench/repro_first_order.py)."""
  rows = _load_repro().study_sharpness(quick=True)["results"]
  for step, r in rows.items():
    assert r["SGD"] > 2.0 * r["Adam"], (step, r)
    assert r["clipped SGD (top 10%)"] < r["SGD"], (step, r)
