"""Minority guidance: the minority score against its closed form on a Gaussian, the levels,
and the rule against classifier guidance's transcription."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import StepContext, guidance, schedules
from jaxdiff.testing import GaussianMixture


def test_minority_score_is_the_closed_form_on_a_gaussian():
  # Prior N(0, v I): x0_hat = c x_t with c = alpha v / (alpha^2 v + sigma^2), so
  # E||x0 - x0_hat||^2 / D = (1 - c alpha)^2 |x0|^2 / D + c^2 sigma^2.
  with jax.enable_x64(True):
    v, sched, t = 0.5, schedules.vp_cosine(), 0.4
    gmm = GaussianMixture(jnp.zeros((1, 2)), v)
    x0 = jnp.array([[0.0, 0.0], [1.0, -2.0], [3.0, 3.0]])
    got = guidance.minority_score(gmm.denoiser(sched), sched, x0, t, key=0, num_draws=4000)
    a, s = float(sched.alpha(t)), float(sched.sigma(t))
    c = a * v / (a**2 * v + s**2)
    want = (1 - c * a) ** 2 * np.sum(np.asarray(x0) ** 2, 1) / 2 + c**2 * s**2
    np.testing.assert_allclose(got, want, rtol=0.05)
    assert np.all(np.diff(np.asarray(got)) > 0)  # farther from the mode: rarer


def test_minority_levels_are_quantiles():
  levels, th = guidance.minority_levels(np.arange(100.0), 4)
  assert np.bincount(levels).tolist() == [25, 25, 25, 25]
  np.testing.assert_allclose(th, [24.75, 49.5, 74.25])


def test_minority_rule_is_classifier_guidance_toward_the_level():
  w = jnp.array([[1.0, -0.5, 0.2], [0.3, 0.7, -1.0]])  # (D, L)
  clf = lambda x, t: (x @ w) * (1.0 + t[:, None])
  x = jnp.array([[0.5, -1.0], [2.0, 0.1]])
  ctx = StepContext(jnp.array(0.3), 0.8, 0.6, 0, 10, None)
  den = lambda x, t, c: 0.5 * x
  pred, _, n = guidance.minority(clf, 3, 2, 1.5).apply(den, x, None, ctx, ())
  t = jnp.full((2,), 0.3)
  g = jax.grad(lambda z: jnp.sum(jax.nn.log_softmax(clf(z, t))[:, 2]))(x)
  np.testing.assert_allclose(pred.x0, 0.5 * x + 1.5 * 0.6**2 / 0.8 * g, rtol=1e-6)
  assert int(n) == 1


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: guidance.minority(None, 3, 0), "classifier_fn must be callable"),
    (lambda: guidance.minority(lambda x, t: x, 3, 3), "minority: level"),
    (lambda: guidance.minority(lambda x, t: x, 1, 0), "num_levels"),
    (lambda: guidance.minority(lambda x, t: x, 3, 0, -1.0), "minority: scale"),
    (lambda: guidance.minority_levels(np.array([1.0, np.nan]), 2), "scores must be a finite"),
    (
      lambda: guidance.minority_score(
        lambda x, t, c: x, schedules.flow(), jnp.ones((2, 2)), key=0, num_draws=0
      ),
      "num_draws",
    ),
  ],
)
def test_minority_bad_input_names_the_argument(call, match):
  with pytest.raises((TypeError, ValueError), match=match):
    call()
