"""OneActor's cluster-conditioned guidance: target-cluster attraction, auxiliary exclusion."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff._module import module, setfield, static
from jaxdiff._types import GuidanceRule, Prediction
from jaxdiff._validation import check_scalar, static_equal
from jaxdiff.guidance._common import batch_t, evaluate, hypers, null_fn, poison

Array = jax.Array


def _cond_fn(value, name: str):
  """``cond -> condition`` from an argument that is a callable, a value broadcast to every
  leaf of ``cond``, or ``None`` (``cond`` itself); errors name ``name``."""
  if value is None:
    return lambda cond: cond
  if callable(value):

    def call(cond):
      out = value(cond)
      if jax.tree.structure(out) != jax.tree.structure(cond):
        raise ValueError(
          f"{name}(cond) must have the structure of cond, got {jax.tree.structure(out)} for "
          f"{jax.tree.structure(cond)}"
        )
      for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(cond)):
        if jnp.shape(a) != jnp.shape(b) or jnp.result_type(a) != jnp.result_type(b):
          raise ValueError(
            f"{name}(cond) must match cond leaf for leaf, got {jnp.result_type(a)}"
            f"{jnp.shape(a)} for {jnp.result_type(b)}{jnp.shape(b)}"
          )
      return out

    return call
  if isinstance(value, (str, bytes)):
    raise TypeError(f"{name} must be a condition (array) or a callable cond -> condition")
  try:
    arr = jnp.asarray(value)
  except (TypeError, ValueError) as e:
    raise TypeError(f"{name} must be a condition (array) or a callable, got {value!r}") from e
  if not (jnp.issubdtype(arr.dtype, jnp.number) or arr.dtype == jnp.bool_):
    raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")

  def make(cond):
    def leaf(c):
      dtype = jnp.result_type(c)
      if not jnp.can_cast(arr.dtype, dtype, casting="same_kind"):
        raise TypeError(
          f"{name} of dtype {arr.dtype} cannot stand for a condition of dtype {dtype} "
          "without truncation"
        )
      try:
        return jnp.broadcast_to(arr.astype(dtype), jnp.shape(c))
      except ValueError as e:
        raise ValueError(
          f"{name} of shape {arr.shape} does not broadcast to the condition's shape {jnp.shape(c)}"
        ) from e

    return jax.tree.map(leaf, cond)

  return make


@module
class OneActor(GuidanceRule):
  """OneActor's cluster-conditioned guidance; built by :func:`oneactor`.

  ``scale`` and ``aux_scale`` are leaves; the conditions' builders, the step window and
  ``use_aux`` (an auxiliary condition given with a non-zero ``aux_scale``) are static. One
  batched call per step on the null, the (target or base) and, with ``use_aux``, the
  auxiliary condition: ``calls = (3,)`` or ``(2,)``.

  Example:
    >>> from jaxdiff import guidance
    >>> guidance.oneactor(7.5).calls, guidance.oneactor(7.5, aux_scale=1.0, aux_cond=2).calls
    ((2,), (3,))
  """

  scale: Any
  target_cond: Any = None
  aux_scale: Any = 0.0
  aux_cond: Any = None
  null_cond: Any = -1
  start_step: int = static(0)
  stop_step: int | None = static(None)
  use_aux: bool = static(False)
  traced: tuple = static(())

  def __post_init__(self):
    setfield(self, "traced", hypers("oneactor", self, scale={}, aux_scale=dict(lo=0.0)))
    null_fn(self.null_cond, "oneactor")
    _cond_fn(self.target_cond, "oneactor: target_cond")
    _cond_fn(self.aux_cond, "oneactor: aux_cond")
    start = check_scalar("oneactor: start_step", self.start_step, lo=0, integer=True, static=True)
    setfield(self, "start_step", start)
    if self.stop_step is not None:
      stop = check_scalar(
        "oneactor: stop_step", self.stop_step, lo=start + 1, integer=True, static=True
      )
      setfield(self, "stop_step", stop)
    setfield(self, "use_aux", self.aux_cond is not None and not static_equal(self.aux_scale, 0.0))

  @property
  def calls(self) -> tuple[int, ...]:
    return (3,) if self.use_aux else (2,)

  def guide(self, net, x, cond, ctx, state):
    null = null_fn(self.null_cond, "oneactor")
    step = jnp.asarray(ctx.step)
    active = step >= self.start_step
    if self.stop_step is not None:
      active = active & (step < self.stop_step)
    target = _cond_fn(self.target_cond, "oneactor: target_cond")(cond)
    chosen = jax.tree.map(lambda a, b: jnp.where(active, a, b), target, cond)
    conds = [null(cond), chosen]
    if self.use_aux:
      conds.append(_cond_fn(self.aux_cond, "oneactor: aux_cond")(cond))
    outs, net = evaluate(net, x, batch_t(ctx, x), conds)
    x_u, x_c = outs[0], outs[1]
    x0 = x_u + jnp.asarray(self.scale, x.dtype) * (x_c - x_u)
    if self.use_aux:
      eta2 = jnp.where(active, jnp.asarray(self.aux_scale, x.dtype), 0)
      x0 = x0 - eta2 * (outs[2] - x_u)
    return Prediction.of(poison(self, x0, self.traced)), state, net


def oneactor(
  scale,
  *,
  target_cond=None,
  aux_scale=0.0,
  aux_cond=None,
  null_cond=-1,
  start_step: int = 0,
  stop_step: int | None = None,
) -> OneActor:
  r"""OneActor's cluster-conditioned guidance: toward the target cluster, away from the
  auxiliary ones.

  At the solver steps :math:`i \in [\text{start}, \text{stop})`, with :math:`c_{\text{tar}}`
  the target cluster's condition and :math:`c_{\text{aux}}` the auxiliary clusters'
  (OneActor's prompt embedding shifted by the learned projector's target and mean
  auxiliary offsets),

  .. math::
    \hat\epsilon = \hat\epsilon(x, \varnothing)
      + \eta_1\big(\hat\epsilon(x, c_{\text{tar}}) - \hat\epsilon(x, \varnothing)\big)
      - \eta_2\big(\hat\epsilon(x, c_{\text{aux}}) - \hat\epsilon(x, \varnothing)\big);

  at the other steps, classifier-free guidance on the base condition ``cond``,
  :math:`\hat\epsilon(x, \varnothing) + \eta_1(\hat\epsilon(x, c) - \hat\epsilon(x, \varnothing))`.
  The combination is affine, so it is applied to the data predictions :math:`\hat x_0`
  (the same step). The evaluations are batched into one network call: null, target (or
  base) and, when ``aux_cond`` is given with :math:`\eta_2 \ne 0`, auxiliary (``nfe = 3``,
  else 2). The step index is traced inside :func:`jaxdiff.sample`, so the auxiliary
  evaluation is made at every step (weighted 0 outside the window).

  The form is transcribed from the official inference pipeline (its ``condition_scale``
  branch: ``uncond + eta_1 (text - uncond) - eta_2 (aver - uncond)`` on the steps of
  ``select_steps``, plain CFG on the original prompt elsewhere); the paper's text could
  not be read here. Its defaults: :math:`\eta_1 = 7.5`, :math:`\eta_2 = 0` (no auxiliary
  call), the first 20 of 30 DPM-Solver steps (``start_step=0, stop_step=20``). The
  projector that produces the cluster conditions is trained outside the library.

  Args:
    scale: :math:`\eta_1`, the target attraction (:func:`cfg`'s convention), finite.
    target_cond: the target cluster's condition: a callable ``cond -> condition`` (same
      structure, shapes and dtypes as ``cond``) or an array broadcast to ``cond``; default
      ``cond`` itself (then the rule is CFG).
    aux_scale: :math:`\eta_2 \ge 0`, the auxiliary exclusion.
    aux_cond: the auxiliary clusters' condition, as ``target_cond``; ``None``: no
      auxiliary term.
    null_cond: the unconditional condition (default the null label ``-1``).
    start_step, stop_step: the window of solver steps with the cluster conditions,
      static ints ``0 <= start_step < stop_step`` (``stop_step=None``: to the end).

  Traced hyperparameters are not checked; one that is NaN or out of range poisons the
  output (NaN), see :mod:`jaxdiff.guidance._common`.

  Returns:
    A stateless :class:`OneActor` rule.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import guidance, StepContext
    >>> den = lambda x, t, c: x + c[:, None].astype(x.dtype)  # x0 = x + label
    >>> rule = guidance.oneactor(2.0, target_cond=lambda c: c + 1, aux_scale=0.5, aux_cond=3)
    >>> ctx = StepContext(jnp.array(0.5), 1.0, 1.0, 0, 10, None)
    >>> pred, _, nfe = rule.apply(den, jnp.zeros((1, 1)), jnp.array([0]), ctx, ())
    >>> float(pred.x0[0, 0]), int(nfe)  # -1 + 2 (1 + 1) - 0.5 (3 + 1)
    (1.0, 3)

  References:
    Wang, Yan, Lin, Zhang, Wang, Gong, Dai & Sun, "OneActor: Consistent Character
    Generation via Cluster-Conditioned Guidance", arXiv:2404.10267 (NeurIPS 2024;
    cluster guidance; the official ``pipeline_stable_diffusion_xl.py``).
  """
  return OneActor(scale, target_cond, aux_scale, aux_cond, null_cond, start_step, stop_step)
