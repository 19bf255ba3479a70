"""Sophia: clipped diagonal-Hessian preconditioning (Liu et al., 2023)."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from optim import _tree
from optim._tree import PROBES
from optim._validation import (
  MISSING,
  add_decayed_weights,
  as_key,
  check_choice,
  check_dtype,
  check_learning_rate,
  check_objective,
  check_scalar,
  guard,
  renamed_kwargs,
  require_fn,
  require_params,
  warn_default,
)
from optim.curvature import hvp
from optim.curvature._operators import cast_like

PyTree = Any

__all__ = ["ScaleBySophiaState", "scale_by_sophia", "sophia"]


def _finite_or(new: PyTree, old: PyTree) -> PyTree:
  """Leafwise ``new`` where it is finite, ``old`` elsewhere (skips non-finite estimates).

  Not ``otu.tree_where``: its condition is one scalar, this one is elementwise.
  """
  return jax.tree.map(lambda n, o: jnp.where(jnp.isfinite(n), n, o).astype(o.dtype), new, old)


# --------------------------------------------------------------------------------------
# Sophia.
# --------------------------------------------------------------------------------------


class ScaleBySophiaState(NamedTuple):
  """State of :func:`scale_by_sophia`.

  Attributes:
    count: steps taken (int32).
    mu: EMA of the gradients, :math:`m_t`.
    hess: EMA of the diagonal Hessian estimates, :math:`h_t` (refreshed every
      ``update_interval`` steps).
    key: the PRNG key of the next estimate (advanced every step).
    win_rate: fraction of coordinates whose ratio :math:`|m / \\max(\\gamma h, \\epsilon)|`
      was below the clip threshold, i.e. that took a Newton-like rather than a sign step:
      at the last refresh step (``track_win_rate="refresh"``, the default) or at the last
      step (``"step"``). The paper suggests tuning ``gamma`` so it stays within 0.1-0.5.
  """

  count: jax.Array
  mu: optax.Updates
  hess: optax.Updates
  key: jax.Array
  win_rate: jax.Array

  def probe(self, params: PyTree, probe: str = "rademacher") -> PyTree:
    """The Hutchinson probe :math:`u` the next ``update`` from this state uses (it is used
    only on refresh steps, ``count % update_interval == 0``); ``probe`` must be the
    transformation's ``probe=``. See :func:`scale_by_sophia` for the one-pass step."""
    return _tree.tree_probe(
      jax.random.split(self.key)[1], params, check_choice("probe", probe, PROBES)
    )


_VARIANTS = ("hutchinson", "gnb")
_TRACK = ("refresh", "step")


