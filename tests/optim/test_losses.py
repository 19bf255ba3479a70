"""StableMax cross-entropy: float64 transcription, finite gradients everywhere, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim.losses import stablemax_cross_entropy


def stablemax_reference(logits, labels):
  """s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0); loss = -log(s(x_y) / sum_j s(x_j))."""
  x = np.asarray(logits, np.float64)
  s = np.where(x >= 0, x + 1.0, 1.0 / (1.0 - np.minimum(x, 0.0)))
  p = s / s.sum(axis=-1, keepdims=True)
  return -np.log(np.take_along_axis(p, np.asarray(labels)[..., None], axis=-1)[..., 0])


def test_matches_float64_transcription(x64):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(16, 7)) * 5.0
  labels = rng.integers(0, 7, size=16)
  got = stablemax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(np.asarray(got), stablemax_reference(logits, labels), rtol=1e-12)


def test_gradient_matches_central_finite_differences(x64):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(5,)) * 2.0
  f = lambda z: stablemax_cross_entropy(z[None], jnp.array([2]))[0]
  g = jax.grad(f)(jnp.asarray(logits))
  h = 1e-6
  fd = [
    (
      stablemax_reference((logits + h * e)[None], [2])[0]
      - stablemax_reference((logits - h * e)[None], [2])[0]
    )
    / (2 * h)
    for e in np.eye(5)
  ]
  np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-6, atol=1e-9)


def test_gradient_is_finite_everywhere_in_float32_including_the_kink_and_extremes():
  logits = jnp.array([[0.0, 0.0, 0.0], [1e30, -1e30, 0.0], [-1e30, 1e30, 3.0], [0.0, -0.0, 1e-30]])
  labels = jnp.array([0, 1, 0, 2])
  g = jax.grad(lambda z: jnp.sum(stablemax_cross_entropy(z, labels)))(logits)
  assert g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g))), g
  loss = stablemax_cross_entropy(logits, labels)
  assert bool(jnp.all(jnp.isfinite(loss)))


def test_s_is_continuously_differentiable_at_zero(x64):
  # Left and right derivatives of the loss at a logit of exactly 0 agree.
  f = lambda t: stablemax_cross_entropy(jnp.array([[t, 1.0, -2.0]]), jnp.array([1]))[0]
  d0 = float(jax.grad(f)(0.0))
  h = 1e-7
  right, left = (f(h) - f(0.0)) / h, (f(0.0) - f(-h)) / h
  np.testing.assert_allclose([float(right), float(left)], [d0, d0], rtol=1e-5)


def test_class_axis_argument_and_bf16_input():
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 6, size=4))
  a = stablemax_cross_entropy(logits, labels)
  b = stablemax_cross_entropy(logits.T, labels, axis=0)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  c = stablemax_cross_entropy(logits.astype(jnp.bfloat16), labels)
  assert c.dtype == jnp.float32
  np.testing.assert_allclose(c, a, rtol=2e-2)


@pytest.mark.parametrize(
  "labels, exc, match",
  [
    (jnp.zeros(5, jnp.int32), ValueError, "labels shape"),
    (jnp.zeros(4), TypeError, "labels must hold integer class labels"),
    (jnp.array([0, 1, 2, -1]), ValueError, r"labels: .*\[0, 3\).*got -1 at index \(3,\)"),
    ([0, 3, 1, 1], ValueError, r"labels: .*\[0, 3\).*got 3 at index \(1,\)"),
  ],
)
def test_bad_labels_raise_naming_labels_the_range_and_the_first_offender(labels, exc, match):
  # -1 used to select the last class silently; 3 gave NaN without an error.
  with pytest.raises(exc, match=match):
    stablemax_cross_entropy(jnp.zeros((4, 3)), labels)


def test_traced_invalid_labels_poison_the_loss_and_its_gradient_only_for_their_example():
  logits = jnp.array([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
  labels = jnp.array([1, -1, 3])
  loss = jax.jit(stablemax_cross_entropy)(logits, labels)
  assert bool(jnp.isfinite(loss[0])) and bool(jnp.all(jnp.isnan(loss[1:])))
  np.testing.assert_allclose(loss[0], stablemax_cross_entropy(logits[:1], labels[:1])[0])
  g = jax.jit(jax.grad(lambda z, y: jnp.sum(stablemax_cross_entropy(z, y))))(logits, labels)
  assert bool(jnp.all(jnp.isfinite(g[0]))) and bool(jnp.all(jnp.isnan(g[1:])))


@pytest.mark.parametrize("axis", [2, -3, 1.5])
def test_class_axis_outside_the_logits_is_an_error_not_a_wrap_around(axis):
  # axis=2 of 2-D logits used to wrap to axis 0 silently.
  with pytest.raises(ValueError, match="axis"):
    stablemax_cross_entropy(jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32), axis=axis)


# ----------------------------------------------------------------------------- PPO / GPPO


def _bandit_batch(seed=0, k=5, n=64):
  """A softmax bandit: old and current logits, sampled arms, advantages of both signs."""
  rng = np.random.default_rng(seed)
  old = rng.normal(size=k)
  theta = old + rng.normal(size=k) * 0.8  # far enough that many ratios leave [0.8, 1.28]
  arms = rng.integers(0, k, size=n)
  adv = rng.normal(size=n)
  return theta, old, arms, adv


def _policy_grad_reference(theta, old, arms, adv, eps_l, eps_h, gppo):
  """Closed-form gradient wrt the logits: -(1/n) sum_j c_j (e_{a_j} - pi), float64."""
  pi = np.exp(theta - theta.max())
  pi /= pi.sum()
  pi_old = np.exp(old - old.max())
  pi_old /= pi_old.sum()
  ratio = pi[arms] / pi_old[arms]
  high = (adv > 0) & (ratio > 1 + eps_h)
  low = (adv < 0) & (ratio < 1 - eps_l)
  c = np.where(high, (1 + eps_h) * adv if gppo else 0.0, adv * ratio)
  c = np.where(low, (1 - eps_l) * adv if gppo else 0.0, c)
  score = np.eye(len(theta))[arms] - pi  # grad log pi(a) wrt the logits
  value = -np.mean(np.minimum(ratio * adv, np.clip(ratio, 1 - eps_l, 1 + eps_h) * adv))
  return value, -(c[:, None] * score).mean(axis=0), int(high.sum() + low.sum())


def _policy_loss(loss, arms, old, adv):
  def f(theta):
    lp = jax.nn.log_softmax(theta)[arms]
    return loss(lp, jax.nn.log_softmax(old)[arms], adv, epsilon_low=0.2, epsilon_high=0.28)

  return f


@pytest.mark.parametrize("name", ["gppo", "ppo"])
def test_policy_losses_match_closed_form_bandit_gradient_over_20_steps(x64, name):
  from optim.losses import gppo_loss, ppo_clip_loss

  loss = gppo_loss if name == "gppo" else ppo_clip_loss
  theta, old, arms, adv = _bandit_batch()
  f = jax.jit(jax.value_and_grad(_policy_loss(loss, jnp.asarray(arms), old, jnp.asarray(adv))))
  ref_theta, got_theta, clipped_seen = theta.copy(), jnp.asarray(theta), 0
  for _ in range(20):  # 20 steps of gradient descent on the logits, in lockstep
    v_ref, g_ref, n_clipped = _policy_grad_reference(
      ref_theta, old, arms, adv, 0.2, 0.28, name == "gppo"
    )
    v, g = f(got_theta)
    np.testing.assert_allclose(float(v), v_ref, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g), g_ref, rtol=1e-6, atol=1e-12)
    clipped_seen += n_clipped
    ref_theta, got_theta = ref_theta - 0.5 * g_ref, got_theta - 0.5 * g
  assert clipped_seen > 20, "the test must exercise the clipped branches"


def test_gppo_value_equals_ppo_and_gradients_differ_only_on_clipped_tokens(x64):
  from optim.losses import gppo_loss, ppo_clip_loss

  theta, old, arms, adv = _bandit_batch(1)
  args = (jnp.asarray(arms), old, jnp.asarray(adv))
  vg = jax.value_and_grad(_policy_loss(gppo_loss, *args))(jnp.asarray(theta))
  vp = jax.value_and_grad(_policy_loss(ppo_clip_loss, *args))(jnp.asarray(theta))
  np.testing.assert_allclose(float(vg[0]), float(vp[0]), rtol=1e-14)
  assert not np.allclose(vg[1], vp[1])


def test_policy_loss_mask_gives_token_level_mean_and_empty_mask_is_zero():
  from optim.losses import gppo_loss

  lp = jnp.log(jnp.array([[0.5, 0.2, 0.9], [0.3, 0.3, 0.3]]))
  old = jnp.log(jnp.array([[0.4, 0.4, 0.4], [0.3, 0.2, 0.3]]))
  adv = jnp.array([[1.0], [-2.0]])  # one advantage per sequence
  mask = jnp.array([[1, 1, 0], [1, 0, 0]])
  got = gppo_loss(lp, old, adv, mask=mask)
  tokens = [(0, 0), (0, 1), (1, 0)]
  want = np.mean([float(gppo_loss(lp[i, j], old[i, j], adv[i, 0])) for i, j in tokens])
  np.testing.assert_allclose(float(got), want, rtol=1e-6)
  zero = jax.grad(lambda x: gppo_loss(x, old, adv, mask=jnp.zeros_like(mask)))(lp)
  assert float(gppo_loss(lp, old, adv, mask=jnp.zeros_like(mask))) == 0.0
  assert bool(jnp.all(zero == 0.0))


def test_gppo_gradient_is_finite_when_the_ratio_underflows():
  from optim.losses import gppo_loss

  g = jax.grad(lambda lp: gppo_loss(lp, jnp.zeros(2), jnp.array([-1.0, 1.0])))(
    jnp.array([-200.0, 0.0])
  )
  assert bool(jnp.all(jnp.isfinite(g))), g
  np.testing.assert_allclose(float(g[0]), 0.8 / 2, rtol=1e-6)  # (1 - eps_l) * |A| / n


def _klear_gppo_reference(log_prob, old_log_prob, advantages, mask, eps_l, eps_h, c):
  """Klear-Reasoner's ``compute_gppo_loss`` (github.com/Kwai-Klear/KlearReasoner, README.md
  lines 167-244 = verl/trainer/ppo/core_algos.py lines 444-529 with ``only_high=False``,
  token-mean), float64 NumPy: the forward pass op by op, then the backward pass that torch's
  autograd takes through it (``ratio.detach()`` a constant; ``maximum``/``minimum`` give a
  tie half the gradient each, ``clamp`` gives it to the input). Returns the loss and its
  gradient with respect to ``log_prob``."""
  ratio = np.exp(log_prob - old_log_prob)
  sg = ratio.copy()  # ratio.detach()
  pg_losses1 = -advantages * ratio
  lo, hi = (1 - eps_l) / sg * ratio, (1 + eps_h) / sg * ratio
  clamped = np.minimum(np.maximum(ratio, lo), hi)  # torch.clamp(ratio, lo, hi)
  pg_losses2 = -advantages * clamped
  clip_pg_losses1 = np.maximum(pg_losses1, pg_losses2)
  pg_losses3 = -advantages * c
  clip_pg_losses2 = np.minimum(pg_losses3, clip_pg_losses1)
  pg_losses = np.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
  loss = np.sum(pg_losses * mask) / np.sum(mask)  # agg_loss "token-mean" (masked_mean)
  # Backward: d/d log_prob of each term (ratio and the detach-scaled bounds all carry d log pi).
  d_pl = mask / np.sum(mask)
  d_clip1 = np.where(advantages < 0, 0.0, d_pl)
  d_clip2 = np.where(advantages < 0, d_pl, 0.0)
  d_clip1 = d_clip1 + d_clip2 * np.where(
    clip_pg_losses1 < pg_losses3, 1.0, np.where(clip_pg_losses1 == pg_losses3, 0.5, 0.0)
  )
  w1 = np.where(pg_losses1 > pg_losses2, 1.0, np.where(pg_losses1 == pg_losses2, 0.5, 0.0))
  d_l1, d_l2 = d_clip1 * w1, d_clip1 * (1 - w1)
  in_range = (ratio >= lo) & (ratio <= hi)
  d_clamped = -advantages * d_l2
  d_ratio = -advantages * d_l1 + d_clamped * in_range
  d_lo = d_clamped * (ratio < lo) * (1 - eps_l) / sg
  d_hi = d_clamped * (ratio > hi) * (1 + eps_h) / sg
  return loss, (d_ratio + d_lo + d_hi) * ratio


def test_gppo_default_is_the_official_dual_clipped_loss_at_ratio_4(x64):
  """A negative-advantage token at ratio 4 (> c = 3): the official loss is dual-clipped to
  -c A = 3 with zero gradient; the paper's Eq. without the dual clip (dual_clip=None, the
  old default) gives 4 and gradient 4."""
  from optim.losses import gppo_loss

  lp, old, adv = np.log([1.6]), np.log([0.4]), np.array([-1.0])
  want, want_g = _klear_gppo_reference(lp, old, adv, np.ones(1), 0.2, 0.28, 3.0)
  assert (want, want_g[0]) == pytest.approx((3.0, 0.0))
  f = jax.value_and_grad(lambda x, **kw: gppo_loss(x, jnp.asarray(old), jnp.asarray(adv), **kw))
  v, g = f(jnp.asarray(lp))
  np.testing.assert_allclose([float(v), float(g[0])], [want, want_g[0]], rtol=1e-14, atol=0)
  v, g = f(jnp.asarray(lp), dual_clip=None)
  np.testing.assert_allclose([float(v), float(g[0])], [4.0, 4.0], rtol=1e-14)


@pytest.mark.parametrize("c", [3.0, 10.0])
def test_gppo_matches_float64_transcription_of_the_official_loss(x64, c):
  """Ratios 0.05..30, advantages of both signs, a padding mask, the official c = 3 (default)
  and the training scripts' c = 10: value and gradient equal the official code's."""
  from optim.losses import gppo_loss

  rng = np.random.default_rng(3)
  shape = (6, 40)
  old = np.log(rng.uniform(0.05, 0.9, size=shape))
  lp = old + rng.uniform(np.log(0.05), np.log(30.0), size=shape)
  adv = rng.normal(size=(6, 1)) * np.where(rng.uniform(size=shape) < 0.5, -1.0, 1.0)
  mask = (rng.uniform(size=shape) < 0.85).astype(np.float64)
  want, want_g = _klear_gppo_reference(lp, old, adv, mask, 0.2, 0.28, c)
  v, g = jax.value_and_grad(
    lambda x: gppo_loss(x, jnp.asarray(old), jnp.asarray(adv), mask=jnp.asarray(mask), dual_clip=c)
  )(jnp.asarray(lp))
  np.testing.assert_allclose(float(v), want, rtol=1e-13)
  np.testing.assert_allclose(np.asarray(g), want_g, rtol=1e-12, atol=1e-15)
  ratio = np.exp(lp - old)
  assert ((adv < 0) & (ratio > c) & (mask > 0)).sum() >= 5, "the dual clip must be exercised"
  default = gppo_loss(jnp.asarray(lp), jnp.asarray(old), jnp.asarray(adv), mask=jnp.asarray(mask))
  if c == 3.0:
    assert float(default) == float(v)
