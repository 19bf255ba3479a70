# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to ``optim.games`` (Small-Gain Nash) and ``optim.loops.sso_step`` /
``sso_surrogate``: mismatched player pytrees, non-callable losses, non-finite or
mis-shaped certificates and weights, zero budgets, bad step sizes and variants, wrong
model outputs. Concrete input raises naming the argument; traced non-finite bounds give a
certificate that is not certified, with NaN rates.

Fixtures: ``L`` a two-player quadratic game with one coordinate each, ``P`` its start,
``B`` certified bounds; ``X, Y`` a 2x2 least-squares problem, ``M, LS`` its model and loss.
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp
import numpy as np
import optax  # noqa: F401 - used by the reproducers

from optim import games as G  # noqa: F401 - used by the reproducers
from optim.loops import sso_step, sso_surrogate  # noqa: F401 - used by the reproducers
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
L = [
  lambda p: jnp.sum(p[0] ** 2 + 2.0 * p[0] * p[1]),
  lambda p: jnp.sum(0.5 * p[1] ** 2 - 0.1 * p[0] * p[1]),
]
P = (jnp.ones(1), jnp.ones(1))
B = G.GameBounds(jnp.array([2.0, 1.0]), jnp.array([[2.0, 2.0], [0.1, 1.0]]))
X, Y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([1.0, 1.0])
M = lambda w: X @ w  # noqa: E731
LS = lambda z: 0.5 * jnp.sum((z - Y) ** 2)  # noqa: E731
SGD = optax.sgd(0.1)
NS = dict(globals())

