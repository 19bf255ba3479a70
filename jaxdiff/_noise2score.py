"""Noise2Score: Tweedie's formula for exponential-family noise, and AR-DAE score estimation.

Kim & Ye, "Noise2Score: Tweedie's Approach to Self-Supervised Image Denoising without Clean
Images", NeurIPS 2021 (https://arxiv.org/abs/2106.07009). A network ``R(y) ~ grad log p(y)``
is fitted to the noisy images alone by the amortized residual denoising autoencoder loss
(:func:`ardae_loss`); the denoised image is then a closed-form function of ``y`` and that
score, one per noise model (:func:`tweedie_gaussian`, :func:`tweedie_poisson`,
:func:`tweedie_gamma`), the forms of the paper's Table 1 and of the official code
(github.com/cubeyoung/Noise2Score, ``models/*_model.py``).

Every formula is elementwise in ``(y, score)`` and follows their broadcast shape and dtype.
Concrete inputs outside a formula's domain raise a ``ValueError`` naming the argument;
traced inputs (under ``jit``) cannot raise, and the entries outside the domain are NaN
(a documented poison), never a plausible value.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._validation import as_key, check_finite, check_scalar, is_traced

Array = jax.Array


def _operands(y, score) -> tuple[Array, Array]:
  """``y`` and ``score`` as inexact arrays of one dtype, finite where concrete."""
  for name, value in (("y", y), ("score", score)):
    if not jnp.issubdtype(jnp.result_type(value), jnp.number) or jnp.issubdtype(
      jnp.result_type(value), jnp.complexfloating
    ):
      raise TypeError(f"{name} must be a real array, got dtype {jnp.result_type(value)}")
    check_finite(name, value)
  try:
    jnp.broadcast_shapes(jnp.shape(y), jnp.shape(score))
  except ValueError:
    raise ValueError(
      f"score must be broadcastable with y's shape {jnp.shape(y)}, got shape {jnp.shape(score)}"
    ) from None
  # A weak Python float: integers promote to the default float, bf16/f32/f64 stay as they are.
  dtype = jnp.result_type(y, score, 1.0)
  return jnp.asarray(y, dtype), jnp.asarray(score, dtype)


def _check_where(name: str, value, ok_fn, expected: str, got: str = "") -> None:
  """A concrete ``value`` with an entry where ``ok_fn`` fails is a ``ValueError``."""
  if is_traced(value):
    return
  arr = np.asarray(value)
  ok = np.broadcast_to(ok_fn(arr), arr.shape)
  if ok.all():
    return
  i = np.unravel_index(int(np.argmax(~ok.reshape(-1))), ok.shape)
  at = f" at index {tuple(int(j) for j in i)}" if arr.ndim else ""
  raise ValueError(f"{name} must be {expected}, got {got}{arr[i]}{at}")


def _nan_where(out: Array, bad: Array) -> Array:
  # A product, not a where on out, so that the gradient is NaN too (the label policy's poison).
  return out * jnp.where(bad, jnp.asarray(jnp.nan, out.dtype), jnp.ones((), out.dtype))


def tweedie_gaussian(y, score, *, sigma) -> Array:
  r"""The posterior mean under additive Gaussian noise from the score of the noisy density.

  For :math:`y = x + \sigma n`, :math:`n \sim \mathcal N(0, I)`, Tweedie's formula (Kim &
  Ye 2021, Table 1) is exact for any prior on :math:`x`:

  .. math::
    \hat x = \mathbb E[x \mid y] = y + \sigma^2 \ell'(y),\qquad \ell'(y) = \nabla_y \log p(y).

  Args:
    y: the noisy observation, any shape.
    score: :math:`\nabla_y \log p(y)` at ``y`` (the trained network's output), broadcastable
      with ``y``; finite where concrete.
    sigma: the noise standard deviation, a scalar :math:`\ge 0`. A traced ``sigma`` is not
      checked.

  Returns:
    The denoised estimate, shaped like ``y + score``.

  Raises:
    ValueError: a concrete ``sigma`` outside :math:`[0, \infty)`, non-finite concrete
      ``y`` / ``score``, or shapes that do not broadcast.
    TypeError: non-real ``y`` / ``score``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import noise2score
    >>> # prior N(0, 1), sigma = 1: p(y) = N(0, 2), score -y / 2, posterior mean y / 2
    >>> y = jnp.array([2.0, -1.0])
    >>> noise2score.tweedie_gaussian(y, -y / 2, sigma=1.0)
    Array([ 1. , -0.5], dtype=float32)

  References:
    Kim & Ye, "Noise2Score: Tweedie's Approach to Self-Supervised Image Denoising without
    Clean Images", NeurIPS 2021, https://arxiv.org/abs/2106.07009 (Table 1); Efron, "Tweedie's
    formula and selection bias", JASA 2011.
  """
  check_scalar("sigma", sigma, lo=0.0)
  y, score = _operands(y, score)
  sigma = jnp.asarray(sigma, y.dtype)
  return y + sigma**2 * score


def tweedie_poisson(y, score, *, zeta) -> Array:
  r"""The Noise2Score estimate under Poisson noise from the score of the noisy density.

  For :math:`y = \zeta z`, :math:`z \sim \mathrm{Poisson}(x / \zeta)` (``zeta`` the gain;
  the paper's 0.01 and 0.05), the paper (Table 1; the official code's ``PoissonModel``) takes

  .. math::
    \hat x = \Big(y + \frac{\zeta}{2}\Big)\exp\big(\zeta\,\ell'(y)\big),
    \qquad \ell'(y) = \partial_y \log p(y),

  Tweedie's formula for the natural parameter :math:`\log(x/\zeta)` with the log-base-measure
  term :math:`\partial_z \log\Gamma(z + 1) = \psi(z + 1)` replaced by
  :math:`\log(z + \tfrac12)`. With :math:`p` extended to real counts, the exact identity is
  :math:`\mathbb E[\log x \mid y] = \log\zeta + \zeta\ell'(y) + \psi(y/\zeta + 1)`, so the
  estimate is :math:`\exp\mathbb E[\log x \mid y]` up to a relative
  :math:`O((y/\zeta + \tfrac12)^{-2})`: a geometric posterior mean, within
  :math:`O(\zeta / y)` of :math:`\mathbb E[x \mid y]`.

  Args:
    y: the noisy observation :math:`\zeta z` (``z`` counts), :math:`\ge 0`.
    score: :math:`\partial_y \log p(y)` at ``y``, broadcastable with ``y``; finite where
      concrete.
    zeta: the gain, a scalar :math:`> 0`. A traced ``zeta`` is not checked.

  Returns:
    The denoised estimate, shaped like ``y + score``; NaN where a traced ``y`` is negative.

  Raises:
    ValueError: concrete ``y`` with a negative entry, a concrete ``zeta`` :math:`\le 0`,
      non-finite concrete ``y`` / ``score``.
    TypeError: non-real ``y`` / ``score``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import noise2score
    >>> # zero score: the estimate is the observation shifted by half a count
    >>> noise2score.tweedie_poisson(jnp.array([0.0, 1.0]), jnp.zeros(2), zeta=0.5)
    Array([0.25, 1.25], dtype=float32)

  References:
    Kim & Ye, "Noise2Score: Tweedie's Approach to Self-Supervised Image Denoising without
    Clean Images", NeurIPS 2021, https://arxiv.org/abs/2106.07009 (Table 1).
  """
  check_scalar("zeta", zeta, lo=0.0, lo_open=True)
  _check_where("y", y, lambda a: a >= 0, "non-negative (y = zeta * counts)")
  y, score = _operands(y, score)
  zeta = jnp.asarray(zeta, y.dtype)
  out = (y + zeta / 2) * jnp.exp(zeta * score)
  return _nan_where(out, jnp.broadcast_to(y < 0, out.shape))


def tweedie_gamma(y, score, *, k) -> Array:
  r"""The Noise2Score estimate under multiplicative Gamma noise from the noisy score.

  For :math:`y \mid x \sim \mathrm{Gamma}(k, \text{rate } k / x)` (mean :math:`x`, variance
  :math:`x^2 / k`; the paper's :math:`k = 100`), Tweedie's formula for the natural parameter
  :math:`-k / x` gives :math:`\mathbb E[1/x \mid y] = ((k - 1) - y\ell'(y)) / (k y)`, and the
  paper (Table 1; the official code's ``GammaModel``) takes its reciprocal:

  .. math::
    \hat x = \frac{k\,y}{(k - 1) - y\,\ell'(y)} = \frac{1}{\mathbb E[1/x \mid y]},

  the harmonic posterior mean (exact as such for any prior; with an inverse-Gamma
  :math:`(a, b)` prior it is :math:`(b + k y) / (a + k)`, against
  :math:`\mathbb E[x \mid y] = (b + k y) / (a + k - 1)`).

  Args:
    y: the noisy observation, :math:`> 0`.
    score: :math:`\partial_y \log p(y)` at ``y``, broadcastable with ``y``; finite where
      concrete.
    k: the Gamma shape (noise level: variance :math:`x^2/k`), a scalar :math:`> 0`. A traced
      ``k`` is not checked.

  Returns:
    The denoised estimate, shaped like ``y + score``. NaN (documented poison) where a traced
    ``y`` is not positive or the denominator :math:`(k - 1) - y\ell'(y)` is not positive
    (no positive :math:`\mathbb E[1/x \mid y]` has such a score: the score is wrong there).

  Raises:
    ValueError: concrete ``y`` with a non-positive entry; concrete ``y`` and ``score`` whose
      denominator is not positive; a concrete ``k`` :math:`\le 0`; non-finite concrete
      ``y`` / ``score``.
    TypeError: non-real ``y`` / ``score``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import noise2score
    >>> # inverse-Gamma(a=3, b=2) prior, k = 10: x_hat = (b + k y) / (a + k)
    >>> y = jnp.array([0.5, 2.0])
    >>> score = (10 - 1) / y - 10 * (3 + 10) / (2 + 10 * y)
    >>> print(noise2score.tweedie_gamma(y, score, k=10.0).round(4))  # (2 + 10 y) / 13
    [0.5385 1.6923]

  References:
    Kim & Ye, "Noise2Score: Tweedie's Approach to Self-Supervised Image Denoising without
    Clean Images", NeurIPS 2021, https://arxiv.org/abs/2106.07009 (Table 1).
  """
  check_scalar("k", k, lo=0.0, lo_open=True)
  _check_where("y", y, lambda a: a > 0, "positive (Gamma noise is multiplicative)")
  y, score = _operands(y, score)
  k = jnp.asarray(k, y.dtype)
  denom = (k - 1) - y * score
  if not is_traced((y, score, k)):
    _check_where(
      "score",
      denom,
      lambda a: a > 0,
      "such that (k - 1) - y * score > 0 (no positive E[1/x | y] has such a score)",
      "(k - 1) - y * score = ",
    )
  bad = (denom <= 0) | (y <= 0)
  out = k * y / jnp.where(bad, jnp.ones((), y.dtype), denom)
  return _nan_where(out, jnp.broadcast_to(bad, out.shape))


def ardae_loss(score_fn: Callable[[Array], Array], y, *, sigma_a, key) -> Array:
  r"""The amortized residual denoising autoencoder loss: score matching on noisy data only.

  Noise2Score fits :math:`R \approx \nabla\log p(y)` on the noisy images alone with the
  AR-DAE loss of Lim et al. (2020) as the official code computes it (a mean over all
  entries, :math:`u` drawn per entry, the network not conditioned on :math:`\sigma_a`):

  .. math::
    \mathcal L(R) = \frac{1}{N}\sum_{\text{entries}}
      \big(u + \sigma_a R(y + \sigma_a u)\big)^2,\qquad u \sim \mathcal N(0, I).

  For a fixed :math:`\sigma_a` the minimiser is :math:`R^*(\tilde y) = -\mathbb E[u \mid
  \tilde y] / \sigma_a = \nabla \log (p * \mathcal N(0, \sigma_a^2))(\tilde y)`, the score of
  the noisy density blurred once more, which tends to :math:`\ell'` as
  :math:`\sigma_a \to 0`; the official code anneals :math:`\sigma_a` linearly from
  ``sigma_max`` to ``sigma_min`` over its first 22,000 steps (0.05 -> 0.001 for Gamma noise
  on :math:`[0, 1]` images, 1 -> 0.5 for Poisson counts) and the score is evaluated at
  :math:`\tilde y = y`. The noise model does not enter: one network serves every Tweedie
  formula.

  Args:
    score_fn: ``R``, mapping an array shaped like ``y`` to one of the same shape.
    y: the noisy training batch (any shape; its entries are averaged).
    sigma_a: the perturbation scale :math:`\sigma_a > 0`, a scalar (a traced value, such as
      an annealing schedule's, is not checked).
    key: PRNG key for :math:`u` (keyword-only: typed key, raw key or int seed).

  Returns:
    The scalar loss, in the dtype of ``score_fn``'s output.

  Raises:
    ValueError: a concrete ``sigma_a`` :math:`\le 0`, non-finite concrete ``y``.
    TypeError: a bad ``key``; non-real ``y``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff import noise2score
    >>> y = jax.random.normal(jax.random.key(0), (4096,)) * 2.0  # p(y) = N(0, 4)
    >>> loss = lambda s: noise2score.ardae_loss(lambda v: -v / s, y, sigma_a=0.1, key=1)
    >>> # the exact score (variance 4 + 0.01) beats a wrong one
    >>> bool(loss(4.01) < loss(2.0))
    True

  References:
    Kim & Ye, "Noise2Score: Tweedie's Approach to Self-Supervised Image Denoising without
    Clean Images", NeurIPS 2021, https://arxiv.org/abs/2106.07009 (Sec. 3.3, eq. 13); Lim et
    al., "AR-DAE: Towards Unbiased Neural Entropy Gradient Estimation", ICML 2020.
  """
  check_scalar("sigma_a", sigma_a, lo=0.0, lo_open=True)
  key = as_key(key)
  if not jnp.issubdtype(jnp.result_type(y), jnp.floating):
    raise TypeError(f"y must be a floating array, got dtype {jnp.result_type(y)}")
  check_finite("y", y)
  y = jnp.asarray(y)
  u = jax.random.normal(key, y.shape, y.dtype)
  sigma_a = jnp.asarray(sigma_a, y.dtype)
  r = score_fn(y + sigma_a * u)
  if jnp.shape(r) != y.shape:
    raise ValueError(f"score_fn must return an array shaped like y {y.shape}, got {jnp.shape(r)}")
  return jnp.mean((u + sigma_a * r) ** 2)
