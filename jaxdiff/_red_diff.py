"""RED-diff: inverse problems as stochastic optimisation of the mean of a variational posterior."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdiff._grids import Grid, validate_grid
from jaxdiff._operators import Operator, check_operator
from jaxdiff._parameterization import eps_from_x0
from jaxdiff._sampling import _box, _unbox
from jaxdiff._validation import (
  as_key,
  check_batch,
  check_choice,
  check_output,
  check_scalar,
)

Array = jax.Array

WEIGHTINGS = ("sqrt_inv_snr", "inv_snr", "constant")


class RedDiffResult(NamedTuple):
  """What :func:`red_diff` returns.

  Attributes:
    x: the optimised mean ``mu`` (the restoration), shape ``(B, *operator.in_shape)``.
    nfe: network evaluations per sample (one per step).
    loss: ``(N,)`` batch-mean data-fit term ``1/2 ||y - A mu||^2`` before each step.
  """

  x: Array
  nfe: Array
  loss: Array


def red_diff(
  denoise,
  operator: Operator,
  y,
  ts: Grid,
  *,
  key: Any,
  learning_rate=0.1,
  lam=0.25,
  variant: str = "sqrt_inv_snr",
  optimizer: optax.GradientTransformation | None = None,
  init=None,
  cond=None,
) -> RedDiffResult:
  r"""RED-diff: fit the mean of a Gaussian posterior with an optax optimizer, noise to data.

  For the grid's times :math:`t_1 > \dots > t_N` (a fresh noise draw each):

  .. math::
    x_t = \alpha_t\mu + \sigma_t\epsilon,\qquad
    \ell(\mu) = \tfrac12\|y - A\mu\|^2
      + \lambda\,\omega_t\,\big\langle \mathrm{sg}[\hat\epsilon(x_t, t) - \epsilon],\ \mu
      \big\rangle,\qquad \mu \leftarrow \mathrm{opt}(\mu, \nabla_\mu\ell),

  where :math:`\hat\epsilon` is the noise implied by ``denoise`` and ``sg`` stops the
  gradient: the regulariser's gradient is the score-matching residual, no backpropagation
  through the network. ``variant`` sets the SNR-based weight :math:`\omega_t`:
  ``"sqrt_inv_snr"`` (:math:`\sigma_t/\alpha_t`, the paper's choice, Sec. 4.3),
  ``"inv_snr"`` (:math:`\sigma_t^2/\alpha_t^2`) or ``"constant"`` (1).

  The paper's data term is :math:`\|y - A\mu\|^2 / 2\sigma_v^2`; as in its code we leave
  :math:`\sigma_v` out (it rescales ``lam``). The default optimizer is Adam with the
  paper's ``(b1, b2) = (0.9, 0.99)``; any ``optax`` transformation can be passed.
  The loop is one ``lax.scan`` under ``jit``, cached like :func:`jaxdiff.sample`'s (a new
  key, ``y`` or ``init`` does not retrace). Grid points with ``alpha = 0`` get weight 0.

  Args:
    denoise: ``denoise(x, t, cond) -> x0_hat``.
    operator: the measurement :class:`Operator`.
    y: measurements ``(B, *operator.out_shape)``; a concrete NaN or inf raises, a traced
      one (``red_diff`` inside ``jit``) makes the rows it belongs to NaN.
    ts: a grid from :func:`jaxdiff.schedules.timesteps`; its first ``N`` points are used.
    key: PRNG key of the noise draws.
    learning_rate: step size of the default Adam.
    lam: regularisation weight :math:`\lambda \ge 0`.
    variant: the weighting, see above.
    optimizer: an ``optax.GradientTransformation`` (then ``learning_rate`` is unused).
    init: initial mean ``(B, *operator.in_shape)``; default :math:`A^\top y`.
    cond: passed to ``denoise``; batch-first like ``y`` (or ``None``).

  The denoiser's output is checked when the loop is traced, as :func:`jaxdiff.sample`
  checks it: one array of ``x``'s shape and dtype (an error naming ``denoise``, never a
  broadcast into the residual).

  Returns:
    A :class:`RedDiffResult` ``(x, nfe, loss)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import inverse, schedules
    >>> from jaxdiff.testing import GaussianMixture
    >>> gmm = GaussianMixture(jnp.array([[-2.0, 0.0], [2.0, 0.0]]), 0.5)
    >>> sched = schedules.vp_cosine()
    >>> op = inverse.matrix(jnp.array([[1.0, 0.0]]))
    >>> out = inverse.red_diff(gmm.denoiser(sched), op, jnp.full((3, 1), 2.0),
    ...                        schedules.timesteps(sched, 50), key=0)
    >>> bool(jnp.all(jnp.abs(out.x[:, 0] - 2.0) < 0.3)), int(out.nfe)
    (True, 50)

  References:
    Mardani, Song, Kautz & Vahdat, "A Variational Perspective on Solving Inverse Problems
    with Diffusion Models", ICLR 2024, arXiv:2305.04391 (Eq. 8-10, Alg. 1, Sec. 4.3).
  """
  if not callable(denoise):
    raise TypeError(f"red_diff: denoise must be callable, got {type(denoise).__name__}")
  check_operator(operator, "red_diff")
  check_choice("red_diff: variant", variant, WEIGHTINGS)
  check_scalar("red_diff: lam", lam, lo=0.0)
  if optimizer is None:
    lr = check_scalar("red_diff: learning_rate", learning_rate, lo=0.0, lo_open=True)
    optimizer = _default_optimizer(lr) if lr is not None else _adam(learning_rate)
  elif not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(f"red_diff: optimizer must be an optax transformation, got {optimizer!r}")
  ts = validate_grid(ts)
  y = operator.check_measurement(y, None, "red_diff")
  mu0 = operator.T(y) if init is None else jnp.asarray(init)
  if mu0.shape != (y.shape[0], *operator.in_shape):
    raise ValueError(
      f"red_diff: init must have shape {(y.shape[0], *operator.in_shape)} (one per "
      f"measurement), got {mu0.shape}"
    )
  check_batch(cond, y.shape[0], name="cond", like_name="y", where="red_diff")
  parts = _box((denoise, operator, optimizer, variant))
  return _red_diff_jit(parts, y, mu0, ts, as_key(key), jnp.asarray(lam), cond)


def _adam(learning_rate) -> optax.GradientTransformation:
  return optax.adam(learning_rate, b1=0.9, b2=0.99)


# The compiled loop is keyed on the optimizer object: one default per learning rate, so a
# second call with the same settings reuses the compiled program instead of recompiling.
_default_optimizer = functools.lru_cache(maxsize=64)(_adam)


@functools.partial(jax.jit)
def _red_diff_jit(parts, y, mu0, ts, key, lam, cond):
  denoise, operator, optimizer, variant = _unbox(parts)
  n = ts.num_steps

  def weight(alpha, sigma):
    safe = jnp.where(alpha > 0, alpha, 1)
    w = {"sqrt_inv_snr": sigma / safe, "inv_snr": (sigma / safe) ** 2, "constant": 1.0}[variant]
    return jnp.where(alpha > 0, w, 0)

  def body(carry, i):
    mu, opt_state = carry
    alpha, sigma = ts.alpha[i], ts.sigma[i]
    eps = jax.random.normal(jax.random.fold_in(key, i), mu.shape, mu.dtype)
    x_t = alpha * mu + sigma * eps
    x0 = denoise(x_t, jnp.full((mu.shape[0],), ts.t[i]), cond)
    check_output(x0, like=x_t, name="denoise(x, t, cond)", where="red_diff")
    resid = jax.lax.stop_gradient(eps_from_x0(x_t, x0, alpha, sigma) - eps)

    def loss(m):
      fit = 0.5 * jnp.sum((operator(m) - y) ** 2)
      return fit + lam * weight(alpha, sigma) * jnp.sum(resid * m), fit

    (_, fit), grad = jax.value_and_grad(loss, has_aux=True)(mu)
    updates, opt_state = optimizer.update(grad, opt_state, mu)
    return (optax.apply_updates(mu, updates), opt_state), fit / mu.shape[0]

  carry = (mu0, optimizer.init(mu0))
  (mu, _), fits = jax.lax.scan(body, carry, jnp.arange(n, dtype=jnp.int32))
  return RedDiffResult(mu, jnp.asarray(n, jnp.int32), fits)
