"""HAWQ / HAWQ-V2 sensitivities against the dense float64 Hessian, the exact Pareto allocation
against brute force, inter-layer terms against the dense cross blocks, and sharded params."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from optim.quant import (
  Sensitivity,
  fake_quant,
  interlayer_sensitivity,
  layer_sensitivity,
  pareto_bit_allocation,
)
from optim.quant._hawq import select_layers
from tests.optim.curvature import _mlp

BITS = (2, 3, 4)
SIZES = (8, 5, 3)  # 63 parameters, four leaves; the first matrix shards over 8 devices


@pytest.fixture(scope="module")
def problem():
  """Float64 MLP, its dense Hessian, and the leaf blocks' index ranges in raveled order."""
  with jax.enable_x64(True):
    params, batch = _mlp.make_problem(seed=1, sizes=SIZES)
    hess = np.asarray(_mlp.dense_hessian(_mlp.loss, params, batch))
  leaves = jax.tree.leaves(params)
  bounds = np.cumsum([0] + [leaf.size for leaf in leaves])
  return params, batch, hess, [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _errors(params):
  return [[np.ravel(fake_quant(w, b) - w) for b in BITS] for w in jax.tree.leaves(params)]


@pytest.fixture(scope="module")
def exact(problem):
  with jax.enable_x64(True):
    return layer_sensitivity(_mlp.loss, *problem[:2], bits=BITS, num_probes=None)


def test_hawq_v2_exact_traces_equal_the_dense_hessian_blocks(x64, problem, exact):
  params, batch, hess, blocks = problem
  s = exact
  errors = _errors(params)
  for i, sl in enumerate(blocks):
    n = sl.stop - sl.start
    want_c = np.trace(hess[sl, sl]) / n
    np.testing.assert_allclose(s.curvature[i], want_c, rtol=1e-10)
    want = [want_c * e @ e for e in errors[i]]
    np.testing.assert_allclose(s.omega[i], want, rtol=1e-10)
  assert s.sizes == tuple(sl.stop - sl.start for sl in blocks) and s.bits == BITS


@pytest.mark.slow
def test_hawq_v2_hutchinson_converges_to_the_exact_traces(x64, problem):
  params, batch, hess, blocks = problem
  m = 400
  s = layer_sensitivity(_mlp.loss, params, batch, bits=BITS, key=0, num_probes=m)
  for i, sl in enumerate(blocks):
    h, n = hess[sl, sl], sl.stop - sl.start
    # Per-probe variance of z_l.(Hz)_l with Rademacher z: 2 x (squared off-diagonal entries of
    # the block) + (squared entries coupling the block to the other leaves).
    var = 2 * (np.sum(h**2) - np.sum(np.diag(h) ** 2)) + np.sum(hess[sl] ** 2) - np.sum(h**2)
    se = np.sqrt(var / m) / n
    assert abs(s.curvature[i] - np.trace(h) / n) <= 4 * se + 1e-12, (i, se)


@pytest.mark.slow
def test_hawq_top_eigenvalue_of_each_block(x64, problem):
  params, batch, hess, blocks = problem
  s = layer_sensitivity(_mlp.loss, params, batch, bits=BITS, variant="hawq", max_iterations=300)
  for i, sl in enumerate(blocks):
    ev = np.linalg.eigvalsh(hess[sl, sl])
    top = ev[np.argmax(np.abs(ev))]
    np.testing.assert_allclose(s.curvature[i] * (sl.stop - sl.start), top, rtol=1e-3)


def test_layers_mask_selects_leaves(problem):
  params = problem[0]
  only_w = [{"w": True, "b": False} for _ in params]
  positions, names, _ = select_layers(params, only_w, "test")
  assert names == ["[0]['w']", "[1]['w']"] and positions == [1, 3]  # leaves: b, w, b, w
  assert select_layers(params, lambda p: only_w, "test")[0] == [1, 3]


def _brute_force(omega, sizes, bits, budget, cross=None):
  best = (np.inf, None)
  for config in itertools.product(range(len(bits)), repeat=len(sizes)):
    if sum(n * bits[c] for n, c in zip(sizes, config)) > budget:
      continue
    cost = sum(omega[i, c] for i, c in enumerate(config))
    if cross is not None:
      cost += sum(
        cross[i, config[i], j, config[j]]
        for i in range(len(sizes))
        for j in range(len(sizes))
        if i != j
      )
    best = min(best, (cost, config))
  return best


def _sensitivity(omega, sizes, bits):
  treedef = jax.tree.structure(list(range(len(sizes))))
  names = tuple(f"[{i}]" for i in range(len(sizes)))
  positions = tuple(range(len(sizes)))
  return Sensitivity(
    np.asarray(omega), np.zeros(len(sizes)), sizes, bits, names, positions, treedef
  )


def test_pareto_allocation_is_the_brute_force_optimum():
  rng = np.random.default_rng(0)
  sizes, bits = (7, 3, 12, 5, 9), (2, 4, 8)
  # Sensitivities decrease with more bits, as quantization errors do.
  omega = np.sort(rng.exponential(size=(5, 3)), axis=1)[:, ::-1] * rng.exponential(size=(5, 1))
  s = _sensitivity(omega, sizes, bits)
  for budget in (72, 100, 150, 200, 288):
    a = pareto_bit_allocation(s, budget)
    cost, config = _brute_force(omega, sizes, bits, budget)
    np.testing.assert_allclose(a.cost, cost, rtol=1e-12)
    assert a.size <= budget and a.choice == tuple(bits[c] for c in config)
    assert a.bits == list(a.choice)  # the pytree of widths, here a list of layers
    # The frontier: sizes increase, costs strictly decrease, each point optimal at its size.
    assert np.all(np.diff(a.frontier_sizes) > 0) and np.all(np.diff(a.frontier_costs) < 0)
  for size, cost in zip(a.frontier_sizes, a.frontier_costs):
    np.testing.assert_allclose(cost, _brute_force(omega, sizes, bits, size)[0], rtol=1e-12)


def test_pareto_allocation_with_cross_terms_is_the_brute_force_optimum():
  rng = np.random.default_rng(1)
  sizes, bits = (4, 6, 5, 3), (2, 3, 8)
  omega = rng.exponential(size=(4, 3))
  cross = rng.normal(size=(4, 3, 4, 3)) * 0.3
  s = _sensitivity(omega, sizes, bits)
  for budget in (36, 60, 100, 144):
    a = pareto_bit_allocation(s, budget, cross=cross)
    cost, config = _brute_force(omega, sizes, bits, budget, cross)
    np.testing.assert_allclose(a.cost, cost, rtol=1e-12)
    assert a.choice == tuple(bits[c] for c in config)


def test_interlayer_terms_equal_the_dense_cross_blocks(x64, problem):
  params, batch, hess, blocks = problem
  c = interlayer_sensitivity(_mlp.loss, params, batch, bits=BITS)
  errors = _errors(params)
  for i, j in [(0, 1), (1, 0), (0, 3), (3, 2), (2, 2)]:
    for b, cb in itertools.product(range(len(BITS)), repeat=2):
      want = 0.0 if i == j else errors[i][b] @ hess[blocks[i], blocks[j]] @ errors[j][cb]
      np.testing.assert_allclose(c[i, b, j, cb], want, rtol=1e-8, atol=1e-14)


@pytest.mark.slow
def test_measured_interlayer_terms_equal_the_hessian_ones_on_a_quadratic(x64):
  a = jax.random.normal(jax.random.key(2), (9, 9), jnp.float64)
  h = a @ a.T
  params = {"u": jnp.linspace(-1.0, 1.0, 4), "v": jnp.linspace(0.3, 2.0, 5)}
  loss = lambda p: 0.5 * ravel_pytree(p)[0] @ h @ ravel_pytree(p)[0] + jnp.sum(p["u"])
  exact = interlayer_sensitivity(loss, params, bits=(2, 3))
  measured = interlayer_sensitivity(loss, params, bits=(2, 3), variant="loss")
  np.testing.assert_allclose(measured, exact, rtol=1e-9, atol=1e-12)
  assert float(jnp.max(jnp.abs(exact))) > 1e-3


def _sharded_problem(mesh):
  kw, kx, ky = jax.random.split(jax.random.key(3), 3)
  params = {"w": jax.random.normal(kw, (8, 3), jnp.float64), "v": jnp.ones((3, 2), jnp.float64)}
  x, y = jax.random.normal(kx, (16, 8), jnp.float64), jax.random.randint(ky, (16,), 0, 2)
  sharded = dict(params, w=jax.device_put(params["w"], NamedSharding(mesh, P("d"))))
  xs = jax.device_put(x, NamedSharding(mesh, P("d")))
  return params, sharded, (x, y), (xs, y)


def _loss(p, x, y):
  return _mlp.cross_entropy(jnp.tanh(x @ p["w"]) @ p["v"], y)


def test_sharded_params_give_the_unsharded_sensitivities(x64, mesh8, problem, exact):
  params, (x, y) = problem[:2]
  by_rows = NamedSharding(mesh8, P("d"))
  sharded = [dict(params[0], w=jax.device_put(params[0]["w"], by_rows)), params[1]]
  assert len(sharded[0]["w"].sharding.device_set) == 8
  batch = (jax.device_put(x, by_rows), y)
  got = layer_sensitivity(_mlp.loss, sharded, batch, bits=BITS, num_probes=None)
  np.testing.assert_allclose(got.omega, exact.omega, rtol=1e-9)


@pytest.mark.slow
def test_sharded_params_give_the_unsharded_exact_and_interlayer_terms(x64, mesh8):
  params, sharded, batch, sharded_batch = _sharded_problem(mesh8)
  for fn, kw in ((layer_sensitivity, {"num_probes": 20, "key": 1}), (interlayer_sensitivity, {})):
    want = np.asarray(fn(_loss, params, *batch, bits=(2, 4), **kw)[0])
    got = np.asarray(fn(_loss, sharded, *sharded_batch, bits=(2, 4), **kw)[0])
    np.testing.assert_allclose(got, want, rtol=1e-9)
