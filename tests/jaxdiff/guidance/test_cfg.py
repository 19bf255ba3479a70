"""CFG and guidance rescale (jaxdiff/guidance/_cfg.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import guidance
from tests.jaxdiff.guidance.testbed import ctx, fixed, step


def test_cfg_rescale_matches_numpy_transcription_of_lin_et_al(x64):
  rng = np.random.default_rng(0)
  xc, xu = rng.normal(size=(2, 4, 3, 5))
  w, phi = 7.5, 0.7
  pred, _, nfe = step(
    guidance.cfg(w, rescale=phi),
    fixed(xc, xu),
    jnp.zeros((4, 3, 5)),
    jnp.zeros(4, jnp.int32),
    ctx(),
  )
  x_cfg = xu + w * (xc - xu)
  factor = xc.std(axis=(1, 2), keepdims=True) / x_cfg.std(axis=(1, 2), keepdims=True)
  want = phi * x_cfg * factor + (1 - phi) * x_cfg
  np.testing.assert_allclose(pred.x0, want, rtol=1e-12)
  np.testing.assert_array_equal(pred.x0, pred.x0_renoise)
  assert int(nfe) == 2


def test_cfg_batches_both_evaluations_into_one_call():
  calls = []

  def den(x, t, c):
    calls.append(x.shape[0])
    return x

  guidance.cfg(2.0).apply(den, jnp.ones((3, 2)), jnp.array([0, 1, 2]), ctx(), ())
  assert calls == [6]


def test_null_cond_accepts_array_and_callable():
  seen = []

  def den(x, t, c):
    seen.append(np.asarray(c["y"]))
    return x

  cond = {"y": jnp.array([0, 1])}
  guidance.cfg(2.0, null_cond=lambda c: {"y": jnp.full_like(c["y"], 9)}).apply(
    den, jnp.ones((2, 1)), cond, ctx(), ()
  )
  np.testing.assert_array_equal(seen[-1], [0, 1, 9, 9])
  guidance.cfg(2.0, null_cond=7).apply(den, jnp.ones((2, 1)), cond, ctx(), ())
  np.testing.assert_array_equal(seen[-1], [0, 1, 7, 7])


def test_cfg_bad_input_raises_clear_errors():
  with pytest.raises(ValueError, match=r"cfg: rescale must lie in \[0, 1\], got 1.5"):
    guidance.cfg(5.0, rescale=1.5)
  with pytest.raises(ValueError, match="needs a conditional batch"):
    guidance.cfg(2.0).apply(lambda x, t, c: x, jnp.ones((2, 1)), None, ctx(), ())