@renamed_kwargs(estimator="variant")
def scale_by_sophia(
  b1: float = 0.965,
  b2: float = 0.99,
  gamma: float = 0.01,
  eps: float = 1e-12,
  update_interval: int = 10,
  variant: Literal["hutchinson", "gnb"] = "hutchinson",
  batch_size: float | None = None,
  clip_threshold: float = 1.0,
  probe: Literal["rademacher", "gaussian"] = "rademacher",
  mu_dtype: Any = None,
  *,
  key: Any = 0,
  track_win_rate: Literal["refresh", "step"] = "refresh",
) -> optax.GradientTransformationExtraArgs:
  r"""Sophia's clipped, diagonal-Hessian-preconditioned momentum (no learning rate).

  With :math:`g_t` the incoming update (the gradient) and :math:`\hat h_t` a fresh
  estimate of the Hessian diagonal drawn every :math:`k` steps (paper, Algorithm 3):

  .. math::
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
    h_t &= \begin{cases} \beta_2 h_{t-k} + (1 - \beta_2) \hat h_t & t \bmod k = 1 \\
      h_{t-1} & \text{otherwise} \end{cases} \\
    u_t &= \operatorname{clip}\!\Big(\frac{m_t}{\max(\gamma h_t, \epsilon)}, \rho\Big),
    \qquad \operatorname{clip}(z, \rho) = \max(\min(z, \rho), -\rho),

  with :math:`t` counted from 1, so the first step draws an estimate. The variants
  (estimators of :math:`\hat h`):

  * ``"hutchinson"`` (Sophia-H, Algorithm 1): :math:`\hat h = u \odot (\nabla^2 L\, u)`
    with a probe :math:`u` (Rademacher by default: its estimate is exact for a diagonal
    Hessian; the paper draws :math:`u \sim N(0, I)`, available as ``probe="gaussian"``).
    Needs ``obj_fn(params) -> loss``.
  * ``"gnb"`` (Sophia-G, Gauss-Newton-Bartlett, Algorithm 2):
    :math:`\hat h = B \cdot \hat g \odot \hat g` with :math:`\hat g` the gradient of the
    mini-batch loss at labels *sampled from the model's own predictive distribution*, and
    :math:`B` the number of predictions averaged in that loss (tokens, for a language
    model; the official code passes ``bs = batch * block_size``). Needs the extra
    argument ``sampled_obj_fn(params, key) -> loss``. Its expectation over the sampled
    labels is the diagonal of the Gauss-Newton matrix of the mean loss.

  Negative or zero curvature (a Hutchinson estimate may be negative) makes
  :math:`\max(\gamma h, \epsilon) = \epsilon`, so that coordinate takes a clipped sign
  step :math:`\pm\rho` instead of a huge or wrong-signed one.

  Non-finite gradients: the clip is Sophia's own guard, so the state recovers. A
  coordinate whose gradient is ``±inf`` takes the clipped sign step :math:`\pm\rho` (the
  limit of the clipped ratio), a NaN gradient gives a NaN update there (loud); in both
  cases the stored :math:`m` keeps its previous (finite) value at that coordinate, so one
  bad step never leaves an infinite moment that would clip every later step to
  :math:`\pm\rho`. A non-finite entry of :math:`\hat h_t` is skipped the same way: the
  coordinate keeps its previous :math:`h`. Compose with ``optax.apply_if_finite`` to skip
  such steps altogether.

  One pass on refresh steps (Sophia-H): with ``obj_fn`` a refresh step pays a gradient
  (the caller's) plus a Hessian-vector product. Instead, the training loop may compile a
  second step for the refresh steps (``i % update_interval == 0``, counting from 0 like
  ``state.count``) that takes the loss, gradient and :math:`\nabla^2 L\, u` from one
  forward-over-reverse pass (:func:`optim.curvature.value_grad_and_hvp`) and passes the
  product as ``hvp=``; the numbers are those of the ``obj_fn`` call::

    @jax.jit
    def refresh_step(params, state):  # state[0]: this transformation's state in a chain
      u = state[0].probe(params)  # state[0].probe(params, probe) for probe="gaussian"
      loss, grads, hu = optim.curvature.value_grad_and_hvp(loss_fn, params, u)
      updates, state = opt.update(grads, state, params, hvp=hu)
      return optax.apply_updates(params, updates), state

  and the plain step (gradient, ``obj_fn=``) for the others. Branching with ``lax.cond``
  inside one step works too, but its other branch has to return a (zero) product.

  Which steps refresh: by default the state's count decides (``count % update_interval ==
  0``) through one top-level ``jax.lax.cond``, so only the steps that draw an estimate pay
  for the Hessian-vector product (or the sampled gradient). Under ``jax.vmap`` with a
  batched step count (e.g. vmapping over a batch of optimizer states), the predicate is
  batched and ``cond`` becomes a ``select``: both branches then run at every step. A loop
  that compiles its two steps anyway (above) may decide itself, as the official code's
  loop does: the extra argument ``refresh=True`` draws an estimate on this step, and
  ``refresh=False`` keeps :math:`h`, needs no objective and traces no cond. On XLA:CPU the
  cond, even untaken, made an ordinary step cost about 0.15x an AdamW step more on a
  10M-parameter MLP, so the one-pass loop at ``k = 10`` went from 1.37x to 1.27x AdamW
  (``bench/bench_optim_second_order.py``). ``update_interval`` is then unused: the loop's
  schedule is the schedule::

    plain_step:    opt.update(grads, state, params, refresh=False)
    refresh_step:  opt.update(grads, state, params, hvp=hu, refresh=True)

  Args:
    b1: EMA rate of the gradient, :math:`\beta_1 \in [0, 1)`.
    b2: EMA rate of the Hessian estimates, :math:`\beta_2 \in [0, 1)` (applied once per
      refresh).
    gamma: :math:`\gamma`, scales the curvature; larger means smaller, more often
      unclipped steps. Paper/official values: 0.01 for Sophia-H; the official Sophia-G
      code uses ``rho = 0.04`` with the batch-size factor below.
    eps: :math:`\epsilon > 0`, floor of the denominator.
    update_interval: :math:`k \ge 1`, steps between Hessian refreshes (a Python int: it
      is static; under ``optax.inject_hyperparams`` list it in ``static_args``).
    variant: ``"hutchinson"`` (Sophia-H) or ``"gnb"`` (Sophia-G). Formerly
      ``estimator=`` (still accepted, with a ``DeprecationWarning``).
    batch_size: :math:`B > 0`, the number of predictions in the sampled loss; required
      with ``variant="gnb"``.
    clip_threshold: :math:`\rho > 0` (the paper's Algorithm 3 uses 1; ``inf`` turns
      the clip off).
    probe: the Hutchinson probe distribution, ``"rademacher"`` or ``"gaussian"``.
    mu_dtype: dtype of the first moment ``m``; ``None`` (default): the parameters'
      dtypes. ``h`` keeps the parameters' dtypes.
    key: int seed, raw ``uint32`` key or typed PRNG key of the probes / label samples
      (keyword-only). It is stored in the state and split every step, so a step is a
      pure function of its inputs.
    track_win_rate: when ``state.win_rate`` is counted (keyword-only): ``"refresh"``
      (default) on the steps that draw a curvature estimate, every ``update_interval``-th
      step, or ``"step"`` on every step. The count is a full reduction that XLA does not
      fuse with the update; every step it costs about 0.2x an AdamW step on a 10M-parameter
      CPU model (``bench/bench_optim_second_order.py``), on refresh steps a tenth of that
      at ``k = 10``. The updates are the same either way.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update(updates, state, params, *,
    obj_fn=None, sampled_obj_fn=None, hvp=None, refresh=None, **extra)`` (Sophia-H needs
    ``obj_fn`` or ``hvp``, the product with ``state.probe(params, probe)``; Sophia-G
    ``sampled_obj_fn``; neither with ``refresh=False``).

  Raises:
    ValueError: bad hyperparameters at construction (checked when concrete); at
      ``update``, a missing ``params``, ``obj_fn`` (Sophia-H) or ``sampled_obj_fn``
      (Sophia-G), or ``hvp`` with ``refresh=False``.
    TypeError: a non-numeric hyperparameter, a traced ``update_interval``, a bad ``key``,
      a ``refresh`` that is not a Python bool.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optim import scale_by_sophia
    >>> f = lambda p: 0.5 * jnp.sum(jnp.array([1.0, 4.0]) * p**2)
    >>> opt = scale_by_sophia(gamma=1.0, key=0)
    >>> p = jnp.array([1.0, 1.0])
    >>> u, state = opt.update(jax.grad(f)(p), opt.init(p), p, obj_fn=f)
    >>> u.shape, float(state.win_rate)
    ((2,), 0.0)

  References:
    Liu, Li, Hall, Liang, Ma, "Sophia: A Scalable Stochastic Second-order Optimizer for
    Language Model Pre-training", arXiv:2305.14342 (Algorithms 1-3).
  """
  variant = check_choice("variant", variant, _VARIANTS)
  probe = check_choice("probe", probe, PROBES)
  check_scalar("b1", b1, lo=0.0, hi=1.0, hi_open=True)
  check_scalar("b2", b2, lo=0.0, hi=1.0, hi_open=True)
  check_scalar("gamma", gamma, lo=0.0, lo_open=True)
  check_scalar("eps", eps, lo=0.0, lo_open=True)
  check_scalar("clip_threshold", clip_threshold, lo=0.0, lo_open=True, allow_inf=True)
  update_interval = check_scalar(
    "update_interval", update_interval, lo=1, integer=True, static=True
  )
  if variant == "gnb":
    if batch_size is None:
      raise ValueError(
        "variant='gnb' needs batch_size: the number of predictions averaged in the "
        "sampled loss (the GNB estimate is batch_size * g_hat * g_hat)"
      )
    check_scalar("batch_size", batch_size, lo=0.0, lo_open=True)
  mu_dtype = check_dtype("mu_dtype", mu_dtype)
  track_win_rate = check_choice("track_win_rate", track_win_rate, _TRACK)
  key = as_key(key)
  method = f"sophia(variant={variant!r})"

  def init_fn(params):
    return ScaleBySophiaState(
      count=jnp.zeros([], jnp.int32),
      mu=otu.tree_zeros_like(params, dtype=mu_dtype),
      hess=otu.tree_zeros_like(params),
      key=key,
      win_rate=jnp.zeros([], jnp.float32),
    )

  def estimate(params, key, extra):
    if variant == "hutchinson":
      u = _tree.tree_probe(key, params, probe)
      hu = hvp(require_fn(extra, "obj_fn", method, "params -> scalar loss"), params, u)
      return jax.tree.map(lambda a, b: a * b, u, hu)
    sampled = require_fn(
      extra, "sampled_obj_fn", method, "(params, key) -> scalar loss at sampled labels"
    )
    g_hat = jax.grad(sampled)(params, key)
    return jax.tree.map(lambda g: (batch_size * g * g).astype(g.dtype), g_hat)

  def update_fn(updates, state, params=None, **extra):
    require_params(params, method)
    size = max(sum(int(np.prod(jnp.shape(p))) for p in jax.tree.leaves(params)), 1)
    # Who decides the refresh steps: the state's count (None) or the training loop (a bool).
    refresh_now = extra.get("refresh")
    if refresh_now is not None and not isinstance(refresh_now, (bool, np.bool_)):
      raise TypeError(
        f"{method}: refresh= must be a Python bool (the training loop's own schedule) or "
        f"None (the state's count decides), got {type(refresh_now).__name__}; a traced "
        "value cannot choose whether an estimate is drawn without a cond"
      )
    refresh_now = None if refresh_now is None else bool(refresh_now)
    # Validate the extra arguments eagerly (trace time), not only inside the cond branch.
    given = extra.get("hvp")
    if refresh_now is False:
      if given is not None:
        raise ValueError(f"{method}: hvp= was given with refresh=False, which draws no estimate")
    elif given is not None:
      if variant != "hutchinson":
        raise ValueError(f"{method}: hvp= is the Sophia-H product; Sophia-G takes sampled_obj_fn")
      given = cast_like(given, params, "hvp")
    elif variant == "hutchinson":
      fn = require_fn(extra, "obj_fn", method, "params -> scalar loss")
      check_objective(fn, (params,), "obj_fn", method, "params -> scalar loss")
    else:
      fn = require_fn(extra, "sampled_obj_fn", method, "(params, key) -> scalar loss")
      signature = "(params, key) -> scalar loss"
      check_objective(fn, (params, state.key), "sampled_obj_fn", method, signature)

    key, subkey = jax.random.split(state.key)
    # The stored m_t: its previous (finite) value where the new one is not finite.
    mu = _finite_or(
      otu.tree_cast_like(otu.tree_update_moment(updates, state.mu, b1, 1), state.mu), state.mu
    )

    def ratio(m, g, h):
      # m_t / max(gamma h, eps), read from the *stored* m_t so that no later pass reads the
      # old moment after its buffer is overwritten (that read made XLA copy the moment
      # every step). Where the gradient is not finite, the unstored m_t is the gradient's
      # +-inf or NaN, so the gradient stands in for it there: the same ratio.
      num = jnp.where(jnp.isfinite(g), m, g.astype(m.dtype))
      return num / jnp.maximum(gamma * h, eps)

    def win_rate(hess):
      # The count's ratios are formed apart from the update's (the barrier keeps XLA from
      # sharing them): shared, the ratios would be stored and reread, an extra pass.
      leaves = jax.lax.optimization_barrier([jax.tree.leaves(t) for t in (mu, updates, hess)])
      n = sum(
        (
          jnp.sum(jnp.abs(ratio(m, g, h)) < clip_threshold, dtype=jnp.float32)
          for m, g, h in zip(*leaves)
        ),
        start=jnp.zeros([], jnp.float32),
      )
      return n / size

    # On a step the loop marks as a refresh, the probe of the caller's product is drawn
    # outside the branch: the same computation as the caller's ``state.probe(params)``, so
    # XLA computes it once. Otherwise only inside it: a caller that passes a (zero) product
    # on every step must not pay for a probe on every step.
    u = None
    if given is not None and refresh_now:
      u = _tree.tree_probe(subkey, params, probe)

    def refresh(hess):
      if given is None:
        h_hat = estimate(params, subkey, extra)
      else:
        probe_u = _tree.tree_probe(subkey, params, probe) if u is None else u
        h_hat = jax.tree.map(lambda a, b: a * b, probe_u, given)
      h_hat = otu.tree_cast_like(h_hat, hess)
      hess = _finite_or(otu.tree_update_moment(h_hat, hess, b2, 1), hess)
      return hess, win_rate(hess) if track_win_rate == "refresh" else state.win_rate

    if refresh_now is False:  # the loop decided: no cond is traced
      hess, rate = state.hess, state.win_rate
    else:
      # refresh=True keeps the cond, on a predicate that always holds (the count is never
      # negative): compiled inside it, the refresh step measured 15% faster on XLA:CPU
      # than inlined into the step (202 vs 237 ms per step, 10.5M-parameter MLP).
      is_refresh = state.count >= 0 if refresh_now else state.count % update_interval == 0
      hess, rate = jax.lax.cond(is_refresh, refresh, lambda h: (h, state.win_rate), state.hess)
    if track_win_rate == "step":
      rate = win_rate(hess)
    new_updates = jax.tree.map(
      lambda m, g, h: jnp.clip(ratio(m, g, h), -clip_threshold, clip_threshold).astype(g.dtype),
      mu,
      updates,
      hess,
    )
    new_state = ScaleBySophiaState(
      count=optax.safe_increment(state.count),
      # The update above saw the non-finite m (a clipped +-rho step for an inf gradient, NaN
      # for a NaN one); the state keeps the last finite m there, so it recovers next step.
      mu=mu,
      hess=hess,
      key=key,
      win_rate=rate,
    )
    return new_updates, new_state

  return guard(optax.GradientTransformationExtraArgs(init_fn, update_fn), "scale_by_sophia")


