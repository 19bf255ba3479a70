"""DeeDiff early exit (jaxdiff.models.EarlyExit): the exit rule against a transcription of
the paper's, threshold 0 = the network bit for bit, exact block counts, real skipping under
jit, no retrace across thresholds, and the loss against a float64 transcription of Eqs. 5-9.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxdiff
from jaxdiff import schedules, solvers
from jaxdiff.models import DigitDenoiser, EarlyExit, ExitHeads, early_exit_loss

DEPTH = 3


def _jitter(module, scale, seed):
  """Random weights everywhere (adaLN-Zero would make every block the identity); drawn
  on the host, so the fixture compiles nothing."""
  rng = np.random.default_rng(seed)
  state = nnx.state(module, nnx.Param)
  noisy = jax.tree.map(lambda p: p + scale * rng.standard_normal(p.shape, np.float32), state)
  nnx.update(module, noisy)


@pytest.fixture(scope="module")
def setup():
  net = DigitDenoiser(dim=8, depth=DEPTH, num_heads=2, mlp_ratio=1, rngs=nnx.Rngs(0))
  heads = ExitHeads(net, rngs=nnx.Rngs(1))
  _jitter(EarlyExit(net, heads), 0.3, 1)
  x = jax.random.normal(jax.random.key(3), (4, 8, 8))
  t = jnp.linspace(0.2, 0.9, 4)
  y = jnp.array([0, 3, -1, 7])
  apply = jax.jit(lambda model, x: model.apply(x, t, y))
  return net, heads, x, t, y, apply


_outputs = jax.jit(lambda model, x, t, y: model.outputs(x, t, y))


def _reference(net, heads, x, t, y, threshold, per_sample=False):
  """The paper's rule, transcribed: the first exit whose uncertainty is below the
  threshold (for every sample of the call), else the whole network."""
  o = _outputs(EarlyExit(net, heads), x, t, y)
  u = np.asarray(o.uncertainty)  # (K, B)
  confident = u < threshold if per_sample else np.all(u < threshold, axis=1, keepdims=True)
  confident = np.broadcast_to(confident, u.shape)
  exits = np.concatenate([np.asarray(o.exits), np.asarray(o.out)[None]])
  first = np.where(confident.any(0), confident.argmax(0), DEPTH - 1)  # (B,)
  return exits[first, np.arange(x.shape[0])], first + 1, u


def test_uncertainty_is_eq5_in_float64(setup):
  net, heads, x, t, y, _ = setup

  @jax.jit
  def first_block(net, heads):
    h, c, _ = net.encode(x, t, y)
    h = net.blocks[0](h, c, None)
    return h, c, heads.uncertainty(0, h, c)

  h, c, u = first_block(net, heads)
  h64, c64 = np.asarray(h, np.float64), np.asarray(c, np.float64)
  ln = (h64 - h64.mean(-1, keepdims=True)) / np.sqrt(h64.var(-1, keepdims=True) + 1e-6)
  feats = np.concatenate([ln, np.broadcast_to(c64[:, None], h64.shape)], axis=-1)
  w = np.asarray(heads.uem[0].kernel[...], np.float64)
  b = np.asarray(heads.uem[0].bias[...], np.float64)
  want = np.mean(1.0 / (1.0 + np.exp(-(feats @ w + b)[..., 0])), axis=1)
  np.testing.assert_allclose(u, want, rtol=2e-5, atol=1e-6)


def test_threshold_zero_is_the_network_bit_for_bit(setup):
  net, heads, x, t, y, apply = setup
  out, blocks = apply(EarlyExit(net, heads, threshold=0.0), x)
  base = jax.jit(lambda net, x: net(x, t, y))(net, x)
  assert int(blocks) == DEPTH
  assert bool(jnp.all(out == base))


@pytest.mark.slow
def test_threshold_zero_samples_like_the_network_bit_for_bit(setup):
  net, heads, x, t, y, apply = setup
  sched, ts = schedules.vp_cosine(), schedules.timesteps(schedules.vp_cosine(), 2)
  run = lambda n: jaxdiff.sample(jaxdiff.from_v(n, sched), solvers.ddim(), x, ts, key=0, cond=y)
  a, b = run(EarlyExit(net, heads, threshold=0.0)), run(net)
  assert bool(jnp.all(a.x == b.x)) and int(a.nfe) == int(b.nfe) == 2


def test_exit_rule_and_block_count_match_the_transcription(setup):
  net, heads, x, t, y, apply = setup
  u = _reference(net, heads, x, t, y, 0.0)[2]
  worst = np.sort(u.max(axis=1))  # the thresholds where the call's decision changes
  cuts = [0.0, *(worst[:-1] + worst[1:]) / 2, worst[-1] + 1e-3, 1.0]
  seen = set()
  for th in cuts:
    out, blocks = apply(EarlyExit(net, heads, threshold=float(th)), x)
    want, want_blocks, _ = _reference(net, heads, x, t, y, th)
    assert int(blocks) == int(want_blocks[0])
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    seen.add(int(blocks))
  assert len(seen) >= 2  # the cuts reach at least one exit and the full network
  assert apply._cache_size() == 1  # no retrace for a new threshold


def test_per_sample_exits_under_vmap(setup):
  net, heads, x, t, y, _ = setup
  u = _reference(net, heads, x, t, y, 0.0)[2]
  th = float(np.median(u[0]))  # some samples exit at the first exit, some do not
  model = EarlyExit(net, heads, threshold=th)
  one = lambda x, t, y: model.apply(x[None], t[None], y[None])
  out, blocks = jax.jit(jax.vmap(one))(x, t, y)
  want, want_blocks, _ = _reference(net, heads, x, t, y, th, per_sample=True)
  np.testing.assert_array_equal(blocks, want_blocks)
  assert len(set(np.asarray(blocks).tolist())) >= 2
  np.testing.assert_allclose(out[:, 0], want, rtol=1e-5, atol=1e-5)


def test_skipped_blocks_sit_in_conditionals(setup):
  # Each exit decision is a `lax.cond` at top level (not a select): XLA runs one branch.
  net, heads, x, t, y, _ = setup
  hlo = jax.jit(lambda m, x: m.apply(x, t, y)).lower(EarlyExit(net, heads), x).as_text()
  assert hlo.count("stablehlo.case") + hlo.count("stablehlo.if") == DEPTH - 1


def _loss_reference(model, x0, y, key, variant, train_backbone, lam, beta):
  sched = schedules.vp_cosine()
  kt, ke, _ = jax.random.split(jax.random.key(key), 3)
  t = jax.random.uniform(kt, (x0.shape[0],), minval=sched.t_min, maxval=sched.t_max)
  eps = jax.random.normal(ke, x0.shape)
  a, s = sched.alpha(t)[:, None, None], sched.sigma(t)[:, None, None]
  o = _outputs(model, a * x0 + s * eps, t, y)
  f64 = lambda v: np.asarray(v, np.float64)
  target = f64(a) * f64(eps) - f64(s) * f64(x0)  # v prediction
  err = f64(o.exits) - target[None]
  u, u_hat = f64(o.uncertainty), np.tanh(np.abs(err)).mean(axis=(2, 3))
  w = u_hat if variant == "pseudo" else u
  l_u = np.sum(np.mean((u - u_hat) ** 2, axis=1))  # Eq. 7
  l_ual = np.sum(np.mean((1 - w) * np.mean(err**2, axis=(2, 3)), axis=1))  # Eq. 8
  simple = np.mean((f64(o.out) - target) ** 2) if train_backbone else 0.0
  return simple + lam * l_u + beta * l_ual  # Eq. 9


@pytest.mark.parametrize(
  "variant, train_backbone, lam, beta",
  [
    ("estimated", False, 1.0, 1.0),
    pytest.param("pseudo", True, 0.5, 2.0, marks=pytest.mark.slow),
  ],
)
def test_loss_matches_float64_transcription(setup, variant, train_backbone, lam, beta):
  net, heads, x, _, _, _ = setup
  y = jnp.array([0, 3, 5, 7])
  loss = early_exit_loss(
    schedules.vp_cosine(),
    uncertainty_weight=lam,
    layer_weight=beta,
    train_backbone=train_backbone,
    label_dropout=0.0,
    variant=variant,
  )
  model = EarlyExit(net, heads)
  want = _loss_reference(model, x, y, 5, variant, train_backbone, lam, beta)
  np.testing.assert_allclose(float(jax.jit(loss)(model, x, y, 5)), want, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("train_backbone", [False, True])
def test_frozen_backbone_gets_no_gradient(setup, train_backbone):
  net, heads, x, _, _, _ = setup
  loss = early_exit_loss(schedules.vp_cosine(), train_backbone=train_backbone)
  grads = jax.jit(nnx.grad(loss))(EarlyExit(net, heads), x, jnp.array([0, 3, 5, 7]), 5)
  sq = lambda tree: sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(tree))
  assert (sq(nnx.state(grads.net)) > 0) == train_backbone
  assert sq(nnx.state(grads.heads)) > 0


@pytest.mark.integration  # heavy (3-7 s each): CI's second tier keeps make test within 5 min
def test_sample_counts_the_blocks_an_exiting_network_runs_in_stats(setup):
  # The loop sums what the network reports per call (through from_v's forwarding); the
  # count equals the blocks the network reports at each step's (x_i, t_i), recounted.
  net, heads = setup[0], setup[1]
  sched = schedules.vp_cosine()
  ts = schedules.timesteps(sched, 3)
  x_T = jax.random.normal(jax.random.key(0), (4, 8, 8))
  y = jnp.array([0, 3, 1, 7])
  for threshold in (0.0, 0.6, 1.0):
    model = EarlyExit(net, heads, threshold=threshold)
    out = jaxdiff.sample(
      jaxdiff.from_v(model, sched), solvers.ddim(), x_T, ts, key=0, cond=y,
      return_trajectory=True,
    )  # fmt: skip
    recount = sum(
      int(model.apply(out.trajectory[i], jnp.full((4,), ts.t[i]), y)[1]) for i in range(3)
    )
    assert int(out.stats["blocks"]) == recount
    assert 3 <= recount <= 3 * DEPTH
  with pytest.raises(TypeError, match="early-exit"):
    jaxdiff.sample(
      jaxdiff.from_v(model, sched), solvers.ddim(), x_T, ts, key=0, cond=y,
      cache=jaxdiff.caching.fora(2),
    )  # fmt: skip
