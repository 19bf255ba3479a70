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
``jaxdiff._validation.check_labels``'s validity mask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax

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


class GuidanceRule(NamedTuple):
  """A guidance rule: which network evaluations to make and how to combine them.

  ``init(x_T, cond) -> state`` builds the rule's carried state (``()`` when stateless);
  it is called once per :func:`jaxdiff.sample` call, so state resets per call.

  ``apply(denoise, x, cond, ctx, state) -> (Prediction, state, nfe)`` makes the
  evaluations (batched into one call where it can), combines them and returns the
  prediction, the new state and ``nfe``, an int32 scalar counting network evaluations
  made *per sample* at this point (CFG: 2, Adaptive Guidance after its switch: 1).

  ``num_classes`` (optional): a rule that indexes class labels (classifier guidance)
  declares how many there are, so :func:`jaxdiff.sample` range-checks concrete ``cond``
  before compiling, as it does for a denoiser that declares ``num_classes``.

  A rule is a pair of closures, so it is static to ``jit``: build it once and reuse it
  (a freshly built rule, even with equal hyperparameters, compiles ``sample`` again). To
  sweep a hyperparameter with one compilation, build the rule inside a ``jit``-ed
  function that takes the hyperparameter as an argument.
  """

  init: Callable[[Array, PyTree], PyTree]
  apply: Callable[[Denoiser, Array, PyTree, StepContext, PyTree], tuple[Prediction, PyTree, Array]]
  num_classes: int | None = None


class Schedule(Protocol):
  """A noise schedule: ``x_t = alpha(t) x_0 + sigma(t) eps``."""

  def alpha(self, t: Array) -> Array: ...
  def sigma(self, t: Array) -> Array: ...
  def logsnr(self, t: Array) -> Array: ...
  def t_from_logsnr(self, logsnr: Array) -> Array: ...
