"""The plain conditional call (``sample``'s default rule) and rules made of two functions
(:class:`~jaxdiff._types.FunctionRule`)."""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxdiff._types import Conditional, FunctionRule

Array = jax.Array


def conditional() -> Conditional:
  """The plain conditional call (no guidance); see :class:`Conditional`.

  Example:
    >>> from jaxdiff import guidance
    >>> guidance.conditional().calls
    (1,)
  """
  return Conditional()


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
