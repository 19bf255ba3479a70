"""Shared types of the sampling pipeline: the seams every component plugs into.

The loop body of :func:`jaxdiff.sample` only wires these together::

    grid of t -> [cache o network] -> guidance rule -> Prediction -> solver step (+ corrector)

A *denoiser* is any callable ``denoise(x, t, cond) -> x0_hat`` (data prediction),
batch first: ``x`` has shape ``(B, ...)``, ``t`` has shape ``(B,)`` in the schedule's own
time units, ``cond`` is a batch-first pytree (or ``None``). It returns one array of
``x``'s shape and dtype: :func:`jaxdiff.sample` checks this when it traces the loop
(before anything runs) and raises an error naming ``denoise`` for a pytree, a scalar, a
broadcastable shape or another dtype. A denoiser that supports Perturbed-Attention
Guidance additionally accepts the keyword ``perturb`` (bool ``(B,)``).

A class-conditional denoiser may declare an ``int`` attribute ``num_classes`` (the
Gaussian mixture's does). :func:`jaxdiff.sample` then applies the label policy to a
concrete integer ``cond`` before compiling: labels must lie in ``[0, num_classes)`` or be
the null label ``-1`` (unconditional), else a ``ValueError`` naming ``cond``. Labels that
are traced (``sample`` inside the user's ``jit``) cannot be checked; a denoiser that
declares ``num_classes`` must then poison (NaN) the rows with invalid labels, as
:class:`jaxdiff.testing.GMMDenoiser` does, via
``jaxdiff._validation.check_labels``'s validity mask. Every wrapper of a network
(parameterizations, block skipping, early exit) forwards what the network declares
(:mod:`jaxdiff._wrappers`), so the check is the same through any stack of wrappers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from jaxdiff._module import module, static
from jaxdiff._network import as_network

Array = jax.Array
PyTree = Any
Denoiser = Callable[..., Array]


class Prediction(NamedTuple):
  """What a guidance rule hands to a solver step.

  Attributes:
    x0: the data prediction the step moves toward (the guided denoised estimate).
    x0_renoise: the data prediction used to re-noise (recover the noise direction
      ``eps = (x - alpha x0_renoise) / sigma``). Equal to ``x0`` for every rule except
      CFG++ (Chung et al., 2024), which re-noises with the unconditional prediction.
  """

  x0: Array
  x0_renoise: Array

  @classmethod
  def of(cls, x0: Array) -> Prediction:
    """A prediction that denoises and re-noises with the same ``x0``."""
    return cls(x0, x0)


class StepContext(NamedTuple):
  """Where in the trajectory a network evaluation happens (all traced arrays).

  Attributes:
    t: time of this evaluation in the schedule's units, scalar.
    alpha: signal scale alpha(t), scalar.
    sigma: noise scale sigma(t), scalar.
    step: index of the solver step this evaluation belongs to (int32 scalar).
    num_steps: number of solver steps in the trajectory (int32 scalar).
    key: a PRNG key private to this evaluation (for stochastic rules).
  """

  t: Array
  alpha: Array
  sigma: Array
  step: Array
  num_steps: Array
  key: Array


class GuidanceRule:
  """Base class of the guidance rules: which network evaluations to make and how to
  combine them.

  A rule is an immutable pytree (:func:`jaxdiff._module.module`): its float
  hyperparameters are leaves, so a new ``scale`` does not recompile :func:`jaxdiff.sample`
  and an equal rule built twice shares one compilation. A rule defines

  * ``init(x_T, cond) -> state``: its carried state (``()`` when stateless), built once
    per :func:`jaxdiff.sample` call;
  * ``guide(net, x, cond, ctx, state) -> (Prediction, state, net)``: makes its network
    calls through the :class:`~jaxdiff.Network` ``net`` (``x0, net = net(x, t, c)``;
    batched into one call where it can), combines them, and returns the prediction,
    its new state and the network after the calls (which counts the evaluations);
  * ``calls``: the row multiples of the calls one ``guide`` makes outside any control
    flow of its own, in order (CFG's one batched call on ``2B`` rows: ``(2,)``); what a
    feature cache allots its slots by. ``None``: not declared (no cache with this rule).
    Calls inside the rule's own ``lax.cond`` go through :meth:`Network.cond` and are
    not counted here;
  * ``num_classes`` (optional): a rule that indexes class labels declares how many there
    are, so :func:`jaxdiff.sample` range-checks concrete ``cond`` before compiling;
  * ``check_grid(grid)`` (optional): a rule built for one grid (LinearAG's per-step
    coefficients) raises when :func:`jaxdiff.sample` runs it on another, before compiling.

  :meth:`apply` is the same step for a plain denoiser, returning the number of
  evaluations instead of the network: what a user calls by hand.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import GuidanceRule, Prediction, StepContext
    >>> from jaxdiff._module import module
    >>> @module
    ... class Doubled(GuidanceRule):  # twice the conditional prediction
    ...   calls = (1,)
    ...   def guide(self, net, x, cond, ctx, state):
    ...     x0, net = net(x, jnp.full((x.shape[0],), ctx.t), cond)
    ...     return Prediction.of(2 * x0), state, net
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> pred, _, nfe = Doubled().apply(lambda x, t, c: x, jnp.ones((2, 3)), None, ctx, ())
    >>> float(pred.x0[0, 0]), int(nfe)
    (2.0, 1)
  """

  num_classes = None
  calls: tuple[int, ...] | None = None

  def __new__(cls, *args, **kwargs):
    if cls is GuidanceRule:
      if not args and not kwargs:
        raise TypeError("GuidanceRule is a base class; build a rule with jaxdiff.guidance")
      warnings.warn(
        "GuidanceRule(init, apply) is deprecated: use jaxdiff.guidance.from_functions(init, "
        "apply) (the same functions) or subclass GuidanceRule (docs/extending.md); it "
        "will be removed in the next release",
        DeprecationWarning,
        stacklevel=2,
      )
      return FunctionRule(*args, **kwargs)
    return super().__new__(cls)

  def init(self, x_T: Array, cond: PyTree) -> PyTree:
    del x_T, cond
    return ()

  def check_grid(self, grid) -> None:
    """Raises if the rule cannot serve ``grid`` (every grid, unless a rule says otherwise)."""
    del grid

  def guide(self, net, x: Array, cond: PyTree, ctx: StepContext, state: PyTree):
    raise NotImplementedError

  def apply(self, denoise, x: Array, cond: PyTree, ctx: StepContext, state: PyTree):
    """``(Prediction, state, nfe)`` of one step with the plain denoiser ``denoise``."""
    net = as_network(denoise, x)
    pred, state, out = self.guide(net, x, cond, ctx, state)
    return pred, state, out.nfe - net.nfe


class Schedule(Protocol):
  """A noise schedule: ``x_t = alpha(t) x_0 + sigma(t) eps``."""

  def alpha(self, t: Array) -> Array: ...
  def sigma(self, t: Array) -> Array: ...
  def logsnr(self, t: Array) -> Array: ...
  def t_from_logsnr(self, logsnr: Array) -> Array: ...


@module
class FunctionRule(GuidanceRule):
  """A rule given as two functions, the form rules had before they were objects.

  ``init_fn(x_T, cond) -> state``; ``apply_fn(denoise, x, cond, ctx, state) ->
  (Prediction, state, nfe)`` with a plain ``denoise(x, t, cond) -> x0`` and ``nfe`` the
  evaluations per sample it made. The functions are static (part of the compilation key:
  build the rule once); its calls cannot be cached (``calls = None``).

  Example:
    >>> from jaxdiff import guidance
    >>> rule = guidance.from_functions(lambda x_T, cond: (), lambda d, x, c, ctx, s: None)
    >>> isinstance(rule, guidance.FunctionRule), rule.calls
    (True, None)
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
    return pred, state, net.count(used)  # the full network, called outside `net`


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
    x0, net = net(x, jnp.broadcast_to(jnp.asarray(ctx.t), (x.shape[0],)), cond)
    return Prediction.of(x0), state, net
