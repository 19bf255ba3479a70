"""Gradient-free classifier guidance (jaxdiff/guidance/_gfcg.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import guidance
from tests.jaxdiff.guidance.testbed import ctx, step


def _setup():
  rng = np.random.default_rng(4)
  w = rng.normal(size=(2, 4))
  clf = lambda z: 3.0 * z @ jnp.asarray(w)
  x = jax.random.normal(jax.random.key(7), (5, 2), jnp.float64)
  cond = jnp.array([0, 1, 2, 3, 0])

  def den(x, t, c):
    return x * (1.0 + 0.1 * c[:, None]) + 0.05 * c[:, None]

  return w, clf, x, cond, den


@pytest.mark.parametrize("variant", ["ratio", "complement"])
def test_gfcg_picks_most_confused_class_and_adaptive_scale(x64, variant):
  w, clf, x, cond, den = _setup()
  weak = lambda x, t, c: 0.9 * den(x, t, c)
  rule = guidance.gfcg(clf, 4, 2.0, cfg_scale=1.5, weak_denoise=weak, variant=variant)
  pred, _, nfe = step(rule, den, x, cond, ctx())
  t = jnp.zeros(5)
  x_c = np.asarray(den(x, t, cond))
  p = np.exp(3.0 * x_c @ w)
  p /= p.sum(1, keepdims=True)
  want = np.empty_like(x_c)
  for b in range(5):
    y = int(cond[b])
    ref = max((k for k in range(4) if k != y), key=lambda k: p[b, k])
    confusion = p[b, ref] / (p[b, y] + p[b, ref]) if variant == "ratio" else 1 - p[b, y]
    s = 2.0 * confusion
    x_r = np.asarray(den(x[b : b + 1], t[:1], jnp.array([ref])))[0]
    want[b] = x_c[b] + s * (x_c[b] - x_r) + 0.5 * (x_c[b] - 0.9 * x_c[b])
  np.testing.assert_allclose(pred.x0, want, rtol=1e-10)
  assert int(nfe) == 3


def test_gfcg_ref_scale_is_the_deprecated_spelling_of_scale(x64):
  _, clf, x, cond, den = _setup()
  want = step(guidance.gfcg(clf, 4, 2.0), den, x, cond, ctx())[0].x0
  with pytest.warns(DeprecationWarning, match="ref_scale"):
    rule = guidance.gfcg(clf, 4, ref_scale=2.0)
  np.testing.assert_array_equal(step(rule, den, x, cond, ctx())[0].x0, want)


def test_gfcg_bad_input_raises_clear_errors():
  bad = lambda z: jnp.zeros((z.shape[0], 5))
  with pytest.raises(ValueError, match=r"gfcg: scale must lie in \[0, inf\)"):
    guidance.gfcg(bad, 3, -1.0)
  with pytest.raises(ValueError, match="gfcg: variant must be one of"):
    guidance.gfcg(bad, 3, 1.0, variant="margin")
  with pytest.raises(TypeError, match="gfcg: weak_denoise must be a denoiser callable"):
    guidance.gfcg(bad, 3, 1.0, weak_denoise=1.0)
