"""Adapter guidance distillation (AGD): CFG baked into adapters on a frozen denoiser.

Jensen & Sadat, "Efficient Distillation of Classifier-Free Guidance using Adapters",
arXiv:2503.07274 (TMLR 2025); official code github.com/cristianpjensen/agd. A frozen
conditional denoiser gets small adapters that take the guidance scale ``w`` (and the
condition, the time) as input (:class:`GuidanceAdapter`); only the adapters are trained
(:func:`freeze_base`), so that one evaluation reproduces classifier-free guidance's
combined prediction. The training states come from CFG-guided sampling trajectories of
the frozen teacher (:func:`guided_states`), not from noised data (:func:`noised_states`,
the paper's ablation), and the loss is the squared error of the noise predictions
(:func:`agd_loss`). At sampling time :func:`jaxdiff.guidance.agd` makes the one call.

The method section of the paper could not be read here; the loss, the trajectory data
and the adapter are transcribed from the official code: ``agd/dit/sample_trajectories.py``
(one trajectory per class label and ``w ~ U[1, 6]``, every step's model input and CFG
output stored), ``agd/dit/train.py`` (``--loss l2``: ``F.mse_loss(eps_student, eps_cfg)``,
only the adapter parameters trained, base frozen) and ``agd/models/additive.py`` (the
additive adapter on each transformer block's attention output).

This module is flax-free (``import jaxdiff`` does not import flax); the nnx adapter is in
:mod:`jaxdiff._distill._adapter_net`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._grids import Grid, validate_grid
from jaxdiff._module import module
from jaxdiff._types import GuidanceRule, Prediction
from jaxdiff._validation import as_key, check_choice, check_finite, check_output, is_traced
from jaxdiff.guidance._common import batch_t, bcast, evaluate, null_fn

Array = jax.Array

PREDICTIONS = ("eps", "x0", "v")


class GuidanceStates(NamedTuple):
  """The distillation data: states, their conditions and the teacher's CFG prediction.

  ``M`` rows, one per (trajectory, step) pair (:func:`guided_states`) or noised example
  (:func:`noised_states`).

  Attributes:
    x: ``(M, ...)`` the states :math:`x_t`.
    t: ``(M,)`` their times.
    alpha, sigma: ``(M,)`` the schedule at ``t`` (:math:`x_t = \\alpha x_0 + \\sigma\\epsilon`).
    cond: ``(M, ...)`` the conditions (class labels).
    scale: ``(M,)`` the guidance scales ``w``.
    target: ``(M, ...)`` the teacher's CFG data prediction
      :math:`\\hat x_u + w(\\hat x_c - \\hat x_u)` at ``(x, t, cond)``.
  """

  x: Array
  t: Array
  alpha: Array
  sigma: Array
  cond: Any
  scale: Array
  target: Array


@module
class _PerSampleCFG(GuidanceRule):
  """CFG with one scale per trajectory (``scale (B,)``): the data collector's rule."""

  scale: Array
  null_cond: Any = -1
  calls = (2,)

  def guide(self, net, x, cond, ctx, state):
    null = null_fn(self.null_cond, "guided_states")
    (x_c, x_u), net = evaluate(net, x, batch_t(ctx, x), [cond, null(cond)])
    w = bcast(jnp.asarray(self.scale, x.dtype), x)
    return Prediction.of(x_u + w * (x_c - x_u)), state, net


def _scales(scale, b: int, dtype) -> Array:
  """``scale`` (a number or ``(B,)``) as a floating ``(B,)`` array, finite where concrete."""
  if scale is None or isinstance(scale, (str, bytes, bool)):
    raise TypeError(f"scale must be a number or a (B,) array of guidance scales, got {scale!r}")
  try:
    arr = jnp.asarray(scale)
  except (TypeError, ValueError) as e:
    raise TypeError(f"scale must be a number or a (B,) array, got {type(scale).__name__}") from e
  if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
    raise TypeError(f"scale must be real (float or int), got dtype {arr.dtype}")
  if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != b):
    raise ValueError(f"scale must be a scalar or of shape ({b},), got shape {arr.shape}")
  check_finite("scale", arr)
  return jnp.broadcast_to(arr.astype(dtype), (b,))


def _cfg_target(teacher, x, t, cond, w, null_cond) -> Array:
  """The teacher's CFG data prediction ``x_u + w (x_c - x_u)``, one batched call."""
  null = null_fn(null_cond, "teacher")
  n = x.shape[0]
  cat = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), cond, null(cond))
  out = teacher(jnp.concatenate([x, x]), jnp.concatenate([t, t]), cat)
  out = check_output(out, shape=(2 * n, *x.shape[1:]), dtype="floating", name="teacher(x, t, cond)")
  out = jnp.asarray(out).astype(x.dtype)
  x_c, x_u = out[:n], out[n:]
  return x_u + bcast(w, x) * (x_c - x_u)


