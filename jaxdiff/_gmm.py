"""A class-conditional Gaussian mixture whose denoiser, score and classifier are exact.

If ``x_0 ~ sum_k w_k N(mu_k, Sigma_k)`` and ``x_t = alpha x_0 + sigma eps``, then
``x_t | k ~ N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I)`` and, per component,
``E[x_0 | x_t, k] = mu_k + alpha Sigma_k (alpha^2 Sigma_k + sigma^2 I)^{-1} (x_t - alpha mu_k)``;
the denoiser averages these with the exact responsibilities. Covariances are stored by
their eigendecomposition, so every solve is a diagonal division in the eigenbasis and
``sigma = 0`` is exact (no matrix inversion, no cancellation).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._validation import as_key, check_finite, check_labels, check_scalar, poison

Array = jax.Array


def _labels(cond, batch: int, num_classes: int) -> tuple[Array, Array]:
  """Per-sample labels ``(B,)`` (``None``: all ``-1``) and their validity mask (label policy)."""
  if cond is None:
    return jnp.full((batch,), -1, jnp.int32), jnp.ones((batch,), bool)
  valid = check_labels("cond", cond, num_classes, allow_null=True)
  cond = jnp.asarray(cond)
  if cond.ndim == 0:
    return jnp.full((batch,), cond, jnp.int32), jnp.broadcast_to(valid, (batch,))
  if cond.shape != (batch,):
    raise ValueError(f"cond must be a scalar or have shape ({batch},), got {cond.shape}")
  return cond.astype(jnp.int32), valid


def _finite_array(name: str, value) -> np.ndarray:
  """A finite float64 NumPy copy of a constructor argument, or an error naming it."""
  try:
    arr = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError) as err:
    raise TypeError(f"{name} must be a real array, got {type(value).__name__}") from err
  check_finite(name, arr)
  return arr


class _Mixture:
  """What the full-rank and the low-rank mixtures share: sizes and the flattening of ``x``."""

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  @property
  def num_components(self) -> int:
    return self.means.shape[0]

  def _flat(self, x):
    x = jnp.asarray(x)
    if x.ndim < 2 or math.prod(x.shape[1:]) != self.dim:
      raise ValueError(f"x must have shape (B, ...) with {self.dim} features, got {x.shape}")
    return x.reshape(x.shape[0], self.dim)


@jax.tree_util.register_pytree_node_class
class GaussianMixture(_Mixture):
  r"""A class-conditional Gaussian mixture with closed-form denoiser, score and classifier.

  .. math::
    p(x_0 \mid y) = \sum_{k: c_k = y} \frac{w_k}{\sum_{j: c_j = y} w_j}
      \mathcal N(x_0; \mu_k, \Sigma_k),\qquad
    D(x_t) = \sum_k \gamma_k(x_t)\big[\mu_k + \alpha\Sigma_k(\alpha^2\Sigma_k
      + \sigma^2 I)^{-1}(x_t - \alpha\mu_k)\big],

  with :math:`\gamma_k \propto w_k \mathcal N(x_t; \alpha\mu_k, \alpha^2\Sigma_k + \sigma^2 I)`
  restricted to class ``y`` (label ``-1``: the full mixture).

  Labels (``cond`` of every method) follow the package's one label policy: integers in
  ``[0, num_classes)`` or the null label ``-1`` (unconditional: the whole mixture), a
  scalar or one per sample. Concrete labels out of range raise a ``ValueError`` (float or
  bool labels a ``TypeError``) naming ``cond``; traced labels (under ``jit``) cannot raise,
  so the rows with an invalid label are NaN (poisoned), never another class's value.

  Args:
    means: ``(K, D)`` component means.
    covariances: a scalar or ``(K,)`` (isotropic variances), ``(K, D)`` (diagonal) or
      ``(K, D, D)`` (full, symmetric positive definite).
    weights: ``(K,)`` positive, finite mixture weights; they need not sum to 1 (they are
      normalised here); default uniform.
    classes: ``(K,)`` integer class of each component, using every label of
      ``[0, C)``; default ``arange(K)``.
    dtype: float dtype of the parameters; default float64 under x64, else float32.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff import schedules
    >>> from jaxdiff.testing import GaussianMixture
    >>> gmm = GaussianMixture(jnp.array([[-2.0, 0.0], [2.0, 0.0]]), 0.25)
    >>> denoise = gmm.denoiser(schedules.flow())
    >>> x0 = denoise(jnp.zeros((3, 2)), jnp.full((3,), 0.5), jnp.array([0, 1, -1]))
    >>> x0.shape
    (3, 2)

  References:
    The exact denoiser of a Gaussian mixture is used as ground truth e.g. in Karras et
    al., "Guiding a Diffusion Model with a Bad Version of Itself", arXiv:2406.02507
    (Sec. 3, toy example).
  """

  def __init__(self, means, covariances=1.0, weights=None, classes=None, *, dtype=None):
    dtype = jnp.dtype(dtype or jnp.result_type(float))
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    mu = _finite_array("means", means)
    if mu.ndim != 2 or 0 in mu.shape:
      raise ValueError(f"means must have shape (K, D) with K, D >= 1, got {mu.shape}")
    k, d = mu.shape
    cov = _finite_array("covariances", covariances)
    if cov.ndim == 0:
      cov = np.full((k,), float(cov))
    if cov.shape == (k,):
      eigvals, eigvecs = np.repeat(cov[:, None], d, axis=1), None
    elif cov.shape == (k, d):
      eigvals, eigvecs = cov, None
    elif cov.shape == (k, d, d):
      if not np.allclose(cov, np.swapaxes(cov, 1, 2), rtol=1e-10, atol=1e-12):
        raise ValueError("covariances: full covariances must be symmetric")
      eigvals, eigvecs = np.linalg.eigh(cov)
    else:
      raise ValueError(
        f"covariances must be a scalar, (K,), (K, D) or (K, D, D) with K={k}, D={d}; "
        f"got {cov.shape}"
      )
    if not np.all(eigvals > 0):
      raise ValueError("covariances must be positive definite (all eigenvalues > 0)")
    w = np.full((k,), 1.0 / k) if weights is None else _finite_array("weights", weights)
    if w.shape != (k,) or not np.all(w > 0):
      raise ValueError(f"weights must be ({k},) and positive, got {w}")
    c = np.arange(k) if classes is None else np.asarray(classes)
    if c.shape != (k,) or c.dtype == bool or not np.issubdtype(c.dtype, np.integer):
      raise ValueError(f"classes must be ({k},) integers, got {c!r}")
    if c.min() < 0 or set(c.tolist()) != set(range(int(c.max()) + 1)):
      raise ValueError(
        f"classes must be non-negative and use every label in [0, C) (a class without a "
        f"component has no distribution), got {c.tolist()}"
      )
    self.log_weights = jnp.asarray(np.log(w / w.sum()), dtype)
    self.means = jnp.asarray(mu, dtype)
    self.eigvals = jnp.asarray(eigvals, dtype)
    self.eigvecs = None if eigvecs is None else jnp.asarray(eigvecs, dtype)
    self.classes = jnp.asarray(c, jnp.int32)
    self.num_classes = int(c.max()) + 1

  # -- pytree -------------------------------------------------------------------------
  def tree_flatten(self):
    children = (self.log_weights, self.means, self.eigvals, self.eigvecs, self.classes)
    return children, self.num_classes

  @classmethod
  def tree_unflatten(cls, num_classes, children):
    obj = object.__new__(cls)
    obj.log_weights, obj.means, obj.eigvals, obj.eigvecs, obj.classes = children
    obj.num_classes = num_classes
    return obj

  # -- internals ----------------------------------------------------------------------

  def _component_terms(self, x, alpha, sigma):
    """log N(x; alpha mu_k, alpha^2 Sigma_k + sigma^2 I) (B, K) and E[x0 | x, k] (B, K, D)."""
    a = alpha[:, None, None]
    v = a**2 * self.eigvals[None] + (sigma**2)[:, None, None]  # (B, K, D) eigen-variances
    diff = x[:, None, :] - a * self.means[None]
    z = diff if self.eigvecs is None else jnp.einsum("kde,bkd->bke", self.eigvecs, diff)
    logn = -0.5 * jnp.sum(z**2 / v + jnp.log(2.0 * math.pi * v), axis=-1)
    gain = a * self.eigvals[None] / v * z
    shift = gain if self.eigvecs is None else jnp.einsum("kde,bke->bkd", self.eigvecs, gain)
    return logn, self.means[None] + shift

  def _log_prior(self, labels):
    """log p(k | y) (B, K): weights restricted to the label's components (-1: all)."""
    match = (labels[:, None] == -1) | (labels[:, None] == self.classes[None, :])
    masked = jnp.where(match, self.log_weights[None], -jnp.inf)
    return masked - jax.nn.logsumexp(masked, axis=1, keepdims=True)

  def _scales(self, x, alpha, sigma):
    dt = jnp.result_type(x.dtype, self.means.dtype)
    b = x.shape[0]
    alpha = jnp.broadcast_to(jnp.asarray(alpha, dt), (b,))
    sigma = jnp.broadcast_to(jnp.asarray(sigma, dt), (b,))
    return x.astype(dt), alpha, sigma

  # -- public -------------------------------------------------------------------------
  def posterior_mean(self, x, alpha, sigma, cond=None) -> Array:
    """Exact ``E[x_0 | x_t = x, y]`` for scales ``alpha``, ``sigma`` (scalars or ``(B,)``).

    ``cond``: labels under the class's label policy (``-1``/``None``: unconditional).
    """
    shape = jnp.shape(x)
    xf, alpha, sigma = self._scales(self._flat(x), alpha, sigma)
    labels, valid = _labels(cond, xf.shape[0], self.num_classes)
    logn, means = self._component_terms(xf, alpha, sigma)
    resp = jax.nn.softmax(self._log_prior(labels) + logn, axis=1)
    out = poison(jnp.einsum("bk,bkd->bd", resp, means), valid)
    return out.reshape(shape).astype(jnp.result_type(jnp.asarray(x).dtype, self.means.dtype))

  def denoiser(self, schedule) -> GMMDenoiser:
    """The exact denoiser ``denoise(x, t, cond) -> E[x_0 | x_t, y]`` under ``schedule``."""
    return GMMDenoiser(self, schedule)

  def marginal_log_prob(self, x, alpha, sigma, cond=None) -> Array:
    """``log p_t(x | y)`` of the noised marginal, ``(B,)``."""
    xf, alpha, sigma = self._scales(self._flat(x), alpha, sigma)
    labels, valid = _labels(cond, xf.shape[0], self.num_classes)
    logn, _ = self._component_terms(xf, alpha, sigma)
    return poison(jax.nn.logsumexp(self._log_prior(labels) + logn, axis=1), valid)

  def log_prob(self, x, cond=None) -> Array:
    """Exact data log-density ``log p(x | y)`` (``y = -1`` or ``None``: the mixture), ``(B,)``."""
    return self.marginal_log_prob(x, 1.0, 0.0, cond)

  def class_posterior(self, x, t, schedule, *, log: bool = False) -> Array:
    r"""Exact :math:`p(y \mid x_t)` at time ``t`` (scalar or ``(B,)``), shape ``(B, C)``.

    With ``log=True`` returns the normalised log-probabilities (stable for gradients).
    """
    t = jnp.asarray(t)
    xf, alpha, sigma = self._scales(self._flat(x), schedule.alpha(t), schedule.sigma(t))
    logn, _ = self._component_terms(xf, alpha, sigma)
    joint = self.log_weights[None] + logn  # log p(k, x_t)
    onehot = self.classes[:, None] == jnp.arange(self.num_classes)[None, :]  # (K, C)
    per_class = jax.nn.logsumexp(
      jnp.where(onehot[None], joint[:, :, None], -jnp.inf), axis=1
    )  # (B, C)
    logp = per_class - jax.nn.logsumexp(per_class, axis=1, keepdims=True)
    return logp if log else jnp.exp(logp)

  def covariances(self) -> Array:
    """The ``(K, D, D)`` component covariances (rebuilt from the eigendecomposition).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiff.testing import GaussianMixture
      >>> GaussianMixture(jnp.zeros((2, 3)), 0.5).covariances().shape
      (2, 3, 3)
    """
    if self.eigvecs is None:
      return jax.vmap(jnp.diag)(self.eigvals)
    return jnp.einsum("kde,ke,kfe->kdf", self.eigvecs, self.eigvals, self.eigvecs)

  def posterior(self, A, y, noise_std) -> GaussianMixture:
    r"""The exact posterior ``p(x | y)`` under ``y = A x + noise_std * n``, ``n ~ N(0, I)``.

    A Gaussian mixture prior and a linear-Gaussian likelihood give a Gaussian mixture
    posterior (Bishop, PRML, Eqs. 2.113-2.117, per component):

    .. math::
      S_k = A\Sigma_k A^\top + s^2 I,\quad G_k = \Sigma_k A^\top S_k^{-1},\quad
      \mu_k' = \mu_k + G_k(y - A\mu_k),\quad \Sigma_k' = \Sigma_k - G_k A \Sigma_k,

      w_k' \propto w_k\, \mathcal N(y; A\mu_k, S_k),

    written in the Kalman-gain form, which needs only an ``M x M`` solve and stays exact
    for an under-determined ``A`` (``M < D``). Classes are kept, so the posterior is again
    class-conditional (``cond`` of its methods restricts it to one class's components).

    The mixture is built from concrete values (NumPy, float64) like the constructor, so
    ``posterior`` is not traceable: it is a test oracle, not a sampler to ``jit``.

    Args:
      A: ``(M, D)`` measurement matrix (a linear operator written out densely).
      y: ``(M,)`` one measurement.
      noise_std: ``s > 0`` (``s = 0`` would make the posterior singular).

    Returns:
      A :class:`GaussianMixture` with full covariances, the prior's classes and dtype;
      :meth:`sample` draws exact posterior samples and :meth:`log_prob` is the exact
      posterior log-density.

    Raises:
      ValueError: ``A`` is not ``(M, D)``, ``y`` is not ``(M,)``, ``noise_std`` is not
        positive and finite.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiff.testing import GaussianMixture
      >>> prior = GaussianMixture(jnp.array([[-2.0, 0.0], [2.0, 0.0]]), 1.0)
      >>> post = prior.posterior(jnp.array([[1.0, 0.0]]), jnp.array([1.9]), 0.1)
      >>> [round(float(w), 3) for w in jnp.exp(post.log_weights)]
      [0.001, 0.999]
      >>> post.sample(0, 3).shape
      (3, 2)

    References:
      Bishop, "Pattern Recognition and Machine Learning", 2006 (Sec. 2.3.3, linear-Gaussian
      models); the mixture posterior as ground truth for diffusion posterior samplers:
      Cardoso et al., "Monte Carlo guided Diffusion for Bayesian linear inverse problems",
      arXiv:2308.07983 (Sec. 5.1).
    """
    a = _finite_array("A", A)
    if a.ndim != 2 or a.shape[1] != self.dim or a.shape[0] == 0:
      raise ValueError(f"A must have shape (M, {self.dim}) with M >= 1, got {a.shape}")
    m = a.shape[0]
    yv = _finite_array("y", y)
    if yv.shape != (m,):
      raise ValueError(f"y must have shape ({m},) (one measurement of A), got {yv.shape}")
    s = check_scalar("noise_std", noise_std, lo=0.0, lo_open=True)
    mu = np.asarray(self.means, np.float64)
    cov = np.asarray(self.covariances(), np.float64)
    a_cov = np.einsum("md,kde->kme", a, cov)  # A Sigma_k
    innov = np.einsum("kme,ne->kmn", a_cov, a) + s**2 * np.eye(m)  # S_k
    innov = 0.5 * (innov + np.swapaxes(innov, 1, 2))
    resid = yv[None] - mu @ a.T  # (K, M)
    chol = np.linalg.cholesky(innov)
    gain_t = np.linalg.solve(innov, a_cov)  # S_k^{-1} A Sigma_k = G_k^T
    means = mu + np.einsum("kme,km->ke", gain_t, resid)
    covs = cov - np.einsum("kmd,kme->kde", a_cov, gain_t)
    covs = 0.5 * (covs + np.swapaxes(covs, 1, 2))
    z = np.linalg.solve(chol, resid[..., None])[..., 0]
    log_evidence = -0.5 * np.sum(z**2, -1) - np.log(np.diagonal(chol, 0, 1, 2)).sum(-1)
    log_w = np.asarray(self.log_weights, np.float64) + log_evidence  # the 2 pi term cancels
    # Weights below the smallest normal float are kept at it: the constructor needs them
    # positive, and such a component carries no posterior mass at any precision.
    w = np.maximum(np.exp(log_w - log_w.max()), np.finfo(np.float64).tiny)
    return GaussianMixture(means, covs, w, np.asarray(self.classes), dtype=self.means.dtype)

  def sample(self, key, n: int, cond: Any = None) -> Array:
    """Exact samples ``(n, D)`` from ``p(x | y)`` (per-sample labels; -1 = mixture).

    ``cond`` follows the label policy of the class: out-of-range concrete labels raise
    naming ``cond``; under ``jit`` the samples of invalid labels are NaN.

    ``key`` comes first, as in ``jax.random`` samplers, and may be a typed key, a raw
    ``uint32`` key or an int seed.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiff.testing import GaussianMixture
      >>> GaussianMixture(jnp.array([[-2.0], [2.0]]), 0.1).sample(0, 5).shape
      (5, 1)
    """
    n = check_scalar("n", n, lo=1, integer=True, static=True)
    labels, valid = _labels(cond, n, self.num_classes)
    k_comp, k_noise = jax.random.split(as_key(key))
    comp = jax.random.categorical(k_comp, self._log_prior(labels), axis=1)
    z = jax.random.normal(k_noise, (n, self.dim), self.means.dtype)
    z = jnp.sqrt(self.eigvals[comp]) * z
    if self.eigvecs is not None:
      z = jnp.einsum("bde,be->bd", self.eigvecs[comp], z)
    return poison(self.means[comp] + z, valid)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class GMMDenoiser:
  """``denoise(x, t, cond)`` of a :class:`GaussianMixture` under a schedule (a pytree).

  The output has ``x``'s shape and dtype (the denoiser protocol of :func:`jaxdiff.sample`;
  the mixture computes in its own, possibly wider, dtype). It declares ``num_classes``, so
  :func:`jaxdiff.sample` range-checks concrete labels before compiling.
  """

  gmm: GaussianMixture
  schedule: Any

  @property
  def num_classes(self) -> int:
    return self.gmm.num_classes

  def __call__(self, x, t, cond=None):
    t = jnp.asarray(t)
    out = self.gmm.posterior_mean(x, self.schedule.alpha(t), self.schedule.sigma(t), cond)
    return out.astype(jnp.asarray(x).dtype)
