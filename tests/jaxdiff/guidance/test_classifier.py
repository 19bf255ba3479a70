"""Classifier guidance, classic and EluCD (jaxdiff/guidance/_classifier.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import guidance, solvers
from tests.jaxdiff.guidance.testbed import (
  MEANS,
  SCHED,
  WEIGHTS,
  class_logits,
  ctx,
  gmm_denoise,
  grid,
  run,
  step,
)


def test_classifier_scale0_is_the_unconditional_model(x64, batch, refs):
  rule = guidance.classifier(class_logits, 3, 0.0, variant="noisy")
  np.testing.assert_allclose(run(rule, batch)[0], refs[1], rtol=1e-10, atol=1e-10)


def test_classic_classifier_guidance_with_exact_posterior_is_the_conditional_model(
  x64, batch, refs
):
  rule = guidance.classifier(class_logits, 3, 1.0, variant="noisy")
  np.testing.assert_allclose(run(rule, batch)[0], refs[0], rtol=1e-7, atol=1e-7)


def test_classifier_guidance_shifts_mass_toward_the_class_as_the_posterior_predicts(x64):
  # Guided by the exact posterior p(y|x_t), scale s interpolates the class-0 mass from the
  # prior pi_0 (s = 0) to the class-conditional law (s = 1), where the exact posterior
  # p(0 | x) of the final samples is ~1; the fraction nearest to mean 0 must track it.
  n = 400
  x_T = jax.random.normal(jax.random.key(6), (n, 2), jnp.float64)
  cond = jnp.zeros((n,), jnp.int32)
  ts = grid()
  frac, post = [], []
  for s in (0.0, 0.5, 1.0):
    rule = guidance.classifier(class_logits, 3, s, variant="noisy")
    x = jaxdiff.sample(
      gmm_denoise, solvers.ddim(), x_T, ts, key=jax.random.key(0), cond=cond, guidance=rule
    ).x
    d = jnp.sum((x[:, None] - MEANS[None]) ** 2, -1)
    frac.append(float(jnp.mean(jnp.argmin(d, -1) == 0)))
    p = jnp.exp(class_logits(x, jnp.full((n,), SCHED.t_min)))[:, 0]
    post.append(float(jnp.mean(p)))
  assert abs(frac[0] - WEIGHTS[0]) < 3 * np.sqrt(WEIGHTS[0] * (1 - WEIGHTS[0]) / n)
  assert frac[0] < frac[1] < frac[2]
  assert post[2] > 0.98 and abs(frac[2] - post[2]) < 0.02
  np.testing.assert_allclose(frac, post, atol=0.03)


def test_elucd_direction_matches_numpy_temperatures(x64):
  rng = np.random.default_rng(3)
  w = rng.normal(size=(2, 4))
  clf = lambda z: z @ jnp.asarray(w)
  x0 = rng.normal(size=(3, 2))
  den = lambda x, t, c: jnp.asarray(x0)
  cond = jnp.array([0, 3, 1])
  tau1, tau2, kappa, s = 1.5, 0.5, 0.3, 2.0
  rule = guidance.classifier(
    clf, 4, s, joint_temperature=tau1, marginal_temperature=tau2, schedule_amplitude=kappa
  )
  c = ctx(0.5, step=3, num_steps=10)
  pred, _, nfe = step(rule, den, jnp.zeros((3, 2)), cond, c)
  logits = x0 @ w
  p2 = np.exp(tau2 * logits) / np.exp(tau2 * logits).sum(1, keepdims=True)
  g = tau1 * w[:, np.asarray(cond)].T - tau2 * p2 @ w.T
  a, sg = float(c.alpha), float(c.sigma)
  coef = s * sg**2 / a * (1 + kappa * np.sin(np.pi * (10 - 1 - 3) / 10))
  np.testing.assert_allclose(pred.x0, x0 + coef * g, rtol=1e-10)
  assert int(nfe) == 1


def test_classifier_bad_configuration_raises_clear_errors():
  with pytest.raises(ValueError, match="classifier: variant must be one of 'denoised', 'noisy'"):
    guidance.classifier(class_logits, 3, 1.0, variant="x_t")
  with pytest.raises(ValueError, match=r"classifier: num_classes must lie in \[2, inf\)"):
    guidance.classifier(class_logits, 1, 1.0)
  with pytest.raises(ValueError, match="classifier: num_classes must be an integer"):
    guidance.classifier(class_logits, 2.5, 1.0)
  with pytest.raises(ValueError, match="classifier: joint_temperature must lie in"):
    guidance.classifier(class_logits, 3, 1.0, joint_temperature=0.0)
  with pytest.raises(ValueError, match=r"classifier: scale must lie in \[0, inf\)"):
    guidance.classifier(class_logits, 3, -1.0)


def test_classifier_input_keyword_is_the_deprecated_spelling_of_variant(x64):
  x, cond = jax.random.normal(jax.random.key(1), (3, 2), jnp.float64), jnp.array([0, 1, 2])
  want = step(
    guidance.classifier(class_logits, 3, 1.0, variant="noisy"), gmm_denoise, x, cond, ctx()
  )
  with pytest.warns(DeprecationWarning, match=r"classifier\(input=...\) is deprecated"):
    rule = guidance.classifier(class_logits, 3, 1.0, input="noisy")
  np.testing.assert_array_equal(step(rule, gmm_denoise, x, cond, ctx())[0].x0, want[0].x0)


def test_smooth_relu_tends_to_relu_and_rejects_a_bad_sharpness():
  x = jnp.linspace(-2.0, 2.0, 9)
  np.testing.assert_allclose(guidance.smooth_relu(x, beta=200.0), jnp.maximum(x, 0), atol=5e-3)
  with pytest.raises(ValueError, match=r"smooth_relu: beta must lie in \(0, inf\)"):
    guidance.smooth_relu(x, beta=0.0)
