# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to ``jaxdiff.multiplicative`` and ``optim.exponentiated_gradient``:
non-positive or non-finite data (the GBM lives on positive data), times outside the
horizon, bad schedules, step counts, variants, keys and score functions, and bad
learning rates. Concrete input raises naming the argument; traced non-positive data is
poisoned with NaN in exactly its rows.

Fixtures: ``X`` three positive rows of two, ``G`` a unit GBM, ``H`` a valid Hyvarinen score.
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp
import numpy as np

import optim  # noqa: F401 - used by the reproducers
from jaxdiff import multiplicative as M  # noqa: F401 - used by the reproducers
from jaxdiff.testing import GaussianMixture, LogNormalMixture  # noqa: F401 - reproducers
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
X = jnp.array([[0.5, 1.0], [2.0, 3.0], [1.5, 0.2]])
G = M.gbm(1.0)
H = lambda x, t: -jnp.log(x) / (1 + G.log_variance(t)[:, None]) - 1.0  # noqa: E731
NS = dict(globals())

CASES = [
  # --- schedules
  Case("M.gbm(0.0)", raises(ValueError, r"sigma must lie in \(0, inf\), got 0.0")),
  Case("M.gbm(1.0, t_max=-1.0)", raises(ValueError, r"t_max must lie in \(0, inf\)")),
  Case("M.gbm(1.0, mu=nan)", raises(ValueError, "mu must be a number, got NaN")),
  Case("M.gbm_geometric(1.0, 0.5)", raises(ValueError, r"sigma_max must be greater than sigma_min=1.0, got 0.5")),
  Case("M.gbm_geometric(0.0, 5.0)", raises(ValueError, r"sigma_min must lie in \(0, inf\)")),
  Case("M.perturb(X, 0.5, schedule='vp', key=0)", raises(TypeError, "schedule must be a GBM schedule .*got str")),
  # --- data: positive, finite, floating, batched
  Case("M.perturb(X.at[1, 0].set(-1.0), 0.5, schedule=G, key=0)", raises(ValueError, r"x0 must be positive \(the GBM acts on positive data\), got -1.0 at index \(1, 0\)")),
  Case("M.perturb(X.at[0, 1].set(0.0), 0.5, schedule=G, key=0)", raises(ValueError, "x0 must be positive")),
  Case("M.perturb(X.at[2, 1].set(nan), 0.5, schedule=G, key=0)", raises(ValueError, r"x0 must be finite \(no NaN or inf\)")),
  Case("M.perturb(jnp.ones((3, 2), jnp.int32), 0.5, schedule=G, key=0)", raises(TypeError, "x0 must be a floating array, got dtype int32")),
  Case("M.perturb(jnp.asarray(1.0), 0.5, schedule=G, key=0)", raises(ValueError, r"x0 must have a leading batch axis, got shape \(\)")),
  Case("jax.jit(lambda x: M.perturb(x, 0.5, schedule=G, key=0))(X.at[1, 0].set(-1.0))", returns(lambda x: np.isnan(x[1]).all() and np.isfinite(x[np.array([0, 2])]).all(), "traced: the row with a non-positive entry is NaN, the others untouched", nan_ok=True)),
  Case("jax.jit(lambda x: M.mdsm_loss(H, x, 0.5, schedule=G, key=0))(X.at[1, 0].set(0.0))", returns(lambda x: np.isnan(x), "traced non-positive data poisons the loss", nan_ok=True)),
  Case("M.sample(H, -X, schedule=G, num_steps=3, key=0)", raises(ValueError, "x_init must be positive")),
  Case("jax.jit(lambda x: M.sample(H, x, schedule=G, num_steps=3, key=0))(X.at[2, 1].set(-0.5))", returns(lambda x: np.isnan(x[2]).all() and np.isfinite(x[:2]).all(), "traced: the non-positive start's row is NaN", nan_ok=True)),
  # --- times
  Case("M.perturb(X, 1.5, schedule=G, key=0)", raises(ValueError, r"t must lie in \[0, t_max=1.0\], got 1.5")),
  Case("M.mdsm_loss(H, X, jnp.array([0.1, -0.2, 0.3]), schedule=G, key=0)", raises(ValueError, r"t must lie in \[0, t_max=1.0\], got -0.2")),
  Case("M.mdsm_loss(H, X, jnp.array([0.1, 0.2]), schedule=G, key=0)", raises(ValueError, r"t must be a scalar or have shape \(3,\), got \(2,\)")),
  Case("M.mdsm_loss(H, X, 0.0, schedule=G, key=0, weighting='none')", raises(ValueError, 't must be positive for weighting="none"')),
  Case("M.mdsm_loss(H, X, 0.0, schedule=G, key=0)", returns(lambda x: np.isfinite(x), "t = 0 is fine with the variance weighting (no 1 / s(t))")),
  # --- options, counts, keys
  Case("M.mdsm_loss(H, X, 0.5, schedule=G, key=0, weighting='snr')", raises(ValueError, "weighting must be one of 'variance', 'none'; got 'snr'")),
  Case("M.sample(H, X, schedule=G, num_steps=3, key=0, variant='euler')", raises(ValueError, "variant must be one of 'dale_langevin', 'ambient'; got 'euler'")),
  Case("M.sample(H, X, schedule=G, num_steps=0, key=0)", raises(ValueError, r"num_steps must lie in \[1, inf\)")),
  Case("M.sample(H, X, schedule=G, num_steps=2.5, key=0)", raises(ValueError, "num_steps must be an integer, got 2.5")),
  Case("M.sample(H, X, schedule=G, num_steps=3, key=0, t_min=1.0)", raises(ValueError, r"t_min must lie in \[0, 1\), got 1.0")),
  Case("M.perturb(X, 0.5, schedule=G, key='a')", raises(TypeError, "key must be an int seed or a JAX PRNG key")),
  Case("M.log_normal_prior((0, 2), schedule=G, key=0)", raises(ValueError, r"shape must be a tuple of positive ints \(B, ...\), got \(0, 2\)")),
  Case("M.log_normal_prior((3, 2), schedule=G, key=0, log_std=-1.0)", raises(ValueError, "log_std must be >= 0, got -1.0")),
  Case("M.log_normal_prior((3, 2), schedule=G, key=0, log_mean=nan)", raises(ValueError, "log_mean must be finite")),
  Case("M.log_normal_prior((3, 2), schedule=G, key=0, dtype=jnp.int32)", raises(TypeError, "dtype must be a floating dtype, got int32")),
  # --- the user's score function
  Case("M.mdsm_loss(lambda x, t: x[:, :1], X, 0.5, schedule=G, key=0)", raises(ValueError, r"mdsm_loss: score_fn\(x, t\) must return x's shape and dtype \(3, 2\) float32 \(no broadcasting\), got \(3, 1\) float32")),
  Case("M.sample(lambda x, t: (x, x), X, schedule=G, num_steps=2, key=0)", raises(TypeError, r"sample: score_fn\(x, t\) must return one array shaped like x \(3, 2\), got tuple")),
  Case("M.sample(lambda x, t: x.astype(jnp.float16), X, schedule=G, num_steps=2, key=0)", raises(TypeError, r"sample: score_fn\(x, t\) must return x's shape and dtype")),
  # --- the testbed
  Case("LogNormalMixture(jnp.zeros((2, 1)))", raises(TypeError, "log_mixture must be a jaxdiff.testing.GaussianMixture, got ArrayImpl")),
  Case("LogNormalMixture(GaussianMixture(jnp.zeros((1, 2)))).hyvarinen_score(-X, 0.5, G)", raises(ValueError, "x must be positive")),
  Case("LogNormalMixture(GaussianMixture(jnp.zeros((1, 3)))).hyvarinen_score(X, 0.5, G)", raises(ValueError, r"x must have shape \(B, ...\) with 3 features, got \(3, 2\)")),
  # --- the exponentiated-gradient optimizer
  Case("optim.exponentiated_gradient(-0.1)", raises(ValueError, r"learning_rate must lie in \[0, inf\), got -0.1")),
  Case("optim.exponentiated_gradient(0.1, variant='plusminus')", raises(ValueError, "variant must be one of 'sign', 'log'; got 'plusminus'")),
  Case("optim.exponentiated_gradient(0.1).update(X, optim.exponentiated_gradient(0.1).init(X))", raises(ValueError, r"exponentiated_gradient needs the current parameters: call update\(updates, state, params\)")),
  Case("optim.exponentiated_gradient(0.1).init(jnp.ones(3, jnp.int32))", raises(TypeError, "exponentiated_gradient")),
  Case("optim.exponentiated_gradient(0.1).update(jnp.ones(2), optim.exponentiated_gradient(0.1).init(X), X)", raises(ValueError, "exponentiated_gradient")),
  Case("optim.exponentiated_gradient(0.1).update(jnp.array([[nan, 1.0]]), optim.exponentiated_gradient(0.1).init(X[:1]), X[:1])", returns(lambda u: bool(np.isnan(u[0][0, 0])) and bool(np.isfinite(u[0][0, 1])), "a NaN gradient propagates to its weight only", nan_ok=True)),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
