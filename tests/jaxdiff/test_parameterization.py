"""Parameterizations: conversion round trips and wrappers that recover x0 exactly."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxdiff import parameterization as P
from jaxdiff import schedules


@given(
  a=st.floats(0.05, 1.0),
  s=st.floats(0.05, 2.0),
  src=st.sampled_from(P.PREDICTIONS),
  dst=st.sampled_from(P.PREDICTIONS),
  seed=st.integers(0, 100),
)
def test_conversions_round_trip_and_agree_with_definitions(x64, a, s, src, dst, seed):
  rng = np.random.default_rng(seed)
  x0, eps = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
  x = a * x0 + s * eps
  truth = {"x0": x0, "eps": eps, "v": a * eps - s * x0, "score": -eps / s, "velocity": eps - x0}
  got = P.convert(truth[src], x, a, s, src=src, dst=dst)
  np.testing.assert_allclose(got, truth[dst], rtol=1e-8, atol=1e-8)
  back = P.convert(got, x, a, s, src=dst, dst=src)
  np.testing.assert_allclose(back, truth[src], rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize(
  "wrap, prediction, sched",
  [
    (P.from_eps, "eps", schedules.vp_cosine()),
    (P.from_v, "v", schedules.vp_linear()),
    (P.from_flow, "velocity", schedules.flow()),
    (P.from_x0, "x0", schedules.edm()),
  ],
)
def test_wrappers_turn_an_oracle_network_into_the_true_denoiser(x64, wrap, prediction, sched):
  rng = np.random.default_rng(0)
  x0, eps = rng.normal(size=(4, 3, 2)), rng.normal(size=(4, 3, 2))
  t = jnp.linspace(0.2, 0.7, 4) * sched.t_max
  a = np.asarray(sched.alpha(t))[:, None, None]
  s = np.asarray(sched.sigma(t))[:, None, None]
  x = a * x0 + s * eps
  oracle = {"eps": eps, "v": a * eps - s * x0, "velocity": eps - x0, "x0": x0}[prediction]
  den = wrap(lambda x_, t_, c: jnp.asarray(oracle), sched)
  assert den.prediction == prediction
  np.testing.assert_allclose(den(x, t, None), x0, rtol=1e-9, atol=1e-9)


def test_kind_spellings_still_work_and_warn():
  assert P.KINDS is P.PREDICTIONS
  net, sched = (lambda x, t, c: x), schedules.flow()
  with pytest.warns(DeprecationWarning, match="prediction"):
    den = P.Wrapped(net, sched, kind="v")
  assert den.prediction == "v"
  with pytest.warns(DeprecationWarning, match="Wrapped.prediction"):
    assert P.from_eps(net, sched).kind == "eps"
  with pytest.raises(ValueError, match="prediction"):
    P.Wrapped(net, sched, prediction="noise")


def test_eps_at_alpha_zero_stays_finite_and_bad_input_raises():
  out = P.convert(jnp.ones(2), jnp.ones(2), 0.0, 1.0, src="eps", dst="x0")
  assert np.all(np.isfinite(out))
  with pytest.raises(ValueError, match="src"):
    P.convert(jnp.ones(2), jnp.ones(2), 1.0, 1.0, src="noise", dst="x0")
  with pytest.raises(ValueError, match="shape"):
    P.convert(jnp.ones(3), jnp.ones(2), 1.0, 1.0, src="eps", dst="x0")
  den = P.from_eps(lambda x, t, c: jnp.ones((1, 1)), schedules.flow())
  with pytest.raises(ValueError, match=r"from_eps: net\(x, t, cond\) must return .*x \(2, 3\)"):
    den(jnp.ones((2, 3)), jnp.full((2,), 0.5), None)
