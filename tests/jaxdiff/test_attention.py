"""SelfAttention: standard attention when clean, the value path when PAG-perturbed."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.models import SelfAttention

DIM, HEADS, B, L = 8, 2, 3, 5


@pytest.fixture(scope="module")
def block():
  return SelfAttention(DIM, HEADS, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def tokens():
  return jax.random.normal(jax.random.key(1), (B, L, DIM))


def _numpy_reference(block, x, perturb):
  """Attention written from Vaswani et al. Eq. 1 with PAG's identity map (Ahn et al. Eq. 10)."""
  w_qkv = np.asarray(block.qkv.kernel[...], np.float64)
  w_o = np.asarray(block.out.kernel[...], np.float64)
  b_o = np.asarray(block.out.bias[...], np.float64)
  x = np.asarray(x, np.float64)
  qkv = (x @ w_qkv).reshape(B, L, 3, HEADS, DIM // HEADS)
  out = np.zeros((B, L, HEADS, DIM // HEADS))
  for b in range(B):
    for h in range(HEADS):
      q, k, v = qkv[b, :, 0, h], qkv[b, :, 1, h], qkv[b, :, 2, h]
      if perturb[b]:
        a = np.eye(L)
      else:
        s = q @ k.T / np.sqrt(DIM // HEADS)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
      out[b, :, h] = a @ v
  return out.reshape(B, L, DIM) @ w_o + b_o


def test_clean_and_perturbed_samples_match_numpy_reference(block, tokens):
  perturb = np.array([False, True, False])
  got = block(tokens, perturb=jnp.asarray(perturb))
  np.testing.assert_allclose(got, _numpy_reference(block, tokens, perturb), rtol=2e-5, atol=2e-5)


def test_perturbed_output_is_the_value_projection_path(block, tokens):
  got = block(tokens, perturb=jnp.ones((B,), bool))
  v = (tokens @ block.qkv.kernel[...]).reshape(B, L, 3, DIM)[:, :, 2]
  np.testing.assert_allclose(got, block.out(v), rtol=1e-5, atol=1e-5)


def test_perturb_none_equals_all_false_and_flag_is_per_sample(block, tokens):
  clean = block(tokens)
  np.testing.assert_array_equal(clean, block(tokens, perturb=jnp.zeros((B,), bool)))
  mixed = block(tokens, perturb=jnp.array([False, True, False]))
  np.testing.assert_array_equal(mixed[0], clean[0])
  assert not np.allclose(mixed[1], clean[1])


def test_jit_with_traced_flag_compiles_once(block, tokens):
  graph, state = nnx.split(block)
  traces = []

  @jax.jit
  def f(state, x, p):
    traces.append(None)
    return nnx.merge(graph, state)(x, perturb=p)

  a = f(state, tokens, jnp.array([True, False, False]))
  b = f(state, tokens, jnp.array([False, False, True]))
  assert len(traces) == 1
  np.testing.assert_allclose(a[0], block(tokens, perturb=jnp.ones((B,), bool))[0], atol=1e-5)
  np.testing.assert_allclose(b[0], block(tokens)[0], atol=1e-5)


def test_bad_inputs_raise_clear_errors(block, tokens):
  with pytest.raises(ValueError, match="multiple of num_heads"):
    SelfAttention(6, 4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="perturb must be a bool array"):
    block(tokens, perturb=jnp.ones((B + 1,), bool))
  with pytest.raises(ValueError, match="perturb must be a bool array"):
    block(tokens, perturb=jnp.ones((B,), jnp.int32))
  with pytest.raises(ValueError, match=r"expected x of shape \(B, L, 8\)"):
    block(tokens[..., :4])


def test_old_location_in_guidance_still_works_and_warns():
  from jaxdiff import guidance

  with pytest.warns(DeprecationWarning, match="use jaxdiff.models.SelfAttention"):
    old = guidance.SelfAttention
  assert old is SelfAttention
  with pytest.raises(AttributeError, match="no attribute 'NoSuchRule'"):
    guidance.NoSuchRule


def test_import_jaxdiff_does_not_import_flax():
  # A fresh interpreter: this test process has imported flax already.
  code = "import jaxdiff, jaxdiff.guidance, sys; assert 'flax' not in sys.modules, 'flax'"
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
