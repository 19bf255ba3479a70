# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to ``optim.bilevel.bsvrb_init``, ``bsvrb_step`` and ``bsvrb`` (BSVRB):
unknown variants, unstacked or empty lower-level variables, bad block indices, batches of
the wrong size, non-scalar losses, hyperparameters out of range, a bad sampler or budget.

Fixtures: ``X`` the upper variable (2,), ``Y`` 4 stacked blocks (4, 2), ``S1``/``S2`` their
v1/v2 states, ``F, G`` a quadratic block pair with ``y_i*(x) = c_i x``, ``C`` the per-block
data (4, 1), ``B`` two sampled blocks with their batch ``C[B]``, ``KW`` the losses and step.
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp

from optim.bilevel import bsvrb, bsvrb_init  # noqa: F401 - used by the reproducers
from optim.bilevel import bsvrb_step as step  # noqa: F401 - used by the reproducers
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
X = jnp.array([0.5, -1.0])
Y = jnp.zeros((4, 2))
C = jnp.arange(1.0, 5.0)[:, None]
F = lambda x, y, c: 0.5 * jnp.sum((y - 1.0) ** 2)  # noqa: E731
G = lambda x, y, c: 0.5 * jnp.sum((y - c * x) ** 2)  # noqa: E731
S1 = bsvrb_init(X, Y, variant="v1")
S2 = bsvrb_init(X, Y, variant="v2")
B = jnp.array([0, 2])
KW = dict(outer_loss=F, inner_loss=G, learning_rate=0.1)
SAMPLE = lambda k, b: C[b]  # noqa: E731
NS = dict(globals())

