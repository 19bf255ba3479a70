"""Hostile inputs to the training recipes, part one: regime adaptation and
GhostBatchNorm, MultiSampleDropout, PS-KD targets, MaskSparsity (one line a case; harness
in tests/bad_input/harness.py)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import optim as O
from optim.layers import GhostBatchNorm as GBN
from optim.layers import MultiSampleDropout as MSD
from optim.losses import pskd_alpha, pskd_targets
from optim.pruning import smallest_groups
from optim.schedules import regime_adaptation
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
R = nnx.Rngs(0)
LIN = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
X = jnp.ones((6, 4))
Y1 = jax.nn.one_hot(jnp.array([0, 2]), 3)
PR = jnp.full((2, 3), 1 / 3)
P = {"bn": {"scale": jnp.array([0.5, -0.2, 1.0])}, "w": jnp.ones((2, 3))}
GR = [{"bn/scale": 0}]
M = [jnp.array([False, True, True])]


def gbn_jit(x, g=4):
  """A GhostBatchNorm step traced under jit (shapes are static: the check still raises)."""
  graphdef, state = nnx.split(GBN(4, ghost_batch_size=g, rngs=nnx.Rngs(0)))
  return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)


def ms_step(tx, params=P, with_params=True):
  grads = jax.tree.map(jnp.ones_like, params)
  return tx.update(grads, tx.init(params), params if with_params else None)[0]


NS = {
  **{k: v for k, v in globals().items() if k.isupper() and not k.startswith("_")},
  "O": O,
  "GBN": GBN,
  "MSD": MSD,
  "jax": jax,
  "jnp": jnp,
  "np": np,
  "nnx": nnx,
  "nan": nan,
  "inf": inf,
  "gbn_jit": gbn_jit,
  "ms_step": ms_step,
  "pskd_alpha": pskd_alpha,
  "pskd_targets": pskd_targets,
  "regime_adaptation": regime_adaptation,
  "smallest_groups": smallest_groups,
}
_all_nan = lambda r: bool(jnp.all(jnp.isnan(r)))

CASES = [
  # -- regime adaptation ----------------------------------------------------------------------
  Case("regime_adaptation(0.1, 0, 512, 100)", raises(ValueError, "base_batch_size must lie")),
  Case("regime_adaptation(0.1, 32, 512.5, 100)", raises(ValueError, "batch_size must be an int")),
  Case("regime_adaptation(0.1, 32, 512, 0)", raises(ValueError, "base_num_steps must lie")),
  Case("regime_adaptation(0.1, 32, '512', 100)", raises(TypeError, "batch_size must be a real")),
  Case("regime_adaptation(-0.1, 32, 512, 100)", raises(ValueError, "learning_rate must lie")),
  Case("regime_adaptation(nan, 32, 512, 100)", raises(ValueError, "learning_rate must be a num")),
  Case(
    "regime_adaptation(0.1, 32, 512, 100, variant='linear')", raises(ValueError, "variant must")
  ),
  Case(
    "jax.jit(lambda b: regime_adaptation(0.1, 32, b, 100).num_steps)(512)",
    raises(TypeError, "batch_size must be a concrete"),
  ),
  Case(
    "regime_adaptation(0.1, 512, 32, 100, variant='epochs')",
    returns(
      lambda r: r.num_steps == 1600 and abs(r.learning_rate - 0.025) < 1e-12,
      "a smaller batch is a ratio below 1: more updates, a smaller rate",
    ),
  ),
  # -- GhostBatchNorm -------------------------------------------------------------------------
  Case(
    "GBN(4, ghost_batch_size=4, rngs=R)(X)", raises(ValueError, "ghost_batch_size=4 must divide")
  ),
  Case("gbn_jit(X)", raises(ValueError, "ghost_batch_size=4 must divide")),
  Case(
    "GBN(4, ghost_batch_size=8, rngs=R)(X)", raises(ValueError, "ghost_batch_size=8 must divide")
  ),
  Case(
    "GBN(4, ghost_batch_size=2, rngs=R)(X[:0])",
    raises(ValueError, "ghost_batch_size=2 must divide"),
  ),
  Case(
    "GBN(4, ghost_batch_size=4, use_running_average=True, rngs=R)(X)",
    returns(lambda y: y.shape == (6, 4), "evaluation uses the running statistics: any batch"),
  ),
  Case("gbn_jit(jnp.ones((8, 4)))", returns(lambda y: y.shape == (8, 4), "8 = 2 ghost batches")),
  Case("GBN(4, ghost_batch_size=0, rngs=R)", raises(ValueError, "ghost_batch_size must lie")),
  Case(
    "GBN(4, ghost_batch_size=2.5, rngs=R)", raises(ValueError, "ghost_batch_size must be an int")
  ),
  Case(
    "GBN(4, ghost_batch_size='4', rngs=R)", raises(TypeError, "ghost_batch_size must be a real")
  ),
  Case(
    "GBN(4, ghost_batch_size=True, rngs=R)", raises(TypeError, "ghost_batch_size must be a real")
  ),
  Case("GBN(0, ghost_batch_size=2, rngs=R)", raises(ValueError, "num_features must lie")),
  Case("GBN(4, ghost_batch_size=2, momentum=1.5, rngs=R)", raises(ValueError, "momentum must lie")),
  Case("GBN(4, ghost_batch_size=2, momentum=nan, rngs=R)", raises(ValueError, "momentum must be")),
  Case("GBN(4, ghost_batch_size=2, epsilon=-1.0, rngs=R)", raises(ValueError, "epsilon must lie")),
  Case("GBN(4, ghost_batch_size=2, axis=1.0, rngs=R)", raises(TypeError, "axis must be an int")),
  Case(
    "GBN(4, ghost_batch_size=2, use_running_average='no', rngs=R)",
    raises(TypeError, "use_running_average must be a bool"),
  ),
  Case(
    "GBN(4, ghost_batch_size=2, axis=0, rngs=R)(X)",
    raises(ValueError, "axis=0 must name a feature"),
  ),
  Case(
    "GBN(4, ghost_batch_size=2, axis=2, rngs=R)(X)",
    raises(ValueError, "axis=2 must name a feature"),
  ),
  Case("GBN(5, ghost_batch_size=2, rngs=R)(X)", raises(ValueError, "num_features = 5")),
  Case("GBN(4, ghost_batch_size=2, rngs=R)(jnp.ones(4))", raises(ValueError, "batch axis")),
  Case(
    "GBN(4, ghost_batch_size=2, rngs=R)(jnp.ones((6, 4), jnp.int32))",
    raises(TypeError, "x must be a floating-point"),
  ),
  Case(
    "GBN(4, ghost_batch_size=2, use_running_average=None, rngs=R)(X)",
    raises(ValueError, "use_running_average is None"),
  ),
  Case(
    "GBN(4, ghost_batch_size=3, rngs=R)(X.at[0, 0].set(nan))[3:]",
    returns(policy="a NaN input stays in its own ghost batch: the other one is finite"),
  ),
  # -- MultiSampleDropout ---------------------------------------------------------------------
  Case("MSD(LIN, rate=1.0, rngs=R)", raises(ValueError, r"rate must lie in \[0, 1\)")),
  Case("MSD(LIN, rate=-0.1, rngs=R)", raises(ValueError, "rate must lie")),
  Case("MSD(LIN, rate=nan, rngs=R)", raises(ValueError, "rate must be a number")),
  Case("MSD(LIN, rate=0.5, num_samples=0, rngs=R)", raises(ValueError, "num_samples must lie")),
  Case("MSD(LIN, rate=0.5, num_samples=2.5, rngs=R)", raises(ValueError, "num_samples must be an")),
  Case("MSD(lambda x: x, rate=0.5, rngs=R)", raises(TypeError, "head must be an nnx.Module")),
  Case(
    "MSD(nnx.BatchNorm(4, rngs=R), rate=0.5, rngs=R)",
    raises(TypeError, "head keeps running statistics"),
  ),
  Case("MSD(LIN, rate=0.5, rngs=3)", raises(TypeError, "rngs must be an nnx.Rngs")),
  Case("MSD(LIN, rate=0.5, deterministic='no', rngs=R)", raises(TypeError, "deterministic must")),
  Case("MSD(LIN, rate=0.5)(X)", raises(ValueError, "no key: pass key=")),
  Case("MSD(LIN, rate=0.5, rngs=R)(X, key='a')", raises(TypeError, "key")),
  Case("MSD(LIN, rate=0.5, rngs=R)(X, key=2.5)", raises(TypeError, "key")),
  Case(
    "MSD(LIN, rate=0.5)(X, key=0)",
    returns(lambda y: y.shape == (8, 6, 3), "an int seed is a key (the key policy)"),
  ),
  Case(
    "MSD(LIN, rate=0.5, deterministic=None, rngs=R)(X)",
    raises(ValueError, "deterministic is None"),
  ),
  # -- PS-KD ----------------------------------------------------------------------------------
  Case("pskd_targets(Y1, PR, 1.5)", raises(ValueError, r"alpha must lie in \[0, 1\]")),
  Case("pskd_targets(Y1, PR, -0.1)", raises(ValueError, r"alpha must lie in \[0, 1\]")),
  Case("pskd_targets(Y1, PR, nan)", raises(ValueError, "alpha must be a number")),
  Case("pskd_targets(Y1, PR, jnp.array([0.1, 0.2]))", raises(TypeError, "alpha must be a scalar")),
  Case("pskd_targets(Y1, PR, True)", raises(TypeError, "alpha must be a real")),
  Case("pskd_targets(Y1, PR[:1], 0.5)", raises(ValueError, "predictions shape")),
  Case("pskd_targets(jnp.array([0, 2]), PR, 0.5)", raises(TypeError, "labels must be floating")),
  Case("pskd_targets(Y1, PR > 0, 0.5)", raises(TypeError, "predictions must be floating")),
  Case(
    "jax.jit(lambda a: pskd_targets(Y1, PR, a))(1.5)",
    returns(_all_nan, "a traced alpha outside [0, 1] poisons the targets", nan_ok=True),
  ),
  Case("pskd_alpha(10, 10)", raises(ValueError, r"epoch must lie in \[0, 9\]")),
  Case("pskd_alpha(-1, 10)", raises(ValueError, "epoch must lie")),
  Case("pskd_alpha(1.5, 10)", raises(TypeError, "epoch must be an integer")),
  Case("pskd_alpha(True, 10)", raises(TypeError, "epoch must be an integer")),
  Case("pskd_alpha(0, 0)", raises(ValueError, "num_epochs must lie")),
  Case("pskd_alpha(0, 10, alpha_T=1.2)", raises(ValueError, "alpha_T must lie")),
  Case("jax.jit(lambda e: pskd_alpha(e, 10))(1.0)", raises(TypeError, "epoch must be an integer")),
  # -- MaskSparsity ---------------------------------------------------------------------------
  Case("O.mask_sparsity(-1.0, GR, M)", raises(ValueError, "strength must lie")),
  Case("O.mask_sparsity(nan, GR, M)", raises(ValueError, "strength must be a number")),
  Case("O.mask_sparsity(0.1, {}, M)", raises(ValueError, "groups must be a non-empty sequence")),
  Case(
    "O.mask_sparsity(0.1, GR, {'bn/scale': M[0]})", raises(TypeError, "mask must be a sequence")
  ),
  Case(
    "ms_step(O.mask_sparsity(0.1, GR, M + M))",
    raises(ValueError, "mask has 2 entries but groups has 1"),
  ),
  Case(
    "ms_step(O.mask_sparsity(0.1, GR, [M[0][:2]]))",
    raises(ValueError, r"mask\[0\] has shape \(2,\)"),
  ),
  Case(
    "ms_step(O.mask_sparsity(0.1, GR, [jnp.ones(3)]))",
    raises(TypeError, r"mask\[0\] must be a bool"),
  ),
  Case(
    "ms_step(O.mask_sparsity(0.1, GR, lambda p: [M[0][:1]]))",
    raises(ValueError, r"mask\[0\] has shape \(1,\)"),
  ),
  Case(
    "ms_step(O.mask_sparsity(0.1, [{'bn/gamma': 0}], M))",
    raises(ValueError, "'bn/gamma', not a leaf"),
  ),
  Case(
    "ms_step(O.mask_sparsity(0.1, [{'bn/scale': 1}], M))",
    raises(ValueError, "axis 1 is out of range"),
  ),
  Case(
    "ms_step(O.mask_sparsity(0.1, GR, M), with_params=False)",
    raises(ValueError, "needs the current parameters"),
  ),
  Case(
    "ms_step(O.mask_sparsity(0.1, GR, M), params={'bn': {'scale': jnp.ones(3, jnp.int32)}, 'w': jnp.ones((2, 3))})",
    raises(TypeError, "params"),
  ),
  Case(
    "ms_step(O.mask_sparsity(0.1, GR, [[False, True, True]]))",
    returns(lambda u: np.allclose(u["bn"]["scale"], [1.0, 0.9, 1.1]), "a list of bools is a mask"),
  ),
  Case("smallest_groups(P, GR, 1.5)", raises(ValueError, "fraction must lie")),
  Case("smallest_groups(P, [], 0.5)", raises(ValueError, "groups must be a non-empty")),
  Case(
    "smallest_groups(P, [{'bn/scale': 0, 'w': 0}], 0.5)",
    raises(ValueError, "common, non-zero size"),
  ),
]


@params(CASES)
def test_recipes_part1_bad_input(case):
  run(case, NS)
