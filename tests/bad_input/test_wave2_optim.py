"""Hostile inputs, round two, part C (optim): DIFF2's per-example shapes, AdAdaGrad's tests on
non-finite gradients, fake_quant at the dtype's edge and on inf/NaN, reg_newton on a NaN
objective and bf16 params, eps = 0 in diffGrad and HESSO-Adam, dp_sgd without params and
the refined schedule at extreme norms (harness in tests/bad_input/harness.py).

The table holds one-line reproducers; the functions below it check values where the
behaviour changed (closed forms and float64 references).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim as O
from optim.quant import fake_quant, quantize_params
from optim.schedules import refined
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
P = {"w": jnp.array([[0.5, -1.0, 2.0], [1.5, 0.3, -0.2]]), "b": jnp.array([0.1, -0.3, 0.2])}
G = jax.tree.map(lambda x: 0.5 * x, P)
PE = jax.tree.map(lambda g: jnp.stack([0.5 * g, 1.5 * g]), G)  # 2 examples, mean G
GF = lambda p: PE  # grad_fn of DIFF2
F = lambda p: jnp.sum(jnp.logaddexp(0.0, p) - 0.3 * p)  # smooth, convex, minimum finite
FNAN = lambda p: jnp.sum(p**2) + jnp.nan  # NaN value, finite gradient
# Finite at the start, NaN where the (single-trial) Newton step lands.
FJUMP = lambda p: jnp.sum((p - 2.0) ** 2) + jnp.where(p[0] > 1.0, jnp.nan, 0.0)
PB = jnp.array([2.0, -1.0], jnp.bfloat16)
NAN_PE = jax.tree.map(lambda g: g.at[0].set(nan), PE)
BIG = jnp.array([-3e38, 1.0, 3e38])


def d2(grads=PE, grad_fn=GF, params=P, steps=2):
  """``steps`` DIFF2 updates (the second one a difference step, which calls grad_fn)."""
  tx = O.scale_by_diff2(1.0, 0.1, 0.0, 3)
  s = tx.init(params)
  for _ in range(steps):
    u, s = tx.update(grads, s, params, grad_fn=grad_fn)
  return u


def nstep(tx, f, p, grads=None):
  g = jax.grad(F)(p) if grads is None else grads
  return tx.update(g, tx.init(p), p, obj_fn=f)


def _nan(r) -> bool:
  return not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(r))


def _poisoned_test(t) -> bool:
  return (not bool(t.passed)) and bool(jnp.isnan(t.batch_size)) and bool(jnp.isnan(t.statistic))


NS = {
  **{k: v for k, v in globals().items() if k.isupper() and not k.startswith("_")},
  "O": O,
  "jax": jax,
  "jnp": jnp,
  "np": np,
  "optax": optax,
  "nan": nan,
  "inf": inf,
  "d2": d2,
  "nstep": nstep,
  "fake_quant": fake_quant,
  "quantize_params": quantize_params,
  "refined": refined,
}

CASES = [
  # -- DIFF2: per-example vs mean shapes ------------------------------------------------------
  Case("d2(grad_fn=lambda p: G)", raises(ValueError, r"grad_fn\(prev_params\).*mean gradient")),
  Case(
    "d2(grad_fn=lambda p: jax.tree.map(lambda g: g[:1], PE))",
    raises(ValueError, r"grad_fn\(prev_params\)\['b'\] has shape \(1, 3\) but updates"),
  ),
  Case("d2(grad_fn=lambda p: PE['w'])", raises(ValueError, "grad_fn.*same pytree structure")),
  Case(
    "d2(grad_fn=lambda p: jax.tree.map(lambda g: g.astype(jnp.int32), PE))",
    raises(TypeError, r"grad_fn\(prev_params\)\['b'\] has dtype int32"),
  ),
  Case("d2(grads=G)", raises(ValueError, r"updates \(per example\).*mean gradient")),
  Case(
    "jax.jit(lambda p: d2(params=p, grad_fn=lambda q: G))(P)",
    raises(ValueError, r"grad_fn\(prev_params\).*mean gradient"),
  ),
  Case("d2(steps=1, grad_fn=lambda p: G)", raises(ValueError, "mean gradient")),
  Case(
    "O.dp_sgd(0.1, 1.0, 0.0).update(G, O.dp_sgd(0.1, 1.0, 0.0).init(P), P)",
    raises(ValueError, r"updates \(per example\).*mean gradient"),
  ),
  Case(
    "O.dice_sgd(0.1, 1.0, 1.0, 0.0).update(G, O.dice_sgd(0.1, 1.0, 1.0, 0.0).init(P), P)",
    raises(ValueError, "mean gradient"),
  ),
  Case("d2()", returns(None, "per-example gradients of the same batch: valid")),
  # -- dp_sgd without params -------------------------------------------------------------------
  Case(
    "O.scale_by_dp_sgd(1.0, 0.0).update(jnp.ones(3), O.scale_by_dp_sgd(1.0, 0.0).init(None))",
    raises(ValueError, r"update got no params, and updates has shape \(3,\)"),
  ),
  Case(
    "O.dp_sgd(0.1, 1.0, 0.0).update(G, O.dp_sgd(0.1, 1.0, 0.0).init(P))",
    raises(ValueError, r"updates\['b'\] has shape \(3,\).*Pass the params"),
  ),
  # -- AdAdaGrad's tests on non-finite per-example gradients ---------------------------------
  Case("O.loops.norm_test(NAN_PE)", raises(ValueError, "norm_test: .*non-finite statistics")),
  Case(
    "O.loops.augmented_inner_product_test(NAN_PE)",
    raises(ValueError, "augmented_inner_product_test: .*non-finite"),
  ),
  Case(
    "O.loops.norm_test(jax.tree.map(lambda g: g.at[1].set(inf), PE))",
    raises(ValueError, "non-finite statistics"),
  ),
  Case(
    "O.loops.norm_test({'w': jnp.array([[1e20, 0.0], [-1e20, 1.0]])})",
    raises(ValueError, "overflow"),
  ),
  Case(
    "jax.jit(O.loops.norm_test)(NAN_PE)",
    returns(_poisoned_test, "traced: passed=False, NaN batch size (docstring)", nan_ok=True),
  ),
  Case(
    "jax.jit(O.loops.augmented_inner_product_test)(NAN_PE)",
    returns(_poisoned_test, "traced: passed=False, NaN batch size (docstring)", nan_ok=True),
  ),
  Case(
    "O.loops.adaptive_batch_train(lambda w, e: jnp.sqrt(w[0] * e), jnp.zeros(1), jnp.ones(8),"
    " optax.sgd, 0.1, num_steps=2, initial_batch_size=2)",
    raises(ValueError, "at step 0 the per-example gradients .* are not finite"),
  ),
  # -- fake_quant: overflowing ranges, inf and NaN ---------------------------------------------
  Case(
    "fake_quant(BIG, 8, symmetric=False)",
    returns(lambda q: bool(jnp.all(jnp.abs(q - BIG) <= 6e38 / 255)), "range without overflow"),
  ),
  Case(
    "fake_quant(jnp.array([-3e38, 1.0, 3.4e38]), 2)",
    returns(
      lambda q: bool(jnp.allclose(q, jnp.array([-3.4e38, 0.0, 3.4e38]), rtol=1e-6)),
      "scale past 2**126: folded, not flushed to 0",
    ),
  ),
  Case(
    "fake_quant(BIG.astype(jnp.bfloat16), 4, symmetric=False)",
    returns(lambda q: q.dtype == jnp.bfloat16, "bf16 near its max: finite"),
  ),
  Case(
    "fake_quant(jnp.array([65504.0, -3.0, 1.0], jnp.float16), 3, symmetric=False)",
    returns(lambda q: q.dtype == jnp.float16, "a grid end past float16's max saturates"),
  ),
  Case(
    "fake_quant(jnp.array([-1.0, 0.5, inf]), 8)",
    returns(lambda q: q.tolist()[2] == 1.0, "inf clips to the finite range (docstring)"),
  ),
  Case(
    "fake_quant(jnp.array([-1.0, 0.5, -inf]), 8, symmetric=False)",
    returns(lambda q: bool(q[2] == q[0]), "-inf lands on the grid's low end"),
  ),
  Case(
    "fake_quant(jnp.array([-1.0, 0.5, nan]), 8)",
    returns(
      lambda q: bool(jnp.isnan(q[2])) and bool(jnp.all(jnp.isfinite(q[:2]))),
      "NaN only where the input is NaN (docstring)",
      nan_ok=True,
    ),
  ),
  Case(
    "fake_quant(jnp.array([inf, -inf]), 4)",
    returns(lambda q: q.tolist() == [0.0, 0.0], "an all-inf tensor: the range is {0}"),
  ),
  Case(
    "fake_quant(jnp.array([0.3, -1.0, 2.5]), 32, symmetric=False)",
    returns(lambda q: bool(jnp.allclose(q, jnp.array([0.3, -1.0, 2.5]), atol=1e-6)), "bits=32"),
  ),
  # -- reg_newton ------------------------------------------------------------------------------
  Case(
    "O.loops.reg_newton_minimize(FNAN, jnp.array([1.0, -2.0]), max_iterations=3)",
    raises(ValueError, r"obj_fn is not finite at iterate 0 \(value nan.*without a step"),
  ),
  Case(
    "O.loops.reg_newton_minimize(FJUMP, jnp.array([0.0]), search_max_iterations=1)",
    raises(ValueError, "obj_fn is not finite at iterate 2"),
  ),
  Case(
    "jax.jit(lambda p: O.loops.reg_newton_minimize(FNAN, p, max_iterations=3))"
    "(jnp.array([1.0, -2.0]))",
    returns(
      lambda r: (
        int(r.n_iters) == 0
        and not bool(r.converged)
        and r.params.tolist() == [1.0, -2.0]
        and int(r.tries.sum()) == 0
      ),
      "traced: stops before any step, converged=False (docstring)",
      nan_ok=True,
    ),
  ),
  Case(
    "nstep(O.scale_by_reg_newton(), FNAN, jnp.array([1.0, -2.0]))",
    returns(
      lambda r: bool(jnp.all(jnp.isnan(r[0]))) and float(r[1].gamma) == 1.0,
      "optax form: a NaN step (apply_if_finite skips it), gamma kept (docstring)",
      nan_ok=True,
    ),
  ),
  Case(
    "O.loops.reg_newton_minimize(F, PB, max_iterations=20, tol=1e-2)",
    returns(
      lambda r: (
        r.params.dtype == jnp.bfloat16
        and bool(jnp.all(jnp.isfinite(r.params)))
        and float(r.value) < float(r.values[0])
      ),
      "bf16 params: float32 search and solve, bf16 iterates (docstring)",
      nan_ok=True,  # the history after the stop is NaN (documented)
    ),
  ),
  Case(
    "jax.jit(lambda p: nstep(O.reg_newton(1.0), F, p))(PB)",
    returns(lambda r: r[0].dtype == jnp.bfloat16 and bool(F(PB + r[0]) < F(PB)), "bf16 step"),
  ),
  # -- eps = 0 ---------------------------------------------------------------------------------
  Case(
    "O.diffgrad(0.1, eps=0.0).update(jnp.array([0.0, 1.0]), O.diffgrad(0.1, eps=0.0)"
    ".init(jnp.zeros(2)), jnp.zeros(2))[0]",
    returns(lambda u: float(u[0]) == 0.0, "0/0 = 0 (docstring)"),
  ),
  Case(
    "O.hesso(0.1, [{'w': 1}], variant='adam', eps=0.0).update(jax.tree.map(jnp.zeros_like,"
    " P), O.hesso(0.1, [{'w': 1}], variant='adam', eps=0.0).init(P), P)[0]['b']",
    returns(lambda u: u.tolist() == [0.0, 0.0, 0.0], "0/0 = 0 (docstring)"),
  ),
  Case(
    "O.hesso(0.1, [{'w': 1}], variant='adamw', eps=0.0).update(jax.tree.map(jnp.zeros_like,"
    " P), O.hesso(0.1, [{'w': 1}], variant='adamw', eps=0.0).init(P), P)[0]['b']",
    returns(lambda u: u.tolist() == [0.0, 0.0, 0.0], "0/0 = 0 (docstring)"),
  ),
  # -- refined at extreme norms ----------------------------------------------------------------
  Case(
    "[float(refined(np.full(4, 1e-160), 1.0)(t)) for t in range(4)]",
    returns(lambda r: np.allclose(r, [1.0, 2 / 3, 1 / 3, 0.0]), "log space: constant norms"),
  ),
  Case(
    "[float(refined(np.full(4, 1e30), 1.0, power=8.0)(t)) for t in range(4)]",
    returns(lambda r: np.allclose(r, [1.0, 2 / 3, 1 / 3, 0.0]), "log space: constant norms"),
  ),
]


@params(CASES)
def test_case(case):
  run(case, NS)


# ------------------------------------------------------------------------ values: DIFF2 / DP


def test_dp_sgd_without_params_still_works_for_one_release_with_a_deprecation_warning():
  tx = O.scale_by_dp_sgd(1.0, 0.0)
  g = {"w": jnp.array([[[3.0, 4.0]], [[0.3, 0.4]]])}  # 2 examples of a (1, 2) parameter
  with pytest.warns(DeprecationWarning, match="will be removed in the next release"):
    u, _ = tx.update(g, tx.init(None))
  params = {"w": jnp.zeros((1, 2))}
  want, _ = tx.update(g, tx.init(params), params)
  np.testing.assert_array_equal(u["w"], want["w"])
  np.testing.assert_allclose(want["w"], [[0.45, 0.6]], rtol=1e-6)


# ------------------------------------------------------------------------ values: AdAdaGrad


def test_finite_batch_tests_under_jit_equal_the_eager_ones():
  g = {"w": jnp.array([[1.0, 0.0], [3.0, 0.0], [2.0, 1.0]])}
  for test in (O.loops.norm_test, O.loops.augmented_inner_product_test):
    eager, traced = test(g), jax.jit(test)(g)
    for a, b in zip(eager, traced):
      np.testing.assert_array_equal(a, b)
    assert np.isfinite(float(eager.batch_size))


# ------------------------------------------------------------------------ values: fake_quant


def test_fake_quant_near_the_float32_max_is_the_scaled_quantization_of_normal_input():
  """Q(2^k x) = 2^k Q(x) for a power of 2: the folded grid is the same grid, scaled."""
  x = jnp.array([-0.7, 0.01, 0.33, 0.9, -0.25])
  k = 2.0**127
  for bits, sym in [(2, True), (4, True), (8, True), (1, False), (3, False), (8, False)]:
    big = np.asarray(fake_quant(x * k, bits, symmetric=sym), np.float64)
    # numpy divides exactly (XLA's reciprocal of 2^127 would flush to 0)
    np.testing.assert_array_equal(big / k, fake_quant(x, bits, symmetric=sym))


def test_fake_quant_non_finite_entries_do_not_touch_the_others():
  x = jnp.array([[0.3, -1.2, 0.7], [2.0, 0.1, -0.4]])
  for bits, sym in [(4, True), (3, False)]:
    for bad in (inf, -inf, nan):
      y = fake_quant(x.at[0, 1].set(bad), bits, symmetric=sym)
      ref = fake_quant(x.at[0, 1].set(0.0), bits, symmetric=sym)  # same finite range
      mask = np.ones(x.shape, bool)
      mask[0, 1] = False
      np.testing.assert_array_equal(np.asarray(y)[mask], np.asarray(ref)[mask])
      if bad != bad:
        assert np.isnan(y[0, 1])
      else:  # on the grid's end: the quantized max (or min) of the finite range
        end = ref.max() if bad > 0 else ref.min()
        if sym:
          end = jnp.max(jnp.abs(ref)) * (1 if bad > 0 else -1)
        assert float(y[0, 1]) == float(end)
    # per channel: an inf in one channel leaves the other channel exactly as it was
    y = fake_quant(x.at[0, 1].set(inf), bits, symmetric=sym, axis=0)
    np.testing.assert_array_equal(y[1], fake_quant(x, bits, symmetric=sym, axis=0)[1])


def test_fake_quant_gradient_is_straight_through_and_zero_at_non_finite_entries():
  x = jnp.array([1.0, inf, nan, -2.0, -inf])
  g = jax.grad(lambda v: jnp.sum(jnp.where(jnp.isfinite(fake_quant(v, 4)), fake_quant(v, 4), 0)))
  np.testing.assert_array_equal(g(x), [1.0, 0.0, 0.0, 1.0, 0.0])


def test_quantize_params_inf_leaf_only_changes_that_leaf():
  p = {"w": jnp.array([[0.3, -1.0], [0.9, 0.2]]), "b": jnp.array([0.5, inf])}
  q = quantize_params(p, 4)
  np.testing.assert_array_equal(q["w"], quantize_params({"w": p["w"]}, 4)["w"])
  assert q["b"].tolist() == [0.5, 0.5]


# ------------------------------------------------------------------------ values: reg_newton


def test_reg_newton_bf16_params_follow_the_float32_run():
  f32 = O.loops.reg_newton_minimize(F, PB.astype(jnp.float32), max_iterations=20, tol=1e-4)
  b16 = O.loops.reg_newton_minimize(F, PB, max_iterations=20, tol=1e-2)
  assert b16.params.dtype == jnp.bfloat16 and b16.value.dtype == jnp.float32
  gap = F(b16.params.astype(jnp.float32)) - f32.value  # F'' ~ 0.2 near the minimum
  assert 0.0 <= float(gap) < 1e-3


# ------------------------------------------------------------------------ values: eps = 0


def test_diffgrad_eps_zero_first_step_is_sigmoid_friction_times_sign():
  """Step 1 at eps = 0: m/sqrt(v) = sign(g) after both bias corrections, xi = sigmoid(|g|)."""
  g = jnp.array([0.0, 2.0, -0.5])
  for tx in (O.scale_by_diffgrad(eps=0.0), optax.inject_hyperparams(O.scale_by_diffgrad)(eps=0.0)):
    u, _ = tx.update(g, tx.init(jnp.zeros(3)), jnp.zeros(3))
    want = np.asarray(jax.nn.sigmoid(jnp.abs(g)) * jnp.sign(g))
    np.testing.assert_allclose(u, want, rtol=1e-5)  # float32 bias corrections
    assert float(u[0]) == 0.0


@pytest.mark.parametrize("variant", ["adam", "adamw"])
def test_hesso_adam_eps_zero_first_step_is_minus_lr_sign(variant):
  """Adam's first step at eps = 0 is -lr * sign(g); a zero gradient gives 0, not NaN."""
  p = {"w": jnp.array([[1.0, 0.5, -2.0, 0.25]])}
  g = {"w": jnp.array([[0.0, 3.0, -0.1, 0.0]])}
  tx = O.hesso(0.1, [{"w": 1}], variant=variant, eps=0.0, start_pruning_step=100)
  u, s = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(u["w"], [[0.0, -0.1, 0.1, 0.0]], rtol=1e-5)  # float32
  u, _ = tx.update(g, s, optax.apply_updates(p, u))
  assert bool(jnp.all(jnp.isfinite(u["w"]))) and float(u["w"][0, 0]) == 0.0


