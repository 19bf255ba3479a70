"""The iteration vocabulary and optim's namespace (docs/design.md, "API conventions").

Every renamed keyword, result field and moved name of this release still works for one
release, warns, and means the new one; the new ``converged`` fields say what they claim.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optim
from optim import curvature, loops, ot, quant

_D = jnp.array([3.0, 1.0, 2.0, 0.5])
_OP = curvature.LinearOperator(lambda v: _D * v, jax.ShapeDtypeStruct((4,), jnp.float32))
_F = lambda p: jnp.sum(jnp.logaddexp(0.0, p) - 0.3 * p) + 0.1 * jnp.sum(p**4)
_X = jnp.array([2.0, -1.0])
_COST = ot.sq_euclidean_cost(
  jnp.linspace(0.0, 1.0, 6)[:, None], jnp.linspace(0.5, 2.0, 5)[:, None] ** 2
)
_LOSS = lambda p: jnp.sum(p["a"] ** 2 * jnp.arange(1.0, 4.0)) + jnp.sum(jnp.sin(p["b"]) ** 2)
_P = {"a": jnp.array([0.3, -1.0, 0.5]), "b": jnp.array([0.3, -1.0, 0.5])}


def _one_step(make, **kw):
  opt = make(**kw)
  return opt.update(jax.grad(_F)(_X), opt.init(_X), _X, obj_fn=_F)


_SNS = functools.partial(ot.sinkhorn_newton_sparse, _COST, epsilon=0.05, rho=0.5)
_MIN = functools.partial(loops.reg_newton_minimize, _F, _X, max_iterations=5)

# (call, old keyword, new keyword, a value, another value that gives another result)
_RENAMED = {
  "top_eigenvalues(max_iters=)": (
    functools.partial(curvature.top_eigenvalues, _OP, key=0, k=2),
    "max_iters",
    "max_iterations",
    3,
    100,
  ),
  "lanczos(num_iters=)": (
    functools.partial(curvature.lanczos, _OP, key=0),
    "num_iters",
    "num_iterations",
    3,
    2,
  ),
  "slq_density(num_iters=)": (
    functools.partial(curvature.slq_density, _OP, key=0, num_points=16),
    "num_iters",
    "num_iterations",
    2,
    4,
  ),
  "layer_sensitivity(max_iters=)": (
    functools.partial(quant.layer_sensitivity, _LOSS, _P, bits=(2,), variant="hawq"),
    "max_iters",
    "max_iterations",
    1,
    50,
  ),
  "reg_newton_minimize(max_steps=)": (
    functools.partial(loops.reg_newton_minimize, _F, _X),
    "max_steps",
    "max_iterations",
    2,
    5,
  ),
  "reg_newton_minimize(grad_tol=)": (_MIN, "grad_tol", "tol", 0.5, 0.0),
  "reg_newton_minimize(max_search=)": (
    functools.partial(_MIN, gamma=1e3),
    "max_search",
    "search_max_iterations",
    1,
    40,
  ),
  "reg_newton_minimize(cg_maxiter=)": (_MIN, "cg_maxiter", "cg_max_iterations", 1, 100),
  "reg_newton(max_search=)": (
    functools.partial(_one_step, functools.partial(optim.reg_newton, 1.0, gamma=1e3)),
    "max_search",
    "search_max_iterations",
    1,
    40,
  ),
  "reg_newton(cg_maxiter=)": (
    functools.partial(_one_step, functools.partial(optim.reg_newton, 1.0)),
    "cg_maxiter",
    "cg_max_iterations",
    1,
    100,
  ),
  "scale_by_reg_newton(max_search=)": (
    functools.partial(_one_step, functools.partial(optim.scale_by_reg_newton, gamma=1e3)),
    "max_search",
    "search_max_iterations",
    1,
    40,
  ),
  "scale_by_reg_newton(cg_maxiter=)": (
    functools.partial(_one_step, optim.scale_by_reg_newton),
    "cg_maxiter",
    "cg_max_iterations",
    1,
    100,
  ),
  "sinkhorn_newton_sparse(num_sinkhorn=)": (
    _SNS,
    "num_sinkhorn",
    "sinkhorn_num_iterations",
    0,
    5,
  ),
  "sinkhorn_newton_sparse(max_newton=)": (_SNS, "max_newton", "max_iterations", 1, 50),
  "sinkhorn_newton_sparse(threshold=)": (_SNS, "threshold", "tol", 1e-2, 1e-6),
  "sinkhorn_newton_sparse(cg_maxiter=)": (_SNS, "cg_maxiter", "cg_max_iterations", 1, 100),
  "sinkhorn_newton_sparse(max_linesearch=)": (
    functools.partial(_SNS, epsilon=1.0, sinkhorn_num_iterations=0),
    "max_linesearch",
    "linesearch_max_iterations",
    1,
    30,
  ),
}


def _equal(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  same = lambda x, y: (
    np.array_equal(x, y, equal_nan=True) if isinstance(x, jax.Array) else bool(x == y)
  )
  return len(la) == len(lb) and all(same(x, y) for x, y in zip(la, lb))


@pytest.mark.parametrize("call, old, new, value, other", _RENAMED.values(), ids=_RENAMED.keys())
def test_old_keyword_warns_and_means_the_new_one(call, old, new, value, other):
  with pytest.warns(DeprecationWarning, match=rf"{old}=...\) is deprecated; use {new}="):
    got = call(**{old: value})
  assert _equal(got, call(**{new: value}))
  # The value was not dropped: another value gives another result.
  assert not _equal(got, call(**{new: other}))


# (result, old field, new field)
_FIELDS = {
  "EigenResult.iterations": (
    lambda: curvature.top_eigenvalues(_OP, key=0, k=2),
    "iterations",
    "n_iters",
  ),
  "LanczosResult.num_steps": (
    lambda: curvature.lanczos(_OP, key=0, num_iterations=3),
    "num_steps",
    "n_iters",
  ),
  "RegNewtonResult.num_steps": (lambda: _MIN(), "num_steps", "n_iters"),
  "RegNewtonResult.grad_norms": (lambda: _MIN(), "grad_norms", "errors"),
  "SNSResult.num_newton": (lambda: _SNS(), "num_newton", "n_iters"),
}


@pytest.mark.parametrize("make, old, new", _FIELDS.values(), ids=_FIELDS.keys())
def test_old_result_field_warns_and_reads_the_new_one(make, old, new):
  result = make()
  with pytest.warns(DeprecationWarning, match=rf"\.{old} is deprecated; use \.{new} "):
    got = getattr(result, old)
  assert got is getattr(result, new)
  assert old not in result._fields


_MOVED = {
  "reg_newton_minimize": "optim.loops.reg_newton_minimize",
  "RegNewtonResult": "optim.loops.RegNewtonResult",
  "adaptive_batch_train": "optim.loops.adaptive_batch_train",
  "AdaptiveBatchResult": "optim.loops.AdaptiveBatchResult",
  "norm_test": "optim.loops.norm_test",
  "augmented_inner_product_test": "optim.loops.augmented_inner_product_test",
  "BatchTest": "optim.loops.BatchTest",
  "hesso_structure": "optim.pruning.hesso_structure",
  "prune_groups": "optim.pruning.prune_groups",
  "compand_weights": "optim.compander.compand_weights",
  "expand_weights": "optim.compander.expand_weights",
  "nnx_companded": "optim.compander.nnx_companded",
  "conv_spatial_axes": "optim.layouts.conv_spatial_axes",
}


def _new_object(dotted):
  module, _, attr = dotted.rpartition(".")
  return getattr(__import__(module, fromlist=[attr]), attr)


@pytest.mark.parametrize("old, new", _MOVED.items(), ids=_MOVED.keys())
def test_moved_top_level_name_warns_and_is_the_new_object(old, new):
  assert old not in optim.__all__
  message = rf"optim\.{old} is deprecated; use {re.escape(new)} .*will be removed in the next"
  with pytest.warns(DeprecationWarning, match=message):
    got = getattr(optim, old)
  assert got is _new_object(new)


def test_from_import_of_a_moved_name_warns():
  with pytest.warns(DeprecationWarning, match="use optim.loops.reg_newton_minimize"):
    from optim import reg_newton_minimize
  assert reg_newton_minimize is loops.reg_newton_minimize


def test_renamed_result_class_warns_and_is_the_new_class():
  with pytest.warns(DeprecationWarning, match=r"optim\.ot\.SNSOutput is deprecated; use optim"):
    assert ot.SNSOutput is ot.SNSResult
  assert "SNSOutput" not in ot.__all__


def test_unknown_names_still_raise_attribute_error():
  with pytest.raises(AttributeError, match="no attribute 'reg_newton_minimise'"):
    optim.reg_newton_minimise  # noqa: B018
  with pytest.raises(AttributeError, match="no attribute 'SNSOutputs'"):
    ot.SNSOutputs  # noqa: B018


# The converged fields this release adds say what they claim.


def test_lanczos_converged_means_an_invariant_krylov_space():
  two = curvature.LinearOperator(
    lambda v: jnp.array([2.0, 2.0, 5.0, 5.0]) * v, jax.ShapeDtypeStruct((4,), jnp.float32)
  )
  res = curvature.lanczos(two, key=0, num_iterations=4)  # two distinct eigenvalues
  assert bool(res.converged) and int(res.n_iters) == 2
  res = curvature.lanczos(_OP, key=0, num_iterations=2)  # four distinct: not yet invariant
  assert not bool(res.converged) and int(res.n_iters) == 2


def test_reg_newton_minimize_converged_means_the_tolerance_was_met():
  res = loops.reg_newton_minimize(_F, _X, max_iterations=30, tol=1e-4)
  assert bool(res.converged) and float(res.errors[res.n_iters]) <= 1e-4
  res = loops.reg_newton_minimize(_F, _X, max_iterations=1, tol=1e-12)
  assert not bool(res.converged) and int(res.n_iters) == 1
