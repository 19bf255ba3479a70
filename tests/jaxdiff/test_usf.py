"""USF solver: reproduces DDIM / DPM-Solver++(2M) / UniPC / DPM-Solver++(3M), matches a
float64 transcription of DPM-Solver's noise-prediction multistep update, keeps one
compilation across schedules, and (slow) converges with the order of its decisions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import schedules, solvers
from jaxdiff._sampling import _sample_jit
from jaxdiff.solvers import StepChoice
from jaxdiff.testing import GaussianMixture

SCHED = schedules.vp_linear()
N = 5


@pytest.fixture(scope="module")
def problem():
  gmm = GaussianMixture(np.array([[-1.0, 0.5, 0.0], [1.0, -0.5, 1.0]]), 0.2)
  x_T = jax.random.normal(jax.random.key(0), (6, 3))
  return gmm.denoiser(SCHED), x_T, schedules.timesteps(SCHED, N)


def _run(den, solver, x_T, grid):
  return jaxdiff.sample(den, solver, x_T, grid, key=0).x


# DPM-Solver++(2M) (to 2e-6) is also the example of solvers.usf, a doctest of `make test`;
# DDIM's order-1 update is exercised by UniPC's first and last steps (slow: the rest).
@pytest.mark.parametrize(
  ("name", "reference", "exact"),
  [
    pytest.param("ddim", solvers.ddim(), True, marks=pytest.mark.slow),
    ("unipc", solvers.unipc(), True),
    pytest.param("dpmpp_2m", solvers.dpmpp_2m(), False, marks=pytest.mark.slow),
  ],
)
def test_usf_with_a_classic_solvers_decisions_reproduces_it(problem, name, reference, exact):
  den, x_T, grid = problem
  got = _run(den, solvers.usf(solvers.usf_steps(name, N)), x_T, grid)
  want = _run(den, reference, x_T, grid)
  if exact:  # the same operations in the same order
    np.testing.assert_array_equal(got, want)
  else:  # bh2 order 2 = DPM-Solver++(2M) algebraically; the two round differently
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


@pytest.mark.slow
def test_taylor_order3_after_a_bh2_warmup_is_dpmpp_3m(x64, problem):
  den, x_T, _ = problem
  grid = schedules.timesteps(SCHED, N)  # float64
  steps = [StepChoice(1), StepChoice(2, "x0", "unipc")] + [StepChoice(3, "x0", "taylor")] * (N - 2)
  got = _run(den, solvers.usf(steps), x_T.astype(jnp.float64), grid)
  want = _run(den, solvers.dpmpp_3m(lower_order_final=False), x_T.astype(jnp.float64), grid)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def _dpm_solver_2m_eps(den, x_T, grid):
  """Float64 NumPy transcription of DPM-Solver's multistep 2nd-order update on the noise
  prediction (Lu et al. 2022a, Alg. 2 with the 'dpmsolver' correction -0.5 sigma (e^h-1) D1)."""
  t, a, s, lam = (np.asarray(v, np.float64) for v in (grid.t, grid.alpha, grid.sigma, grid.lam))
  x = np.asarray(x_T, np.float64)
  prev = None
  den = jax.jit(den)
  for i in range(len(t) - 1):
    x0 = np.asarray(den(jnp.asarray(x), jnp.full((x.shape[0],), t[i]), None), np.float64)
    eps = (x - a[i] * x0) / s[i]
    h = lam[i + 1] - lam[i]
    new = a[i + 1] / a[i] * x - s[i + 1] * math.expm1(h) * eps
    if prev is not None:
      r0 = (lam[i] - lam[i - 1]) / h
      new = new - 0.5 * s[i + 1] * math.expm1(h) * (eps - prev) / r0
    x, prev = new, eps
  return x


def test_eps_prediction_order2_matches_a_float64_dpm_solver_transcription(x64, problem):
  den, x_T, _ = problem
  grid = schedules.timesteps(SCHED, N)  # float64
  steps = [StepChoice(1, "eps")] + [StepChoice(2, "eps", "unipc")] * (N - 1)
  got = _run(den, solvers.usf(steps), x_T.astype(jnp.float64), grid)
  np.testing.assert_allclose(got, _dpm_solver_2m_eps(den, x_T, grid), rtol=0, atol=1e-12)


def test_schedules_with_the_same_decision_set_share_one_compilation(problem):
  den, x_T, grid = problem
  a = solvers.usf(solvers.usf_steps("unipc", N))  # compiled by the reproduction test
  _run(den, a, x_T, grid)
  # the same set of decisions, placed differently: only traced leaves change
  b = solvers.usf(
    [
      StepChoice(1, corrector=True),
      StepChoice(2),
      StepChoice(1),
      StepChoice(2, corrector=True),
      StepChoice(1),
    ]
  )
  assert b.kinds == a.kinds
  before = _sample_jit._cache_size()
  out_a, out_b = _run(den, a, x_T, grid), _run(den, b, x_T, grid)
  assert _sample_jit._cache_size() == before
  assert not np.allclose(out_a, out_b)  # and the decisions do act
  assert solvers.usf(b.steps).steps == b.steps


@pytest.mark.slow
def test_all_branches_shares_one_compilation_across_every_schedule_and_changes_nothing(problem):
  den, x_T, grid = problem
  a = solvers.usf(solvers.usf_steps("unipc", N), all_branches=True)
  b = solvers.usf([StepChoice(min(3, i + 1), "eps", "taylor") for i in range(N)], all_branches=True)
  np.testing.assert_array_equal(
    _run(den, a, x_T, grid), _run(den, solvers.usf(solvers.usf_steps("unipc", N)), x_T, grid)
  )
  before = _sample_jit._cache_size()
  assert bool(jnp.all(jnp.isfinite(_run(den, b, x_T, grid))))
  assert _sample_jit._cache_size() == before


@pytest.mark.slow
@pytest.mark.parametrize("prediction", ["x0", "eps"])
@pytest.mark.parametrize(
  ("order", "derivative", "corrector", "expected"),
  [
    (1, "taylor", False, 1),
    (2, "taylor", False, 2),
    (3, "taylor", False, 3),
    (2, "unipc", False, 2),
    (3, "unipc", False, 3),
    (1, "unipc", True, 2),
    (2, "unipc", True, 3),
    (3, "unipc", True, 4),
  ],
)
def test_empirical_order_is_the_decisions_order(
  x64, prediction, order, derivative, corrector, expected
):
  from tests.jaxdiff.test_solvers import CASES, _mixture, _reference, _warm_grid

  sched, t0, t1 = CASES["vp_cosine"]
  gmm = _mixture()
  x_T = jax.random.normal(jax.random.key(0), (8, 2), jnp.float64) * sched.sigma(t0)
  ref = _reference(gmm, sched, x_T, t0, t1)
  errs = []
  for n in (64, 128):
    steps = [
      StepChoice(min(order, i + 1), prediction, derivative, corrector and i < n - 1)
      for i in range(n)
    ]
    x = _run(gmm.denoiser(sched), solvers.usf(steps), x_T, _warm_grid(sched, n, t0, t1))
    errs.append(float(jnp.sqrt(jnp.mean((x - ref) ** 2))))
  slope = np.log2(errs[0] / errs[1])
  assert abs(slope - expected) < 0.3, (slope, errs)
