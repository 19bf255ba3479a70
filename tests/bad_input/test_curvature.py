"""Hostile inputs to optim.curvature, optim.losses and optim.schedules (one line a case).

Fixtures are tiny and built once: a diagonal quadratic ``F`` on ``P = {"w": (3,), "b": (2,)}``
(Hessian ``diag(1, 2, 3, 4, 5)`` over the leaves in key order ``b, w``: ``b -> 4, 5``,
``w -> 1, 2, 3``) with its Hessian operator ``OP``, and a linear softmax model ``MODEL`` on
``W (2, 3)`` with a batch ``(X, Y)`` of 4 examples and its GGN / Fisher operators. Most cases
fail at trace time; the few that run an estimator share ``OP``.
"""

import jax
import jax.numpy as jnp
import numpy as np

from optim import curvature as C
from optim import losses, schedules
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
_A = {"w": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array([4.0, 5.0])}
F = lambda p: 0.5 * sum(jnp.sum(_A[k] * p[k] ** 2) for k in p)
P = {"w": jnp.ones(3), "b": jnp.ones(2)}
Z = jax.tree.map(jnp.zeros_like, P)
OP = C.hessian_matvec(F, P)
LIKE = jax.ShapeDtypeStruct((3,), jnp.float32)
MODEL = lambda w, x: x @ w
W = jnp.full((2, 3), 0.1)
X = jnp.arange(8.0).reshape(4, 2) / 8
Y = jnp.array([0, 1, 2, 1])
LOSS = lambda z, y: jnp.mean(C.softmax_nll(z, y))
GGN = C.ggn_matvec(MODEL, LOSS, W, (X, Y))
FISHER = C.fisher_matvec(MODEL, W, (X, Y))
LOGITS = jnp.array([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]])
SM = losses.stablemax_cross_entropy
NLL = C.softmax_nll
GRADS = jax.random.normal(jax.random.key(0), (8, 3))
INV = C.mfac_ihvp(GRADS, damping=0.1)
BIG = 100 * jax.random.normal(jax.random.key(1), (64, 3))  # m > d: only damping keeps K PD
FILE = __file__  # an existing file where run_tour wants a directory
DENS = C.SpectralDensity(
  jnp.linspace(0.0, 1.0, 5), jnp.full(5, 0.2), jnp.ones((1, 2)), jnp.full((1, 2), 0.5), 0.1
)

NS = {
  **{k: v for k, v in globals().items() if k.isupper() and not k.startswith("_")},
  "C": C,
  "jax": jax,
  "jnp": jnp,
  "np": np,
  "nan": nan,
  "inf": inf,
  "losses": losses,
  "S": schedules,
}

_first_ok_rest_nan = lambda r: bool(jnp.isfinite(r[0]).all()) and bool(jnp.isnan(r[1:]).all())
_all_nan = lambda r: all(bool(jnp.isnan(x).all()) for x in jax.tree.leaves(r))
POISON = "traced invalid labels cannot raise: the loss of their example is NaN (poisoned)"
TRACED = "a traced hyperparameter is not checked; NaN in, NaN out (loud, never a plausible value)"