def _check_x(name: str, x) -> Array:
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise TypeError(f"{name} must be a floating array (B, ...), got {type(x).__name__}")
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating array, got dtype {x.dtype}")
  if x.ndim < 2 or x.shape[0] == 0:
    raise ValueError(f"{name} must be batch-first (B, ...) with B >= 1, got shape {x.shape}")
  check_finite(name, x)
  return x


def _check_cond(cond, b: int) -> Any:
  if cond is None:
    raise ValueError("cond must be given: AGD distils a conditional model's guidance")
  for leaf in jax.tree.leaves(cond):
    if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != b:
      raise ValueError(
        f"cond must be batch-first with the batch of x ({b}), got a leaf of shape {jnp.shape(leaf)}"
      )
  return cond


def guided_states(
  teacher, solver, x_T, ts: Grid, *, key, cond, scale, null_cond=-1
) -> GuidanceStates:
  r"""AGD's training data: the states of CFG-guided sampling trajectories of the teacher.

  Runs :func:`jaxdiff.sample` from ``x_T`` with classifier-free guidance at the scale
  ``w_b`` of each trajectory ``b``, keeps every state at which a step evaluates the
  network, :math:`x_{t_i}` for :math:`i = 0, \dots, N-1` (the grid points; a multi-stage
  solver's intermediate stages are not kept), and labels each with the teacher's CFG
  prediction there,

  .. math::
    \tilde x_0(x_{t_i}, c_b, w_b) = \hat x_0(x_{t_i}, \varnothing)
      + w_b\big(\hat x_0(x_{t_i}, c_b) - \hat x_0(x_{t_i}, \varnothing)\big).

  These are the inputs the distilled network meets when it samples in place of CFG: the
  paper's point (a network trained on noised data, :func:`noised_states`, sees states
  that guided sampling never visits and vice versa). The official code draws one
  ``w ~ U[1, 6]`` per trajectory and class label.

  Args:
    teacher: the frozen conditional denoiser ``teacher(x, t, cond) -> x0_hat`` (its null
      condition gives the unconditional model).
    solver: a :mod:`jaxdiff.solvers` solver.
    x_T: ``(B, ...)`` starting noise.
    ts: the time grid (:func:`jaxdiff.timesteps`), ``N`` steps.
    key: PRNG key of the sampler (stochastic solvers).
    cond: ``(B,)`` class labels (or a batch-first pytree of conditions).
    scale: guidance scale ``w``: a number or ``(B,)``, one per trajectory; finite.
    null_cond: the unconditional condition (default the null label ``-1``), as in
      :func:`jaxdiff.guidance.cfg`.

  Returns:
    :class:`GuidanceStates` with ``M = N B`` rows, step-major (row ``i B + b``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff import distill, schedules, solvers, timesteps
    >>> from jaxdiff.testing import GaussianMixture
    >>> sched = schedules.vp_cosine()
    >>> teacher = GaussianMixture(jnp.array([[2.0], [-2.0]]), 0.1).denoiser(sched)
    >>> x_T = jax.random.normal(jax.random.key(0), (4, 1))
    >>> states = distill.guided_states(teacher, solvers.ddim(), x_T, timesteps(sched, 5),
    ...                                key=0, cond=jnp.array([0, 1, 0, 1]), scale=3.0)
    >>> states.x.shape, states.scale.shape
    ((20, 1), (20,))

  References:
    Jensen & Sadat, "Efficient Distillation of Classifier-Free Guidance using Adapters",
    arXiv:2503.07274 (training on CFG-guided trajectories; the official
    ``agd/dit/sample_trajectories.py``).
  """
  from jaxdiff._sampling import sample

  x_T = _check_x("x_T", x_T)
  b = x_T.shape[0]
  ts = validate_grid(ts)
  cond = _check_cond(cond, b)
  w = _scales(scale, b, x_T.dtype)
  null_fn(null_cond, "guided_states")
  key = as_key(key)
  rule = _PerSampleCFG(w, null_cond)
  out = sample(teacher, solver, x_T, ts, key=key, cond=cond, guidance=rule, return_trajectory=True)
  n = ts.num_steps
  xs = out.trajectory[:n].reshape(n * b, *x_T.shape[1:])
  rep = lambda v: jnp.repeat(jnp.asarray(v)[:n].astype(x_T.dtype), b)
  t, alpha, sigma = rep(ts.t), rep(ts.alpha), rep(ts.sigma)
  conds = jax.tree.map(lambda c: jnp.tile(c, (n,) + (1,) * (jnp.ndim(c) - 1)), cond)
  ws = jnp.tile(w, n)
  target = _cfg_target(teacher, xs, t, conds, ws, null_cond)
  return GuidanceStates(xs, t, alpha, sigma, conds, ws, target)


