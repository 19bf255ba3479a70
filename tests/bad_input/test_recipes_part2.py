"""Hostile inputs to the training recipes, part two: STORM's features, rescaler and meta step; USEFUL's
k-means, split and upsampling; the coherence scores and robust-mean SGD; the opposing-signal
groups and tracker (one line a case; harness in tests/bad_input/harness.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optim as O
from optim.curvature import opposing_groups, opposing_signals
from optim.data_scores import coherence, gradient_coherence, kmeans, slow_learnable, upsample
from optim.loops import StormState, storm_step
from optim.losses import storm_features, storm_rescaler, storm_rescaler_init
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
P = {"w": jnp.array([[0.5, -1.0, 2.0], [1.5, 0.3, -0.2]]), "b": jnp.array([0.1, -0.3, 0.2])}
PE = jax.tree.map(lambda x: jnp.stack([0.5 * x, 1.5 * x, -x]), P)  # 3 examples
PTS = jnp.array([[0.0, 0.0], [0.0, 1.0], [5.0, 0.0], [5.0, 1.0]])
OUT = jnp.array([[3.0, 0.0], [3.1, 0.0], [0.0, 0.2], [0.1, 0.1]])
LOSS = jnp.array([0.1, 0.2, 0.9, 0.8])
Y4 = jnp.array([0, 0, 1, 1])
# STORM: G = 2 passes over B = 4 examples of C = 2 classes.
PR = jnp.array([[[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]]] * 2)
LS = -jnp.log(PR[:, jnp.arange(4), Y4])
RP = storm_rescaler_init(key=0, num_classes=2, num_features=2)
F2 = jnp.array([[0.1, 0.9], [0.5, 0.6], [0.4, 0.7], [0.2, 0.8]])
XS = jnp.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.2], [1.0, 1.0, 0.0], [0.5, 0.0, 1.0]])
W0 = jnp.zeros((3, 2))
TX = optax.sgd(0.1)
ST = StormState(W0, TX.init(W0), RP, TX.init(RP))


def LF(w, b):  # per-example losses and two features
  lg = b[0] @ w
  ls = optax.softmax_cross_entropy_with_integer_labels(lg, b[1])
  return ls, jnp.stack([ls, jnp.max(jax.nn.softmax(lg), 1)], 1)


MEAN = lambda w, b: (jnp.mean(LF(w, b)[0]), LF(w, b)[1])  # a mean loss where per-example go
NANLOSS = lambda w, b: (LF(w, b)[0] * nan, LF(w, b)[1])
RS = lambda p, f, b: storm_rescaler(p, f, b[1])
B = (XS, Y4)
MODEL = lambda w, x: x @ w
# Opposing signals: a loss history (T=3, n=4) and a least-squares loss.
H = jnp.array([[1.0, 1.0, 0.5, 0.5], [1.0, 1.1, 2.0, 0.1], [1.0, 1.0, 0.1, 2.5]])
LSQ = lambda w, b: 0.5 * (b[0] @ w - b[1]) ** 2
HIST = jnp.stack([jnp.zeros(3), 0.1 * jnp.ones(3)])
LB = (XS, jnp.array([1.0, -1.0, 0.5, 0.0]))


def ustep(tx, grads, params=P):
  return tx.update(grads, tx.init(params), params)[0]


NS = {
  **{k: v for k, v in globals().items() if k.isupper() and not k.startswith("_")},
  "O": O,
  "jax": jax,
  "jnp": jnp,
  "np": np,
  "nan": nan,
  "inf": inf,
  "ustep": ustep,
  "kmeans": kmeans,
  "slow_learnable": slow_learnable,
  "upsample": upsample,
  "coherence": coherence,
  "gradient_coherence": gradient_coherence,
  "storm_features": storm_features,
  "storm_rescaler": storm_rescaler,
  "storm_rescaler_init": storm_rescaler_init,
  "storm_step": storm_step,
  "StormState": StormState,
  "opposing_groups": opposing_groups,
  "opposing_signals": opposing_signals,
}
_nan = lambda r: not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(r))

CASES = [
  # -- k-means / USEFUL -------------------------------------------------------------------------
  Case("kmeans(PTS, 5, key=0)", raises(ValueError, "k=5 clusters need at least k points")),
  Case("kmeans(PTS, 0, key=0)", raises(ValueError, "k must lie")),
  Case("kmeans(PTS, 1.5, key=0)", raises(ValueError, "k must be an int")),
  Case("kmeans(PTS[:, 0], 2, key=0)", raises(ValueError, r"points must have shape \(n, d\)")),
  Case("kmeans(PTS.at[1, 0].set(nan), 2, key=0)", raises(ValueError, "points must be finite")),
  Case("kmeans(PTS.astype(int), 2, key=0)", raises(TypeError, "points must be a floating")),
  Case("kmeans(PTS, 2, key=0, init=PTS[:3])", raises(ValueError, r"init must have shape")),
  Case("kmeans(PTS, 2, key='a')", raises(TypeError, "key")),
  Case("kmeans(PTS, 2, key=0, tol=-1.0)", raises(ValueError, "tol must lie")),
  Case("kmeans(PTS, 2, key=0, max_iterations=0)", raises(ValueError, "max_iterations")),
  Case("kmeans(PTS, 4, key=0).inertia", returns(lambda r: float(r) == 0.0, "k = n is exact")),
  Case("jax.jit(lambda p: kmeans(p, 2, key=0))(PTS)", raises(TypeError, "concrete")),
  Case(
    "slow_learnable(OUT, LOSS.at[2].set(nan), Y4, key=0)",
    raises(ValueError, "losses must be finite"),
  ),
  Case(
    "slow_learnable(OUT, LOSS.at[0].set(inf), Y4, key=0)",
    raises(ValueError, "losses must be finite"),
  ),
  Case("slow_learnable(OUT, LOSS[:3], Y4, key=0)", raises(ValueError, r"losses must have shape")),
  Case("slow_learnable(OUT, LOSS, Y4[:3], key=0)", raises(ValueError, r"labels must have shape")),
  Case("slow_learnable(OUT, LOSS, Y4 * 1.0, key=0)", raises(TypeError, "labels must hold integer")),
  Case("slow_learnable(OUT, LOSS, Y4 - 1, key=0)", raises(ValueError, "class labels must be >= 0")),
  Case(
    "slow_learnable(OUT.at[0, 0].set(nan), LOSS, Y4, key=0)",
    raises(ValueError, "outputs must be finite"),
  ),
  Case(
    "slow_learnable(OUT, LOSS, jnp.array([0, 1, 2, 3]), key=0)",
    returns(lambda r: not r.any(), "a class of one example is not split: nothing is slow"),
  ),
  Case("upsample(np.array([True, False]), factor=0)", raises(ValueError, "factor must lie")),
  Case("upsample(np.array([1, 0]))", raises(TypeError, "slow must be a bool mask")),
  Case("upsample(np.ones((2, 2), bool))", raises(ValueError, r"slow must be a mask of shape")),
  # -- coherence and robust mean ---------------------------------------------------------------
  Case("gradient_coherence(P)", raises(ValueError, r"per_example_grads\['b'\].*|batch")),
  Case("gradient_coherence({'w': jnp.ones((1, 2))})", raises(ValueError, "at least 2 examples")),
  Case("gradient_coherence({'w': 1.0})", raises(ValueError, "leading batch axis")),
  Case(
    "gradient_coherence({'w': jnp.ones((3, 2)), 'b': jnp.ones((2,))})",
    raises(ValueError, "one batch size"),
  ),
  Case("gradient_coherence({'w': jnp.zeros((3, 2))})", raises(ValueError, r"0/0")),
  Case(
    "gradient_coherence({'w': jnp.ones((3, 2)).at[1, 0].set(nan)})",
    raises(ValueError, "per_example_grads.* must be finite"),
  ),
  Case("gradient_coherence({'w': jnp.ones((3, 2), int)})", raises(TypeError, "floating point")),
  Case("gradient_coherence({})", raises(ValueError, "empty")),
  Case(
    "jax.jit(gradient_coherence)({'w': jnp.zeros((3, 2))})",
    returns(_nan, "traced all-zero gradients: 0/0 is NaN, the documented poison", nan_ok=True),
  ),
  Case("coherence(MODEL, W0, (XS[:1], Y4[:1]))", raises(ValueError, "at least 2 examples")),
  Case("coherence(MODEL, W0, (XS, Y4 + 2))", raises(ValueError, r"labels must lie in \[0, 2\)")),
  Case("O.scale_by_robust_mean(variant='trimmed')", raises(ValueError, "variant must be one of")),
  Case("O.scale_by_robust_mean(c=-1)", raises(ValueError, "c must lie")),
  Case("O.scale_by_robust_mean(c=1.5)", raises(ValueError, "c must be an int")),
  Case("O.scale_by_robust_mean(num_groups=0)", raises(ValueError, "num_groups must lie")),
  Case("O.robust_mean_sgd(nan)", raises(ValueError, "learning_rate must be")),
  Case(
    "ustep(O.scale_by_robust_mean(), jax.tree.map(lambda x: 2 * x, P))",
    raises(ValueError, "per.example"),
  ),
  Case(
    "ustep(O.scale_by_robust_mean(), jax.tree.map(lambda x: x[:0], PE))",
    raises(ValueError, "batch size 0"),
  ),
  Case(
    "ustep(O.scale_by_robust_mean(c=1), {**PE, 'b': PE['b'].at[0, 0].set(nan)})",
    returns(_nan, "a NaN per-example coordinate propagates into the update", nan_ok=True),
  ),
  Case(
    "ustep(O.scale_by_robust_mean(c=1), {**PE, 'b': PE['b'].at[0, 0].set(inf)})",
    returns(None, "one inf among 3 examples at c=1 is winsorized like any outlier"),
  ),
  Case(
    "ustep(O.scale_by_robust_mean(variant='median_of_means', num_groups=9), PE)",
    returns(None, "more groups than examples: each its own group (the coordinate median)"),
  ),
  # -- STORM -----------------------------------------------------------------------------------
  Case(
    "storm_features(LS[0], PR, Y4, num_classes=2)",
    raises(ValueError, r"losses must have shape \(G, B\)"),
  ),
  Case(
    "storm_features(LS, PR[:, :3], Y4, num_classes=2)", raises(ValueError, "probs must have shape")
  ),
  Case("storm_features(LS, PR, Y4, num_classes=3)", raises(ValueError, "probs must have shape")),
  Case(
    "storm_features(LS, PR, Y4 + 2, num_classes=2)",
    raises(ValueError, r"labels: class labels must lie"),
  ),
  Case(
    "storm_features(LS, PR, Y4 * 1.0, num_classes=2)", raises(TypeError, "labels must hold integer")
  ),
  Case(
    "storm_features(LS, PR, Y4[:3], num_classes=2)", raises(ValueError, r"labels must have shape")
  ),
  Case(
    "storm_features(LS.astype(int), PR, Y4, num_classes=2)",
    raises(TypeError, "losses must be floating"),
  ),
  Case(
    "jax.jit(lambda y: storm_features(LS, PR, y, num_classes=2))(Y4.at[0].set(5))",
    returns(
      lambda r: bool(jnp.all(jnp.isnan(r[0]))) and bool(jnp.all(jnp.isfinite(r[1:]))),
      "a traced label out of range poisons its row with NaN",
      nan_ok=True,
    ),
  ),  # fmt: skip
  Case("storm_rescaler(RP, F2[:1], Y4[:1])", raises(ValueError, "at least 2 examples")),
  Case(
    "storm_rescaler(RP, F2[:, :1], Y4)", raises(ValueError, r"features must have shape \(B, 2\)")
  ),
  Case("storm_rescaler({'w1': 1}, F2, Y4)", raises(TypeError, "storm_rescaler_init's dict")),
  Case("storm_rescaler(RP, F2, Y4 + 1)", raises(ValueError, "labels: class labels must lie")),
  Case("storm_rescaler_init(key=0, num_classes=0)", raises(ValueError, "num_classes must lie")),
  Case("storm_step(MEAN, RS, TX, TX, ST, B, B)", raises(ValueError, "per-example losses of shape")),
  Case("storm_step(3, RS, TX, TX, ST, B, B)", raises(TypeError, "loss_fn must be callable")),
  Case("storm_step(LF, RS, 'sgd', TX, ST, B, B)", raises(TypeError, "tx must be an optax")),
  Case(
    "storm_step(LF, RS, TX, TX, tuple(ST), B, B)", raises(TypeError, "state must be a StormState")
  ),
  Case(
    "storm_step(LF, lambda p, f, b: jnp.ones(3), TX, TX, ST, B, B)",
    raises(ValueError, r"one weight per example, shape \(4,\)"),
  ),
  Case(
    "storm_step(lambda w, b: LF(w, b)[0], RS, TX, TX, ST, B, B)",
    raises(TypeError, "must return a pair"),
  ),
  Case(
    "storm_step(LF, RS, TX, TX, ST, B, B, meta_loss_rescaling=1)",
    raises(TypeError, "meta_loss_rescaling"),
  ),
  Case(
    "storm_step(NANLOSS, RS, TX, TX, ST, B, B)[0].params",
    returns(_nan, "non-finite losses propagate into the params, as an optax step", nan_ok=True),
  ),
  # -- opposing signals ------------------------------------------------------------------------
  Case("opposing_groups(H[0], k=2)", raises(ValueError, r"a mean loss per step")),
  Case("opposing_groups(H[:1], k=2)", raises(ValueError, "at least 2 steps")),
  Case("opposing_groups(H, k=5)", raises(ValueError, "k=5 exceeds the number of examples n=4")),
  Case("opposing_groups(H, k=0)", raises(ValueError, "k must lie")),
  Case("opposing_groups(H.at[1, 2].set(nan), k=2)", raises(ValueError, "losses must be finite")),
  Case("opposing_groups(H.astype(int), k=2)", raises(TypeError, "losses must be floating")),
  Case(
    "jax.jit(lambda h: opposing_groups(h, k=2))(H.at[1, 2].set(nan))",
    returns(
      lambda r: not r.increased[:, :].any() and bool(jnp.isnan(r.change).any()),
      "traced non-finite losses: NaN changes and empty groups at the steps they touch",
      nan_ok=True,
    ),
  ),
  Case(
    "opposing_signals(lambda w, b: jnp.mean(LSQ(w, b)), HIST, LB, k=2, key=0)",
    raises(ValueError, "a mean loss"),
  ),
  Case(
    "opposing_signals(LSQ, HIST[:1], LB, k=2, key=0)", raises(ValueError, "at least 2 snapshots")
  ),
  Case(
    "opposing_signals(LSQ, jnp.zeros(3), LB, k=2, key=0)",
    raises(TypeError, r"loss_fn\(params, batch\) on the first snapshot"),
  ),
  Case(
    "opposing_signals(LSQ, {'a': HIST, 'b': jnp.zeros(3)}, LB, k=2, key=0)",
    raises(ValueError, "one leading axis"),
  ),
  Case("opposing_signals(LSQ, HIST, LB, k=9, key=0)", raises(ValueError, "k=9 exceeds")),
  Case("opposing_signals(3, HIST, LB, k=2, key=0)", raises(TypeError, "loss_fn must be callable")),
  Case("opposing_signals(LSQ, HIST, LB, k=2, key='a')", raises(TypeError, "key")),
]


@params(CASES)
def test_case(case):
  run(case, NS)
