"""HGP and Hutchinson alignment penalties against dense float64 Hessians of each domain."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from optim.curvature import hessian_alignment
from tests.optim.curvature import _mlp

NUM_DOMAINS = 3


@pytest.fixture(scope="module")
def domains():
  """A float64 MLP (63 parameters) and three domains of 32 examples.

  Shapes match tests/optim/quant/test_hawq.py's problem, so the compiled dense Hessian is
  shared within a test session.
  """
  with jax.enable_x64(True):
    params, (x, y) = _mlp.make_problem(seed=2, sizes=(8, 5, 3), num_examples=32 * NUM_DOMAINS)
    x = x * jnp.repeat(jnp.array([0.5, 1.0, 2.0]), 32)[:, None]  # a shift per domain
    batches = (x.reshape(NUM_DOMAINS, 32, 8), y.reshape(NUM_DOMAINS, 32))
    grad = jax.jit(lambda p, b: ravel_pytree(jax.grad(_mlp.loss)(p, b))[0])
    pairs = list(zip(*batches))
    grads = np.stack([grad(params, b) for b in pairs])
    hess = np.stack([_mlp.dense_hessian(_mlp.loss, params, b) for b in pairs])
  return params, batches, grads, hess


def test_hgp_equals_the_dense_formula(x64, domains):
  params, batches, g, h = domains
  hg = np.einsum("eij,ej->ei", h, g)
  g_bar, h_bar = g.mean(0), h.mean(0)
  want_h = np.sum((hg - h_bar @ g_bar) ** 2)
  want_g = np.sum((g - g_bar) ** 2)
  got = jax.jit(lambda p, b: hessian_alignment(_mlp.loss, p, b))(params, batches)
  np.testing.assert_allclose(got.hessian, want_h, rtol=1e-10)
  np.testing.assert_allclose(got.gradient, want_g, rtol=1e-10)
  want_loss = np.mean([_mlp.loss(params, (x, y)) for x, y in zip(*batches)])
  np.testing.assert_allclose(got.loss, want_loss, rtol=1e-12)


def test_hutchinson_is_exact_for_diagonal_hessians(x64):
  # Separable loss: every domain's Hessian is diagonal, so one Rademacher probe is exact.
  loss = lambda w, x: jnp.mean(jnp.sum(jnp.cosh(x * w), axis=-1))
  xs = jnp.stack([jnp.full((4, 3), s) for s in (0.5, 1.0, 2.0)]) + jnp.arange(3.0) / 10
  w = jnp.array([0.3, -0.2, 0.7])
  # d^2/dw^2 mean_n cosh(x_n w) = mean_n x_n^2 cosh(x_n w), per coordinate.
  d = np.mean(np.asarray(xs) ** 2 * np.cosh(np.asarray(xs) * np.asarray(w)), axis=1)
  got = hessian_alignment(loss, w, xs, variant="hutchinson", key=0, num_probes=1)
  np.testing.assert_allclose(got.hessian, np.sum((d - d.mean(0)) ** 2), rtol=1e-10)


@pytest.mark.slow
def test_hutchinson_converges_to_the_dense_diagonals(x64, domains):
  params, batches, _, h = domains
  dd = np.stack([np.diag(he) for he in h])
  want = np.sum((dd - dd.mean(0)) ** 2)
  got = hessian_alignment(_mlp.loss, params, batches, variant="hutchinson", key=1, num_probes=400)
  np.testing.assert_allclose(got.hessian, want, rtol=0.25)


@pytest.mark.slow
def test_penalty_is_differentiable(x64, domains):
  params, batches, _, _ = domains
  g = jax.grad(lambda p: hessian_alignment(_mlp.loss, p, batches).hessian)(params)
  assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(g))
  assert float(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(g))) > 0
