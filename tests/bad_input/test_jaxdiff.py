"""Hostile inputs to the jaxdiff core: labels, the mixture, schedules/grids, sample, metrics.

Each case is a one-line reproducer over the small fixtures below (a 2-D mixture with 3
classes, the cosine VP schedule, a 4-step grid, a batch of 4). Most ``sample`` cases fail
before compilation; the few that run share one compiled loop.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import jaxdiff
from jaxdiff import metrics, solvers  # noqa: F401 - used by the reproducers
from jaxdiff import parameterization as P  # noqa: F401 - used by the reproducers
from jaxdiff import schedules as S
from jaxdiff._types import Prediction
from jaxdiff._validation import check_labels
from jaxdiff.testing import GaussianMixture
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = math.nan, math.inf

gmm = GaussianMixture(jnp.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]]), 0.25)
sched = S.vp_cosine()
ts = S.timesteps(sched, 4)
table = S.from_alphas_cumprod(np.linspace(0.99, 0.1, 10))
x = jnp.ones((4, 2))
t4 = jnp.full((4,), 0.5)
den = gmm.denoiser(sched)
ddim = solvers.ddim()
good = jnp.array([0, 1, 2, -1])
bad = jnp.array([0, 1, 2, 5])
jden = jax.jit(den)
jsample = jax.jit(lambda c: gmm.sample(0, 4, c))
jlogp = jax.jit(gmm.log_prob)
jlabels = jax.jit(lambda c: check_labels("cond", c, 3))
jrun = jax.jit(lambda c: jaxdiff.sample(den, ddim, x, ts, key=0, cond=c).x)
run_sample = lambda **kw: jaxdiff.sample(den, ddim, x, ts, key=0, **kw)
with_out = lambda out: jaxdiff.sample(lambda x, t, c: out(x), ddim, x, ts, key=0)


def _rule(make_pred):
  def apply(denoise, x, cond, ctx, state):
    x0 = denoise(x, jnp.broadcast_to(ctx.t, x.shape[:1]), cond)
    return make_pred(x0), state, jnp.ones((), jnp.int32)

  return jaxdiff.guidance.from_functions(lambda x, c: (), apply)


rule_short = _rule(lambda x0: Prediction.of(x0[:1]))
rule_tuple = _rule(lambda x0: (x0, x0))


def poisoned_last(r):
  """Rows 0-2 finite, row 3 (the invalid label) all NaN."""
  r = jnp.atleast_1d(r)
  return bool(jnp.isfinite(r[:3]).all()) and bool(jnp.isnan(r[3]).all())


LABEL_POLICY = "labels in [0, C) or -1 (null = unconditional)"
POISON = "traced invalid labels poison their rows with NaN"

CASES = [
  # --- check_labels (the one label check) --------------------------------------------
  Case("check_labels('cond', jnp.array([0, 3]), 3)", raises(ValueError, r"cond.*\[0, 3\).*got 3")),
  Case("check_labels('cond', jnp.array([-1, 0]), 3)", raises(ValueError, r"cond.*got -1")),
  Case(
    "check_labels('cond', jnp.array([-1, 0]), 3, allow_null=True)",
    returns(lambda m: m.tolist() == [True, True], LABEL_POLICY),
  ),
  Case("check_labels('cond', jnp.array(-2), 3, allow_null=True)", raises(ValueError, "cond")),
  Case("check_labels('cond', jnp.array([0.0, 1.0]), 3)", raises(TypeError, "cond.*integer")),
  Case("check_labels('cond', jnp.array([True]), 3)", raises(TypeError, "cond.*integer")),
  Case("check_labels('cond', None, 3)", raises(TypeError, "cond")),
  Case("check_labels('cond', [0, 2], 3)", returns(lambda m: m.tolist() == [True, True], "lists")),
  Case("check_labels('cond', [0.5], 3)", raises(TypeError, "cond.*integer")),
  Case("check_labels('cond', 'a', 3)", raises(TypeError, "cond")),
  Case("check_labels('cond', jnp.array([1 + 0j]), 3)", raises(TypeError, "cond")),
  Case(
    "check_labels('cond', jnp.zeros((0,), jnp.int32), 3)",
    returns(lambda m: m.shape == (0,), "an empty label array is valid"),
  ),
  Case(
    "jlabels(jnp.array([0, 5]))",
    returns(lambda m: m.tolist() == [True, False], "traced labels: validity mask"),
  ),
  # --- GaussianMixture constructor ---------------------------------------------------
  Case(
    "GaussianMixture(jnp.zeros((2, 2)), jnp.array([[[1.0, 2.0], [2.0, 1.0]]] * 2))",
    raises(ValueError, "covariances.*positive definite"),
  ),
  Case(
    "GaussianMixture(jnp.zeros((2, 2)), jnp.array([[[1.0, 0.5], [0.0, 1.0]]] * 2))",
    raises(ValueError, "covariances.*symmetric"),
  ),
  Case("GaussianMixture(jnp.zeros((2, 2)), jnp.ones((3,)))", raises(ValueError, "covariances")),
  Case("GaussianMixture(jnp.zeros((2, 2)), -1.0)", raises(ValueError, "covariances")),
  Case("GaussianMixture(jnp.zeros((2, 2)), 0.0)", raises(ValueError, "covariances")),
  Case("GaussianMixture(jnp.zeros((2, 2)), nan)", raises(ValueError, "covariances.*finite")),
  Case("GaussianMixture(jnp.zeros((2, 2)), inf)", raises(ValueError, "covariances.*finite")),
  Case(
    "GaussianMixture(jnp.zeros((2, 2)), weights=jnp.array([0.3, 0.3])).log_weights",
    returns(lambda w: np.allclose(np.exp(w), 0.5), "weights are normalised (documented)"),
  ),
  Case("GaussianMixture(jnp.zeros((2, 2)), weights=[1.0, -1.0])", raises(ValueError, "weights")),
  Case("GaussianMixture(jnp.zeros((2, 2)), weights=[1.0, 0.0])", raises(ValueError, "weights")),
  Case("GaussianMixture(jnp.zeros((2, 2)), weights=[1.0, nan])", raises(ValueError, "weights")),
  Case("GaussianMixture(jnp.zeros((2, 2)), weights=[1.0, inf])", raises(ValueError, "weights")),
  Case("GaussianMixture(jnp.zeros((2, 2)), weights=[1.0, 1, 1])", raises(ValueError, "weights")),
  Case("GaussianMixture(jnp.zeros((2,)))", raises(ValueError, "means")),
  Case("GaussianMixture(jnp.zeros((0, 2)))", raises(ValueError, "means")),
  Case("GaussianMixture(jnp.full((2, 2), nan))", raises(ValueError, "means.*finite")),
  Case("GaussianMixture('abc')", raises(TypeError, "means")),
  Case("GaussianMixture(jnp.zeros((2, 2)), classes=[0, 2])", raises(ValueError, "classes")),
  Case("GaussianMixture(jnp.zeros((2, 2)), classes=[0, -1])", raises(ValueError, "classes")),
  Case("GaussianMixture(jnp.zeros((2, 2)), classes=[0.5, 1.0])", raises(ValueError, "classes")),
  Case("GaussianMixture(jnp.zeros((2, 2)), classes=[0, 0, 0])", raises(ValueError, "classes")),
  Case("GaussianMixture(jnp.zeros((2, 2)), classes=[True, False])", raises(ValueError, "classes")),
  Case("GaussianMixture(jnp.zeros((2, 2)), dtype=jnp.int32)", raises(TypeError, "dtype")),
  # --- GaussianMixture methods and denoiser (label policy) ---------------------------
  Case("gmm.sample(0, 4, bad)", raises(ValueError, r"cond.*\[0, 3\).*got 5")),
  Case("gmm.sample(0, 4, 7)", raises(ValueError, "cond.*got 7")),
  Case("gmm.sample(0, 4, good)", returns(lambda s: s.shape == (4, 2), LABEL_POLICY)),
  Case("gmm.sample(0, 4, -1)", returns(lambda s: s.shape == (4, 2), "-1: the whole mixture")),
  Case("gmm.sample(0, 4, jnp.array([0.0, 1, 2, 0]))", raises(TypeError, "cond")),
  Case("gmm.sample(0, 4, jnp.array([0, 1]))", raises(ValueError, "cond.*shape")),
  Case("jsample(bad)", returns(poisoned_last, POISON, nan_ok=True)),
  Case("gmm.sample(0, 0)", raises(ValueError, "n")),
  Case("gmm.sample(0, 2.5)", raises(ValueError, "n.*integer")),
  Case("gmm.sample(0, True)", raises(TypeError, "n")),
  Case("gmm.sample(0, None)", raises(TypeError, "n")),
  Case("gmm.sample('key', 4)", raises(TypeError, "key")),
  Case("gmm.sample(jnp.ones(2), 4)", raises(TypeError, "key")),
  Case("gmm.log_prob(jnp.zeros((2, 2)), jnp.array([0, 7]))", raises(ValueError, "cond.*got 7")),
  Case("gmm.log_prob(jnp.zeros((2, 2)), jnp.array([0.5, 1]))", raises(TypeError, "cond")),
  Case(
    "gmm.log_prob(jnp.zeros((2, 2)), jnp.array([0, -1]))",
    returns(lambda lp: lp.shape == (2,), LABEL_POLICY),
  ),
  Case(
    "jlogp(jnp.zeros((4, 2)), bad)",
    returns(poisoned_last, POISON, nan_ok=True),
  ),
  Case("gmm.log_prob(jnp.zeros((2, 3)))", raises(ValueError, "x must have shape")),
  Case("gmm.log_prob(jnp.zeros((2,)))", raises(ValueError, "x must have shape")),
  Case(
    "gmm.class_posterior(jnp.zeros((2, 2)), 0.5, sched)",
    returns(lambda p: np.allclose(p.sum(1), 1.0), "a distribution over the 3 classes"),
  ),
  Case("gmm.class_posterior(jnp.zeros((2, 5)), 0.5, sched)", raises(ValueError, "x")),
  Case("gmm.posterior_mean(x, 1.0, 0.5, jnp.array([0, 1, 2, 3]))", raises(ValueError, "cond")),
  Case("den(x, t4, bad)", raises(ValueError, r"cond.*got 5")),
  Case("den(x, t4, jnp.array([True] * 4))", raises(TypeError, "cond")),
  Case("jden(x, t4, bad)", returns(poisoned_last, POISON, nan_ok=True)),
  Case("jden(x, t4, jnp.full((4,), -1))", returns(lambda d: d.shape == (4, 2), LABEL_POLICY)),
  Case(
    "den(x.astype(jnp.bfloat16), t4, good).dtype",
    returns(lambda d: d == jnp.bfloat16, "the denoiser returns x's dtype"),
  ),
  Case("den.num_classes", returns(lambda n: n == 3, "the denoiser declares num_classes")),
  # --- schedules ---------------------------------------------------------------------
  Case("S.vp_cosine(t_max=1.0)", raises(ValueError, r"t_max.*\(0, 1\)")),
  Case("S.vp_cosine(s=0.0)", raises(ValueError, "s must")),
  Case("S.vp_cosine(s='a')", raises(TypeError, "s must")),
  Case("S.vp_cosine(t_min=0.995)", raises(ValueError, "t_min")),
  Case("S.vp_linear(beta_max=inf)", raises(ValueError, "beta_max.*finite")),
  Case("S.vp_linear(beta_min=0.0)", raises(ValueError, "beta_min")),
  Case("S.vp_linear(beta_min=nan)", raises(ValueError, "beta_min")),
  Case("S.vp_linear(beta_min=5.0, beta_max=1.0)", raises(ValueError, "beta_max")),
  Case("S.edm(sigma_max=inf)", raises(ValueError, "sigma_max.*finite")),
  Case("S.edm(sigma_min=-1.0)", raises(ValueError, "sigma_min")),
  Case("S.edm(sigma_min=10.0, sigma_max=1.0)", raises(ValueError, "sigma_max")),
  Case("S.edm(sigma_min=None)", raises(TypeError, "sigma_min")),
  Case("S.flow(t_max=1.5)", raises(ValueError, "t_max")),
  Case("S.from_alphas_cumprod([0.5, 0.9, 0.1])", raises(ValueError, r"alphas_cumprod.*\[0\]")),
  Case("S.from_alphas_cumprod([1.0, 0.9, 0.1])", raises(ValueError, r"alphas_cumprod\[0\] = 1")),
  Case("S.from_alphas_cumprod([0.99, nan, 0.1])", raises(ValueError, r"alphas_cumprod\[1\] = nan")),
  Case("S.from_alphas_cumprod([0.99, -0.1])", raises(ValueError, "alphas_cumprod")),
  Case("S.from_alphas_cumprod(np.full((2, 3), 0.5))", raises(ValueError, "alphas_cumprod.*1-D")),
  Case("S.from_alphas_cumprod([0.5])", raises(ValueError, "alphas_cumprod.*>= 2")),
  Case("S.from_alphas_cumprod('abc')", raises(TypeError, "alphas_cumprod")),
  Case(
    "S.from_alphas_cumprod([0.99, 0.5, 0.0]).logsnr(2.0)",
    returns(lambda v: float(v) == -60.0, "a terminal 0 is clipped to logSNR = -2 LAM_MAX"),
  ),
  Case(
    "jax.jit(table.logsnr)(jnp.float32(50.0))",
    returns(lambda v: bool(jnp.isnan(v)), "traced t outside the table is NaN", nan_ok=True),
  ),
  # --- grids -------------------------------------------------------------------------
  Case("S.timesteps(sched, 0)", raises(ValueError, "n must")),
  Case("S.timesteps(sched, -3)", raises(ValueError, "n must")),
  Case("S.timesteps(sched, 2.5)", raises(ValueError, "n must be an integer")),
  Case("S.timesteps(sched, True)", raises(TypeError, "n must")),
  Case("S.timesteps(sched, None)", raises(TypeError, "n must")),
  Case("S.timesteps(sched, 4, spacing='linear')", raises(ValueError, "spacing")),
  Case("S.timesteps(S.edm(), 4, spacing='karras', rho=0)", raises(ValueError, "rho")),
  Case("S.timesteps(S.edm(), 4, spacing='karras', rho=-7)", raises(ValueError, "rho")),
  Case("S.timesteps(sched, 4, t_start=0.1, t_end=0.5)", raises(ValueError, "t_start must exceed")),
  Case("S.timesteps(sched, 4, t_start=1.0)", raises(ValueError, "t_start = 1.*outside")),
  Case("S.timesteps(sched, 4, t_start=nan)", raises(ValueError, "t_start")),
  Case("S.timesteps(sched, 4, t_end=-0.5)", raises(ValueError, "t_end")),
  Case("S.timesteps(sched, 1, denoise_to_zero=True)", raises(ValueError, "n >= 2")),
  Case("S.timesteps(sched, 4, denoise_to_zero='yes')", raises(TypeError, "denoise_to_zero")),
  Case("S.timesteps(sched, 4, dtype=jnp.int32)", raises(TypeError, "dtype")),
  Case("S.timesteps(None, 4)", raises(TypeError, "schedule")),
  Case(
    "S.timesteps(S.edm(), 4, spacing='logsnr', t_end=0.0)",
    raises(ValueError, "t_start/t_end"),
  ),
  Case("S.timesteps(table, 4).t", returns(lambda t: float(t[0]) == 9.0, "inside the table")),
  Case("S.timesteps(table, 4, t_start=20.0)", raises(ValueError, "t_start = 20.*table")),
  Case("S.timesteps_from(table, [50, 5, 0])", raises(ValueError, "t = 50 .*outside.*table")),
  Case("S.timesteps_from(table, [9, 5, -1])", raises(ValueError, "t = -1 .*outside")),
  Case("S.timesteps_from(table, [9.0, 4.5, 0.0]).num_steps", returns(lambda n: n == 2, "")),
  Case("S.timesteps_from(sched, [0.5])", raises(ValueError, "t must be 1-D with at least 2")),
  Case("S.timesteps_from(sched, [[0.5, 0.1]])", raises(ValueError, "t must be 1-D")),
  Case("S.timesteps_from(sched, [])", raises(ValueError, "t must be 1-D")),
  Case("S.timesteps_from(sched, [0.1, 0.5])", raises(ValueError, "noise must strictly decrease")),
  Case("S.timesteps_from(sched, [0.5, nan])", raises(ValueError, "t is not finite at index 1")),
  Case("S.timesteps_from(sched, [0.5, inf])", raises(ValueError, "t is not finite at index 1")),
  Case("S.timesteps_from(sched, 'abc')", raises(TypeError, "t must")),
  Case("S.timesteps_from(sched, [True, False])", raises(TypeError, "t must")),
  Case("S.timesteps_from(sched, jnp.array([0.5, 0.1]) + 0j)", raises(TypeError, "t must")),
  Case("S.timesteps_from(sched, [0.5, 1.2])", raises(ValueError, "t = 1.2 .*outside")),
  Case("S.validate_grid('grid')", raises(TypeError, "Grid")),
  Case(
    "S.validate_grid(ts._replace(sigma=ts.sigma.at[1].set(0.0)))",
    raises(ValueError, r"sigma\[1\] = 0"),
  ),
  # --- sample ------------------------------------------------------------------------
  Case("with_out(lambda x: x[:1])", raises(ValueError, r"denoise.*\(4, 2\).*got \(1, 2\)")),
  Case("with_out(lambda x: x[:, :1])", raises(ValueError, r"denoise.*got \(4, 1\)")),
  Case("with_out(lambda x: x[None])", raises(ValueError, r"denoise.*got \(1, 4, 2\)")),
  Case("with_out(lambda x: x.astype(jnp.float16))", raises(ValueError, "denoise.*float16")),
  Case("with_out(lambda x: (x, x))", raises(TypeError, "denoise.*pytree")),
  Case("with_out(lambda x: {'x0': x})", raises(TypeError, "denoise.*pytree")),
  Case("with_out(lambda x: 1.0)", raises(TypeError, "denoise.*float")),
  Case("with_out(lambda x: None)", raises(TypeError, "denoise")),
  Case("jaxdiff.sample(None, ddim, x, ts, key=0)", raises(TypeError, "denoise must be callable")),
  Case("jaxdiff.sample(den, 'ddim', x, ts, key=0)", raises(TypeError, "solver")),
  Case("jaxdiff.sample(den, ddim, x.astype(jnp.int32), ts, key=0)", raises(TypeError, "x_T")),
  Case("jaxdiff.sample(den, ddim, x.astype(jnp.complex64), ts, key=0)", raises(TypeError, "x_T")),
  Case("jaxdiff.sample(den, ddim, jnp.ones((0, 2)), ts, key=0)", raises(ValueError, "x_T")),
  Case("jaxdiff.sample(den, ddim, jnp.ones((4, 0)), ts, key=0)", raises(ValueError, "x_T")),
  Case("jaxdiff.sample(den, ddim, jnp.ones(()), ts, key=0)", raises(TypeError, "x_T")),
  Case("jaxdiff.sample(den, ddim, [[1.0, 2.0]], ts, key=0)", raises(TypeError, "x_T")),
  Case("jaxdiff.sample(den, ddim, x, jnp.linspace(1, 0, 5), key=0)", raises(TypeError, "ts")),
  Case(
    "jaxdiff.sample(den, ddim, x, ts._replace(sigma=ts.sigma[:3]), key=0)",
    raises(ValueError, "grid.sigma"),
  ),
  Case("jaxdiff.sample(den, ddim, x, ts, key='a')", raises(TypeError, "key")),
  Case("jaxdiff.sample(den, ddim, x, ts, key=jnp.ones(2))", raises(TypeError, "key")),
  Case("jaxdiff.sample(den, ddim, x, ts, key=None)", raises(TypeError, "key")),
  Case("run_sample(return_trajectory='yes')", raises(TypeError, "return_trajectory")),
  Case("run_sample(return_trajectory=1)", raises(TypeError, "return_trajectory")),
  Case("run_sample(cond=jnp.array([0, 1]))", raises(ValueError, "cond.*leading size 4")),
  Case("run_sample(cond=jnp.array(1))", raises(ValueError, "cond.*batch-first")),
  Case("run_sample(cond=bad)", raises(ValueError, r"cond.*\[0, 3\).*got 5")),
  Case("run_sample(cond=jnp.array([0.0, 1, 2, 0]))", raises(TypeError, "cond")),
  Case("run_sample(cond=good).x", returns(lambda s: s.shape == (4, 2), LABEL_POLICY)),
  Case("run_sample().nfe", returns(lambda n: int(n) == 4, "one evaluation per DDIM step")),
  Case("jrun(bad)", returns(poisoned_last, POISON, nan_ok=True)),
  Case("run_sample(guidance='cfg')", raises(TypeError, "guidance")),
  Case("run_sample(guidance=rule_short)", raises(ValueError, r"guidance.*Prediction.x0")),
  Case("run_sample(guidance=rule_tuple)", raises(TypeError, "its apply must return")),
  # --- solvers -----------------------------------------------------------------------
  Case("solvers.make('foo')", raises(ValueError, "unknown solver 'foo'")),
  Case("solvers.make('ddim', bogus=1)", raises(TypeError, "no option bogus")),
  Case("solvers.make('ddpm', eta=0.5)", raises(TypeError, "no option eta")),
  Case("solvers.ddim(eta=-1.0)", raises(ValueError, "eta")),
  Case("solvers.ddim(eta=nan)", raises(ValueError, "eta")),
  Case("solvers.ddim(eta='a')", raises(TypeError, "eta")),
  Case("solvers.unipc(order=0)", raises(ValueError, "order")),
  Case("solvers.unipc(order=2.5)", raises(ValueError, "order")),
  Case("solvers.dpmpp_2m(lower_order_final=None)", raises(TypeError, "lower_order_final")),
  Case("solvers.make('unipc', order=3).order", returns(lambda o: o == 3, "registry build")),
  # --- parameterization --------------------------------------------------------------
  Case("P.convert(x, x, 1.0, 0.5, src='x', dst='eps')", raises(ValueError, "src")),
  Case("P.convert(x, x, 1.0, 0.5, src='eps', dst='noise')", raises(ValueError, "dst")),
  Case("P.convert(x, x, 1.0, 0.5, src=None, dst='eps')", raises(ValueError, "src")),
  Case("P.convert(x[:1], x, 1.0, 0.5, src='eps', dst='x0')", raises(ValueError, "value.*shape")),
  Case(
    "P.convert(x, x, 1.0, 0.0, src='x0', dst='eps')",
    returns(lambda e: bool((e == 0).all()), "sigma = 0: eps = 0 (the package's policy)"),
  ),
  Case(
    "P.convert(x, x, 0.0, 1.0, src='eps', dst='x0')",
    returns(None, "alpha = 0: the divisor is floored, the result stays finite"),
  ),
  Case("P.from_eps(None, sched)", raises(TypeError, "net must be callable")),
  Case("P.from_eps(lambda x, t, c: x[:1], sched)(x, t4)", raises(ValueError, "net.*shape")),
  Case("P.from_v(lambda x, t, c: (x,), sched)(x, t4)", raises(TypeError, "net.*array")),
  Case("P.Wrapped(lambda x, t, c: x, sched, 'noise')", raises(ValueError, "prediction")),
  # --- metrics -----------------------------------------------------------------------
  Case(
    "metrics.frechet_distance(jnp.ones((1, 3)), jnp.ones((5, 3)))", raises(ValueError, "at least 2")
  ),
  Case(
    "metrics.frechet_distance(jnp.ones((4, 3)), jnp.ones((5, 2)))", raises(ValueError, "dimensions")
  ),
  Case(
    "metrics.frechet_distance(jnp.full((4, 3), nan), jnp.ones((5, 3)))",
    raises(ValueError, "features_a.*finite"),
  ),
  Case(
    "metrics.frechet_distance(jnp.ones((4, 3)), jnp.full((5, 3), inf))",
    raises(ValueError, "features_b.*finite"),
  ),
  Case("metrics.frechet_distance(jnp.ones(4), jnp.ones(5))", raises(ValueError, "2-D")),
  Case("metrics.frechet_distance(None, jnp.ones((5, 3)))", raises(TypeError, "features_a")),
  Case(
    "metrics.gaussian_frechet_distance(jnp.zeros(2), jnp.eye(2), jnp.zeros(3), jnp.eye(3))",
    raises(ValueError, "mean_b"),
  ),
  Case(
    "metrics.gaussian_frechet_distance(jnp.zeros(2), jnp.eye(2) * nan, jnp.zeros(2), jnp.eye(2))",
    raises(ValueError, "cov_a.*finite"),
  ),
  Case(
    "metrics.precision_recall(jnp.ones((3, 2)), jnp.ones((5, 2)), k=3)",
    raises(ValueError, "at least 4"),
  ),
  Case("metrics.precision_recall(x, x, k=0)", raises(ValueError, "k must")),
  Case("metrics.precision_recall(x, x, k=1.5)", raises(ValueError, "k must")),
  Case("metrics.precision_recall(x, x, k=None)", raises(TypeError, "k must")),
  Case("metrics.precision_recall(x * nan, x, k=1)", raises(ValueError, "real_features")),
  Case("metrics.saturation(x, low=1.0, high=-1.0)", raises(ValueError, "high > low")),
  Case("metrics.saturation(x, low=nan)", raises(ValueError, "low")),
  Case("metrics.saturation(x, variant='max')", raises(ValueError, "variant")),
  Case("metrics.saturation(jnp.ones((0, 3)))", raises(ValueError, "non-empty")),
  Case("metrics.saturation(x.at[0, 0].set(nan))", raises(ValueError, "x must be finite")),
  Case(
    "metrics.saturation(x, low=-inf, high=inf)",
    returns(lambda v: float(v) == 0.0, "infinite bounds: nothing saturates"),
  ),
  Case("metrics.sliced_wasserstein(x, x, key=0, p=0.5)", raises(ValueError, "p must")),
  Case("metrics.sliced_wasserstein(x, x, key=0, p=nan)", raises(ValueError, "p must")),
  Case(
    "metrics.sliced_wasserstein(x, x, key=0, num_projections=0)",
    raises(ValueError, "num_projections"),
  ),
  Case(
    "metrics.sliced_wasserstein(x, x, key=0, num_projections=2.5)",
    raises(ValueError, "num_projections"),
  ),
  Case("metrics.sliced_wasserstein(x, x, key='a')", raises(TypeError, "key")),
  Case("metrics.sliced_wasserstein(x, x, key=None)", raises(TypeError, "key")),
  Case("metrics.sliced_wasserstein(x, x, key=jnp.ones(2))", raises(TypeError, "key")),
  Case("metrics.sliced_wasserstein(x, jnp.ones((4, 3)), key=0)", raises(ValueError, "dimensions")),
  Case("metrics.sliced_wasserstein(x, jnp.ones((0, 2)), key=0)", raises(ValueError, "batches")),
  Case(
    "metrics.sliced_wasserstein(x, x.at[0, 0].set(inf), key=0)",
    raises(ValueError, "y must be finite"),
  ),
]

NS = dict(globals())


def test_table_is_large_enough():
  assert len(CASES) >= 90


@params(CASES)
def test_case(case):
  run(case, NS)
