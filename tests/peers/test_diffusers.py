"""Our DDIM / DPM-Solver++(2M) / UniPC loops vs diffusers' schedulers: the same tiny eps
network, the same training table (``jaxdiff.schedules.from_alphas_cumprod``) and grid, the
same initial noise; the final samples agree to float32 round-off at equal NFE."""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[peers]')")
pytest.importorskip("diffusers", reason="diffusers is not installed (peers extra)")
import _peers  # noqa: E402

STEPS = 10


@pytest.fixture(scope="module")
def net_and_noise():
  rng = np.random.default_rng(3)
  return _peers.tiny_net_params(4, 16, rng), rng.standard_normal((8, 4)).astype(np.float32)


@pytest.mark.parametrize("name", _peers.SAMPLERS)
def test_trajectory_matches_diffusers_at_equal_nfe(net_and_noise, name):
  net, x_T = net_and_noise
  ours, nfe = _peers.our_sampler(name, _peers.diffusers_scheduler(name), net, STEPS)
  theirs = _peers.peer_sampler(_peers.diffusers_scheduler(name), net, STEPS)
  a = np.asarray(ours(jnp.asarray(x_T)))
  b = theirs(torch.tensor(x_T, dtype=torch.float32)).numpy()
  assert nfe == STEPS
  assert np.sqrt(np.mean(b**2)) > 0.3  # a sample, not a collapse to 0
  np.testing.assert_allclose(a, b, rtol=0, atol=2e-5)
