# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile inputs to optim.quant, optim.data_scores and optim.curvature.hessian_alignment.

Fixtures: a two-leaf quadratic ``LOSS`` on ``P = {"a": (4,), "b": (3,)}`` with its exact
sensitivity ``S`` at bits (2, 4); a linear softmax ``MODEL`` on ``W (2, 3)`` with a batch
``(X, Y)`` of 4 examples; ``DOM``: two domains of that batch for the alignment penalty.
"""

import jax
import jax.numpy as jnp
import numpy as np

from optim import data_scores as D
from optim import quant as Q
from optim.curvature import hessian_alignment
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
P = {"a": jnp.array([0.3, -1.0, 0.5, 0.2]), "b": jnp.array([0.1, 0.9, -0.4])}
LOSS = lambda p: jnp.sum(p["a"] ** 2) + 3 * jnp.sum(p["b"] ** 2)
S = Q.layer_sensitivity(LOSS, P, bits=(2, 4), num_probes=None)
EMPTY = {"a": jnp.ones(3), "e": jnp.zeros((0, 2))}
ELOSS = lambda p: jnp.sum(p["a"] ** 2) + jnp.sum(p["e"])
MODEL = lambda w, x: x @ w
W = jnp.full((2, 3), 0.1)
X = jnp.arange(8.0).reshape(4, 2) / 8
Y = jnp.array([0, 1, 2, 1])
DOM = (jnp.stack([X, 2 * X]), jnp.stack([Y, Y]))
ALOSS = lambda w, b: jnp.mean(
  jax.nn.logsumexp(b[0] @ w, -1) - jnp.take_along_axis(b[0] @ w, b[1][:, None], -1)[:, 0]
)

NS = {
  **{k: v for k, v in globals().items() if k.isupper() and not k.startswith("_")},
  "Q": Q,
  "D": D,
  "HA": hessian_alignment,
  "jax": jax,
  "jnp": jnp,
  "np": np,
  "nan": nan,
  "inf": inf,
}

CASES = [
  # -- fake_quant / quantize_params / model_size_bits ----------------------------------------
  Case("Q.fake_quant(X, 0)", raises(ValueError, r"bits must lie in \[1, 32\]")),
  Case("Q.fake_quant(X, 1)", raises(ValueError, "bits must be >= 2 for symmetric")),
  Case("Q.fake_quant(X, 33)", raises(ValueError, "bits must lie in")),
  Case("Q.fake_quant(X, 2.5)", raises(ValueError, "bits must be an integer")),
  Case("Q.fake_quant(X, True)", raises(TypeError, "bits must be a real number, got a bool")),
  Case("Q.fake_quant(X, '4')", raises(TypeError, "bits must be a real number")),
  Case("Q.fake_quant(X, nan)", raises(ValueError, "bits must be a number")),
  Case("jax.jit(lambda b: Q.fake_quant(X, b))(4)", raises(TypeError, "bits must be a concrete")),
  Case("Q.fake_quant(Y, 4)", raises(TypeError, "x has dtype int32")),
  Case("Q.fake_quant(X, 4, axis=2)", raises(ValueError, "axis 2 is out of range")),
  Case("Q.fake_quant(X, 4, axis=1.0)", raises(TypeError, "axis must be None")),
  Case("Q.fake_quant(X, 4, symmetric=1)", raises(TypeError, "symmetric must be a bool")),
  Case(
    "Q.fake_quant(X, 1, symmetric=False)",
    returns(lambda r: len(np.unique(r)) <= 2, "1 bit asymmetric: two levels"),
  ),
  Case(
    "Q.fake_quant(jnp.zeros(3), 4)",
    returns(lambda r: bool(jnp.all(r == 0)), "an all-zero tensor is exact (scale 0 -> 1)"),
  ),
  Case(
    "Q.fake_quant(jnp.full(3, nan), 4)",
    returns(lambda r: bool(jnp.all(jnp.isnan(r))), "NaN in, NaN out", nan_ok=True),
  ),
  Case(
    "Q.fake_quant(jnp.zeros((0, 3)), 4)",
    returns(lambda r: r.shape == (0, 3), "empty arrays pass through"),
  ),
  Case(
    "Q.quantize_params(P, {'a': 2})",
    raises(ValueError, "bits must be an int or a pytree with the structure of params"),
  ),
  Case("Q.quantize_params(P, {'a': 2, 'b': 0})", raises(ValueError, "bits must lie in")),
  Case("Q.quantize_params({'a': Y}, 4)", raises(TypeError, r"params\['a'\] has dtype int32")),
  Case(
    "Q.quantize_params(P, {'a': 2, 'b': None})['b'] is P['b']",
    returns(lambda r: r is True, "None keeps a leaf in floating point"),
  ),
  Case("Q.model_size_bits(P, {'a': 2, 'b': 1.5})", raises(ValueError, "bits must be an integer")),
  Case("Q.model_size_bits(P, [2, 4])", raises(ValueError, "bits must be an int or a pytree")),
  # -- layer_sensitivity / interlayer_sensitivity --------------------------------------------
  Case(
    "Q.layer_sensitivity(ELOSS, EMPTY, num_probes=None)",
    raises(ValueError, r"layer params\['e'\] has no parameters"),
  ),
  Case(
    "Q.layer_sensitivity(ELOSS, EMPTY, num_probes=None, layers={'a': True, 'e': False})",
    returns(lambda r: r.names == ("['a']",), "an empty leaf left out by layers is fine"),
  ),
  Case(
    "Q.layer_sensitivity(LOSS, P, layers={'a': False, 'b': False})",
    raises(ValueError, "layers selects no leaf"),
  ),
  Case(
    "Q.layer_sensitivity(LOSS, P, layers={'a': True})",
    raises(ValueError, "layers must be a pytree of bools with the structure of params"),
  ),
  Case(
    "Q.layer_sensitivity(LOSS, P, layers={'a': 1, 'b': True})",
    raises(TypeError, r"layers\['a'\] must be a bool"),
  ),
  Case("Q.layer_sensitivity(LOSS, {})", raises(ValueError, "params must hold at least one array")),
  Case(
    "Q.layer_sensitivity(LOSS, P, bits=())", raises(TypeError, "bits must be a non-empty sequence")
  ),
  Case("Q.layer_sensitivity(LOSS, P, bits=(2, 2))", raises(ValueError, "bits must be distinct")),
  Case("Q.layer_sensitivity(LOSS, P, bits=(0, 4))", raises(ValueError, "bits must lie in")),
  Case(
    "Q.layer_sensitivity(LOSS, P, bits=(1, 4))",
    raises(ValueError, "bits must be >= 2 for symmetric"),
  ),
  Case(
    "Q.layer_sensitivity(LOSS, P, bits=(2, 3.5))", raises(ValueError, "bits must be an integer")
  ),
  Case(
    "Q.layer_sensitivity(LOSS, P, bits='248')",
    raises(TypeError, "bits must be a non-empty sequence"),
  ),
  Case("Q.layer_sensitivity(LOSS, P, num_probes=0)", raises(ValueError, "num_probes must lie in")),
  Case(
    "Q.layer_sensitivity(LOSS, P, variant='hawq-v3')", raises(ValueError, "variant must be one of")
  ),
  Case("Q.layer_sensitivity(LOSS, P, key='0')", raises(TypeError, "key must be an int seed")),
  Case(
    "Q.layer_sensitivity(lambda p: p['a'], P)",
    raises(TypeError, "must return a real floating-point scalar"),
  ),
  Case(
    "Q.layer_sensitivity(LOSS, {'a': Y, 'b': X})",
    raises(TypeError, r"params\['a'\] has dtype int32"),
  ),
  Case(
    "Q.layer_sensitivity(lambda p: -LOSS(p), P, num_probes=None).curvature",
    returns(
      lambda r: bool(jnp.all(r < 0)),
      "negative curvature is kept (documented); the allocator spends no bits there",
    ),
  ),
  Case(
    "Q.interlayer_sensitivity(LOSS, P, variant='dense')",
    raises(ValueError, "variant must be one of"),
  ),
  Case(
    "Q.interlayer_sensitivity(ELOSS, EMPTY)",
    raises(ValueError, r"layer params\['e'\] has no parameters"),
  ),
  # -- pareto_bit_allocation ------------------------------------------------------------------
  Case("Q.pareto_bit_allocation(S, 13)", raises(ValueError, "budget must be at least 14 bits")),
  Case("Q.pareto_bit_allocation(S, -1)", raises(ValueError, "budget must lie in")),
  Case("Q.pareto_bit_allocation(S, 20.5)", raises(ValueError, "budget must be an integer")),
  Case("Q.pareto_bit_allocation(S, None)", raises(TypeError, "budget must be a real number")),
  Case("Q.pareto_bit_allocation(S, inf)", raises(ValueError, "budget must be finite")),
  Case(
    "Q.pareto_bit_allocation(S.omega, 100)", raises(TypeError, "sensitivity must be a Sensitivity")
  ),
  Case(
    "Q.pareto_bit_allocation(S._replace(omega=S.omega.at[0, 0].set(nan)), 100)",
    raises(ValueError, "omega must be finite"),
  ),
  Case(
    "Q.pareto_bit_allocation(S, 100, cross=np.zeros((2, 2)))",
    raises(ValueError, r"cross must have shape \(L, B, L, B\)"),
  ),
  Case(
    "Q.pareto_bit_allocation(S, 100, cross=np.full((2, 2, 2, 2), nan))",
    raises(ValueError, "cross must be finite"),
  ),
  Case(
    "Q.pareto_bit_allocation(S, 14).choice",
    returns(
      lambda r: r == (2, 2), "the minimum budget is feasible: every layer at the lowest width"
    ),
  ),
  Case(
    "Q.pareto_bit_allocation(S, 10**9).choice",
    returns(lambda r: r == (4, 4), "a huge budget: every layer at the highest width"),
  ),
  # -- data scores ----------------------------------------------------------------------------
  Case("D.keep_indices(jnp.array(0.5), 0.5)", raises(ValueError, "scores must have exactly one")),
  Case(
    "D.keep_indices(jnp.ones((4, 2)), 0.5)",
    raises(ValueError, r"scores must have exactly one \(batch\) axis"),
  ),
  Case("D.keep_indices(jnp.ones(0), 0.5)", raises(ValueError, "scores must hold at least one")),
  Case(
    "D.keep_indices(jnp.array([0.1, nan]), 0.5)",
    raises(ValueError, "scores must be finite; got nan at index 1"),
  ),
  Case("D.keep_indices(jnp.ones(4), 0.0)", raises(ValueError, r"fraction must lie in \(0, 1\]")),
  Case("D.keep_indices(jnp.ones(4), 1.5)", raises(ValueError, "fraction must lie in")),
  Case(
    "D.keep_indices(jnp.ones(4), 0.5, variant='middle')",
    raises(ValueError, "variant must be one of"),
  ),
  Case("D.keep_indices(jnp.ones(4), 0.5, variant='random')", raises(ValueError, "needs key")),
  Case(
    "D.keep_indices(np.array(['a', 'b']), 0.5)", raises(TypeError, "scores must be real numbers")
  ),
  Case(
    "D.grand(MODEL, W, (X, Y[:, None]))", raises(ValueError, "labels y must have one batch axis")
  ),
  Case("D.grand(MODEL, W, (X[0], Y[0]))", raises(ValueError, "labels y must have one batch axis")),
  Case(
    "D.grand(MODEL, W, (X[:3], Y))",
    raises(ValueError, r"inputs x must have the batch axis of the labels first \(4 examples\)"),
  ),
  Case(
    "D.grand(MODEL, W, (X, Y + 1))", raises(ValueError, r"y: class labels must lie in \[0, 3\)")
  ),
  Case("D.grand(MODEL, W, (X, Y * 1.0))", raises(TypeError, "y must hold integer class labels")),
  Case("D.grand(MODEL, W, X)", raises(TypeError, r"batch must be a pair \(x, y\)")),
  Case("D.grand(W, W, (X, Y))", raises(TypeError, "model must be callable")),
  Case(
    "D.grand(lambda w, x: (x @ w)[:, 0], W, (X, Y))",
    raises(TypeError, "must return batch-first logits"),
  ),
  Case(
    "D.el2n(MODEL, W, (X, Y), stacked=True)",
    raises(TypeError, "stacked=True: each run's params lose the leading axis"),
  ),
  Case(
    "D.el2n(MODEL, {'w': W, 'v': jnp.ones(3)}, (X, Y), stacked=True)",
    raises(ValueError, "stacked params need one common leading axis"),
  ),
  Case("D.el2n(MODEL, W, (X, Y), stacked=1)", raises(TypeError, "stacked must be a bool")),
  Case("D.el2n(MODEL, W.astype(int), (X, Y))", raises(TypeError, "params has dtype int")),
  Case(
    "jax.jit(lambda y: D.el2n(MODEL, W, (X, y)))(Y.at[1].set(7))",
    returns(
      lambda r: bool(jnp.isnan(r[1])) and bool(jnp.all(jnp.isfinite(r[jnp.array([0, 2, 3])]))),
      "traced invalid labels poison their example's score",
      nan_ok=True,
    ),
  ),
  Case(
    "D.grand(MODEL, W, (X[:0], Y[:0]))",
    returns(lambda r: r.shape == (0,), "an empty batch has no scores"),
  ),
  # -- hessian_alignment ----------------------------------------------------------------------
  Case("HA(ALOSS, W, (X[None], Y[None]))", raises(ValueError, "at least 2 domains, got 1")),
  Case("HA(ALOSS, W, (DOM[0], Y))", raises(ValueError, "leaves share a leading axis of domains")),
  Case("HA(ALOSS, W, DOM, variant='fishr')", raises(ValueError, "variant must be one of")),
  Case("HA(ALOSS, W, DOM, variant='hutchinson')", raises(ValueError, "needs key")),
  Case(
    "HA(ALOSS, W, DOM, variant='hutchinson', key=0, num_probes=0)",
    raises(ValueError, "num_probes must lie in"),
  ),
  Case("HA(ALOSS, W, DOM, probe='uniform')", raises(ValueError, "probe must be one of")),
  Case(
    "HA(lambda w, b: b[0] @ w, W, DOM)",
    raises(TypeError, "loss_fn must return a real floating-point scalar"),
  ),
  Case("HA(ALOSS, W.astype(int), DOM)", raises(TypeError, "params has dtype int")),
  Case(
    "HA(ALOSS, W, (DOM[0], DOM[1]))",
    returns(
      lambda r: float(r.gradient) > 0, "two shifted domains: a positive gradient-alignment penalty"
    ),
  ),
  Case(
    "HA(ALOSS, W, (jnp.stack([X, X]), DOM[1]))",
    returns(
      lambda r: float(r.gradient) == 0 and float(r.hessian) == 0,
      "identical domains: both penalties are exactly zero",
    ),
  ),
]


def test_table_is_large_enough():
  assert len(CASES) >= 60


@params(CASES)
def test_case(case):
  run(case, NS)
