"""jaxdiff.inverse and the measurement-guided rules against exact, float64 references.

* ``GaussianMixture.posterior`` against Bayes' rule and Monte-Carlo importance sampling
  from the prior;
* every operator's transpose against the adjoint identity ``<A x, y> = <x, A^T y>``;
* DPS, STSL, FlowChef and RED-diff against NumPy/dense-Jacobian transcriptions of one step;
* the samplers end to end against exact posterior samples (sliced Wasserstein).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxdiff
from jaxdiff import StepContext, guidance, inverse, metrics, schedules, solvers
from jaxdiff.testing import GaussianMixture

D = 3
MEANS = np.array([[1.5, 0.0, -1.0], [-1.5, 0.5, 0.0], [0.0, -1.5, 1.0]])
A = np.array([[1.0, 0.5, 0.0], [0.0, -0.5, 1.0]])
S = 0.3


@pytest.fixture(scope="module")
def x64():
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="module")
def prior(x64):
  cov = np.stack(
    [
      np.diag([0.4, 0.2, 0.3]),
      0.3 * np.eye(3),
      np.array([[0.5, 0.1, 0.0], [0.1, 0.3, 0.05], [0.0, 0.05, 0.2]]),
    ]
  )
  return GaussianMixture(MEANS, cov, weights=[0.5, 0.3, 0.2], classes=[0, 1, 1])


def log_lik(x, y):
  r = x @ A.T - y
  return -0.5 * np.sum(r**2, -1) / S**2


def test_posterior_is_bayes_rule_pointwise(prior):
  y = np.array([0.4, -0.2])
  post = prior.posterior(A, y, S)
  x = np.asarray(prior.sample(1, 6))
  lhs = np.asarray(post.log_prob(x))
  rhs = np.asarray(prior.log_prob(x)) + log_lik(x, y)
  # log p(x | y) - [log p(x) + log p(y | x)] is the same constant -log Z at every x.
  np.testing.assert_allclose(lhs - rhs, (lhs - rhs)[0], atol=1e-10)
  assert post.classes.tolist() == [0, 1, 1]


@pytest.mark.slow
def test_posterior_matches_importance_sampling(prior):
  y = np.array([0.4, -0.2])
  post = prior.posterior(A, y, S)
  x = np.asarray(prior.sample(2, 50_000))
  w = np.exp(log_lik(x, y))
  mc_log_z = np.log(w.mean()) - A.shape[0] * np.log(np.sqrt(2 * np.pi) * S)
  w /= w.sum()
  mc_mean = w @ x
  mc_cov = (x - mc_mean).T @ ((x - mc_mean) * w[:, None])
  ps = np.asarray(post.sample(3, 50_000))
  np.testing.assert_allclose(ps.mean(0), mc_mean, atol=0.03)
  np.testing.assert_allclose(np.cov(ps.T), mc_cov, atol=0.03)
  # The evidence: log p(x | y) = log p(x) + log p(y | x) - log Z at any x.
  x0 = ps[:1]
  exact_log_z = (
    prior.log_prob(x0)
    + log_lik(x0, y)
    - A.shape[0] * np.log(np.sqrt(2 * np.pi) * S)
    - post.log_prob(x0)
  )
  np.testing.assert_allclose(float(exact_log_z[0]), mc_log_z, atol=0.03)


OPERATORS = {
  "random_mask": lambda: inverse.random_mask((4, 4), 0.5, key=0),
  "box_mask": lambda: inverse.box_mask((4, 6), 1, 2, 2, 3),
  "avg_pool": lambda: inverse.avg_pool((2, 4, 6), 2),
  "gaussian_blur_2d": lambda: inverse.gaussian_blur((5, 6), 1.0),
  "gaussian_blur_1d": lambda: inverse.gaussian_blur((7,), 0.7, size=5),
  "matrix": lambda: inverse.matrix(jnp.asarray(A), in_shape=(3,)),
}


# The gather-based and dense factories share code with the fast ones: run in the slow suite.
SLOW_OPERATORS = ("box_mask", "gaussian_blur_1d", "matrix", "random_mask")


@pytest.mark.parametrize(
  "name",
  [
    pytest.param(n, marks=pytest.mark.slow) if n in SLOW_OPERATORS else n for n in sorted(OPERATORS)
  ],
)
def test_transpose_is_the_adjoint(name, x64):
  op = OPERATORS[name]()
  kx, ky = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (2, *op.in_shape), jnp.float64)
  y = jax.random.normal(ky, (2, *op.out_shape), jnp.float64)
  lhs = jnp.sum(op(x) * y)
  rhs = jnp.sum(x * op.T(y))
  np.testing.assert_allclose(float(lhs), float(rhs), rtol=1e-12)
  m = op.matrix()
  np.testing.assert_allclose(m @ x[0].reshape(-1), op(x)[0].reshape(-1), atol=1e-12)


@pytest.mark.slow
def test_avg_pool_and_blur_values(x64):
  x = jnp.arange(16.0).reshape(1, 4, 4)
  np.testing.assert_allclose(inverse.avg_pool((4, 4))(x)[0], [[2.5, 4.5], [10.5, 12.5]])
  op = inverse.gaussian_blur((5,), 1.0, size=3)
  k = np.exp(-0.5 * np.array([1.0, 0.0, 1.0]))
  k /= k.sum()
  np.testing.assert_allclose(op(jnp.eye(5)[2:3])[0], [0, k[0], k[1], k[2], 0], atol=1e-14)


# -- one step of each rule against a dense float64 transcription ---------------------


@pytest.fixture(scope="module")
def step(prior):
  sched = schedules.vp_cosine()
  t = jnp.asarray(0.6)
  alpha, sigma = sched.alpha(t), sched.sigma(t)
  ctx = StepContext(t, alpha, sigma, jnp.int32(3), jnp.int32(10), jax.random.key(4))
  den = prior.denoiser(sched)
  x = jax.random.normal(jax.random.key(5), (4, D), jnp.float64)
  y = jax.random.normal(jax.random.key(6), (4, 2), jnp.float64)
  op = inverse.matrix(jnp.asarray(A))
  jac = jax.jit(jax.vmap(jax.jacfwd(lambda z: den(z[None], jnp.full((1,), t))[0])))(x)  # (B, D, D)
  return dict(sched=sched, ctx=ctx, den=den, x=x, y=y, op=op, jac=np.asarray(jac))


def _dps_reference(s, scale, variant="normalized"):
  x0 = np.asarray(jax.jit(s["den"])(s["x"], jnp.full((4,), s["ctx"].t)))
  r = x0 @ A.T - np.asarray(s["y"])
  g = np.einsum("bij,bi->bj", s["jac"], r @ A)  # J^T A^T r
  w = scale / np.linalg.norm(r, axis=1) if variant == "normalized" else scale / S**2
  coef = float(s["ctx"].sigma) ** 2 / float(s["ctx"].alpha)
  return x0 - coef * np.broadcast_to(w, (4,))[:, None] * g, x0, r


def _apply(rule, s):
  # Under jit: one compilation instead of one per primitive (eager dispatch compiles each).
  pred, _, n = jax.jit(lambda x, ctx: rule.apply(s["den"], x, None, ctx, ()))(s["x"], s["ctx"])
  return pred, int(n)


@pytest.mark.parametrize("variant", ["normalized", "gaussian"])
def test_dps_step_matches_dense_jacobian(step, variant):
  pred, n = _apply(guidance.dps(step["op"], step["y"], 0.7, variant=variant, noise_std=S), step)
  ref, _, _ = _dps_reference(step, 0.7, variant)
  np.testing.assert_allclose(pred.x0, ref, rtol=1e-10)
  np.testing.assert_allclose(pred.x0_renoise, ref, rtol=1e-10)
  assert n == 1


@pytest.mark.slow
def test_stsl_without_trace_is_dps(step):
  dps_pred, _ = _apply(guidance.dps(step["op"], step["y"], 0.7), step)
  pred0, _ = _apply(guidance.stsl(step["op"], step["y"], 0.7, trace_weight=0.0), step)
  np.testing.assert_allclose(pred0.x0, dps_pred.x0, rtol=1e-12)


def test_stsl_trace_gradient_is_the_dense_one(step):
  # One measurement row: tr(a J a^T) is 1x1, so one Rademacher probe (u = +-1) is exact
  # and the estimate's gradient must equal the dense d/dx (a J(x) a^T) (jacfwd of jacfwd).
  a = A[:1]
  op, y = inverse.matrix(jnp.asarray(a)), step["y"][:, :1]
  den, t = step["den"], step["ctx"].t
  tr = lambda z: (
    jnp.asarray(a) @ jax.jacfwd(lambda u: den(u[None], jnp.full((1,), t))[0])(z) @ a.T
  )[0, 0]
  dense = np.asarray(jax.jit(jax.vmap(jax.grad(tr)))(step["x"]))
  coef = float(step["ctx"].sigma) ** 2 / float(step["ctx"].alpha)
  x0 = np.asarray(jax.jit(den)(step["x"], jnp.full((4,), t)))
  r = x0 @ a.T - np.asarray(y)
  w = 0.7 / np.abs(r)
  g = np.einsum("bij,bi->bj", step["jac"], r @ a) + 0.5 * 2.0 * coef * dense
  pred, n = _apply(guidance.stsl(op, y, 0.7, trace_weight=2.0), step)
  np.testing.assert_allclose(pred.x0, x0 - coef * w * g, rtol=1e-9)
  assert n == 2


def test_flowchef_state_step_is_euler_from_the_steered_state(x64):
  sched = schedules.flow()
  ts = schedules.timesteps(sched, 4)
  gmm = GaussianMixture(MEANS[:, :2], 0.3)
  den = gmm.denoiser(sched)
  x = jax.random.normal(jax.random.key(0), (3, 2), jnp.float64)
  y = jnp.ones((3, 1))
  op = inverse.matrix(jnp.array([[1.0, -1.0]]))
  rule = guidance.flowchef(inverse.measurement_loss(op, y), 0.3)
  i = 1
  ctx = StepContext(ts.t[i], ts.alpha[i], ts.sigma[i], jnp.int32(i), jnp.int32(4), None)
  solver = solvers.ddim()

  @jax.jit
  def one_step(x):
    pred, _, _ = rule.apply(den, x, None, ctx, ())
    return solver.step(solver.init(x, ts), x, i, pred, None)[0]

  x_next = one_step(x)
  # FlowChef (official code): v at the unsteered state, z <- z - s grad, z <- z + dt v.
  t, t_next = float(ts.t[i]), float(ts.t[i + 1])
  x0 = np.asarray(den(x, jnp.full((3,), t)))
  v = (np.asarray(x) - x0) / t
  grad = (x0 @ np.array([1.0, -1.0]) - 1.0)[:, None] * np.array([[1.0, -1.0]])
  ref = np.asarray(x) - 0.3 * grad + (t_next - t) * v
  np.testing.assert_allclose(x_next, ref, rtol=1e-10)


def test_flowchef_skips_the_last_step(x64):
  rule = guidance.flowchef(lambda z, c: jnp.sum(z, -1), 1.0)
  ctx = StepContext(jnp.asarray(0.1), 0.9, 0.1, jnp.int32(9), jnp.int32(10), None)
  pred, _, _ = rule.apply(lambda x, t, c: x, jnp.ones((2, 2)), None, ctx, ())
  np.testing.assert_array_equal(pred.x0, jnp.ones((2, 2)))


def test_red_diff_default_optimizer_compiles_once(prior):
  from jaxdiff import _red_diff

  sched = schedules.vp_cosine()
  ts = schedules.timesteps(sched, 2)
  den, op = prior.denoiser(sched), inverse.matrix(jnp.asarray(A))
  y = jnp.asarray(np.random.default_rng(0).normal(size=(2, 2)))
  inverse.red_diff(den, op, y, ts, key=0)
  before = _red_diff._red_diff_jit._cache_size()
  inverse.red_diff(den, op, y + 1.0, ts, key=1)  # new data and key, same settings
  assert _red_diff._red_diff_jit._cache_size() == before


@pytest.mark.slow
def test_red_diff_one_step_matches_the_paper_update(prior):
  sched = schedules.vp_cosine()
  ts = schedules.timesteps(sched, 1)
  den = prior.denoiser(sched)
  op = inverse.matrix(jnp.asarray(A))
  y = jnp.asarray(np.random.default_rng(0).normal(size=(2, 2)))
  mu0 = jnp.asarray(np.random.default_rng(1).normal(size=(2, D)))
  out = inverse.red_diff(den, op, y, ts, key=3, lam=0.5, optimizer=optax.sgd(0.1), init=mu0)
  alpha, sigma, t = float(ts.alpha[0]), float(ts.sigma[0]), ts.t[0]
  eps = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(3), 0), (2, D)))
  x_t = alpha * np.asarray(mu0) + sigma * eps
  eps_hat = (x_t - alpha * np.asarray(den(jnp.asarray(x_t), jnp.full((2,), t)))) / sigma
  grad = (np.asarray(mu0) @ A.T - np.asarray(y)) @ A + 0.5 * (sigma / alpha) * (eps_hat - eps)
  np.testing.assert_allclose(out.x, np.asarray(mu0) - 0.1 * grad, rtol=1e-10)
  assert int(out.nfe) == 1


# -- end to end: the samplers approach the exact posterior -----------------------------

# Chosen before the final measurement: a sampler must be at least twice as close to the
# exact posterior as the prior is (sliced W2), on every operator.
MARGIN = 0.5
N_SAMPLES = 256


def _problems(prior):
  rng = np.random.default_rng(0)
  return {
    "mask": inverse.random_mask((D,), 0.67, key=1),
    "blur": inverse.gaussian_blur((D,), 0.8),
    "projection": inverse.matrix(jnp.asarray(rng.normal(size=(2, D)))),
  }


SAMPLERS = {
  "dps": lambda op, yb, x_T, prior: (
    jaxdiff.sample(
      prior.denoiser(schedules.vp_cosine()),
      solvers.ddpm(),
      x_T,
      schedules.timesteps(schedules.vp_cosine(), 60, spacing="logsnr"),
      key=1,
      guidance=guidance.dps(op, yb, 1.0, variant="gaussian", noise_std=S),
    ).x
  ),
  "flowchef": lambda op, yb, x_T, prior: (
    jaxdiff.sample(
      prior.denoiser(schedules.flow()),
      solvers.ddim(),
      x_T,
      schedules.timesteps(schedules.flow(), 60),
      key=1,
      guidance=guidance.flowchef(inverse.measurement_loss(op, yb), 0.3),
    ).x
  ),
  "red_diff": lambda op, yb, x_T, prior: (
    inverse.red_diff(
      prior.denoiser(schedules.vp_cosine()),
      op,
      yb,
      schedules.timesteps(schedules.vp_cosine(), 60, spacing="logsnr"),
      key=1,
      init=x_T,
    ).x
  ),
}


# Measured failures of the margin, kept as strict xfails (they must keep failing, or the
# README's finding is stale): on the strong 2 x 3 projection with noise 0.3, FlowChef at
# s = 0.3 (SW2 0.46 vs the prior's 0.52) and RED-diff (0.65: worse than the prior) over-fit
# the noisy measurement and collapse the posterior's spread.
_MISSES = {("flowchef", "projection"), ("red_diff", "projection")}


@pytest.mark.slow
@pytest.mark.parametrize(
  "sampler, problem",
  [
    pytest.param(a, p, marks=pytest.mark.xfail(strict=True, reason="measured miss"))
    if (a, p) in _MISSES
    else (a, p)
    for a in sorted(SAMPLERS)
    for p in ("blur", "mask", "projection")
  ],
)
def test_samplers_match_the_posterior_better_than_the_prior(prior, sampler, problem):
  x_true = prior.sample(7, 1)
  op = _problems(prior)[problem]
  y = inverse.measure(op, x_true, S, key=8)
  ref = prior.posterior(op.matrix(), y[0], S).sample(9, N_SAMPLES)
  x_T = jax.random.normal(jax.random.key(10), (N_SAMPLES, D), jnp.float64)
  out = SAMPLERS[sampler](op, jnp.broadcast_to(y, (N_SAMPLES, *op.out_shape)), x_T, prior)
  sw = float(metrics.sliced_wasserstein(out, ref, key=0))
  sw_prior = float(metrics.sliced_wasserstein(prior.sample(11, N_SAMPLES), ref, key=0))
  assert np.all(np.isfinite(out))
  assert sw < MARGIN * sw_prior, (sw, sw_prior)


# Statistical margin against the exact posterior; DPS's step is pinned by the dense
# Jacobian tests. Slow: the fast suite's time goes elsewhere.
@pytest.mark.slow
def test_dps_matches_the_posterior_better_than_the_prior(prior):
  """The fast member of the slow sweep above: DPS on the projection."""
  x_true = prior.sample(7, 1)
  op = _problems(prior)["projection"]
  y = inverse.measure(op, x_true, S, key=8)
  ref = prior.posterior(op.matrix(), y[0], S).sample(9, N_SAMPLES)
  x_T = jax.random.normal(jax.random.key(10), (N_SAMPLES, D), jnp.float64)
  out = SAMPLERS["dps"](op, jnp.broadcast_to(y, (N_SAMPLES, 2)), x_T, prior)
  sw = float(metrics.sliced_wasserstein(out, ref, key=0))
  sw_prior = float(metrics.sliced_wasserstein(prior.sample(11, N_SAMPLES), ref, key=0))
  assert sw < MARGIN * sw_prior, (sw, sw_prior)


@pytest.mark.slow
def test_rules_jit_vmap_and_stay_finite_at_large_scales(prior):
  sched = schedules.vp_cosine()
  ts = schedules.timesteps(sched, 8, spacing="logsnr")
  op = inverse.matrix(jnp.asarray(A))
  y = jnp.ones((4, 2))
  x_T = jax.random.normal(jax.random.key(0), (4, D), jnp.float64)
  for rule in (
    guidance.dps(op, y, 1e3),
    guidance.stsl(op, y, 1e3),
    guidance.flowchef(inverse.measurement_loss(op, y), 1e3, variant="x0"),
  ):
    out = jaxdiff.sample(prior.denoiser(sched), solvers.ddim(), x_T, ts, key=0, guidance=rule)
    assert np.all(np.isfinite(out.x))
  # vmap over independent problems (a measurement per problem) of the DPS prediction.
  ctx = StepContext(ts.t[2], ts.alpha[2], ts.sigma[2], jnp.int32(2), jnp.int32(8), None)
  ys = jnp.stack([y, 2 * y])

  def pred(yy):
    return guidance.dps(op, yy, 0.5).apply(prior.denoiser(sched), x_T, None, ctx, ())[0].x0

  batched = jax.jit(jax.vmap(pred))(ys)
  np.testing.assert_allclose(batched[1], pred(2 * y), rtol=1e-10)
