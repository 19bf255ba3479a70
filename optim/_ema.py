"""A bias-corrected exponential moving average of the weights, kept in the optimizer state."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optim._validation import check_scalar, guard

Array = jax.Array


class WeightEMAState(NamedTuple):
  """State of :func:`weight_ema`: the step count and the running average ``ema``."""

  count: Array
  ema: Any


def weight_ema(decay: float = 0.999) -> optax.GradientTransformationExtraArgs:
  r"""A bias-corrected exponential moving average of the weights, kept in the optimizer state.

  Chain it last (``optax.chain(opt, weight_ema(0.999))``): it passes the updates through
  and tracks the parameters :math:`\theta_k = \theta_{k-1} + \Delta_k` they produce,

  .. math:: m_k = \beta m_{k-1} + (1 - \beta)\theta_k,\ m_0 = 0,\qquad
    \bar\theta_k = \frac{m_k}{1 - \beta^k}
    = \bar\theta_{k-1} + \frac{1 - \beta}{1 - \beta^k}(\theta_k - \bar\theta_{k-1}),

  stored as :math:`\bar\theta_k` (the second form; :math:`\bar\theta_0 = \theta_0`), so the
  average is a proper weighted mean of the visited weights from the first step on (Adam's
  bias correction: without it, ``beta = 0.999`` would keep ``e^{-1.5} = 22%`` of the
  initial weights after 1500 steps). It lives in checkpoints with the rest of the state and
  restores bit for bit. Read it with :func:`ema_params`. (optax's ``ema`` averages
  *updates*, not weights.) The average keeps the parameters' dtype; ``update`` needs
  ``params``.

  Non-finite gradients: propagate. The updates pass through unchanged, and a non-finite
  parameter they produce enters the average and stays there; compose with
  ``optax.apply_if_finite`` to skip such steps with the average untouched.

  Args:
    decay: ``beta`` in ``[0, 1)``. A traced ``decay`` (``optax.inject_hyperparams``) is not
      checked.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import optim
    >>> tx = optax.chain(optax.sgd(1.0), optim.weight_ema(0.5))
    >>> p = {"w": jnp.zeros(2)}
    >>> s = tx.init(p)
    >>> u, s = tx.update({"w": -jnp.ones(2)}, s, p)
    >>> optim.ema_params(s)["w"].tolist()  # one step: the average is the new weight
    [1.0, 1.0]

  References:
    Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging" (1992);
    Kingma & Ba, "Adam", arXiv:1412.6980 (bias correction, Sec. 3); Karras et al.,
    "Analyzing and Improving the Training Dynamics of Diffusion Models", arXiv:2312.02696
    (EMA in diffusion training).
  """
  checked = check_scalar("weight_ema: decay", decay, lo=0.0, hi=1.0, hi_open=True)
  decay = decay if checked is None else checked  # a tracer is used as given

  def init(params):
    return WeightEMAState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.array, params))

  def update(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("weight_ema: update needs params (optax passes them in apply/update)")
    count = optax.safe_int32_increment(state.count)
    rate = (1.0 - decay) / (1.0 - decay ** count.astype(jnp.float32))
    new = optax.apply_updates(params, updates)
    ema = jax.tree.map(
      lambda e, p: e + (rate * (p.astype(e.dtype) - e)).astype(e.dtype), state.ema, new
    )
    return updates, WeightEMAState(count, ema)

  return guard(optax.GradientTransformationExtraArgs(init, update), "weight_ema")


def ema_params(opt_state) -> Any:
  """The averaged parameters held by a :func:`weight_ema` anywhere in ``opt_state``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import optim
    >>> s = optax.chain(optax.adam(1e-3), optim.weight_ema()).init({"w": jnp.ones(1)})
    >>> optim.ema_params(s)["w"].tolist()
    [1.0]
  """
  found = [
    s
    for s in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, WeightEMAState))
    if isinstance(s, WeightEMAState)
  ]
  if len(found) != 1:
    raise ValueError(
      f"ema_params: opt_state must hold exactly one weight_ema state, found {len(found)}"
    )
  return found[0].ema
