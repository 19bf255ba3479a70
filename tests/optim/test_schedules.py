"""Schedules: linear decay, refinement from gradient norms, batch-size scaling."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.ndimage import median_filter

from optim.schedules import linear_decay, refined, scale_for_batch_size


def test_linear_decay_matches_formula_with_warmup():
  s = linear_decay(2.0, total_steps=20, warmup_steps=5, end_value=0.2)
  ts = np.arange(0, 26)
  want = np.where(ts < 5, 2.0 * ts / 5, 0.2 + (2.0 - 0.2) * np.clip((20 - ts) / 15, 0, 1))
  got = jax.jit(jax.vmap(s))(jnp.asarray(ts))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
  "kw, match",
  [
    ({"total_steps": 5, "warmup_steps": 5}, "warmup_steps < total_steps"),
    ({"total_steps": 5, "warmup_steps": -1}, "warmup_steps"),
    ({"total_steps": 10.5}, "total_steps"),
    ({"total_steps": 0}, "total_steps"),
    ({"total_steps": 10, "warmup_steps": 2.5}, "warmup_steps"),
    ({"total_steps": 10, "end_value": float("nan")}, "end_value"),
    ({"total_steps": 10, "peak_value": float("inf")}, "peak_value"),
  ],
)
def test_linear_decay_rejects_bad_arguments_naming_them(kw, match):
  kw = {"peak_value": 1.0, **kw}
  with pytest.raises(ValueError, match=match):
    linear_decay(**kw)


def refined_reference(norms, peak, power, width):
  """Defazio et al. (arXiv:2310.07831) Alg. 1: w_t = g_t^-p (median-smoothed norms),
  eta_t = w_t * sum_{s>t} w_s, normalized to max eta = peak."""
  g = np.asarray(norms, np.float64)
  width += 1 - width % 2
  if width > 1:
    g = median_filter(g, size=width, mode="nearest")
  w = g**-power
  eta = np.array([w[t] * w[t + 1 :].sum() for t in range(len(w))])
  return peak * eta / eta.max()


@pytest.mark.parametrize("power, smoothing", [(2.0, 0.0), (1.0, 0.0), (2.0, 0.11)])
def test_refined_matches_float64_transcription(power, smoothing):
  rng = np.random.default_rng(0)
  norms = np.exp(rng.normal(size=45)) * np.linspace(1, 3, 45)
  s = refined(norms, 0.5, power=power, smoothing=smoothing)
  got = jax.jit(jax.vmap(s))(jnp.arange(45))
  want = refined_reference(norms, 0.5, power, int(smoothing * 45))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert float(s(45)) == 0.0 and float(s(1000)) == 0.0


def test_refined_with_constant_norms_is_linear_decay():
  s = refined(np.full(11, 3.0), peak_value=1.0)
  np.testing.assert_allclose(jax.vmap(s)(jnp.arange(11)), np.linspace(1, 0, 11), atol=1e-6)


def test_refined_decays_faster_where_gradient_norms_grow():
  norms = np.concatenate([np.ones(50), np.linspace(1, 10, 50)])
  s = refined(norms, 1.0)
  lin = refined(np.ones(100), 1.0)
  assert float(s(75)) < 0.5 * float(lin(75))


@pytest.mark.parametrize("norms", [[1.0], [1.0, 0.0], [1.0, np.nan], [[1.0, 2.0]]])
def test_refined_rejects_bad_norms(norms):
  with pytest.raises(ValueError, match="grad_norms"):
    refined(norms, 1.0)


@pytest.mark.parametrize(
  "kw, match",
  [
    ({"power": 0.0}, "power"),
    ({"power": float("inf")}, "power"),
    ({"smoothing": 1.5}, "smoothing"),
    ({"smoothing": float("nan")}, "smoothing"),
    ({"peak_value": float("nan")}, "peak_value"),
  ],
)
def test_refined_rejects_bad_hyperparameters_naming_them(kw, match):
  kw = {"peak_value": 1.0, **kw}
  with pytest.raises(ValueError, match=match):
    refined(np.ones(5), **kw)


def test_scale_for_batch_size_linear_and_square_root_rules():
  assert scale_for_batch_size(0.1, 64, 256) == pytest.approx(0.4)
  assert scale_for_batch_size(0.1, 64, 256, "adaptive") == pytest.approx(0.2)
  sched = scale_for_batch_size(optax.constant_schedule(1e-3), 32, 8, "adaptive")
  assert float(sched(3)) == pytest.approx(5e-4)
  assert scale_for_batch_size(0.1, 64, 256, variant="adaptive") == pytest.approx(0.2)


@pytest.mark.parametrize(
  "args, kw, match",
  [
    ((0.1, 0, 8), {}, "base_batch_size"),
    ((0.1, 8, 2.5), {}, "batch_size"),
    ((-0.1, 8, 8), {}, "learning_rate"),
    ((0.1, 8, 8), {"variant": "lars"}, "variant"),
  ],
)
def test_scale_for_batch_size_rejects_bad_arguments_naming_them(args, kw, match):
  with pytest.raises(ValueError, match=match):
    scale_for_batch_size(*args, **kw)


def test_scale_for_batch_size_kind_is_deprecated_for_variant():
  with pytest.warns(DeprecationWarning, match="variant"):
    assert scale_for_batch_size(0.1, 64, 256, kind="adaptive") == pytest.approx(0.2)


def test_schedules_plug_into_an_optax_alias():
  import optim

  tx = optim.diffgrad(refined(np.ones(10), 0.1))
  p = jnp.ones(3)
  u, _ = tx.update(jnp.ones(3), tx.init(p), p)
  assert bool(jnp.all(jnp.isfinite(u)))
