"""STSL: DPS's measurement loss plus the second-order Tweedie trace term (Hutchinson)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff._module import module, setfield, static
from jaxdiff._operators import Operator
from jaxdiff._types import GuidanceRule
from jaxdiff._validation import check_choice, check_scalar
from jaxdiff.guidance._common import hypers
from jaxdiff.guidance._dps import (
  check_inverse_args,
  gaussian_weight,
  measurement_guide,
  score_coefficient,
)
from optim.curvature import LinearOperator, hutchinson_trace

TRACES = ("measurement", "denoiser")


@module
class STSL(GuidanceRule):
  """Second-order Tweedie surrogate loss; built by :func:`stsl`.

  ``y``, ``scale``, ``trace_weight`` and ``noise_std`` are leaves; the operator,
  ``num_probes`` (a loop length), ``probe``, ``trace`` and ``variant`` are static. The
  one network call per step is differentiated (outside a feature cache, as DPS's:
  ``calls = ()``); the ``num_probes`` Jacobian-vector products of the trace estimate use
  the plain denoiser (counted in ``nfe``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, inverse
    >>> rule = guidance.stsl(inverse.matrix(jnp.eye(2)), jnp.ones((4, 2)), num_probes=2)
    >>> isinstance(rule, guidance.STSL), rule.calls, rule.num_probes
    (True, (), 2)
  """

  operator: Operator = static()
  y: Any
  scale: Any = 1.0
  trace_weight: Any = 1.0
  num_probes: int = static(1)
  probe: str = static("rademacher")
  trace: str = static("measurement")
  variant: str = static("normalized")
  noise_std: Any = None
  traced: tuple = static(())
  gaussian_weight: Any = dataclasses.field(init=False, default=None)

  calls = ()

  def __post_init__(self):
    y = check_inverse_args("stsl", self.operator, self.y, self.variant, self.noise_std)
    setfield(self, "y", y)
    check_choice("stsl: trace", self.trace, TRACES)
    check_scalar("stsl: trace_weight", self.trace_weight, lo=0.0)
    num_probes = check_scalar("stsl: num_probes", self.num_probes, lo=1, integer=True, static=True)
    setfield(self, "num_probes", num_probes)
    check_choice("stsl: probe", self.probe, ("rademacher", "gaussian"))
    setfield(self, "traced", hypers("stsl", self, scale=dict(lo=0.0)))
    setfield(self, "gaussian_weight", gaussian_weight(self))

  def _trace_grad(self, f, x, ctx):
    operator, num_probes, probe = self.operator, self.num_probes, self.probe
    measured = self.trace == "measurement"
    coef = score_coefficient(ctx, x.dtype)

    def total_trace(z):
      if measured:
        matvec = lambda u: operator(jax.jvp(f, (z,), (operator.T(u),))[1])
        like = jax.ShapeDtypeStruct((x.shape[0], *operator.out_shape), x.dtype)
      else:
        matvec = lambda u: jax.jvp(f, (z,), (u,))[1]
        like = jax.ShapeDtypeStruct(x.shape, x.dtype)
      op = LinearOperator(matvec, like)
      # The batch's operator is block diagonal (one block per sample), so the gradient of
      # the batch trace w.r.t. sample b is that of its own trace.
      return hutchinson_trace(op, key=ctx.key, num_probes=num_probes, probe=probe).trace

    _, pull = jax.vjp(total_trace, x)
    (g,) = pull(jnp.ones((), x.dtype))
    return 0.5 * jnp.asarray(self.trace_weight, x.dtype) * coef * g, num_probes

  def guide(self, net, x, cond, ctx, state):
    pred, net = measurement_guide(self, "stsl", net, x, cond, ctx, self._trace_grad)
    return pred, state, net


def stsl(
  operator: Operator,
  y,
  scale=1.0,
  *,
  trace_weight=1.0,
  num_probes: int = 1,
  probe: str = "rademacher",
  trace: str = "measurement",
  variant: str = "normalized",
  noise_std=None,
) -> STSL:
  r"""Second-order Tweedie surrogate loss (STSL): DPS plus the posterior-covariance trace.

  Tweedie's second-order formula gives the posterior covariance from the denoiser's
  Jacobian, :math:`\mathrm{Cov}[x_0 \mid x_t] = \frac{\sigma_t^2}{\alpha_t}
  \partial\hat x_0/\partial x_t`, so the expected measurement loss under a Gaussian
  posterior is

  .. math::
    \mathbb E\,\tfrac12\|y - A x_0\|^2 = \tfrac12\|y - A\hat x_0\|^2
      + \tfrac{\gamma}{2}\,\frac{\sigma_t^2}{\alpha_t}\,
        \mathrm{tr}\!\Big(A\,\frac{\partial \hat x_0}{\partial x_t}\,A^\top\Big)

  (``gamma = trace_weight = 1``: the exact second moment). The trace is estimated with
  :func:`optim.curvature.hutchinson_trace` on the operator :math:`u \mapsto A J A^\top u`
  (a ``jax.jvp`` through the denoiser per probe) and differentiated w.r.t. ``x_t`` with
  ``jax.vjp`` (second-order autodiff through the network): that gradient is STSL's extra
  drift. The step uses DPS's rule (:func:`~jaxdiff.guidance.dps`, same ``scale``,
  ``variant``), so ``trace_weight = 0`` is DPS exactly.

  ``trace="denoiser"`` uses :math:`\mathrm{tr}(\partial\hat x_0/\partial x_t)` without
  ``A``, as the paper writes it for a latent model (the trace of the score's Hessian, up
  to the constants of Tweedie's formula). Which of the two the paper's latent objective
  reduces to in pixel space is our assumption; ``"measurement"`` is the one that is
  exact for a Gaussian posterior.

  ``nfe`` = 1 + ``num_probes`` per step (the evaluation and one Jacobian-vector product
  per probe; their ``vjp`` costs more). Probes are drawn from the step's key, so the
  trace noise differs per step and per sample batch. A non-finite ``y`` is handled as by
  DPS: concrete raises, traced gives NaN samples in its rows.

  Args:
    operator: the measurement :class:`jaxdiff.inverse.Operator`.
    y: measurements ``(B, *operator.out_shape)``.
    scale: step size ``zeta >= 0`` (DPS's).
    trace_weight: ``gamma >= 0``.
    num_probes: Hutchinson probes per step (static, ``>= 1``).
    probe: ``"rademacher"`` or ``"gaussian"``.
    trace: ``"measurement"`` (``tr(A J A^T)``) or ``"denoiser"`` (``tr(J)``).
    variant: DPS's step-size rule, ``"normalized"`` or ``"gaussian"``.
    noise_std: measurement noise, required by ``variant="gaussian"``.

  Returns:
    A stateless :class:`STSL` rule (``nfe = 1 + num_probes``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import StepContext, guidance, inverse
    >>> op = inverse.matrix(jnp.eye(2))
    >>> rule = guidance.stsl(op, jnp.ones((1, 2)), 1.0, num_probes=2)
    >>> ctx = StepContext(jnp.array(0.5), 0.8, 0.6, 0, 10, jax.random.key(0))
    >>> _, _, n = rule.apply(lambda x, t, c: 0.5 * x, jnp.zeros((1, 2)), None, ctx, ())
    >>> int(n)
    3

  References:
    Rout, Chen, Kumar, Caramanis, Shakkottai & Chu, "Beyond First-Order Tweedie: Solving
    Inverse Problems using Latent Diffusion", CVPR 2024, arXiv:2312.00852 (Sec. 3,
    the surrogate loss with the Hessian trace, Hutchinson estimator).
    Hutchinson, "A stochastic estimator of the trace of the influence matrix for
    Laplacian smoothing splines", 1989.
  """
  return STSL(operator, y, scale, trace_weight, num_probes, probe, trace, variant, noise_std)
