"""Timestep search (AutoDiffusion's evolution): tiny budgets, exact-mixture fitness."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import schedules, search, solvers
from jaxdiff.testing import GaussianMixture

SCHED = schedules.vp_linear()


def test_evolution_is_elitist_deterministic_and_returns_a_valid_grid():
  target = np.array([1.0, 0.9, 0.35, 0.1, 0.0])
  fit = lambda t: jnp.sum(jnp.abs(t - target))
  res = search.evolve_timesteps(fit, 1.0, 0.0, 4, key=3, population=10, generations=6)
  again = search.evolve_timesteps(fit, 1.0, 0.0, 4, key=3, population=10, generations=6)
  np.testing.assert_array_equal(res.t, again.t)
  assert (np.diff(res.history) <= 0).all()  # the parents survive: never worse
  uniform = float(fit(jnp.linspace(1.0, 0.0, 5)))
  assert res.history[0] == pytest.approx(min(res.history[0], uniform))
  assert res.fitness < 0.5 * uniform  # the search found a much closer grid
  assert res.t[0] == 1.0 and res.t[-1] == 0.0 and (np.diff(res.t) < 0).all()
  assert res.evaluations == 10 + 6 * (10 - 4)


def test_a_fixed_key_draws_the_candidates_it_drew_before_the_shared_population_loop():
  # Table indices of every scored grid, in order, as the pre-refactor evolve_timesteps drew
  # them (initial population, then per generation crossovers then mutations).
  seen = []
  target = np.array([1.0, 0.9, 0.35, 0.1, 0.0])

  def fit(t):
    seen.append(np.round(np.asarray(t) * 40).astype(int).tolist())
    return float(np.sum(np.abs(np.asarray(t) - target)))

  kw = dict(population=4, generations=2, top_k=1, mutation_prob=0.5, resolution=40)
  res = search.evolve_timesteps(fit, 1.0, 0.0, 4, key=3, **kw)
  assert seen == [
    [40, 30, 20, 10, 0],
    [40, 31, 7, 4, 0],
    [40, 34, 30, 23, 0],
    [40, 25, 17, 13, 0],
    [40, 31, 7, 4, 0],
    [40, 31, 5, 4, 0],
    [40, 37, 7, 4, 0],
    [40, 37, 7, 4, 0],
    [40, 37, 12, 7, 0],
    [40, 37, 21, 9, 0],
  ]
  assert res.evaluations == 10


@pytest.mark.slow
def test_searched_grid_beats_the_uniform_grid_on_the_mixture_and_is_saveable():
  gmm = GaussianMixture(np.array([[-2.0, 0.0], [2.0, 1.0]]), 0.1)
  den = gmm.denoiser(SCHED)
  x = jax.random.normal(jax.random.key(0), (64, 2))
  fine = jaxdiff.timesteps_from(SCHED, np.geomspace(1.0, 1e-3, 200))
  ref = jaxdiff.sample(den, solvers.dpmpp_3m(), x, fine, key=0).x

  @jax.jit
  @jax.vmap
  def fit(t):
    out = jaxdiff.sample(den, solvers.ddim(), x, jaxdiff.timesteps_from(SCHED, t), key=0).x
    return jnp.sqrt(jnp.mean(jnp.square(out - ref)))

  res = search.evolve_timesteps(fit, 1.0, 1e-3, 3, key=0, population=8, generations=3, batched=True)
  uniform = float(fit(jnp.linspace(1.0, 1e-3, 4)[None])[0])
  assert res.fitness < 0.9 * uniform
  buf = io.BytesIO()
  np.save(buf, res.t)
  buf.seek(0)
  grid = jaxdiff.timesteps_from(SCHED, np.load(buf))
  again = jaxdiff.sample(den, solvers.ddim(), x, grid, key=0).x
  np.testing.assert_allclose(jnp.sqrt(jnp.mean(jnp.square(again - ref))), res.fitness, rtol=1e-5)


@pytest.mark.parametrize(
  ("kwargs", "match"),
  [
    ({"population": 0}, "budget"),
    ({"generations": 0}, "budget"),
    ({"population": 1}, "budget"),
    ({"resolution": 3}, "resolution"),
    ({"top_k": 8}, "top_k"),
    ({"initial": [np.ones(3)]}, "initial"),
  ],
)
def test_bad_budgets_and_options_raise_clear_errors(kwargs, match):
  opts = {"population": 8, "generations": 2, **kwargs}
  with pytest.raises(ValueError, match=match):
    search.evolve_timesteps(lambda t: t[0], 1.0, 0.0, 4, key=0, **opts)
