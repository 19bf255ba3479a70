"""Generic tests swept over the shared optimizer table (the optax way).

Every case in ``FIRST_ORDER_CASES + CURVATURE_CASES`` must: converge on a parabola (and on
Rosenbrock when it declares a learning rate for it), return updates in the gradients'
dtype, work under ``optax.inject_hyperparams``, take an optax schedule as its learning rate
(the same updates as the schedule's value at each step), accumulate under
``optax.MultiSteps``, not recompile on a second jitted call, keep its state structure
across steps, tolerate unknown extra arguments, give the same updates on parameters
sharded over 8 devices, and resume bit-identically from an orbax checkpoint of its state.

The harness always passes ``obj_fn`` (params -> scalar loss) and ``value`` (the current
loss) as extra keyword arguments, plus whatever ``case.extra_args`` builds. States may hold
typed PRNG keys; comparisons go through their raw key data.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from optim._tree import keys_to_data
from tests.helpers import orbax_roundtrip
from tests.optim.cases_curvature import CURVATURE_CASES
from tests.optim.cases_first_order import FIRST_ORDER_CASES

CASES = FIRST_ORDER_CASES + CURVATURE_CASES
CASES_BY_NAME = {c.name: c for c in CASES}
assert len(CASES_BY_NAME) == len(CASES), "duplicate case names in the optimizer table"
ROSENBROCK_CASES = [c for c in CASES if c.rosenbrock_lr is not None]
# optax.MultiSteps forwards extra arguments (obj_fn, sampled_obj_fn) to the inner update,
# so curvature cases take part; per-example cases cannot: MultiSteps accumulates
# gradients shaped like the parameters, and theirs carry a leading batch axis.
MULTISTEPS_CASES = [
  pytest.param(
    c,
    marks=pytest.mark.skip(
      reason="per-example gradients: optax.MultiSteps accumulates params-shaped gradients"
    )
    if c.per_example
    else (),
  )
  for c in CASES
]
N_EXAMPLES = 8


# ----------------------------------------------------------------------------- problems


_raw = keys_to_data  # typed keys -> their key data, so trees compare with numpy


class Problem:
  """A sum of per-example losses; grads are per-example for ``per_example`` cases.

  ``loss_i(x) = scale * (0.5 * ||x - (t + d_i)||^2) + offset`` for the quadratic kind; the
  offsets ``d_i`` average to zero, so the minimizer of the mean loss is ``t`` exactly.
  """

  def __init__(self, init, target, offsets, offset=1.0):
    self.init, self.target, self.offsets, self.offset = init, target, offsets, offset

  def example_loss(self, params, d):
    sq = sum(
      jnp.sum((p.astype(jnp.float32) - (t + di)) ** 2)
      for p, t, di in zip(jax.tree.leaves(params), jax.tree.leaves(self.target), jax.tree.leaves(d))
    )
    return 0.5 * sq + self.offset

  def loss(self, params):
    return jnp.mean(jax.vmap(self.example_loss, in_axes=(None, 0))(params, self.offsets))

  def grads(self, params, per_example):
    if per_example:
      g = jax.vmap(jax.grad(self.example_loss), in_axes=(None, 0))(params, self.offsets)
    else:
      g = jax.grad(self.loss)(params)
    # Gradients in the parameters' dtype (the loss itself is computed in float32).
    return jax.tree.map(lambda gi, p: gi.astype(p.dtype), g, params)


def _zero_mean_offsets(key, like, scale=0.1):
  def leaf(k, x):
    d = scale * jax.random.normal(k, (N_EXAMPLES, *x.shape))
    return d - d.mean(axis=0, keepdims=True)

  leaves, treedef = jax.tree.flatten(like)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [leaf(k, x) for k, x in zip(keys, leaves)])


# Start and target have equal per-leaf norms (⊥Grad keeps leaf norms fixed to first order:
# the start is a signed permutation of the target). Leading dims of 8 so that the same
# problem can be sharded over the 8-device mesh; "b" is 2-D so AdamP's projection is live.
PARABOLA_TARGET = {
  "a": jnp.array([1.0, -2.0, 0.5, 0.3, -0.7, 1.2, 0.4, -1.1]),
  "b": jnp.linspace(-1.0, 1.2, 16).reshape(8, 2),
}
PARABOLA_INIT = {
  "a": -jnp.roll(PARABOLA_TARGET["a"], 3),
  "b": PARABOLA_TARGET["b"][::-1] * jnp.array([-1.0, 1.0]),
}
PARABOLA = Problem(
  PARABOLA_INIT, PARABOLA_TARGET, _zero_mean_offsets(jax.random.key(0), PARABOLA_TARGET)
)


def _rosenbrock(x):
  x = x["xy"].astype(jnp.float32)
  return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


# ----------------------------------------------------------------------------- stepping


def _extra(case, obj_fn, params, grads, value):
  extra = {"obj_fn": obj_fn, "value": value}
  if case.extra_args is not None:
    extra.update(case.extra_args(obj_fn, params, grads))
  return extra


def _make_step(case, tx, problem, obj_fn=None):
  """One optimizer step as a pure function ``(params, state) -> (params, state, updates)``."""
  obj_fn = obj_fn or problem.loss

  def step(params, state):
    value = obj_fn(params)
    if problem is None:
      grads = jax.grad(obj_fn)(params)
    else:
      grads = problem.grads(params, case.per_example)
    updates, state = tx.update(grads, state, params, **_extra(case, obj_fn, params, grads, value))
    return optax.apply_updates(params, updates), state, updates

  return step


TRACES: dict[str, int] = {}


@functools.cache
def _jitted_parabola_step(name: str):
  """The shared jitted parabola step of one case; counts its traces in ``TRACES``."""
  case = CASES_BY_NAME[name]
  tx = case.make(case.lr)
  step = _make_step(case, tx, PARABOLA)

  def counted(params, state):
    TRACES[name] = TRACES.get(name, 0) + 1
    return step(params, state)

  return tx, jax.jit(counted)


def _run(case, tx, problem, init, steps, obj_fn=None):
  step = _make_step(case, tx, problem, obj_fn)

  @jax.jit
  def run(params):
    def body(carry, _):
      p, s = carry
      p, s, _ = step(p, s)
      return (p, s), None

    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return params

  return run(init)


def _rel_dist(x, y):
  num = sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
  den = sum(jnp.sum(b**2) for b in jax.tree.leaves(y))
  return float(jnp.sqrt(num / den))


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_parabola_converges_to_minimizer(case):
  params = _run(case, case.make(case.lr), PARABOLA, PARABOLA_INIT, case.steps)
  start = _rel_dist(PARABOLA_INIT, PARABOLA_TARGET)
  dist = _rel_dist(params, PARABOLA_TARGET)
  assert dist < case.tol, f"{case.name}: rel. distance {dist:.3g} (start {start:.3g}); {case.note}"


@pytest.mark.parametrize("case", ROSENBROCK_CASES, ids=lambda c: c.name)
def test_rosenbrock_converges_to_minimizer(case):
  init = {"xy": jnp.array([-1.2, 1.0])}
  tx = case.make(case.rosenbrock_lr)
  params = _run(case, tx, None, init, case.rosenbrock_steps, obj_fn=_rosenbrock)
  err = float(jnp.max(jnp.abs(params["xy"] - 1.0)))
  assert err < 10 * case.tol, f"{case.name}: |x - (1, 1)|_inf = {err:.3g}; {case.note}"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_update_dtype_equals_gradient_dtype(case, dtype):
  tx, step = _jitted_parabola_step(case.name)
  params = jax.tree.map(lambda x: x.astype(dtype), PARABOLA_INIT)
  state = tx.init(params)
  for _ in range(2):  # the second step sees a state produced by the first
    params, state, updates = step(params, state)
    for u in jax.tree.leaves(updates):
      assert u.dtype == dtype, f"{case.name}: update dtype {u.dtype} for {dtype.__name__} grads"
    for p in jax.tree.leaves(params):
      assert p.dtype == dtype


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_works_under_inject_hyperparams(case):
  tx_plain, step_plain = _jitted_parabola_step(case.name)
  tx = optax.inject_hyperparams(case.make)(learning_rate=case.lr)
  params = PARABOLA_INIT
  state = tx.init(params)
  assert case.hyperparam in state.hyperparams, sorted(state.hyperparams)
  step_inj = jax.jit(_make_step(case, tx, PARABOLA))
  _, s_inj, u_inj = step_inj(params, state)
  _, _, u_plain = step_plain(params, tx_plain.init(params))
  for a, b in zip(jax.tree.leaves(u_inj), jax.tree.leaves(u_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # The traced hyperparameter is really used: changing it in the state changes the step.
  hp = dict(s_inj.hyperparams)
  hp[case.hyperparam] = hp[case.hyperparam] * 0.5
  s_changed = s_inj._replace(hyperparams=hp)
  _, _, u_a = step_inj(params, s_inj)
  _, _, u_b = step_inj(params, s_changed)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(u_a), jax.tree.leaves(u_b)))


SCHEDULE_STEPS = 4


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_schedule_learning_rate_gives_the_updates_of_its_value_at_each_step(case):
  """The alias built with an optax schedule against the same alias with the schedule's
  value at each step (set through ``inject_hyperparams``), in lockstep on the same
  parameters, states and extra arguments."""
  schedule = optax.linear_schedule(case.lr, 0.25 * case.lr, transition_steps=SCHEDULE_STEPS - 1)
  tx_schedule = case.make(schedule)
  tx_value = optax.inject_hyperparams(case.make)(learning_rate=case.lr)
  step_schedule = _make_step(case, tx_schedule, PARABOLA)
  step_value = _make_step(case, tx_value, PARABOLA)

  @jax.jit
  def run(params):
    def body(carry, t):
      p, s_schedule, s_value = carry
      hp = dict(s_value.hyperparams)
      hp[case.hyperparam] = schedule(t).astype(hp[case.hyperparam].dtype)
      _, s_value, u_value = step_value(p, s_value._replace(hyperparams=hp))
      p, s_schedule, u_schedule = step_schedule(p, s_schedule)
      return (p, s_schedule, s_value), (u_schedule, u_value)

    init = (params, tx_schedule.init(params), tx_value.init(params))
    _, out = jax.lax.scan(body, init, jnp.arange(SCHEDULE_STEPS))
    return out

  u_schedule, u_value = run(PARABOLA_INIT)
  chex.assert_trees_all_close(u_schedule, u_value, rtol=1e-5, atol=1e-7)
  # The schedule is live: the last step's learning rate is a quarter of the first's.
  assert any(not np.allclose(u[0], u[-1]) for u in jax.tree.leaves(u_schedule)), (
    f"{case.name}: updates do not change along the schedule"
  )


@pytest.mark.parametrize("case", MULTISTEPS_CASES, ids=lambda c: c.name)
def test_multisteps_k2_emits_the_inner_update_every_second_step(case):
  """``optax.MultiSteps(k=2)``: the first mini-step returns zeros (so the parameters, hence
  the gradient, repeat), the second returns the inner optimizer's update of that gradient;
  jitted, with the state's structure, shapes and dtypes fixed across steps."""
  tx_inner, step_inner = _jitted_parabola_step(case.name)
  multi = optax.MultiSteps(case.make(case.lr), every_k_schedule=2)
  step_multi = jax.jit(_make_step(case, multi, PARABOLA))
  params, state = PARABOLA_INIT, multi.init(PARABOLA_INIT)
  ref_params, ref_state = PARABOLA_INIT, tx_inner.init(PARABOLA_INIT)
  state0 = _raw(state)
  for _ in range(2):
    ref_params, ref_state, ref_updates = step_inner(ref_params, ref_state)
    params, state, updates = step_multi(params, state)
    chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, updates))
    params, state, updates = step_multi(params, state)
    chex.assert_trees_all_close(updates, ref_updates, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_equal_shapes_and_dtypes(_raw(state), state0)
  assert bool(multi.has_updated(state))
  chex.assert_trees_all_close(params, ref_params, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(_raw(state.inner_opt_state), _raw(ref_state), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_no_recompilation_on_second_jitted_call(case):
  tx, step = _jitted_parabola_step(case.name)
  params = PARABOLA_INIT
  state = tx.init(params)
  params, state, _ = step(params, state)
  n = TRACES[case.name]
  params, state, _ = step(params, state)  # new values, state produced by the jitted step
  params, state, _ = step(params, state)
  assert TRACES[case.name] == n, f"{case.name} retraced: the state's types/shapes drift"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_state_structure_stable_across_steps(case):
  tx, step = _jitted_parabola_step(case.name)
  params = PARABOLA_INIT
  state0 = tx.init(params)
  _, state2, _ = step(*step(params, state0)[:2])
  assert jax.tree.structure(state0) == jax.tree.structure(state2)
  for a, b in zip(jax.tree.leaves(state0), jax.tree.leaves(state2)):
    assert (jnp.shape(a), jnp.result_type(a)) == (jnp.shape(b), jnp.result_type(b))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_tolerates_unknown_extra_args(case):
  tx = case.make(case.lr)

  # Traced only (eval_shape compiles nothing): unknown keywords must neither raise nor
  # change the shapes/dtypes of what comes out.
  def both(params):
    grads = PARABOLA.grads(params, case.per_example)
    extra = _extra(case, PARABOLA.loss, params, grads, PARABOLA.loss(params))
    u1, _ = tx.update(grads, tx.init(params), params, **extra)
    u2, _ = tx.update(
      grads, tx.init(params), params, **extra, unknown_flag=True, batch_stats={"x": jnp.ones(3)}
    )
    return u1, u2

  u1, u2 = jax.eval_shape(both, PARABOLA_INIT)
  assert jax.tree.structure(u1) == jax.tree.structure(u2)
  for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
    assert (a.shape, a.dtype) == (b.shape, b.dtype)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_sharded_params_give_same_updates_as_unsharded(case, mesh8):
  tx, step = _jitted_parabola_step(case.name)
  sharded = jax.device_put(PARABOLA_INIT, NamedSharding(mesh8, P("d")))
  assert len(sharded["b"].sharding.device_set) == 8
  ref = step(PARABOLA_INIT, tx.init(PARABOLA_INIT))
  out = step(sharded, tx.init(sharded))  # the state inherits the params' shardings
  assert out[0]["b"].sharding.is_equivalent_to(sharded["b"].sharding, 2)
  for a, b in zip(jax.tree.leaves(_raw(ref)), jax.tree.leaves(_raw(out))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_orbax_restored_state_gives_bit_identical_next_step(case, tmp_path):
  tx, step = _jitted_parabola_step(case.name)
  params = PARABOLA_INIT
  state = tx.init(params)
  for _ in range(2):
    params, state, _ = step(params, state)
  restored = orbax_roundtrip(state, tmp_path)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  out_a = step(params, state)
  out_b = step(params, restored)
  for a, b in zip(jax.tree.leaves(_raw(out_a)), jax.tree.leaves(_raw(out_b))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
