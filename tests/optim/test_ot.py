"""Sinkhorn-Newton-Sparse (Tang et al., arXiv:2401.12253) against ott-jax's Sinkhorn (the
reference, float64, tight threshold) and a float64 NumPy transcription of Algorithm 1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from optim.ot import sinkhorn_newton_sparse, sq_euclidean_cost

EPS = 0.3


@pytest.fixture(scope="module")
def problem():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 2)), rng.normal(size=(9, 2)) + 0.5
    a, b = rng.uniform(0.5, 1.5, 12), rng.uniform(0.5, 1.5, 9)
    a, b = a / a.sum(), b / b.sum()
    cost = np.asarray(sq_euclidean_cost(jnp.asarray(x), jnp.asarray(y)))
    geom = geometry.Geometry(cost_matrix=jnp.asarray(cost), epsilon=EPS)
    ref = sinkhorn.Sinkhorn(threshold=1e-14, max_iterations=20000)(
      linear_problem.LinearProblem(geom, jnp.asarray(a), jnp.asarray(b))
    )
    assert bool(ref.converged)
    return cost, a, b, jax.tree.map(np.asarray, (ref.f, ref.g, ref.matrix, ref.reg_ot_cost))


@pytest.mark.slow
@pytest.mark.parametrize("rho", [1.0, 0.3])
def test_matches_ott_sinkhorn_in_float64(x64, problem, rho):
  cost, a, b, (f, g, plan, reg) = problem
  out = sinkhorn_newton_sparse(cost, a, b, epsilon=EPS, rho=rho, tol=1e-10, max_iterations=60)
  assert bool(out.converged)
  np.testing.assert_allclose(np.asarray(out.plan), plan, rtol=1e-8, atol=1e-14)
  # Potentials are unique up to (f + c, g - c).
  shift = float(out.f[0] - f[0])
  np.testing.assert_allclose(np.asarray(out.f) - shift, f, atol=1e-8)
  np.testing.assert_allclose(np.asarray(out.g) + shift, g, atol=1e-8)
  assert float(out.reg_ot_cost) == pytest.approx(float(reg), rel=1e-9)


def _transcription(cost, a, b, eps, n1, n2):
  """Algorithm 1, float64 NumPy: log-domain Sinkhorn, then dense Newton (rho = 1) + Armijo."""
  from scipy.special import logsumexp

  f, g = np.zeros(len(a)), np.zeros(len(b))
  plan = lambda f, g: np.exp((f[:, None] + g[None] - cost) / eps)
  marginal = lambda p: np.abs(p.sum(1) - a).sum() + np.abs(p.sum(0) - b).sum()
  errs = []
  for _ in range(n1):
    errs.append(marginal(plan(f, g)))
    f = eps * np.log(a) - eps * logsumexp((g[None] - cost) / eps, axis=1)
    g = eps * np.log(b) - eps * logsumexp((f[:, None] - cost) / eps, axis=0)
  lyap = lambda f, g: a @ f + b @ g - eps * plan(f, g).sum()
  for _ in range(n2):
    p = plan(f, g)
    r, c = p.sum(1), p.sum(0)
    grad = np.concatenate([a - r, b - c])
    errs.append(np.abs(grad).sum())
    m = np.block([[np.diag(r), p], [p.T, np.diag(c)]]) / eps
    d = np.linalg.lstsq(m, grad, rcond=1e-14)[0]
    alpha, l0 = 1.0, lyap(f, g)
    while lyap(f + alpha * d[: len(a)], g + alpha * d[len(a) :]) < l0 + 1e-4 * alpha * grad @ d:
      alpha /= 2
    f, g = f + alpha * d[: len(a)], g + alpha * d[len(a) :]
  return f, g, np.array(errs)


def test_matches_transcription_over_20_iterations_then_ott(x64, problem):
  # One compilation for both checks: 16 Sinkhorn + 4 Newton iterations against the NumPy
  # transcription (after which the errors are round-off), then the converged result
  # against ott-jax.
  cost, a, b, (f, g, plan, reg) = problem
  _, _, errs = _transcription(cost, a, b, EPS, 16, 4)
  out = sinkhorn_newton_sparse(
    cost,
    a,
    b,
    epsilon=EPS,
    sinkhorn_num_iterations=16,
    max_iterations=60,
    rho=1.0,
    tol=1e-10,
    cg_tol=1e-10,
  )
  np.testing.assert_allclose(np.asarray(out.errors[:20]), errs, rtol=1e-6)
  assert bool(out.converged)
  np.testing.assert_allclose(np.asarray(out.plan), plan, rtol=1e-8, atol=1e-14)
  shift = float(out.f[0] - f[0])
  np.testing.assert_allclose(np.asarray(out.f) - shift, f, atol=1e-8)
  np.testing.assert_allclose(np.asarray(out.g) + shift, g, atol=1e-8)
  assert float(out.reg_ot_cost) == pytest.approx(float(reg), rel=1e-9)


@pytest.mark.slow
def test_error_history_and_no_retrace(x64, problem):
  cost, a, b, _ = problem
  out = sinkhorn_newton_sparse(
    cost, a, b, epsilon=EPS, sinkhorn_num_iterations=5, max_iterations=30, rho=0.3
  )
  errs = np.asarray(out.errors)
  k = int(out.n_iters)
  assert np.isfinite(errs[: 5 + k + 1]).all() and np.isnan(errs[5 + k + 1 :]).all()
  assert errs[5 + k] < 1e-6 <= errs[5 + k - 1]
  from optim import _sinkhorn_newton

  before = _sinkhorn_newton._solve._cache_size()
  sinkhorn_newton_sparse(
    cost + 1e-3, a, b, epsilon=EPS, sinkhorn_num_iterations=5, max_iterations=30, rho=0.3
  )
  assert _sinkhorn_newton._solve._cache_size() == before


# -- globalisation, tolerance, zero weights, gradients, the switch rule ----------------


def _uniform(n, seed):
  x = jax.random.uniform(jax.random.key(seed), (n, 2))
  y = jax.random.uniform(jax.random.key(seed + 1), (n, 2))
  return sq_euclidean_cost(x, y)


def _marginal_error(plan, a, b):
  plan = np.asarray(plan, np.float64)
  return np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum()


def _sinkhorn_count(out):
  """Warm-start iterations: errors has one entry per Sinkhorn iteration, the hand-over's,
  then one per Newton-phase iteration."""
  return int(np.isfinite(np.asarray(out.errors)).sum()) - 1 - int(out.n_iters)


@pytest.mark.parametrize("warm", [None, 20], ids=["switch_rule", "fixed_N1"])
def test_newton_phase_never_returns_a_worse_plan_than_its_warm_start(x64, warm):
  # At eps = 1e-4 the damped Newton steps used to raise the marginal error 0.36 -> 3.75
  # (plan mass 2.87); the best iterate is returned, so the result is never worse.
  u = np.full(64, 1 / 64)
  for eps in [1e-4, 1e-3, 1e-2]:
    for seed in [0, 2, 4]:
      out = sinkhorn_newton_sparse(
        _uniform(64, seed), epsilon=eps, tol=1e-9, sinkhorn_num_iterations=warm
      )
      start = float(out.errors[_sinkhorn_count(out)])
      final = _marginal_error(out.plan, u, u)
      assert final <= start * (1 + 1e-9), (eps, seed, start, final)
      assert abs(float(out.plan.sum()) - 1.0) < 0.5, (eps, seed)
      if eps == 1e-2:  # where Newton converges, it reaches tol
        assert bool(out.converged) and final < 1e-9, (eps, seed, final)


@pytest.mark.parametrize("warm", [None, 20], ids=["switch_rule", "fixed_N1"])
def test_reaches_1e_10_on_64_points_as_ott_does(x64, warm):
  # It used to stall at 2e-9..7e-9: the Armijo test on L(f, g) itself is round-off below
  # ~1e-9, and a 5% sparsified Hessian of 64 points barely contracts.
  cost = _uniform(64, 0)
  u = np.full(64, 1 / 64)
  out = sinkhorn_newton_sparse(
    cost, epsilon=0.01, tol=1e-10, rho=0.05, max_iterations=50, sinkhorn_num_iterations=warm
  )
  assert int(out.n_iters) > 0  # Newton did the work
  assert bool(out.converged) and _marginal_error(out.plan, u, u) < 1e-10
  geom = geometry.Geometry(cost_matrix=cost, epsilon=0.01)
  ref = sinkhorn.Sinkhorn(threshold=1e-12, max_iterations=100000)(
    linear_problem.LinearProblem(geom)
  )
  np.testing.assert_allclose(np.asarray(out.plan), np.asarray(ref.matrix), atol=1e-12)


def test_fixed_warm_start_is_the_old_sinkhorn_bit_for_bit(x64):
  # Recorded from the implementation before the switch rule (commit 78140c7, XLA:CPU):
  # sinkhorn_num_iterations=N1 with no Newton step gives the very same numbers.
  h = lambda rows: np.array([[float.fromhex(v) for v in r] for r in rows])
  x = h(
    [
      ["0x1.427a31c1ffc58p-10", "0x1.31ea59a5b303ep-2"],
      ["-0x1.18b7980d81558p-2", "-0x1.c7fba74b18102p-1"],
      ["-0x1.d19537e309692p-2", "-0x1.fbb918e5cd3f0p-1"],
      ["0x1.ecb246c7071e5p-5", "0x1.571858a941e07p+0"],
      ["-0x1.f804fc5039525p-2", "-0x1.3daee2d56e58bp-1"],
      ["0x1.f5992787010aap-2", "0x1.6d73c9b1a8b33p-2"],
    ]
  )  # noqa: E501
  y = h(
    [
      ["0x1.afc6d9ffa76cap-4", "-0x1.dc664ebbfd571p-1"],
      ["-0x1.df43093500899p-6", "0x1.63fec7c2015e9p-1"],
      ["-0x1.581e71cf65997p+0", "-0x1.d49939df35222p-2"],
      ["-0x1.e6b68891db2c3p+0", "-0x1.4a1f253355902p+0"],
      ["-0x1.d77bf28b367b0p+0", "-0x1.e177757c5cfd8p-3"],
    ]
  )  # noqa: E501
  a = h(
    [
      [
        "0x1.97918b4cac97bp-3",
        "0x1.8e894383673dcp-4",
        "0x1.887ba4001717bp-4",
        "0x1.73cb8a150e86cp-3",
        "0x1.61f5e903fb533p-3",
        "0x1.039546ec45320p-2",
      ]
    ]
  )[0]  # noqa: E501
  b = h(
    [
      [
        "0x1.06d47dbb04b87p-2",
        "0x1.d8139510273a2p-3",
        "0x1.d00c9a811399fp-3",
        "0x1.5bf8c023ec8f1p-3",
        "0x1.dc7c29a99e57ep-4",
      ]
    ]
  )[0]  # noqa: E501
  cost = sq_euclidean_cost(jnp.asarray(x), jnp.asarray(y))
  out = sinkhorn_newton_sparse(cost, a, b, epsilon=0.3, sinkhorn_num_iterations=5, max_iterations=0)
  f = h(
    [
      [
        "0x1.b7dfd1b55b0e2p-2",
        "-0x1.e3ede3296ee17p-1",
        "-0x1.2e9038e70533dp+0",
        "0x1.0411561f8a4ffp+0",
        "-0x1.1458a95b54e7dp+0",
        "0x1.cb8e0ee9f5846p-1",
      ]
    ]
  )[0]  # noqa: E501
  g = h(
    [
      [
        "0x1.f2f898ae8d7abp-3",
        "-0x1.41b91c624969ep+0",
        "0x1.282c4b0f6f257p+0",
        "0x1.5222319b98a0ep+1",
        "0x1.1f1f3446e7390p+1",
      ]
    ]
  )[0]  # noqa: E501
  errors = h(
    [
      [
        "0x1.d173769e2679ep+1",
        "0x1.9d378faa56509p-1",
        "0x1.894003188a279p-1",
        "0x1.4b200b65ba8cfp-1",
        "0x1.b0761a1a50e6fp-2",
        "0x1.0c2cc3a0e1146p-2",
      ]
    ]
  )[0]  # noqa: E501
  np.testing.assert_array_equal(np.asarray(out.f), f)
  np.testing.assert_array_equal(np.asarray(out.g), g)
  np.testing.assert_array_equal(np.asarray(out.errors), errors)
  assert float(out.reg_ot_cost) == float.fromhex("0x1.d7d6466da7bc0p+0")


def _reduced_and_masked(cost, a, b, **kw):
  """The problem with zero-weight points, and the same problem without them."""
  full = sinkhorn_newton_sparse(cost, a, b, **kw)
  ia, ib = np.flatnonzero(a > 0), np.flatnonzero(b > 0)
  small = sinkhorn_newton_sparse(cost[np.ix_(ia, ib)], a[ia], b[ib], **kw)
  return full, small, ia, ib


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_zero_weights_are_masked_out_with_and_without_jit(x64, jit):
  cost = np.asarray(_uniform(16, 3))
  a = np.full(16, 1 / 14)
  a[[0, 5]] = 0.0
  b = np.full(16, 1 / 15)
  b[9] = 0.0
  solve = sinkhorn_newton_sparse
  if jit:
    solve = jax.jit(lambda c, a, b: sinkhorn_newton_sparse(c, a, b, epsilon=0.05, tol=1e-11))
    full = solve(cost, a, b)
  else:
    full = solve(cost, a, b, epsilon=0.05, tol=1e-11)
  ia, ib = np.flatnonzero(a > 0), np.flatnonzero(b > 0)
  small = sinkhorn_newton_sparse(cost[np.ix_(ia, ib)], a[ia], b[ib], epsilon=0.05, tol=1e-11)
  assert bool(full.converged) and bool(small.converged)
  np.testing.assert_array_equal(np.asarray(full.plan)[[0, 5]], 0.0)
  np.testing.assert_array_equal(np.asarray(full.plan)[:, 9], 0.0)
  np.testing.assert_allclose(np.asarray(full.plan)[np.ix_(ia, ib)], small.plan, atol=1e-13)
  assert float(full.reg_ot_cost) == pytest.approx(float(small.reg_ot_cost), rel=1e-10)
  f, g = np.asarray(full.f), np.asarray(full.g)
  assert np.all(f[[0, 5]] == -np.inf) and g[9] == -np.inf
  assert np.isfinite(f[ia]).all() and np.isfinite(g[ib]).all()
  assert np.isfinite(np.asarray(full.errors)[: 1 + _sinkhorn_count(full) + int(full.n_iters)]).all()
  # ott-jax's convention and cost on the same problem.
  ref = sinkhorn.Sinkhorn(threshold=1e-12, max_iterations=100000)(
    linear_problem.LinearProblem(
      geometry.Geometry(cost_matrix=jnp.asarray(cost), epsilon=0.05),
      jnp.asarray(a),
      jnp.asarray(b),
    )
  )
  np.testing.assert_allclose(np.asarray(full.plan), np.asarray(ref.matrix), atol=1e-12)
  assert float(full.reg_ot_cost) == pytest.approx(float(ref.reg_ot_cost), rel=1e-9)


def _ott_reg_cost(cost, a, b, eps):
  geom = geometry.Geometry(cost_matrix=cost, epsilon=eps)
  return sinkhorn.Sinkhorn(threshold=1e-13, max_iterations=100000)(
    linear_problem.LinearProblem(geom, a, b)
  ).reg_ot_cost


def _centered(v):
  # Weights live on the simplex: a gradient with respect to them is defined up to a
  # constant vector.
  v = np.asarray(v)
  return v - v.mean()


@pytest.fixture(scope="module")
def grad_problem():
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, 2)), rng.normal(size=(8, 2)) + 0.3
    a, b = rng.uniform(0.5, 1.5, 10), rng.uniform(0.5, 1.5, 8)
    return jnp.asarray(x), jnp.asarray(y), jnp.asarray(a / a.sum()), jnp.asarray(b / b.sum())


def test_grad_of_reg_ot_cost_matches_ott(x64, grad_problem):
  x, y, a, b = grad_problem
  eps = 0.2
  ours = lambda x, a, b: (
    sinkhorn_newton_sparse(
      sq_euclidean_cost(x, y), a, b, epsilon=eps, tol=1e-12, rho=0.5
    ).reg_ot_cost
  )
  theirs = lambda x, a, b: _ott_reg_cost(sq_euclidean_cost(x, y), a, b, eps)
  gx, ga, gb = jax.grad(ours, argnums=(0, 1, 2))(x, a, b)
  rx, ra, rb = jax.grad(theirs, argnums=(0, 1, 2))(x, a, b)
  np.testing.assert_allclose(np.asarray(gx), np.asarray(rx), rtol=1e-7, atol=1e-10)
  np.testing.assert_allclose(_centered(ga), _centered(ra), rtol=1e-7, atol=1e-10)
  np.testing.assert_allclose(_centered(gb), _centered(rb), rtol=1e-7, atol=1e-10)
  # With respect to the cost matrix, the gradient is the plan (the envelope theorem).
  cost = sq_euclidean_cost(x, y)
  gc = jax.grad(lambda c: sinkhorn_newton_sparse(c, a, b, epsilon=eps, tol=1e-12).reg_ot_cost)
  out = sinkhorn_newton_sparse(cost, a, b, epsilon=eps, tol=1e-12)
  np.testing.assert_allclose(np.asarray(gc(cost)), np.asarray(out.plan), atol=1e-12)


def test_implicit_gradient_of_the_plan_matches_finite_differences(x64, grad_problem):
  # A loss of the plan goes through the potentials' implicit derivative (for reg_ot_cost
  # that part vanishes at the optimum): every input, central differences in float64.
  x, y, a, b = grad_problem
  rng = np.random.default_rng(5)
  weights = jnp.asarray(rng.normal(size=(10, 8)))
  cost = sq_euclidean_cost(x, y)

  def loss(cost, a, b, eps):
    out = sinkhorn_newton_sparse(cost, a, b, epsilon=eps, tol=1e-13, rho=0.5)
    # f + t, g - t is the same solution: only gauge-invariant functions of the
    # potentials have a derivative (here sum f[:3] + sum g[:3]).
    return jnp.sum(out.plan * weights) + jnp.sum(out.f[:3]) + jnp.sum(out.g[:3])

  grads = jax.grad(loss, argnums=(0, 1, 2, 3))(cost, a, b, 0.2)
  directions = (
    jnp.asarray(rng.normal(size=(10, 8))),
    jnp.asarray(_centered(rng.normal(size=10))),  # stays on the simplex
    jnp.asarray(_centered(rng.normal(size=8))),
    1.0,
  )
  h = 1e-5
  for i, (grad, d) in enumerate(zip(grads, directions)):
    args = [cost, a, b, 0.2]
    plus, minus = list(args), list(args)
    plus[i], minus[i] = args[i] + h * d, args[i] - h * d
    fd = (float(loss(*plus)) - float(loss(*minus))) / (2 * h)
    assert float(jnp.sum(grad * d)) == pytest.approx(fd, rel=1e-5, abs=1e-8), i


def test_gradient_at_a_zero_weight_is_finite_and_one_sided(x64, grad_problem):
  x, y, a, b = grad_problem
  a = a.at[4].set(0.0)
  a = a / a.sum()
  cost = sq_euclidean_cost(x, y)
  reg = lambda cost, a: sinkhorn_newton_sparse(cost, a, b, epsilon=0.2, tol=1e-13).reg_ot_cost
  gc, ga = jax.grad(reg, argnums=(0, 1))(cost, a)
  assert np.isfinite(np.asarray(gc)).all() and np.isfinite(np.asarray(ga)).all()
  np.testing.assert_array_equal(np.asarray(gc)[4], 0.0)
  # One-sided difference into the simplex: mass moves onto the empty point.
  d = -np.asarray(a)
  d[4] = 1.0
  h = 1e-7
  fd = (float(reg(cost, a + h * jnp.asarray(d))) - float(reg(cost, a))) / h
  assert float(jnp.dot(ga, d)) == pytest.approx(fd, rel=1e-4)


@pytest.mark.slow
def test_switch_rule_follows_its_formula(x64):
  # Sinkhorn hands over to Newton at the first k >= 50 whose predicted remaining
  # iterations log(tol / e_k) / log(q), q = (e_k / e_{k-10})^(1/10), exceed the threshold;
  # where Sinkhorn reaches tol first there is no Newton step at all.
  u = np.full(64, 1 / 64)
  tol = 1e-6
  cases = [(0.003, 700.0), (0.005, 100.0), (0.01, 100.0), (0.01, 400.0), (0.5, 100.0)]
  for eps, threshold in cases:  # (0.003, 700): the prediction crosses 700 after k = 50
    out = sinkhorn_newton_sparse(_uniform(64, 1), epsilon=eps, tol=tol, switch_threshold=threshold)
    s, e = _sinkhorn_count(out), np.asarray(out.errors)
    remaining = [
      np.log(tol / e[k]) / np.log((e[k] / e[k - 10]) ** 0.1) if e[k] < e[k - 10] else np.inf
      for k in range(50, s)
    ]
    if e[s - 1] < tol:  # Sinkhorn converged
      assert int(out.n_iters) == 0 and bool(out.converged), (eps, threshold)
      assert all(r <= threshold for r in remaining), (eps, threshold)
    else:
      assert s >= 51 and remaining[-1] > threshold, (eps, threshold, s)
      assert all(r <= threshold for r in remaining[:-1]), (eps, threshold)
      assert int(out.n_iters) > 0
    assert bool(out.converged) and _marginal_error(out.plan, u, u) < tol
  # inf: Sinkhorn alone, to tol.
  out = sinkhorn_newton_sparse(
    _uniform(64, 1), epsilon=0.01, tol=tol, switch_threshold=float("inf")
  )
  assert int(out.n_iters) == 0 and bool(out.converged) and _sinkhorn_count(out) > 100


def test_switch_rule_hands_over_at_small_eps_and_never_at_large(x64):
  small = sinkhorn_newton_sparse(_uniform(64, 1), epsilon=0.005, tol=1e-6)
  assert int(small.n_iters) > 0 and bool(small.converged)
  assert 51 <= _sinkhorn_count(small) < 100
  large = sinkhorn_newton_sparse(_uniform(64, 1), epsilon=0.5, tol=1e-6)
  assert int(large.n_iters) == 0 and bool(large.converged)
  # ... where it is ott-jax's Sinkhorn.
  geom = geometry.Geometry(cost_matrix=_uniform(64, 1), epsilon=0.5)
  ref = sinkhorn.Sinkhorn(threshold=1e-12)(linear_problem.LinearProblem(geom))
  np.testing.assert_allclose(np.asarray(large.plan), np.asarray(ref.matrix), atol=1e-6 / 64)


def test_line_search_resolves_steps_below_the_round_off_of_the_dual(x64):
  # Linearly converging steps (2 CG iterations each) increase L(f, g) by far less than
  # the round-off of L itself near convergence: the Armijo test on the difference of two
  # L values turns random there and the iteration stalls (at 1.4e-14 here); on the
  # increase computed with expm1 it goes on.
  u = np.full(64, 1 / 64)
  out = sinkhorn_newton_sparse(
    _uniform(64, 0),
    epsilon=0.05,
    tol=1e-14,
    rho=1.0,
    cg_max_iterations=2,
    sinkhorn_num_iterations=20,
    max_iterations=60,
  )
  assert bool(out.converged) and _marginal_error(out.plan, u, u) < 1e-14
