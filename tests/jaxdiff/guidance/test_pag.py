"""Perturbed-Attention Guidance (jaxdiff/guidance/_pag.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import guidance
from tests.jaxdiff.guidance.testbed import ctx, gmm_denoise, pag_denoiser


def test_pag_combines_perturbed_and_cfg_terms_in_one_call(x64):
  rows = []

  def den(x, t, c, *, perturb=None):
    if not isinstance(perturb, jax.core.Tracer):  # skip the trace-time flag check's probe
      rows.append((x.shape[0], np.asarray(perturb).tolist()))
    return pag_denoiser(x, t, c, perturb=perturb)

  x = jax.random.normal(jax.random.key(4), (2, 2), jnp.float64)
  cond = jnp.array([0, 2])
  pred, _, nfe = guidance.pag(3.0, cfg_scale=2.5).apply(den, x, cond, ctx(0.4), ())
  t = jnp.full((2,), 0.4)
  x_c, x_u = gmm_denoise(x, t, cond), gmm_denoise(x, t, -jnp.ones_like(cond))
  want = x_c + 3.0 * (x_c - 0.5 * x_c) + 1.5 * (x_c - x_u)
  np.testing.assert_allclose(pred.x0, want, rtol=1e-12)
  assert int(nfe) == 3
  assert rows[-1] == (6, [False, False, True, True, False, False])
  _, _, nfe = guidance.pag(3.0).apply(den, x, cond, ctx(0.4), ())
  assert int(nfe) == 2 and rows[-1][0] == 4


def test_pag_with_the_nnx_attention_block(x64):
  from flax import nnx

  from jaxdiff.models import SelfAttention

  attn = SelfAttention(4, 2, rngs=nnx.Rngs(0))

  def den(x, t, c, *, perturb=None):
    h = x.reshape(x.shape[0], 2, 4)
    return (h + attn(h, perturb=perturb)).reshape(x.shape)

  x = jax.random.normal(jax.random.key(5), (3, 8))
  pred = jax.jit(
    lambda x: guidance.pag(2.0).apply(den, x, jnp.zeros(3, jnp.int32), ctx(), ())[0].x0
  )(x)
  t = jnp.zeros(3)
  x_c = den(x, t, None)
  x_p = den(x, t, None, perturb=jnp.ones(3, bool))
  np.testing.assert_allclose(pred, x_c + 2.0 * (x_c - x_p), rtol=1e-5, atol=1e-5)


def test_pag_rejects_denoisers_that_ignore_or_do_not_accept_the_flag():
  x, cond = jnp.ones((2, 2)), jnp.array([0, 1])
  with pytest.raises(TypeError, match="does not accept the keyword argument `perturb`"):
    guidance.pag(2.0).apply(lambda x, t, c: x, x, cond, ctx(), ())

  def ignores(x, t, c, *, perturb=None):
    _ = jnp.where(perturb, 1.0, 0.0).sum()  # computed, but never reaches the output
    return 2.0 * x

  with pytest.raises(ValueError, match="does not depend on `perturb`"):
    guidance.pag(2.0).apply(ignores, x, cond, ctx(), ())
  with pytest.raises(ValueError, match="does not depend on `perturb`"):
    jax.jit(lambda x: guidance.pag(2.0).apply(ignores, x, cond, ctx(), ())[0].x0)(x)


def test_pag_flag_check_sees_a_flag_hidden_behind_kwargs_and_structured_cond():
  # **kwargs passes the signature check; the dependence check still needs the data path.
  def honours(x, t, c, **kw):
    return jnp.where(kw["perturb"][:, None], c["scale"][:, None] * x, x)

  def ignores(x, t, c, **kw):
    return c["scale"][:, None] * x

  x, cond = jnp.ones((2, 2)), {"scale": jnp.array([2.0, 3.0])}
  pred, _, _ = guidance.pag(1.0).apply(honours, x, cond, ctx(), ())
  np.testing.assert_allclose(pred.x0, x + (x - cond["scale"][:, None] * x))
  with pytest.raises(ValueError, match="does not depend on `perturb`"):
    guidance.pag(1.0).apply(ignores, x, cond, ctx(), ())


def test_pag_scale_has_the_vocabulary_name_and_the_old_spelling_warns():
  den = lambda x, t, c, *, perturb=None: jnp.where(perturb[:, None], 0.5 * x, x)
  x, cond = jnp.ones((1, 2)), jnp.array([0])
  want = guidance.pag(2.0).apply(den, x, cond, ctx(), ())[0].x0
  with pytest.warns(DeprecationWarning, match="pag_scale"):
    rule = guidance.pag(pag_scale=2.0)
  np.testing.assert_array_equal(rule.apply(den, x, cond, ctx(), ())[0].x0, want)
  with pytest.raises(ValueError, match=r"pag: scale must lie in \[0, inf\)"):
    guidance.pag(-1.0)


def test_accepts_keyword_reads_the_signature():
  # The one signature check that PAG (``perturb``) and AGD (``guidance_scale``) share.
  from jaxdiff.guidance._common import accepts_keyword

  def named(x, t, c, *, perturb=None):
    return x

  def var_kw(x, t, c, **kw):
    return x

  def without(x, t, c):
    return x

  def positional_only(x, perturb, /):
    return x

  assert accepts_keyword(named, "perturb") is True
  assert accepts_keyword(var_kw, "guidance_scale") is True
  assert accepts_keyword(without, "perturb") is False
  assert accepts_keyword(positional_only, "perturb") is False
  assert accepts_keyword(named, "guidance_scale") is False
