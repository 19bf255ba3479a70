"""S³ (predictor-based USF schedule search): tiny budgets; the sampling run is slow-marked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import schedules, search, solvers
from jaxdiff.solvers import StepChoice
from jaxdiff.testing import GaussianMixture

SCHED = schedules.vp_linear()
TARGET = (
  StepChoice(1, "eps", "taylor", True),
  StepChoice(2, "x0", "taylor", False),
  StepChoice(3, "eps", "unipc", True),
  StepChoice(1, "x0", "taylor", False),
)
TARGET_T = np.array([1.0, 0.6, 0.3, 0.1, 0.0])


def toy_fitness(s):
  """Distance to a known schedule: mismatched decisions plus the L1 time misfit."""
  miss = sum(a != b for a, b in zip(s.steps, TARGET))
  return miss + 2.0 * float(np.abs(s.t - TARGET_T).sum())


@pytest.fixture(scope="module")
def toy():
  return search.s3_search(toy_fitness, 1.0, 0.0, 4, key=1, budget=32, rounds=4, candidates=256)


def test_predictor_rounds_improve_on_the_initial_half_and_spend_the_budget_exactly(toy):
  assert toy.evaluations == 32
  assert (np.diff(toy.history) <= 0).all()  # the best evaluated schedule is kept
  assert toy.history[-1] < 0.6 * toy.history[0], toy.history  # guided rounds beat random
  other = search.s3_search(toy_fitness, 1.0, 0.0, 4, key=2, budget=32, rounds=4, candidates=256)
  assert other.history[-1] < other.history[0], other.history  # not one lucky key
  assert toy.fitness == toy.history[-1] == toy_fitness(toy.schedule)
  assert np.isfinite(toy.predictor_corr)
  again = search.s3_search(toy_fitness, 1.0, 0.0, 4, key=1, budget=32, rounds=4, candidates=256)
  assert again.schedule.steps == toy.schedule.steps  # deterministic in the key
  np.testing.assert_array_equal(again.schedule.t, toy.schedule.t)


def test_a_searched_schedule_round_trips_through_json_to_the_same_solver_and_grid(toy):
  s = toy.schedule
  back = search.SolverSchedule.from_json(s.to_json())
  assert back.steps == s.steps and back.t.dtype == np.float64
  np.testing.assert_array_equal(back.t, s.t)
  assert back.solver().steps == s.solver().steps
  np.testing.assert_array_equal(back.grid(SCHED).t, s.grid(SCHED).t)


def test_choice_sets_restrict_every_evaluated_schedule():
  seen = []

  def fit(s):
    seen.append(s)
    return float(s.t[1])

  kw = dict(budget=32, rounds=4, candidates=256)  # the fixture's shapes: no new compilation
  search.s3_search(fit, 1.0, 0.0, 4, key=0, predictions=("eps",), correctors=(False,), **kw)
  assert len(seen) == 32
  assert all(c.prediction == "eps" and not c.corrector for s in seen for c in s.steps)


@pytest.mark.slow
def test_s3_on_the_mixture_beats_its_seeds_and_the_reloaded_schedule_reproduces_it():
  gmm = GaussianMixture(np.array([[-2.0, 0.0], [2.0, 1.0]]), 0.1)
  den = gmm.denoiser(SCHED)
  x = jax.random.normal(jax.random.key(0), (64, 2))
  fine = jaxdiff.timesteps_from(SCHED, np.geomspace(1.0, 1e-3, 200))
  ref = jaxdiff.sample(den, solvers.dpmpp_3m(), x, fine, key=0).x

  @jax.jit
  def rms(solver, grid):
    out = jaxdiff.sample(den, solver, x, grid, key=0).x
    return jnp.sqrt(jnp.mean(jnp.square(out - ref)))

  fit = lambda s: float(rms(solvers.usf(s.steps, all_branches=True), s.grid(SCHED)))
  res = search.s3_search(fit, 1.0, 1e-3, 4, key=0, budget=16, rounds=2, candidates=256)
  uniform = np.linspace(1.0, 1e-3, 5)
  seed = fit(search.SolverSchedule(solvers.usf_steps("dpmpp_2m", 4), uniform))
  assert res.fitness < 0.95 * seed
  back = search.SolverSchedule.from_json(res.schedule.to_json())
  assert fit(back) == pytest.approx(res.fitness, rel=1e-6)


def test_the_demo_ships_valid_schedules_including_its_default_nfe():
  import json
  import pathlib

  # jaxdiff.demo is not imported (flax, matplotlib): 5 is DemoConfig.searched_nfe's default
  path = pathlib.Path(jaxdiff.__file__).parent / "demo" / "searched_schedules.json"
  shipped = json.loads(path.read_text())
  assert "5" in shipped
  for nfe, text in shipped.items():
    s = search.SolverSchedule.from_json(text)
    assert len(s.steps) == int(nfe) and s.t[0] > s.t[-1]