# ------------------------------------------------------------------------ values: refined


def _refined_reference(norms, power):
  """The paper's formula in float64, on norms in the normal range."""
  w = np.asarray(norms, np.float64) ** -power
  tail = np.array([w[t + 1 :].sum() for t in range(len(w))])
  eta = w * tail
  return (eta / eta.max()).astype(np.float32)


@pytest.mark.parametrize("scale", [1e-30, 1e30, 1e-160, 1e160])
@pytest.mark.parametrize("power", [1.0, 2.0, 8.0])
def test_refined_at_extreme_norms_matches_the_float64_reference(scale, power):
  """The schedule depends on the norms' ratios only: norms * scale give the same table."""
  norms = np.array([1.0, 0.5, 2.0, 1.5, 0.8, 3.0, 1.2])
  s = refined(norms * scale, 1.0, power=power)
  got = np.array([float(s(t)) for t in range(norms.size)])
  np.testing.assert_allclose(got, _refined_reference(norms, power), rtol=1e-6, atol=1e-30)


def test_refined_on_normal_norms_is_the_direct_formula_bit_for_bit():
  norms = np.exp(np.random.default_rng(0).standard_normal(50))
  s = refined(norms, 0.3, power=2.0)
  w = norms**-2.0
  tail = np.concatenate([np.cumsum(w[::-1])[::-1][1:], [0.0]])
  eta = w * tail
  want = np.asarray(jnp.asarray(0.3 * eta / eta.max(), dtype=jnp.float32))
  np.testing.assert_array_equal(np.array([s(t) for t in range(50)]), want)