def noised_states(teacher, x0, ts: Grid, *, key, cond, scale, null_cond=-1) -> GuidanceStates:
  r"""The ablation's training data: noised data states, labelled with the teacher's CFG.

  For each example ``b`` a grid index :math:`i_b` is drawn uniformly from the ``N``
  evaluation points of ``ts`` and the example is noised by the forward process,

  .. math::
    x_b = \alpha_{t_{i_b}} x_{0,b} + \sigma_{t_{i_b}} \epsilon_b, \qquad
    \epsilon_b \sim \mathcal N(0, I),

  then labelled with the teacher's CFG prediction at scale ``w_b`` as in
  :func:`guided_states`. This is the "standard diffusion trajectories" training of
  earlier guidance distillation (Meng et al.) that the AGD paper replaces; same times,
  same targets, other states.

  Args:
    teacher: the frozen conditional denoiser ``teacher(x, t, cond) -> x0_hat``.
    x0: ``(B, ...)`` data.
    ts: the time grid whose ``N`` evaluation points are drawn from.
    key: PRNG key (times and noise).
    cond: ``(B,)`` class labels of ``x0``.
    scale: guidance scale ``w``, a number or ``(B,)``; finite.
    null_cond: the unconditional condition (default ``-1``).

  Returns:
    :class:`GuidanceStates` with ``M = B`` rows.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import distill, schedules, timesteps
    >>> from jaxdiff.testing import GaussianMixture
    >>> sched = schedules.vp_cosine()
    >>> teacher = GaussianMixture(jnp.array([[2.0], [-2.0]]), 0.1).denoiser(sched)
    >>> s = distill.noised_states(teacher, jnp.ones((3, 1)), timesteps(sched, 5), key=0,
    ...                           cond=jnp.array([0, 1, 0]), scale=2.0)
    >>> s.x.shape, s.target.shape
    ((3, 1), (3, 1))

  References:
    Jensen & Sadat, arXiv:2503.07274 (the ablation against standard diffusion
    trajectories); Meng et al., "On Distillation of Guided Diffusion Models",
    arXiv:2210.03142.
  """
  x0 = _check_x("x0", x0)
  b = x0.shape[0]
  ts = validate_grid(ts)
  cond = _check_cond(cond, b)
  w = _scales(scale, b, x0.dtype)
  null_fn(null_cond, "noised_states")
  k_t, k_eps = jax.random.split(as_key(key))
  idx = jax.random.randint(k_t, (b,), 0, ts.num_steps)
  t, alpha, sigma = (jnp.asarray(v)[idx].astype(x0.dtype) for v in (ts.t, ts.alpha, ts.sigma))
  eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
  x = bcast(alpha, x0) * x0 + bcast(sigma, x0) * eps
  target = _cfg_target(teacher, x, t, cond, w, null_cond)
  return GuidanceStates(x, t, alpha, sigma, cond, w, target)


def _to_prediction(x0: Array, x: Array, alpha: Array, sigma: Array, prediction: str) -> Array:
  a, s = bcast(alpha, x), bcast(sigma, x)
  if prediction == "x0":
    return x0
  if prediction == "eps":
    return (x - a * x0) / s
  return (a * x - (a * a + s * s) * x0) / s  # v = alpha eps - sigma x0


