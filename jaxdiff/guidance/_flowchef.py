"""FlowChef: steer the state by the loss gradient at the data prediction (no backprop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxdiff._module import module, setfield, static
from jaxdiff._types import GuidanceRule, Prediction
from jaxdiff._validation import check_choice, check_flag, check_output
from jaxdiff.guidance._common import batch_t, hypers, poison

Array = jax.Array

VARIANTS = ("state", "x0")


@module
class FlowChef(GuidanceRule):
  """FlowChef; built by :func:`flowchef`.

  ``scale`` is a leaf; ``loss_fn``, ``variant`` and ``last_step`` are static. One network
  call per step (``calls = (1,)``); the gradient is the loss's, never the network's.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance
    >>> rule = guidance.flowchef(lambda x0, c: jnp.sum(x0**2, -1), 0.5)
    >>> isinstance(rule, guidance.FlowChef), rule.calls
    (True, (1,))
  """

  loss_fn: Callable[..., Array] = static()
  scale: Any = 1.0
  variant: str = static("state")
  last_step: bool = static(False)
  traced: tuple = static(())

  calls = (1,)

  def __post_init__(self):
    check_choice("flowchef: variant", self.variant, VARIANTS)
    setfield(self, "last_step", check_flag("flowchef: last_step", self.last_step))
    if not callable(self.loss_fn):
      raise TypeError(
        f"flowchef: loss_fn must be callable (x0, cond) -> (B,), got {self.loss_fn!r}"
      )
    setfield(self, "traced", hypers("flowchef", self, scale=dict(lo=0.0)))

  def guide(self, net, x, cond, ctx, state):
    x0, net = net(x, batch_t(ctx, x), cond)

    def total(z):
      losses = check_output(
        self.loss_fn(z, cond),
        shape=(x.shape[0],),
        dtype="floating",
        name="loss_fn(x0, cond)",
        where="flowchef",
        hint="one loss per sample",
      )
      return jnp.sum(losses)

    g = jax.grad(total)(lax.stop_gradient(x0)).astype(x0.dtype)
    on = jnp.asarray(True) if self.last_step else ctx.step < ctx.num_steps - 1
    step = jnp.where(on, jnp.asarray(self.scale, x0.dtype), 0) * g
    if self.variant == "x0":
      return Prediction.of(poison(self, x0 - step, self.traced)), state, net
    alpha = jnp.asarray(ctx.alpha, x0.dtype)
    ratio = jnp.where(
      alpha > 0, jnp.asarray(ctx.sigma, x0.dtype) / jnp.where(alpha > 0, alpha, 1), 0
    )
    pred = Prediction(
      poison(self, x0 - step, self.traced), poison(self, x0 + ratio * step, self.traced)
    )
    return pred, state, net


def flowchef(
  loss_fn: Callable[..., Array],
  scale=1.0,
  *,
  variant: str = "state",
  last_step: bool = False,
) -> FlowChef:
  r"""FlowChef: gradient-free steering of a (rectified-flow) sampler in the vector field.

  .. math::
    g = \nabla_{\hat x_0} L(\hat x_0),\qquad x_t \leftarrow x_t - s\,g,

  then the solver step with the network output of the *unsteered* state: the gradient is
  taken w.r.t. the data prediction, never through the network ("gradient skipping"; the
  official code differentiates ``loss(z - t v)`` with the velocity ``v`` detached).

  * ``variant="state"`` (the paper's Alg. 1): shift the state and keep the velocity
    :math:`v = \epsilon - \hat x_0`. On the ``flow`` schedule this is the prediction
    pair ``(x0 - s g, x0 + s g sigma/alpha)`` (both ``x0`` and the implied ``eps`` move
    by ``-s g``), for which a first-order step (Euler = DDIM on ``flow``) is exactly
    ``Euler(x_t - s g)`` with the old velocity. Under another schedule the same pair
    shifts ``x0`` and ``eps`` alike (the state by ``(alpha' + sigma') s g``).
    At ``alpha = 0`` (pure noise) ``eps`` cannot be shifted; only ``x0`` moves.
  * ``variant="x0"``: steer only the data prediction, ``x0 - s g`` (the state follows
    through the solver's interpolation).

  The official code does not steer at the last step; neither does this rule unless
  ``last_step=True``.

  Our loss convention: ``loss_fn`` returns one loss per sample and ``g`` is its gradient.
  The code's loss is the *mean* masked MSE over pixels, so its ``gradient_scale`` ``s_p``
  corresponds to ``scale = 2 s_p / M`` with ``L = 1/2 ||A x0 - y||^2`` over ``M``
  measurements (:func:`jaxdiff.inverse.measurement_loss`).

  Args:
    loss_fn: ``loss_fn(x0, cond) -> (B,)`` per-sample losses of the data prediction
      (a measurement loss, or ``-log p(y | x0)`` of a classifier for class guidance).
    scale: step size ``s >= 0``.
    variant: ``"state"`` or ``"x0"``.
    last_step: also steer at the last step.

  Returns:
    A stateless :class:`FlowChef` rule (``nfe = 1``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import StepContext, guidance
    >>> loss = lambda x0, c: 0.5 * jnp.sum((x0 - 1.0) ** 2, axis=-1)
    >>> rule = guidance.flowchef(loss, 0.5, variant="x0")
    >>> ctx = StepContext(jnp.array(0.5), 0.5, 0.5, 0, 10, None)
    >>> pred, _, _ = rule.apply(lambda x, t, c: x, jnp.zeros((1, 2)), None, ctx, ())
    >>> pred.x0.tolist()
    [[0.5, 0.5]]

  References:
    Patel, Wen, Metaxas & Yang, "Steering Rectified Flow Models in the Vector Field for
    Controlled Image Generation", arXiv:2412.00100 (Sec. 4, Alg. 1).
  """
  return FlowChef(loss_fn, scale, variant, last_step)
