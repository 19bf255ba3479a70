"""Weight compander (Cakaj et al.): a nonlinear reparameterization of every weight."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from optim._validation import check_floating, check_mask, check_scalar

PyTree = Any


def _kernels(params):
  """The default mask: weight matrices and kernels (``ndim >= 2``), not biases or scales."""
  return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def _check(alpha, beta):
  check_scalar("alpha", alpha, lo=0.0, hi=1.0, lo_open=True)
  check_scalar("beta", beta, lo=0.0, lo_open=True)


def _masked_map(fn, params, mask, who):
  check_floating(params, "params", who)
  if mask is None:
    mask = _kernels
  check_mask(mask, params, who, "mask")
  m = mask(params) if callable(mask) else mask
  # The mask may be a prefix of params (optax.masked's semantics).
  return jax.tree.map(lambda keep, sub: jax.tree.map(fn, sub) if keep else sub, m, params)


def _compand_leaf(w, alpha, beta):
  return _compand(w, jnp.asarray(alpha, w.dtype), jnp.asarray(beta, w.dtype))


@jax.custom_jvp
def _compand(w, alpha, beta):
  return _compand_and_slope(w, alpha, beta)[0]


def _compand_and_slope(w, alpha, beta):
  """``f(w)`` and ``f'(w) = alpha t / (|w| + beta)`` with ``t = (|w| + beta)**alpha``.

  One power per element, shared by the value and the slope (powers dominate the cost on
  CPU); the slope at ``w = 0`` is ``alpha * beta**(alpha - 1)`` (not ``sign'(0) = 0``).
  """
  a = jnp.abs(w) + beta
  t = a**alpha
  return jnp.sign(w) * (t - beta**alpha), alpha * t / a


@_compand.defjvp
def _compand_jvp(primals, tangents):
  w, alpha, beta = primals
  dw, dalpha, dbeta = tangents
  out, slope = _compand_and_slope(w, alpha, beta)
  # Derivatives in alpha and beta (learned hyperparameters), by autodiff of the formula.
  _, d_ab = jax.jvp(lambda al, be: _compand_and_slope(w, al, be)[0], (alpha, beta), (dalpha, dbeta))
  return out, slope * dw + d_ab


def compand_weights(
  params: PyTree,
  *,
  alpha: Any = 0.5,
  beta: Any = 0.1,
  mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> PyTree:
  r"""The weight compander: each raw weight :math:`w` is used as :math:`f(w)` in the forward pass.

  .. math::
    f(w) = \operatorname{sign}(w)\,\big((|w| + \beta)^{\alpha} - \beta^{\alpha}\big),
    \qquad 0 < \alpha \le 1,\ \beta > 0.

  :math:`f` is odd, increasing, :math:`f(0) = 0`, with slope
  :math:`f'(w) = \alpha(|w| + \beta)^{\alpha - 1}`: above 1 near zero when
  :math:`\alpha\beta^{\alpha-1} > 1` (small weights get larger steps, so "dead" weights are
  pushed away from zero), decaying like :math:`|w|^{\alpha-1}` for large weights (their
  magnitude is restricted: :math:`f(w) \le |w|^\alpha`). Those are the two effects the
  paper's compander is built for; training the raw weights through :math:`f` is the whole
  method (no extra loss term), and it composes with weight decay, dropout, any optimizer.

  Variant note: the stored sources did not give the paper's closed form, so this is an
  assumption: the power-law compander above (the shape the paper describes: magnitude
  restriction and a slope above 1 at zero) with hyperparameters :math:`\alpha, \beta`.
  Both may be traced arrays, so they can be learned with the weights as the paper's
  extension does (keep :math:`0 < \alpha \le 1`, :math:`\beta > 0` then, e.g. through a
  sigmoid and a softplus); concrete values are checked.

  Apply it inside the loss: ``loss(compand_weights(params), batch)``; the optimizer sees
  the raw weights. :func:`expand_weights` is the inverse (initialize the raw weights so
  that the companded network starts at a standard initialization). For flax ``nnx``
  modules: :func:`nnx_companded`.

  Args:
    params: a pytree of floating-point arrays (the raw weights).
    alpha: :math:`\alpha \in (0, 1]` (1 is the identity).
    beta: :math:`\beta > 0`.
    mask: which leaves to compand: a pytree of bools like ``params`` or a callable
      ``params -> such a pytree``. Default: leaves with ``ndim >= 2`` (weights, not biases
      or normalization scales).

  Returns:
    ``params`` with :math:`f` applied to the masked leaves (dtypes kept).

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.compander import compand_weights, expand_weights
    >>> w = {"kernel": jnp.array([[0.0, 0.01, -1.0]]), "bias": jnp.array([1.0])}
    >>> c = compand_weights(w, alpha=0.5, beta=0.1)
    >>> [round(float(x), 4) for x in c["kernel"][0]], c["bias"].tolist()
    ([0.0, 0.0154, -0.7326], [1.0])
    >>> bool(jnp.allclose(expand_weights(c, alpha=0.5, beta=0.1)["kernel"], w["kernel"], atol=1e-6))
    True

  References:
    Cakaj, Mehnert, Yang, "Weight Compander: A Simple Weight Reparameterization for
    Regularization", IJCNN 2023, arXiv:2306.16993.
  """
  _check(alpha, beta)
  return _masked_map(lambda w: _compand_leaf(w, alpha, beta), params, mask, "compand_weights")


def expand_weights(
  params: PyTree,
  *,
  alpha: Any = 0.5,
  beta: Any = 0.1,
  mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> PyTree:
  r"""The inverse of :func:`compand_weights`: raw weights whose compander output is ``params``.

  .. math::
    f^{-1}(y) = \operatorname{sign}(y)\,\big((|y| + \beta^{\alpha})^{1/\alpha} - \beta\big).

  Use it to start training from a standard initialization of the companded weights.

  Args:
    params: the companded weights (floating point).
    alpha: :math:`\alpha \in (0, 1]`.
    beta: :math:`\beta > 0`.
    mask: as in :func:`compand_weights`.

  Returns:
    The raw weights.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.compander import expand_weights
    >>> round(float(expand_weights({"k": jnp.array([[0.5]])})["k"][0, 0]), 4)
    0.5662

  References:
    Cakaj, Mehnert, Yang, "Weight Compander", arXiv:2306.16993.
  """
  _check(alpha, beta)

  def inverse(y):
    a = jnp.abs(y)
    return (jnp.sign(y) * ((a + beta**alpha) ** (1.0 / alpha) - beta)).astype(y.dtype)

  return _masked_map(inverse, params, mask, "expand_weights")


def nnx_companded(
  model: Any,
  *,
  alpha: Any = 0.5,
  beta: Any = 0.1,
  mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> Any:
  r"""A flax ``nnx`` module whose ``nnx.Param`` weights are companded (a functional view).

  Returns a new module (same graph) whose parameters are :math:`f(w)` of ``model``'s (see
  :func:`compand_weights`); other state (batch statistics, RNG counters) is shared
  unchanged. Call it inside the loss so gradients flow to ``model``'s raw weights:
  ``nnx.grad(lambda m: loss(nnx_companded(m)(x), y))(model)``.

  Args:
    model: an ``nnx.Module``.
    alpha: :math:`\alpha \in (0, 1]`.
    beta: :math:`\beta > 0`.
    mask: as in :func:`compand_weights`, over the ``nnx.State`` of the ``nnx.Param``
      variables. Default: arrays with ``ndim >= 2``.

  Returns:
    An ``nnx.Module`` of the same type.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from optim.compander import nnx_companded
    >>> lin = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> lin.kernel[...] = jnp.array([[1.0], [-0.01]])
    >>> [round(float(v), 4) for v in nnx_companded(lin).kernel[...][:, 0]]
    [0.7326, -0.0154]

  References:
    Cakaj, Mehnert, Yang, "Weight Compander", arXiv:2306.16993.
  """
  from flax import nnx

  _check(alpha, beta)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return nnx.merge(graphdef, compand_weights(params, alpha=alpha, beta=beta, mask=mask), rest)
