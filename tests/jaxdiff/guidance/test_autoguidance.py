"""Autoguidance (jaxdiff/guidance/_autoguidance.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import guidance
from tests.jaxdiff.guidance.testbed import ctx, gmm_denoise, run, step


def test_autoguidance_scale1_is_the_main_model_and_scale0_the_weak_one(x64, batch, refs):
  cond_traj, uncond_traj = refs
  weak = lambda x, t, c: gmm_denoise(x, t, jnp.full_like(c, -1))
  np.testing.assert_allclose(run(guidance.autoguidance(weak, 1.0), batch)[0], cond_traj)
  np.testing.assert_allclose(run(guidance.autoguidance(weak, 0.0), batch)[0], uncond_traj)


def test_autoguidance_is_karras_eq1_with_two_model_calls(x64):
  main, weak = (lambda x, t, c: 2.0 * x), (lambda x, t, c: 0.5 * x)
  x = jnp.arange(6.0).reshape(3, 2)
  pred, _, nfe = step(guidance.autoguidance(weak, 2.5), main, x, None, ctx())
  np.testing.assert_allclose(pred.x0, 2.5 * 2.0 * x + (1 - 2.5) * 0.5 * x, rtol=1e-12)
  assert int(nfe) == 2


def test_autoguidance_needs_a_callable_weak_model():
  with pytest.raises(TypeError, match="weak_denoise must be a denoiser callable"):
    guidance.autoguidance(None, 2.0)
