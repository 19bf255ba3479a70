"""Network parameterizations: conversions among eps, x0, v, score, velocity, and wrappers.

With ``x = alpha x0 + sigma eps`` (any schedule):

* ``eps``: the noise; ``x0 = (x - sigma eps) / alpha``.
* ``v`` (Salimans & Ho): ``v = alpha eps - sigma x0``;
  ``x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)``.
* ``score``: ``grad log p_t(x) = -eps / sigma``; ``x0 = (x + sigma^2 score) / alpha``.
* ``velocity`` (rectified flow / flow matching): ``u = eps - x0``, which is ``dx/dt``
  for the ``flow`` schedule; ``x0 = (x - sigma u) / (alpha + sigma)``.

Two divisions are ill-posed at the ends of a schedule, and each has one policy, used by
every module of the package (solvers, guidance rules, wrappers):

* ``sigma = 0`` (clean data): the noise is not determined by ``(x, x0)``.
  :func:`eps_from_x0` returns ``eps = 0`` there (and so ``score = 0``): it keeps
  ``x = alpha x0 + sigma eps`` exact, and every renoising step multiplies it by
  ``sigma = 0`` anyway.
* ``alpha = 0`` (pure noise): no eps prediction determines ``x0``. The divisor is floored
  at ``sqrt(finfo(dtype).tiny)`` so results stay finite (never NaN); prefer v or velocity
  prediction for grids that reach ``alpha = 0`` (Lin et al., arXiv:2305.08891).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff._validation import check_choice, check_output, renamed_kwargs
from jaxdiff._wrappers import wrapper

Array = jax.Array

PREDICTIONS = ("x0", "eps", "v", "score", "velocity")
# The factory of each prediction's wrapper, for messages.
_NAMES = {
  "x0": "from_x0",
  "eps": "from_eps",
  "v": "from_v",
  "score": "Wrapped(prediction='score')",
  "velocity": "from_flow",
}
KINDS = PREDICTIONS  # deprecated alias (the vocabulary's name is ``prediction``)


def _floor(d):
  d = jnp.asarray(d)
  dt = d.dtype if jnp.issubdtype(d.dtype, jnp.floating) else jnp.result_type(float)
  return jnp.maximum(d, jnp.sqrt(jnp.finfo(dt).tiny).astype(dt))


def _to_x0(value, x, alpha, sigma, prediction):
  if prediction == "x0":
    return value
  if prediction == "eps":
    return (x - sigma * value) / _floor(alpha)
  if prediction == "v":
    return (alpha * x - sigma * value) / (alpha**2 + sigma**2)
  if prediction == "score":
    return (x + sigma**2 * value) / _floor(alpha)
  return (x - sigma * value) / (alpha + sigma)  # velocity


def eps_from_x0(x: Array, x0: Array, alpha: Array, sigma: Array) -> Array:
  r"""The noise implied by a data prediction: :math:`\epsilon = (x - \alpha x_0)/\sigma`.

  The package's one ``sigma = 0`` policy: where ``sigma == 0`` the noise is undetermined
  and the result is ``0`` (finite, and exact for ``x = alpha x0``), never NaN or inf.
  ``alpha`` and ``sigma`` broadcast against ``x``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff.parameterization import eps_from_x0
    >>> eps_from_x0(jnp.array([1.0, 2.0]), jnp.array([1.0, 1.0]), 1.0, jnp.array([0.5, 0.0]))
    Array([0., 0.], dtype=float32)
  """
  sigma = jnp.asarray(sigma)
  positive = sigma > 0
  safe = jnp.where(positive, sigma, jnp.ones_like(sigma))
  return jnp.where(positive, (x - alpha * x0) / safe, jnp.zeros_like(x))


def _from_x0(x0, x, alpha, sigma, prediction):
  if prediction == "x0":
    return x0
  eps = eps_from_x0(x, x0, alpha, sigma)
  if prediction == "eps":
    return eps
  if prediction == "v":
    return alpha * eps - sigma * x0
  if prediction == "score":
    sigma = jnp.asarray(sigma)
    return -eps / jnp.where(sigma > 0, sigma, jnp.ones_like(sigma))  # eps = 0 at sigma = 0
  return eps - x0  # velocity


def convert(value: Array, x: Array, alpha: Array, sigma: Array, *, src: str, dst: str) -> Array:
  r"""Converts a prediction between parameterizations at the point ``x``.

  .. math::
    x = \alpha x_0 + \sigma\epsilon,\quad v = \alpha\epsilon - \sigma x_0,\quad
    \nabla\log p_t = -\epsilon/\sigma,\quad u = \epsilon - x_0 .

  Args:
    value: the prediction, shaped like ``x``.
    x: the noisy input.
    alpha, sigma: scales, broadcastable against ``x`` (e.g. ``(B, 1, ...)``).
    src, dst: one of ``"x0"``, ``"eps"``, ``"v"``, ``"score"``, ``"velocity"``.

  Returns:
    The prediction in parameterization ``dst``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff.parameterization import convert
    >>> x0, eps = jnp.array([1.0]), jnp.array([0.5])
    >>> a, s = 0.6, 0.8
    >>> x = a * x0 + s * eps
    >>> float(convert(eps, x, a, s, src="eps", dst="x0")[0])  # doctest: +ELLIPSIS
    1.0...

  References:
    Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion Models",
    arXiv:2202.00512 (v, App. D); Song et al., arXiv:2011.13456 (score);
    Lipman et al., arXiv:2210.02747 (velocity).
  """
  check_choice("src", src, PREDICTIONS)
  check_choice("dst", dst, PREDICTIONS)
  value, x = jnp.asarray(value), jnp.asarray(x)
  if value.shape != x.shape:
    raise ValueError(f"value: prediction shape {value.shape} does not match x shape {x.shape}")
  if src == dst:
    return value
  return _from_x0(_to_x0(value, x, alpha, sigma, src), x, alpha, sigma, dst)


@wrapper(inner="net", blocks=True)
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Wrapped:
  """A denoiser ``denoise(x, t, cond, **kw) -> x0`` from a network predicting ``prediction``.

  ``prediction`` is one of :data:`PREDICTIONS`; the spellings ``Wrapped(..., kind=...)`` and
  ``Wrapped.kind`` are deprecated (one release, ``DeprecationWarning``).

  The wrapper forwards what the network declares (:mod:`jaxdiff._wrappers`: ``num_classes``,
  the label range check of :func:`jaxdiff.sample`, and ``check_grid``), its block interface
  (a feature cache runs ``net``'s blocks and converts their output with
  :meth:`blocks_output`), and ``stats_names`` with ``with_stats`` (the counters a network
  reports per call, e.g. an early-exit network's blocks), so an error or a count the bare
  network gives is the one the wrapped network gives.
  """

  net: Any
  schedule: Any
  prediction: str = dataclasses.field(metadata={"static": True}, default="eps")

  def __post_init__(self):
    check_choice("prediction", self.prediction, PREDICTIONS)

  @property
  def kind(self) -> str:
    """Deprecated spelling of :attr:`prediction`."""
    warnings.warn(
      "Wrapped.kind is deprecated; use Wrapped.prediction (removed in the next release)",
      DeprecationWarning,
      stacklevel=2,
    )
    return self.prediction

  @property
  def stats_names(self) -> tuple:
    """The counters the network reports per call (``()`` if none)."""
    return tuple(getattr(self.net, "stats_names", ()))

  def with_stats(self, x, t, cond=None, **kwargs):
    """``(x0, stats)`` for a network that reports counters (see :attr:`stats_names`)."""
    out, stats = self.net.with_stats(x, t, cond, **kwargs)
    return self._to_x0(out, x, t), stats

  def __call__(self, x, t, cond=None, **kwargs):
    return self._to_x0(self.net(x, t, cond, **kwargs), x, t)

  def blocks_output(self, out, x, t):
    """The denoiser's output from the network's output ``out`` (run block by block)."""
    return self._to_x0(out, x, t)

  def _to_x0(self, out, x, t):
    # Any floating dtype: the conversion runs in it and casts to x's (a bf16 network).
    check_output(
      out, like=x, dtype="floating", name="net(x, t, cond)", where=_NAMES[self.prediction]
    )
    t = jnp.asarray(t)
    expand = (slice(None),) + (None,) * (x.ndim - 1) if t.ndim == 1 else ()
    alpha = self.schedule.alpha(t)[expand].astype(x.dtype)
    sigma = self.schedule.sigma(t)[expand].astype(x.dtype)
    return _to_x0(out, x, alpha, sigma, self.prediction).astype(x.dtype)


# The keyword ``kind`` of the dataclass constructor keeps working for one release.
Wrapped.__init__ = renamed_kwargs(kind="prediction")(Wrapped.__init__)


def _wrapper(prediction):
  def wrap(net, schedule) -> Wrapped:
    # Checked here, not in Wrapped.__post_init__: JAX rebuilds pytrees with placeholder leaves.
    if not callable(net):
      raise TypeError(f"net must be callable net(x, t, cond), got {type(net).__name__}")
    return Wrapped(net, schedule, prediction)

  return wrap


def from_eps(net, schedule) -> Wrapped:
  r"""Denoiser from an eps-prediction network: :math:`\hat x_0 = (x - \sigma\hat\epsilon)/\alpha`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import parameterization, schedules
    >>> d = parameterization.from_eps(lambda x, t, c: jnp.zeros_like(x), schedules.edm())
    >>> d(jnp.ones((2, 3)), jnp.full((2,), 1.0)).shape
    (2, 3)

  References:
    Ho et al., "Denoising Diffusion Probabilistic Models", arXiv:2006.11239 (eq. 15).
  """
  return _wrapper("eps")(net, schedule)


def from_v(net, schedule) -> Wrapped:
  r"""Denoiser from a v-prediction network (Salimans & Ho).

  .. math:: \hat x_0 = (\alpha x - \sigma v)/(\alpha^2+\sigma^2)

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import parameterization, schedules
    >>> d = parameterization.from_v(lambda x, t, c: jnp.zeros_like(x), schedules.vp_cosine())
    >>> d(jnp.ones((2, 3)), jnp.full((2,), 0.5)).shape
    (2, 3)

  References:
    Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion Models",
    arXiv:2202.00512 (Sec. 4, App. D).
  """
  return _wrapper("v")(net, schedule)


def from_flow(net, schedule) -> Wrapped:
  r"""Denoiser from a flow-matching velocity network ``u = eps - x0``.

  .. math:: \hat x_0 = (x - \sigma u)/(\alpha + \sigma)\quad(= x - t u \text{ for flow})

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import parameterization, schedules
    >>> d = parameterization.from_flow(lambda x, t, c: jnp.ones_like(x), schedules.flow())
    >>> d(jnp.ones((1, 2)), jnp.full((1,), 0.25)).tolist()
    [[0.75, 0.75]]

  References:
    Lipman et al., "Flow Matching for Generative Modeling", arXiv:2210.02747;
    Liu et al., "Flow Straight and Fast", arXiv:2209.03003.
  """
  return _wrapper("velocity")(net, schedule)


def from_x0(net, schedule) -> Wrapped:
  """Denoiser from a data-prediction network (shape-checked identity).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import parameterization, schedules
    >>> d = parameterization.from_x0(lambda x, t, c: 0.5 * x, schedules.flow())
    >>> d(jnp.ones((1, 2)), jnp.full((1,), 0.5)).tolist()
    [[0.5, 0.5]]

  References:
    Karras et al., "Elucidating the Design Space...", arXiv:2206.00364 (denoiser D).
  """
  return _wrapper("x0")(net, schedule)
