"""Hostile inputs, round two: user callables' outputs, wrappers that
forward what the wrapped network declares, and arguments that must agree with each other.

Each case is a one-line reproducer over the small fixtures below: a 2-D mixture with 3
classes (its exact denoiser), the cosine VP schedule, a 4-step grid, a batch of 4, and a
tiny digits transformer (10 classes, 2 blocks) with early-exit heads. Almost every case
raises while its function is traced or before anything compiles; the few ``returns``
cases pin the valid input next to a hostile one.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxdiff
from jaxdiff import guidance as G  # noqa: F401 - used by the reproducers
from jaxdiff import inverse, search, solvers, training  # noqa: F401 - used by the reproducers
from jaxdiff import parameterization as P  # noqa: F401 - used by the reproducers
from jaxdiff import schedules as S
from jaxdiff._network import Network  # noqa: F401 - used by the reproducers
from jaxdiff._types import StepContext
from jaxdiff.caching import fora  # noqa: F401 - used by the reproducers
from jaxdiff.models import (  # noqa: F401 - used by the reproducers
  DigitDenoiser,
  EarlyExit,
  ExitHeads,
  ExitOutputs,
  early_exit_loss,
  train,
)
from jaxdiff.testing import GaussianMixture
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = math.nan, math.inf

gmm = GaussianMixture(jnp.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]]), 0.25)
sched = S.vp_cosine()
ts = S.timesteps(sched, 4)
x = jnp.ones((4, 2))
y4 = jnp.array([0, 1, 2, 0])
den = gmm.denoiser(sched)
ddim = solvers.ddim()
ctx = StepContext(jnp.array(0.5), sched.alpha(0.5), sched.sigma(0.5), 0, 4, jax.random.key(0))
loss = training.denoising_loss(sched)
apply = lambda rule, c=None: rule.apply(den, x, c, ctx, rule.init(x, c))  # noqa: E731

# A 10-class digits transformer (dim 8, 2 blocks), its heads, a 2-step mask grid.
net = DigitDenoiser(dim=8, depth=2, num_heads=2, mlp_ratio=1, rngs=nnx.Rngs(0))
heads = ExitHeads(net, rngs=nnx.Rngs(1))
early = EarlyExit(net, heads)
xd, td = jnp.ones((2, 8, 8)), jnp.full((2,), 0.5)
x0d = jnp.zeros((4, 8, 8))
t_mask = np.array([1.0, 0.5, 0.0])
ts_mask = S.timesteps_from(S.flow(), t_mask)
skip = search.skip_blocks(net, np.ones((2, 2), bool), t_mask)
dsample = lambda d, grid=ts_mask, **kw: jaxdiff.sample(d, ddim, xd, grid, key=0, **kw)  # noqa: E731
bad_labels = jnp.array([0, 11])


class FakeExit:
  """An early-exit model whose ``outputs`` are built by ``make(x)`` (hostile shapes)."""

  def __init__(self, make):
    self.make = make

  def outputs(self, x, t, cond, *, train_backbone=True):
    del t, cond, train_backbone
    return self.make(x)


def op_out(out_shape):
  """An operator of one's own whose forward ignores its declared ``out_shape``: x -> x[:1]."""
  return inverse.Operator("mine", lambda v: v[:1], lambda u: jnp.zeros(2), (2,), out_shape)


tiny = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
tiny_data = (np.ones((8, 2), np.float32), np.zeros(8, np.float32))
train_with = lambda loss_fn: train(  # noqa: E731
  tiny, loss_fn, optax.sgd(0.1), tiny_data, steps=1, batch_size=4, progress=False
)
EE = "early_exit_loss"

