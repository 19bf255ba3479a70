"""Perturbed-Attention Guidance (PAG)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff._module import module, setfield, static
from jaxdiff._types import GuidanceRule, Prediction
from jaxdiff._validation import renamed_kwargs, static_equal
from jaxdiff.guidance._common import accepts_keyword, batch_t, evaluate, hypers, null_fn, poison

_NO_FLAG = (
  "pag: the denoiser does not accept the keyword argument `perturb` (bool (B,)). "
  "Build it on jaxdiff.models.SelfAttention (or any layer that honours the flag)."
)


def _check_pag_denoiser(denoise, x, t, cond) -> None:
  """Raises unless ``denoise`` accepts ``perturb`` and its output depends on it.

  Dependence is read off batching, with public API only: two flag vectors are the mapped
  axis of a ``jax.vmap`` whose output is declared unmapped (``out_axes=None``). That
  traces (under ``jax.eval_shape``: no computation) exactly when no output value depends
  on the flag, however much the denoiser computes from it on the side.
  """
  if accepts_keyword(denoise, "perturb") is False:
    raise TypeError(_NO_FLAG)
  sds = lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))
  probe = jax.vmap(
    lambda p, x_, t_, c_: denoise(x_, t_, c_, perturb=p),
    in_axes=(0, None, None, None),
    out_axes=None,
  )
  flags = jax.ShapeDtypeStruct((2, x.shape[0]), jnp.bool_)
  try:
    jax.eval_shape(probe, flags, *jax.tree.map(sds, (x, t, cond)))
  except TypeError as e:
    if "perturb" in str(e):
      raise TypeError(_NO_FLAG) from e
    raise
  except ValueError:
    return  # the output is batched along the flags: it depends on them
  raise ValueError(
    "pag: the denoiser's output does not depend on `perturb` (it ignores the PAG flag), so "
    "PAG would silently reduce to CFG. Route the flag to its self-attention layers "
    "(jaxdiff.models.SelfAttention(...)(h, perturb=perturb))."
  )


@module
class PAG(GuidanceRule):
  """Perturbed-Attention Guidance; built by :func:`pag`.

  ``scale`` and ``cfg_scale`` are leaves; ``use_cfg`` (``cfg_scale`` given other than 1)
  is static and sets the one batched call's rows: ``calls = (2,)``, or ``(3,)`` with CFG.

  Example:
    >>> from jaxdiff import guidance
    >>> guidance.pag(3.0).calls, guidance.pag(3.0, cfg_scale=2.0).calls
    ((2,), (3,))
  """

  scale: Any
  cfg_scale: Any = 1.0
  null_cond: Any = -1
  use_cfg: bool = static(False)
  traced: tuple = static(())

  def __post_init__(self):
    setfield(self, "traced", hypers("pag", self, scale=dict(lo=0.0), cfg_scale={}))
    null_fn(self.null_cond, "pag")
    setfield(self, "use_cfg", not static_equal(self.cfg_scale, 1.0))

  @property
  def calls(self) -> tuple[int, ...]:
    return (3,) if self.use_cfg else (2,)

  def guide(self, net, x, cond, ctx, state):
    t = batch_t(ctx, x)
    b = x.shape[0]
    _check_pag_denoiser(net.fn, x, t, cond)
    null = null_fn(self.null_cond, "pag")
    conds = [cond, cond] + ([null(cond)] if self.use_cfg else [])
    n = len(conds)
    flags = jnp.zeros((n, b), jnp.bool_).at[1].set(True).reshape(-1)
    outs, net = evaluate(net, x, t, conds, perturb=flags)
    x_c, x_p = outs[0], outs[1]
    x0 = x_c + jnp.asarray(self.scale, x_c.dtype) * (x_c - x_p)
    if self.use_cfg:
      x0 = x0 + (jnp.asarray(self.cfg_scale, x_c.dtype) - 1) * (x_c - outs[2])
    return Prediction.of(poison(self, x0, self.traced)), state, net


@renamed_kwargs(pag_scale="scale")
def pag(scale, *, cfg_scale=1.0, null_cond=-1) -> PAG:
  r"""Perturbed-Attention Guidance, optionally combined with CFG.

  .. math::

    \hat x = \hat x_c + (w - 1)\,(\hat x_c - \hat x_u) + s\,(\hat x_c - \tilde x_c)

  where :math:`\tilde x_c` is the conditional prediction of the network whose chosen
  self-attention maps are replaced by the identity (the denoiser is called with
  ``perturb=True`` for those samples; see :class:`jaxdiff.models.SelfAttention`).
  In the paper's notation (Eq. 12 and its CFG combination, Sec. 4 / App.) this is
  :math:`\epsilon_c + s(\epsilon_c - \hat\epsilon_c) + w'(\epsilon_c - \epsilon_u)` with
  ``w' = w - 1``; ``w = cfg_scale`` follows the :func:`cfg` convention (``w = 1``: no
  CFG term, and then the unconditional evaluation is skipped). All evaluations of a step
  go in one batched call with a per-sample ``perturb`` flag (``nfe = 2`` without CFG,
  ``3`` with it).

  At trace time the rule checks that the denoiser accepts ``perturb`` and that its
  output depends on it; a denoiser that ignores the flag raises ``ValueError`` (PAG
  would silently be a no-op).

  Args:
    scale: the PAG scale ``s >= 0``, finite (the paper uses 3.0 for unconditional
      sampling). ``pag_scale=`` is its deprecated spelling.
    cfg_scale: ``w`` in the :func:`cfg` convention, finite; 1 disables the CFG term.
    null_cond: unconditional label or ``cond -> null`` callable (used when CFG is on).

  Traced hyperparameters are not checked; one that is NaN or out of range poisons the output
  (NaN), see :mod:`jaxdiff.guidance._common`.

  Returns:
    A stateless :class:`PAG` rule.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, StepContext
    >>> def den(x, t, c, *, perturb=None):
    ...   return jnp.where(perturb[:, None], 0.5 * x, x)
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> pred, _, nfe = guidance.pag(2.0).apply(den, jnp.ones((1, 2)), jnp.array([0]), ctx, ())
    >>> float(pred.x0[0, 0]), int(nfe)
    (2.0, 2)

  References:
    Ahn, Cho, Min, Jang, Kim, Kim, Park, Jin & Kim, "Self-Rectifying Diffusion Sampling
    with Perturbed-Attention Guidance", arXiv:2403.17377 (Eqs. 10-12).
  """
  return PAG(scale, cfg_scale, null_cond)
