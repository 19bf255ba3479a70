"""Property-based hostile inputs: generated output shapes, dtypes and
non-finite values for the callables jaxdiff calls (denoiser, model, fitness, classifier,
measurement operator), and generated pairs of arguments that must agree.

Every property asserts the one contract of the bad-input policy: a clear ``ValueError`` or
``TypeError`` naming the callable or argument (never an internal JAX error, never a
silent broadcast), or the documented behaviour. Tiny shared fixtures and few examples
keep the file fast; the sampling properties share one compilation (the hostile part is
traced, or the error comes while tracing, before anything compiles).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxdiff
from jaxdiff import guidance, inverse, schedules, search, solvers, training
from jaxdiff._types import StepContext
from jaxdiff.models import ExitOutputs, early_exit_loss
from jaxdiff.testing import GaussianMixture

B, D = 4, 2
gmm = GaussianMixture(jnp.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]]), 0.25)
sched = schedules.vp_cosine()
ts = schedules.timesteps(sched, 3)
x = jnp.ones((B, D))
den = gmm.denoiser(sched)
ctx = StepContext(jnp.array(0.5), sched.alpha(0.5), sched.sigma(0.5), 0, 3, jax.random.key(0))
loss = training.denoising_loss(sched, prediction="x0")

FEW = settings(max_examples=8, deadline=None)
DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32, jnp.int32, jnp.bool_, jnp.complex64]
_INTERNAL = ("jax._src", "jaxlib", "xla")


def shapes(min_dims=0, max_dims=3):
  return st.lists(st.integers(1, 5), min_size=min_dims, max_size=max_dims).map(tuple)


def clear(err: BaseException, *names: str) -> None:
  """``err`` is one of ours: a ValueError/TypeError from outside JAX naming every name."""
  assert isinstance(err, (ValueError, TypeError)), type(err)
  assert not type(err).__module__.startswith(_INTERNAL), f"internal error: {err}"
  for name in names:
    assert name in str(err), f"{name!r} not named in: {err}"


def expect_clear(fn, *names: str) -> None:
  with pytest.raises((ValueError, TypeError)) as info:
    fn()
  clear(info.value, *names)


def hostile(shape, dtype):
  return jnp.zeros(shape, dtype)


def is_like(shape, dtype, like) -> bool:
  return tuple(shape) == like.shape and jnp.dtype(dtype) == like.dtype


# --- outputs of the callables -------------------------------------------------------------


@FEW
@given(shapes(), st.sampled_from(DTYPES))
def test_a_denoiser_output_not_shaped_and_typed_like_x_raises_in_sample(shape, dtype):
  if is_like(shape, dtype, x):
    return
  out = hostile(shape, dtype)
  expect_clear(lambda: jaxdiff.sample(lambda x, t, c: out, solvers.ddim(), x, ts, key=0), "denoise")


@FEW
@given(shapes(), st.sampled_from(DTYPES))
def test_a_model_output_of_another_shape_or_kind_raises_in_the_training_loss(shape, dtype):
  if tuple(shape) == x.shape and jnp.issubdtype(dtype, jnp.floating):
    return
  out = hostile(shape, dtype)
  expect_clear(lambda: loss(lambda x, t, y: out, x, None, 0), "denoising_loss", "model")


@FEW
@given(shapes(), st.sampled_from(DTYPES))
def test_a_denoiser_output_of_another_shape_or_dtype_raises_in_red_diff(shape, dtype):
  if is_like(shape, dtype, x):
    return
  out = hostile(shape, dtype)
  op = inverse.matrix(jnp.eye(D))
  expect_clear(lambda: inverse.red_diff(lambda x, t, c: out, op, x, ts, key=0), "red_diff")


@FEW
@given(shapes(), st.sampled_from(DTYPES))
def test_classifier_logits_not_floating_b_by_k_raise_in_classifier_guidance(shape, dtype):
  if tuple(shape) == (B, 3) and jnp.issubdtype(dtype, jnp.floating):
    return
  rule = guidance.classifier(lambda z: hostile(shape, dtype), 3, 1.0)
  expect_clear(lambda: rule.apply(den, x, jnp.zeros(B, int), ctx, ()), "classifier_fn")


@FEW
@given(shapes(), st.sampled_from(DTYPES))
def test_an_operator_forward_of_another_shape_raises_in_dps(shape, dtype):
  if tuple(shape) == (D,) and jnp.issubdtype(dtype, jnp.floating):
    return
  op = inverse.Operator("mine", lambda v: hostile(shape, dtype), lambda u: u, (D,), (D,))
  rule = guidance.dps(op, jnp.zeros((B, D)))
  with pytest.raises((ValueError, TypeError)) as info:
    rule.apply(den, x, None, ctx, ())
  clear(info.value)  # names the operator (shape) or the gradient's input (dtype)
  if tuple(shape) != (D,):
    clear(info.value, "mine: forward(x)")


@FEW
@given(shapes(min_dims=1), st.sampled_from([jnp.float32, jnp.int32]))
def test_a_fitness_that_is_not_a_real_scalar_raises_naming_the_fitness(shape, dtype):
  out = hostile(shape, dtype)
  expect_clear(
    lambda: search.evolve_timesteps(
      lambda t: out, 1.0, 0.0, 2, key=0, population=2, generations=1, top_k=1, resolution=8
    ),
    "evolve_timesteps: fitness(t)",
  )


@FEW
@given(st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 2.5, -1.0]))
def test_a_non_finite_fitness_ranks_last_and_raises_only_for_the_first_candidate(value):
  run = lambda fit: search.evolve_timesteps(  # noqa: E731
    fit, 1.0, 0.0, 2, key=0, population=3, generations=1, top_k=1, resolution=8
  )
  if not math.isfinite(value):
    expect_clear(lambda: run(lambda t: value), "fitness")
    # Any other candidate with that value ranks last: the finite uniform grid wins.
    uniform = np.array([1.0, 0.5, 0.0])
    res = run(lambda t: 1.0 if np.allclose(np.asarray(t), uniform) else value)
    assert res.fitness == 1.0
  else:
    assert run(lambda t: value).fitness == value


@FEW
@given(shapes(), st.sampled_from([jnp.float32, jnp.int32, jnp.bool_]))
def test_s3_and_skip_fitness_must_be_real_scalars(shape, dtype):
  out = hostile(shape, dtype)
  ok = shape == () and dtype != jnp.bool_
  s3 = lambda: search.s3_search(  # noqa: E731
    lambda s: out, 1.0, 0.0, 2, key=0, budget=1, rounds=1, candidates=4, hidden=4
  )
  if ok:
    assert math.isfinite(s3().fitness)
  else:
    expect_clear(s3, "s3_search: fitness(schedule)")


@FEW
@given(
  st.sampled_from([math.nan, math.inf, -math.inf]), st.lists(st.booleans(), min_size=B, max_size=B)
)
def test_non_finite_denoiser_values_propagate_to_their_own_rows_only(value, rows):
  """A denoiser's non-finite value cannot raise (it is traced): it propagates (documented)
  into the samples whose rows carry it and no other (one compilation for every mask)."""
  bad = jnp.asarray(rows)
  out = sample_masked(bad, jnp.asarray(value, jnp.float32))
  finite = np.isfinite(np.asarray(out)).all(axis=1)
  assert (finite == ~np.asarray(rows)).all()


def _masked(x, t, c):
  mask, value = c
  return jnp.where(mask[:, None], value[:, None], den(x, t, None))


def sample_masked(mask, value):
  cond = (mask, jnp.broadcast_to(value, mask.shape))
  return jaxdiff.sample(_masked, solvers.ddim(), x, ts, key=0, cond=cond).x


# --- arguments that must agree ------------------------------------------------------------

SCHEDULES = {
  "vp_cosine": schedules.vp_cosine(),
  "vp_linear": schedules.vp_linear(),
  "flow": schedules.flow(),
  "edm": schedules.edm(),
}


@FEW
@given(st.sampled_from(sorted(SCHEDULES)), st.sampled_from(sorted(SCHEDULES)), st.integers(1, 6))
def test_time_shift_raises_iff_the_grid_is_another_schedules(rule_name, grid_name, n):
  rule = jaxdiff.time_shift(SCHEDULES[rule_name], 5, 0.3)
  grid = schedules.timesteps(SCHEDULES[grid_name], n)
  if rule_name == grid_name:
    rule.check_grid(grid)
  else:
    expect_clear(lambda: rule.check_grid(grid), "time_shift was built for another schedule")


@FEW
@given(st.integers(1, 8), st.integers(1, 8))
def test_linear_ag_raises_iff_its_steps_differ_from_the_grid(n_rule, n_grid):
  rule = guidance.linear_ag(2.0, jnp.zeros((n_rule, 3)), jnp.zeros(n_rule, bool))
  grid = schedules.timesteps(sched, n_grid)
  if n_rule == n_grid:
    rule.check_grid(grid)
  else:
    expect_clear(
      lambda: jaxdiff.sample(
        den, solvers.ddim(), x, grid, key=0, cond=jnp.zeros(B, int), guidance=rule
      ),
      "linear_ag",
    )


@FEW
@given(shapes(max_dims=2))
def test_labels_must_match_the_batch_in_both_training_losses(label_shape):
  y = jnp.zeros(label_shape, jnp.int32)
  ok = len(label_shape) >= 1 and label_shape[0] == B
  zero = lambda x, t, y: x  # noqa: E731
  if ok:
    assert np.isfinite(float(loss(zero, x, y, 0)))
  else:
    expect_clear(lambda: loss(zero, x, y, 0), "denoising_loss: y")

  def fake_outputs(x, t, cond, *, train_backbone=True):
    return ExitOutputs(x, x[None], jnp.zeros((1, x.shape[0])))

  model = type("Fake", (), {"outputs": staticmethod(fake_outputs)})()
  run = lambda: early_exit_loss(sched)(model, x, y, 0)  # noqa: E731
  if ok:
    assert np.isfinite(float(run()))
  else:
    expect_clear(run, "early_exit_loss: y")


@FEW
@given(shapes(min_dims=1, max_dims=4))
def test_coupled_training_raises_iff_x0_is_not_paired(shape):
  x0 = jnp.ones((B, *shape))
  paired = x0.ndim >= 3 and x0.shape[1] == 2
  coupled = training.denoising_loss(sched, prediction="x0", coupled=True)
  run = lambda: coupled(lambda x, t, y: x, x0, None, 0)  # noqa: E731
  if paired:
    assert np.isfinite(float(run()))
  else:
    expect_clear(run, "coupled=True needs x0 of paired data")