@renamed_kwargs(estimator="variant")
def sophia(
  learning_rate: optax.ScalarOrSchedule = MISSING,
  b1: float = 0.965,
  b2: float = 0.99,
  gamma: float = 0.01,
  eps: float = 1e-12,
  weight_decay: float = 1e-1,
  weight_decay_mask: Any = None,
  update_interval: int = 10,
  variant: Literal["hutchinson", "gnb"] = "hutchinson",
  batch_size: float | None = None,
  clip_threshold: float = 1.0,
  probe: Literal["rademacher", "gaussian"] = "rademacher",
  mu_dtype: Any = None,
  *,
  key: Any = 0,
  track_win_rate: Literal["refresh", "step"] = "refresh",
) -> optax.GradientTransformationExtraArgs:
  r"""Sophia-H / Sophia-G with decoupled weight decay (Liu et al., 2023, Algorithm 3).

  .. math::
    \theta_{t+1} = \theta_t - \eta_t \lambda \theta_t
      - \eta_t \operatorname{clip}\!\Big(\frac{m_t}{\max(\gamma h_t, \epsilon)}, 1\Big),

  with :math:`m_t, h_t` from :func:`scale_by_sophia`. Weight decay is decoupled and
  *not* clipped (it is added after the clip). Non-finite gradients: the state recovers
  (see :func:`scale_by_sophia`: an inf gradient takes a clipped step, a NaN one gives a NaN
  update, and neither is stored in the moments). ``variant="hutchinson"`` needs the extra
  argument ``obj_fn(params) -> loss``; ``variant="gnb"`` needs
  ``sampled_obj_fn(params, key) -> loss`` evaluated at labels drawn from the model::

    def sampled_obj_fn(params, key):
      logits = apply(params, x)
      y = jax.random.categorical(key, jax.lax.stop_gradient(logits))
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  Args:
    learning_rate: :math:`\eta_t \ge 0`, a float or an optax schedule; required (the
      old default 1e-4 is used, with a ``DeprecationWarning``, when it is omitted). A
      schedule's values are not checked: one returning NaN gives NaN updates.
    b1, b2, gamma, eps, update_interval, variant, batch_size, clip_threshold, probe,
      mu_dtype, key, track_win_rate: see :func:`scale_by_sophia`. ``estimator=`` is the
      deprecated spelling of ``variant=``.
    weight_decay: :math:`\lambda \ge 0` (official Sophia-G default 0.1).
    weight_decay_mask: optional mask (pytree or callable) of the parameters to decay.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Under ``optax.inject_hyperparams`` mark
    ``variant``, ``probe``, ``update_interval``, ``key``, ``track_win_rate`` and a callable
    ``weight_decay_mask`` as ``static_args``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optim import sophia
    >>> f = lambda p: 0.5 * jnp.sum(jnp.array([1.0, 10.0]) * p**2)
    >>> opt = sophia(0.05, gamma=0.1, weight_decay=0.0, key=0)
    >>> @jax.jit
    ... def step(p, state):
    ...   u, state = opt.update(jax.grad(f)(p), state, p, obj_fn=f)
    ...   return optax.apply_updates(p, u), state
    >>> p0 = jnp.array([1.0, -1.0]); p, state = p0, opt.init(p0)
    >>> for _ in range(100):
    ...   p, state = step(p, state)
    >>> bool(f(p) < 0.01 * f(p0))
    True

  References:
    Liu, Li, Hall, Liang, Ma, "Sophia: A Scalable Stochastic Second-order Optimizer for
    Language Model Pre-training", arXiv:2305.14342.
  """
  learning_rate = warn_default(learning_rate, "learning_rate", 1e-4, "sophia")
  check_learning_rate(learning_rate)
  check_scalar("weight_decay", weight_decay, lo=0.0)
  return optax.chain(
    scale_by_sophia(
      b1=b1,
      b2=b2,
      gamma=gamma,
      eps=eps,
      update_interval=update_interval,
      variant=variant,
      batch_size=batch_size,
      clip_threshold=clip_threshold,
      probe=probe,
      mu_dtype=mu_dtype,
      key=key,
      track_win_rate=track_win_rate,
    ),
    add_decayed_weights(weight_decay, weight_decay_mask, "sophia"),
    optax.scale_by_learning_rate(learning_rate),
  )
