"""A tight adaptive solve of the probability-flow ODE: the reference every solver is held to."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff._parameterization import eps_from_x0
from jaxdiff._validation import check_output


def probability_flow_reference(
  denoise, schedule, x_T, t0, t1, *, cond=None, rtol: float = 1e-12, atol: float = 1e-12
):
  r"""Integrates the probability-flow ODE from ``t0`` to ``t1`` with diffrax (Dopri8, PID).

  With :math:`x_t = \alpha_t x_0 + \sigma_t \epsilon` and the denoiser
  :math:`D(x, t) \approx \mathbb{E}[x_0 \mid x_t = x]`, the ODE whose marginals match the
  forward process is

  .. math::
    \frac{dx}{dt} = \dot\alpha_t\, D(x, t) + \dot\sigma_t\, \frac{x - \alpha_t D(x, t)}{\sigma_t},

  with :math:`\dot\alpha, \dot\sigma` taken by forward-mode autodiff of the schedule, so it
  serves VP, VE and flow schedules alike. Use it in float64 (``jax.enable_x64``) with an
  exact denoiser (:class:`GaussianMixture`) to measure a solver's error and empirical order.
  ``t1`` must keep :math:`\sigma_{t_1} > 0`.

  Args:
    denoise: ``denoise(x, t, cond) -> x0_hat``, batch first, ``t`` of shape ``(B,)``.
    schedule: the schedule ``t`` is measured in.
    x_T: state at ``t0``, shape ``(B, ...)``.
    t0: start time (high noise).
    t1: end time (low noise, sigma > 0).
    cond: conditioning passed to ``denoise``.
    rtol: relative tolerance of the step-size controller.
    atol: absolute tolerance of the step-size controller.

  Returns:
    The state at ``t1``, shaped like ``x_T``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff import schedules
    >>> from jaxdiff.testing import GaussianMixture, probability_flow_reference
    >>> gmm = GaussianMixture(jnp.array([[-2.0], [2.0]]), 0.1)
    >>> sched = schedules.flow()
    >>> x = probability_flow_reference(gmm.denoiser(sched), sched, jnp.ones((3, 1)), 0.99, 0.01,
    ...                                rtol=1e-6, atol=1e-6)
    >>> x.shape
    (3, 1)

  References:
    Song et al., "Score-Based Generative Modeling through Stochastic Differential
    Equations", arXiv:2011.13456 (Eq. 13); Kidger, "On Neural Differential Equations"
    (diffrax), arXiv:2202.02435.
  """
  try:
    import diffrax
  except ImportError as e:  # diffrax is a test/bench extra, not a runtime dependency
    raise ImportError(
      "probability_flow_reference needs diffrax: pip install 'optim-jaxdiff[test]'"
    ) from e

  def vector_field(t, x, args):
    ones = jnp.ones_like(t)
    a, da = jax.jvp(schedule.alpha, (t,), (ones,))
    s, ds = jax.jvp(schedule.sigma, (t,), (ones,))
    x0 = denoise(x, jnp.full((x.shape[0],), t), cond)
    check_output(x0, like=x, name="denoise(x, t, cond)", where="probability_flow_reference")
    return da * x0 + ds * eps_from_x0(x, x0, a, s)

  sol = diffrax.diffeqsolve(
    diffrax.ODETerm(vector_field),
    diffrax.Dopri8(),
    t0,
    t1,
    None,
    x_T,
    stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
    max_steps=100_000,
  )
  return sol.ys[-1]
