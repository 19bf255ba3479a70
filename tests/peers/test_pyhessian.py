"""optim.curvature vs PyHessian on the same MLP, batch and weights (float64)."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[peers]')")
pyhessian = pytest.importorskip("pyhessian", reason="PyHessian is not installed (peers extra)")
import _peers  # noqa: E402

from optim import curvature  # noqa: E402

SIZES, BATCH = (6, 12, 4), 16


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(0)
  params = _peers.mlp_params(SIZES, rng, np.float64)
  x = rng.standard_normal((BATCH, SIZES[0]))
  y = rng.integers(0, SIZES[-1], BATCH)
  v = jax.tree.map(lambda a: rng.standard_normal(a.shape), params)
  old = torch.get_default_dtype()
  torch.set_default_dtype(torch.float64)
  model = _peers.mlp_torch(params)
  comp = pyhessian.hessian(
    model, torch.nn.CrossEntropyLoss(), data=(torch.tensor(x), torch.tensor(y)), cuda=False
  )
  torch.set_default_dtype(old)
  return params, x, y, v, comp


def test_hvp_matches_pyhessian_on_the_same_vector(setup, x64):
  from pyhessian.utils import hessian_vector_product

  params, x, y, v, comp = setup
  ours = curvature.hvp(_peers.xent_jax, jax.tree.map(jnp.asarray, params), v, x, y)
  theirs = hessian_vector_product(comp.gradsH, comp.params, _peers.to_torch(v, False))
  theirs = [t.detach().numpy() for t in theirs]
  theirs = [{"w": w.T, "b": b} for w, b in zip(theirs[::2], theirs[1::2])]
  assert _peers.max_rel_diff(ours, theirs) < 1e-12


def test_top_eigenvalue_matches_pyhessian_and_the_dense_hessian(setup, x64):
  params, x, y, _, comp = setup
  p = jax.tree.map(jnp.asarray, params)
  flat, unravel = jax.flatten_util.ravel_pytree(p)
  eigs = np.linalg.eigvalsh(
    np.asarray(jax.hessian(lambda f: _peers.xent_jax(unravel(f), x, y))(flat))
  )
  dense = eigs[np.argmax(np.abs(eigs))]  # power iteration finds the largest |eigenvalue|
  op = curvature.hessian_matvec(_peers.xent_jax, p, x, y)
  ours = curvature.top_eigenvalues(op, key=0, k=1, max_iterations=200, tol=1e-12).eigenvalues[0]
  theirs = comp.eigenvalues(maxIter=200, tol=1e-12, top_n=1)[0][0]
  np.testing.assert_allclose(float(ours), dense, rtol=1e-7)
  # PyHessian normalises each iterate by |v| + 1e-6, which biases its Rayleigh quotient
  # at the 1e-6 level.
  np.testing.assert_allclose(theirs, dense, rtol=1e-5)
