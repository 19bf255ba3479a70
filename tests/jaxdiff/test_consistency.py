"""Consistency training (Dao et al. 2025, arXiv:2502.01441; iCT, arXiv:2310.14189).

Float64 transcriptions of the official code (github.com/quandao10/LCT:
``models/karras_diffusion.py``, ``models/script_util.py``, ``train_cm_latent.py``) and of
the papers' equations; the loss on exact testbeds (a point mass, where consistency training
is exact at the true map, and a Gaussian mixture, whose probability-flow map is a tight
diffrax solve over the closed-form denoiser); the OT pairing against scipy's exact
assignment; the non-scaling LayerNorm; one- and two-step sampling.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from jaxdiff import distill
from jaxdiff._distill._consistency import _sample_intervals
from jaxdiff.testing import GaussianMixture

SMIN, SMAX, RHO, SD = 0.002, 80.0, 7.0, 0.5


# --------------------------------------------------------------------------- transcriptions
# The official code, transcribed line by line in NumPy float64 (facts, not its code base).


def _ref_scalings(sigma):
  c_skip = SD**2 / ((sigma - SMIN) ** 2 + SD**2)
  c_out = (sigma - SMIN) * SD / (sigma**2 + SD**2) ** 0.5
  c_in = 1 / (sigma**2 + SD**2) ** 0.5
  return c_skip, c_out, c_in


def _ref_improve_scale_fn(step, total_steps, start_scales, end_scales):
  temp = np.floor(total_steps / (np.log2(np.floor(end_scales / start_scales)) + 1))
  return int(min(start_scales * 2 ** np.floor(step / temp), end_scales) + 1)


def _ref_sigmas(num_scales):
  indices = np.arange(num_scales, dtype=np.float64)
  t = SMAX ** (1 / RHO) + indices / (num_scales - 1) * (SMIN ** (1 / RHO) - SMAX ** (1 / RHO))
  return t**RHO


def _ref_icm_probs(num_scales, p_mean=-1.1, p_std=2.0):
  sig = _ref_sigmas(num_scales)
  erf = np.array([math.erf((math.log(s) - p_mean) / (math.sqrt(2) * p_std)) for s in sig])
  p = erf[:-1] - erf[1:]
  return p / p.sum()


def _ref_loss(fn, x, idx, noise, num_scales, c, loss_norm, diff_weight=5.0, target_fn=None):
  """``consistency_losses`` (CT: Euler step with x_start) + ``cm_loss + 5 * diff_loss``;
  ``target_fn`` is the target network (default ``fn``: iCT's EMA-0 target)."""
  sig = _ref_sigmas(num_scales)
  t, t2 = sig[idx], sig[idx + 1]
  x_t = x + noise * t[:, None]
  distiller = np.asarray(fn(x_t, t))
  d = (x_t - x) / t[:, None]
  x_t2 = x_t + d * (t2 - t)[:, None]
  target = np.asarray((fn if target_fn is None else target_fn)(x_t2, t2))
  weights = 1 / (t - t2)
  diffs = (distiller - target) ** 2
  if loss_norm == "cauchy":
    loss = (np.log(0.5 * diffs.mean(1) + c**2) - 2 * np.log(c)) * weights
  else:
    loss = (np.sqrt(diffs.mean(1) + c**2) - c) * weights
  diff_idx = idx >= int(num_scales * 0.75)
  diff_w = (1 / t**2 + 1 / SD**2)[diff_idx]
  diff_loss = ((distiller - x) ** 2).mean(1)[diff_idx] * diff_w
  return loss.mean() + diff_weight * (diff_loss.mean() if diff_idx.any() else 0.0)


def _draws(key, b, d, num_scales, dtype=jnp.float64):
  """The loss's own draws (interval index, noise) for a key, to feed the transcription."""
  k_idx, k_noise = jax.random.split(jax.random.key(key))
  idx = _sample_intervals(k_idx, b, num_scales, SMIN, SMAX, RHO, -1.1, 2.0, dtype)
  return np.asarray(idx), np.asarray(jax.random.normal(k_noise, (b, d), dtype))


# --------------------------------------------------------------------------- schedules


def test_scalings_match_the_official_code_and_the_boundary_condition(x64):
  sig = np.geomspace(SMIN, SMAX, 25)
  for got, want in zip(distill.consistency_scalings(jnp.asarray(sig)), _ref_scalings(sig)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-14, atol=0)
  c_skip, c_out, _ = distill.consistency_scalings(SMIN)
  assert float(c_skip) == 1.0 and float(c_out) == 0.0


def test_num_scales_curriculum_matches_the_official_code_over_the_run():
  for total, s0, s1 in ((400_000, 10, 1280), (1000, 10, 160), (37, 2, 9), (5, 10, 10)):
    for k in np.linspace(0, total - 1, 23).astype(int):
      assert distill.ict_num_scales(int(k), total_steps=total, s0=s0, s1=s1) == (
        _ref_improve_scale_fn(k, total, s0, s1)
      ), (total, s0, s1, k)


def test_karras_grid_and_timestep_probs_match_the_official_code():
  for n in (2, 11, 21, 41, 81, 161, 321, 641, 1281, 7, 3):
    np.testing.assert_allclose(distill.karras_sigmas(n), _ref_sigmas(n), rtol=1e-15)
    np.testing.assert_allclose(distill.ict_timestep_probs(n), _ref_icm_probs(n), rtol=1e-10)


@pytest.mark.parametrize("num_scales", [11, 41, 161])
def test_interval_draws_follow_icts_discretised_lognormal(num_scales, x64):
  # the loss draws by inversion (so num_scales may be traced); the frequencies must be the
  # official code's categorical icm_dist (a 5-sigma binomial band on 400k draws)
  m = 400_000
  idx = np.asarray(
    jax.jit(_sample_intervals, static_argnums=(1, 3, 4, 5, 6, 7, 8))(
      jax.random.key(0), m, num_scales, SMIN, SMAX, RHO, -1.1, 2.0, jnp.float64
    )
  )
  assert idx.min() >= 0 and idx.max() <= num_scales - 2
  freq = np.bincount(idx, minlength=num_scales - 1) / m
  p = _ref_icm_probs(num_scales)
  assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / m) + 1e-6)


