r"""Multiplicative diffusion: geometric Brownian motion, multiplicative DSM, Dale-Langevin.

Shetty, Prasath & Seelamantula, "Dale meets Langevin: A Multiplicative Denoising Diffusion
Model", arXiv:2510.02730. The forward process is a geometric Brownian motion (GBM) on
positive data, componentwise

.. math::
  dX_t = \mu X_t\,dt + \sigma(t) X_t\,dW_t
  \quad\Longleftrightarrow\quad
  d\log X_t = \big(\mu - \tfrac12\sigma(t)^2\big)dt + \sigma(t)\,dW_t,

so :math:`\log X_t \mid x_0 \sim \mathcal N(\log x_0 + m(t), s(t)^2)` with
:math:`s(t)^2 = \int_0^t \sigma^2` and :math:`m(t) = \mu t - s(t)^2/2`: every marginal of
a log-normal (mixture) start is a log-normal (mixture). The quantity the reverse process
needs is the Hyvarinen score :math:`h_t(x) = x \odot \nabla_x \log p_t(x)`
(:math:`= \nabla_{\log x} \log p_t - 1`), fitted by multiplicative denoising score
matching (:func:`mdsm_loss`) and used by the two samplers of :func:`sample`.

Only the abstract of the paper was readable here; the method is derived from it from first
principles (Ito's lemma, Anderson's time reversal). What is assumed, and switchable, is
stated where it enters: the volatility schedule (:func:`gbm`, :func:`gbm_geometric`), the
loss weighting (``weighting=``) and the discretisation (``variant=``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._gmm import GaussianMixture
from jaxdiff._validation import (
  as_key,
  check_choice,
  check_finite,
  check_output,
  check_scalar,
  is_traced,
  poison,
)

Array = jax.Array

SAMPLERS = ("dale_langevin", "ambient")
WEIGHTINGS = ("variance", "none")


def _static(**kw):
  return dataclasses.field(metadata={"static": True}, **kw)


class _GBM:
  """Shared formulas: the log-space mean and standard deviation from the variance."""

  mu: float
  t_max: float

  def log_variance(self, t) -> Array:  # pragma: no cover - abstract
    raise NotImplementedError

  def volatility(self, t) -> Array:  # pragma: no cover - abstract
    raise NotImplementedError

  def log_mean(self, t) -> Array:
    r""":math:`m(t) = \mu t - s(t)^2 / 2`, the mean of :math:`\log(X_t / x_0)`."""
    t = jnp.asarray(t)
    return self.mu * t - 0.5 * self.log_variance(t)

  def log_std(self, t) -> Array:
    """:math:`s(t)`, the standard deviation of ``log(X_t / x_0)``."""
    return jnp.sqrt(self.log_variance(t))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ConstantGBM(_GBM):
  r"""GBM with constant volatility: :math:`\sigma(t) = \sigma`, :math:`s(t)^2 = \sigma^2 t`.

  Built by :func:`gbm`; a pytree whose ``sigma`` and ``mu`` are leaves.

  Example:
    >>> from jaxdiff import multiplicative
    >>> float(multiplicative.ConstantGBM(sigma=0.5).log_variance(2.0))
    0.5
  """

  sigma: float
  mu: float = 0.0
  t_max: float = _static(default=1.0)

  def log_variance(self, t) -> Array:
    return self.sigma**2 * jnp.asarray(t)

  def volatility(self, t) -> Array:
    return jnp.full(jnp.shape(t), self.sigma, jnp.result_type(t, float))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GeometricGBM(_GBM):
  r"""GBM whose log-space noise grows geometrically (the VE schedule of Song et al. in
  :math:`\log x`): :math:`s(t)^2 = \sigma_{\min}^2 (r^{2t} - 1)`, :math:`r =
  \sigma_{\max}/\sigma_{\min}`, :math:`\sigma(t)^2 = 2\log r\,\sigma_{\min}^2 r^{2t}`.

  Built by :func:`gbm_geometric`; a pytree whose parameters are leaves.

  Example:
    >>> from jaxdiff import multiplicative
    >>> g = multiplicative.GeometricGBM(sigma_min=0.1, sigma_max=10.0)
    >>> print(round(float(g.log_std(1.0)), 4))  # 0.1 * sqrt(100^2 - 1)
    9.9995
  """

  sigma_min: float
  sigma_max: float
  mu: float = 0.0
  t_max: float = _static(default=1.0)

  def _log_r(self):
    return jnp.log(self.sigma_max / self.sigma_min)

  def log_variance(self, t) -> Array:
    return self.sigma_min**2 * jnp.expm1(2.0 * self._log_r() * jnp.asarray(t))

  def volatility(self, t) -> Array:
    lr = self._log_r()
    return self.sigma_min * jnp.sqrt(2.0 * lr) * jnp.exp(lr * jnp.asarray(t))


def gbm(sigma: float = 1.0, *, mu: float = 0.0, t_max: float = 1.0) -> ConstantGBM:
  r"""The geometric Brownian motion :math:`dX = \mu X\,dt + \sigma X\,dW` on :math:`[0, T]`.

  .. math::
    \log X_t \mid x_0 \sim \mathcal N\big(\log x_0 + (\mu - \tfrac12\sigma^2)t,\ \sigma^2 t\big).

  Args:
    sigma: the volatility :math:`\sigma > 0`.
    mu: the drift :math:`\mu` (default 0: :math:`X_t` is a martingale,
      :math:`\mathbb E[X_t \mid x_0] = x_0`).
    t_max: the horizon :math:`T > 0`.

  Returns:
    A :class:`ConstantGBM` (a pytree; ``sigma``, ``mu`` are leaves).

  Example:
    >>> from jaxdiff import multiplicative
    >>> g = multiplicative.gbm(2.0)
    >>> float(g.log_std(1.0)), float(g.log_mean(1.0))
    (2.0, -2.0)

  References:
    Shetty, Prasath & Seelamantula, "Dale meets Langevin: A Multiplicative Denoising
    Diffusion Model", arXiv:2510.02730 (the GBM forward process).
  """
  check_scalar("sigma", sigma, lo=0.0, lo_open=True)
  check_scalar("mu", mu)
  t_max = check_scalar("t_max", t_max, lo=0.0, lo_open=True, static=True)
  return ConstantGBM(sigma=sigma, mu=mu, t_max=float(t_max))


def gbm_geometric(
  sigma_min: float = 0.01, sigma_max: float = 10.0, *, mu: float = 0.0
) -> GeometricGBM:
  r"""A GBM with geometrically growing volatility on :math:`[0, 1]` (VE in :math:`\log x`).

  .. math::
    dX = \mu X\,dt + \sigma(t) X\,dW,\qquad
    s(t)^2 = \int_0^t \sigma^2 = \sigma_{\min}^2\big((\sigma_{\max}/\sigma_{\min})^{2t}
      - 1\big),

  so :math:`\log X_t` is :math:`\log x_0` plus Song et al.'s variance-exploding noise
  (:math:`s(1) \approx \sigma_{\max}`) plus the drift :math:`\mu t - s(t)^2/2`. The paper's
  schedule could not be read; this is an assumption, the natural one for images.

  Args:
    sigma_min: :math:`\sigma_{\min} > 0`.
    sigma_max: :math:`\sigma_{\max} > \sigma_{\min}`.
    mu: the drift :math:`\mu`.

  Returns:
    A :class:`GeometricGBM` (a pytree).

  Example:
    >>> from jaxdiff import multiplicative
    >>> print(round(float(multiplicative.gbm_geometric(0.01, 5.0).log_std(1.0)), 4))
    5.0

  References:
    Shetty, Prasath & Seelamantula, arXiv:2510.02730; Song et al., "Score-Based Generative
    Modeling through Stochastic Differential Equations", ICLR 2021 (the VE schedule).
  """
  lo = check_scalar("sigma_min", sigma_min, lo=0.0, lo_open=True)
  hi = check_scalar("sigma_max", sigma_max, lo=0.0, lo_open=True)
  if lo is not None and hi is not None and not hi > lo:
    raise ValueError(f"sigma_max must be greater than sigma_min={lo}, got {hi}")
  check_scalar("mu", mu)
  return GeometricGBM(sigma_min=sigma_min, sigma_max=sigma_max, mu=mu)


def _check_schedule(schedule) -> None:
  if not isinstance(schedule, _GBM):
    raise TypeError(
      "schedule must be a GBM schedule from multiplicative.gbm or multiplicative.gbm_geometric, "
      f"got {type(schedule).__name__}"
    )


def _check_positive(name: str, x) -> Array:
  """``x`` as a float array; concrete entries must be finite and positive."""
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise TypeError(f"{name} must be a floating array, got dtype {jnp.result_type(x)}")
  x = jnp.asarray(x)
  if x.ndim < 1:
    raise ValueError(f"{name} must have a leading batch axis, got shape {x.shape}")
  if not is_traced(x):
    check_finite(name, x)
    arr = np.asarray(x)
    if not (arr > 0).all():
      i = np.unravel_index(int(np.argmax(~(arr > 0).reshape(-1))), arr.shape)
      raise ValueError(
        f"{name} must be positive (the GBM acts on positive data), got {arr[i]} at index "
        f"{tuple(int(j) for j in i)}"
      )
  return x


def _rows_positive(x: Array) -> Array:
  return jnp.all((x > 0).reshape(x.shape[0], -1), axis=1)


def _batch_times(name: str, t, batch: int, dtype, t_max: float) -> Array:
  t = jnp.asarray(t, dtype)
  if t.ndim == 0:
    t = jnp.full((batch,), t)
  if t.shape != (batch,):
    raise ValueError(f"{name} must be a scalar or have shape ({batch},), got {t.shape}")
  if not is_traced(t):
    arr = np.asarray(t)
    if not (np.isfinite(arr).all() and (arr >= 0).all() and (arr <= t_max).all()):
      bad = arr[~(np.isfinite(arr) & (arr >= 0) & (arr <= t_max))][0]
      raise ValueError(f"{name} must lie in [0, t_max={t_max}], got {bad}")
  return t


def _expand(v: Array, x: Array) -> Array:
  return v.reshape(v.shape + (1,) * (x.ndim - 1))


def perturb(x0, t, *, schedule, key) -> Array:
  r"""A draw of the GBM at time ``t`` from positive data ``x0`` (exact, no discretisation).

  .. math::
    x_t = x_0 \odot \exp\big(m(t) + s(t)\,\varepsilon\big),\qquad
    \varepsilon \sim \mathcal N(0, I).

  Args:
    x0: positive data ``(B, ...)``.
    t: a time in ``[0, t_max]``, scalar or ``(B,)``.
    schedule: a GBM schedule (:func:`gbm`, :func:`gbm_geometric`).
    key: PRNG key (keyword-only: typed key, raw key or int seed).

  Returns:
    ``x_t``, shaped like ``x0``; rows of a traced ``x0`` with a non-positive entry are NaN.

  Raises:
    ValueError: concrete ``x0`` not positive or not finite; ``t`` outside ``[0, t_max]``.
    TypeError: a non-floating ``x0``; a bad ``key`` or ``schedule``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import multiplicative
    >>> xt = multiplicative.perturb(jnp.ones((3, 2)), 0.5, schedule=multiplicative.gbm(), key=0)
    >>> bool((xt > 0).all())
    True

  References:
    Shetty, Prasath & Seelamantula, arXiv:2510.02730 (the GBM forward process).
  """
  _check_schedule(schedule)
  key = as_key(key)
  x0 = _check_positive("x0", x0)
  t = _batch_times("t", t, x0.shape[0], x0.dtype, schedule.t_max)
  eps = jax.random.normal(key, x0.shape, x0.dtype)
  m, s = _expand(schedule.log_mean(t), x0), _expand(schedule.log_std(t), x0)
  return poison(x0 * jnp.exp(m + s * eps), _rows_positive(x0))


def mdsm_loss(score_fn, x0, t, *, schedule, key, weighting: str = "variance") -> Array:
  r"""Multiplicative denoising score matching: regress the Hyvarinen score of the GBM.

  With :math:`\log x_t = \log x_0 + m(t) + s(t)\varepsilon`, the conditional Hyvarinen
  score is :math:`x_t \odot \nabla_{x_t}\log p(x_t \mid x_0) = -\varepsilon / s(t) - 1`,
  and the loss (a mean over the batch and the entries) is

  .. math::
    \mathcal L(h) = \mathbb E\,\lambda(t)\,\big\| h(x_t, t) + 1 + \varepsilon / s(t)\big\|^2,

  with :math:`\lambda = s(t)^2` (``"variance"``, default: the form
  :math:`\|s(h + 1) + \varepsilon\|^2`, finite at :math:`t = 0`) or :math:`\lambda = 1`
  (``"none"``). Because the weight :math:`x^2` of the multiplicative explicit loss
  :math:`\mathbb E\|x \odot (s_\theta - \nabla\log p_t)\|^2` is a function of :math:`x_t`
  only, Vincent's argument carries over: the minimiser is the Hyvarinen score
  :math:`h_t(x) = x \odot \nabla\log p_t(x)` of the marginal (Hyvarinen's non-negative score
  matching, 2007, is the explicit loss at one noise level). The paper's exact weighting
  could not be read; both are documented choices.

  Args:
    score_fn: ``h(x, t)``: positive ``x`` ``(B, ...)`` and times ``(B,)`` to an array shaped
      and typed like ``x`` (the Hyvarinen score, not the Stein score).
    x0: positive data ``(B, ...)``.
    t: times in ``[0, t_max]`` (``(0, t_max]`` for ``weighting="none"``), scalar or ``(B,)``.
    schedule: a GBM schedule (:func:`gbm`, :func:`gbm_geometric`).
    key: PRNG key for :math:`\varepsilon` (keyword-only).
    weighting: ``"variance"`` or ``"none"``.

  Returns:
    The scalar loss; NaN (documented poison) if a traced ``x0`` has a non-positive entry.

  Raises:
    ValueError: concrete ``x0`` not positive or not finite; ``t`` out of range; a bad
      ``weighting``; a ``score_fn`` output of the wrong shape.
    TypeError: a non-floating ``x0``; a bad ``key``/``schedule``; a ``score_fn`` output that
      is not one array of ``x``'s dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import multiplicative
    >>> g = multiplicative.gbm(1.0)
    >>> x0 = jnp.exp(jnp.linspace(-1.0, 1.0, 512))[:, None]
    >>> def loss(c):  # a constant Hyvarinen score c: loss = s^2 (c + 1)^2 + E[eps^2]
    ...   h = lambda x, t: jnp.full_like(x, c)
    ...   return round(float(multiplicative.mdsm_loss(h, x0, 0.5, schedule=g, key=0)), 1)
    >>> loss(-1.0), loss(0.0)
    (1.0, 1.5)

  References:
    Shetty, Prasath & Seelamantula, arXiv:2510.02730 (M-DSM); Vincent, "A Connection
    Between Score Matching and Denoising Autoencoders", 2011; Hyvarinen, "Some extensions of
    score matching", 2007 (non-negative data).
  """
  _check_schedule(schedule)
  weighting = check_choice("weighting", weighting, WEIGHTINGS)
  key = as_key(key)
  x0 = _check_positive("x0", x0)
  t = _batch_times("t", t, x0.shape[0], x0.dtype, schedule.t_max)
  if weighting == "none" and not is_traced(t) and not bool(np.all(np.asarray(t) > 0)):
    raise ValueError('t must be positive for weighting="none" (the target is -eps / s(t) - 1)')
  eps = jax.random.normal(key, x0.shape, x0.dtype)
  m, s = _expand(schedule.log_mean(t), x0), _expand(schedule.log_std(t), x0)
  xt = x0 * jnp.exp(m + s * eps)
  h = check_output(score_fn(xt, t), like=xt, name="score_fn(x, t)", where="mdsm_loss")
  r = s * (h + 1.0) + eps if weighting == "variance" else h + 1.0 + eps / s
  per_row = jnp.mean((r**2).reshape(x0.shape[0], -1), axis=1)
  return jnp.mean(poison(per_row, _rows_positive(x0)))


def log_normal_prior(shape, *, schedule, key, log_mean=0.0, log_std=0.0, dtype=None) -> Array:
  r"""The log-normal start of the reverse process at :math:`t = T`.

  .. math::
    \log x_T \sim \mathcal N\big(a + m(T),\ b^2 + s(T)^2\big),

  the exact GBM marginal when :math:`\log x_0 \sim \mathcal N(a, b^2)` (``log_mean`` :math:`a`,
  ``log_std`` :math:`b`, e.g. the data's log-space mean and spread; scalars or arrays
  broadcastable to a sample's shape), and close to it for any data once :math:`s(T)`
  dominates their log-space spread.

  Args:
    shape: the output shape ``(B, ...)``.
    schedule: a GBM schedule.
    key: PRNG key (keyword-only).
    log_mean: :math:`a`.
    log_std: :math:`b \ge 0`.
    dtype: floating dtype; default the default float.

  Returns:
    Positive samples of shape ``shape``.

  Example:
    >>> from jaxdiff import multiplicative
    >>> x = multiplicative.log_normal_prior((4, 3), schedule=multiplicative.gbm(), key=0)
    >>> x.shape, bool((x > 0).all())
    ((4, 3), True)

  References:
    Shetty, Prasath & Seelamantula, arXiv:2510.02730 (log-normal start).
  """
  _check_schedule(schedule)
  key = as_key(key)
  shape = tuple(shape)
  if len(shape) < 1 or not all(isinstance(n, (int, np.integer)) and n >= 1 for n in shape):
    raise ValueError(f"shape must be a tuple of positive ints (B, ...), got {shape}")
  dtype = jnp.dtype(dtype or jnp.result_type(float))
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"dtype must be a floating dtype, got {dtype}")
  check_finite("log_mean", log_mean)
  check_finite("log_std", log_std)
  if not is_traced(log_std) and not bool(np.all(np.asarray(log_std) >= 0)):
    raise ValueError(f"log_std must be >= 0, got {np.asarray(log_std).min()}")
  t = jnp.asarray(schedule.t_max, dtype)
  std = jnp.sqrt(jnp.asarray(log_std, dtype) ** 2 + schedule.log_variance(t))
  z = jax.random.normal(key, shape, dtype)
  return jnp.exp(jnp.asarray(log_mean, dtype) + schedule.log_mean(t) + std * z)


def sample(
  score_fn,
  x_init,
  *,
  schedule,
  num_steps: int,
  key,
  t_min: float = 1e-3,
  variant: str = "dale_langevin",
) -> Array:
  r"""The reverse-time GBM, discretised on a uniform grid from ``t_max`` to ``t_min``.

  Anderson's reversal of :math:`dX = \mu X dt + \sigma X dW` (diffusion
  :math:`\sigma^2\mathrm{diag}(x)^2`, whose divergence is :math:`2\sigma^2 x`) runs in reverse
  time :math:`\tau` as :math:`dX = X\odot(2\sigma^2 - \mu + \sigma^2 h)\,d\tau + \sigma X\,dW`,
  with :math:`h = x\odot\nabla\log p_t` the Hyvarinen score; in :math:`\log x` (the Lamperti
  transform) the diffusion is constant and the drift is
  :math:`\sigma^2(h + \tfrac32) - \mu`. Euler-Maruyama on each, with
  :math:`\Delta = t_k - t_{k+1}`, :math:`\sigma_k = \sigma(t_k)`, :math:`z_k \sim \mathcal
  N(0, I)`:

  .. math::
    \text{dale\_langevin:}\ x_{k+1} = x_k \odot \exp\big(\Delta(\sigma_k^2(h_k + \tfrac32)
      - \mu) + \sigma_k\sqrt\Delta\,z_k\big),\\
    \text{ambient:}\ x_{k+1} = x_k \odot \big(1 + \Delta(\sigma_k^2(h_k + 2) - \mu)
      + \sigma_k\sqrt\Delta\,z_k\big),

  :math:`h_k = h(x_k, t_k)`. The Dale-Langevin step is an exponentiated-gradient step on
  :math:`\log p_t` with noise (:func:`optim.exponentiated_gradient`, ``variant="log"``, plus
  Langevin noise) and keeps every sign; the ambient (sign-agnostic) step can leave the
  positive orthant when :math:`\sigma_k\sqrt\Delta` is not small. A ``lax.scan`` over the
  steps: jit-able, and vmap-able over keys.

  Args:
    score_fn: ``h(x, t)``: ``x`` ``(B, ...)``, ``t`` ``(B,)`` to an array like ``x``.
    x_init: positive start at ``t_max`` ``(B, ...)`` (:func:`log_normal_prior`).
    schedule: a GBM schedule.
    num_steps: number of steps (an int >= 1).
    key: PRNG key for the noise (keyword-only); step ``k`` uses ``split(key, num_steps)[k]``.
    t_min: the last time, in ``[0, t_max)``.
    variant: ``"dale_langevin"`` (default, sign-preserving) or ``"ambient"``.

  Returns:
    The samples at ``t_min``, shaped like ``x_init``; rows of a traced ``x_init`` with a
    non-positive entry are NaN.

  Raises:
    ValueError: concrete ``x_init`` not positive or not finite; bad ``num_steps``,
      ``t_min`` or ``variant``; a ``score_fn`` output of the wrong shape.
    TypeError: a non-floating ``x_init``; a bad ``key`` or ``schedule``; a ``score_fn``
      output of the wrong dtype.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff import multiplicative
    >>> g = multiplicative.gbm(1.0)
    >>> # data log x0 ~ N(0, 1): h_t(x) = -(log x - m(t)) / (1 + s(t)^2) - 1
    >>> h = lambda x, t: -(jnp.log(x) - g.log_mean(t)[:, None]) / (1 + g.log_variance(t)[:, None]) - 1
    >>> x_T = multiplicative.log_normal_prior((4000, 1), schedule=g, key=0, log_std=1.0)
    >>> x = multiplicative.sample(h, x_T, schedule=g, num_steps=200, key=1)
    >>> print(jnp.round(jnp.std(jnp.log(x)), 1))
    1.0

  References:
    Shetty, Prasath & Seelamantula, arXiv:2510.02730 (sign-agnostic and Dale-Langevin
    samplers); Anderson, "Reverse-time diffusion equation models", 1982.
  """  # noqa: E501 - the doctest's closed-form score
  _check_schedule(schedule)
  variant = check_choice("variant", variant, SAMPLERS)
  num_steps = check_scalar("num_steps", num_steps, lo=1, integer=True, static=True)
  t_max = schedule.t_max
  t_min = check_scalar("t_min", t_min, lo=0.0, hi=t_max, hi_open=True, static=True)
  key = as_key(key)
  x = _check_positive("x_init", x_init)
  dtype, batch = x.dtype, x.shape[0]
  grid = jnp.linspace(t_max, t_min, num_steps + 1, dtype=dtype)
  keys = jax.random.split(key, num_steps)
  mu = jnp.asarray(schedule.mu, dtype)

  def step(x, inp):
    t, t_next, k = inp
    dt = t - t_next
    vol = schedule.volatility(t).astype(dtype)
    h = check_output(
      score_fn(x, jnp.full((batch,), t)), like=x, name="score_fn(x, t)", where="sample"
    )
    z = jax.random.normal(k, x.shape, dtype)
    if variant == "dale_langevin":
      x = x * jnp.exp(dt * (vol**2 * (h + 1.5) - mu) + vol * jnp.sqrt(dt) * z)
    else:
      x = x * (1.0 + dt * (vol**2 * (h + 2.0) - mu) + vol * jnp.sqrt(dt) * z)
    return x, None

  out, _ = jax.lax.scan(step, x, (grid[:-1], grid[1:], keys))
  return poison(out, _rows_positive(x))


@jax.tree_util.register_pytree_node_class
class LogNormalMixture:
  r"""The pushforward of a Gaussian mixture through ``exp``: an exact GBM testbed.

  If :math:`\log x_0 \sim \sum_k w_k\mathcal N(\mu_k, \Sigma_k)`, the GBM marginal is
  :math:`\log x_t \sim \sum_k w_k \mathcal N(\mu_k + m(t), \Sigma_k + s(t)^2 I)`: the same
  mixture noised with :math:`\alpha = 1`, :math:`\sigma = s(t)` and shifted by :math:`m(t)`.
  By the change of variables :math:`y = \log x`,

  .. math::
    \log p_t(x) = \log q_t(y) - \textstyle\sum_i y_i,\qquad
    h_t(x) = x \odot \nabla_x \log p_t(x) = \nabla_y \log q_t(y) - 1,

  with :math:`q_t` the noised Gaussian mixture (computed by :class:`GaussianMixture`).

  Args:
    log_mixture: the :class:`jaxdiff.testing.GaussianMixture` of :math:`\log x_0`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import multiplicative
    >>> from jaxdiff.testing import GaussianMixture, LogNormalMixture
    >>> lnm = LogNormalMixture(GaussianMixture(jnp.array([[0.0]]), 1.0))
    >>> g = multiplicative.gbm(1.0)
    >>> # log x_t ~ N(m(t), 1 + s(t)^2): at x = exp(m(t)) the Hyvarinen score is -1
    >>> lnm.hyvarinen_score(jnp.exp(g.log_mean(0.5)).reshape(1, 1), 0.5, g).tolist()
    [[-1.0]]

  References:
    Shetty, Prasath & Seelamantula, arXiv:2510.02730 (log-normal data under GBM).
  """

  def __init__(self, log_mixture: GaussianMixture):
    if not isinstance(log_mixture, GaussianMixture):
      raise TypeError(
        f"log_mixture must be a jaxdiff.testing.GaussianMixture, got {type(log_mixture).__name__}"
      )
    self.log_mixture = log_mixture

  def tree_flatten(self):
    return (self.log_mixture,), None

  @classmethod
  def tree_unflatten(cls, aux, children):
    obj = object.__new__(cls)
    (obj.log_mixture,) = children
    return obj

  @property
  def dim(self) -> int:
    return self.log_mixture.dim

  def sample(self, key, n: int) -> Array:
    """Exact samples ``(n, D)`` of :math:`x_0 = \\exp(y_0)`."""
    return jnp.exp(self.log_mixture.sample(key, n))

  def _logs(self, x, t, schedule):
    _check_schedule(schedule)
    x = _check_positive("x", x)
    y = jnp.log(self.log_mixture._flat(x))
    t = _batch_times("t", t, x.shape[0], y.dtype, schedule.t_max)
    return x, y, schedule.log_mean(t)[:, None], schedule.log_std(t)

  def marginal_log_prob(self, x, t, schedule) -> Array:
    """``log p_t(x)`` of the GBM marginal at time ``t`` (scalar or ``(B,)``), ``(B,)``."""
    _, y, m, s = self._logs(x, t, schedule)
    return self.log_mixture.marginal_log_prob(y - m, 1.0, s) - jnp.sum(y, axis=1)

  def log_prob(self, x) -> Array:
    """``log p_0(x)`` of the data, ``(B,)``."""
    y = jnp.log(self.log_mixture._flat(_check_positive("x", x)))
    return self.log_mixture.log_prob(y) - jnp.sum(y, axis=1)

  def hyvarinen_score(self, x, t, schedule) -> Array:
    """Exact :math:`h_t(x) = x \\odot \\nabla_x \\log p_t(x)`, shaped like ``x``."""
    x, y, m, s = self._logs(x, t, schedule)

    def logq(y):  # each row depends on its own y only: the gradient of the sum is per row
      return jnp.sum(self.log_mixture.marginal_log_prob(y - m, 1.0, s))

    return (jax.grad(logq)(y) - 1.0).reshape(x.shape).astype(x.dtype)
