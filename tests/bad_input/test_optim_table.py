"""Bad input over the shared optimizer table (tests/optim/cases*.py): the guard, zero-size
leaves, non-finite gradients. The one-line reproducers of each optimizer are in test_optim.py.

Every case of ``FIRST_ORDER_CASES + CURVATURE_CASES`` must reject integer parameters and
gradients, gradients shaped unlike the parameters and a state built for other parameters
(errors naming the argument, raised while tracing); must give finite updates on a pytree
with a zero-size leaf; and must follow its documented non-finite-gradient policy (the
"Non-finite gradients:" sentence of its docstring), including the composition with
``optax.apply_if_finite``, which must skip a NaN step and leave params and state untouched.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim
from optim._tree import keys_to_data
from tests.optim.cases_curvature import CURVATURE_CASES
from tests.optim.cases_first_order import FIRST_ORDER_CASES

# Cases whose extra arguments are built for the shared table's own parameters (TrAct's
# first-layer inputs, DIFF2's per-example gradient function) cannot run on the pytrees
# below; their hostile inputs are tabled in tests/bad_input/test_optim_wave2.py.
TABLE_BOUND = {"tract_sgd", "diff2"}
CASES = [c for c in FIRST_ORDER_CASES + CURVATURE_CASES if c.name not in TABLE_BOUND]
PARAMS = {"w": jnp.array([[0.5, -1.0, 2.0], [1.5, 0.3, -0.2]]), "b": jnp.array([0.1, -0.3, 0.2])}
ZERO_SIZE = {"w": jnp.zeros((0, 3)), "b": jnp.array([0.5, 2.0])}


def loss(params):
  return 1.0 + sum(jnp.sum((x.astype(jnp.float32) - 1.0) ** 2) for x in jax.tree.leaves(params))


def grads_for(case, params):
  g = jax.grad(loss)(params)
  if case.per_example:  # two examples whose mean is g
    return jax.tree.map(lambda x: jnp.stack([0.5 * x, 1.5 * x]), g)
  return g


def extra_for(case, params, grads):
  extra = {"obj_fn": loss, "value": loss(params)}
  if case.extra_args is not None:
    extra.update(case.extra_args(loss, params, grads))
  return extra


def step(case, tx, params, state, grads=None):
  grads = grads_for(case, params) if grads is None else grads
  updates, state = tx.update(grads, state, params, **extra_for(case, params, grads))
  return optax.apply_updates(params, updates), state, updates


def with_nan(grads):
  """``grads`` with one NaN coordinate (in the first example of per-example gradients)."""
  return {**grads, "b": grads["b"].at[(0,) * grads["b"].ndim].set(jnp.nan)}


def all_finite(tree) -> bool:
  return all(
    bool(jnp.all(jnp.isfinite(x)))
    for x in jax.tree.leaves(keys_to_data(tree))
    if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
  )


ids = lambda c: c.name
# The first transformation of these chains is optax's own (unguarded), which casts integer
# gradients to float before ours sees them.
OPTAX_FIRST = {"coordinate_clip_threshold_adam", "hesso_sgd_groups_b_rows", "weight_ema_sgd"}
# Their guarded transformations hold no params-shaped state (a key, or nothing).
NO_PARAMS_STATE = {
  "perp_grad_sgd",
  "coordinate_clip_threshold_sgd",
  "coordinate_clip_threshold_adam",
  "normalized_gd",
  "dp_sgd",
  "hesso_sgd_groups_b_rows",  # group masks and counters; the SGD base is optax's
  "reg_newton",  # count, gamma and the trial count: scalars, whatever the params
  "mask_sparsity_sgd",  # optax.EmptyState, and plain SGD's
  "robust_mean_sgd_winsorize",  # optax.EmptyState
  "robust_mean_sgd_m3",
}


# ----------------------------------------------------------------------------- guard


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_integer_params_are_rejected_at_init_naming_params(case):
  tx = case.make(case.lr)
  with pytest.raises(TypeError, match=r"params\['w'\] has dtype int32"):
    tx.init({"w": jnp.ones((2, 3), jnp.int32), "b": PARAMS["b"]})


@pytest.mark.parametrize("case", [c for c in CASES if c.name not in OPTAX_FIRST], ids=ids)
def test_integer_updates_are_rejected_naming_updates(case):
  tx = case.make(case.lr)
  grads = jax.tree.map(lambda g: g.astype(jnp.int32), grads_for(case, PARAMS))
  with pytest.raises(TypeError, match=r"updates\['b'\] has dtype int32"):
    step(case, tx, PARAMS, tx.init(PARAMS), grads)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_updates_shaped_unlike_params_do_not_broadcast(case):
  tx = case.make(case.lr)
  params = {"w": PARAMS["w"], "b": PARAMS["b"][:1]}  # (1,) against gradients of shape (3,)
  grads = grads_for(case, PARAMS)
  with pytest.raises(ValueError, match=r"updates.*\['b'\] has shape \(3,\) but params has \(1,\)"):
    jax.eval_shape(lambda: step(case, tx, params, tx.init(params), grads))


@pytest.mark.parametrize("case", [c for c in CASES if c.name not in NO_PARAMS_STATE], ids=ids)
def test_state_of_other_params_is_rejected_naming_state(case):
  tx = case.make(case.lr)
  other = {"w": PARAMS["w"], "b": jnp.ones(4)}
  with pytest.raises(ValueError, match=r"state"):
    step(case, tx, PARAMS, tx.init(other))


def test_guard_adds_no_retrace_under_jit():
  """The checks read shapes only: a jitted step traces once for repeated calls."""
  traces = []
  tx = optim.adamp(0.1)

  @jax.jit
  def jstep(params, state):
    traces.append(1)
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  params, state = PARAMS, tx.init(PARAMS)
  for _ in range(3):
    params, state = jstep(params, state)
  assert len(traces) == 1


# ----------------------------------------------------------------------------- zero-size


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_zero_size_leaves_give_finite_updates(case):
  tx = case.make(case.lr)
  state = tx.init(ZERO_SIZE)
  params, state, updates = step(case, tx, ZERO_SIZE, state)
  params, state, updates = step(case, tx, params, state)
  assert updates["w"].shape == (0, 3) and updates["b"].shape == (2,)
  assert all_finite(updates) and all_finite(params)
  assert not np.allclose(updates["b"], 0.0)  # the non-empty leaf still moves


@pytest.mark.parametrize(
  ("tx", "per_example"),
  [
    (optim.coordinate_clip(fraction=0.5), False),
    (optim.scale_by_adamp(channel_axis=0), False),
    (optim.scale_by_sgdp(channel_axis=0, weight_decay=0.1), False),
    (optim.dice_sgd(0.1, 1.0, 2.0, 0.5), True),
  ],
  ids=["coordinate_clip_fraction", "adamp_axis0", "sgdp_axis0_wd", "dice_noise"],
)
def test_zero_size_leaves_in_rules_outside_the_table(tx, per_example):
  g = jax.tree.map(jnp.ones_like, ZERO_SIZE)
  if per_example:
    g = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), g)
  u, _ = tx.update(g, tx.init(ZERO_SIZE), ZERO_SIZE)
  assert u["w"].shape == (0, 3) and all_finite(u)


def test_all_leaves_zero_size_is_a_no_op_for_the_adaptive_clip():
  tx = optim.coordinate_clip(fraction=0.5)
  u, _ = tx.update({"w": jnp.zeros((0, 3))}, tx.init(None))
  assert u["w"].shape == (0, 3)


# ----------------------------------------------------------------------------- non-finite


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_apply_if_finite_skips_a_nan_step_leaving_params_and_state_untouched(case):
  tx = optax.apply_if_finite(case.make(case.lr), max_consecutive_errors=2)
  if case.per_example:
    # Documented limitation (scale_by_dp_sgd): the skipped step's zeros are shaped like the
    # per-example gradients, which optax's lax.cond rejects against the update's shape.
    with pytest.raises(TypeError, match="false_fun"):
      step(case, tx, PARAMS, tx.init(PARAMS))
    return
  params, state, _ = step(case, tx, PARAMS, tx.init(PARAMS))
  bad = with_nan(grads_for(case, params))
  new_params, new_state, updates = step(case, tx, params, state, bad)
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, updates))
  chex.assert_trees_all_equal(new_params, params)
  chex.assert_trees_all_equal(keys_to_data(new_state.inner_state), keys_to_data(state.inner_state))
  assert int(new_state.notfinite_count) == 1 and not bool(new_state.last_finite)
  # The next finite step is the inner optimizer's step from the untouched state.
  _, after, u_after = step(case, tx, new_params, new_state)
  inner = case.make(case.lr)
  _, _, u_ref = step(case, inner, params, state.inner_state)
  chex.assert_trees_all_close(u_after, u_ref, rtol=1e-6)
  assert int(after.notfinite_count) == 0


# What one NaN gradient coordinate does (each case's "Non-finite gradients:" sentence):
# "poison": the update and the state turn non-finite, and so does the next update;
# "stateless": the update is NaN, the state stays finite, the next finite step is finite;
# "recover": like "stateless", though the state has moments (Sophia: the clip is its guard);
# "average": the update is NaN and the weight average keeps the NaN for good, while the next
#   update, from a stateless base, is finite.
POLICY = {
  "diffgrad": "poison",
  "diffgrad_mu_f32": "poison",
  "diffgrad_wd_masked": "poison",
  "adamp": "poison",
  "adamp_nesterov_wd": "poison",
  "sgdp": "poison",
  "sgdp_wd_masked": "poison",
  "perp_grad_sgd": "stateless",
  "coordinate_clip_threshold_sgd": "poison",  # optax.sgd's momentum keeps the NaN
  "coordinate_clip_threshold_adam": "poison",  # optax.scale_by_adam's moments keep it
  "normalized_gd": "stateless",
  "dp_sgd": "stateless",
  "dice_sgd": "poison",
  "dice_sgd_mu_f32": "poison",
  "sophia_h": "recover",
  "sophia_g": "recover",
  "adahessian": "poison",
  "adahessian_k05_every3_wd": "poison",
  "mfac": "poison",
  "hesso_sgd_groups_b_rows": "poison",  # the SGD momentum keeps the NaN
  "weight_ema_sgd": "average",
  "reg_newton": "recover",  # the step is NaN, gamma and the counts stay as they were
  "mask_sparsity_sgd": "stateless",
  "robust_mean_sgd_winsorize": "stateless",  # a NaN sorts last and is never clipped away
  "robust_mean_sgd_m3": "stateless",
}


def test_every_case_has_a_non_finite_policy():
  assert set(POLICY) == {c.name for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_nan_gradient_follows_the_documented_policy(case):
  tx = case.make(case.lr)
  params, state, _ = step(case, tx, PARAMS, tx.init(PARAMS))
  params, state, updates = step(case, tx, params, state, with_nan(grads_for(case, params)))
  assert not all_finite(updates), "a NaN gradient must not give a finite update silently"
  policy = POLICY[case.name]
  assert all_finite(state) == (policy not in ("poison", "average")), f"{case.name}: {policy}"
  params = jax.tree.map(lambda p: jnp.where(jnp.isfinite(p), p, 0.0), params)
  _, _, updates = step(case, tx, params, state)
  assert all_finite(updates) == (policy != "poison"), f"{case.name}: {policy}"


def test_sophia_inf_gradient_takes_a_clipped_step_and_keeps_a_finite_moment():
  tx = optim.scale_by_sophia(gamma=1.0, clip_threshold=0.5, update_interval=1, key=0)
  p = jnp.array([1.0, 2.0])
  f = lambda x: 0.5 * jnp.sum(x**2)
  u0, s = tx.update(jax.grad(f)(p), tx.init(p), p, obj_fn=f)
  u1, s1 = tx.update(jnp.array([jnp.inf, 1.0]), s, p, obj_fn=f)
  assert float(u1[0]) == 0.5  # the clip's limit, +rho
  assert bool(jnp.all(jnp.isfinite(s1.mu)))
  assert float(s1.mu[0]) == float(s.mu[0])  # the moment kept its last finite value
  assert float(s1.mu[1]) == pytest.approx(0.965 * float(s.mu[1]) + 0.035)
  u2, s2 = tx.update(jax.grad(f)(p), s1, p, obj_fn=f)
  assert bool(jnp.all(jnp.isfinite(u2))) and bool(jnp.all(jnp.isfinite(s2.mu)))


def test_sophia_nan_gradient_gives_a_nan_update_but_keeps_a_finite_moment():
  tx = optim.scale_by_sophia(gamma=1.0, update_interval=1, key=0)
  p = jnp.array([1.0, 2.0])
  f = lambda x: 0.5 * jnp.sum(x**2)
  u, s = tx.update(jnp.array([jnp.nan, 1.0]), tx.init(p), p, obj_fn=f)
  assert bool(jnp.isnan(u[0])) and bool(jnp.isfinite(u[1]))
  assert bool(jnp.all(jnp.isfinite(s.mu))) and bool(jnp.all(jnp.isfinite(s.hess)))


def test_coordinate_clip_clips_an_inf_coordinate_and_propagates_nan():
  u, _ = optim.coordinate_clip(threshold=1.5).update(jnp.array([jnp.inf, jnp.nan, 1.0]), ())
  assert float(u[0]) == 1.5 and bool(jnp.isnan(u[1])) and float(u[2]) == 1.0


@pytest.mark.parametrize("value", [jnp.inf, jnp.nan])
def test_normalized_gd_non_finite_loss_gives_nan_not_a_zero_step(value):
  tx = optim.scale_by_inverse_loss()
  u, _ = tx.update(jnp.ones(2), tx.init(None), value=jnp.float32(value))
  assert bool(jnp.all(jnp.isnan(u)))


def test_mfac_nan_stays_in_the_momentum_even_at_momentum_zero():
  tx = optim.scale_by_mfac(num_grads=2, damping=1.0)
  g = jnp.array([1.0, 2.0])
  _, s = tx.update(jnp.array([jnp.nan, 1.0]), tx.init(g), g)
  for _ in range(3):  # the window (2 slots) is clean again after two finite steps
    u, s = tx.update(g, s, g)
  assert not bool(jnp.all(jnp.isfinite(u)))
