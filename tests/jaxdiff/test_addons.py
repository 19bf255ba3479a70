"""The add-on protocol of ``jaxdiff.sample``: immutable pytrees, leaves that do not
recompile, do-nothing defaults, one result type, the Network's explicit call state."""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import Network, correctors, guidance, schedules, solvers
from jaxdiff._sampling import _sample_jit
from jaxdiff.testing import GaussianMixture

SCHED = schedules.vp_cosine()
TS = schedules.timesteps(SCHED, 4)
GMM = GaussianMixture(np.array([[-2.0, 0.0], [2.0, 1.0]]), 0.2)
DEN = GMM.denoiser(SCHED)
X_T = jax.random.normal(jax.random.key(0), (3, 2))
LABELS = jnp.array([0, 1, 0])


def _compiles(run) -> int:
  """How many new compilations of the sampling loop ``run()`` causes."""
  before = _sample_jit._cache_size()
  jax.block_until_ready(run())
  return _sample_jit._cache_size() - before


@pytest.mark.parametrize(
  "make, name",
  [
    (lambda v: dict(guidance=guidance.cfg(v)), "cfg scale"),
    (lambda v: dict(corrector=correctors.langevin(0.1 + v / 100)), "langevin snr"),
    (lambda v: dict(corrector=correctors.lml(1.0 + v, kappa=0.1 * v / 3)), "lml lamb, kappa"),
    (lambda v: dict(time_shift=jaxdiff.time_shift(SCHED, 5, 0.2 + v / 10)), "time-shift cutoff"),
  ],
  ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_new_float_hyperparameter_or_an_equal_addon_does_not_recompile(make, name):
  run = lambda v: jaxdiff.sample(DEN, solvers.ddim(), X_T, TS, key=0, cond=LABELS, **make(v)).x
  first = _compiles(lambda: run(2.0))
  assert first <= 1, name
  assert _compiles(lambda: run(2.0)) == 0, f"{name}: an equal add-on built again recompiled"
  assert _compiles(lambda: run(3.0)) == 0, f"{name}: a new value recompiled"
  # ... and the value is used: a different hyperparameter gives a different sample.
  assert not np.array_equal(run(2.0), run(3.0)), name


def test_defaults_are_do_nothing_objects_bit_for_bit():
  base = jaxdiff.sample(DEN, solvers.heun(), X_T, TS, key=0, cond=LABELS)
  explicit = jaxdiff.sample(
    DEN,
    solvers.heun(),
    X_T,
    TS,
    key=0,
    cond=LABELS,
    guidance=guidance.conditional(),
    corrector=correctors.none(),
    time_shift=jaxdiff.NoShift(),
    cache=jaxdiff.caching.NoCache(),
  )
  legacy = jaxdiff.sample(
    DEN, solvers.heun(), X_T, TS, key=0, cond=LABELS, guidance=None, corrector=None,
    time_shift=None, cache=None,
  )  # fmt: skip
  for out in (explicit, legacy):
    np.testing.assert_array_equal(out.x, base.x)
    assert int(out.nfe) == int(base.nfe) and out.stats == {}
  # A window-0 time shift is the base sampler too.
  off = jaxdiff.sample(
    DEN, solvers.heun(), X_T, TS, key=0, cond=LABELS, time_shift=jaxdiff.time_shift(SCHED, 0, 0.3)
  )
  np.testing.assert_array_equal(off.x, base.x)


def test_sample_returns_one_result_type_and_the_old_names_warn():
  out = jaxdiff.sample(DEN, solvers.ddim(), X_T, TS, key=0)
  assert type(out) is jaxdiff.SampleResult and out._fields == ("x", "nfe", "trajectory", "stats")
  with pytest.warns(DeprecationWarning, match="stats"):
    assert jaxdiff.CachedSampleResult is jaxdiff.SampleResult


def test_network_counts_rows_threads_state_and_cond_calls_uncached():
  net = Network.of(lambda x, t, c: 2.0 * x, batch=2)
  x = jnp.ones((2, 3))
  out, net1 = net(x, jnp.zeros(2), None)
  np.testing.assert_array_equal(out, 2.0 * x)
  assert int(net1.nfe) == 1 and net1.slot == 1 and int(net.nfe) == 0  # net is unchanged
  out, net2 = net1(jnp.ones((4, 3)), jnp.zeros(4), None)  # a CFG-sized call: 2 evaluations
  assert int(net2.nfe) == 3

  def branch(n, x):
    y, n = n(x, jnp.zeros(2), None)
    return y, n

  y, net3 = net2.cond(jnp.array(True), branch, branch, x)
  assert int(net3.nfe) == 4 and net3.slot == net2.slot and net3.live


def test_a_rule_built_from_functions_and_the_deprecated_constructor():
  def apply(denoise, x, cond, ctx, state):
    t = jnp.full((x.shape[0],), ctx.t)
    return jaxdiff.Prediction.of(denoise(x, t, cond)), state, 1

  rule = guidance.from_functions(lambda x_T, cond: (), apply)
  out = jaxdiff.sample(DEN, solvers.ddim(), X_T, TS, key=0, guidance=rule)
  base = jaxdiff.sample(DEN, solvers.ddim(), X_T, TS, key=0)
  np.testing.assert_array_equal(out.x, base.x)
  assert int(out.nfe) == 4
  with pytest.warns(DeprecationWarning, match="from_functions"):
    old = jaxdiff.GuidanceRule(lambda x_T, cond: (), apply)
  assert isinstance(old, guidance.FunctionRule)


def test_a_corrector_is_a_pytree_with_traced_leaves():
  c = correctors.lml(2.0, snr=0.2, kappa=0.5, steps=2)
  leaves = jax.tree.leaves(c)
  assert leaves == [0.2, 2.0, 0.5]  # snr, lamb, kappa; steps and variant are static
  assert jax.tree.structure(c) == jax.tree.structure(
    correctors.lml(3.0, snr=0.1, kappa=0.2, steps=2)
  )
  assert jax.tree.structure(c) != jax.tree.structure(correctors.lml(3.0, steps=3))


def test_no_private_jax_import_anywhere():
  # An import of jax._src, or an attribute reached through it (a string that names it,
  # as the bad-input harness's frame filter does, is fine).
  private = re.compile(r"^\s*(from|import)\s+jax\._src|jax\._src\.\w+\(", re.M)
  root = pathlib.Path(__file__).resolve().parents[2]
  offenders = [
    str(p.relative_to(root))
    for folder in ("optim", "jaxdiff", "bench", "tests", "notebooks")
    for p in (root / folder).rglob("*.py")
    if private.search(p.read_text())
  ]
  assert offenders == []