def agd_loss(student, states: GuidanceStates, *, prediction: str = "eps") -> Array:
  r"""AGD's distillation loss: the student's one-call prediction against the teacher's CFG.

  With the student's data prediction :math:`D_\psi(x, t, c, w)` (a frozen base with
  adapters; called ``student(x, t, cond, guidance_scale=w)``) and the states of
  :func:`guided_states`, in the noise parameterization of the official code
  (``F.mse_loss(eps_student, eps_cfg)``),

  .. math::
    \mathcal L(\psi) = \frac{1}{M d}\sum_{m=1}^{M}
      \big\| \epsilon_\psi(x_m, t_m, c_m, w_m) - \tilde\epsilon(x_m, t_m, c_m, w_m) \big\|^2,
    \qquad \tilde\epsilon = \epsilon_u + w(\epsilon_c - \epsilon_u),

  with :math:`\epsilon = (x - \alpha\hat x_0)/\sigma` (``prediction="eps"``, the paper's;
  CFG is affine, so the combination of the noise predictions is the noise prediction of
  the combined data predictions), ``d`` the elements of one state. ``prediction="x0"``
  or ``"v"`` measures the same error on the data or velocity prediction
  (:math:`v = \alpha\epsilon - \sigma\hat x_0`): weights :math:`(\alpha/\sigma)^2` and
  :math:`1/\sigma^2` less at small noise, for networks trained that way. The loss is
  zero exactly when the student reproduces CFG on every state.

  Args:
    student: ``student(x, t, cond, *, guidance_scale) -> x0_hat``, e.g. a
      :class:`GuidanceAdapter` under a :mod:`jaxdiff.parameterization` wrapper. Its
      output must be an array shaped and typed like ``states.x``.
    states: :class:`GuidanceStates` (every ``sigma > 0`` for ``"eps"`` and ``"v"``).
    prediction: ``"eps"`` (default, the paper), ``"x0"`` or ``"v"``.

  Returns:
    The scalar loss, differentiable in the student's parameters.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import distill, schedules, timesteps
    >>> from jaxdiff.testing import GaussianMixture
    >>> sched = schedules.vp_cosine()
    >>> teacher = GaussianMixture(jnp.array([[2.0], [-2.0]]), 0.1).denoiser(sched)
    >>> s = distill.noised_states(teacher, jnp.ones((3, 1)), timesteps(sched, 5), key=0,
    ...                           cond=jnp.array([0, 1, 0]), scale=2.0)
    >>> def exact(x, t, c, *, guidance_scale):  # CFG itself: loss zero
    ...   u, k = teacher(x, t, -jnp.ones_like(c)), teacher(x, t, c)
    ...   return u + guidance_scale[:, None] * (k - u)
    >>> float(distill.agd_loss(exact, s)) < 1e-10
    True

  References:
    Jensen & Sadat, "Efficient Distillation of Classifier-Free Guidance using Adapters",
    arXiv:2503.07274 (the official ``agd/dit/train.py``, ``--loss l2``).
  """
  prediction = check_choice("prediction", prediction, PREDICTIONS)
  if not isinstance(states, GuidanceStates):
    raise TypeError(
      f"states must be GuidanceStates (from guided_states or noised_states), got "
      f"{type(states).__name__}"
    )
  if not callable(student):
    raise TypeError(f"student must be callable, got {type(student).__name__}")
  if prediction != "x0" and not is_traced(states.sigma):
    if not np.all(np.asarray(states.sigma) > 0):  # on the host: also inside a trace
      raise ValueError(
        f"states.sigma must be > 0 for prediction={prediction!r} (a state at sigma = 0 has "
        "no noise prediction); use prediction='x0' or drop those states"
      )
  out = student(states.x, states.t, states.cond, guidance_scale=states.scale)
  out = check_output(
    out, like=states.x, dtype="floating", name="student(x, t, cond, guidance_scale=w)"
  )
  x, a, s = states.x, states.alpha, states.sigma
  diff = _to_prediction(out, x, a, s, prediction) - _to_prediction(
    states.target, x, a, s, prediction
  )
  return jnp.mean(diff**2)


def freeze_base(optimizer, *, trainable: str = "adapters"):
  r"""The optimizer that updates only the adapters: the base's updates are exactly zero.

  ``optax.multi_transform`` with ``optimizer`` on every parameter whose path holds the
  name ``trainable`` (a :class:`GuidanceAdapter`'s ``adapters``) and
  ``optax.set_to_zero()`` on all others, so after any number of steps the frozen base is
  bit-for-bit unchanged (``p + 0 = p``) and no optimizer state is kept for it.

  Args:
    optimizer: an optax transformation for the adapter parameters.
    trainable: the path component that marks trainable parameters.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from jaxdiff import distill
    >>> params = {"base": jnp.ones(2), "adapters": jnp.ones(2)}
    >>> tx = distill.freeze_base(optax.sgd(0.5))
    >>> upd, _ = tx.update({"base": jnp.ones(2), "adapters": jnp.ones(2)}, tx.init(params))
    >>> upd["base"].tolist(), upd["adapters"].tolist()
    ([0.0, 0.0], [-0.5, -0.5])

  References:
    Jensen & Sadat, arXiv:2503.07274 (base frozen, adapters only; the official
    ``ModelWithAdapters.freeze_base_model``).
  """
  import optax

  if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
    raise TypeError(
      f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}"
    )
  if not isinstance(trainable, str) or not trainable:
    raise TypeError(f"trainable must be a non-empty string, got {trainable!r}")

  def name(k) -> str:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)

  def labels(params):
    return jax.tree_util.tree_map_with_path(
      lambda path, _: "adapter" if any(name(k) == trainable for k in path) else "frozen",
      params,
    )

  return optax.multi_transform({"adapter": optimizer, "frozen": optax.set_to_zero()}, labels)


__all__ = [
  "GuidanceStates",
  "agd_loss",
  "freeze_base",
  "guided_states",
  "noised_states",
]
