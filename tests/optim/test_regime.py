"""optim.schedules.regime_adaptation: the learning-rate fix and the regime adaptation of
Hoffer et al., against a transcription of the official code's epoch-milestone regime."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optim.schedules import Regime, regime_adaptation


def test_float_learning_rate_is_scaled_by_the_square_root_of_the_batch_ratio():
  # The official code: lr = lr0 * (batch_size / mini_batch_size) ** 0.5.
  r = regime_adaptation(0.1, 128, 2048, base_num_steps=1000)
  assert isinstance(r, Regime)
  assert r.learning_rate == pytest.approx(0.1 * (2048 / 128) ** 0.5, rel=1e-15)
  assert r.num_steps == 1000
  r = regime_adaptation(0.1, 128, 2048, base_num_steps=1000, variant="epochs")
  assert r.num_steps == math.ceil(1000 / 16)


def test_updates_variant_scales_the_schedule_at_the_same_update_count():
  base = optax.cosine_decay_schedule(0.2, 500)
  r = regime_adaptation(base, 16, 256, base_num_steps=500)
  counts = jnp.arange(0, 600, 7)
  np.testing.assert_allclose(r.learning_rate(counts), 4.0 * base(counts), rtol=1e-6)
  assert r.num_steps == 500


def test_epochs_variant_compresses_the_schedule_by_the_batch_ratio():
  base = optax.piecewise_constant_schedule(0.1, {300: 0.1, 450: 0.1})
  r = regime_adaptation(base, 32, 128, base_num_steps=600, variant="epochs")
  counts = jnp.arange(150)
  np.testing.assert_allclose(r.learning_rate(counts), 2.0 * base(4 * counts), rtol=1e-6)
  assert r.num_steps == 150
  # A fractional ratio floors the base step: 1.5 * 3 = 4.5 -> 4.
  r = regime_adaptation(optax.linear_schedule(1.0, 0.0, 100), 2, 3, 100, variant="epochs")
  assert float(r.learning_rate(3)) == pytest.approx(math.sqrt(1.5) * (1 - 4 / 100), rel=1e-6)
  assert r.num_steps == math.ceil(100 / 1.5)


def _official_regime(regime, batch_size, mini_batch_size, lr_fix, regime_fix):
  """main_normal.py's adapted_regime: {epoch: {"lr": ...}} (transcribed)."""
  adapted = {}
  for e, v in regime.items():
    v = dict(v)
    if lr_fix and "lr" in v:
      v["lr"] *= (batch_size / mini_batch_size) ** 0.5
    if regime_fix:
      e *= math.ceil(batch_size / mini_batch_size)
    adapted[e] = v
  return adapted


def _lr_at_epoch(regime, epoch):
  return regime[max(e for e in regime if e <= epoch)]["lr"]


@pytest.mark.parametrize("variant", ["updates", "epochs"])
def test_matches_the_official_epoch_regime_at_every_update(variant):
  n, b0, b = 1024, 64, 512  # examples, small batch, large batch (ratio 8)
  regime = {0: {"lr": 0.1}, 15: {"lr": 0.01}, 25: {"lr": 0.001}}
  epochs0 = 30
  steps0 = epochs0 * n // b0

  def base(count):  # the small-batch regime as a schedule of the update count
    epoch = count // (n // b0)
    return jnp.where(epoch >= 25, 0.001, jnp.where(epoch >= 15, 0.01, 0.1))

  r = regime_adaptation(base, b0, b, steps0, variant=variant)
  official = _official_regime(regime, b, b0, lr_fix=True, regime_fix=variant == "updates")
  epochs = epochs0 * (math.ceil(b / b0) if variant == "updates" else 1)
  steps_per_epoch = n // b
  assert r.num_steps == epochs * steps_per_epoch
  counts = np.arange(r.num_steps)
  ours = np.asarray(jax.jit(r.learning_rate)(counts))
  want = np.array([_lr_at_epoch(official, c // steps_per_epoch) for c in counts])
  np.testing.assert_allclose(ours, want, rtol=1e-6)


def test_schedule_is_jittable_and_takes_traced_counts():
  r = regime_adaptation(optax.exponential_decay(1.0, 10, 0.5), 8, 32, 100, variant="epochs")
  np.testing.assert_allclose(jax.jit(r.learning_rate)(jnp.int32(5)), r.learning_rate(5))
