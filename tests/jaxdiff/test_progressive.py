"""jaxdiff.progressive_sample: DiffuseHigh's scale-by-scale pipeline (jaxdiff/_progressive.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import guidance, schedules, solvers
from jaxdiff._progressive import sharpen
from jaxdiff.wavelets import haar_dwt

SCHED = schedules.vp_cosine()


def _den(x, t, c):
  """A size-agnostic smooth denoiser (shrinks toward a per-image mean)."""
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  return 0.6 * x + 0.3 * mean


def test_sharpen_matches_a_float64_unsharp_mask_with_reflected_borders(x64):
  x = np.random.default_rng(0).normal(size=(2, 5, 6))
  amount, sigma = 1.0, 0.8
  k = np.exp(-0.5 * (np.arange(-1, 2) / sigma) ** 2)
  k /= k.sum()
  pad = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="reflect")
  blur = np.zeros_like(x)
  for i in range(3):
    for j in range(3):
      blur += k[i] * k[j] * pad[:, i : i + 5, j : j + 6]
  want = (1 + amount) * x - amount * blur
  np.testing.assert_allclose(sharpen(jnp.asarray(x), amount, sigma), want, rtol=1e-13, atol=1e-13)


def test_each_stage_is_resize_sharpen_renoise_and_guided_sampling_on_the_grid_tail(x64):
  ts = jaxdiff.timesteps(SCHED, 8, spacing="logsnr")
  x_T = jax.random.normal(jax.random.key(0), (2, 4, 4), jnp.float64)
  rule = guidance.conditional()
  out = jaxdiff.progressive_sample(
    _den, solvers.ddim(), x_T, ts, key=3, sizes=[(8, 8)], noising_steps=3, guided_steps=2
  )
  keys = jax.random.split(jaxdiff._validation.as_key(3), 3)
  base = jaxdiff.sample(_den, solvers.ddim(), x_T, ts, key=keys[0], guidance=rule)
  ref = sharpen(jax.image.resize(base.x, (2, 8, 8), "cubic"), 1.0, 1.0)
  tail = jaxdiff.Grid(*(a[5:] for a in ts))
  start = tail.alpha[0] * ref + tail.sigma[0] * jax.random.normal(keys[1], ref.shape, ref.dtype)
  hi = jaxdiff.sample(
    _den,
    solvers.ddim(),
    start,
    tail,
    key=keys[2],
    guidance=guidance.diffusehigh(ref, guided_steps=2),
  )
  np.testing.assert_array_equal(out.images[0], base.x)
  np.testing.assert_array_equal(out.x, hi.x)
  assert out.images[-1] is out.x and int(out.nfe) == 8 + 3


def _corr(a, b):
  a, b = (v.reshape(v.shape[0], -1) for v in (a, b))
  a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
  return (a * b).sum(1) / jnp.sqrt((a * a).sum(1) * (b * b).sum(1))


def test_structure_of_the_result_follows_the_base_sample_over_scales(x64):
  # With x0_hat = 0 (a denoiser that knows nothing) only the guided steps carry the base
  # sample's structure to 16 x 16: the 4 x 4 low band of the result correlates with it.
  ts = jaxdiff.timesteps(SCHED, 10, spacing="logsnr")
  x_T = jax.random.normal(jax.random.key(1), (3, 4, 4), jnp.float64)
  zero = lambda x, t, c: jnp.zeros_like(x)  # noqa: E731
  run = lambda g: jaxdiff.progressive_sample(  # noqa: E731
    zero,
    solvers.ddim(),
    x_T,
    ts,
    key=0,
    sizes=[(8, 8), (16, 16)],
    noising_steps=4,
    guided_steps=g,
    sharpness=0.0,
  )
  out, free = run(4), run(0)
  assert [im.shape for im in out.images] == [(3, 4, 4), (3, 8, 8), (3, 16, 16)]
  assert float(jnp.min(_corr(haar_dwt(out.x, levels=2).low, out.images[0]))) > 0.8
  assert float(jnp.max(jnp.abs(_corr(haar_dwt(free.x, levels=2).low, free.images[0])))) < 0.5


def test_bad_input_names_the_argument():
  ts = jaxdiff.timesteps(SCHED, 4)
  x_T = jnp.zeros((1, 4, 4))
  run = lambda **kw: jaxdiff.progressive_sample(  # noqa: E731
    _den, solvers.ddim(), x_T, ts, key=0, **{"sizes": [(8, 8)], "noising_steps": 2, **kw}
  )
  with pytest.raises(ValueError, match=r"progressive_sample: sizes must not shrink"):
    run(sizes=[(8, 8), (4, 4)])
  with pytest.raises(
    ValueError, match=r"sizes\[0\] = \(6, 8\) must be divisible by 2\*\*levels = 4"
  ):
    run(sizes=[(6, 8)], levels=2)
  with pytest.raises(ValueError, match="progressive_sample: noising_steps must lie in"):
    run(noising_steps=5)
  with pytest.raises(TypeError, match="progressive_sample: sizes must be"):
    run(sizes=8)
  with pytest.raises(ValueError, match="progressive_sample: upsample must be one of"):
    run(upsample="bicubic-ish")
  with pytest.raises(ValueError, match="progressive_sample: sharpen_sigma must lie in"):
    run(sharpen_sigma=0.0)
  with pytest.raises(ValueError, match=r"progressive_sample: x_T must be batch-first images"):
    jaxdiff.progressive_sample(
      _den, solvers.ddim(), jnp.zeros((1, 4)), ts, key=0, sizes=[(8, 8)], noising_steps=2
    )