def test_adaptive_c_is_the_papers_fit_and_decreases_with_n():
  ns = [11, 21, 41, 81, 161, 321, 641, 1281, 2, 3]
  got = np.array([distill.adaptive_c(n) for n in ns])
  np.testing.assert_allclose(got, np.exp(-1.15 * np.log(np.array(ns) - 1.0) - 0.85), rtol=1e-15)
  assert np.all(np.diff(got[:8]) < 0)
  # traced N (a curriculum inside jit) gives the same value
  assert abs(float(jax.jit(distill.adaptive_c)(21)) - distill.adaptive_c(21)) < 1e-6


# --------------------------------------------------------------------------- premetrics


def test_premetrics_match_the_official_forms_and_the_sum_forms(x64):
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(6, 3, 4)), rng.normal(size=(6, 3, 4))
  d = 12
  for c in (1e-3, 0.03, 1.0, 7.0):
    mean = ((x - y) ** 2).reshape(6, -1).mean(1)
    total = mean * d
    cauchy = np.asarray(distill.cauchy_premetric(jnp.asarray(x), jnp.asarray(y), c=c))
    huber = np.asarray(distill.pseudo_huber_premetric(jnp.asarray(x), jnp.asarray(y), c=c))
    np.testing.assert_allclose(cauchy, np.log(0.5 * mean + c**2) - 2 * np.log(c), rtol=1e-12)
    np.testing.assert_allclose(huber, np.sqrt(mean + c**2) - c, rtol=1e-12)
    # the paper's sum forms with c' = c sqrt(d)
    cp = c * math.sqrt(d)
    np.testing.assert_allclose(cauchy, np.log1p(total / (2 * cp**2)), rtol=1e-12)
    np.testing.assert_allclose(huber * math.sqrt(d), np.sqrt(total + cp**2) - cp, rtol=1e-12)


def test_cauchy_grows_slower_than_pseudo_huber_on_outliers(x64):
  # the paper's point: the gradient weight of an outlier residual r decays like 1/r
  z = jnp.zeros((1, 1))
  r = jnp.array([[1.0], [1e3]])
  g = jax.vmap(jax.grad(lambda v, f: f(v[None], z, c=0.1)[0]), in_axes=(0, None))
  gc = g(r, distill.cauchy_premetric)
  gh = g(r, distill.pseudo_huber_premetric)
  assert float(gc[1, 0] / gc[0, 0]) < 1e-2
  assert abs(float(gh[1, 0] / gh[0, 0]) - 1.0) < 1e-2


# --------------------------------------------------------------------------- OT pairing


@pytest.mark.parametrize("seed", range(10))
def test_ot_pairing_is_the_exact_assignment(seed, x64):
  rng = np.random.default_rng(seed)
  b, d = 4 + seed, 3
  x, z = rng.normal(size=(b, d)), rng.normal(size=(b, d)) + 0.5
  got = np.asarray(jax.jit(distill.ot_pairing)(jnp.asarray(x), jnp.asarray(z)))
  cost = ((x[:, None] - z[None]) ** 2).sum(-1)
  _, cols = scipy.optimize.linear_sum_assignment(cost)
  np.testing.assert_array_equal(got, z[cols])
  # and it is optimal: no pairing costs less than the identity on the result
  assert ((x - got) ** 2).sum() <= ((x - z) ** 2).sum() + 1e-12


