"""RL fine-tuning of the sampler (B²-DiffuRL) and of its starting noise (FIND).

Transcriptions (float64) of the official code's equations: the DDIM step's Gaussian
log-probability (``diffusion/ddim_with_logprob.py`` of B²-DiffuRL), the stage schedule
(``run_process.sh``), the reward normalisation and branch selection (``run_select.py``),
the clipped loss (``run_train.py``), and FIND's policy update (``dist_train2.py``) over
ten iterations. Unbiasedness of the policy-gradient estimators against closed-form
Gaussian integrals, and on the exact Gaussian-mixture testbed against the pathwise
gradient through the frozen sampler.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import Prediction, schedules, solvers, timesteps, timesteps_from
from jaxdiff import finetune as ft
from jaxdiff.testing import GaussianMixture


def _grid(n=5):
  return timesteps(schedules.vp_cosine(), n)


# ------------------------------------------------------------------ per-step log-probability


def _official_ddim_logprob(abar_t, abar_prev, x, x0, x_prev, eta):
  """Transcription of ``ddim_step_with_logprob`` (prediction_type="sample", no clipping)."""
  beta_t = 1 - abar_t
  eps = (x - abar_t**0.5 * x0) / beta_t**0.5
  variance = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)
  std = eta * variance**0.5
  mean = abar_prev**0.5 * x0 + (1 - abar_prev - std**2) ** 0.5 * eps
  lp = -((x_prev - mean) ** 2) / (2 * std**2) - np.log(std) - np.log(np.sqrt(2 * np.pi))
  return mean, std, lp.reshape(lp.shape[0], -1).mean(axis=1)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_step_log_prob_matches_the_official_ddim_transcription(x64, eta):
  g = _grid(6)
  rng = np.random.default_rng(0)
  x, x0, xp = (rng.normal(size=(3, 2, 2)) for _ in range(3))
  for i in range(6):
    abar_t, abar_prev = float(g.alpha[i]) ** 2, float(g.alpha[i + 1]) ** 2
    assert abs(abar_t + float(g.sigma[i]) ** 2 - 1) < 1e-12  # VP: 1 - abar = sigma^2
    m_ref, s_ref, lp_ref = _official_ddim_logprob(abar_t, abar_prev, x, x0, xp, eta)
    mean, std = ft.ddim_transition(g, jnp.asarray(x), i, jnp.asarray(x0), eta=eta)
    np.testing.assert_allclose(mean, m_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(std, s_ref, rtol=1e-10)
    lp = ft.gaussian_log_prob(jnp.asarray(xp), mean, std, reduction="mean")
    np.testing.assert_allclose(lp, lp_ref, rtol=1e-10)
    lps = ft.gaussian_log_prob(jnp.asarray(xp), mean, std)  # the density: sum, not mean
    np.testing.assert_allclose(lps, 4 * lp_ref, rtol=1e-10)


@pytest.mark.parametrize("eta", [1.0, 0.3])
def test_transition_is_the_step_the_library_ddim_solver_takes(x64, eta):
  g = _grid(4)
  x = jax.random.normal(jax.random.key(0), (3, 2))
  x0 = 0.7 * x
  solver = solvers.ddim(eta=eta)
  state = solver.init(x, g)
  for i in range(4):
    key = jax.random.key(i)
    x_next, _ = solver.step(state, x, i, Prediction(x0, x0), key)
    mean, std = ft.ddim_transition(g, x, i, x0, eta=eta)
    np.testing.assert_array_equal(x_next, mean + std * jax.random.normal(key, x.shape, x.dtype))


def test_recorded_log_probs_are_recomputed_by_the_same_denoiser(x64):
  g = _grid(5)
  f = lambda x, t, c: 0.5 * x
  r = ft.stochastic_rollout(f, g, jnp.ones((4, 3)), key=1)
  np.testing.assert_allclose(ft.trajectory_log_probs(f, g, r.states), r.log_probs, rtol=1e-12)
  other = ft.trajectory_log_probs(lambda x, t, c: 0.4 * x, g, r.states)
  assert float(jnp.max(jnp.abs(other - r.log_probs))) > 1e-3
  # under jit with the grid closed over (a concrete grid indexed inside a trace)
  jitted = jax.jit(lambda x: ft.stochastic_rollout(f, g, x, key=1))(jnp.ones((4, 3)))
  np.testing.assert_allclose(jitted.states, r.states, rtol=1e-12)
  # a continuation from grid point 2 with the same key draws what the full run drew
  tail = ft.stochastic_rollout(f, g, r.states[:, 2], key=1, start=2)
  np.testing.assert_allclose(tail.states, r.states[:, 2:], rtol=1e-12)


# ------------------------------------------------------------------ unbiased estimators


def test_sampler_policy_gradient_is_unbiased_against_the_closed_form(x64):
  # Linear denoiser x0 = theta x: the chain is linear-Gaussian, E[x_N] = prod_i c_i(theta) x_T,
  # so for r = w . x_N the exact gradient of E[r] is known; the likelihood-ratio estimator
  # (the gradient of B2-DiffuRL's loss at ratio 1, advantage r) must match it.
  g = timesteps_from(schedules.vp_cosine(), jnp.array([0.9, 0.7, 0.5, 0.35]))
  theta = 0.6
  w = jnp.array([1.0, -2.0])
  x_T = jnp.array([1.5, 0.5])
  m = 40_000
  x = jnp.broadcast_to(x_T, (m, 2))

  def expected_reward(th):
    c = 1.0
    for i in range(3):
      q = -jnp.expm1(2 * (g.lam[i] - g.lam[i + 1]))
      keep = g.sigma[i + 1] * jnp.sqrt(1 - q)
      c = c * (g.alpha[i + 1] * th + keep * (1 - g.alpha[i] * th) / g.sigma[i])
    return jnp.dot(w, c * x_T)

  exact = float(jax.grad(expected_reward)(theta))
  r = ft.stochastic_rollout(lambda x, t, c: theta * x, g, x, key=3)
  rewards = r.states[:, -1] @ w
  np.testing.assert_allclose(rewards.mean(), expected_reward(theta), atol=0.05)

  def log_probs(th):
    return ft.trajectory_log_probs(lambda x, t, c: th * x, g, r.states)

  scores = jax.jacfwd(lambda th: log_probs(th).sum(axis=1))(theta)  # (m,)
  per_sample = (rewards - expected_reward(theta)) * scores  # a constant baseline: unbiased
  est, se = float(per_sample.mean()), float(per_sample.std() / np.sqrt(m))
  assert se < 0.1 * abs(exact)
  assert abs(est - exact) < 4 * se, (est, exact, se)
  # the same number through the clipped loss (ratio 1: no clipping), one branch per row
  lp0 = log_probs(theta)[:, None]
  loss = lambda th: ft.b2diffurl_loss(
    log_probs(th)[:, None], lp0, rewards[:, None], jnp.ones((m, 1), bool)
  )
  np.testing.assert_allclose(
    -jax.grad(loss)(theta) * 3, float(jnp.mean(rewards * scores)), rtol=1e-9
  )


@pytest.mark.parametrize("variant", ["find", "ppo"])
def test_noise_policy_gradient_is_unbiased_against_the_closed_form(x64, variant):
  # Gaussian policy, quadratic reward r = -|x - a|^2: E[r] = -(|mu - a|^2 + sum sigma^2),
  # grad_mu = -2 (mu - a), grad_sigma = -2 sigma.
  mu, sd, a = jnp.array([0.3, -0.2, 1.0]), jnp.array([1.0, 0.5, 0.8]), jnp.array([1.0, 0.0, 0.5])
  p = ft.NoisePolicy(mu, sd)
  m = 30_000
  x = ft.find_sample(p, m, key=0)
  r = -jnp.sum((x - a) ** 2, axis=1)
  exact = (-2 * (mu - a), -2 * sd)
  baseline = -(jnp.sum((mu - a) ** 2) + jnp.sum(sd**2))
  ses = {}
  for name, b in (("raw", 0.0), ("calibrated", baseline)):
    adv, _ = ft.find_calibration(jnp.asarray(b), r)
    grad = jax.grad(lambda q: -ft.find_loss(q, p, x, adv, variant=variant, reduction="sum"))(p)
    # per-sample A d log p: analytic scores of the diagonal Gaussian
    per = (adv[:, None] * (x - mu) / sd**2, adv[:, None] * ((x - mu) ** 2 / sd**3 - 1 / sd))
    for got, ex, per_leaf in zip(grad, exact, per, strict=True):
      se = per_leaf.std(axis=0) / np.sqrt(m)
      np.testing.assert_allclose(got, per_leaf.mean(axis=0), rtol=1e-8, atol=1e-12)
      assert np.all(np.abs(got - ex) < 4 * se), (name, got, ex, se)
    ses[name] = float(per[0].std(axis=0).sum())
  assert ses["calibrated"] < 0.7 * ses["raw"]  # calibration is there to cut the variance


@pytest.mark.slow
def test_noise_policy_gradient_through_the_exact_sampler_matches_the_pathwise_one(x64):
  # FIND over a frozen DDIM sampler with the exact Gaussian-mixture denoiser; sparse-like
  # reward: the exact probability of class 0 at the sample. Likelihood-ratio and pathwise
  # (reparameterised, through the sampler) estimators estimate the same gradient.
  sched = schedules.vp_cosine()
  gmm = GaussianMixture(jnp.array([[-1.5, 0.0], [1.5, 0.5]]), 0.3)
  den = gmm.denoiser(sched)
  g = timesteps(sched, 4)
  t_end = g.t[-1]

  def sampler(x_T):
    x = x_T
    for i in range(4):
      x0 = den(x, jnp.full((x.shape[0],), g.t[i]), -1)
      x = g.alpha[i + 1] * x0 + g.sigma[i + 1] * (x - g.alpha[i] * x0) / g.sigma[i]
    return x

  reward = lambda x: gmm.class_posterior(x, t_end, sched)[:, 0]
  p = ft.NoisePolicy(jnp.array([0.2, 0.0]), jnp.array([0.8, 0.8]))
  m = 4_000
  z = jax.random.normal(jax.random.key(5), (m, 2))
  x_T = p.mean + p.std * z
  r = reward(sampler(x_T))
  adv, _ = ft.find_calibration(jnp.mean(r), r)
  per_lr = jax.vmap(
    lambda xi, ai: jax.grad(lambda q: ai * ft.gaussian_log_prob(xi[None], q.mean, q.std)[0])(p)
  )(x_T, adv)
  per_pw = jax.vmap(
    lambda zi: jax.grad(lambda q: reward(sampler((q.mean + q.std * zi)[None]))[0])(p)
  )(z)
  for lr_leaf, pw_leaf in zip(per_lr, per_pw, strict=True):
    diff = lr_leaf.mean(0) - pw_leaf.mean(0)
    se = np.sqrt(lr_leaf.var(0) / m + pw_leaf.var(0) / m)
    assert np.all(np.abs(diff) < 4 * se + 1e-3), (diff, se)
  assert float(jnp.abs(per_pw.mean.mean(0)[0])) > 10 * float(se[0])  # a real signal


# ------------------------------------------------------------------ B2-DiffuRL transcriptions


def test_progressive_windows_match_the_official_stage_script():
  stage_cnt, left, right = 100, 14, 20
  interval = right - left + 1
  ref = [left + (i * interval) // stage_cnt for i in range(stage_cnt)]  # bash $((...))
  assert ft.progressive_windows(stage_cnt, first=left, last=right) == tuple(ref)
  w = ft.progressive_windows(10, first=2, last=6)
  assert w == (2, 2, 3, 3, 4, 4, 5, 5, 6, 6)
  assert ft.progressive_windows(3, first=4, last=4) == (4, 4, 4)


def _official_select(rewards, history, pos, neg, clip, beta1, beta2):
  """Transcription of ``score_fn1`` (normalisation) + the selection loop + run_train's
  advantage (torch.std is unbiased)."""
  combine = np.concatenate([np.ravel(history), np.ravel(rewards)])
  mean, std = combine.mean(), combine.std(ddof=1)
  scores = (rewards - mean) / (std + 1e-8)
  adv = np.zeros_like(rewards)
  mask = np.zeros(rewards.shape, bool)
  for j, s in enumerate(scores):
    for p_n in range(2):
      if p_n == 0 and s[s.argmax()] >= pos:
        k = s.argmax()
      elif p_n == 1 and s[s.argmin()] < neg:
        k = s.argmin()
      else:
        continue
      mask[j, k] = True
      weight = beta1 if s[k] > 0 else beta2
      adv[j, k] = np.clip(s[k], -clip, clip) * weight
  return adv, mask, scores


def test_branch_advantages_match_the_official_selection(x64):
  rng = np.random.default_rng(1)
  history = rng.uniform(size=(3, 10))
  for trial in range(10):
    rewards = rng.uniform(size=(6, 4)) ** (1 + trial % 3)
    kw = dict(pos_threshold=0.5, neg_threshold=-0.4, advantage_clip=1.2)
    out = ft.branch_advantages(
      jnp.asarray(rewards), history=history, pos_weight=1.5, neg_weight=0.5, **kw
    )
    adv, mask, scores = _official_select(rewards, history, 0.5, -0.4, 1.2, 1.5, 0.5)
    np.testing.assert_allclose(out.scores, scores, rtol=1e-12)
    np.testing.assert_array_equal(out.mask, mask)
    np.testing.assert_allclose(out.advantages, adv, rtol=1e-12)
  assert mask.any() and not mask.all()


def test_b2diffurl_loss_matches_the_official_loss_and_its_clipping(x64):
  rng = np.random.default_rng(2)
  lp = rng.normal(scale=0.2, size=(4, 3, 5))
  old = rng.normal(scale=0.2, size=(4, 3, 5))
  adv = rng.normal(size=(4, 3))
  mask = rng.uniform(size=(4, 3)) < 0.5
  eps = 0.1
  ratio = np.exp(lp - old)
  a = adv[..., None]
  per = np.maximum(-a * ratio, -a * np.clip(ratio, 1 - eps, 1 + eps))
  ref = per[np.broadcast_to(mask[..., None], per.shape)].mean()
  # gradient in lp: -A ratio where the unclipped branch is the max, 0 where clipped
  unclipped = (-a * ratio) >= (-a * np.clip(ratio, 1 - eps, 1 + eps))
  gref = np.where(unclipped, -a * ratio, 0.0) * mask[..., None] / (mask.sum() * 5)
  f = lambda x: ft.b2diffurl_loss(x, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask))
  np.testing.assert_allclose(f(jnp.asarray(lp)), ref, rtol=1e-12)
  np.testing.assert_allclose(jax.grad(f)(jnp.asarray(lp)), gref, rtol=1e-10, atol=1e-15)
  clipped = ~unclipped & mask[..., None]
  assert clipped.any()  # the case the clip handles occurs


def test_branch_rollout_shares_the_prefix_and_branches_the_window(x64):
  g = _grid(6)
  f = lambda x, t, c: 0.6 * x
  r = ft.branch_rollout(f, g, jnp.ones((2, 3)), key=0, window=2, num_branches=3)
  assert r.start == 4 and r.states.shape == (2, 3, 3, 3)
  np.testing.assert_array_equal(r.states[:, 0, 0], r.states[:, 1, 0])  # shared branch point
  assert float(jnp.min(jnp.abs(r.states[:, 0, -1] - r.states[:, 1, -1]))) > 0
  flat = r.states.reshape((6,) + r.states.shape[2:])
  lp = ft.trajectory_log_probs(f, g, flat, start=4, reduction="mean")
  np.testing.assert_allclose(lp.reshape(2, 3, 2), r.log_probs, rtol=1e-12)
  # the prefix is the sampler's own run from x_T (same key stream as a plain rollout)
  pre = ft.stochastic_rollout(
    f, g, jnp.ones((2, 3)), key=jax.random.fold_in(jax.random.key(0), 0), stop=4
  )
  np.testing.assert_allclose(pre.states[:, -1], r.states[:, 0, 0], rtol=1e-12)


# ------------------------------------------------------------------ FIND transcription


def _official_find_step(mean, std, x, adv, eps, w_r, w_kl):
  """Loss and gradient of ``_train_policy_func`` (old policy = the base N(0, I), per-entry
  mean log-density, plain clip), by hand."""
  d = mean.size
  logp = (-0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)).mean(1)
  old = (-0.5 * x**2 - 0.5 * np.log(2 * np.pi)).mean(1)
  ratio = np.exp(logp - old)
  inside = (ratio > 1 - eps) & (ratio < 1 + eps)
  c = np.clip(ratio, 1 - eps, 1 + eps)
  loss = -w_r * np.mean(adv * c) + w_kl * np.mean(mean**2 + (std - 1) ** 2)
  dlogp_dm = (x - mean) / std**2 / d
  dlogp_ds = ((x - mean) ** 2 / std**3 - 1 / std) / d
  coef = (-w_r * adv * ratio * inside / len(adv))[:, None]
  gm = (coef * dlogp_dm).sum(0) + w_kl * 2 * mean / d
  gs = (coef * dlogp_ds).sum(0) + w_kl * 2 * (std - 1) / d
  return loss, gm, gs


def test_find_update_matches_the_official_code_over_ten_iterations(x64):
  d, b, lr, lr_v, eps, w_r, w_kl = 4, 6, 0.5, 0.3, 0.2, 10.0, 0.01
  a = np.array([1.0, -0.5, 0.0, 0.5])
  base = ft.noise_policy((d,), dtype=jnp.float64)
  p = base
  mean, std, v_ref, v = np.zeros(d), np.ones(d), 0.0, jnp.asarray(0.0)
  rng = np.random.default_rng(3)
  clipped_seen = 0
  for _ in range(10):
    z = rng.normal(size=(b, d))
    x = mean + std * z
    r = -((x - a) ** 2).sum(1)
    # reference: value step (MSE, SGD), advantage with the value before its step, policy step
    adv_ref = r - v_ref
    loss_ref, gm, gs = _official_find_step(mean, std, x, adv_ref, eps, w_r, w_kl)
    v_ref = v_ref - lr_v * 2 * (v_ref - r).mean()
    mean, std = mean - lr * gm, np.maximum(std - lr * gs, 1e-4)
    # library
    xj = p.mean + p.std * jnp.asarray(z)
    np.testing.assert_allclose(xj, x, rtol=1e-12)
    adv, _ = ft.find_calibration(v, jnp.asarray(r))
    v = v - lr_v * jax.grad(lambda u: ft.find_calibration(u, jnp.asarray(r))[1])(v)
    loss, grad = jax.value_and_grad(
      lambda q: ft.find_loss(q, base, xj, adv, epsilon=eps, reward_weight=w_r, kl_weight=w_kl)
    )(p)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-10)
    p = ft.find_clamp(jax.tree.map(lambda u, gu: u - lr * gu, p, grad))
    np.testing.assert_allclose(p.mean, mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(p.std, std, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(v, v_ref, rtol=1e-12)
    logp = ft.gaussian_log_prob(xj, p.mean, p.std, reduction="mean")
    old = ft.gaussian_log_prob(xj, base.mean, base.std, reduction="mean")
    clipped_seen += int(jnp.sum(jnp.abs(jnp.exp(logp - old) - 1) > eps))
  assert clipped_seen > 0  # the runs reach the clip


def test_find_clip_zeroes_the_gradient_outside_the_band_for_either_sign(x64):
  base = ft.noise_policy((2,), dtype=jnp.float64)
  x = jnp.array([[2.0, 2.0], [-2.0, -2.0]])
  far = ft.NoisePolicy(jnp.array([1.5, 1.5]), jnp.ones(2))  # ratio >> 1 for row 0, << 1 row 1
  for sign in (1.0, -1.0):
    adv = jnp.array([sign, sign])
    gf = jax.grad(lambda q: ft.find_loss(q, base, x, adv, variant="find", reduction="sum"))(far)
    assert float(jnp.max(jnp.abs(gf.mean))) == 0.0  # plain clip: both rows outside, no push
    gp = jax.grad(lambda q: ft.find_loss(q, base, x, adv, variant="ppo", reduction="sum"))(far)
    # PPO keeps the pessimistic side: one of the two rows still has a gradient
    assert float(jnp.max(jnp.abs(gp.mean))) > 0.0