CASES = [
  # --- bsvrb_init
  Case("bsvrb_init(X, Y, variant='v3')", raises(ValueError, "variant must be one of 'v1', 'v2'")),
  Case("bsvrb_init(jnp.arange(2), Y)", raises(TypeError, "x has dtype int(32|64)")),
  Case("bsvrb_init(X, jnp.zeros((4, 2), jnp.int32))", raises(TypeError, "y has dtype int32")),
  Case("bsvrb_init(X, {})", raises(ValueError, "y must hold at least one array")),
  Case("bsvrb_init(X, {'a': jnp.zeros((3, 2)), 'b': jnp.zeros((4, 2))})", raises(ValueError, "y must be stacked over blocks")),
  Case("bsvrb_init(X, {'a': jnp.zeros(()), 'b': jnp.zeros((4, 2))})", raises(ValueError, "y must be stacked over blocks")),
  Case("bsvrb_init(X, jnp.zeros((0, 2)))", raises(ValueError, "y must hold at least one block")),
  Case("bsvrb_init(X, Y, block_sharding='blocks')", raises(TypeError, "block_sharding must be a jax.sharding.Sharding")),
  Case("bsvrb_init(X, {'a': Y, 'b': jnp.zeros((4, 3))}).hess.shape", returns(lambda s: s == (4, 5, 5), "a pytree block: v1 tracks the Hessian of the raveled block (2 + 3 entries)")),
  # --- bsvrb_step: state, blocks, batch
  Case("step(None, B, C[B], **KW)", raises(TypeError, "state must be a BSVRBState")),
  Case("step(S1, jnp.array([0.0, 2.0]), C[B], **KW)", raises(TypeError, "blocks must be an integer array")),
  Case("step(S1, jnp.array([[0, 2]]), C[B], **KW)", raises(ValueError, "blocks must be a 1-d array of between 1 and m=4")),
  Case("step(S1, jnp.arange(5), C, **KW)", raises(ValueError, "blocks must be a 1-d array of between 1 and m=4")),
  Case("step(S1, jnp.array([0, 4]), C[B], **KW)", raises(ValueError, r"blocks must lie in \[0, 4\)")),
  Case("step(S1, jnp.array([-1, 2]), C[B], **KW)", raises(ValueError, r"blocks must lie in \[0, 4\)")),
  Case("step(S1, jnp.array([2, 2]), C[B], **KW)", raises(ValueError, "blocks must be distinct")),
  Case("step(S1, B, C, **KW)", raises(ValueError, "batch must be batch-first with leading size 2")),
  Case("step(S1, B, 1.0, **KW)", raises(ValueError, "batch must be batch-first with leading size 2")),
  # --- bsvrb_step: losses
  Case("step(S1, B, C[B], outer_loss=3.0, inner_loss=G, learning_rate=0.1)", raises(TypeError, "outer_loss must be a callable")),
  Case("step(S1, B, C[B], outer_loss=F, inner_loss=lambda x, y, c: y - c * x, learning_rate=0.1)", raises(TypeError, "inner_loss must return a real floating-point scalar")),
  Case("step(S1, B, C[B], outer_loss=lambda x, y: jnp.sum(y), inner_loss=G, learning_rate=0.1)", raises(TypeError, r"outer_loss must be a function \(x, y_i, batch_i\) -> scalar")),
  # --- bsvrb_step: hyperparameters
  Case("step(S1, B, C[B], outer_loss=F, inner_loss=G, learning_rate=0.0)", raises(ValueError, r"learning_rate must lie in \(0, inf\)")),
  Case("step(S1, B, C[B], inner_learning_rate=-1.0, **KW)", raises(ValueError, r"inner_learning_rate must lie in \(0, inf\)")),
  Case("step(S2, B, C[B], adjoint_learning_rate=nan, **KW)", raises(ValueError, "adjoint_learning_rate must be a number, got NaN")),
  Case("step(S1, B, C[B], alpha=0.0, **KW)", raises(ValueError, r"alpha must lie in \(0, 1\]")),
  Case("step(S1, B, C[B], alpha=1.5, **KW)", raises(ValueError, r"alpha must lie in \(0, 1\]")),
  Case("step(S1, B, C[B], beta=0.0, **KW)", raises(ValueError, r"beta must lie in \(0, 1\]")),
  Case("step(S1, B, C[B], gamma=-1.0, **KW)", raises(ValueError, r"gamma must lie in \[0, inf\)")),
  Case("step(S1, B, C[B], gamma='auto', **KW)", raises(TypeError, "gamma must be a real number")),
  Case("step(S1, B, C[B], hessian_floor=0.0, **KW)", raises(ValueError, r"hessian_floor must lie in \(0, inf\)")),
  Case("step(S2, B, C[B], adjoint_radius=0.0, **KW)", raises(ValueError, r"adjoint_radius must lie in \(0, inf\]")),
  Case("step(S1, B, C[B], lower_update='lazy', **KW)", raises(ValueError, "lower_update must be one of 'all', 'sampled'")),
  Case("step(S1, B, C[B], alpha=1.0, beta=1.0, gamma=0.0, **KW).x", returns(lambda x: x.shape == (2,), "alpha = beta = 1, gamma = 0: the plain minibatch estimates (the non-VR baseline)")),
  Case("step(S2, B, C[B], adjoint_radius=1e-3, **KW).v", returns(lambda v: bool(jnp.all(jnp.linalg.norm(v, axis=1) <= 1e-3 + 1e-9)), "v2's adjoints are projected onto the ball of radius adjoint_radius")),
  Case("jax.jit(lambda b: step(S1, b, C[jnp.clip(b, 0, 3)], **KW).x)(jnp.array([0, 4]))", returns(lambda x: bool(jnp.all(jnp.isnan(x))), "traced out-of-range blocks: x is NaN (the poison)", nan_ok=True)),
  # --- bsvrb (the runner)
  Case("bsvrb(F, G, X, Y, None, key=0, learning_rate=0.1)", raises(TypeError, "sample_batch must be a callable")),
  Case("bsvrb(F, G, X, Y, SAMPLE, key='a', learning_rate=0.1)", raises(TypeError, "key must be an int seed or a JAX PRNG key")),
  Case("bsvrb(F, G, X, Y, SAMPLE, key=0, learning_rate=0.1, num_blocks=0)", raises(ValueError, r"num_blocks must lie in \[1, 4\]")),
  Case("bsvrb(F, G, X, Y, SAMPLE, key=0, learning_rate=0.1, num_blocks=5)", raises(ValueError, r"num_blocks must lie in \[1, 4\]")),
  Case("bsvrb(F, G, X, Y, SAMPLE, key=0, learning_rate=0.1, max_iterations=0)", raises(ValueError, r"max_iterations must lie in \[1, inf\)")),
  Case("bsvrb(F, G, X, Y, SAMPLE, key=0, learning_rate=0.1, tol=-1.0)", raises(ValueError, r"tol must lie in \[0, inf\)")),
  Case("bsvrb(F, G, X, Y, lambda k, b: C, key=0, learning_rate=0.1, num_blocks=2)", raises(ValueError, "batch must be batch-first with leading size 2")),
  Case("bsvrb(F, G, X, Y, SAMPLE, key=0, learning_rate=0.1, variant='v0')", raises(ValueError, "variant must be one of")),
  Case("bsvrb(F, G, X, Y, SAMPLE, key=0, learning_rate=0.1, max_iterations=5, tol=0.0).n_iters", returns(lambda n: int(n) == 5, "tol = 0: runs max_iterations")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
