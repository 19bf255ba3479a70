"""A Gaussian mixture with singular, low-rank covariances, and the low-rank denoiser.

Component ``k`` is ``N(mu_k, U_k diag(lambda_k) U_k^T)`` with ``U_k`` a ``(D, r_k)`` matrix
of orthonormal columns: its samples lie on an ``r_k``-dimensional affine subspace. For
``sigma > 0`` the noised component ``N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I)`` has full
rank, and every quantity is a diagonal division in the basis ``U_k`` plus the orthogonal
complement, never a ``D x D`` solve:

    (alpha^2 Sigma_k + sigma^2 I)^{-1}
      = P_perp / sigma^2 + U diag(1 / (alpha^2 lambda + sigma^2)) U^T.

Ranks may differ: bases are padded to ``r_max`` columns with zero columns of zero
variance, which changes nothing (a padded column counts ``log sigma^2`` in the
determinant, exactly what the complement would).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._gmm import _finite_array, _labels, _Mixture
from jaxdiff._parameterization import eps_from_x0
from jaxdiff._validation import as_key, check_scalar, is_traced, poison

Array = jax.Array

__all__ = ["LowRankDenoiser", "LowRankGMMDenoiser", "LowRankGaussianMixture", "low_rank_denoiser"]


def _bases(bases, k_hint: int | None) -> list[np.ndarray]:
  """The bases as a list of float64 ``(D, r_k)`` arrays."""
  if isinstance(bases, (list, tuple)):
    out = [_finite_array(f"bases[{i}]", b) for i, b in enumerate(bases)]
  else:
    arr = _finite_array("bases", bases)
    if arr.ndim != 3:
      raise ValueError(
        f"bases must be (K, D, r) or a list of K (D, r_k) matrices, got shape {arr.shape}"
      )
    out = list(arr)
  if k_hint is not None and len(out) != k_hint:
    raise ValueError(f"bases must hold one basis per component (K={k_hint}), got {len(out)}")
  return out


def _variances(variances, ranks: list[int]) -> list[np.ndarray]:
  k = len(ranks)
  if isinstance(variances, (list, tuple)):
    if len(variances) != k:
      raise ValueError(f"variances must hold one entry per component (K={k}), got {len(variances)}")
    raw = [_finite_array(f"variances[{i}]", v) for i, v in enumerate(variances)]
  else:
    arr = _finite_array("variances", variances)
    if arr.ndim == 0:
      raw = [np.full((r,), float(arr)) for r in ranks]
    elif arr.shape == (k,):
      raw = [np.full((r,), float(v)) for r, v in zip(ranks, arr)]
    elif arr.ndim == 2 and arr.shape[0] == k:
      raw = list(arr)
    else:
      raise ValueError(
        f"variances must be a scalar, (K,), (K, r) or a list of (r_k,) with K={k}; got "
        f"shape {arr.shape}"
      )
  out = []
  for i, (v, r) in enumerate(zip(raw, ranks)):
    v = np.broadcast_to(v, (r,)) if v.ndim == 0 else v
    if v.shape != (r,):
      raise ValueError(
        f"variances[{i}] must have shape ({r},) (the rank of bases[{i}]), got {v.shape}"
      )
    if np.any(v < 0):
      raise ValueError(f"variances must be >= 0, got {v.min()} in variances[{i}]")
    out.append(np.asarray(v, np.float64))
  return out


@jax.tree_util.register_pytree_node_class
class LowRankGaussianMixture(_Mixture):
  r"""A Gaussian mixture with singular, low-rank covariances; its denoiser and score are
  exact at every noise level.

  .. math::
    p(x_0) = \sum_k w_k\,\mathcal N\big(\mu_k,\ U_k\,\mathrm{diag}(\lambda_k)\,U_k^\top\big),
    \qquad U_k \in \mathbb R^{D \times r_k},\ U_k^\top U_k = I_{r_k}.

  For :math:`x_t = \alpha x_0 + \sigma\epsilon` with :math:`\sigma > 0` every component
  has the full-rank marginal :math:`\mathcal N(\alpha\mu_k, \alpha^2\Sigma_k + \sigma^2 I)`
  and the posterior mean

  .. math::
    D(x_t) = \sum_k \gamma_k(x_t)\Big[\mu_k + U_k\,\mathrm{diag}\Big(\frac{\alpha\lambda_k}
      {\alpha^2\lambda_k + \sigma^2}\Big)U_k^\top(x_t - \alpha\mu_k)\Big],\qquad
    \gamma_k \propto w_k\,\mathcal N(x_t; \alpha\mu_k, \alpha^2\Sigma_k + \sigma^2 I),

  computed in the basis :math:`U_k` and its orthogonal complement (no :math:`D \times D`
  solve): the Gaussian quadratic form is
  :math:`\lVert P_k^\perp r\rVert^2/\sigma^2 + \sum_j (u_{kj}^\top r)^2/(\alpha^2\lambda_{kj}
  + \sigma^2)` and the log-determinant
  :math:`\sum_j \log(\alpha^2\lambda_{kj} + \sigma^2) + (D - r_k)\log\sigma^2`. The score is
  Tweedie's :math:`\nabla\log p_t(x) = (\alpha D(x) - x)/\sigma^2`. At :math:`\sigma = 0`
  the mixture is singular: :meth:`posterior_mean` returns :math:`x/\alpha` (the exact
  :math:`x_0` for :math:`x = \alpha x_0`, a point of the support), :meth:`score` returns 0
  (the package's :math:`\sigma = 0` policy, ``eps_from_x0``) and :meth:`marginal_log_prob`
  needs :math:`\sigma > 0`. A rank-0 component is a point mass (the empirical distribution
  of the means is the rank-0 mixture); with full rank the mixture is
  :class:`GaussianMixture`.

  Labels (``cond``) follow the package's label policy, as :class:`GaussianMixture`'s.

  Args:
    means: ``(K, D)`` component means.
    bases: ``(K, D, r)`` or a list of ``K`` matrices ``(D, r_k)``, each with orthonormal
      columns (:math:`U_k^\top U_k = I` to 1e-8), :math:`0 \le r_k \le D`.
    variances: the :math:`\lambda_k \ge 0`: a scalar, ``(K,)`` (one per component),
      ``(K, r)`` or a list of ``(r_k,)``; default 1 (the paper's :math:`a \sim N(0, I)`).
    weights: ``(K,)`` positive weights (normalised here); default uniform.
    classes: ``(K,)`` integer class of each component, using every label of ``[0, C)``;
      default ``arange(K)``.
    dtype: float dtype of the parameters; default float64 under x64, else float32.

  Raises:
    ValueError: shapes that do not match, a rank above ``D``, bases without orthonormal
      columns, negative variances, non-positive weights, non-finite values.
    TypeError: a non-numeric argument or a non-floating ``dtype``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import schedules
    >>> from jaxdiff.testing import LowRankGaussianMixture
    >>> lines = LowRankGaussianMixture(jnp.zeros((2, 3)), jnp.eye(3)[None, :, :1].repeat(2, 0)
    ...                                .at[1].set(jnp.eye(3)[:, 1:2]))  # the x and y axes
    >>> x0 = lines.denoiser(schedules.flow())(jnp.array([[1.0, 0.1, 0.0]]), jnp.array([0.2]))
    >>> [round(float(v), 3) for v in x0[0]]  # shrunk onto the x axis
    [1.176, 0.0, 0.0]

  References:
    Wang, Zhang, Zhang, Chen, Ma & Qu, "Diffusion Models Learn Low-Dimensional
    Distributions via Subspace Clustering", arXiv:2409.02426 (mixture of low-rank
    Gaussians and its posterior mean).
  """

  def __init__(self, means, bases, variances=1.0, weights=None, classes=None, *, dtype=None):
    dtype = jnp.dtype(dtype or jnp.result_type(float))
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    mu = _finite_array("means", means)
    if mu.ndim != 2 or 0 in mu.shape:
      raise ValueError(f"means must have shape (K, D) with K, D >= 1, got {mu.shape}")
    k, d = mu.shape
    us = _bases(bases, k)
    ranks = []
    for i, u in enumerate(us):
      if u.ndim != 2 or u.shape[0] != d:
        raise ValueError(f"bases[{i}] must have shape (D, r) = ({d}, r), got {u.shape}")
      if u.shape[1] > d:
        raise ValueError(
          f"bases[{i}] has rank {u.shape[1]} > D = {d}: at most D orthonormal columns"
        )
      gram = u.T @ u
      if not np.allclose(gram, np.eye(u.shape[1]), rtol=0, atol=1e-8):
        raise ValueError(
          f"bases[{i}] must have orthonormal columns (U^T U = I), max deviation "
          f"{np.abs(gram - np.eye(u.shape[1])).max():.3g}; orthonormalise it (np.linalg.qr)"
        )
      ranks.append(u.shape[1])
    lam = _variances(variances, ranks)
    w = np.full((k,), 1.0 / k) if weights is None else _finite_array("weights", weights)
    if w.shape != (k,) or not np.all(w > 0):
      raise ValueError(f"weights must be ({k},) and positive, got {w}")
    c = np.arange(k) if classes is None else np.asarray(classes)
    if c.shape != (k,) or c.dtype == bool or not np.issubdtype(c.dtype, np.integer):
      raise ValueError(f"classes must be ({k},) integers, got {c!r}")
    if c.min() < 0 or set(c.tolist()) != set(range(int(c.max()) + 1)):
      raise ValueError(
        f"classes must be non-negative and use every label in [0, C), got {c.tolist()}"
      )
    r = max(ranks)
    basis = np.zeros((k, d, r))
    var = np.zeros((k, r))
    for i, (u, v) in enumerate(zip(us, lam)):
      basis[i, :, : u.shape[1]] = u
      var[i, : u.shape[1]] = v
    self.log_weights = jnp.asarray(np.log(w / w.sum()), dtype)
    self.means = jnp.asarray(mu, dtype)
    self.bases = jnp.asarray(basis, dtype)
    self.variances = jnp.asarray(var, dtype)
    self.classes = jnp.asarray(c, jnp.int32)
    self.ranks = tuple(ranks)
    self.num_classes = int(c.max()) + 1

  # -- pytree -------------------------------------------------------------------------
  def tree_flatten(self):
    children = (self.log_weights, self.means, self.bases, self.variances, self.classes)
    return children, (self.ranks, self.num_classes)

  @classmethod
  def tree_unflatten(cls, aux, children):
    obj = object.__new__(cls)
    obj.log_weights, obj.means, obj.bases, obj.variances, obj.classes = children
    obj.ranks, obj.num_classes = aux
    return obj

  # -- internals ----------------------------------------------------------------------

  def _scales(self, x, alpha, sigma):
    dt = jnp.result_type(x.dtype, self.means.dtype)
    b = x.shape[0]
    for name, v in (("alpha", alpha), ("sigma", sigma)):
      if not is_traced(v) and np.any(np.asarray(v) < 0):
        raise ValueError(f"{name} must be >= 0, got {v}")
    alpha = jnp.broadcast_to(jnp.asarray(alpha, dt), (b,))
    sigma = jnp.broadcast_to(jnp.asarray(sigma, dt), (b,))
    return x.astype(dt), alpha, sigma

  def _component_terms(self, x, alpha, sigma):
    """log N(x; alpha mu_k, alpha^2 Sigma_k + sigma^2 I) (B, K) and E[x0 | x, k] (B, K, D),
    with sigma floored to 1 where it is 0 (the callers replace those rows)."""
    a = alpha[:, None, None]
    s2 = jnp.where(sigma > 0, sigma, 1)[:, None, None] ** 2
    r = x[:, None, :] - a * self.means[None]  # (B, K, D)
    z = jnp.einsum("kdr,bkd->bkr", self.bases, r)
    v = a**2 * self.variances[None] + s2  # (B, K, r)
    perp = r - jnp.einsum("kdr,bkr->bkd", self.bases, z)
    quad = jnp.sum(perp**2, -1) / s2[..., 0] + jnp.sum(z**2 / v, -1)
    rmax = self.bases.shape[-1]
    logdet = jnp.sum(jnp.log(v), -1) + (self.dim - rmax) * jnp.log(s2[..., 0])
    logn = -0.5 * (quad + logdet + self.dim * math.log(2.0 * math.pi))
    gain = a * self.variances[None] / v * z
    return logn, self.means[None] + jnp.einsum("kdr,bkr->bkd", self.bases, gain)

  def _log_prior(self, labels):
    match = (labels[:, None] == -1) | (labels[:, None] == self.classes[None, :])
    masked = jnp.where(match, self.log_weights[None], -jnp.inf)
    return masked - jax.nn.logsumexp(masked, axis=1, keepdims=True)

  # -- public -------------------------------------------------------------------------
  def posterior_mean(self, x, alpha, sigma, cond=None) -> Array:
    r"""Exact :math:`E[x_0 \mid x_t = x, y]` for scales ``alpha``, ``sigma`` (scalars or
    ``(B,)``); :math:`x/\alpha` where :math:`\sigma = 0`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiff.testing import LowRankGaussianMixture
      >>> line = LowRankGaussianMixture(jnp.zeros((1, 2)), jnp.array([[[1.0], [0.0]]]))
      >>> line.posterior_mean(jnp.array([[2.0, 5.0]]), 1.0, 1.0).tolist()  # 2 / (1 + 1)
      [[1.0, 0.0]]
    """
    shape = jnp.shape(x)
    xf, alpha, sigma = self._scales(self._flat(x), alpha, sigma)
    labels, valid = _labels(cond, xf.shape[0], self.num_classes)
    logn, means = self._component_terms(xf, alpha, sigma)
    resp = jax.nn.softmax(self._log_prior(labels) + logn, axis=1)
    out = jnp.einsum("bk,bkd->bd", resp, means)
    tiny = jnp.sqrt(jnp.finfo(xf.dtype).tiny)
    out = jnp.where((sigma > 0)[:, None], out, xf / jnp.maximum(alpha, tiny)[:, None])
    out = poison(out, valid)
    return out.reshape(shape).astype(jnp.result_type(jnp.asarray(x).dtype, self.means.dtype))

  def score(self, x, alpha, sigma, cond=None) -> Array:
    r"""Exact :math:`\nabla_x\log p_t(x \mid y) = (\alpha D(x) - x)/\sigma^2` (Tweedie);
    0 where :math:`\sigma = 0` (the package's policy: ``eps = 0`` there).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiff.testing import LowRankGaussianMixture
      >>> line = LowRankGaussianMixture(jnp.zeros((1, 2)), jnp.array([[[1.0], [0.0]]]))
      >>> line.score(jnp.array([[2.0, 5.0]]), 1.0, 1.0).tolist()  # -x / (1 + 1), -y / 1
      [[-1.0, -5.0]]
    """
    x = jnp.asarray(x)
    d = self.posterior_mean(x, alpha, sigma, cond)
    dt = d.dtype
    b = x.shape[0]
    bshape = (b,) + (1,) * (x.ndim - 1)
    a = jnp.broadcast_to(jnp.asarray(alpha, dt), (b,)).reshape(bshape)
    s = jnp.broadcast_to(jnp.asarray(sigma, dt), (b,)).reshape(bshape)
    eps = eps_from_x0(x.astype(dt), d, a, s)
    return jnp.where(s > 0, -eps / jnp.where(s > 0, s, 1), 0)

  def denoiser(self, schedule) -> LowRankGMMDenoiser:
    """The exact denoiser ``denoise(x, t, cond) -> E[x_0 | x_t, y]`` under ``schedule``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiff import schedules
      >>> from jaxdiff.testing import LowRankGaussianMixture
      >>> line = LowRankGaussianMixture(jnp.zeros((1, 2)), jnp.array([[[1.0], [0.0]]]))
      >>> line.denoiser(schedules.flow())(jnp.ones((4, 2)), jnp.full((4,), 0.5)).shape
      (4, 2)
    """
    return LowRankGMMDenoiser(self, schedule)

  def marginal_log_prob(self, x, alpha, sigma, cond=None) -> Array:
    r"""``log p_t(x | y)`` of the noised marginal, ``(B,)``; needs :math:`\sigma > 0` (the
    mixture itself is singular). A concrete ``sigma = 0`` raises; a traced one gives NaN
    in those rows.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiff.testing import LowRankGaussianMixture
      >>> line = LowRankGaussianMixture(jnp.zeros((1, 2)), jnp.array([[[1.0], [0.0]]]))
      >>> round(float(line.marginal_log_prob(jnp.zeros((1, 2)), 1.0, 1.0)[0]), 4)
      -2.1845
    """
    if not is_traced(sigma) and np.any(np.asarray(sigma) == 0):
      raise ValueError(
        "marginal_log_prob: sigma must be > 0 (a low-rank mixture has no density at sigma = 0)"
      )
    xf, alpha, sigma = self._scales(self._flat(x), alpha, sigma)
    labels, valid = _labels(cond, xf.shape[0], self.num_classes)
    logn, _ = self._component_terms(xf, alpha, sigma)
    out = jax.nn.logsumexp(self._log_prior(labels) + logn, axis=1)
    return poison(jnp.where(sigma > 0, out, jnp.nan), valid)

  def covariances(self) -> Array:
    """The ``(K, D, D)`` singular covariances :math:`U_k\\,\\mathrm{diag}(\\lambda_k)U_k^\\top`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiff.testing import LowRankGaussianMixture
      >>> line = LowRankGaussianMixture(jnp.zeros((1, 2)), jnp.array([[[1.0], [0.0]]]), 2.0)
      >>> line.covariances()[0].tolist()
      [[2.0, 0.0], [0.0, 0.0]]
    """
    return jnp.einsum("kdr,kr,ker->kde", self.bases, self.variances, self.bases)

  def sample(self, key, n: int, cond: Any = None) -> Array:
    """Exact samples ``(n, D)`` from ``p(x | y)``: :math:`\\mu_k + U_k(\\sqrt{\\lambda_k}\\odot a)`.

    ``key`` comes first (as in ``jax.random``): a typed key, a raw key or an int seed.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxdiff.testing import LowRankGaussianMixture
      >>> line = LowRankGaussianMixture(jnp.zeros((1, 2)), jnp.array([[[1.0], [0.0]]]))
      >>> x = line.sample(0, 5)
      >>> x.shape, float(jnp.abs(x[:, 1]).max())  # on the x axis
      ((5, 2), 0.0)
    """
    n = check_scalar("n", n, lo=1, integer=True, static=True)
    labels, valid = _labels(cond, n, self.num_classes)
    k_comp, k_noise = jax.random.split(as_key(key))
    comp = jax.random.categorical(k_comp, self._log_prior(labels), axis=1)
    a = jax.random.normal(k_noise, (n, self.bases.shape[-1]), self.means.dtype)
    z = jnp.sqrt(self.variances[comp]) * a
    return poison(self.means[comp] + jnp.einsum("bdr,br->bd", self.bases[comp], z), valid)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class LowRankGMMDenoiser:
  """``denoise(x, t, cond)`` of a :class:`LowRankGaussianMixture` under a schedule (a
  pytree; output in ``x``'s shape and dtype; declares ``num_classes``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import schedules
    >>> from jaxdiff.testing import LowRankGaussianMixture
    >>> line = LowRankGaussianMixture(jnp.zeros((1, 2)), jnp.array([[[1.0], [0.0]]]))
    >>> den = line.denoiser(schedules.flow())
    >>> den(jnp.array([[0.5, 0.5]]), jnp.array([0.5])).tolist(), den.num_classes
    ([[0.5, 0.0]], 1)
  """

  mixture: LowRankGaussianMixture
  schedule: Any

  @property
  def num_classes(self) -> int:
    return self.mixture.num_classes

  def __call__(self, x, t, cond=None):
    t = jnp.asarray(t)
    out = self.mixture.posterior_mean(x, self.schedule.alpha(t), self.schedule.sigma(t), cond)
    return out.astype(jnp.asarray(x).dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class LowRankDenoiser:
  """The low-rank denoiser parameterisation (see :func:`low_rank_denoiser`); ``bases`` is
  a leaf, so it can be trained.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff import schedules
    >>> from jaxdiff.testing import low_rank_denoiser
    >>> d = low_rank_denoiser(jnp.eye(3)[None, :, :1], schedules.flow())
    >>> jax.tree.leaves(d)[0].shape  # the bases: what training updates
    (1, 3, 1)
  """

  bases: Array  # (K, D, r)
  schedule: Any = dataclasses.field(metadata={"static": True})

  def __call__(self, x, t, cond=None):
    del cond
    x = jnp.asarray(x)
    u = jnp.asarray(self.bases)
    xf = x.reshape(x.shape[0], -1).astype(jnp.result_type(x.dtype, u.dtype))
    t = jnp.asarray(t)
    b = x.shape[0]
    alpha = jnp.broadcast_to(self.schedule.alpha(t), (b,)).astype(xf.dtype)[:, None]
    sigma = jnp.broadcast_to(self.schedule.sigma(t), (b,)).astype(xf.dtype)[:, None]
    s2 = alpha**2 + sigma**2
    coef = alpha / s2
    z = jnp.einsum("kdr,bd->bkr", u, xf)
    energy = jnp.sum(z**2, -1)  # ||U_k^T x||^2
    # phi (||U_k^T x||^2 - max_l ||U_l^T x||^2): the max gets exactly 0 even where
    # phi = inf (sigma = 0: the hard assignment of the limit), the others -inf, never NaN.
    phi = alpha**2 / (2 * sigma**2 * s2)
    gap = energy - jnp.max(energy, axis=1, keepdims=True)
    logits = jnp.where(gap < 0, gap * phi, 0)
    w = jax.nn.softmax(logits, axis=1)
    out = coef * jnp.einsum("bk,kdr,bkr->bd", w, u, z)
    return out.reshape(x.shape).astype(x.dtype)


def low_rank_denoiser(bases, schedule) -> LowRankDenoiser:
  r"""The low-rank denoiser parameterisation of Wang et al.: a softmax over subspaces.

  .. math::
    D_\theta(x_t) = \sum_{k=1}^K \frac{\exp(\phi_t\lVert U_k^\top x_t\rVert^2)}
      {\sum_l \exp(\phi_t\lVert U_l^\top x_t\rVert^2)}\,
      \frac{\alpha_t}{\alpha_t^2 + \sigma_t^2}\,U_k U_k^\top x_t,\qquad
    \phi_t = \frac{\alpha_t^2}{2\sigma_t^2(\alpha_t^2 + \sigma_t^2)},

  with parameters :math:`\theta = \{U_k\}`, :math:`U_k \in \mathbb R^{D \times r}`. With
  orthonormal :math:`U_k` it is the exact denoiser of the mixture of ``K`` equally likely
  zero-mean low-rank Gaussians :math:`U_k a`, :math:`a \sim \mathcal N(0, I_r)`
  (:class:`LowRankGaussianMixture` with unit variances), and training it with the
  denoising loss is subspace clustering of the training set (the paper's Theorem). The
  paper keeps :math:`U_k` on the Stiefel manifold; this function uses the bases as given
  (a training loop orthonormalises, e.g. :math:`U = \mathrm{qr}(A)_Q`). At
  :math:`\sigma = 0` the softmax is the hard assignment of its limit (never NaN).

  Args:
    bases: ``(K, D, r)`` the :math:`U_k` (a leaf of the returned pytree).
    schedule: the schedule of ``t`` (static).

  Returns:
    A :class:`LowRankDenoiser` ``denoise(x, t, cond=None)``; ``x`` is ``(B, ...)`` with
    ``D`` features.

  Raises:
    ValueError: ``bases`` is not a 3-D array.
    TypeError: ``bases`` is not a floating array.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import schedules
    >>> from jaxdiff.testing import low_rank_denoiser
    >>> u = jnp.eye(3)[None, :, :1]  # one line: the x axis
    >>> d = low_rank_denoiser(u, schedules.flow())
    >>> d(jnp.array([[1.0, 2.0, 3.0]]), jnp.array([0.5])).tolist()  # 0.5 / 0.5 on x
    [[1.0, 0.0, 0.0]]

  References:
    Wang, Zhang, Zhang, Chen, Ma & Qu, "Diffusion Models Learn Low-Dimensional
    Distributions via Subspace Clustering", arXiv:2409.02426 (the low-rank network
    parameterisation of the denoising autoencoder; training = subspace clustering).
  """
  if not hasattr(bases, "shape") or not hasattr(bases, "dtype"):
    raise TypeError(
      f"low_rank_denoiser: bases must be a (K, D, r) array, got {type(bases).__name__}"
    )
  if not jnp.issubdtype(jnp.asarray(bases).dtype, jnp.floating):
    raise TypeError(f"low_rank_denoiser: bases must be floating, got {jnp.asarray(bases).dtype}")
  if jnp.ndim(bases) != 3:
    raise ValueError(f"low_rank_denoiser: bases must be (K, D, r), got shape {jnp.shape(bases)}")
  return LowRankDenoiser(jnp.asarray(bases), schedule)
