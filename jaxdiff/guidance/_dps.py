"""Diffusion posterior sampling (DPS): the measurement gradient through the denoiser."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff._module import module, setfield, static
from jaxdiff._operators import Operator, check_operator, residual_norm
from jaxdiff._types import GuidanceRule, Prediction, StepContext
from jaxdiff._validation import check_choice, check_scalar
from jaxdiff.guidance._common import (
  batch_t,
  bcast,
  hypers,
  poison,
)

Array = jax.Array

VARIANTS = ("normalized", "gaussian")


def score_coefficient(ctx: StepContext, dtype) -> Array:
  """``sigma^2 / alpha``: a score shift ``d`` moves the data prediction by ``coef * d``.

  Tweedie: ``x0 = (x + sigma^2 grad log p(x)) / alpha``. At ``alpha = 0`` (pure noise,
  the data prediction does not depend on the score) it is 0: no guidance there.
  """
  alpha = jnp.asarray(ctx.alpha, dtype)
  sigma = jnp.asarray(ctx.sigma, dtype)
  return jnp.where(alpha > 0, sigma**2 / jnp.where(alpha > 0, alpha, 1), 0)


def check_inverse_args(rule: str, operator, y, variant, noise_std) -> Array:
  """Validates what every measurement-guided rule takes; returns ``y`` as an array."""
  check_operator(operator, rule)
  check_choice(f"{rule}: variant", variant, VARIANTS)
  if variant == "gaussian":
    if noise_std is None:
      raise ValueError(f"{rule}: variant='gaussian' needs noise_std (the measurement noise)")
    check_scalar(f"{rule}: noise_std", noise_std, lo=0.0, lo_open=True)
  elif noise_std is not None:
    check_scalar(f"{rule}: noise_std", noise_std, lo=0.0)
  return operator.check_measurement(y, None, rule)


def gaussian_weight(rule) -> Any:
  """``scale / noise_std^2`` of the ``"gaussian"`` step, formed at construction (in Python
  arithmetic for Python numbers, as the closures did) and kept as a leaf."""
  if rule.variant != "gaussian":
    return None
  return rule.scale / rule.noise_std**2


def measurement_guide(rule, name: str, net, x, cond, ctx, extra: Callable | None = None):
  r"""The ``guide`` shared by DPS and STSL: ``x0 - (sigma^2/alpha) w grad_x L``.

  ``L = 1/2 ||A x0_hat(x) - y||^2 (+ extra(x, ...))``, its gradient w.r.t. the noisy
  ``x`` taken with ``jax.vjp`` through the network; ``w = scale / ||A x0_hat - y||``
  (``"normalized"``) or ``scale / noise_std^2`` (``"gaussian"``). ``extra(f, x, ctx)``
  returns ``(grad of the extra loss, its evaluations)``, with ``f`` the plain denoiser at
  this step's ``t`` and ``cond``.
  """
  operator = rule.operator
  yb = operator.check_measurement(rule.y, x.shape[0], name).astype(x.dtype)
  t = batch_t(ctx, x)
  # Differentiated through, so outside the feature cache (as the cached denoiser ran it).
  call, fn = net, net.fn
  x0, pull, inner = jax.vjp(lambda z: call.uncached()(z, t, cond), x, has_aux=True)
  net = inner.restore(call)
  r = operator(x0) - yb
  (g,) = pull(operator.T(r))
  if extra is not None:
    g_extra, n_extra = extra(lambda z: fn(z, t, cond), x, ctx)
    g, net = g + g_extra, net.count(n_extra)
  norm = residual_norm(r)
  if rule.variant == "normalized":
    # ||r|| = 0 (the measurement is met): no pull, instead of 0/0.
    w = jnp.where(norm > 0, rule.scale / jnp.where(norm > 0, norm, 1), 0)
  else:
    w = jnp.full_like(norm, rule.gaussian_weight)
  coef = score_coefficient(ctx, x0.dtype)
  out = x0 - coef * bcast(w.astype(x0.dtype), x0) * g
  return Prediction.of(poison(rule, out, rule.traced)), net


@module
class DPS(GuidanceRule):
  """Diffusion posterior sampling; built by :func:`dps`.

  ``y``, ``scale`` and ``noise_std`` are leaves (new measurements or a new step size do
  not recompile); the operator and ``variant`` are static. One network call per step,
  differentiated by ``jax.vjp`` and therefore outside a feature cache: ``calls = ()``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, inverse
    >>> rule = guidance.dps(inverse.matrix(jnp.eye(2)), jnp.ones((4, 2)), 0.5)
    >>> isinstance(rule, guidance.DPS), rule.calls
    (True, ())
  """

  operator: Operator = static()
  y: Any
  scale: Any = 1.0
  variant: str = static("normalized")
  noise_std: Any = None
  traced: tuple = static(())
  gaussian_weight: Any = dataclasses.field(init=False, default=None)

  calls = ()

  def __post_init__(self):
    y = check_inverse_args("dps", self.operator, self.y, self.variant, self.noise_std)
    setfield(self, "y", y)
    setfield(self, "traced", hypers("dps", self, scale=dict(lo=0.0)))
    setfield(self, "gaussian_weight", gaussian_weight(self))

  def guide(self, net, x, cond, ctx, state):
    pred, net = measurement_guide(self, "dps", net, x, cond, ctx)
    return pred, state, net


def dps(
  operator: Operator,
  y,
  scale=1.0,
  *,
  variant: str = "normalized",
  noise_std=None,
) -> DPS:
  r"""Diffusion posterior sampling: follow the measurement gradient through the denoiser.

  .. math::
    \nabla_x \log p(y \mid x) \approx -\zeta_t\, \nabla_x \tfrac12\|y - A\hat x_0(x)\|^2,
    \qquad \hat x \leftarrow \hat x_0 + \frac{\sigma_t^2}{\alpha_t}\,
      \nabla_x \log p(y \mid x),

  with the gradient through the network by ``jax.vjp`` (``J^T A^T (A x0 - y)``) and the
  step size

  * ``variant="normalized"`` (the paper's rule, Alg. 1/2):
    :math:`\zeta_t = \zeta / \|y - A\hat x_0\|`; the step is :math:`\zeta \nabla_x
    \|y - A \hat x_0\|`, as the official code differentiates the norm itself;
  * ``variant="gaussian"``: :math:`\zeta_t = \zeta / s^2` (Eq. 16 with the measurement
    noise ``s = noise_std``; ``scale = 1`` is the likelihood term of the approximation).

  Our transcription: the paper adds :math:`-\zeta_i\nabla\|y-A\hat x_0\|^2` to
  :math:`x_{i-1}` after a DDPM step; a DDPM step adds :math:`\approx\beta_i` times the
  score, so this rule adds the same correction *to the score* (on ``x0`` through
  ``sigma^2/alpha``, as classifier guidance does). That makes ``scale`` independent of
  the solver and of the number of steps; the paper's ``zeta'`` over ``N = 1000`` DDPM
  steps corresponds to a larger ``scale`` here (about ``zeta' / beta``).
  At ``alpha_t = 0`` the correction is 0; where the measurement is met exactly
  (``||r|| = 0``) the normalized step is 0 (not 0/0). A concrete ``y`` holding NaN or inf
  raises (the check the exact posterior makes); a traced one (the rule built or passed
  inside ``jit``) makes the samples of its non-finite rows NaN (the residual carries it
  into their gradient). The step length of the normalized rule is bounded by ``scale``
  times the norm of the posterior covariance, so large scales overshoot but stay finite;
  the ``"gaussian"`` step grows as ``1/noise_std^2``.

  ``cond`` goes to the denoiser unchanged (label ``-1`` for an unconditional model).
  ``nfe`` = 1 forward evaluation per step; its ``vjp`` costs about two more.

  Args:
    operator: the measurement :class:`jaxdiff.inverse.Operator` ``A``.
    y: measurements ``(B, *operator.out_shape)``, one per sample of the batch (a batch of
      another size raises at trace time).
    scale: :math:`\zeta \ge 0`.
    variant: ``"normalized"`` or ``"gaussian"``.
    noise_std: measurement noise ``s > 0``, required by ``"gaussian"``.

  Returns:
    A stateless :class:`DPS` rule.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxdiff
    >>> from jaxdiff import guidance, inverse, schedules, solvers
    >>> from jaxdiff.testing import GaussianMixture
    >>> gmm = GaussianMixture(jnp.array([[-2.0, 0.0], [2.0, 0.0]]), 0.5)
    >>> op = inverse.matrix(jnp.array([[1.0, 0.0]]))
    >>> sched = schedules.vp_cosine()
    >>> rule = guidance.dps(op, jnp.full((4, 1), 2.0), 1.0)
    >>> out = jaxdiff.sample(gmm.denoiser(sched), solvers.ddim(), jnp.zeros((4, 2)),
    ...                      schedules.timesteps(sched, 20), key=0, guidance=rule)
    >>> bool(jnp.all(jnp.abs(out.x[:, 0] - 2.0) < 0.5)), int(out.nfe)
    (True, 20)

  References:
    Chung, Kim, Mccann, Klasky & Ye, "Diffusion Posterior Sampling for General Noisy
    Inverse Problems", ICLR 2023, arXiv:2209.14687 (Eq. 16, Alg. 1-2, App. C.2).
  """
  return DPS(operator, y, scale, variant, noise_std)
