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
