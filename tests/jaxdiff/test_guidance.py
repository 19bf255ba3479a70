"""Guidance rules: reductions between rules, paper equations, NFE accounting, bad input.

The testbed is a 3-class isotropic Gaussian mixture in 2-D whose conditional and
unconditional denoisers and class posterior are exact in closed form, sampled with a
minimal deterministic DDIM loop (``lax.scan``) that honours the GuidanceRule contract
(``init`` once per call, ``Prediction.x0`` to denoise, ``x0_renoise`` to re-noise).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import Prediction, StepContext, guidance

# ----------------------------------------------------------------------------------------
# Testbed.

MEANS = np.array([[3.0, 0.0], [-1.5, 2.6], [-1.5, -2.6]])
WEIGHTS = np.array([0.5, 0.3, 0.2])
S2 = 0.25  # per-component variance
NUM_STEPS = 12
B = 16


def _alpha_sigma(t):
  return jnp.cos(0.5 * jnp.pi * t), jnp.sin(0.5 * jnp.pi * t)


def _class_loglik(x, t):
  """log p(x_t | k) + log pi_k, shape (B, K)."""
  a, s = _alpha_sigma(t)
  a, s = a[:, None, None], s[:, None, None]
  mu = jnp.asarray(MEANS, x.dtype)[None]
  var = a**2 * S2 + s**2
  d2 = jnp.sum((x[:, None] - a * mu) ** 2, -1)
  return -0.5 * d2 / var[..., 0] - jnp.log(var[..., 0]) + jnp.log(jnp.asarray(WEIGHTS, x.dtype))


def _cond_means(x, t):
  a, s = _alpha_sigma(t)
  a, s = a[:, None, None], s[:, None, None]
  mu = jnp.asarray(MEANS, x.dtype)[None]
  return mu + a * S2 / (a**2 * S2 + s**2) * (x[:, None] - a * mu)  # (B, K, D)


def gmm_denoise(x, t, cond):
  """Exact E[x0 | x_t, y]; label -1 is the unconditional model."""
  per_class = _cond_means(x, t)
  post = jax.nn.softmax(_class_loglik(x, t), axis=-1)
  uncond = jnp.einsum("bk,bkd->bd", post, per_class)
  cond_pred = jnp.take_along_axis(per_class, jnp.maximum(cond, 0)[:, None, None], axis=1)[:, 0]
  return jnp.where((cond >= 0)[:, None], cond_pred, uncond)


def class_logits(x, t):
  """Exact log p(y | x_t) up to a constant (noise-aware classifier)."""
  return _class_loglik(x, t)


def grid():
  return jnp.linspace(0.995, 0.02, NUM_STEPS + 1)


def ddim(denoise, rule, x_T, cond, ts):
  """Deterministic DDIM driven by a guidance rule; returns (x_0, total nfe per sample)."""
  n = ts.shape[0] - 1

  def body(carry, i):
    x, state, nfe = carry
    a, s = _alpha_sigma(ts[i])
    a_n, s_n = _alpha_sigma(ts[i + 1])
    ctx = StepContext(ts[i], a, s, i, jnp.int32(n), jax.random.key(0))
    pred, state, k = rule.apply(denoise, x, cond, ctx, state)
    eps = (x - a * pred.x0_renoise) / s
    return (a_n * pred.x0 + s_n * eps, state, nfe + k), None

  init = (x_T, rule.init(x_T, cond), jnp.int32(0))
  (x, _, nfe), _ = jax.lax.scan(body, init, jnp.arange(n, dtype=jnp.int32))
  return x, nfe


class _Plain:
  """A 'rule' that evaluates the network once with a fixed condition (the references)."""

  @staticmethod
  def of(fixed_cond=None):
    def apply(denoise, x, cond, ctx, state):
      c = cond if fixed_cond is None else jnp.full_like(cond, fixed_cond)
      return Prediction.of(denoise(x, jnp.full((x.shape[0],), ctx.t), c)), state, jnp.int32(1)

    from jaxdiff import GuidanceRule

    return GuidanceRule(lambda x, c: (), apply)


@pytest.fixture(scope="module")
def batch():
  with jax.enable_x64(True):
    x_T = jax.random.normal(jax.random.key(0), (B, 2), jnp.float64)
    cond = jnp.arange(B, dtype=jnp.int32) % 3
  return x_T, cond


def run(rule, batch, denoise=gmm_denoise):
  x_T, cond = batch
  return ddim(denoise, rule, x_T, cond, grid().astype(x_T.dtype))


@pytest.fixture(scope="module")
def refs(batch):
  with jax.enable_x64(True):
    cond_traj, _ = run(_Plain.of(), batch)
    uncond_traj, _ = run(_Plain.of(-1), batch)
  return cond_traj, uncond_traj


def _fixed(xc, xu):
  """A denoiser returning fixed conditional / unconditional predictions (batched call)."""
  xc, xu = jnp.asarray(xc), jnp.asarray(xu)

  def den(x, t, c):
    n = x.shape[0] // xc.shape[0]
    mask = (c >= 0).reshape((-1,) + (1,) * (xc.ndim - 1))
    return jnp.where(mask, jnp.concatenate([xc] * n), jnp.concatenate([xu] * n))

  return den


def _step(rule, den, x, cond, ctx, state=()):
  """One jitted rule application (one compile instead of many eager op dispatches)."""
  return jax.jit(lambda x, state: rule.apply(den, x, cond, ctx, state))(x, state)


def _ctx(t=0.5, step=0, num_steps=NUM_STEPS):
  a, s = _alpha_sigma(jnp.asarray(t))
  return StepContext(jnp.asarray(t), a, s, jnp.int32(step), jnp.int32(num_steps), None)


# ----------------------------------------------------------------------------------------
# Scale 0 / scale 1 reductions on the exact mixture.


@pytest.mark.parametrize(
  "make",
  [
    lambda w: guidance.cfg(w),
    lambda w: guidance.cfg(w, rescale=0.0),
    lambda w: guidance.apg(w, eta=1.0),
    lambda w: guidance.adaptive(w, threshold=1.5),
    lambda w: guidance.pag(0.0, cfg_scale=w),
  ],
  ids=["cfg", "cfg-rescale0", "apg-eta1", "adaptive", "pag-s0"],
)
def test_scale0_is_unconditional_and_scale1_is_conditional(x64, make, batch, refs):
  cond_traj, uncond_traj = refs

  def den(x, t, c, *, perturb=None):
    # The mixture has no attention: perturbing here shrinks the prediction, so the flag
    # provably reaches the output, but pag_scale = 0 must make it irrelevant.
    out = gmm_denoise(x, t, c)
    return out if perturb is None else jnp.where(perturb[:, None], 0.5 * out, out)

  x0, _ = run(make(0.0), batch, den)
  np.testing.assert_allclose(x0, uncond_traj, rtol=1e-10, atol=1e-10)
  x1, _ = run(make(1.0), batch, den)
  np.testing.assert_allclose(x1, cond_traj, rtol=1e-10, atol=1e-10)


def test_scale0_and_scale1_for_autoguidance_rcfg_and_classifier(x64, batch, refs):
  cond_traj, uncond_traj = refs
  weak = lambda x, t, c: gmm_denoise(x, t, jnp.full_like(c, -1))
  np.testing.assert_allclose(run(guidance.autoguidance(weak, 1.0), batch)[0], cond_traj)
  np.testing.assert_allclose(run(guidance.autoguidance(weak, 0.0), batch)[0], uncond_traj)
  ref = jnp.zeros((B, 2))
  np.testing.assert_allclose(run(guidance.rcfg(1.0, reference=ref), batch)[0], cond_traj)
  np.testing.assert_allclose(
    run(guidance.classifier(class_logits, 3, 0.0, input="noisy"), batch)[0], uncond_traj
  )


# ----------------------------------------------------------------------------------------
# CFG and rescale.


def test_cfg_rescale_matches_numpy_transcription_of_lin_et_al(x64):
  rng = np.random.default_rng(0)
  xc, xu = rng.normal(size=(2, 4, 3, 5))
  w, phi = 7.5, 0.7
  den = _fixed(xc, xu)
  pred, _, nfe = _step(
    guidance.cfg(w, rescale=phi), den, jnp.zeros((4, 3, 5)), jnp.zeros(4, jnp.int32), _ctx()
  )
  x_cfg = xu + w * (xc - xu)
  factor = xc.std(axis=(1, 2), keepdims=True) / x_cfg.std(axis=(1, 2), keepdims=True)
  want = phi * x_cfg * factor + (1 - phi) * x_cfg
  np.testing.assert_allclose(pred.x0, want, rtol=1e-12)
  np.testing.assert_array_equal(pred.x0, pred.x0_renoise)
  assert int(nfe) == 2


def test_cfg_batches_both_evaluations_into_one_call():
  calls = []

  def den(x, t, c):
    calls.append(x.shape[0])
    return x

  guidance.cfg(2.0).apply(den, jnp.ones((3, 2)), jnp.array([0, 1, 2]), _ctx(), ())
  assert calls == [6]


def test_null_cond_accepts_array_and_callable():
  seen = []

  def den(x, t, c):
    seen.append(np.asarray(c["y"]))
    return x

  cond = {"y": jnp.array([0, 1])}
  guidance.cfg(2.0, null_cond=lambda c: {"y": jnp.full_like(c["y"], 9)}).apply(
    den, jnp.ones((2, 1)), cond, _ctx(), ()
  )
  np.testing.assert_array_equal(seen[-1], [0, 1, 9, 9])
  guidance.cfg(2.0, null_cond=7).apply(den, jnp.ones((2, 1)), cond, _ctx(), ())
  np.testing.assert_array_equal(seen[-1], [0, 1, 7, 7])


# ----------------------------------------------------------------------------------------
# APG.


def test_apg_with_eta1_no_threshold_no_momentum_equals_cfg(x64, batch):
  for w in (3.0, 12.0):
    np.testing.assert_allclose(
      run(guidance.apg(w, eta=1.0), batch)[0], run(guidance.cfg(w), batch)[0], rtol=1e-10
    )


def _apg_numpy(xcs, xus, w, eta, r, beta):
  """Sadat et al. Algorithm 1, transcribed per sample in NumPy (float64)."""
  out, running = [], np.zeros_like(xcs[0])
  for xc, xu in zip(xcs, xus):
    running = (xc - xu) + beta * running
    diff = running.copy()
    for b in range(diff.shape[0]):
      n = np.linalg.norm(diff[b])
      diff[b] *= min(1.0, r / n)
    res = np.empty_like(diff)
    for b in range(diff.shape[0]):
      v1 = xc[b] / np.linalg.norm(xc[b])
      par = np.sum(diff[b] * v1) * v1
      res[b] = xc[b] + (w - 1) * ((diff[b] - par) + eta * par)
    out.append(res)
  return out


def test_apg_matches_numpy_algorithm_with_momentum_and_threshold(x64):
  rng = np.random.default_rng(1)
  xcs, xus = rng.normal(size=(2, 4, 3, 6))
  w, eta, r, beta = 6.0, 0.2, 1.5, -0.5
  rule = guidance.apg(w, eta=eta, norm_threshold=r, momentum=beta)
  state = rule.init(jnp.zeros((3, 6)), None)
  want = _apg_numpy(xcs, xus, w, eta, r, beta)
  for i in range(4):
    den = _fixed(xcs[i], xus[i])
    pred, state, _ = _step(rule, den, jnp.zeros((3, 6)), jnp.zeros(3, jnp.int32), _ctx(), state)
    np.testing.assert_allclose(pred.x0, want[i], rtol=1e-10)


def test_apg_zero_conditional_prediction_does_not_produce_nan():
  den = lambda x, t, c: jnp.where((c >= 0)[:, None], 0.0, 1.0) * x
  rule = guidance.apg(5.0, norm_threshold=1.0, momentum=-0.5)
  x = jnp.ones((2, 3))
  pred, _, _ = _step(rule, den, x, jnp.zeros(2, jnp.int32), _ctx(), rule.init(x, None))
  assert np.isfinite(pred.x0).all()


# ----------------------------------------------------------------------------------------
# CFG++.


def test_cfgpp_lambda0_is_unconditional_ddim(x64, batch, refs):
  np.testing.assert_allclose(run(guidance.cfgpp(0.0), batch)[0], refs[1], rtol=1e-10, atol=1e-10)


def test_cfgpp_renoises_with_the_unconditional_prediction(x64):
  x = jax.random.normal(jax.random.key(3), (4, 2), jnp.float64)
  cond = jnp.array([0, 1, 2, 0])
  ctx = _ctx(0.6)
  pred, _, _ = _step(guidance.cfgpp(0.6), gmm_denoise, x, cond, ctx)
  t = jnp.full((4,), 0.6)
  x_c, x_u = gmm_denoise(x, t, cond), gmm_denoise(x, t, -jnp.ones_like(cond))
  np.testing.assert_allclose(pred.x0, x_u + 0.6 * (x_c - x_u), rtol=1e-12)
  np.testing.assert_allclose(pred.x0_renoise, x_u, rtol=1e-12)


# ----------------------------------------------------------------------------------------
# Adaptive Guidance and LinearAG: NFE counted for real.


def _counting(denoise):
  """Wraps a denoiser with a host callback that records how many rows each call evaluates."""
  rows = []

  def den(x, t, c):
    jax.debug.callback(lambda n: rows.append(int(n)), jnp.int32(x.shape[0]))
    return denoise(x, t, c)

  return den, rows


def test_adaptive_with_unreachable_threshold_equals_cfg(x64, batch):
  x_ag, nfe = run(guidance.adaptive(4.0, threshold=1.01), batch)
  np.testing.assert_allclose(x_ag, run(guidance.cfg(4.0), batch)[0], rtol=1e-12)
  assert int(nfe) == 2 * NUM_STEPS


def test_adaptive_low_threshold_makes_exactly_the_counted_evaluations(x64, batch):
  den, rows = _counting(gmm_denoise)
  x_T, cond = batch
  fn = jax.jit(lambda x, c: ddim(den, guidance.adaptive(4.0, threshold=0.9), x, c, grid()))
  x, nfe = fn(x_T, cond)
  jax.effects_barrier()
  assert sum(rows) == B * int(nfe)  # the network really evaluated nfe rows per sample
  assert NUM_STEPS < int(nfe) < 2 * NUM_STEPS  # it switched, and not at the first step
  assert rows.count(B) == 2 * NUM_STEPS - int(nfe)  # one-call steps used the B-row branch
  assert np.isfinite(x).all()


def test_fit_linear_ag_recovers_exact_coefficients(x64):
  rng = np.random.default_rng(2)
  c = rng.normal(size=(5, 3, 4))
  u = np.zeros_like(c)
  u[0] = rng.normal(size=(3, 4))
  true = rng.normal(size=(5, 3))
  for i in range(1, 5):
    u[i] = true[i, 0] * c[i] + true[i, 1] * c[i - 1] + true[i, 2] * u[i - 1]
  got = guidance.fit_linear_ag(jnp.asarray(c), jnp.asarray(u))
  np.testing.assert_allclose(got[1:], true[1:], rtol=1e-8)
  np.testing.assert_array_equal(got[0], 0)


def test_linear_ag_without_estimates_is_cfg_and_estimates_save_calls(x64, batch):
  coef = jnp.zeros((NUM_STEPS, 3))
  none = jnp.zeros((NUM_STEPS,), bool)
  x_lin, nfe = run(guidance.linear_ag(3.0, coef, none), batch)
  np.testing.assert_allclose(x_lin, run(guidance.cfg(3.0), batch)[0], rtol=1e-12)
  assert int(nfe) == 2 * NUM_STEPS
  mask = jnp.arange(NUM_STEPS) % 2 == 1
  den, rows = _counting(gmm_denoise)
  coef = coef.at[:, 2].set(1.0)
  x, nfe = run(guidance.linear_ag(3.0, coef, mask), batch, den)
  jax.effects_barrier()
  assert int(nfe) == 2 * NUM_STEPS - NUM_STEPS // 2 and sum(rows) == B * int(nfe)


# ----------------------------------------------------------------------------------------
# PAG.


def _pag_denoiser(x, t, c, *, perturb=None):
  out = gmm_denoise(x, t, c)
  return out if perturb is None else jnp.where(perturb[:, None], 0.5 * out, out)


def test_pag_combines_perturbed_and_cfg_terms_in_one_call(x64):
  rows = []

  def den(x, t, c, *, perturb=None):
    if not isinstance(perturb, jax.core.Tracer):  # skip the trace-time flag check's probe
      rows.append((x.shape[0], np.asarray(perturb).tolist()))
    return _pag_denoiser(x, t, c, perturb=perturb)

  x = jax.random.normal(jax.random.key(4), (2, 2), jnp.float64)
  cond = jnp.array([0, 2])
  pred, _, nfe = guidance.pag(3.0, cfg_scale=2.5).apply(den, x, cond, _ctx(0.4), ())
  t = jnp.full((2,), 0.4)
  x_c, x_u = gmm_denoise(x, t, cond), gmm_denoise(x, t, -jnp.ones_like(cond))
  want = x_c + 3.0 * (x_c - 0.5 * x_c) + 1.5 * (x_c - x_u)
  np.testing.assert_allclose(pred.x0, want, rtol=1e-12)
  assert int(nfe) == 3
  assert rows[-1] == (6, [False, False, True, True, False, False])
  _, _, nfe = guidance.pag(3.0).apply(den, x, cond, _ctx(0.4), ())
  assert int(nfe) == 2 and rows[-1][0] == 4


def test_pag_with_the_nnx_attention_block(x64):
  from flax import nnx

  attn = guidance.SelfAttention(4, 2, rngs=nnx.Rngs(0))

  def den(x, t, c, *, perturb=None):
    h = x.reshape(x.shape[0], 2, 4)
    return (h + attn(h, perturb=perturb)).reshape(x.shape)

  x = jax.random.normal(jax.random.key(5), (3, 8))
  pred = jax.jit(
    lambda x: guidance.pag(2.0).apply(den, x, jnp.zeros(3, jnp.int32), _ctx(), ())[0].x0
  )(x)
  t = jnp.zeros(3)
  x_c = den(x, t, None)
  x_p = den(x, t, None, perturb=jnp.ones(3, bool))
  np.testing.assert_allclose(pred, x_c + 2.0 * (x_c - x_p), rtol=1e-5, atol=1e-5)


def test_pag_rejects_denoisers_that_ignore_or_do_not_accept_the_flag():
  x, cond = jnp.ones((2, 2)), jnp.array([0, 1])
  with pytest.raises(TypeError, match="does not accept the keyword argument `perturb`"):
    guidance.pag(2.0).apply(lambda x, t, c: x, x, cond, _ctx(), ())

  def ignores(x, t, c, *, perturb=None):
    _ = jnp.where(perturb, 1.0, 0.0).sum()  # computed, but never reaches the output
    return 2.0 * x

  with pytest.raises(ValueError, match="does not depend on `perturb`"):
    guidance.pag(2.0).apply(ignores, x, cond, _ctx(), ())
  with pytest.raises(ValueError, match="does not depend on `perturb`"):
    jax.jit(lambda x: guidance.pag(2.0).apply(ignores, x, cond, _ctx(), ())[0].x0)(x)


# ----------------------------------------------------------------------------------------
# Classifier guidance (classic and EluCD) and GFCG.


def test_classic_classifier_guidance_with_exact_posterior_is_the_conditional_model(
  x64, batch, refs
):
  rule = guidance.classifier(class_logits, 3, 1.0, input="noisy")
  np.testing.assert_allclose(run(rule, batch)[0], refs[0], rtol=1e-7, atol=1e-7)


def test_classifier_guidance_shifts_mass_toward_the_class_as_the_posterior_predicts(x64):
  # Guided by the exact posterior p(y|x_t), scale s interpolates the class-0 mass from the
  # prior pi_0 (s = 0) to the class-conditional law (s = 1), where the exact posterior
  # p(0 | x) of the final samples is ~1; the fraction nearest to mean 0 must track it.
  n = 400
  x_T = jax.random.normal(jax.random.key(6), (n, 2), jnp.float64)
  cond = jnp.zeros((n,), jnp.int32)
  f = jax.jit(
    lambda s: ddim(
      gmm_denoise, guidance.classifier(class_logits, 3, s, input="noisy"), x_T, cond, grid()
    )[0]
  )
  frac, post = [], []
  for s in (0.0, 0.5, 1.0):
    x = f(s)
    d = jnp.sum((x[:, None] - MEANS[None]) ** 2, -1)
    frac.append(float(jnp.mean(jnp.argmin(d, -1) == 0)))
    p = jax.nn.softmax(class_logits(x, jnp.full((n,), 1e-3)), -1)[:, 0]
    post.append(float(jnp.mean(p)))
  assert abs(frac[0] - WEIGHTS[0]) < 3 * np.sqrt(WEIGHTS[0] * (1 - WEIGHTS[0]) / n)
  assert frac[0] < frac[1] < frac[2]
  assert post[2] > 0.98 and abs(frac[2] - post[2]) < 0.02
  np.testing.assert_allclose(frac, post, atol=0.03)


def test_elucd_direction_matches_numpy_temperatures(x64):
  rng = np.random.default_rng(3)
  w = rng.normal(size=(2, 4))
  clf = lambda z: z @ jnp.asarray(w)
  x0 = rng.normal(size=(3, 2))
  den = lambda x, t, c: jnp.asarray(x0)
  cond = jnp.array([0, 3, 1])
  tau1, tau2, kappa, s = 1.5, 0.5, 0.3, 2.0
  rule = guidance.classifier(
    clf, 4, s, joint_temperature=tau1, marginal_temperature=tau2, schedule_amplitude=kappa
  )
  ctx = _ctx(0.5, step=3, num_steps=10)
  pred, _, nfe = _step(rule, den, jnp.zeros((3, 2)), cond, ctx)
  logits = x0 @ w
  p2 = np.exp(tau2 * logits) / np.exp(tau2 * logits).sum(1, keepdims=True)
  g = tau1 * w[:, np.asarray(cond)].T - tau2 * p2 @ w.T
  a, sg = np.cos(np.pi / 4), np.sin(np.pi / 4)
  coef = s * sg**2 / a * (1 + kappa * np.sin(np.pi * (10 - 1 - 3) / 10))
  np.testing.assert_allclose(pred.x0, x0 + coef * g, rtol=1e-10)
  assert int(nfe) == 1


def test_gfcg_picks_most_confused_class_and_adaptive_scale(x64):
  rng = np.random.default_rng(4)
  w = rng.normal(size=(2, 4))
  clf = lambda z: 3.0 * z @ jnp.asarray(w)
  x = jax.random.normal(jax.random.key(7), (5, 2), jnp.float64)
  cond = jnp.array([0, 1, 2, 3, 0])

  def den(x, t, c):
    return x * (1.0 + 0.1 * c[:, None]) + 0.05 * c[:, None]

  weak = lambda x, t, c: 0.9 * den(x, t, c)
  rule = guidance.gfcg(clf, 4, 2.0, cfg_scale=1.5, weak_denoise=weak)
  pred, _, nfe = _step(rule, den, x, cond, _ctx())
  t = jnp.zeros(5)
  x_c = np.asarray(den(x, t, cond))
  p = np.exp(3.0 * x_c @ w)
  p /= p.sum(1, keepdims=True)
  want = np.empty_like(x_c)
  for b in range(5):
    y = int(cond[b])
    ref = max((k for k in range(4) if k != y), key=lambda k: p[b, k])
    s = 2.0 * p[b, ref] / (p[b, y] + p[b, ref])
    x_r = np.asarray(den(x[b : b + 1], t[:1], jnp.array([ref])))[0]
    want[b] = x_c[b] + s * (x_c[b] - x_r) + 0.5 * (x_c[b] - 0.9 * x_c[b])
  np.testing.assert_allclose(pred.x0, want, rtol=1e-10)
  assert int(nfe) == 3


# ----------------------------------------------------------------------------------------
# RCFG.


def test_rcfg_onetime_uses_one_negative_call_then_a_fixed_reference(x64, batch):
  den, rows = _counting(gmm_denoise)
  x, nfe = run(guidance.rcfg(2.0, variant="onetime"), batch, den)
  jax.effects_barrier()
  assert int(nfe) == NUM_STEPS + 1 and rows == [2 * B] + [B] * (NUM_STEPS - 1)
  # Reference: negative x0 from step 0, then x_n = x_ref at every step.
  x_T, cond = batch
  ts = grid()
  x_ref = gmm_denoise(x_T, jnp.full((B,), ts[0]), -jnp.ones_like(cond))
  xx = x_T
  for i in range(NUM_STEPS):
    t = jnp.full((B,), ts[i])
    x_c = gmm_denoise(xx, t, cond)
    x0 = x_ref + 2.0 * (x_c - x_ref)
    a, s = _alpha_sigma(ts[i])
    a_n, s_n = _alpha_sigma(ts[i + 1])
    xx = a_n * x0 + s_n * (xx - a * x0) / s
  np.testing.assert_allclose(x, xx, rtol=1e-10)


def test_rcfg_self_negative_virtual_noise_matches_streamdiffusion_equation(x64):
  x = jax.random.normal(jax.random.key(8), (2, 3), jnp.float64)
  ref = jax.random.normal(jax.random.key(9), (2, 3), jnp.float64)
  ctx = _ctx(0.7)
  a, s = float(ctx.alpha), float(ctx.sigma)
  den = lambda x, t, c: 0.3 * x
  delta, gamma = 0.8, 1.7
  rule = guidance.rcfg(gamma, reference=ref, delta=delta)
  pred, _, nfe = _step(rule, den, x, jnp.array([0, 1]), ctx, rule.init(x, None))
  eps_c = (x - a * 0.3 * x) / s
  eps_n = delta * (x - a * ref) / s  # Kodaira et al. Eq. 8 with the code's delta
  eps = eps_n + gamma * (eps_c - eps_n)
  np.testing.assert_allclose(pred.x0, (x - s * eps) / a, rtol=1e-10)
  assert int(nfe) == 1


# ----------------------------------------------------------------------------------------
# Robustness, transformations, state.

ALL_RULES = {
  "cfg": lambda: guidance.cfg(50.0, rescale=0.7),
  "apg": lambda: guidance.apg(50.0, norm_threshold=1.0, momentum=-0.5),
  "cfgpp": lambda: guidance.cfgpp(1.0),
  "adaptive": lambda: guidance.adaptive(50.0, 0.99),
  "pag": lambda: guidance.pag(50.0, cfg_scale=50.0),
  "autoguidance": lambda: guidance.autoguidance(lambda x, t, c: 0.8 * gmm_denoise(x, t, c), 50.0),
  "gfcg": lambda: guidance.gfcg(lambda z: class_logits(z, jnp.zeros(z.shape[0])), 3, 50.0),
  "classifier": lambda: guidance.classifier(class_logits, 3, 50.0, input="noisy"),
  "elucd": lambda: guidance.classifier(
    lambda z: class_logits(z, jnp.zeros(z.shape[0])), 3, 50.0, schedule_amplitude=0.3
  ),
  "rcfg": lambda: guidance.rcfg(50.0, variant="onetime"),
}


@pytest.mark.parametrize("name", sorted(ALL_RULES))
def test_no_nan_or_inf_at_scale_50(name, batch):
  x_T, cond = batch
  x, nfe = ddim(_pag_denoiser, ALL_RULES[name](), x_T.astype(jnp.float32), cond, grid())
  assert x.dtype == jnp.float32
  assert np.isfinite(np.asarray(x)).all(), name
  assert int(nfe) >= NUM_STEPS


def test_jit_compiles_once_and_state_resets_per_call(batch):
  x_T, cond = batch
  x_T = x_T.astype(jnp.float32)
  traces = []

  @jax.jit
  def sample(x, c):
    traces.append(None)
    return ddim(gmm_denoise, guidance.apg(8.0, norm_threshold=2.0, momentum=-0.5), x, c, grid())[0]

  a = sample(x_T, cond)
  b = sample(x_T, cond)
  np.testing.assert_array_equal(a, b)  # momentum did not leak from the first call
  assert len(traces) == 1


def test_vmap_over_independent_batches_matches_loop(batch):
  x_T, cond = batch
  xs = jnp.stack([x_T[:8], x_T[8:]]).astype(jnp.float32)
  cs = jnp.stack([cond[:8], cond[8:]])
  f = lambda x, c: ddim(gmm_denoise, guidance.apg(4.0, momentum=-0.3), x, c, grid())[0]
  got = jax.vmap(f)(xs, cs)
  for i in range(2):
    np.testing.assert_allclose(got[i], f(xs[i], cs[i]), rtol=1e-5, atol=1e-5)


def test_sharded_batch_gives_the_same_samples(mesh8, batch):
  from jax.sharding import NamedSharding, PartitionSpec

  x_T, cond = batch
  x_T = x_T.astype(jnp.float32)
  f = jax.jit(lambda x, c: ddim(gmm_denoise, guidance.adaptive(4.0, 0.95), x, c, grid()))
  sharded = NamedSharding(mesh8, PartitionSpec("d"))
  xs, ns = f(jax.device_put(x_T, sharded), jax.device_put(cond, sharded))
  x, n = f(x_T, cond)
  np.testing.assert_allclose(xs, x, rtol=1e-5, atol=1e-5)
  assert int(ns) == int(n)


# ----------------------------------------------------------------------------------------
# Bad input.


def test_bad_hyperparameters_raise_clear_errors():
  with pytest.raises(ValueError, match=r"cfgpp: scale \(lambda\) must be in \[0, 1\]"):
    guidance.cfgpp(-0.1)
  with pytest.raises(ValueError, match="in \\[0, 1\\]"):
    guidance.cfgpp(1.5)
  with pytest.raises(ValueError, match="reverse momentum"):
    guidance.apg(5.0, momentum=0.5)
  with pytest.raises(ValueError, match="norm_threshold"):
    guidance.apg(5.0, norm_threshold=0.0)
  with pytest.raises(ValueError, match="rescale"):
    guidance.cfg(5.0, rescale=1.5)
  with pytest.raises(ValueError, match="needs `reference`"):
    guidance.rcfg(2.0)
  with pytest.raises(ValueError, match="step 0 cannot be estimated"):
    guidance.linear_ag(2.0, jnp.zeros((3, 3)), jnp.array([True, False, False]))
  with pytest.raises(ValueError, match="needs a conditional batch"):
    guidance.cfg(2.0).apply(lambda x, t, c: x, jnp.ones((2, 1)), None, _ctx(), ())


def test_classifier_output_shape_mismatch_raises_at_trace_time():
  x, cond = jnp.ones((2, 2)), jnp.array([0, 1])
  bad = lambda z: jnp.zeros((z.shape[0], 5))
  for rule in (guidance.classifier(bad, 3, 1.0), guidance.gfcg(bad, 3, 1.0)):
    with pytest.raises(ValueError, match=r"logits of shape \(B, num_classes\) = \(2, 3\)"):
      jax.jit(lambda x: rule.apply(lambda x, t, c: x, x, cond, _ctx(), ())[0].x0)(x)
  with pytest.raises(TypeError, match="integer label array"):
    guidance.classifier(bad, 3, 1.0).apply(lambda x, t, c: x, x, None, _ctx(), ())
