"""Correctors: Langevin steps at the new noise level, run by :func:`jaxdiff.sample` after a step.

A corrector is an immutable pytree (:func:`jaxdiff._module.module`: ``snr``, ``lamb`` and
``kappa`` are leaves, so a new value does not recompile ``sample``) with

* ``init(x_T) -> state``: its carried state (``()`` when stateless);
* ``correct(predict, x, ctx, state, aux, *, key) -> (x, state, aux, nfe)``: moves ``x`` (at
  the grid point ``ctx`` describes, ``sigma > 0``) toward the marginal ``p_t``.
  ``predict(x, aux) -> (Prediction, aux, nfe)`` is the loop's network call through the
  guidance rule; ``aux`` is the loop's state of that call (the rule's state and the
  :class:`~jaxdiff.Network`), threaded through unchanged by the corrector;
* ``steps``: the network calls ``correct`` makes through ``predict`` (static).

:meth:`Corrector.run` is what the loop calls: ``correct`` where ``sigma > 0`` (a
``lax.cond``), nothing at ``sigma = 0``. :class:`NoCorrector` (``sample``'s default) runs
nothing and traces nothing.

The score of the marginal at ``x`` follows from the data prediction, ``s = (alpha x0 -
x) / sigma^2 = -eps / sigma`` (:func:`jaxdiff.parameterization.eps_from_x0`), so a
corrector works with every parameterization, schedule, guidance rule and solver.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff._module import module, setfield, static
from jaxdiff._parameterization import eps_from_x0
from jaxdiff._types import StepContext
from jaxdiff._validation import check_choice, check_scalar

Array = jax.Array


def _sum_ps(a: Array) -> Array:
  """Per-sample sum over all non-batch axes, kept broadcastable against ``a``."""
  return jnp.sum(a, axis=tuple(range(1, a.ndim)), keepdims=True)


def _tiny(dtype) -> float:
  return float(jnp.finfo(dtype).tiny)


class Corrector:
  """Base class of the correctors; see the module docstring for the interface.

  Example:
    >>> from jaxdiff import correctors
    >>> isinstance(correctors.langevin(), correctors.Corrector)
    True
  """

  def init(self, x_T: Array) -> Any:
    del x_T
    return ()

  def correct(self, predict, x, ctx: StepContext, state, aux, *, key):  # pragma: no cover
    raise NotImplementedError

  def run(self, predict, x, ctx: StepContext, state, aux, *, key, skip):
    """``(x, state, aux)`` after :meth:`correct` at a grid point with ``sigma > 0``; at
    ``sigma = 0`` nothing runs and ``skip(aux)`` stands for the calls not made."""

    def go(x, state, aux):
      x_new, state, aux, _ = self.correct(predict, x, ctx, state, aux, key=key)
      return x_new.astype(x.dtype), state, aux

    def stay(x, state, aux):
      return x, state, skip(aux)

    return jax.lax.cond(ctx.sigma > 0, go, stay, x, state, aux)

  @property
  def evals_per_step(self) -> int:
    """Network evaluations per solver step (every grid point after the first with sigma > 0)."""
    return self.steps  # type: ignore[attr-defined]


@module
class NoCorrector(Corrector):
  """The do-nothing corrector (``sample``'s default): no call, nothing traced.

  Example:
    >>> from jaxdiff import correctors
    >>> correctors.NoCorrector().evals_per_step
    0
  """

  steps = 0

  def run(self, predict, x, ctx, state, aux, *, key, skip):
    del predict, ctx, key, skip
    return x, state, aux


def _step_size(snr, z: Array, eps: Array, sigma) -> Array:
  r"""Song et al.'s step :math:`\epsilon = 2 (r \|z\| / \|s\|)^2`, :math:`s = -\hat\epsilon/\sigma`.

  Capped at ``sigma^2`` (the marginal's own noise variance): the cap only binds when the
  predicted noise is nearly zero, where the uncapped step would blow up (``|s| -> 0``).
  """
  z2 = _sum_ps(jnp.square(z))
  e2 = jnp.maximum(_sum_ps(jnp.square(eps)), _tiny(eps.dtype))
  return jnp.minimum(2.0 * snr**2 * sigma**2 * z2 / e2, sigma**2)


def _score_terms(predict, x, ctx, aux):
  pred, aux, used = predict(x, aux)
  alpha = jnp.asarray(ctx.alpha, x.dtype)
  sigma = jnp.asarray(ctx.sigma, x.dtype)
  eps = eps_from_x0(x, pred.x0.astype(x.dtype), alpha, sigma)
  return eps, sigma, aux, used


@module
class Langevin(Corrector):
  r"""The Langevin corrector of predictor-corrector sampling.

  At the grid point ``t`` a solver step has just reached, ``steps`` iterations of

  .. math::
    s = -\hat\epsilon(x, t)/\sigma_t,\quad
    \epsilon = 2\Big(r\,\frac{\|z\|}{\|s\|}\Big)^2,\quad
    x \leftarrow x + \epsilon\, s + \sqrt{2\epsilon}\, z,\qquad z\sim\mathcal N(0, I),

  per sample (norms over all non-batch axes), with ``r = snr``. Each iteration costs one
  network evaluation (counted in ``nfe``). The step size is Song et al.'s Algorithm 4
  with their VP factor :math:`\alpha_i = 1 - \beta_i` taken as 1 (the schedule-free VE
  form; assumption, as the factor is ~1 on fine grids), capped at :math:`\sigma_t^2`.

  Example:
    >>> from jaxdiff import correctors
    >>> c = correctors.Langevin(snr=0.1, steps=2)
    >>> c.evals_per_step
    2

  References:
    Song et al., "Score-Based Generative Modeling through Stochastic Differential
    Equations", arXiv:2011.13456 (Alg. 4-5, predictor-corrector sampling).
  """

  snr: Any = 0.16
  steps: int = static(1)

  def __post_init__(self):
    setfield(self, "snr", check_scalar("snr", self.snr, lo=0.0, lo_open=True))
    setfield(self, "steps", check_scalar("steps", self.steps, lo=1, integer=True, static=True))

  def _precondition(self, eps, drift, z, state):
    del eps
    return drift, z, state

  def correct(self, predict, x, ctx, state, aux, *, key):
    used = jnp.zeros((), jnp.int32)
    for k in range(self.steps):
      eps, sigma, aux, n = _score_terms(predict, x, ctx, aux)
      z = jax.random.normal(jax.random.fold_in(key, k), x.shape, x.dtype)
      score = -eps / sigma
      step = _step_size(self.snr, z, eps, sigma).astype(x.dtype)
      drift, noise, state = self._precondition(eps, score, z, state)
      x = x + step * drift + jnp.sqrt(2.0 * step) * noise
      used = used + jnp.asarray(n, jnp.int32)
    return x, state, aux, used


class LMLState(NamedTuple):
  """LML's carried state: the previous noise prediction (what ``kappa`` blends in)."""

  g: Array
  started: Array  # bool: whether g holds a prediction yet


@module
class LML(Langevin):
  r"""Levenberg-Marquardt-Langevin: a Langevin corrector preconditioned by the damped,
  rank-one approximation of the diffusion Hessian.

  With :math:`s = -\hat\epsilon/\sigma` the score, LML approximates the negative
  log-density Hessian at ``x`` by the Gauss-Newton outer product of the noise
  prediction, :math:`H \approx g g^\top / \lambda` (rank one, in units where the damping
  is the identity), with :math:`g = \kappa\,\hat\epsilon_{\text{prev}} + (1 - \kappa)\hat\epsilon`
  the current prediction blended with the previous one (the official code's
  ``kappa * prev_noise + (1 - kappa) * noise_pred``, where ``prev_noise`` is the previous
  raw prediction, not a running average; ``kappa = 0``: the current one). The damped
  preconditioner and its square root are closed-form (Sherman-Morrison):

  .. math::
    P = (I + g g^\top/\lambda)^{-1} = I - \frac{g g^\top}{\lambda + \|g\|^2},\qquad
    P^{1/2} = I - \Big(1 - \sqrt{\tfrac{\lambda}{\lambda + \|g\|^2}}\Big)\hat g\hat g^\top,

  and each iteration is the preconditioned Langevin move

  .. math::
    x \leftarrow x + \epsilon\,P s + \sqrt{2\epsilon}\,P^{1/2} z

  with Song et al.'s step size :math:`\epsilon` (as :class:`Langevin`). ``lamb`` is the
  damping :math:`\lambda`: ``lamb = inf`` is the plain Langevin corrector bit for bit;
  small ``lamb`` damps the move along ``g``. ``variant="normalized"`` rescales the
  preconditioned drift to the norm of the plain one, as the official code does with its
  preconditioned noise direction; ``"damped"`` (default) keeps :math:`P s`.

  Where the paper's text was not available here, the official code (zituitui/
  LML-diffusion-sampler) fixed the details: the rank-one factor is the (averaged) noise
  prediction, ``kappa`` its averaging weight, and the preconditioner
  :math:`(I + gg^\top/\lambda)^{-1}`. That code applies the preconditioner to the
  solver's noise direction rather than in a separate Langevin move, and with its default
  ``kappa = 0`` its renormalized direction equals the plain one (``P eps`` is parallel to
  ``eps``); both are noted in the README. The Langevin form here is what the paper's
  title and Sec. 3 describe (preconditioned Langevin at each noise level); the position
  dependence of ``P`` is not corrected for (no divergence term), as in the paper.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import correctors
    >>> c = correctors.LML(lamb=2.0)
    >>> eps = jnp.array([[1.0, 0.0]])  # g = eps: the move along g is damped by 2 / (2 + 1)
    >>> drift, noise, _ = c._precondition(eps, -eps, jnp.zeros((1, 2)), c.init(eps))
    >>> [round(v, 4) for v in drift[0].tolist()]
    [-0.6667, 0.0]

  References:
    Wang et al., "Unleashing High-Quality Image Generation in Diffusion Sampling Using
    Second-Order Levenberg-Marquardt-Langevin", ICCV 2025, arXiv:2505.24222.
  """

  lamb: Any = 1.0
  kappa: Any = 0.0
  variant: str = static("damped")
  undamped: bool = static(False)

  def __post_init__(self):
    super().__post_init__()
    # lamb = inf selects the plain Langevin move (a different program): it must be concrete.
    lamb = check_scalar("lamb", self.lamb, lo=0.0, lo_open=True, allow_inf=True, static=True)
    setfield(self, "lamb", lamb)
    setfield(self, "undamped", lamb == float("inf"))
    setfield(self, "kappa", check_scalar("kappa", self.kappa, lo=0.0, hi=1.0, hi_open=True))
    setfield(self, "variant", check_choice("variant", self.variant, ("damped", "normalized")))

  def init(self, x_T):
    return LMLState(jnp.zeros_like(x_T), jnp.zeros((), bool))

  def _precondition(self, eps, drift, z, state):
    g = jnp.where(state.started, self.kappa * state.g + (1.0 - self.kappa) * eps, eps)
    new = LMLState(eps, jnp.ones((), bool))  # the official code keeps the raw prediction
    if self.undamped:  # no damping term: exactly the plain Langevin move
      return drift, z, new
    g2 = _sum_ps(jnp.square(g))
    lamb = jnp.asarray(self.lamb, eps.dtype)
    p_drift = drift - g * (_sum_ps(g * drift) / (lamb + g2))
    c = 1.0 - jax.lax.rsqrt(1.0 + g2 / lamb)  # 1 - sqrt(lam / (lam + |g|^2))
    g_unit2 = jnp.maximum(g2, _tiny(eps.dtype))
    p_noise = z - g * (c * _sum_ps(g * z) / g_unit2)
    if self.variant == "normalized":
      n0 = jnp.sqrt(_sum_ps(jnp.square(drift)))
      n1 = jnp.maximum(jnp.sqrt(_sum_ps(jnp.square(p_drift))), _tiny(eps.dtype))
      p_drift = p_drift * (n0 / n1)
    return p_drift, p_noise, new


def langevin(snr: float = 0.16, *, steps: int = 1) -> Langevin:
  """The Langevin corrector with signal-to-noise ratio ``snr`` (see :class:`Langevin`).

  Args:
    snr: Song et al.'s ``r`` (> 0); sets the step size relative to the score's norm.
    steps: Langevin iterations per grid point (each one network evaluation).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxdiff
    >>> from jaxdiff import correctors, schedules, solvers
    >>> from jaxdiff.testing import GaussianMixture
    >>> gmm = GaussianMixture(jnp.array([[-2.0], [2.0]]), 0.1)
    >>> sched = schedules.vp_cosine()
    >>> ts = schedules.timesteps(sched, 5)
    >>> out = jaxdiff.sample(gmm.denoiser(sched), solvers.ddim(), jnp.zeros((3, 1)), ts,
    ...                      key=0, corrector=correctors.langevin(0.1))
    >>> int(out.nfe)  # 5 solver + 5 corrector evaluations (the grid ends at sigma > 0)
    10

  References:
    Song et al., arXiv:2011.13456 (Alg. 4-5).
  """
  return Langevin(snr, steps)


def lml(
  lamb: float = 1.0,
  *,
  snr: float = 0.16,
  kappa: float = 0.0,
  steps: int = 1,
  variant: str = "damped",
) -> LML:
  r"""The Levenberg-Marquardt-Langevin corrector (see :class:`LML`).

  Args:
    lamb: damping :math:`\lambda > 0` (``inf`` allowed: the plain Langevin corrector).
    snr: Song et al.'s ``r`` for the step size.
    kappa: weight in [0, 1) of the previous noise prediction in the rank-one factor.
    steps: Langevin iterations per grid point (each one network evaluation).
    variant: ``"damped"`` (keep :math:`P s`) or ``"normalized"`` (rescale it to
      :math:`\|s\|`, the official code's normalization).

  Example:
    >>> from jaxdiff import correctors
    >>> c = correctors.lml(0.5, kappa=0.5)
    >>> c.lamb, c.kappa, c.evals_per_step
    (0.5, 0.5, 1)

  References:
    Wang et al., arXiv:2505.24222 (ICCV 2025).
  """
  return LML(snr, steps, lamb, kappa, variant)


def none() -> NoCorrector:
  """No corrector (``sample``'s default); see :class:`NoCorrector`.

  Example:
    >>> from jaxdiff import correctors
    >>> correctors.none().evals_per_step
    0
  """
  return NoCorrector()
