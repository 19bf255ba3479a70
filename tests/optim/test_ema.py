"""optim.weight_ema: the bias-corrected weight average vs a NumPy transcription, its reader
ema_params, a traced decay, and the old spelling jaxdiff.training.weight_ema (one release).

The shared optimizer table sweeps it too (``weight_ema_sgd`` in cases_first_order.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim


def test_weight_ema_is_the_bias_corrected_average_of_the_visited_weights(x64):
  tx = optax.chain(optax.sgd(0.5), optim.weight_ema(0.9))
  p = {"w": jnp.array([1.0, -2.0])}
  s = tx.init(p)
  m = np.zeros(2)
  for k in range(5):
    g = {"w": p["w"] * (k + 1)}
    u, s = tx.update(g, s, p)
    p = optax.apply_updates(p, u)
    m = 0.9 * m + 0.1 * np.asarray(p["w"])  # Adam-style: zero start, then bias-corrected
    np.testing.assert_allclose(optim.ema_params(s)["w"], m / (1 - 0.9 ** (k + 1)), rtol=1e-6)


def test_ema_params_needs_exactly_one_weight_ema_state():
  p = {"w": jnp.ones(2)}
  with pytest.raises(ValueError, match="exactly one weight_ema state, found 0"):
    optim.ema_params(optax.sgd(0.1).init(p))
  two = optax.chain(optim.weight_ema(0.5), optim.weight_ema(0.9)).init(p)
  with pytest.raises(ValueError, match="exactly one weight_ema state, found 2"):
    optim.ema_params(two)


def test_traced_decay_under_inject_hyperparams_gives_the_concrete_average():
  p = {"w": jnp.array([1.0, -2.0, 0.5])}
  g = {"w": jnp.array([0.3, -0.1, 2.0])}
  plain = optax.chain(optax.sgd(0.5), optim.weight_ema(0.8))
  injected = optax.chain(optax.sgd(0.5), optax.inject_hyperparams(optim.weight_ema)(decay=0.8))
  s_plain, s_inj = plain.init(p), injected.init(p)
  step = lambda tx: jax.jit(lambda p, s: tx.update(g, s, p))  # noqa: E731 - traced decay
  step_plain, step_inj = step(plain), step(injected)
  for _ in range(3):
    u, s_plain = step_plain(p, s_plain)
    _, s_inj = step_inj(p, s_inj)
    p = optax.apply_updates(p, u)
  np.testing.assert_allclose(
    optim.ema_params(s_inj)["w"], optim.ema_params(s_plain)["w"], rtol=1e-6
  )


@pytest.mark.parametrize("name", ["weight_ema", "WeightEMAState", "ema_params"])
def test_old_spelling_jaxdiff_training_still_works_and_warns(name):
  from jaxdiff import training

  with pytest.warns(DeprecationWarning, match=rf"use optim\.{name} .*will be removed in the next"):
    old = getattr(training, name)
  assert old is getattr(optim, name)
  assert name not in training.__all__  # `from jaxdiff.training import *` stays silent


def test_old_spelling_gives_the_same_average():
  from jaxdiff import training

  with pytest.warns(DeprecationWarning, match="will be removed in the next release"):
    tx = optax.chain(optax.sgd(1.0), training.weight_ema(0.5))
  p = {"w": jnp.zeros(2)}
  _, s = tx.update({"w": -jnp.ones(2)}, tx.init(p), p)
  with pytest.warns(DeprecationWarning, match="will be removed in the next release"):
    assert training.ema_params(s)["w"].tolist() == [1.0, 1.0]


def test_unknown_attribute_of_jaxdiff_training_is_still_an_attribute_error():
  from jaxdiff import training

  with pytest.raises(AttributeError, match="no attribute 'weight_emma'"):
    training.weight_emma  # noqa: B018
