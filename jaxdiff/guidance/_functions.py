"""The plain conditional call (``sample``'s default rule) and rules made of two functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff._module import module, replace, static
from jaxdiff._types import GuidanceRule, Prediction
from jaxdiff.guidance._common import batch_t

Array = jax.Array


@module
class Conditional(GuidanceRule):
  r"""No guidance: one conditional call per step, :math:`\hat x_0 = D(x, t, c)`.

  :func:`jaxdiff.sample`'s default rule (``nfe = 1``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, StepContext
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> pred, _, nfe = guidance.conditional().apply(lambda x, t, c: 2 * x, jnp.ones((2, 3)),
    ...                                             None, ctx, ())
    >>> float(pred.x0[0, 0]), int(nfe)
    (2.0, 1)
  """

  calls = (1,)

  def guide(self, net, x, cond, ctx, state):
    x0, net = net(x, batch_t(ctx, x), cond)
    return Prediction.of(x0), state, net


def conditional() -> Conditional:
  """The plain conditional call (no guidance); see :class:`Conditional`.

  Example:
    >>> from jaxdiff import guidance
    >>> guidance.conditional().calls
    (1,)
  """
  return Conditional()


@module
class FunctionRule(GuidanceRule):
  """A rule given as two functions, the form rules had before they were objects.

  ``init_fn(x_T, cond) -> state``; ``apply_fn(denoise, x, cond, ctx, state) ->
  (Prediction, state, nfe)`` with a plain ``denoise(x, t, cond) -> x0`` and ``nfe`` the
  evaluations per sample it made. The functions are static (part of the compilation key:
  build the rule once); its calls cannot be cached (``calls = None``).
  """

  init_fn: Callable = static()
  apply_fn: Callable = static()
  num_classes: Any = static(None)

  def __post_init__(self):
    for name in ("init_fn", "apply_fn"):
      if not callable(getattr(self, name)):
        raise TypeError(
          f"from_functions: {name} must be callable, got {type(getattr(self, name)).__name__}"
        )

  def init(self, x_T, cond):
    return self.init_fn(x_T, cond)

  def guide(self, net, x, cond, ctx, state):
    pred, state, used = self.apply_fn(net.fn, x, cond, ctx, state)
    return pred, state, replace(net, nfe=net.nfe + jnp.asarray(used, jnp.int32))


def from_functions(init: Callable, apply: Callable, *, num_classes: int | None = None):
  """A guidance rule from an ``init`` and an ``apply`` function (see :class:`FunctionRule`).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import Prediction, StepContext, guidance
    >>> def apply(denoise, x, cond, ctx, state):  # twice the conditional prediction
    ...   t = jnp.full((x.shape[0],), ctx.t)
    ...   return Prediction.of(2 * denoise(x, t, cond)), state, 1
    >>> rule = guidance.from_functions(lambda x_T, cond: (), apply)
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> float(rule.apply(lambda x, t, c: x, jnp.ones((1, 2)), None, ctx, ())[0].x0[0, 0])
    2.0
  """
  return FunctionRule(init, apply, num_classes)