CASES = [
  # -- labels: stablemax_cross_entropy ------------------------------------------------------
  Case("SM(LOGITS, [0, -1])", raises(ValueError, r"labels: .*\[0, 3\).*got -1 at index \(1,\)")),
  Case("SM(LOGITS, [0, 3])", raises(ValueError, r"labels: .*\[0, 3\).*got 3 at index \(1,\)")),
  Case("SM(LOGITS, jnp.array([0.0, 1.0]))", raises(TypeError, "labels.*dtype float32")),
  Case("SM(LOGITS, jnp.array([True, False]))", raises(TypeError, "labels.*dtype bool")),
  Case("SM(LOGITS, None)", raises(TypeError, "labels")),
  Case("SM(LOGITS, '01')", raises(TypeError, "labels")),
  Case("SM(LOGITS, jnp.array([0, 1, 2]))", raises(ValueError, "labels shape")),
  Case("SM(LOGITS, 0)", raises(ValueError, "labels shape")),
  Case("SM(jnp.zeros(()), 0)", raises(ValueError, "logits")),
  Case("SM(jnp.zeros((2, 0)), [0, 0])", raises(ValueError, r"labels: .*\[0, 0\)")),
  Case("SM(LOGITS, Y[:2], axis=2)", raises(ValueError, "axis")),
  Case("SM(LOGITS, Y[:2], axis=1.5)", raises(ValueError, "axis")),
  Case("SM(LOGITS, Y[:2], axis=None)", raises(TypeError, "axis")),
  Case("jax.jit(SM)(LOGITS, jnp.array([0, -1]))", returns(_first_ok_rest_nan, POISON, nan_ok=True)),
  Case("jax.jit(SM)(LOGITS, jnp.array([0, 7]))", returns(_first_ok_rest_nan, POISON, nan_ok=True)),
  Case(
    "jax.jit(jax.grad(lambda z, y: SM(z, y).sum()))(LOGITS, jnp.array([1, 9]))",
    returns(_first_ok_rest_nan, "the gradient of a poisoned example is NaN too", nan_ok=True),
  ),
  Case(
    "SM(LOGITS.astype(jnp.bfloat16), Y[:2])",
    returns(lambda r: r.dtype == jnp.float32, "bf16 logits: loss in float32"),
  ),
  Case(
    "SM(LOGITS, jnp.array([0, 1], jnp.uint8))", returns(None, "any integer label dtype is accepted")
  ),
  Case(
    "SM(jnp.zeros((0, 3)), jnp.zeros(0, int))", returns(lambda r: r.shape == (0,), "empty batch")
  ),
  Case("SM(jnp.array([[1e30, -1e30, 0.0]]), [0])", returns(None, "StableMax never overflows")),
  Case(
    "SM(jnp.array([[nan, 0.0, 0.0]]), [1])",
    returns(_all_nan, "non-finite logits propagate (NaN in, NaN out)", nan_ok=True),
  ),
  # -- labels: softmax_nll and fisher_matvec ----------------------------------------------
  Case("NLL(LOGITS, [0, -1])", raises(ValueError, r"labels: .*\[0, 3\).*got -1")),
  Case("NLL(LOGITS, jnp.array([0, 3]))", raises(ValueError, r"labels: .*got 3 at index \(1,\)")),
  Case("NLL(LOGITS, jnp.array([0.0, 1.0]))", raises(TypeError, "labels.*float32")),
  Case("NLL(LOGITS, jnp.array([0, 1, 2]))", raises(ValueError, "labels shape")),
  Case("NLL(1.0, 0)", raises(ValueError, "logits")),
  Case("jax.jit(NLL)(LOGITS, jnp.array([0, 3]))", returns(_first_ok_rest_nan, POISON, nan_ok=True)),
  Case(
    "NLL(jnp.zeros(3), 0)",
    returns(lambda r: np.isclose(r, np.log(3)), "one example with no batch axis"),
  ),
  Case(
    "NLL(jnp.array([[nan, 0.0, 0.0]]), [1])",
    returns(_all_nan, "non-finite logits propagate (NaN in, NaN out)", nan_ok=True),
  ),
  Case("C.sample_categorical(LOGITS, key='k')", raises(TypeError, "key")),
  Case("C.sample_categorical(LOGITS)", raises(TypeError, "key")),
  Case(
    "C.fisher_matvec(MODEL, W, (X, jnp.array([0, 1, 2, 3])))",
    raises(ValueError, r"targets.*\[0, 3\).*got 3 at index \(3,\)"),
  ),
  Case(
    "C.fisher_matvec(MODEL, W, (X, jnp.array([0, -1, 2, 1])))",
    raises(ValueError, r"targets.*got -1 at index \(1,\)"),
  ),
  Case("C.fisher_matvec(MODEL, W, (X, Y.astype(float)))", raises(TypeError, "targets.*integer")),
  Case(
    "C.fisher_matvec(MODEL, W, (X[None], Y.at[2].set(4)[None]), stacked=True)",
    raises(ValueError, r"targets.*got 4"),
  ),
  Case(
    "jax.jit(lambda y: C.fisher_matvec(MODEL, W, (X, y))(W))(Y.at[1].set(5))",
    returns(_all_nan, "a traced invalid target poisons every Fisher product", nan_ok=True),
  ),
  Case("C.fisher_matvec(MODEL, W, (X, Y), variant='exact')", raises(ValueError, "variant")),
  Case("C.fisher_matvec(MODEL, W, (X, Y), variant='true')", raises(ValueError, "key")),
  Case("C.fisher_matvec(MODEL, W, (X, Y), variant='true', key='a')", raises(TypeError, "key")),
  Case(
    "C.fisher_matvec(MODEL, W, (X, Y), variant='true', key=0, num_samples=0)",
    raises(ValueError, "num_samples"),
  ),
  Case("C.fisher_matvec(MODEL, W, (X, Y), num_samples=1.5)", raises(ValueError, "num_samples")),
  Case("C.fisher_matvec(MODEL, W, (X, Y), num_samples=None)", raises(TypeError, "num_samples")),
  Case("C.fisher_matvec(MODEL, W, X)", raises(TypeError, "batch")),
  Case("C.fisher_matvec(None, W, (X, Y))", raises(TypeError, "model_fn")),
  Case("C.fisher_matvec(MODEL, W, (X, Y), nll_fn=None)", raises(TypeError, "nll_fn")),
  Case("C.fisher_matvec(MODEL, W, (X, Y), sample_fn=3)", raises(TypeError, "sample_fn")),
  Case("C.fisher_matvec(MODEL, W.astype(int), (X, Y))", raises(TypeError, "params")),
  Case("C.fisher_matvec(MODEL, W, (X[:0], Y[:0]))", raises(ValueError, "batch has no examples")),
  Case("C.fisher_matvec(MODEL, W, (X, Y), stacked='yes')", raises(TypeError, "stacked")),
  Case(
    "C.fisher_matvec(MODEL, W, (X, Y), nll_fn=lambda z, y: jnp.sum(z))",
    raises(ValueError, "nll_fn"),
  ),
  Case("FISHER(jnp.ones((3, 2)))", raises(ValueError, "v has shape")),
  Case(
    "FISHER(W.astype(jnp.bfloat16))",
    returns(lambda r: r.dtype == W.dtype, "v is cast to the domain's dtype"),
  ),
  # -- ggn_matvec ---------------------------------------------------------------------------
  Case("C.ggn_matvec(MODEL, lambda z, y: z, W, (X, Y))", raises(TypeError, "loss_fn must return")),
  Case("C.ggn_matvec(MODEL, 3, W, (X, Y))", raises(TypeError, "loss_fn")),
  Case("C.ggn_matvec('model', LOSS, W, (X, Y))", raises(TypeError, "model_fn")),
  Case("C.ggn_matvec(MODEL, LOSS, W, (X, Y[:3]), stacked=True)", raises(ValueError, "leading")),
  Case("C.ggn_matvec(MODEL, LOSS, {}, (X, Y))", raises(ValueError, "params")),
  Case("C.ggn_matvec(MODEL, LOSS, W, [X])", raises(TypeError, "batch")),
  Case("GGN(jnp.ones((2, 3), jnp.complex64))", raises(TypeError, r"\bv\b.*real")),
  Case("GGN(None)", raises(ValueError, r"\bv\b")),
  Case("GGN(W)", returns(lambda r: r.shape == (2, 3), "a valid product")),
  # -- hvp / directional_sharpness / hessian_matvec ------------------------------------------
  Case("C.hvp(F, P, {'w': jnp.ones(3)})", raises(ValueError, r"\bv\b")),
  Case(
    "C.hvp(F, P, {'w': jnp.ones(2), 'b': jnp.ones(2)})",
    raises(ValueError, r"v\['w'\] has shape \(2,\) but params"),
  ),
  Case("C.hvp(F, P, None)", raises(ValueError, r"\bv\b")),
  Case("C.hvp(F, P, 'v')", raises(ValueError, r"\bv\b")),
  Case("C.hvp(F, P, jax.tree.map(lambda x: x > 0, P))", raises(TypeError, r"v\['b'\]")),
  Case("C.hvp(F, P, jax.tree.map(lambda x: x + 0j, P))", raises(TypeError, r"v\['b'\].*real")),
  Case("C.hvp(F, jax.tree.map(lambda x: x.astype(int), P), P)", raises(TypeError, "params")),
  Case("C.hvp(None, P, P)", raises(TypeError, "f must be callable")),
  Case(
    "C.hvp(lambda p: p['w'], P, P)",
    raises(TypeError, "f must return a real floating-point scalar loss.*shape"),
  ),
  Case("C.hvp(lambda p: jnp.sum(p['w']).astype(int), P, P)", raises(TypeError, "f must return")),
  Case("C.hvp(F, {}, {})", raises(ValueError, "params")),
  Case(
    "C.hvp(F, P, jax.tree.map(lambda x: x.astype(int), P))",
    returns(lambda r: float(r["b"][1]) == 5.0, "an integer v is cast to the params' dtype"),
  ),
  Case(
    "C.hvp(F, P, {'w': jnp.full(3, nan), 'b': jnp.ones(2)})['w']",
    returns(_all_nan, "non-finite v propagates (NaN in, NaN out)", nan_ok=True),
  ),
  Case(
    "C.directional_sharpness(F, P, Z)",
    returns(lambda r: r == 0, "a zero direction has sharpness 0, never NaN"),
  ),
  Case(
    "C.directional_sharpness(F, P, {'w': jnp.full(3, 1e-30), 'b': jnp.zeros(2)})",
    returns(lambda r: np.isclose(r, 2.0), "scale invariant: no underflow of d.d to 0"),
  ),
  Case(
    "C.directional_sharpness(F, P, {'w': jnp.full(3, 1e30), 'b': jnp.zeros(2)})",
    returns(lambda r: np.isclose(r, 2.0), "scale invariant: no overflow of d.d to inf"),
  ),
  Case(
    "C.directional_sharpness(F, P, {'w': jnp.full(3, inf), 'b': jnp.zeros(2)})",
    returns(_all_nan, "a non-finite direction gives NaN, not 0", nan_ok=True),
  ),
  Case(
    "C.directional_sharpness(F, P, {'w': jnp.ones(2), 'b': jnp.ones(2)})",
    raises(ValueError, r"direction\['w'\] has shape \(2,\) but params"),
  ),
  Case("C.directional_sharpness(F, P, {'w': jnp.ones(3)})", raises(ValueError, "direction")),
  Case("C.hessian_matvec(F, P, stacked=True)", raises(ValueError, "stacked")),
  Case("C.hessian_matvec(F, P, stacked=1)", raises(TypeError, "stacked")),
  Case(
    "C.hessian_matvec(lambda p, x, y: F(p), P, jnp.ones((2, 3)), jnp.ones((3, 3)), stacked=True)",
    raises(ValueError, "leading"),
  ),
  Case(
    "C.hessian_matvec(lambda p, x: F(p) * x, P, 1.0, stacked=True)", raises(ValueError, "leading")
  ),
  Case(
    "C.hessian_matvec(lambda p: p['w'], P)",
    raises(TypeError, "f must return a real floating-point scalar loss.*shape"),
  ),
  Case(
    "C.hessian_matvec(F, jax.tree.map(lambda x: x.astype(int), P))", raises(TypeError, "params")
  ),
  Case("OP({'w': jnp.ones(3)})", raises(ValueError, r"\bv\b")),
  Case("OP(P)", returns(lambda r: float(r["w"][2]) == 3.0, "a valid product")),
  # -- LinearOperator -----------------------------------------------------------------------
  Case("C.LinearOperator(None, LIKE)", raises(TypeError, "matvec must be callable")),
  Case(
    "C.LinearOperator(lambda v: v, jax.ShapeDtypeStruct((3,), jnp.int32))",
    raises(TypeError, "like.*int32"),
  ),
  Case("C.LinearOperator(lambda v: v, {})", raises(ValueError, "like")),
  Case("C.LinearOperator(lambda v: v, 'abc')", raises(TypeError, "like")),
  Case(
    "C.hutchinson_trace(C.LinearOperator(lambda v: jnp.ones(4), LIKE), key=0, num_probes=2)",
    raises(ValueError, r"matvec\(v\) has shape \(4,\)"),
  ),
  Case(
    "C.hutchinson_trace(C.LinearOperator(lambda v: 'x', LIKE), key=0, num_probes=2)",
    raises(TypeError, "matvec"),
  ),
  Case(
    "C.hutchinson_diag(C.LinearOperator(lambda v: {'a': v}, LIKE), key=0, num_probes=2)",
    raises(ValueError, "matvec"),
  ),
  Case(
    "C.top_eigenvalues(C.LinearOperator(lambda v: v.astype(int), LIKE), key=0)",
    raises(TypeError, "matvec"),
  ),
  Case(
    "C.lanczos(C.LinearOperator(lambda v: v[:2], LIKE), key=0, num_iterations=2)",
    raises(ValueError, "matvec"),
  ),
  Case(
    "C.LinearOperator(lambda v: v, jnp.ones(3)).dim", returns(lambda r: r == 3, "arrays as like")
  ),
  Case(
    "C.hutchinson_trace(C.LinearOperator(lambda v: v, {'a': LIKE, 'e': "
    "jax.ShapeDtypeStruct((0,), jnp.float32)}), key=0, num_probes=2).trace",
    returns(lambda r: r == 3.0, "zero-size leaves are part of the domain and contribute 0"),
  ),
  # -- hutchinson_trace / hutchinson_diag ----------------------------------------------------
  Case("C.hutchinson_trace(OP, key=0, num_probes=0)", raises(ValueError, "num_probes")),
  Case("C.hutchinson_trace(OP, key=0, num_probes=2.5)", raises(ValueError, "num_probes")),
  Case("C.hutchinson_trace(OP, key=0, num_probes=None)", raises(TypeError, "num_probes")),
  Case("C.hutchinson_trace(OP, key=0, num_probes='3')", raises(TypeError, "num_probes")),
  Case("C.hutchinson_trace(OP, key=0, num_probes=nan)", raises(ValueError, "num_probes")),
  Case("C.hutchinson_trace(OP, key=0, num_probes=inf)", raises(ValueError, "num_probes")),
  Case(
    "C.hutchinson_trace(OP, key=0, num_probes=2, variant='hutch++')",
    raises(ValueError, "num_probes"),
  ),
  Case("C.hutchinson_trace(OP, key=0, probe='uniform')", raises(ValueError, "probe")),
  Case("C.hutchinson_trace(OP, key=0, variant='exact')", raises(ValueError, "variant")),
  Case("C.hutchinson_trace(OP, key=None)", raises(TypeError, "key")),
  Case("C.hutchinson_trace(OP, key=1.5)", raises(TypeError, "key")),
  Case("C.hutchinson_trace(OP, key=True)", raises(TypeError, "key")),
  Case("C.hutchinson_trace(OP, key=jnp.ones(2))", raises(TypeError, "key")),
  Case("C.hutchinson_trace(OP, key=jnp.zeros(3, jnp.uint32))", raises(ValueError, "key")),
  Case("C.hutchinson_trace(OP)", raises(TypeError, "key")),
  Case("C.hutchinson_trace(lambda v: v, key=0)", raises(TypeError, "LinearOperator")),
  Case(
    "jax.jit(lambda n: C.hutchinson_trace(OP, key=0, num_probes=n).trace)(3)",
    raises(TypeError, "num_probes must be a concrete"),
  ),
  Case(
    "C.hutchinson_trace(OP, key=0, num_probes=4).trace",
    returns(lambda r: r == 15.0, "Rademacher probes are exact on a diagonal operator"),
  ),
  Case("C.hutchinson_diag(OP, key=0, num_probes=0)", raises(ValueError, "num_probes")),
  Case("C.hutchinson_diag(OP, key=0, probe='x')", raises(ValueError, "probe")),
  Case("C.hutchinson_diag(OP, key='k')", raises(TypeError, "key")),
  Case(
    "C.hutchinson_diag(OP, key=0, num_probes=1).diag",
    returns(lambda r: float(r["b"][0]) == 4.0, "one Rademacher probe recovers a diagonal"),
  ),
  # -- top_eigenvalues / lanczos -------------------------------------------------------------
  Case("C.top_eigenvalues(OP, key=0, k=0)", raises(ValueError, "k must lie")),
  Case("C.top_eigenvalues(OP, key=0, k=6)", raises(ValueError, r"k=6 exceeds .*\(5\)")),
  Case("C.top_eigenvalues(OP, key=0, k=1.5)", raises(ValueError, r"\bk\b")),
  Case("C.top_eigenvalues(OP, key=0, max_iterations=0)", raises(ValueError, "max_iterations")),
  Case("C.top_eigenvalues(OP, key=0, tol=-1.0)", raises(ValueError, "tol")),
  Case("C.top_eigenvalues(OP, key=0, tol=nan)", raises(ValueError, "tol")),
  Case("C.top_eigenvalues(3, key=0)", raises(TypeError, "LinearOperator")),
  Case("jax.jit(lambda k: C.top_eigenvalues(OP, key=0, k=k))(1)", raises(TypeError, r"\bk\b")),
  Case("C.lanczos(OP, key=0, num_iterations=6)", raises(ValueError, r"num_iterations=6 exceeds")),
  Case("C.lanczos(OP, key=0, num_iterations=0)", raises(ValueError, "num_iterations")),
  Case("C.lanczos(OP, key=0, num_iterations=None)", raises(TypeError, "num_iterations")),
  Case(
    "C.lanczos(OP, key=0, num_iterations=2, breakdown_tol=-1.0)", raises(ValueError, "breakdown")
  ),
  Case(
    "C.lanczos(OP, key=0, num_iterations=2, breakdown_tol=nan)", raises(ValueError, "breakdown")
  ),
  Case("C.lanczos(OP, key=0, num_iterations=2, probe='x')", raises(ValueError, "probe")),
  Case(
    "jnp.linalg.eigvalsh(C.tridiagonal(C.lanczos(OP, key=0, num_iterations=5)))",
    returns(
      lambda r: np.allclose(r, [1, 2, 3, 4, 5], atol=1e-4), "a full run finds every eigenvalue"
    ),
  ),
  # -- slq_density / plot_density ------------------------------------------------------------
  Case("C.slq_density(OP, key=0, grid=jnp.ones((2, 2)))", raises(ValueError, "grid must be 1-D")),
  Case("C.slq_density(OP, key=0, grid=jnp.zeros(0))", raises(ValueError, "grid.*non-empty")),
  Case("C.slq_density(OP, key=0, grid=jnp.array([3.0, 2.0]))", raises(ValueError, "grid.*increas")),
  Case("C.slq_density(OP, key=0, grid=jnp.array([1.0, 1.0]))", raises(ValueError, "grid.*increas")),
  Case("C.slq_density(OP, key=0, grid=jnp.array([0.0, nan]))", raises(ValueError, "grid.*finite")),
  Case("C.slq_density(OP, key=0, grid='abc')", raises(TypeError, "grid")),
  Case("C.slq_density(OP, key=0, grid=jnp.ones(2, jnp.complex64))", raises(TypeError, "grid")),
  Case("C.slq_density(OP, key=0, num_points=1)", raises(ValueError, "num_points")),
  Case("C.slq_density(OP, key=0, width_fraction=0.0)", raises(ValueError, "width_fraction")),
  Case("C.slq_density(OP, key=0, width_fraction=inf)", raises(ValueError, "width_fraction")),
  Case("C.slq_density(OP, key=0, num_probes=0)", raises(ValueError, "num_probes")),
  Case("C.slq_density(OP, key=0, num_iterations=0)", raises(ValueError, "num_iterations")),
  Case(
    "C.slq_density(C.LinearOperator(lambda v: v, jax.ShapeDtypeStruct((0,), jnp.float32)), key=0)",
    raises(ValueError, "dimension 0"),
  ),
  Case(
    "C.slq_density(OP, key=0, num_iterations=50, grid=jnp.arange(7)).density",
    returns(
      lambda r: r.shape == (7,), "num_iterations is clipped to the dimension; int grid is cast"
    ),
  ),
  Case("C.plot_density(3)", raises(TypeError, "density must be a SpectralDensity")),
  Case("C.plot_density(DENS, floor=-1.0)", raises(ValueError, "floor")),
  Case("C.plot_density(DENS, floor=nan)", raises(ValueError, "floor")),
  Case("C.plot_density(DENS, ax='ax')", raises(TypeError, "ax must be")),
  Case(
    "C.plot_density(DENS._replace(density=DENS.density.at[0].set(nan)))",
    raises(ValueError, "density has non-finite"),
  ),
  Case("C.run_tour(None)", raises(TypeError, "out_dir")),
  Case("C.run_tour(FILE)", raises(NotADirectoryError, "out_dir")),
  Case("C.run_tour(FILE, small='yes')", raises(TypeError, "small")),
  # -- mfac_ihvp / obs_saliency --------------------------------------------------------------
  Case("C.mfac_ihvp({'a': jnp.ones((2, 3)), 'b': jnp.ones((3, 3))})", raises(ValueError, "grads")),
  Case("C.mfac_ihvp(GRADS, damping=0.0)", raises(ValueError, "damping")),
  Case("C.mfac_ihvp(GRADS, damping=-1.0)", raises(ValueError, "damping")),
  Case("C.mfac_ihvp(GRADS, damping=nan)", raises(ValueError, "damping")),
  Case("C.mfac_ihvp(GRADS, damping=inf)", raises(ValueError, "damping")),
  Case("C.mfac_ihvp(GRADS, damping=None)", raises(TypeError, "damping")),
  Case("C.mfac_ihvp(jnp.ones((2, 3), int))", raises(TypeError, "grads")),
  Case("C.mfac_ihvp(GRADS.at[0, 0].set(nan))", raises(ValueError, "grads has non-finite")),
  Case("C.mfac_ihvp(jnp.ones((0, 3)))", raises(ValueError, "grads holds no gradient")),
  Case("C.mfac_ihvp(jnp.ones(()))", raises(ValueError, "grads")),
  Case("C.mfac_ihvp({})", raises(ValueError, "grads")),
  Case("C.mfac_ihvp(BIG, damping=1e-5)", raises(ValueError, "damping=1e-05 is too small")),
  Case(
    "jax.jit(lambda g: C.mfac_ihvp(g, damping=1e-9)(jnp.ones(3)))(BIG)",
    returns(_all_nan, "a failed factorisation under jit poisons the inverse (NaN)", nan_ok=True),
  ),
  Case("INV(jnp.ones(4))", raises(ValueError, r"\bx\b")),
  Case("INV(jnp.ones(3, bool))", raises(TypeError, r"\bx\b")),
  Case("INV(jnp.ones(3))", returns(lambda r: r.shape == (3,), "a valid product")),
  Case("INV.diagonal()", returns(lambda r: bool(jnp.all(r > 0)), "the diagonal of an SPD inverse")),
  Case(
    "C.obs_saliency({'a': jnp.ones(3)}, {'b': jnp.ones(3)})", raises(ValueError, "inverse_diag")
  ),
  Case("C.obs_saliency(jnp.ones(3, int), jnp.ones(3))", raises(TypeError, "params")),
  Case(
    "C.obs_saliency(jnp.ones(3), jnp.array([1.0, 0.0, -1.0]))",
    returns(lambda r: r.tolist() == [0.5, inf, inf], "non-positive diagonal: +inf", nan_ok=True),
  ),
  Case(
    "C.obs_saliency(jnp.ones(3), jnp.array([1.0, nan, 1.0]))",
    returns(lambda r: bool(jnp.isnan(r[1])) and r[0] == 0.5, "NaN propagates", nan_ok=True),
  ),
  # -- schedules -----------------------------------------------------------------------------
  Case("S.linear_decay(nan, 10)", raises(ValueError, "peak_value")),
  Case("S.linear_decay(inf, 10)", raises(ValueError, "peak_value")),
  Case("S.linear_decay(None, 10)", raises(TypeError, "peak_value")),
  Case("S.linear_decay('1', 10)", raises(TypeError, "peak_value")),
  Case("S.linear_decay(1.0, 0)", raises(ValueError, "total_steps")),
  Case("S.linear_decay(1.0, -5)", raises(ValueError, "total_steps")),
  Case("S.linear_decay(1.0, 10.5)", raises(ValueError, "total_steps")),
  Case("S.linear_decay(1.0, 10, warmup_steps=-1)", raises(ValueError, "warmup_steps")),
  Case("S.linear_decay(1.0, 10, warmup_steps=10)", raises(ValueError, "warmup_steps")),
  Case("S.linear_decay(1.0, 10, warmup_steps=2.5)", raises(ValueError, "warmup_steps")),
  Case("S.linear_decay(1.0, 10, end_value=nan)", raises(ValueError, "end_value")),
  Case("S.linear_decay(1.0, jnp.ones(2))", raises(TypeError, "total_steps")),
  Case(
    "jax.jit(lambda t: S.linear_decay(1.0, t)(0))(10)",
    raises(TypeError, "total_steps must be a concrete"),
  ),
  Case(
    "S.linear_decay(1.0, jnp.array(10))(5)",
    returns(lambda r: np.isclose(r, 0.5), "a concrete 0-d array is a number"),
  ),
  Case("jax.jit(lambda p: S.linear_decay(p, 10)(5))(nan)", returns(_all_nan, TRACED, nan_ok=True)),
  Case("S.refined([1.0, -1.0], 1.0)", raises(ValueError, r"grad_norms\[1\] = -1")),
  Case("S.refined([1.0, 0.0], 1.0)", raises(ValueError, r"grad_norms\[1\] = 0")),
  Case("S.refined([nan, 1.0], 1.0)", raises(ValueError, r"grad_norms\[0\] = nan")),
  Case("S.refined([1.0, inf], 1.0)", raises(ValueError, r"grad_norms\[1\] = inf")),
  Case("S.refined([1.0], 1.0)", raises(ValueError, "grad_norms.*length >= 2")),
  Case("S.refined([[1.0, 2.0]], 1.0)", raises(ValueError, "grad_norms.*1-D")),
  Case("S.refined(None, 1.0)", raises(TypeError, "grad_norms")),
  Case("S.refined('ab', 1.0)", raises(TypeError, "grad_norms")),
  Case("S.refined([True, True], 1.0)", raises(TypeError, "grad_norms")),
  Case("S.refined([1.0, 1j], 1.0)", raises(TypeError, "grad_norms")),
  Case("jax.jit(lambda g: S.refined(g, 1.0)(0))(jnp.ones(3))", raises(TypeError, "grad_norms")),
  Case("S.refined([1.0, 2.0], nan)", raises(ValueError, "peak_value")),
  Case("S.refined([1.0, 2.0], 1.0, power=0.0)", raises(ValueError, "power")),
  Case("S.refined([1.0, 2.0], 1.0, smoothing=2.0)", raises(ValueError, "smoothing")),
  Case(
    "S.refined(np.ones(3), 1.0)(7)",
    returns(lambda r: r == 0.0, "counts past the recorded run give learning rate 0"),
  ),
  Case("S.scale_for_batch_size(nan, 1, 2)", raises(ValueError, "learning_rate")),
  Case("S.scale_for_batch_size(-0.1, 1, 2)", raises(ValueError, "learning_rate")),
  Case("S.scale_for_batch_size('0.1', 1, 2)", raises(TypeError, "learning_rate")),
  Case("S.scale_for_batch_size(0.1, 0, 2)", raises(ValueError, "base_batch_size")),
  Case("S.scale_for_batch_size(0.1, None, 2)", raises(TypeError, "base_batch_size")),
  Case("S.scale_for_batch_size(0.1, 1, 2.5)", raises(ValueError, "batch_size")),
  Case("S.scale_for_batch_size(0.1, 1, 2, 'adam')", raises(ValueError, "variant")),
  Case(
    "S.scale_for_batch_size(S.linear_decay(1.0, 10), 1, 4)(0)",
    returns(lambda r: r == 4.0, "a schedule is scaled pointwise"),
  ),
]


def test_table_is_large_enough():
  assert len(CASES) >= 75


@params(CASES)
def test_case(case):
  run(case, NS)