CASES = [
  # --- players: mismatched pytrees, callables
  Case("G.game_bounds(L, (jnp.ones(1),), key=0)", raises(ValueError, "params must hold one pytree per player: got 1 for 2 losses")),
  Case("G.nash_flow(L, P + (jnp.ones(1),), step_size=0.1)", raises(ValueError, "params must hold one pytree per player: got 3 for 2 losses")),
  Case("G.pseudo_gradient(L[0], P)", raises(TypeError, "losses must be a non-empty list or tuple of callables")),
  Case("G.pseudo_gradient([L[0], 3.0], P)", raises(TypeError, r"losses\[1\] must be callable")),
  Case("G.pseudo_gradient(L, jnp.ones(2))", raises(TypeError, "params must be a list or tuple with one pytree per player")),
  Case("G.pseudo_gradient(L, (jnp.ones(1), jnp.arange(1)))", raises(TypeError, r"params\[1\]")),
  Case("G.pseudo_gradient([lambda p: p[0], L[1]], P)", raises(TypeError, r"losses\[0\] must return a real floating-point scalar")),
  Case("G.nash_flow(L, P, step_size=0.1, projection=[None])", raises(ValueError, "projection must be None or a list/tuple with one entry per player")),
  Case("G.nash_flow(L, P, step_size=0.1, projection=[None, 1.0])", raises(TypeError, r"projection\[1\] must be None or callable")),
  # --- certificates: non-finite, mis-shaped, weights
  Case("G.small_gain_certificate(G.GameBounds(jnp.array([nan, 1.0]), B.block_norms))", raises(ValueError, "bounds.curvature must be finite")),
  Case("G.small_gain_certificate(G.GameBounds(B.curvature, B.block_norms.at[0, 1].set(inf)))", raises(ValueError, "bounds.block_norms must be finite")),
  Case("G.small_gain_certificate(G.GameBounds(B.curvature, -B.block_norms))", raises(ValueError, "bounds.block_norms must be non-negative")),
  Case("G.small_gain_certificate(G.GameBounds(B.curvature, jnp.ones((3, 3))))", raises(ValueError, r"curvature of shape \(n,\) and block_norms of shape \(n, n\)")),
  Case("G.small_gain_certificate((B.curvature, B.block_norms))", raises(TypeError, "bounds must be a GameBounds")),
  Case("G.small_gain_certificate(B, weights=jnp.ones(3))", raises(ValueError, r"weights must have shape \(2,\)")),
  Case("G.small_gain_certificate(B, weights=jnp.array([1.0, 0.0]))", raises(ValueError, "weights must be positive and finite")),
  Case("jax.jit(lambda m: G.small_gain_certificate(G.GameBounds(m, B.block_norms)))(jnp.array([nan, 1.0]))", returns(lambda c: (not bool(c.certified)) and bool(jnp.isnan(c.rate)), "traced non-finite bounds: not certified, NaN rate", nan_ok=True)),
  Case("G.small_gain_certificate(G.GameBounds(jnp.array([0.0, 1.0]), B.block_norms)).certified", returns(lambda c: not bool(c), "zero curvature: not certified")),
  Case("G.contraction_factor(B, 0.1)", raises(TypeError, "certificate must be a SmallGainCertificate")),
  Case("G.contraction_factor(G.small_gain_certificate(B), 0.0)", raises(ValueError, r"step_size must lie in \(0, inf\)")),
  Case("G.contraction_factor(G.small_gain_certificate(B), 0.1, variant='rk2')", raises(ValueError, "variant")),
  # --- zero budgets, step sizes
  Case("G.game_bounds(L, P, key=0, num_iterations=0)", raises(ValueError, r"num_iterations must lie in \[1, inf\)")),
  Case("G.nash_flow(L, P, step_size=0.1, max_iterations=0)", raises(ValueError, r"max_iterations must lie in \[1, inf\)")),
  Case("G.nash_flow(L, P, step_size=0.0)", raises(ValueError, r"step_size must lie in \(0, inf\)")),
  Case("G.nash_flow(L, P, step_size=nan)", raises(ValueError, "step_size must be a number")),
  Case("G.nash_flow(L, P, step_size=0.1, tol=-1.0)", raises(ValueError, r"tol must lie in \[0, inf\)")),
  Case("G.nash_flow(L, P, step_size=0.1, variant='midpoint')", raises(ValueError, "variant")),
  Case("G.nash_flow([lambda p: jnp.sum(jnp.exp(100.0 * p[0])), L[1]], P, step_size=1e10, max_iterations=5)", raises(ValueError, "pseudo-gradient became non-finite")),
  Case("G.nash_flow(L, P, step_size=0.1, max_iterations=3).n_iters", returns(lambda k: int(k) == 3, "tol = 0 runs max_iterations steps")),
  # --- SSO
  Case("sso_step(M, LS, jnp.zeros(2), optimizer=SGD, num_inner_steps=0, eta=1.0)", raises(ValueError, r"num_inner_steps must lie in \[1, inf\)")),
  Case("sso_step(M, LS, jnp.zeros(2), optimizer=SGD, num_inner_steps=2, eta=0.0)", raises(ValueError, r"eta must lie in \(0, inf\)")),
  Case("sso_step(M, LS, jnp.zeros(2), optimizer=SGD, num_inner_steps=2, eta=inf)", raises(ValueError, "eta must be finite")),
  Case("sso_step(M, LS, jnp.zeros(2), optimizer=optax.sgd, num_inner_steps=2, eta=1.0)", raises(TypeError, "optimizer must be an optax GradientTransformation")),
  Case("sso_step(M, 3.0, jnp.zeros(2), optimizer=SGD, num_inner_steps=2, eta=1.0)", raises(TypeError, "loss_fn must be callable")),
  Case("sso_step(M, LS, jnp.zeros(2), optimizer=SGD, num_inner_steps=2, eta=1.0, regularizer=1.0)", raises(TypeError, "regularizer must be None or callable")),
  Case("sso_step(M, lambda z: z, jnp.zeros(2), optimizer=SGD, num_inner_steps=2, eta=1.0)", raises(TypeError, "loss_fn must return a real floating-point scalar")),
  Case("sso_step(M, LS, jnp.zeros(2), optimizer=SGD, num_inner_steps=2, eta=1.0, outputs=jnp.zeros(3))", raises(ValueError, "outputs")),
  Case("sso_step(M, lambda z: jnp.sum(z) * nan, jnp.zeros(2), optimizer=SGD, num_inner_steps=2, eta=1.0)", raises(ValueError, "loss_fn\\(outputs\\) must be finite")),
  Case("sso_step(M, LS, jnp.arange(2), optimizer=SGD, num_inner_steps=2, eta=1.0)", raises(TypeError, "params")),
  Case("sso_surrogate(M, LS, jnp.zeros(2), eta=-1.0)", raises(ValueError, r"eta must lie in \(0, inf\)")),
  Case("sso_step(M, LS, jnp.zeros(2), optimizer=SGD, num_inner_steps=1, eta=1.0).params", returns(lambda p: np.allclose(p, [0.1, 0.2]), "one inner step is one gradient step on the loss")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
