"""SSO: target-based surrogates for stochastic optimization (Lavington et al.).

One outer step takes one gradient of the loss in the model's output (target) space,
builds a surrogate that is the loss linearised in the outputs plus a proximal term in the
outputs (plus the model's own regulariser), and minimises it over the parameters with
several cheap steps of any optax optimizer: the expensive part (the loss gradient, e.g.
a simulator or a large batch) is paid once per outer step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim._validation import check_floating, check_output, check_scalar, is_traced

PyTree = Any


class SSOStep(NamedTuple):
  """Result of :func:`sso_step`.

  Attributes:
    params: :math:`\\theta_{t+1}`, the last inner iterate.
    loss: :math:`\\ell(z_t)`, the loss at the outputs of :math:`\\theta_t` (the one
      expensive evaluation of the step).
    surrogate_values: ``(num_inner_steps + 1,)``, :math:`g_t(\\theta_t^{(k)})` for
      :math:`k = 0, \\dots, m` (the first is :math:`\\ell(z_t) + r(\\theta_t)`).
  """

  params: PyTree
  loss: jax.Array
  surrogate_values: jax.Array


def _check_fns(model_fn, loss_fn, regularizer, where):
  for name, fn, sig in (
    ("model_fn", model_fn, "params -> outputs"),
    ("loss_fn", loss_fn, "outputs -> scalar loss"),
  ):
    if not callable(fn):
      raise TypeError(f"{where}: {name} must be callable ({sig}), got {type(fn).__name__}")
  if regularizer is not None and not callable(regularizer):
    raise TypeError(
      f"{where}: regularizer must be None or callable (params -> scalar), got "
      f"{type(regularizer).__name__}"
    )


def _target(model_fn, loss_fn, params, outputs, where):
  z = model_fn(params)
  check_floating(z, "model_fn(params)", where, allow_empty=False)
  if outputs is None:
    outputs = z
  else:
    if jax.tree.structure(outputs) != jax.tree.structure(z):
      raise ValueError(
        f"{where}: outputs must have the structure of model_fn(params): got "
        f"{jax.tree.structure(outputs)}, expected {jax.tree.structure(z)}"
      )
    for o, zz in zip(jax.tree.leaves(outputs), jax.tree.leaves(z)):
      check_output(o, like=zz, name="outputs", where=where, like_name="model_fn(params)")
  outputs = jax.lax.stop_gradient(outputs)

  def loss(o):
    out = loss_fn(o)
    check_output(out, scalar=True, name="loss_fn", where=where)
    return out

  value, grad = jax.value_and_grad(loss)(outputs)
  return outputs, value, jax.lax.stop_gradient(grad)


def _surrogate(model_fn, outputs, value, grad, eta, regularizer):
  def g(params):
    z = model_fn(params)
    diff = jax.tree.map(lambda a, b: a - b, z, outputs)
    lin = sum(jnp.sum(gi * di) for gi, di in zip(jax.tree.leaves(grad), jax.tree.leaves(diff)))
    prox = sum(jnp.sum(jnp.square(di)) for di in jax.tree.leaves(diff))
    out = value + lin + prox / (2.0 * eta)
    if regularizer is not None:
      r = regularizer(params)
      check_output(r, scalar=True, name="regularizer", where="sso")
      out = out + r
    return out

  return g


def _check_eta(eta, where):
  if callable(eta) or isinstance(eta, (list, tuple, dict)):
    raise TypeError(f"{where}: eta must be a positive real number, got {type(eta).__name__}")
  check_scalar("eta", eta, lo=0.0, lo_open=True)


def sso_surrogate(
  model_fn: Callable[[PyTree], PyTree],
  loss_fn: Callable[[PyTree], jax.Array],
  params: PyTree,
  *,
  eta: float,
  regularizer: Callable[[PyTree], jax.Array] | None = None,
  outputs: PyTree | None = None,
) -> Callable[[PyTree], jax.Array]:
  r"""The SSO surrogate of ``loss_fn(model_fn(params))`` built at ``params``.

  With :math:`z_t = ` ``model_fn(params)`` (or the given ``outputs``) and one gradient of
  the loss in the output space,

  .. math::
    g_t(\theta) = \ell(z_t) + \langle \nabla_z \ell(z_t), z(\theta) - z_t \rangle
      + \frac{1}{2\eta} \|z(\theta) - z_t\|^2 + r(\theta).

  For an :math:`L`-smooth loss and :math:`\eta \le 1/L` it is a global upper bound of
  :math:`\ell(z(\theta)) + r(\theta)` that touches it at :math:`\theta_t`.

  Args:
    model_fn: ``params -> outputs`` (an array or a pytree of arrays, e.g. the logits on
      a batch).
    loss_fn: ``outputs -> scalar`` (e.g. the mean loss on that batch).
    params: :math:`\theta_t`.
    eta: :math:`\eta > 0`, the output-space step size.
    regularizer: ``params -> scalar`` :math:`r` (default: none).
    outputs: :math:`z_t` if already computed (a forward pass the caller made); shaped like
      ``model_fn(params)``.

  Returns:
    ``g_t``, a function ``params -> scalar``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.loops import sso_surrogate
    >>> X, y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([1.0, 1.0])
    >>> g = sso_surrogate(lambda w: X @ w, lambda z: 0.5 * jnp.sum((z - y) ** 2),
    ...                   jnp.zeros(2), eta=1.0)
    >>> float(g(jnp.zeros(2))), float(g(jnp.array([1.0, 0.5])))
    (1.0, 0.0)

  References:
    Lavington, Vaswani, Babanezhad, Schmidt, Le Roux, "Target-based Surrogates for
    Stochastic Optimization", ICML 2023, arXiv:2302.02607 (the surrogate, Eq. (2)).
  """
  where = "sso_surrogate"
  _check_fns(model_fn, loss_fn, regularizer, where)
  _check_eta(eta, where)
  check_floating(params, "params", where, allow_empty=False)
  outputs, value, grad = _target(model_fn, loss_fn, params, outputs, where)
  return _surrogate(model_fn, outputs, value, grad, eta, regularizer)


def sso_step(
  model_fn: Callable[[PyTree], PyTree],
  loss_fn: Callable[[PyTree], jax.Array],
  params: PyTree,
  *,
  optimizer: optax.GradientTransformation,
  num_inner_steps: int,
  eta: float,
  regularizer: Callable[[PyTree], jax.Array] | None = None,
  outputs: PyTree | None = None,
) -> SSOStep:
  r"""One outer step of SSO: one output-space gradient, then ``num_inner_steps`` optimizer steps.

  Builds the surrogate :math:`g_t` of :func:`sso_surrogate` at :math:`\theta_t` and runs
  ``optimizer`` (any optax ``GradientTransformation``, initialised afresh at
  :math:`\theta_t`, as the official code does) on it:

  .. math::
    \theta_t^{(0)} = \theta_t, \qquad
    \theta_t^{(k+1)} = \theta_t^{(k)} + \mathrm{update}\bigl(\nabla g_t(\theta_t^{(k)})\bigr),
    \qquad \theta_{t+1} = \theta_t^{(m)}.

  With ``optax.sgd(alpha)`` that is the paper's Algorithm 1 (SSO with SGD inner steps).
  Only the inner steps call ``model_fn`` again; ``loss_fn`` is differentiated once.
  The inner loop is a ``lax.scan`` of exactly ``num_inner_steps`` steps. This is a whole
  outer step rather than an optax transformation: one optax update maps one gradient to
  one update, while SSO evaluates the model at every inner iterate. A training loop
  calls it once per (mini)batch, with ``model_fn`` and ``loss_fn`` closing over the
  batch. A non-finite loss raises a ``ValueError`` when concrete; traced (under
  ``jit``), it makes the surrogate and so the returned params NaN.

  Args:
    model_fn: ``params -> outputs`` on the current batch.
    loss_fn: ``outputs -> scalar`` on the current batch.
    params: :math:`\theta_t`.
    optimizer: the inner optax optimizer.
    num_inner_steps: :math:`m \ge 1` (static).
    eta: :math:`\eta > 0`, the output-space step size.
    regularizer: ``params -> scalar`` :math:`r`, added to the surrogate (default: none).
    outputs: :math:`z_t` if already computed, shaped like ``model_fn(params)``.

  Returns:
    An :class:`SSOStep`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optim.loops import sso_step
    >>> X, y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([1.0, 1.0])
    >>> out = sso_step(lambda w: X @ w, lambda z: 0.5 * jnp.sum((z - y) ** 2), jnp.zeros(2),
    ...                optimizer=optax.sgd(0.2), num_inner_steps=50, eta=1.0)
    >>> out.params.round(3), float(out.loss)
    (Array([1. , 0.5], dtype=float32), 1.0)

  References:
    Lavington, Vaswani, Babanezhad, Schmidt, Le Roux, "Target-based Surrogates for
    Stochastic Optimization", ICML 2023, arXiv:2302.02607 (Algorithm 1).
  """
  where = "sso_step"
  _check_fns(model_fn, loss_fn, regularizer, where)
  _check_eta(eta, where)
  check_floating(params, "params", where, allow_empty=False)
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(
      f"{where}: optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}"
    )
  num_inner_steps = check_scalar(
    "num_inner_steps", num_inner_steps, lo=1, integer=True, static=True
  )
  outputs, value, grad = _target(model_fn, loss_fn, params, outputs, where)
  if not is_traced(value) and not np.isfinite(float(value)):
    raise ValueError(f"{where}: loss_fn(outputs) must be finite, got {float(value)}")
  g = _surrogate(model_fn, outputs, value, grad, eta, regularizer)
  vg = jax.value_and_grad(g)

  def body(carry, _):
    p, state = carry
    val, gr = vg(p)
    upd, state = optimizer.update(gr, state, p)
    return (optax.apply_updates(p, upd), state), val

  (params, _), vals = jax.lax.scan(body, (params, optimizer.init(params)), length=num_inner_steps)
  last = g(params)
  return SSOStep(params, value, jnp.concatenate([vals, last[None]]))
