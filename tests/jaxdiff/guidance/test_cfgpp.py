"""CFG++ (jaxdiff/guidance/_cfgpp.py); through every solver: test_guidance_sampling.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import guidance
from tests.jaxdiff.guidance.testbed import ctx, gmm_denoise, run, step


def test_cfgpp_lambda0_is_unconditional_ddim(x64, batch, refs):
  np.testing.assert_allclose(run(guidance.cfgpp(0.0), batch)[0], refs[1], rtol=1e-10, atol=1e-10)


def test_cfgpp_renoises_with_the_unconditional_prediction(x64):
  x = jax.random.normal(jax.random.key(3), (4, 2), jnp.float64)
  cond = jnp.array([0, 1, 2, 0])
  pred, _, _ = step(guidance.cfgpp(0.6), gmm_denoise, x, cond, ctx(0.6))
  t = jnp.full((4,), 0.6)
  x_c, x_u = gmm_denoise(x, t, cond), gmm_denoise(x, t, -jnp.ones_like(cond))
  np.testing.assert_allclose(pred.x0, x_u + 0.6 * (x_c - x_u), rtol=1e-12)
  np.testing.assert_allclose(pred.x0_renoise, x_u, rtol=1e-12)


@pytest.mark.parametrize("scale", [-0.1, 1.5])
def test_cfgpp_lambda_outside_unit_interval_raises(scale):
  with pytest.raises(ValueError, match=r"cfgpp: scale must lie in \[0, 1\]"):
    guidance.cfgpp(scale)
