# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to Diff-Instruct* in ``jaxdiff.finetune``: unknown distances and
variants, a non-positive pseudo-Huber constant or noise level, mismatched or non-finite
predictions, non-float data, bad rewards and denoisers (wrong shapes, not callable), bad
keys and schedules, and a CFG reference without a label. Concrete input raises naming the
argument; a traced ``sigma <= 0`` poisons its row.

Fixtures: ``X`` a (2, 3) batch, ``R`` a denoiser returning x_t, ``REW`` a (B,) reward,
``SCHED`` a flow schedule.
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp
import numpy as np

from jaxdiff import finetune as FT  # noqa: F401 - used by the reproducers
from jaxdiff import schedules
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
X = jnp.zeros((2, 3))
R = lambda x, t, c: x  # noqa: E731
REW = lambda x: jnp.sum(x, axis=1)  # noqa: E731
SCHED = schedules.flow()
NS = dict(globals())

CASES = [
  # --- options
  Case("FT.sim_loss(X, X, X, alpha=1.0, sigma=1.0, distance='l1')", raises(ValueError, "distance must be one of 'pseudo_huber', 'l2'; got 'l1'")),
  Case("FT.sim_loss(X, X, X, alpha=1.0, sigma=1.0, variant='paper')", raises(ValueError, "variant must be one of 'exact', 'sim'; got 'paper'")),
  Case("FT.sim_loss(X, X, X, alpha=1.0, sigma=1.0, c=0.0)", raises(ValueError, r"c must lie in \(0, inf\), got 0.0")),
  Case("FT.sim_loss(X, X, X, alpha=1.0, sigma=1.0, c=nan)", raises(ValueError, "c must be a number, got NaN")),
  Case("FT.sim_loss(X, X, X, alpha=1.0, sigma=1.0, distance='l2', c=0.0)", returns(lambda v: float(v) == 0.0, "c is unused by the squared L2 distance")),
  Case("FT.score_divergence(X, X, alpha=1.0, sigma=1.0, c=-1.0)", raises(ValueError, r"c must lie in \(0, inf\)")),
  # --- noise levels
  Case("FT.sim_loss(X, X, X, alpha=1.0, sigma=0.0)", raises(ValueError, "sim_loss: sigma must be positive, got 0.0")),
  Case("FT.sim_loss(X, X, X, alpha=1.0, sigma=jnp.array([1.0, -1.0]))", raises(ValueError, "sigma must be positive")),
  Case("FT.sim_loss(X, X, X, alpha=1.0, sigma=jnp.ones(3))", raises(ValueError, r"sigma must be a scalar or shaped \(2,\), got \(3,\)")),
  Case("FT.sim_loss(X, X, X, alpha=nan, sigma=1.0)", raises(ValueError, "alpha must be finite")),
  Case("FT.sim_loss(X, X, X, alpha=True, sigma=1.0)", raises(TypeError, "alpha must be a real scalar or")),
  Case("jax.jit(lambda s: FT.score_divergence(X + 1.0, X, alpha=1.0, sigma=s))(jnp.array([1.0, 0.0]))", returns(lambda d: np.isfinite(d[0]) and np.isnan(d[1]), "traced: the row with sigma <= 0 is NaN, the other untouched", nan_ok=True)),
  # --- predictions and data
  Case("FT.sim_loss(X, X[:, :2], X, alpha=1.0, sigma=1.0)", raises(ValueError, r"x0_ref must have the shape of x \(2, 3\), got \(2, 2\)")),
  Case("FT.sim_loss(X, X, X.at[0, 0].set(nan), alpha=1.0, sigma=1.0)", raises(ValueError, "x0_fake must be finite")),
  Case("FT.sim_loss(jnp.zeros((2, 3), jnp.int32), X, X, alpha=1.0, sigma=1.0)", raises(TypeError, "x must be a floating array, got dtype int32")),
  Case("FT.sim_loss(jnp.zeros((0, 3)), jnp.zeros((0, 3)), jnp.zeros((0, 3)), alpha=1.0, sigma=1.0)", raises(ValueError, r"x must be a non-empty batch \(B, ...\), got shape \(0, 3\)")),
  Case("FT.sim_loss(X, X, X, alpha=1.0, sigma=1.0, weight=jnp.ones(5))", raises(ValueError, r"weight must be a scalar or shaped \(2,\)")),
  Case("FT.sim_loss(X, X, X, alpha=1.0, sigma=1.0, weight=inf)", raises(ValueError, "weight must be finite")),
  Case("FT.score_divergence(X, X[:1], alpha=1.0, sigma=1.0)", raises(ValueError, r"x0_ref must have the shape of x")),
  # --- the full loss: callables, schedule, key, reward scale
  Case("FT.diff_instruct_star_loss(REW, R, R, X, 0.5, schedule=SCHED, key=0)", returns(lambda v: float(v) == 0.0, "reference == fake and a zero reward at zero: the loss is 0")),
  Case("FT.diff_instruct_star_loss(None, R, R, X, 0.5, schedule=SCHED, key=0)", raises(TypeError, "reward must be callable")),
  Case("FT.diff_instruct_star_loss(REW, R, 3, X, 0.5, schedule=SCHED, key=0)", raises(TypeError, "denoise_fake must be callable")),
  Case("FT.diff_instruct_star_loss(lambda x: x, R, R, X, 0.5, schedule=SCHED, key=0)", raises(ValueError, r"reward\(x\) must return a real floating-point array of shape \(2,\)")),
  Case("FT.diff_instruct_star_loss(lambda x: jnp.sum(x), R, R, X, 0.5, schedule=SCHED, key=0)", raises(ValueError, r"reward\(x\) must return")),
  Case("FT.diff_instruct_star_loss(REW, lambda x, t, c: x[:, :1], R, X, 0.5, schedule=SCHED, key=0)", raises(ValueError, r"denoise_ref\(x_t, t, cond\) must return x's shape")),
  Case("FT.diff_instruct_star_loss(REW, R, R, X, 0.5, schedule=SCHED, key=0, reward_scale=-1.0)", raises(ValueError, r"reward_scale must lie in \[0, inf\), got -1.0")),
  Case("FT.diff_instruct_star_loss(REW, R, R, X, 0.5, schedule=None, key=0)", raises(TypeError, "schedule")),
  Case("FT.diff_instruct_star_loss(REW, R, R, X, 0.5, schedule=SCHED, key='a')", raises(TypeError, "key must be an int seed or a JAX PRNG key")),
  Case("FT.diff_instruct_star_loss(REW, R, R, X, jnp.ones(4), schedule=SCHED, key=0)", raises(ValueError, r"t must be a scalar or shaped \(2,\), got \(4,\)")),
  # --- the CFG reference
  Case("FT.cfg_reference(3, scale=2.0)", raises(TypeError, "cfg_reference: denoise must be callable")),
  Case("FT.cfg_reference(R, scale=nan)", raises(ValueError, "scale must be a number, got NaN")),
  Case("FT.cfg_reference(R, scale=2.0, null_cond=None)", raises(TypeError, "null_cond must be a label/array or a callable")),
  Case("FT.cfg_reference(R, scale=2.0)(X, 0.5, None)", raises(ValueError, "cond is required")),
  Case("FT.cfg_reference(lambda x, t, c: x[:1], scale=2.0)(X, 0.5, 0)", raises(ValueError, r"denoise\(x_t, t, cond\) must return x_t's shape")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
