"""AutoDiffusion's block skipping: the skip-aware network and the joint (times, masks) search."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxdiff
from jaxdiff import schedules, search, solvers
from jaxdiff.models import DigitDenoiser

SCHED = schedules.vp_linear()
T = np.array([1.0, 0.6, 0.3, 1e-3])


MASK = np.array([[True, True], [True, False], [False, True]])


@pytest.fixture(scope="module")
def run():
  # Shapes only (an eager init compiles every initializer), then random weights: with
  # adaLN-Zero's zero init every block would be the identity and skipping could not show.
  make = lambda: DigitDenoiser(dim=8, depth=2, num_heads=2, mlp_ratio=1, rngs=nnx.Rngs(0))
  gd, shapes = nnx.split(nnx.eval_shape(make))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)
  x = jax.random.normal(jax.random.key(1), (4, 8, 8))
  y = jnp.array([0, 1, 2, -1])
  grid = jaxdiff.timesteps_from(SCHED, T)
  traces = []

  @jax.jit
  def run(mask):
    traces.append(1)
    net = nnx.merge(gd, params)
    skip = search.skip_blocks(net, mask, grid.t)
    skip_cond = search.skip_blocks(net, mask, grid.t, variant="cond")
    draw = lambda n: (
      jaxdiff.sample(jaxdiff.from_v(n, SCHED), solvers.dpmpp_2m(), x, grid, cond=y, key=0).x
    )
    # Step 1 of MASK evaluates block 0 only, step 2 block 1 only: by hand.
    direct, manual, cond, full = [], [], [], []
    for t, k in ((0.6, 0), (0.3, 1)):
      t = jnp.full((4,), t)
      h, c, valid = net.encode(x, t, y)
      manual.append(net.readout(net.blocks[k](h, c, None), c, valid, x))
      direct.append(skip(x, t, y))
      cond.append(skip_cond(x, t, y))
      full.append(net(x, t, y))
    return draw(net), draw(skip), direct, manual, cond, full

  return run, traces


def test_the_all_blocks_mask_is_the_plain_network_bit_for_bit(run):
  run, _ = run
  plain, skipped, direct, _, cond, full = run(np.ones((3, 2), bool))
  np.testing.assert_array_equal(skipped, plain)
  for d, c, f in zip(direct, cond, full):
    np.testing.assert_array_equal(d, f)
    np.testing.assert_allclose(c, f, rtol=1e-5, atol=1e-5)  # variant="cond": to rounding


def test_a_skipped_block_is_the_identity_and_a_new_mask_does_not_recompile(run):
  run, traces = run
  plain, *_ = run(np.ones((3, 2), bool))
  n = len(traces)
  _, skipped, direct, manual, cond, _ = run(MASK)
  assert len(traces) == n  # the mask is traced data
  assert not np.allclose(skipped, plain, atol=1e-3)
  for d, c, m in zip(direct, cond, manual):
    np.testing.assert_allclose(d, m, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(c, m, rtol=1e-5, atol=1e-5)


def toy(s):
  """Skipping block 0 costs 3 per step, block 1 costs 1; early times are preferred."""
  return float(np.sum(~s.mask * np.array([3.0, 1.0])) + abs(s.t[1] - 0.8))


def test_evolve_skips_keeps_the_budget_finds_the_cheap_skips_and_round_trips():
  kw = dict(block_budget=5, key=0, population=10, generations=6, top_k=3)
  seen = []
  res = search.evolve_skips(lambda s: seen.append(s) or toy(s), 1.0, 0.0, 4, 2, **kw)
  assert all(s.mask.sum() <= 5 and s.mask.shape == (4, 2) for s in seen)
  assert res.evaluations == len(seen) and (np.diff(res.history) <= 0).all()
  assert res.schedule.mask[:, 0].all() and res.schedule.blocks == 5  # skips block 1 only
  assert res.fitness == toy(res.schedule) < res.history[0]
  again = search.evolve_skips(toy, 1.0, 0.0, 4, 2, **kw)
  np.testing.assert_array_equal(again.schedule.t, res.schedule.t)  # deterministic in the key
  back = search.SkipSchedule.from_json(res.schedule.to_json())
  np.testing.assert_array_equal(back.t, res.schedule.t)
  np.testing.assert_array_equal(back.mask, res.schedule.mask)
  assert back.mask.dtype == bool and back.t.dtype == np.float64


def test_a_fixed_key_draws_the_skip_candidates_it_drew_before_the_shared_population_loop():
  # (table indices, flattened mask) of every distinct scored candidate, in order, as the
  # pre-refactor evolve_skips drew them; a repeated candidate is not scored again.
  seen = []

  def fit(s):
    seen.append(
      (np.round(s.t * 40).astype(int).tolist(), "".join(map(str, s.mask.astype(int).ravel())))
    )
    return toy(s)

  kw = dict(block_budget=4, key=1, population=5, generations=2, top_k=2, mutation_prob=0.5)
  res = search.evolve_skips(fit, 1.0, 0.0, 3, 2, resolution=40, **kw)
  assert seen == [
    ([40, 27, 13, 0], "111010"),
    ([40, 20, 18, 0], "101011"),
    ([40, 34, 17, 0], "011110"),
    ([40, 33, 30, 0], "011110"),
    ([40, 18, 5, 0], "111001"),
    ([40, 20, 13, 0], "101010"),
    ([40, 20, 18, 0], "101101"),
    ([40, 20, 18, 0], "010111"),
    ([40, 30, 18, 0], "110110"),
    ([40, 25, 20, 0], "011110"),
  ]
  assert res.evaluations == 10