# --------------------------------------------------------------------------- the loss


def _net(a):
  """A consistency function with a parameter: a shrink toward 0 scaled by ``a``."""
  f = distill.consistency_function(lambda xin, s: a * jnp.tanh(xin))
  return f


@pytest.mark.parametrize("premetric", distill.PREMETRICS)
@pytest.mark.parametrize("num_scales", [11, 41])
def test_loss_matches_the_official_code(premetric, num_scales, x64):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(64, 2)) * 0.7
  f = _net(0.3)
  for key in range(3):
    c = distill.adaptive_c(num_scales)
    got = distill.consistency_training_loss(
      f, jnp.asarray(x), key=key, num_scales=num_scales, c=c, premetric=premetric
    )
    idx, noise = _draws(key, 64, 2, num_scales)
    want = _ref_loss(f, x, idx, noise, num_scales, c, premetric)
    np.testing.assert_allclose(float(got), want, rtol=1e-10)


def test_diffusion_weight_zero_is_the_bare_consistency_loss(x64):
  x = jnp.asarray(np.random.default_rng(2).normal(size=(32, 2)))
  f = _net(0.3)
  got = distill.consistency_training_loss(f, x, key=0, num_scales=11, c=0.1, diffusion_weight=0.0)
  idx, noise = _draws(0, 32, 2, 11)
  np.testing.assert_allclose(
    float(got), _ref_loss(f, np.asarray(x), idx, noise, 11, 0.1, "cauchy", 0.0), rtol=1e-10
  )


def _dirac_map(x0):
  """The probability-flow map to sigma_min of data = a point mass at x0 (straight rays)."""
  return lambda x, s: x0 + SMIN * (x - x0) / s[:, None]


@pytest.mark.parametrize("premetric", distill.PREMETRICS)
def test_ct_loss_is_zero_at_the_true_map_of_a_point_mass(premetric, x64):
  # For a point mass the PF-ODE rays are x0 + sigma z: the CT target x0 + sigma' z lies on the
  # same ray, so consistency training is exact and the loss at the true map is zero.
  x0 = jnp.array([1.5, -0.5])
  x = jnp.broadcast_to(x0, (32, 2))
  f_star = _dirac_map(x0)
  for n, pair in ((11, False), (161, True)):
    kw = dict(
      key=3, num_scales=n, c=0.01, premetric=premetric, diffusion_weight=0.0, pair_noise=pair
    )
    assert float(distill.consistency_training_loss(f_star, x, **kw)) < 1e-20
    wrong = lambda v, s: f_star(v, s) + 1e-3 * jnp.tanh(v)  # noqa: E731
    assert float(distill.consistency_training_loss(wrong, x, **kw)) > 1e-8


@pytest.fixture(scope="module")
def gmm_flow_map():
  """The exact consistency function of a 2-D mixture: a tight diffrax solve of
  dx/dsigma = (x - D(x, sigma)) / sigma from sigma down to sigma_min (float64)."""
  import diffrax

  with jax.enable_x64(True):
    gmm = GaussianMixture(jnp.array([[-1.0, 0.0], [1.0, 0.5]]), jnp.array([0.05, 0.1]))

    def one(x, s):
      term = diffrax.ODETerm(lambda sig, y, _: (y - gmm.posterior_mean(y[None], 1.0, sig)[0]) / sig)
      sol = diffrax.diffeqsolve(
        term,
        diffrax.Tsit5(),
        t0=s,
        t1=SMIN,
        dt0=-(s - SMIN) / 50,
        y0=x,
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10),
        max_steps=100_000,
      )
      return sol.ys[-1]

    solve = jax.jit(jax.vmap(one))

  def f_star(x, s):
    with jax.enable_x64(True):
      return solve(x, jnp.broadcast_to(s, x.shape[:1]))

  return gmm, f_star


