# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to ``jaxdiff.noise2score``: noise parameters out of range,
observations outside a noise model's support (negative Poisson counts, non-positive Gamma
observations), a score that admits no positive estimate, non-finite or non-real data,
bad keys and score functions. Concrete input raises naming the argument; traced input is
poisoned with NaN exactly where it is invalid.

Fixtures: ``Y`` three positive observations, ``S`` a score of zeros shaped like it.
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp
import numpy as np

from jaxdiff import noise2score as N2S  # noqa: F401 - used by the reproducers
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
Y = jnp.array([0.5, 1.0, 2.0])
S = jnp.zeros(3)
NS = dict(globals())

CASES = [
  # --- noise parameters
  Case("N2S.tweedie_gaussian(Y, S, sigma=-0.1)", raises(ValueError, r"sigma must lie in \[0, inf\), got -0.1")),
  Case("N2S.tweedie_gaussian(Y, S, sigma=nan)", raises(ValueError, "sigma must be a number, got NaN")),
  Case("N2S.tweedie_gaussian(Y, S, sigma=True)", raises(TypeError, "sigma must be a real number, got a bool")),
  Case("N2S.tweedie_gaussian(Y, S, sigma=0.0)", returns(lambda x: bool(jnp.all(x == Y)), "sigma = 0 is noise-free: the estimate is y")),
  Case("N2S.tweedie_poisson(Y, S, zeta=0.0)", raises(ValueError, r"zeta must lie in \(0, inf\), got 0.0")),
  Case("N2S.tweedie_poisson(Y, S, zeta=inf)", raises(ValueError, "zeta must be finite")),
  Case("N2S.tweedie_gamma(Y, S, k=0.0)", raises(ValueError, r"k must lie in \(0, inf\), got 0.0")),
  Case("N2S.tweedie_gamma(Y, S, k=-3)", raises(ValueError, r"k must lie in \(0, inf\)")),
  Case("N2S.ardae_loss(lambda v: -v, Y, sigma_a=0.0, key=0)", raises(ValueError, r"sigma_a must lie in \(0, inf\), got 0.0")),
  # --- observations outside the noise model's support
  Case("N2S.tweedie_poisson(jnp.array([1.0, -0.5]), 0.0, zeta=0.1)", raises(ValueError, r"y must be non-negative \(y = zeta \* counts\), got -0.5 at index \(1,\)")),
  Case("N2S.tweedie_poisson(jnp.array([0.0, 1.0]), 0.0, zeta=0.1)", returns(lambda x: np.allclose(x, [0.05, 1.05]), "zero counts are valid Poisson observations")),
  Case("N2S.tweedie_gamma(jnp.array([1.0, 0.0]), 0.0, k=10.0)", raises(ValueError, r"y must be positive \(Gamma noise is multiplicative\), got 0.0 at index \(1,\)")),
  Case("N2S.tweedie_gamma(-Y, S, k=10.0)", raises(ValueError, "y must be positive")),
  Case("N2S.tweedie_gamma(Y, jnp.array([0.0, 9.0, 0.0]), k=10.0)", raises(ValueError, r"score must be such that \(k - 1\) - y \* score > 0 .*got \(k - 1\) - y \* score = 0.0 at index \(1,\)")),
  Case("N2S.tweedie_gamma(Y, S, k=0.5)", raises(ValueError, r"score must be such that \(k - 1\) - y \* score > 0")),
  Case("jax.jit(lambda y: N2S.tweedie_poisson(y, 0.0, zeta=0.1))(jnp.array([1.0, -0.5]))", returns(lambda x: np.isfinite(x[0]) and np.isnan(x[1]), "traced: the negative entry is NaN, the other untouched", nan_ok=True)),
  Case("jax.jit(lambda y, s: N2S.tweedie_gamma(y, s, k=10.0))(jnp.array([1.0, 0.0, 1.0]), jnp.array([0.0, 0.0, 9.5]))", returns(lambda x: np.isfinite(x[0]) and np.isnan(x[1:]).all(), "traced: non-positive y or denominator is NaN", nan_ok=True)),
  # --- data: non-finite, non-real, shapes
  Case("N2S.tweedie_gaussian(jnp.array([1.0, nan]), 0.0, sigma=1.0)", raises(ValueError, r"y must be finite \(no NaN or inf\), got nan at index \(1,\)")),
  Case("N2S.tweedie_gaussian(Y, jnp.array([0.0, inf, 0.0]), sigma=1.0)", raises(ValueError, "score must be finite")),
  Case("N2S.tweedie_gaussian(Y.astype(jnp.complex64), S, sigma=1.0)", raises(TypeError, "y must be a real array, got dtype complex64")),
  Case("N2S.tweedie_gaussian(jnp.array([True]), S, sigma=1.0)", raises(TypeError, "y must be a real array, got dtype bool")),
  Case("N2S.tweedie_gaussian(jnp.arange(3), S, sigma=1.0).dtype", returns(lambda d: jnp.issubdtype(d, jnp.floating), "integer observations are promoted to float")),
  Case("N2S.tweedie_gaussian(Y, jnp.zeros(2), sigma=1.0)", raises(ValueError, r"score must be broadcastable with y's shape \(3,\), got shape \(2,\)")),
  Case("N2S.ardae_loss(lambda v: -v, jnp.arange(3), sigma_a=0.1, key=0)", raises(TypeError, "y must be a floating array, got dtype int")),
  Case("N2S.ardae_loss(lambda v: -v, jnp.array([1.0, nan]), sigma_a=0.1, key=0)", raises(ValueError, "y must be finite")),
  Case("N2S.ardae_loss(lambda v: -v[:2], Y, sigma_a=0.1, key=0)", raises(ValueError, r"score_fn must return an array shaped like y \(3,\), got \(2,\)")),
  Case("N2S.ardae_loss(lambda v: -v, Y, sigma_a=0.1, key='a')", raises(TypeError, "key must be an int seed or a JAX PRNG key")),
  Case("N2S.ardae_loss(lambda v: -v, Y, sigma_a=0.1, key=2**40)", raises(ValueError, "key: an int seed must lie in")),
  Case("jax.jit(lambda s: N2S.ardae_loss(lambda v: -v, Y, sigma_a=s, key=0))(0.1)", returns(lambda x: np.isfinite(x), "a traced sigma_a (an annealing schedule) is accepted")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
