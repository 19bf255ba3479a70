"""Hostile inputs to DeeDiff's early exit (``jaxdiff.models.EarlyExit``, ``ExitHeads``,
``early_exit_loss``).

Each case is a one-line reproducer over tiny networks (dim 8, depths 1, 2 and 3); the three
``returns`` cases share one jitted forward on a batch of 2.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff import schedules
from jaxdiff.models import DigitDenoiser, EarlyExit, ExitHeads, early_exit_loss  # noqa: F401
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = math.nan, math.inf

# Networks that only meet the constructors' checks are abstract (no arrays computed).
shaped = lambda depth, dim=8: nnx.eval_shape(
  lambda: DigitDenoiser(dim=dim, depth=depth, num_heads=2, mlp_ratio=1, rngs=nnx.Rngs(0))
)
net1, net3, wide = shaped(1), shaped(3), shaped(2, dim=16)
net2 = DigitDenoiser(dim=8, depth=2, num_heads=2, mlp_ratio=1, rngs=nnx.Rngs(0))
heads2 = ExitHeads(net2, rngs=nnx.Rngs(1))
heads3 = nnx.eval_shape(lambda: ExitHeads(net3, rngs=nnx.Rngs(1)))
x, t, y = jnp.ones((2, 8, 8)), jnp.full((2,), 0.5), jnp.array([1, -1])
sched = schedules.vp_cosine()
exit_ = lambda threshold, net=net2, heads=heads2: EarlyExit(net, heads, threshold=threshold)
# One compilation serves every threshold (it is a traced state leaf).
blocks = jax.jit(lambda model: model.apply(x, t, y)[1])

CASES = [
  # --- threshold -------------------------------------------------------------------------
  Case("exit_(-0.1)", raises(ValueError, "threshold must lie in")),
  Case("exit_(1.5)", raises(ValueError, "threshold must lie in")),
  Case("exit_(nan)", raises(ValueError, "threshold")),
  Case("exit_(inf)", raises(ValueError, "threshold")),
  Case("exit_(-inf)", raises(ValueError, "threshold")),
  Case("exit_(True)", raises(TypeError, "threshold")),
  Case("exit_('0.5')", raises(TypeError, "threshold")),
  Case("exit_(None)", raises(TypeError, "threshold")),
  Case("exit_(jnp.ones(3))", raises((TypeError, ValueError), "threshold")),
  Case(
    "int(blocks(exit_(0.0)))",
    returns(lambda b: b == 2, "threshold 0 never exits: every block runs"),
  ),
  Case(
    "int(blocks(exit_(1.0)))",
    returns(lambda b: b == 1, "threshold 1 exits at the first exit (u < 1)"),
  ),
  Case(
    "int(blocks(exit_(jnp.float32(0.0))))",
    returns(lambda b: b == 2, "a concrete array threshold is accepted"),
  ),
  # --- heads for another network ---------------------------------------------------------
  Case("EarlyExit(net3, heads2)", raises(ValueError, "heads were built for a network of depth 2")),
  Case("EarlyExit(net2, heads3)", raises(ValueError, "depth 3")),
  Case("EarlyExit(wide, heads2)", raises(ValueError, "dim 8")),
  Case("EarlyExit(net1, heads2)", raises(ValueError, "net has depth 1")),
  Case("EarlyExit(net2, None)", raises(TypeError, "heads must be ExitHeads")),
  Case("EarlyExit(net2, net2)", raises(TypeError, "heads must be ExitHeads")),
  Case("EarlyExit(lambda x, t, c: x, heads2)", raises(TypeError, "net must be a DigitDenoiser")),
  Case("ExitHeads(net1, rngs=nnx.Rngs(0))", raises(ValueError, "at least 2 blocks")),
  Case("ExitHeads(None, rngs=nnx.Rngs(0))", raises(TypeError, "net must be a DigitDenoiser")),
  # --- inputs of the exiting forward (the network's own checks) ---------------------------
  Case("exit_(0.5)(jnp.ones((2, 4, 4)), t, y)", raises(ValueError, "expected x of shape")),
  Case("exit_(0.5)(jnp.ones((2, 8, 8), jnp.int32), t, y)", raises(TypeError, "floating")),
  Case("exit_(0.5)(x, t, jnp.array([1, 10]))", raises(ValueError, "cond")),
  Case("exit_(0.5)(x, t, jnp.array([1.0, 2.0]))", raises(TypeError, "cond")),
  # --- the loss --------------------------------------------------------------------------
  Case("early_exit_loss(sched, variant='paper')", raises(ValueError, "variant")),
  Case("early_exit_loss(sched, prediction='score')", raises(ValueError, "prediction")),
  Case("early_exit_loss(sched, uncertainty_weight=-1.0)", raises(ValueError, "uncertainty_weight")),
  Case("early_exit_loss(sched, uncertainty_weight=nan)", raises(ValueError, "uncertainty_weight")),
  Case("early_exit_loss(sched, layer_weight=-0.5)", raises(ValueError, "layer_weight")),
  Case("early_exit_loss(sched, layer_weight='1')", raises(TypeError, "layer_weight")),
  Case("early_exit_loss(sched, label_dropout=1.0)", raises(ValueError, "label_dropout")),
  Case("early_exit_loss(sched, train_backbone=1)", raises(TypeError, "train_backbone")),
]

NS = dict(globals())


def test_table_is_large_enough():
  assert len(CASES) >= 30


@params(CASES)
def test_case(case):
  run(case, NS)
