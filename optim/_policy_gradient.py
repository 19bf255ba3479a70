"""Normalized-momentum and Hessian-aided recursive policy gradient ((N)-HARPG, N-PG-IGT).

Fatkhullin, Barakat, Kireeva & He, "Stochastic Policy Gradient Methods: Improved Sample
Complexity for Fisher-non-degenerate Policies", ICML 2023, arXiv:2302.01734.

The user supplies the policy through three callables over a parameter pytree: a sampler of
one trajectory, a per-trajectory surrogate whose gradient is the REINFORCE/GPOMDP estimate,
and the trajectory's log-likelihood. Every second-order quantity is a Hessian-vector
product (``jax.jvp`` of ``jax.grad``), never a dense Hessian.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optim._validation import as_key, check_choice, check_flag, check_output, check_scalar

PyTree = Any

_VARIANTS = ("harpg", "igt", "momentum")
_WHERE = "harpg_step"


class PolicyGradientState(NamedTuple):
  """What :func:`harpg_step` carries from step to step.

  Attributes:
    params: the current policy parameters :math:`\\theta_t`.
    prev_params: the previous ones :math:`\\theta_{t-1}` (``params`` at the start).
    direction: the recursive (momentum) estimate :math:`d_{t-1}` of the policy gradient.
    count: the iteration counter :math:`t` (an int32 scalar, 0 at the start).
  """

  params: PyTree
  prev_params: PyTree
  direction: PyTree
  count: jax.Array


def policy_gradient_init(params: PyTree) -> PolicyGradientState:
  r"""The starting :class:`PolicyGradientState`: :math:`\theta_{-1} = \theta_0`, :math:`d = 0`.

  The first :func:`harpg_step` (:math:`t = 0`, :math:`\eta_0 = 1` under the default
  schedules) sets :math:`d_0 = g(\tau_0, \theta_0)`, one plain policy-gradient estimate,
  as the paper's initialisation.

  Args:
    params: the initial policy parameters :math:`\theta_0` (a pytree of float arrays).

  Returns:
    A :class:`PolicyGradientState` with ``count = 0``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.loops import policy_gradient_init
    >>> s = policy_gradient_init(jnp.zeros(3))
    >>> int(s.count), s.direction.tolist()
    (0, [0.0, 0.0, 0.0])

  References:
    Fatkhullin et al., arXiv:2302.01734 (Algorithms 1 and 2, initialisation).
  """
  _check_params(params, "policy_gradient_init")
  return PolicyGradientState(
    params, params, jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.int32)
  )


def _check_params(params, where):
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise ValueError(f"{where}: params must hold at least one array")
  for leaf in leaves:
    dt = jnp.result_type(leaf)
    if not jnp.issubdtype(dt, jnp.floating):
      raise TypeError(f"{where}: params must be floating point, got a leaf of dtype {dt}")


def _scalar_out(fn, name, params, traj):
  out = fn(params, traj)
  check_output(out, scalar=True, name=name, where=_WHERE)
  return out


def hessian_correction(
  surrogate_fn: Callable[[PyTree, Any], jax.Array],
  log_prob_fn: Callable[[PyTree, Any], jax.Array],
  params: PyTree,
  trajectory: Any,
  tangent: PyTree,
) -> PyTree:
  r"""The policy-Hessian estimate applied to a vector, :math:`B(\tau, \theta)\,u`, matrix-free.

  With the per-trajectory surrogate :math:`\Phi(\tau, \theta)` (its gradient
  :math:`g(\tau, \theta) = \nabla_\theta \Phi` is the REINFORCE/GPOMDP estimate) and the
  trajectory's log-likelihood :math:`\log p(\tau \mid \theta) = \sum_h \log
  \pi_\theta(a_h \mid s_h)`, the unbiased policy-Hessian estimator is

  .. math::
    B(\tau, \theta) = \nabla \Phi(\tau, \theta)\, \nabla \log p(\tau \mid \theta)^\top
                      + \nabla^2 \Phi(\tau, \theta), \qquad
    \mathbb{E}_{\tau \sim p(\cdot \mid \theta)}[B(\tau, \theta)] = \nabla^2 J(\theta),

  and :math:`B u = g\,\langle \nabla \log p, u\rangle + \nabla^2\Phi\,u` costs one
  forward-mode pass through :math:`(\nabla\Phi, \log p)` (``jax.jvp`` of ``jax.grad``),
  never a dense Hessian. Both callables must treat the trajectory as data (the sampler's
  output, with no gradient path to ``params``).

  Args:
    surrogate_fn: ``surrogate_fn(params, trajectory) -> scalar`` :math:`\Phi`.
    log_prob_fn: ``log_prob_fn(params, trajectory) -> scalar`` :math:`\log p(\tau\mid\theta)`.
    params: the point :math:`\theta` (a pytree).
    trajectory: one trajectory (anything the callables take).
    tangent: the vector :math:`u`, a pytree like ``params``.

  Returns:
    :math:`B(\tau, \theta)\,u`, a pytree like ``params``.

  Raises:
    TypeError: non-callable ``surrogate_fn``/``log_prob_fn``, non-floating params, a
      callable that does not return a real floating-point scalar.
    ValueError: ``tangent``'s structure or shapes differ from ``params``'.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.loops import hessian_correction
    >>> phi = lambda th, tau: tau * jnp.sum(th**2)      # grad 2 tau th, Hessian 2 tau I
    >>> logp = lambda th, tau: jnp.sum(th)               # grad of log p: ones
    >>> hessian_correction(phi, logp, jnp.array([1.0, 0.0]), 1.0, jnp.array([0.0, 1.0])).tolist()
    [2.0, 2.0]

  References:
    Fatkhullin et al., arXiv:2302.01734 (Section 5, the Hessian estimator :math:`B`);
    Shen et al., "Hessian Aided Policy Gradient", ICML 2019.
  """
  for name, fn in (("surrogate_fn", surrogate_fn), ("log_prob_fn", log_prob_fn)):
    if not callable(fn):
      raise TypeError(f"hessian_correction: {name} must be callable, got {type(fn).__name__}")
  _check_params(params, "hessian_correction")
  _check_like(tangent, params, "tangent", "hessian_correction")
  return _hvp(surrogate_fn, log_prob_fn, params, trajectory, tangent)


def _check_like(tree, params, name, where):
  s1, s2 = jax.tree.structure(tree), jax.tree.structure(params)
  if s1 != s2:
    raise ValueError(f"{where}: {name} must have the structure of params ({s2}), got {s1}")
  for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(params)):
    if jnp.shape(a) != jnp.shape(b):
      raise ValueError(
        f"{where}: {name} must have the shapes of params, got {jnp.shape(a)} for {jnp.shape(b)}"
      )


def _hvp(surrogate_fn, log_prob_fn, params, trajectory, tangent):
  def both(p):
    g = jax.grad(
      lambda q: _scalar_out(surrogate_fn, "surrogate_fn(params, trajectory)", q, trajectory)
    )(p)
    lp = _scalar_out(log_prob_fn, "log_prob_fn(params, trajectory)", p, trajectory)
    return g, lp

  (g, _), (hu, dlp) = jax.jvp(both, (params,), (tangent,))
  return jax.tree.map(lambda a, b: a * dlp + b, g, hu)


def _schedule(value, t, name):
  if callable(value):
    return jnp.asarray(value(t))
  return jnp.asarray(value)


def _eta_harpg(t):
  return 2.0 / (t + 2.0)


def _eta_igt(t):
  return (2.0 / (t + 2.0)) ** 0.8


def _default_momentum(variant):
  # Module-level functions: one jit compilation per variant, not one per call.
  return _eta_harpg if variant == "harpg" else _eta_igt


def harpg_step(
  surrogate_fn: Callable[[PyTree, Any], jax.Array],
  sample_fn: Callable[[PyTree, jax.Array], Any],
  state: PolicyGradientState,
  *,
  key: Any,
  learning_rate: float | Callable[[jax.Array], jax.Array],
  log_prob_fn: Callable[[PyTree, Any], jax.Array] | None = None,
  momentum: float | Callable[[jax.Array], jax.Array] | None = None,
  normalize: bool = True,
  variant: str = "harpg",
) -> PolicyGradientState:
  r"""One step of (N)-HARPG, N-PG-IGT or normalized-momentum policy gradient (ascent on J).

  With the REINFORCE/GPOMDP estimate :math:`g(\tau, \theta) = \nabla_\theta\Phi(\tau,
  \theta)` of :math:`\nabla J(\theta)` (``surrogate_fn``), the momentum weight
  :math:`\eta_t` and the step size :math:`\gamma_t` at :math:`t` = ``state.count``:

  ``variant="harpg"`` (Algorithm 2; two trajectories, one HVP per step):

  .. math::
    q_t \sim \mathcal{U}[0, 1], \quad
    \hat\theta_t = q_t\theta_t + (1 - q_t)\theta_{t-1}, \quad
    \tau_t \sim p(\cdot\mid\theta_t), \quad \hat\tau_t \sim p(\cdot\mid\hat\theta_t), \\
    v_t = B(\hat\tau_t, \hat\theta_t)(\theta_t - \theta_{t-1}), \qquad
    d_t = (1 - \eta_t)(d_{t-1} + v_t) + \eta_t\, g(\tau_t, \theta_t),

  with :math:`B` the policy-Hessian estimator of :func:`hessian_correction`
  (:math:`\mathbb{E}[v_t] = \nabla J(\theta_t) - \nabla J(\theta_{t-1})`, so :math:`d_t`
  tracks :math:`\nabla J(\theta_t)` without importance sampling). ``variant="igt"``
  (N-PG-IGT, Algorithm 1; one trajectory): :math:`\tilde\theta_t = \theta_t + \frac{1 -
  \eta_t}{\eta_t}(\theta_t - \theta_{t-1})`, :math:`\tau_t \sim p(\cdot\mid\tilde\theta_t)`,
  :math:`d_t = (1 - \eta_t) d_{t-1} + \eta_t\, g(\tau_t, \tilde\theta_t)`.
  ``variant="momentum"``: the same without the transport, :math:`\tilde\theta_t =
  \theta_t`. Then

  .. math::
    \theta_{t+1} = \theta_t + \gamma_t\, d_t / \lVert d_t\rVert
    \quad(\texttt{normalize=True}), \qquad
    \theta_{t+1} = \theta_t + \gamma_t\, d_t \quad(\texttt{normalize=False}),

  the norm over all leaves (a zero :math:`d_t` gives a zero step). ``momentum=1`` with
  ``normalize=False`` and ``variant="momentum"`` is vanilla REINFORCE/GPOMDP ascent.

  Schedules (our reading of the paper's theorems; switch with ``momentum=`` and a
  ``learning_rate`` schedule): :math:`\eta_t = 2/(t + 2)` for HARPG and
  :math:`\eta_t = (2/(t + 2))^{4/5}` for IGT and momentum; the paper's decaying step
  sizes are :math:`\gamma_t = \gamma_0\,\eta_t` in spirit, pass them as
  ``learning_rate=lambda t: ...``. Keys: ``key`` is split into three,
  ``(k_q, k_1, k_2)``: :math:`q_t` from ``k_q``, :math:`\tau_t` from ``k_1`` and
  :math:`\hat\tau_t` from ``k_2`` (IGT and momentum use ``k_1``).

  Non-finite surrogates propagate into ``params`` (as an optax step does).

  Args:
    surrogate_fn: ``surrogate_fn(params, trajectory) -> scalar`` :math:`\Phi(\tau,\theta)`
      whose gradient is the policy-gradient estimate (e.g. GPOMDP: :math:`\sum_h \gamma^h
      r_h \sum_{k \le h} \log\pi_\theta(a_k\mid s_k)`).
    sample_fn: ``sample_fn(params, key) -> trajectory``, one trajectory of the policy.
    state: the :class:`PolicyGradientState` (:func:`policy_gradient_init`).
    key: a PRNG key or an int seed for this step.
    learning_rate: :math:`\gamma_t`, a number or a schedule of the count.
    log_prob_fn: ``log_prob_fn(params, trajectory) -> scalar`` :math:`\log
      p(\tau\mid\theta)` (needed by ``variant="harpg"``).
    momentum: :math:`\eta_t \in (0, 1]`, a number or a schedule of the count (default
      above).
    normalize: take the normalized step (the paper's N- methods).
    variant: ``"harpg"``, ``"igt"`` or ``"momentum"``.

  Returns:
    The next :class:`PolicyGradientState`.

  Raises:
    TypeError: non-callable ``surrogate_fn``/``sample_fn``/``log_prob_fn``, a state that
      is not a :class:`PolicyGradientState`, non-floating params, a callable that does not
      return a real floating-point scalar.
    ValueError: an unknown ``variant``, a ``learning_rate`` that is negative or not finite,
      a ``momentum`` outside :math:`(0, 1]`, ``variant="harpg"`` without ``log_prob_fn``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.loops import harpg_step, policy_gradient_init
    >>> # a two-armed bandit: softmax policy, reward 1 for arm 1
    >>> sample = lambda th, k: jax.random.categorical(k, th)
    >>> logp = lambda th, a: jax.nn.log_softmax(th)[a]
    >>> phi = lambda th, a: (a == 1) * logp(th, a)
    >>> s = policy_gradient_init(jnp.zeros(2))
    >>> for t in range(50):
    ...   s = harpg_step(phi, sample, s, key=t, learning_rate=0.2, log_prob_fn=logp)
    >>> bool(jax.nn.softmax(s.params)[1] > 0.9)
    True

  References:
    Fatkhullin, Barakat, Kireeva & He, "Stochastic Policy Gradient Methods: Improved Sample
    Complexity for Fisher-non-degenerate Policies", ICML 2023, arXiv:2302.01734
    (Algorithm 1 N-PG-IGT, Algorithm 2 (N)-HARPG).
  """
  for name, fn in (("surrogate_fn", surrogate_fn), ("sample_fn", sample_fn)):
    if not callable(fn):
      raise TypeError(f"{_WHERE}: {name} must be callable, got {type(fn).__name__}")
  variant = check_choice("variant", variant, _VARIANTS)
  if variant == "harpg":
    if log_prob_fn is None:
      raise ValueError(f"{_WHERE}: variant='harpg' needs log_prob_fn (the Hessian correction)")
    if not callable(log_prob_fn):
      raise TypeError(f"{_WHERE}: log_prob_fn must be callable, got {type(log_prob_fn).__name__}")
  if not isinstance(state, PolicyGradientState):
    raise TypeError(f"{_WHERE}: state must be a PolicyGradientState, got {type(state).__name__}")
  _check_params(state.params, _WHERE)
  if not callable(learning_rate):
    check_scalar("learning_rate", learning_rate, lo=0.0)
  if momentum is None:
    momentum = _default_momentum(variant)
  elif not callable(momentum):
    check_scalar("momentum", momentum, lo=0.0, hi=1.0, lo_open=True)
  normalize = check_flag("normalize", normalize)
  key = as_key(key)
  fns = (surrogate_fn, sample_fn, log_prob_fn, learning_rate, momentum)
  try:
    hash(fns)
  except TypeError:  # unhashable callables: trace eagerly (the caller may jit the loop)
    return _step(*fns, normalize, variant, state, key)
  return _step_jit(*fns, normalize, variant, state, key)


def _step(
  surrogate_fn, sample_fn, log_prob_fn, learning_rate, momentum, normalize, variant, state, key
):
  params, prev, d, t = state
  tf = t.astype(jnp.result_type(float))
  eta = _schedule(momentum, tf, "momentum")
  gamma = _schedule(learning_rate, tf, "learning_rate")
  kq, k1, k2 = jax.random.split(key, 3)
  sg = jax.lax.stop_gradient

  def grad_at(p, k):
    traj = sg(sample_fn(sg(p), k))
    return jax.grad(
      lambda q: _scalar_out(surrogate_fn, "surrogate_fn(params, trajectory)", q, traj)
    )(p)

  if variant == "harpg":
    u = jax.tree.map(lambda a, b: a - b, params, prev)
    q = jax.random.uniform(kq, (), dtype=tf.dtype)
    hat = jax.tree.map(lambda a, b: q * a + (1 - q) * b, params, prev)
    g = grad_at(params, k1)
    hat_traj = sg(sample_fn(sg(hat), k2))
    v = _hvp(surrogate_fn, log_prob_fn, hat, hat_traj, u)
    d = jax.tree.map(lambda dd, vv, gg: (1 - eta) * (dd + vv) + eta * gg, d, v, g)
  else:
    if variant == "igt":
      c = (1 - eta) / eta
      point = jax.tree.map(lambda a, b: a + c * (a - b), params, prev)
    else:
      point = params
    g = grad_at(point, k1)
    d = jax.tree.map(lambda dd, gg: (1 - eta) * dd + eta * gg, d, g)
  if normalize:
    norm = jnp.sqrt(sum(jnp.sum(jnp.abs(x) ** 2) for x in jax.tree.leaves(d)))
    scale = jnp.where(norm > 0, gamma / jnp.where(norm > 0, norm, 1.0), 0.0)
  else:
    scale = gamma
  new = jax.tree.map(lambda a, dd: a + (scale * dd).astype(a.dtype), params, d)
  return PolicyGradientState(new, params, d, t + 1)


# One compilation per callables and shapes; inside a caller's jit the inner jit is inlined.
_step_jit = jax.jit(_step, static_argnums=(0, 1, 2, 3, 4, 5, 6))
