"""Exponentiated gradient against a float64 NumPy transcription; signs never flip."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import optim

A = np.array([[2.0, 0.3, -0.1], [0.3, 1.0, 0.2], [-0.1, 0.2, 0.5]])
B = np.array([1.0, -2.0, 0.5])


def _loss(w):
  return 0.5 * w @ (A @ w) - B @ w


def _reference(w, num_steps, eta_fn, variant):
  """The update as the docstring states it, in float64 NumPy."""
  out = [w.copy()]
  for t in range(num_steps):
    g = A @ w - B
    scale = np.sign(w) if variant == "sign" else w
    w = w * np.exp(-eta_fn(t) * scale * g)
    out.append(w.copy())
  return np.stack(out)


@pytest.mark.parametrize("variant", ["sign", "log"])
@pytest.mark.parametrize("schedule", [False, True])
def test_matches_float64_transcription_over_12_steps(x64, variant, schedule):
  w0 = np.array([0.7, -1.3, 0.2])
  eta_fn = (lambda t: 0.3 * 0.9**t) if schedule else (lambda t: 0.3)
  lr = (lambda c: 0.3 * 0.9**c) if schedule else 0.3
  tx = optim.exponentiated_gradient(lr, variant=variant)
  w = jnp.asarray(w0)
  state = tx.init(w)
  got = [np.asarray(w)]
  step = jax.jit(lambda w, s: tx.update(jax.grad(_loss)(w), s, w))
  for _ in range(12):
    u, state = step(w, state)
    w = optax.apply_updates(w, u)
    got.append(np.asarray(w))
  np.testing.assert_allclose(np.stack(got), _reference(w0, 12, eta_fn, variant), rtol=1e-12)
  assert w.dtype == jnp.float64


def test_variants_differ_where_the_weight_is_not_unit():
  # Planted-bug guard: the two preconditioners |w| and w^2 coincide only at |w| = 1.
  w, g = jnp.array([0.5, -3.0]), jnp.array([1.0, 1.0])
  txs = [optim.exponentiated_gradient(0.1, variant=v) for v in ("sign", "log")]
  us = [tx.update(g, tx.init(w), w)[0] for tx in txs]
  assert not np.allclose(us[0], us[1])


@given(
  w=st.lists(st.floats(-1e3, 1e3, allow_subnormal=False), min_size=1, max_size=6),
  g_scale=st.floats(-1e4, 1e4),
  lr=st.floats(0.0, 10.0),
  variant=st.sampled_from(["sign", "log"]),
)
def test_sign_never_flips(w, g_scale, lr, variant):
  w = jnp.asarray(w, jnp.float32)
  g = g_scale * jnp.cos(jnp.arange(w.size, dtype=jnp.float32))
  tx = optim.exponentiated_gradient(lr, variant=variant)
  new = optax.apply_updates(w, tx.update(g, tx.init(w), w)[0])
  same = np.sign(np.asarray(new)) == np.sign(np.asarray(w))
  # Either the sign is kept or the factor underflowed to exactly 0 (or overflowed to inf).
  assert np.all(same | (np.asarray(new) == 0)), (w, new)


def test_zero_weight_stays_zero_and_descends_elsewhere():
  w = jnp.array([0.0, 1.0, -1.0])
  g = jnp.array([5.0, 1.0, 1.0])
  tx = optim.exponentiated_gradient(0.1)
  new = optax.apply_updates(w, tx.update(g, tx.init(w), w)[0])
  assert float(new[0]) == 0.0
  assert float(new[1]) < 1.0 and float(new[2]) < -1.0  # both move against the gradient


def test_needs_params_and_a_known_variant():
  tx = optim.exponentiated_gradient(0.1)
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
  with pytest.raises(ValueError, match="variant must be one of 'sign', 'log'"):
    optim.exponentiated_gradient(0.1, variant="plus")
