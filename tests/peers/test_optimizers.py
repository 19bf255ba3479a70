"""Our optimizers vs torch-optimizer and pytorch_optimizer: the parameters after 50 steps
from identical parameters and gradients, in float64."""

import jax
import numpy as np
import pytest

pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[peers]')")
import _peers  # noqa: E402  (bench/, put on sys.path by conftest.py)

SIZES = (16, 32, 8)
STEPS = 50
# name -> peer -> max relative difference allowed after 50 steps. Exact (round-off) except
# where the peer computes a different formula, stated with its cause:
TOL = {
  "diffGrad": {
    "torch_optimizer": 1e-13,
    # pytorch_optimizer takes sqrt(v + 1e-15) (its exp_avg_sq_eps) before adding eps
    "pytorch_optimizer": 1e-9,
  },
  "AdamP": {
    "torch_optimizer": 1e-13,
    # pytorch_optimizer adds eps to the uncorrected sqrt(v) (the authors add it to the
    # bias-corrected one, as we do)
    "pytorch_optimizer": 1e-6,
  },
  "SGDP": {
    # see test_sgdp_torch_optimizer_projects_its_momentum_buffer
    "pytorch_optimizer": 1e-13,
  },
}


def _peer(table, name, peer):
  ours, peers = table[name]
  if peer not in peers:
    pytest.skip(f"{peer} is not installed (pip install -e '.[peers]')")
  return ours, peers[peer]


@pytest.fixture(scope="module")
def problem():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    params = _peers.mlp_params(SIZES, rng, np.float64)
    # Orthogonal kernel gradients: AdamP's / SGDP's channel-wise projection fires.
    grads = [_peers.orthogonal_grads(params, rng) for _ in range(STEPS)]
    # Gradients nearly parallel to the weights: the projection never fires.
    plain = [
      jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape), params) for _ in range(STEPS)
    ]
  return params, grads, plain


@pytest.mark.parametrize(
  "name,peer", [(n, p) for n, peers in TOL.items() for p in peers], ids=lambda x: str(x)
)
def test_fifty_steps_match_the_peer(problem, name, peer):
  params, grads, _ = problem
  ours, make = _peer(_peers.first_order_table(), name, peer)
  with jax.enable_x64(True):
    a = _peers.run_ours(ours(), params, grads)
  b = _peers.run_peer(make, params, grads)
  assert _peers.max_rel_diff(a, b) < TOL[name][peer]
  assert _peers.max_rel_diff(b, params) > 1e-3  # the runs moved the parameters


def test_sgdp_torch_optimizer_projects_its_momentum_buffer(problem):
  """torch-optimizer's SGDP aliases its update to the momentum buffer (``d_p = buf``) and
  projects it in place, so the stored momentum is projected too; Algorithm 1 of the paper
  (and pytorch_optimizer, and we) project only the step. Where the projection never fires
  (gradients not orthogonal to the weights) the two agree to round-off."""
  params, grads, plain = problem
  ours, make = _peer(_peers.first_order_table(), "SGDP", "torch_optimizer")
  with jax.enable_x64(True):
    a_plain = _peers.run_ours(ours(), params, plain)
    a_orth = _peers.run_ours(ours(), params, grads)
  assert _peers.max_rel_diff(a_plain, _peers.run_peer(make, params, plain)) < 1e-13
  assert _peers.max_rel_diff(a_orth, _peers.run_peer(make, params, grads)) > 1e-4


@pytest.mark.parametrize(
  "name,peer",
  [
    ("AdaHessian", "torch_optimizer"),
    ("AdaHessian", "pytorch_optimizer"),
    ("Sophia-H", "pytorch_optimizer"),
  ],
)
def test_curvature_optimizers_match_the_peer_on_a_diagonal_hessian(name, peer):
  """On a separable objective the Hessian is diagonal, so every Rademacher probe gives the
  exact diagonal: both frameworks draw different probes and still agree to round-off."""
  ours, make = _peer(_peers.curvature_table(), name, peer)
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    params = _peers.mlp_params(SIZES, rng, np.float64)
    d = [{k: rng.standard_normal(v.shape) for k, v in layer.items()} for layer in params]
    a = _peers.run_ours_curvature(ours(), lambda p: _peers.separable_loss_jax(p, d), params, STEPS)
  dt = _peers.to_torch(d, requires_grad=False)
  b = _peers.run_peer_curvature(make, lambda f: _peers.separable_loss_torch(f, dt), params, STEPS)
  assert _peers.max_rel_diff(a, b) < 1e-12
  assert _peers.max_rel_diff(b, params) > 1e-2