CASES = [
  # --- denoising_loss: the model's output and the other callables -----------------------
  Case(
    "loss(lambda x, t, y: x[:, :1], x, y4, 0)",
    raises(ValueError, r"denoising_loss: model\(x, t, y\) must return .*\(4, 2\).*got \(4, 1\)"),
  ),
  Case("loss(lambda x, t, y: x[:1], x, y4, 0)", raises(ValueError, r"model\(x, t, y\).*\(1, 2\)")),
  Case("loss(lambda x, t, y: (x, x), x, y4, 0)", raises(TypeError, r"model\(x, t, y\).*pytree")),
  Case(
    "loss(lambda x, t, y: x.astype(jnp.int32), x, y4, 0)",
    raises(TypeError, r"model\(x, t, y\) must return a real floating-point"),
  ),
  Case("loss(lambda x, t, y: 0.0, x, y4, 0)", raises(TypeError, r"model\(x, t, y\).*float")),
  Case(
    "training.denoising_loss(sched, weighting='eps')(lambda x, t, y: x[:, :1], x, y4, 0)",
    raises(ValueError, r"model\(x, t, y\)"),
  ),
  Case(
    "training.denoising_loss(sched, smoothness=0.1)(lambda x, t, y: x[:, :1], x, y4, 0)",
    raises(ValueError, r"model\(x, t, y\)"),
  ),
  Case(
    "loss.per_example(lambda x, t, y: x[:, :1], x, x, jnp.full(4, 0.5), y4)",
    raises(ValueError, r"model\(x, t, y\)"),
  ),
  Case(
    "loss.per_example(lambda x, t, y: x, x, x[:, :1], jnp.full(4, 0.5), y4)",
    raises(ValueError, r"per_example: eps must return x's shape"),
  ),
  Case(
    "training.denoising_loss(sched, timesteps=lambda k, s, **kw: jnp.full(s + (1,), 0.5))"
    "(lambda x, t, y: x, x, y4, 0)",
    raises(ValueError, r"timesteps\(key, shape\) must return .*shape \(4,\)"),
  ),
  Case(
    "training.denoising_loss(sched, weighting=lambda lam: lam[:, None])"
    "(lambda x, t, y: x, x, y4, 0)",
    raises(ValueError, r"weighting\(logsnr\) must return .*shape \(4,\)"),
  ),
  Case(
    "training.denoising_loss(sched, weighting=lambda lam: 2.0)(lambda x, t, y: x, x, y4, 0)",
    returns(policy="a scalar weighting is one weight for every example"),
  ),
  Case(
    "training.denoising_loss(sched, perceptual=lambda z: z.sum())(lambda x, t, y: x, x, y4, 0)",
    raises(ValueError, r"perceptual\(x\) must be batch-first"),
  ),
  Case(
    "training.step_variation_penalty(lambda e: e.sum(axis=1), x, key=0)",
    raises(ValueError, r"step_variation_penalty: fn\(eps\) must return .*\(4, 2\)"),
  ),
  Case("loss(lambda x, t, y: x, x.astype(jnp.int32), y4, 0)", raises(TypeError, "x0 must be")),
  # --- train: the loss is a scalar -----------------------------------------------------------
  Case(
    "train_with(lambda m, x, y, key: (m(x)[:, 0] - y) ** 2)",
    raises(
      TypeError, r"train: loss_fn\(model, x, y, key\) must return a real floating-point scalar"
    ),
  ),
  # --- red_diff: the denoiser's output, cond against y ----------------------------------------
  Case(
    "inverse.red_diff(lambda x, t, c: x[:, :1], inverse.matrix(jnp.eye(2)), x, ts, key=0)",
    raises(ValueError, r"red_diff: denoise\(x, t, cond\) must return x's shape .*got \(4, 1\)"),
  ),
  Case(
    "inverse.red_diff(lambda x, t, c: x.astype(jnp.float16), inverse.matrix(jnp.eye(2)), x, ts, key=0)",
    raises(TypeError, r"red_diff: denoise\(x, t, cond\).*float16"),
  ),
  Case(
    "inverse.red_diff(den, inverse.matrix(jnp.eye(2)), x, ts, key=0, cond=y4[:3])",
    raises(ValueError, r"red_diff: cond must be batch-first with leading size 4 \(like y\)"),
  ),
  # --- guidance: classifier, measurement and loss callables -----------------------------------
  Case(
    "apply(G.classifier(lambda z: jnp.zeros((4, 3), jnp.int32), 3, 1.0), y4)",
    raises(TypeError, r"classifier: classifier_fn\(x0\) must return a real floating-point"),
  ),
  Case(
    "apply(G.classifier(lambda z, t: jnp.zeros((4, 3, 1)), 3, 1.0, variant='noisy'), y4)",
    raises(ValueError, r"classifier: classifier_fn\(x, t\) must return .*\(4, 3\)"),
  ),
  Case(
    "apply(G.minority(lambda z, t: jnp.zeros(4), 2, 1))",
    raises(ValueError, r"minority: classifier_fn\(x, t\) must return .*\(4, 2\)"),
  ),
  Case(
    "apply(G.minority(lambda z, t: (z, z), 2, 1))",
    raises(TypeError, r"minority: classifier_fn\(x, t\).*pytree"),
  ),
  Case(
    "apply(G.flowchef(lambda z, c: jnp.sum(z, axis=1, keepdims=True)))",
    raises(ValueError, r"flowchef: loss_fn\(x0, cond\) must return .*\(4,\).*got \(4, 1\)"),
  ),
  Case(
    "apply(G.flowchef(lambda z, c: jnp.zeros(4, jnp.int32)))",
    raises(TypeError, r"flowchef: loss_fn\(x0, cond\) must return a real floating-point"),
  ),
  Case(
    "apply(G.dps(op_out((2,)), jnp.zeros((4, 2))))",
    raises(ValueError, r"mine: forward\(x\) must return shape \(4, 2\).*got \(4, 1\)"),
  ),
  Case(
    "apply(G.stsl(op_out((2,)), jnp.zeros((4, 2))))",
    raises(ValueError, r"mine: forward\(x\) must return shape \(4, 2\)"),
  ),
  Case(
    "op_out((1,)).T(jnp.zeros((4, 1)))",
    returns(lambda r: r.shape == (4, 2), "an operator of one's own of the declared shapes"),
  ),
  Case(
    "inverse.Operator('mine', lambda v: v, lambda u: u[:1], (2,), (2,)).T(x)",
    raises(ValueError, r"mine: transpose_fn\(y\) must return shape \(4, 2\)"),
  ),
  Case(
    "G.minority_score(lambda x, t, c: x[:, :1], sched, x, key=0)",
    raises(ValueError, r"minority_score: denoise\(x, t, cond\) must return x's shape"),
  ),
  Case(
    "G.minority_score(den, sched, x, key=0, cond=y4[:2])",
    raises(ValueError, r"minority_score: cond must be batch-first with leading size 4"),
  ),
  Case(
    "P.from_v(lambda x, t, c: x.astype(jnp.int32), sched)(x, jnp.full(4, 0.5))",
    raises(TypeError, r"from_v: net\(x, t, cond\) must return a real floating-point"),
  ),
  Case(
    "P.from_flow(lambda x, t, c: x[:, :1], S.flow())(x, jnp.full(4, 0.5))",
    raises(ValueError, r"from_flow: net\(x, t, cond\) must return .*\(4, 2\)"),
  ),
  # --- searches: the fitness is a real scalar --------------------------------------------------
  Case(
    "search.evolve_timesteps(lambda t: t, 1.0, 0.0, 4, key=0, population=4, generations=1, top_k=2)",
    raises(TypeError, r"evolve_timesteps: fitness\(t\) must return a real .*scalar.*shape \(5,\)"),
  ),
  Case(
    "search.evolve_timesteps(lambda t: (t[0], t[1]), 1.0, 0.0, 4, key=0, population=4, generations=1, top_k=2)",
    raises(TypeError, r"evolve_timesteps: fitness\(t\).*pytree"),
  ),
  Case(
    "search.evolve_timesteps(lambda t: True, 1.0, 0.0, 4, key=0, population=4, generations=1, top_k=2)",
    raises(TypeError, r"fitness\(t\) must return a real .*scalar.*got a bool"),
  ),
  Case(
    "search.evolve_timesteps(lambda t: t[:, :1], 1.0, 0.0, 4, key=0, population=4, generations=1, top_k=2, batched=True)",
    raises(ValueError, r"fitness\(ts\) \(batched=True\) must return .*shape \(4,\)"),
  ),
  Case(
    "search.evolve_timesteps(lambda t: 3, 1.0, 0.0, 4, key=0, population=4, generations=1, top_k=2).fitness",
    returns(lambda f: f == 3.0, "an integer fitness is a real scalar"),
  ),
  Case(
    "search.evolve_skips(lambda s: s.mask, 1.0, 0.0, 2, 2, block_budget=3, key=0, population=4, generations=1, top_k=2)",
    raises(TypeError, r"evolve_skips: fitness\(schedule\) must return a real .*scalar.*\(2, 2\)"),
  ),
  Case(
    "search.s3_search(lambda s: s.t, 1.0, 0.0, 2, budget=2, rounds=1, key=0)",
    raises(TypeError, r"s3_search: fitness\(schedule\) must return a real .*scalar.*\(3,\)"),
  ),
  Case(
    "search.s3_search(lambda s: None, 1.0, 0.0, 2, budget=2, rounds=1, key=0)",
    raises(TypeError, r"s3_search: fitness\(schedule\) must return"),
  ),
  # --- early_exit_loss: the model's outputs ----------------------------------------------------
  Case(
    "early_exit_loss(sched)(FakeExit(lambda x: ExitOutputs(x[:, :1], x[None], jnp.zeros((1, 4)))), x0d, y4, 0)",
    raises(
      ValueError, r"early_exit_loss: model.outputs\(x, t, cond\).out must return .*\(4, 8, 8\)"
    ),
  ),
  Case(
    "early_exit_loss(sched)(FakeExit(lambda x: ExitOutputs(x, x, jnp.zeros((1, 4)))), x0d, y4, 0)",
    raises(ValueError, r"model.outputs\(x, t, cond\).exits must return .*\(4, 4, 8, 8\)"),
  ),
  Case(
    "early_exit_loss(sched)(FakeExit(lambda x: ExitOutputs(x, x[None], jnp.zeros((4,)))), x0d, y4, 0)",
    raises(ValueError, r"model.outputs\(x, t, cond\).uncertainty must return .*\(1, 4\)"),
  ),
  Case(
    "early_exit_loss(sched)(FakeExit(lambda x: x), x0d, y4, 0)",
    raises(TypeError, r"early_exit_loss: model.outputs\(x, t, cond\) must return ExitOutputs"),
  ),
  Case("early_exit_loss(sched)(net, x0d, y4, 0)", raises(TypeError, "model must be an EarlyExit")),
  # --- wrappers forward what the network declares -------------------------------------------
  Case("dsample(net, cond=bad_labels)", raises(ValueError, r"cond: class labels .*\[0, 10\)")),
  Case("dsample(P.from_v(net, S.flow()), cond=bad_labels)", raises(ValueError, r"\[0, 10\)")),
  Case("dsample(early, cond=bad_labels)", raises(ValueError, r"cond: class labels .*\[0, 10\)")),
  Case("dsample(P.from_v(early, S.flow()), cond=bad_labels)", raises(ValueError, r"\[0, 10\)")),
  Case("dsample(skip, cond=bad_labels)", raises(ValueError, r"cond: class labels .*\[0, 10\)")),
  Case("dsample(P.from_flow(skip, S.flow()), cond=bad_labels)", raises(ValueError, r"\[0, 10\)")),
  Case(
    "P.from_v(P.from_x0(skip, sched), sched).num_classes",
    returns(lambda n: n == 10, "declarations pass through every wrapper"),
  ),
  Case(
    "Network.of(P.from_v(early, sched), batch=2).num_classes",
    returns(lambda n: n == 10, "the loop's Network forwards its denoiser's declarations"),
  ),
  Case(
    "P.from_v(lambda x, t, c: x, sched).num_classes",
    returns(lambda n: n is None, "a network that declares nothing: nothing forwarded"),
  ),
  Case("dsample(skip, cache=fora(2))", raises(TypeError, "cache")),
  Case("dsample(P.from_v(skip, S.flow()), cache=fora(2))", raises(TypeError, "cache")),
  Case(
    "jaxdiff._blocks.block_network(P.from_v(skip, sched), who='cache')",
    raises(TypeError, "cache: SkipBlocks runs its network's blocks itself"),
  ),
  Case(
    "jaxdiff._blocks.block_network(P.from_v(P.from_x0(net, sched), sched), who='x') is net",
    returns(lambda r: r is True, "the block interface is found through parameterizations"),
  ),
  # --- cross-argument checks ----------------------------------------------------------------
  Case(
    "jaxdiff.sample(den, ddim, x, ts, key=0, time_shift=jaxdiff.time_shift(S.vp_linear(), 10, 0.3))",
    raises(ValueError, "time_shift was built for another schedule than the grid ts"),
  ),
  Case(
    "jaxdiff.sample(den, ddim, x, S.timesteps(S.vp_linear(), 4), key=0, "
    "time_shift=jaxdiff.time_shift(sched, 10, 0.3))",
    raises(ValueError, "time_shift was built for another schedule"),
  ),
  Case(
    "jaxdiff.sample(den, solvers.euler(), x, S.timesteps(sched, 4, denoise_to_zero=True), key=0, "
    "time_shift=jaxdiff.time_shift(sched, 10, 0.3, variant='evaluate')).x",
    returns(lambda r: r.shape == (4, 2), "the schedule's own grid (sigma = 0 appended) is fine"),
  ),
  Case(
    "jaxdiff.sample(den, ddim, x, ts, key=0, cond=y4, "
    "guidance=G.linear_ag(3.0, jnp.zeros((6, 3)), jnp.zeros(6, bool)))",
    raises(
      ValueError, "linear_ag: the coefficients were fitted for 6 steps, but the grid ts has 4"
    ),
  ),
  Case(
    "dsample(skip, S.timesteps(S.flow(), 4))",
    raises(ValueError, "skip_blocks: the mask has one row per step of a 2-step grid"),
  ),
  Case(
    "dsample(P.from_flow(skip, S.flow()), S.timesteps_from(S.flow(), [1.0, 0.6, 0.0]))",
    raises(ValueError, r"skip_blocks: the grid ts is not the mask's grid: ts.t\[1\] = 0.6"),
  ),
  Case(f"{EE}(sched)(early, x0d, jnp.array(3), 0)", raises(ValueError, f"{EE}: y must be batch")),
  Case(
    f"{EE}(sched)(early, x0d, y4[:3], 0)",
    raises(ValueError, f"{EE}: y must be batch-first with leading size 4"),
  ),
  Case(
    "training.denoising_loss(sched, coupled=True)(lambda x, t, y: x, x, y4, 0)",
    raises(ValueError, r"coupled=True needs x0 of paired data, shape \(B, 2, \*data_shape\)"),
  ),
  Case(
    "training.denoising_loss(sched, coupled=True)(lambda x, t, y: x, jnp.ones((4, 3, 2)), y4, 0)",
    raises(ValueError, r"coupled=True needs x0 of paired data.*got shape \(4, 3, 2\)"),
  ),
  Case(
    "training.denoising_loss(sched, coupled=True)(lambda x, t, y: x, jnp.ones((4, 2, 2)), y4, 0)",
    returns(policy="reflow pairs (B, 2, *data_shape) are paired data"),
  ),
  Case("loss(lambda x, t, y: x, x, jnp.array(1), 0)", raises(ValueError, "denoising_loss: y")),
  Case("loss(lambda x, t, y: x, x, y4[:2], 0)", raises(ValueError, "y must be batch-first")),
  Case("loss(lambda x, t, y: x, x, None, 0)", returns(policy="no labels: an unconditional model")),
]

NS = dict(globals())


def test_table_is_large_enough():
  assert len(CASES) >= 60


@params(CASES)
def test_case(case):
  run(case, NS)
