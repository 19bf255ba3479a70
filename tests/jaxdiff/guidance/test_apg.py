"""Adaptive Projected Guidance (jaxdiff/guidance/_apg.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import guidance
from tests.jaxdiff.guidance.testbed import ctx, fixed, run, step


def test_apg_with_eta1_no_threshold_no_momentum_equals_cfg(x64, batch):
  for w in (3.0, 12.0):
    np.testing.assert_allclose(
      run(guidance.apg(w, eta=1.0), batch)[0], run(guidance.cfg(w), batch)[0], rtol=1e-10
    )


def _apg_numpy(xcs, xus, w, eta, r, beta):
  """Sadat et al. Algorithm 1, transcribed per sample in NumPy (float64)."""
  out, running = [], np.zeros_like(xcs[0])
  for xc, xu in zip(xcs, xus):
    running = (xc - xu) + beta * running
    diff = running.copy()
    for b in range(diff.shape[0]):
      n = np.linalg.norm(diff[b])
      diff[b] *= min(1.0, r / n)
    res = np.empty_like(diff)
    for b in range(diff.shape[0]):
      v1 = xc[b] / np.linalg.norm(xc[b])
      par = np.sum(diff[b] * v1) * v1
      res[b] = xc[b] + (w - 1) * ((diff[b] - par) + eta * par)
    out.append(res)
  return out


def test_apg_matches_numpy_algorithm_with_momentum_and_threshold(x64):
  rng = np.random.default_rng(1)
  xcs, xus = rng.normal(size=(2, 4, 3, 6))
  w, eta, r, beta = 6.0, 0.2, 1.5, -0.5
  rule = guidance.apg(w, eta=eta, norm_threshold=r, momentum=beta)
  state = rule.init(jnp.zeros((3, 6)), None)
  want = _apg_numpy(xcs, xus, w, eta, r, beta)
  for i in range(4):
    den = fixed(xcs[i], xus[i])
    pred, state, _ = step(rule, den, jnp.zeros((3, 6)), jnp.zeros(3, jnp.int32), ctx(), state)
    np.testing.assert_allclose(pred.x0, want[i], rtol=1e-10)


def test_apg_zero_conditional_prediction_does_not_produce_nan():
  den = lambda x, t, c: jnp.where((c >= 0)[:, None], 0.0, 1.0) * x
  rule = guidance.apg(5.0, norm_threshold=1.0, momentum=-0.5)
  x = jnp.ones((2, 3))
  pred, _, _ = step(rule, den, x, jnp.zeros(2, jnp.int32), ctx(), rule.init(x, None))
  assert np.isfinite(pred.x0).all()


def test_apg_bad_hyperparameters_raise_clear_errors():
  with pytest.raises(ValueError, match=r"apg: momentum must lie in \(-1, 0\], got 0.5"):
    guidance.apg(5.0, momentum=0.5)
  with pytest.raises(ValueError, match=r"apg: norm_threshold must lie in \(0, inf\]"):
    guidance.apg(5.0, norm_threshold=0.0)
  guidance.apg(5.0, norm_threshold=float("inf"))  # inf disables the clipping
