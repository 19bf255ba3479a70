"""Hostile inputs to optim.local's tpSGD for RNNs: layers, projections, sequences, labels and
switches (one line a case; harness in tests/bad_input/harness.py)."""

import jax  # noqa: F401 - the reproducers use these names
import jax.numpy as jnp
import numpy as np

from optim.local import rnn_apply, rnn_init, tpsgd_projections, tpsgd_rnn_grads  # noqa: F401
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
SIZES = [4, 6, 3]
RNN = rnn_init(SIZES, key=0)
PROJ = tpsgd_projections(SIZES, key=1)
X = jnp.ones((5, 3, 4))
Y = jnp.array([0, 1, 2, 0, 1])

CASES = [
  Case("rnn_init([4, 3], key=0)", raises(ValueError, "sizes")),
  Case("rnn_init([4, 0, 3], key=0)", raises(ValueError, r"sizes\[1\]")),
  Case("rnn_init([4, 2.5, 3], key=0)", raises((TypeError, ValueError), r"sizes\[1\]")),
  Case("rnn_init(SIZES, key='a')", raises(TypeError, "key")),
  Case("tpsgd_rnn_grads(RNN[1:], [], X, Y)", raises(ValueError, "params")),
  Case("tpsgd_rnn_grads(RNN, [], X, Y)", raises(ValueError, "projections")),
  Case("tpsgd_rnn_grads(RNN, [jnp.ones((3, 5))], X, Y)", raises(ValueError, r"projections\[0\]")),
  Case("tpsgd_rnn_grads(RNN, [jnp.ones((6, 3))], X, Y)", raises(ValueError, r"projections\[0\]")),
  Case(
    "tpsgd_rnn_grads([dict(RNN[0], u=jnp.ones((6, 5))), RNN[1]], PROJ, X, Y)",
    raises(ValueError, r"params\[0\]"),
  ),
  Case(
    "tpsgd_rnn_grads([{'w': RNN[0]['w'], 'b': RNN[0]['b']}, RNN[1]], PROJ, X, Y)",
    raises(ValueError, r"params\[0\]"),
  ),
  Case(
    "tpsgd_rnn_grads([RNN[0], {'w': jnp.ones((5, 3)), 'b': jnp.ones(3)}], PROJ, X, Y)",
    raises(ValueError, r"params\[1\]"),
  ),
  Case("tpsgd_rnn_grads(RNN, PROJ, jnp.ones((5, 4)), Y)", raises(ValueError, "x must have shape")),
  Case("tpsgd_rnn_grads(RNN, PROJ, jnp.ones((5, 3, 7)), Y)", raises(ValueError, "x must have")),
  Case("tpsgd_rnn_grads(RNN, PROJ, X[:, :0], Y)", raises(ValueError, "at least one step")),
  Case("tpsgd_rnn_grads(RNN, PROJ, X[:0], Y[:0])", raises(ValueError, "at least one sequence")),
  Case(
    "tpsgd_rnn_grads(RNN, PROJ, jnp.ones((5, 3, 4), int), Y)", raises(TypeError, "x must be float")
  ),
  Case("tpsgd_rnn_grads(RNN, PROJ, X, Y.at[1].set(3))", raises(ValueError, "labels.*3")),
  Case("tpsgd_rnn_grads(RNN, PROJ, X, Y.at[1].set(-1))", raises(ValueError, "labels")),
  Case("tpsgd_rnn_grads(RNN, PROJ, X, Y.astype(float))", raises(TypeError, "labels")),
  Case("tpsgd_rnn_grads(RNN, PROJ, X, Y[:3])", raises(ValueError, "labels must have shape")),
  Case("tpsgd_rnn_grads(RNN, PROJ, X, Y, variant='l3')", raises(ValueError, "variant")),
  Case(
    "tpsgd_rnn_grads(RNN, PROJ, X, Y, target_steps='first')", raises(ValueError, "target_steps")
  ),
  Case("tpsgd_rnn_grads(RNN, PROJ, X.at[0, 1, 0].set(nan), Y)", raises(ValueError, "non-finite")),
  Case("tpsgd_rnn_grads(RNN, PROJ, X.at[0, 1, 0].set(inf), Y)", raises(ValueError, "non-finite")),
  Case(
    "jax.jit(lambda y: tpsgd_rnn_grads(RNN, PROJ, X, y)[1])(Y.at[0].set(7))",
    returns(
      lambda r: bool(np.isnan(r).all()), "traced invalid labels poison (label policy)", nan_ok=True
    ),
  ),
  Case("tpsgd_rnn_grads(RNN, PROJ, X, Y)[1].shape", returns(lambda s: s == (2,), "valid input")),
  Case("rnn_apply(RNN, X).shape", returns(lambda s: s == (5, 3), "valid input")),
]


@params(CASES)
def test_tpsgd_rnn(case):
  run(case, globals())
