"""jaxdiff.distill distribution matching: the DMD / f-distill generator gradient against the
closed-form gradient of D_f(p_t || q_t) for a Gaussian generator and a Gaussian-mixture
teacher (quadrature), the weight table against h = r^2 f'', the discriminator's optimum,
decoupled DMD's terms against the coupled CFG-DMD gradient, and a 10-step float64
transcription of the official update (DMD2 / FastGen f-distill formulas, in NumPy)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import ndtri
from jax.scipy.stats import norm

from jaxdiff import distill, schedules
from jaxdiff._distill._distribution_matching import _F, _H
from jaxdiff.testing import GaussianMixture

# Teacher: a 1-D two-component mixture; student: x = mu + s z.
MEANS = np.array([[-1.0], [1.5]])  # NumPy float64: jnp at import time would be float32
VARS = np.array([0.3, 0.5])
WEIGHTS = np.array([0.4, 0.6])


def _teacher():
  return GaussianMixture(MEANS, VARS, weights=WEIGHTS)


def _log_p_t(x, a, sig):
  a, sig = jnp.asarray(a)[..., None], jnp.asarray(sig)[..., None]
  comp = norm.logpdf(x[:, None], a * MEANS[:, 0], jnp.sqrt(a**2 * VARS + sig**2))
  return jax.nn.logsumexp(comp + jnp.log(WEIGHTS / WEIGHTS.sum()), axis=1)


def _log_q_t(x, mu, s, a, sig):
  return norm.logpdf(x, a * mu, jnp.sqrt(a**2 * s**2 + sig**2))


@pytest.mark.parametrize("divergence", distill.DIVERGENCES)
def test_weight_table_is_r2_fpp_of_the_divergence_generator(x64, divergence):
  f = _F[divergence]
  r = jnp.linspace(0.05, 30.0, 101)
  fpp = jax.vmap(jax.grad(jax.grad(f)))(r)
  np.testing.assert_allclose(_H[divergence](r), r**2 * fpp, rtol=1e-12)
  assert abs(float(f(jnp.array(1.0)))) < 1e-15  # f(1) = 0: D_f(p || p) = 0
  got = distill.f_divergence_weight(jnp.log(r), divergence=divergence, ratio_bounds=None,
                                    normalize=False)  # fmt: skip
  np.testing.assert_allclose(got, r**2 * fpp, rtol=1e-12)


def _f_divergence_quadrature(theta, divergence, a, sig):
  """D_f(p_t || q_t) = int q_t f(p_t / q_t) by the trapezoid rule on a dense grid."""
  mu, s = theta
  grid = jnp.linspace(-14.0, 14.0, 12001)
  lq = _log_q_t(grid, mu, s, a, sig)
  lp = _log_p_t(grid, a, sig)
  return jnp.trapezoid(jnp.exp(lq) * _F[divergence](jnp.exp(lp - lq)), grid)


def _estimated_gradient(theta, divergence, t, *, weighting="score"):
  """E_{z, eps}[g(x) . dx/dtheta] by 2-D Gauss-Hermite quadrature, g from the library."""
  mu, s = theta
  sched = schedules.flow()
  a, sig = float(sched.alpha(t)), float(sched.sigma(t))
  nodes, w = np.polynomial.hermite_e.hermegauss(60)
  w = w / w.sum()
  z, e = (jnp.asarray(v).reshape(-1) for v in np.meshgrid(nodes, nodes, indexing="ij"))
  wz = jnp.asarray(np.outer(w, w).reshape(-1))
  x = (mu + s * z)[:, None]
  xt = a * x + sig * e[:, None]
  x0_real = _teacher().posterior_mean(xt, a, sig)
  student = GaussianMixture(jnp.array([[mu]]), jnp.array([s**2]))
  x0_fake = student.posterior_mean(xt, a, sig)
  log_ratio = _log_p_t(xt[:, 0], a, sig) - _log_q_t(xt[:, 0], mu, s, a, sig)
  g = distill.distribution_matching_grad(
    x, x0_real, x0_fake, alpha=a, sigma=sig, weighting=weighting, divergence=divergence,
    log_ratio=log_ratio, ratio_bounds=None, normalize=False,
  )[:, 0]  # fmt: skip
  return jnp.array([jnp.sum(wz * g), jnp.sum(wz * g * z)]), (a, sig)


@pytest.mark.parametrize("divergence", distill.DIVERGENCES)
def test_generator_gradient_is_the_closed_form_f_divergence_gradient(x64, divergence):
  theta = (0.3, 0.8)
  got, (a, sig) = _estimated_gradient(theta, divergence, 0.6)
  want = jax.grad(_f_divergence_quadrature)(jnp.array(theta), divergence, a, sig)
  assert float(jnp.linalg.norm(want)) > 1e-3  # the student is off: a real gradient
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "jensen_shannon"])
def test_generator_gradient_vanishes_when_the_student_is_the_teacher(x64, divergence):
  # A single-Gaussian teacher the Gaussian student can equal exactly.
  x = jax.random.normal(jax.random.key(0), (64, 2))
  gmm = GaussianMixture(jnp.array([[0.5, -1.0]]), 0.7)
  xt = 0.6 * x + 0.8 * jax.random.normal(jax.random.key(1), x.shape)
  pred = gmm.posterior_mean(xt, 0.6, 0.8)
  for weighting in ("dmd", "score"):
    g = distill.distribution_matching_grad(
      x, pred, pred, alpha=0.6, sigma=0.8, weighting=weighting, divergence=divergence,
      log_ratio=jnp.zeros(64),
    )  # fmt: skip
    assert float(jnp.max(jnp.abs(g))) == 0.0

  # ... and the closed-form divergence is stationary there (a Gaussian teacher N(0.4, 0.9)).
  def d_f(th):
    grid = jnp.linspace(-12.0, 12.0, 8001)
    lq = norm.logpdf(grid, 0.6 * th[0], jnp.sqrt(0.36 * th[1] ** 2 + 0.64))
    lp = norm.logpdf(grid, 0.6 * 0.4, jnp.sqrt(0.36 * 0.9 + 0.64))
    return jnp.trapezoid(jnp.exp(lq) * _F[divergence](jnp.exp(lp - lq)), grid)

  np.testing.assert_allclose(jax.grad(d_f)(jnp.array([0.4, 0.9**0.5])), 0.0, atol=1e-10)


def test_reverse_kl_is_dmd_whatever_the_ratio(x64):
  key = jax.random.key(3)
  x, xr, xf = jax.random.normal(key, (3, 8, 4))
  got = distill.distribution_matching_grad(x, xr, xf, divergence="reverse_kl",
                                           log_ratio=jnp.linspace(-3, 3, 8))  # fmt: skip
  # DMD2 code: grad = (p_fake - p_real) / |x - p_real|.mean(dims)
  want = (np.asarray(xf) - np.asarray(xr)) / np.abs(np.asarray(x) - np.asarray(xr)).mean(
    axis=1, keepdims=True
  )
  np.testing.assert_allclose(got, want, rtol=1e-13)
  plain = distill.distribution_matching_grad(x, xr, xf)
  np.testing.assert_allclose(got, plain, rtol=0, atol=0)
  # A constant ratio gives every divergence DMD's direction (h normalised to its mean).
  for divergence in distill.DIVERGENCES:
    g = distill.distribution_matching_grad(x, xr, xf, divergence=divergence,
                                           log_ratio=jnp.full(8, 0.7))  # fmt: skip
    np.testing.assert_allclose(g, want, rtol=1e-13)


def test_weight_follows_the_official_pipeline(x64):
  logits = jnp.array([-12.0, -3.0, -0.5, 0.0, 1.0, 2.5, 4.0, 11.0])
  for divergence in distill.DIVERGENCES:
    got = distill.f_divergence_weight(logits, divergence=divergence)
    r = np.clip(np.exp(np.clip(np.asarray(logits), -10.0, 10.0)), 0.1, 20.0)
    h = np.asarray(_H[divergence](jnp.asarray(r)))
    np.testing.assert_allclose(got, h / h.mean(), rtol=1e-13)
  js = distill.f_divergence_weight(logits, divergence="jensen_shannon", ratio_bounds=(0.5, 3.0),
                                   normalize=False)  # fmt: skip
  r = np.clip(np.exp(np.asarray(logits)), 0.5, 3.0)
  np.testing.assert_allclose(js, r / (1 + r), rtol=1e-13)


def test_generator_loss_gradient_is_the_direction(x64):
  x = jax.random.normal(jax.random.key(0), (5, 3))
  g = jax.random.normal(jax.random.key(1), (5, 3))
  loss, grad = jax.value_and_grad(distill.generator_loss)(x, g)
  np.testing.assert_allclose(grad, g / x.size, rtol=1e-14)
  np.testing.assert_allclose(loss, 0.5 * np.mean(np.asarray(g) ** 2), rtol=1e-14)
  # No gradient reaches whatever computed the direction.
  dg = jax.grad(lambda gg: distill.generator_loss(x, gg))(g)
  assert float(jnp.max(jnp.abs(dg))) == 0.0


def test_discriminator_optimum_is_the_log_density_ratio(x64):
  # Real ~ N(0.5, 0.8^2), fake ~ N(-0.3, 1.2^2): the log ratio is a quadratic in x.
  n = 200001
  u = (jnp.arange(n) + 0.5) / n
  real = 0.5 + 0.8 * ndtri(u)
  fake = -0.3 + 1.2 * ndtri(u)
  m1, s1, m0, s0 = 0.5, 0.8, -0.3, 1.2
  exact = jnp.array([
    0.5 / s0**2 - 0.5 / s1**2,
    m1 / s1**2 - m0 / s0**2,
    -0.5 * m1**2 / s1**2 + 0.5 * m0**2 / s0**2 + np.log(s0 / s1),
  ])  # fmt: skip

  def loss(c):
    d = lambda x: c[0] * x**2 + c[1] * x + c[2]  # noqa: E731
    return distill.ratio_discriminator_loss(d(real), d(fake))

  assert float(jnp.linalg.norm(jax.grad(loss)(exact))) < 1e-4
  assert float(jnp.linalg.norm(jax.grad(loss)(exact + jnp.array([0.0, 0.2, 0.0])))) > 1e-2
  np.testing.assert_allclose(loss(jnp.zeros(3)), 2 * np.log(2), rtol=1e-14)


@pytest.mark.parametrize("weighting", ["dmd", "score"])
def test_decoupled_terms_add_up_to_cfg_dmd_at_a_shared_time(x64, weighting):
  # A 2-class teacher: conditional (class 1), unconditional, and a CFG combination.
  teacher = GaussianMixture(jnp.array([[-1.0, 0.5], [1.0, 0.0], [2.0, -1.0]]), 0.3,
                            classes=jnp.array([0, 1, 1]))  # fmt: skip
  fake = GaussianMixture(jnp.array([[0.5, 0.5]]), 0.8)
  x = jax.random.normal(jax.random.key(0), (32, 2))
  a, sig, scale = 0.7, 0.6, 4.0
  xt = a * x + sig * jax.random.normal(jax.random.key(1), x.shape)
  c = teacher.posterior_mean(xt, a, sig, jnp.ones(32, int))
  u = teacher.posterior_mean(xt, a, sig, -jnp.ones(32, int))
  cfg = u + scale * (c - u)
  xf = fake.posterior_mean(xt, a, sig)
  kw = dict(alpha=a, sigma=sig, weighting=weighting)
  coupled = distill.distribution_matching_grad(x, cfg, xf, **kw)
  dm = distill.distribution_matching_grad(x, c, xf, x0_ref=cfg, **kw)
  ca = distill.cfg_augmentation_grad(x, c, u, scale=scale, **kw)
  np.testing.assert_allclose(dm + ca, coupled, rtol=1e-12, atol=1e-13)
  assert float(jnp.max(jnp.abs(ca))) > 0.1  # the CA term is not trivially zero
  # Scale 1: no CFG augmentation.
  assert float(jnp.max(jnp.abs(distill.cfg_augmentation_grad(x, c, u, scale=1.0, **kw)))) == 0.0
  if weighting == "score":  # Eq. 6 in scores: -(s^cfg - s^fake) = -(DM) - (alpha - 1)(s^c - s^u)
    score = lambda x0: (a * x0 - xt) / sig**2  # noqa: E731
    want = -a * ((score(u) + scale * (score(c) - score(u))) - score(xf))
    np.testing.assert_allclose(coupled, want, rtol=1e-12, atol=1e-12)


def test_decoupled_timesteps_ranges(x64):
  n = 20000
  for variant in distill.DECOUPLED_VARIANTS:
    dm, ca = distill.decoupled_timesteps((n,), key=1, t_input=0.5, variant=variant)
    full = (0.02, 0.98)
    dm_hi = 0.5 if variant == "constrained" else full[1]
    ca_hi = 0.5 if variant in ("hybrid", "constrained") else full[1]
    for tau, hi in ((dm, dm_hi), (ca, ca_hi)):
      assert float(tau.min()) >= full[0] and float(tau.max()) <= hi
      np.testing.assert_allclose(float(tau.mean()), (full[0] + hi) / 2, atol=0.01)
    if variant == "shared":
      np.testing.assert_array_equal(dm, ca)
    else:
      assert abs(float(jnp.corrcoef(dm, ca)[0, 1])) < 0.05
  # A non-default range: the bounds and the uniform mean move with it.
  dm, ca = distill.decoupled_timesteps((n,), key=2, t_input=0.4, t_min=0.1, t_max=0.6)
  assert float(dm.min()) >= 0.1 and float(dm.max()) <= 0.6 and float(ca.max()) <= 0.4
  np.testing.assert_allclose([float(dm.mean()), float(ca.mean())], [0.35, 0.25], atol=0.01)
  # One-step generator (input at pure noise): hybrid is the full range for both.
  dm, ca = distill.decoupled_timesteps((n,), key=1, t_input=1.0)
  np.testing.assert_allclose(float(ca.max()), 0.98, atol=1e-3)


def test_fake_score_loss_is_minimised_by_the_students_denoiser(x64):
  sched = schedules.flow()
  x = 0.3 + 0.8 * jax.random.normal(jax.random.key(0), (4000, 1))
  t = jax.random.uniform(jax.random.key(1), (4000,), minval=0.05, maxval=0.95)
  student = GaussianMixture(jnp.array([[0.3]]), jnp.array([0.64])).denoiser(sched)
  teacher = _teacher().denoiser(sched)
  l_student = distill.fake_score_loss(student, x, t, schedule=sched, key=2)
  l_teacher = distill.fake_score_loss(teacher, x, t, schedule=sched, key=2)
  assert float(l_student) < float(l_teacher)
  # Transcription: the same noise by hand.
  eps = jax.random.normal(jax.random.key(2), x.shape, x.dtype)
  xt = (1 - t)[:, None] * x + t[:, None] * eps
  np.testing.assert_allclose(l_student, jnp.mean((student(xt, t) - x) ** 2), rtol=1e-14)
  # No gradient reaches the generator samples.
  dx = jax.grad(lambda v: distill.fake_score_loss(student, v, t, schedule=sched, key=2))(x)
  assert float(jnp.max(jnp.abs(dx))) == 0.0


def _np_posterior_mean(xt, a, sig, means, variances, weights):
  """NumPy: E[x0 | x_t] and log p_t(x_t) of a 1-D Gaussian mixture (not the library's GMM)."""
  a, sig = a[:, None], sig[:, None]
  v = a**2 * variances + sig**2
  logn = -0.5 * (xt[:, None] - a * means) ** 2 / v - 0.5 * np.log(2 * np.pi * v)
  logw = np.log(weights / weights.sum()) + logn
  resp = np.exp(logw - logw.max(axis=1, keepdims=True))
  resp /= resp.sum(axis=1, keepdims=True)
  post = means + a * variances / v * (xt[:, None] - a * means)
  return (resp * post).sum(axis=1), np.log(np.exp(logw - logw.max(1, keepdims=True)).sum(1)) + \
    logw.max(1)  # fmt: skip


def test_ten_f_distill_steps_match_a_float64_transcription(x64):
  """A Gaussian generator distilled from the mixture for 10 SGD steps, exact teacher and
  fake score, JS weighting from the exact log ratio: the library against NumPy formulas of
  the official code (DMD2 normaliser, FastGen clip/normalise of h, 0.5 * mse surrogate)."""
  means, variances, weights = np.array([-1.0, 1.5]), np.array([0.3, 0.5]), np.array([0.4, 0.6])
  rng = np.random.default_rng(0)
  lr, b = 0.05, 64
  theta_lib = jnp.array([0.2, 0.5])
  theta_np = np.array([0.2, 0.5])
  for _ in range(10):
    z = rng.standard_normal(b)
    e = rng.standard_normal(b)
    t = rng.uniform(0.02, 0.98, b)
    a, sig = 1.0 - t, t

    # library
    def gen(th):
      return (th[0] + th[1] * jnp.asarray(z))[:, None]

    x = gen(theta_lib)
    xt = jnp.asarray(a)[:, None] * x + jnp.asarray(sig * e)[:, None]
    xr = _teacher().posterior_mean(xt, jnp.asarray(a), jnp.asarray(sig))
    mu, s = theta_lib
    xf = GaussianMixture(jnp.array([[mu]]), s**2).posterior_mean(xt, jnp.asarray(a),
                                                                 jnp.asarray(sig))  # fmt: skip
    lr_ = _log_p_t(xt[:, 0], jnp.asarray(a), jnp.asarray(sig)) - _log_q_t(
      xt[:, 0], mu, s, jnp.asarray(a), jnp.asarray(sig))  # fmt: skip
    g = distill.distribution_matching_grad(x, xr, xf, divergence="jensen_shannon", log_ratio=lr_)
    theta_lib = theta_lib - lr * jax.grad(lambda th: distill.generator_loss(gen(th), g))(theta_lib)

    # NumPy transcription
    xn = theta_np[0] + theta_np[1] * z
    xtn = a * xn + sig * e
    real, lp = _np_posterior_mean(xtn, a, sig, means, variances, weights)
    fk, lq = _np_posterior_mean(xtn, a, sig, np.array([theta_np[0]]), np.array([theta_np[1] ** 2]),
                                np.array([1.0]))  # fmt: skip
    ratio = np.clip(np.exp(np.clip(lp - lq, -10, 10)), 0.1, 20.0)
    h = ratio / (1 + ratio)
    h = h / h.mean()
    w = 1.0 / np.abs(xn - real)  # mean over the one non-batch axis
    grad_x = h * (fk - real) * w
    # d/dtheta of 0.5 * mean((x - sg(x - grad_x))^2) = mean(grad_x * dx/dtheta)
    theta_np = theta_np - lr * np.array([np.mean(grad_x), np.mean(grad_x * z)])
    np.testing.assert_allclose(theta_lib, theta_np, rtol=1e-10)
  assert abs(theta_np[1] - 0.5) > 1e-3  # the generator moved
