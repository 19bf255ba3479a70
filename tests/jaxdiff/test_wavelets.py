"""jaxdiff.wavelets: the 2-D Haar transform against a float64 NumPy transcription."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.wavelets import HaarCoefficients, haar_dwt, haar_idwt


def _numpy_haar(x: np.ndarray, levels: int):
  """Per-block loops over (B, H, W): the formula of the docstring, level by level."""
  low, highs = x.astype(np.float64), []
  for _ in range(levels):
    b, h, w = low.shape
    out = np.zeros((4, b, h // 2, w // 2))
    for i in range(h // 2):
      for j in range(w // 2):
        a, bb = low[:, 2 * i, 2 * j], low[:, 2 * i, 2 * j + 1]
        c, d = low[:, 2 * i + 1, 2 * j], low[:, 2 * i + 1, 2 * j + 1]
        out[:, :, i, j] = [
          (a + bb + c + d) / 2,
          (a + bb - c - d) / 2,
          (a - bb + c - d) / 2,
          (a - bb - c + d) / 2,
        ]
    low = out[0]
    highs.insert(0, tuple(out[1:]))
  return low, highs


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_haar_dwt_matches_a_float64_numpy_transcription(x64, levels):
  x = np.random.default_rng(levels).normal(size=(3, 8, 16))
  coeffs = haar_dwt(jnp.asarray(x), levels=levels)
  low, highs = _numpy_haar(x, levels)
  np.testing.assert_allclose(coeffs.low, low, rtol=0, atol=1e-14)
  assert len(coeffs.highs) == levels
  for got, want in zip(coeffs.highs, highs):
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=0, atol=1e-14)


@pytest.mark.parametrize(
  "shape, axes", [((2, 8, 8), (1, 2)), ((2, 8, 4, 3), (1, 2)), ((2, 3, 8, 4), (2, 3))]
)
def test_round_trip_is_exact_to_rounding_in_float64(x64, shape, axes):
  x = jax.random.normal(jax.random.key(0), shape, jnp.float64) * 10.0
  levels = 2
  back = haar_idwt(haar_dwt(x, levels=levels, axes=axes), axes=axes)
  assert back.dtype == jnp.float64 and back.shape == x.shape
  # 0.5 is a power of two: only the additions round, a few ulps of the magnitudes.
  err = float(jnp.max(jnp.abs(back - x)))
  assert err <= 8 * np.finfo(np.float64).eps * float(jnp.max(jnp.abs(x)))


def test_transform_is_orthonormal_and_the_low_band_holds_block_means(x64):
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 2), jnp.float64)
  c = haar_dwt(x, levels=3)
  energy = jnp.sum(c.low**2) + sum(jnp.sum(b**2) for lvl in c.highs for b in lvl)
  np.testing.assert_allclose(energy, jnp.sum(x**2), rtol=1e-13)
  np.testing.assert_allclose(c.low[:, 0, 0], 8 * x.mean(axis=(1, 2)), rtol=1e-13)


def test_nchw_axes_equal_the_nhwc_transform_transposed(x64):
  x = jax.random.normal(jax.random.key(2), (2, 4, 8, 3), jnp.float64)
  nhwc = haar_dwt(x)
  nchw = haar_dwt(jnp.moveaxis(x, 3, 1), axes=(2, 3))
  np.testing.assert_array_equal(jnp.moveaxis(nchw.low, 1, 3), nhwc.low)


def test_dtype_is_kept_and_the_transform_jits():
  x = jnp.ones((1, 4, 4), jnp.bfloat16)
  c = jax.jit(lambda v: haar_dwt(v, levels=2))(x)
  assert isinstance(c, HaarCoefficients) and c.low.dtype == jnp.bfloat16
  assert haar_idwt(c).dtype == jnp.bfloat16


def test_bad_input_names_the_argument():
  with pytest.raises(
    ValueError, match=r"haar_dwt: x's spatial size H = 6 .* divisible by 2\*\*levels = 4"
  ):
    haar_dwt(jnp.ones((1, 6, 8)), levels=2)
  with pytest.raises(ValueError, match="haar_dwt: levels must lie in"):
    haar_dwt(jnp.ones((1, 4, 4)), levels=0)
  with pytest.raises(TypeError, match="haar_dwt: x must be a floating array"):
    haar_dwt(jnp.ones((1, 4, 4), jnp.int32))
  with pytest.raises(ValueError, match=r"haar_dwt: x must be batch first \(B, H, W, ...\)"):
    haar_dwt(jnp.ones((4, 4)))
  with pytest.raises(ValueError, match="not the batch axis"):
    haar_dwt(jnp.ones((4, 4, 4)), axes=(0, 1))
  with pytest.raises(TypeError, match="haar_dwt: levels must be a concrete"):
    jax.jit(lambda n: haar_dwt(jnp.ones((1, 4, 4)), levels=n))(1)
  c = haar_dwt(jnp.ones((1, 8, 8)), levels=2)
  with pytest.raises(ValueError, match=r"haar_idwt: coefficients.highs\[1\] has bands of shape"):
    haar_idwt((c.low, (c.highs[0], c.highs[0])))
  with pytest.raises(ValueError, match="at least one level"):
    haar_idwt((c.low, ()))
  with pytest.raises(TypeError, match="haar_idwt: coefficients must be"):
    haar_idwt(c.low)