@pytest.mark.slow
def test_cd_loss_vanishes_at_the_exact_map_of_a_gaussian_mixture(gmm_flow_map, x64):
  # With the exact denoiser as teacher the only error left at the true map is the Heun
  # step's local error O(dsigma^3): squared and divided by dsigma, the loss falls like N^-5,
  # while a map off by 1e-3 tanh(x) keeps a loss that does not vanish.
  gmm, f_star = gmm_flow_map
  x = gmm.sample(jax.random.key(0), 16)
  teacher = lambda v, s: gmm.posterior_mean(v, 1.0, s)  # noqa: E731
  kw = dict(key=5, c=0.01, diffusion_weight=0.0, teacher=teacher)
  at = [float(distill.consistency_training_loss(f_star, x, num_scales=n, **kw)) for n in (161, 641)]
  off = lambda v, s: f_star(v, s) + 1e-3 * jnp.tanh(v)  # noqa: E731
  off_map = float(distill.consistency_training_loss(off, x, num_scales=641, **kw))
  order = math.log(at[0] / at[1]) / math.log(640 / 160)
  assert 4.0 < order < 6.0, (at, order)
  assert at[1] < 1e-2 * off_map, (at, off_map)


@pytest.mark.slow
def test_ct_loss_at_the_exact_map_shrinks_with_the_grid(gmm_flow_map, x64):
  # The CT estimator replaces the denoiser by x: at the true map its loss is O(dsigma) and
  # vanishes as N grows (Song et al. 2023, Thm. 2); a wrong map keeps an O(1) loss.
  gmm, f_star = gmm_flow_map
  x = gmm.sample(jax.random.key(1), 16)
  kw = dict(key=7, c=0.01, diffusion_weight=0.0, premetric="pseudo_huber")
  coarse = float(distill.consistency_training_loss(f_star, x, num_scales=11, **kw))
  fine = float(distill.consistency_training_loss(f_star, x, num_scales=1281, **kw))
  assert fine < 0.1 * coarse, (fine, coarse)


def test_gradient_is_the_online_branchs_with_the_target_held_fixed(x64):
  # iCT's target network is sg(theta): the gradient is the derivative of the loss with the
  # target frozen at the current parameters (central differences of the transcription).
  x = jnp.asarray(np.random.default_rng(3).normal(size=(16, 2)))
  a0, h = 0.3, 1e-6

  def loss(a):
    return distill.consistency_training_loss(_net(a), x, key=0, num_scales=11, c=0.05)

  idx, noise = _draws(0, 16, 2, 11)
  ref = lambda a: _ref_loss(
    _net(a), np.asarray(x), idx, noise, 11, 0.05, "cauchy", target_fn=_net(a0)
  )  # noqa: E731
  fd = (ref(a0 + h) - ref(a0 - h)) / (2 * h)
  g = float(jax.grad(loss)(a0))
  assert g == pytest.approx(fd, rel=1e-6)
  assert float(jax.jit(loss)(a0)) == pytest.approx(float(loss(a0)), rel=1e-12)


# --------------------------------------------------------------------------- sampling, layers


def test_one_and_two_step_sampling_of_a_gaussian_is_exact(x64):
  # N(mu, s^2): the flow map to sigma_min is mu + (x - mu) sqrt(s^2 + smin^2)/sqrt(s^2 + sigma^2)
  mu, s = 0.7, 0.3
  f = lambda x, sig: mu + (x - mu) * math.sqrt(s**2 + SMIN**2) / jnp.sqrt(s**2 + sig[:, None] ** 2)  # noqa: E731
  z = jax.random.normal(jax.random.key(0), (20000, 1), jnp.float64)
  for sigmas in ((80.0,), (80.0, 0.8)):
    out = jax.jit(lambda z: distill.consistency_sample(f, z, sigmas=sigmas, key=1))(z)
    # the target is data convolved with sigma_min noise, mean mu, std sqrt(s^2 + smin^2);
    # mu is approached only as sigma_max -> inf (the start is x0 + 80 z, not 80 z)
    assert abs(float(out.mean()) - mu) < 0.02
    assert abs(float(out.std()) - math.sqrt(s**2 + SMIN**2)) < 0.01


def test_non_scaling_layernorm_has_no_scale_and_matches_the_formula(x64):
  from flax import nnx

  from jaxdiff.models import NonScalingLayerNorm

  norm = NonScalingLayerNorm(5, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
  params = nnx.state(norm, nnx.Param)
  assert [tuple(p.shape) for p in jax.tree.leaves(params)] == [(5,)]  # the bias only
  norm.bias[...] = jnp.arange(5.0)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)) * 10)
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  np.testing.assert_allclose(norm(x), (x - mu) / np.sqrt(var + 1e-5) + np.arange(5.0), rtol=1e-12)
  # torch's LayerNorm with weight frozen at one is the same map (flax's without scale too)
  ln = nnx.LayerNorm(5, use_scale=False, epsilon=1e-5, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
  ln.bias[...] = jnp.arange(5.0)
  np.testing.assert_allclose(norm(x), ln(x), rtol=1e-10)
