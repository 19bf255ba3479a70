"""Pairwise sample optimization (PSO): fine-tuning a timestep-distilled model.

Miao et al., "Tuning Timestep-Distilled Diffusion Model Using Pairwise Sample
Optimization", ICLR 2025, arXiv:2410.03190. A few-step (distilled) model is tuned towards
target samples (training images of a style, a concept, preferred samples) while keeping
its few-step ability: each target is paired with a reference sample drawn from the current
distilled model, and the loss raises the relative likelihood margin of the target over the
reference, measured by the model's denoising error against a frozen copy of the base
model, in the Bradley-Terry / Diffusion-DPO form (Wallace et al., arXiv:2311.12908, Eq. 14).

What was read: the paper's abstract and introduction (the method section and official code
could not be retrieved here). The loss below is that description in Diffusion-DPO's form,
with the noisy states at the distilled model's own sampling times; the error space is a
documented ``variant=`` (``"x0"``: the distilled model's data prediction; ``"eps"``:
Diffusion-DPO's noise prediction).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._parameterization import eps_from_x0
from jaxdiff._validation import (
  as_key,
  check_choice,
  check_finite,
  check_output,
  check_scalar,
  is_traced,
)

Array = jax.Array

VARIANTS = ("x0", "eps")


def _samples(name: str, value) -> Array:
  value = jnp.asarray(value)
  if not jnp.issubdtype(value.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating array, got dtype {value.dtype}")
  if value.ndim < 2 or value.shape[0] < 1:
    raise ValueError(f"{name} must have shape (B, ...) with B >= 1, got {value.shape}")
  check_finite(name, value)
  return value


def pso_loss(
  model,
  params: Any,
  base_params: Any,
  target: Array,
  reference: Array,
  *,
  schedule,
  timesteps: Array,
  key: Any,
  beta: float = 1.0,
  cond: Any = None,
  variant: str = "x0",
) -> Array:
  r"""The pairwise sample optimization loss: target samples over the model's own samples.

  Row :math:`b` pairs a target :math:`x^{\rm tgt}_b` with a reference
  :math:`x^{\rm ref}_b` sampled from the current distilled model. Each row draws one of the
  distilled model's sampling times :math:`t \sim \mathcal U(\text{timesteps})` and one
  noise :math:`\epsilon \sim \mathcal N(0, I)`, shared by the pair (Diffusion-DPO's
  convention), noises both, :math:`x_t = \alpha_t x + \sigma_t \epsilon`, and measures
  the denoising error of the tuned model :math:`G_\theta` and of the frozen base
  :math:`G_{\rm base}`:

  .. math::
    e_\theta(x) = \operatorname{mean}\big\|x - G_\theta(x_t, t)\big\|^2\ (\text{``x0''}),
    \qquad
    e_\theta(x) = \operatorname{mean}\big\|\epsilon - \hat\epsilon_\theta(x_t, t)\big\|^2\
    (\text{``eps''}),\quad
    \hat\epsilon_\theta = \frac{x_t - \alpha_t G_\theta(x_t, t)}{\sigma_t},

  (mean over features), the implicit log-likelihood ratio of :math:`x` being
  :math:`-(e_\theta(x) - e_{\rm base}(x))`. The loss is the Bradley-Terry negative log
  likelihood that the target beats the reference, averaged over rows:

  .. math::
    \mathcal L(\theta) = -\log\sigma\Big(-\beta\big[(e_\theta(x^{\rm tgt})
      - e_{\rm base}(x^{\rm tgt})) - (e_\theta(x^{\rm ref}) - e_{\rm base}(x^{\rm ref}))
      \big]\Big).

  Its gradient lowers the model's error on the targets and raises it on its own samples,
  relative to the base; ``target == reference`` gives a zero margin (loss :math:`\log 2`,
  zero gradient). Online PSO draws fresh references from the current ``params`` each step
  (pass them through ``jax.lax.stop_gradient``); offline PSO draws them once from the base.
  The randomness: ``k_t, k_eps = jax.random.split(key)``, row times
  ``timesteps[jax.random.randint(k_t, (B,), 0, len(timesteps))]``, noise
  ``jax.random.normal(k_eps, target.shape)``.

  Args:
    model: ``model(params, x, t, cond) -> x0_hat``, the distilled model's data prediction,
      batch first, ``t`` of shape ``(B,)``.
    params: the parameters being tuned (any pytree).
    base_params: the frozen base parameters (no gradient flows into them).
    target: ``(B, ...)`` target samples (training images, preferred samples), floating.
    reference: ``(B, ...)`` reference samples from the current model, like ``target``.
    schedule: the schedule of the model's times (``alpha``, ``sigma``).
    timesteps: ``(T,)`` the distilled model's sampling times, each with
      :math:`\sigma_t > 0` for ``"eps"`` (traced times with :math:`\sigma_t = 0` make the
      loss NaN, the documented poison).
    key: PRNG key (typed, raw or an int seed).
    beta: the inverse temperature :math:`\beta > 0` of the margin (Diffusion-DPO's
      :math:`\beta T\omega(\lambda_t)` folded into one constant).
    cond: labels passed to ``model`` (the same for target and reference rows).
    variant: ``"x0"`` (default) or ``"eps"``, the error space above.

  Returns:
    The scalar loss.

  Raises:
    ValueError: ``target`` and ``reference`` of different shapes; non-finite concrete
      samples; ``beta`` not positive; empty ``timesteps`` (or, for ``"eps"``, one with
      :math:`\sigma_t = 0`); an unknown ``variant``; a model
      whose output is not shaped like the samples.
    TypeError: non-floating samples; a bad key.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff import finetune, schedules
    >>> sched = schedules.flow()
    >>> def model(mu, x, t, cond):  # the exact denoiser of N(mu, 1)
    ...   a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
    ...   return mu + a / (a**2 + s**2) * (x - a * mu)
    >>> tgt, ref = jnp.full((8, 1), 2.0), jnp.full((8, 1), -2.0)
    >>> loss = lambda mu: finetune.pso_loss(model, mu, 0.0, tgt, ref, schedule=sched,
    ...                                     timesteps=jnp.array([0.5, 0.75]), key=0)
    >>> bool(jax.grad(loss)(0.0) < 0)  # descent moves the mean towards the target
    True

  References:
    Miao et al., "Tuning Timestep-Distilled Diffusion Model Using Pairwise Sample
    Optimization", ICLR 2025, arXiv:2410.03190; Wallace et al., "Diffusion Model Alignment
    Using Direct Preference Optimization", arXiv:2311.12908 (Eq. 14).
  """
  check_choice("variant", variant, VARIANTS)
  check_scalar("beta", beta, lo=0.0, lo_open=True)
  target = _samples("target", target)
  reference = _samples("reference", reference)
  if reference.shape != target.shape:
    raise ValueError(
      f"reference must have target's shape {target.shape} (one reference per target), "
      f"got {reference.shape}"
    )
  timesteps = jnp.asarray(timesteps)
  if timesteps.ndim != 1 or timesteps.shape[0] < 1:
    raise ValueError(f"timesteps must have shape (T,) with T >= 1, got {timesteps.shape}")
  check_finite("timesteps", timesteps)
  if variant == "eps" and not is_traced(timesteps):
    bad = np.asarray(schedule.sigma(timesteps)) <= 0
    if bad.any():
      raise ValueError(
        "timesteps must have sigma(t) > 0 for variant 'eps' (the noise is undetermined at "
        f"sigma = 0), got t = {np.asarray(timesteps)[bad][0]}"
      )
  dtype = jnp.result_type(target.dtype, reference.dtype)
  target, reference = target.astype(dtype), reference.astype(dtype)
  b = target.shape[0]
  k_t, k_eps = jax.random.split(as_key(key))
  t = timesteps[jax.random.randint(k_t, (b,), 0, timesteps.shape[0])].astype(dtype)
  eps = jax.random.normal(k_eps, target.shape, dtype)
  shape = (b,) + (1,) * (target.ndim - 1)
  alpha = jnp.asarray(schedule.alpha(t), dtype).reshape(shape)
  sigma = jnp.asarray(schedule.sigma(t), dtype).reshape(shape)
  axes = tuple(range(1, target.ndim))
  base = jax.lax.stop_gradient(base_params)

  def error(p, x0):
    x_t = alpha * x0 + sigma * eps
    pred = model(p, x_t, t, cond)
    check_output(pred, like=x_t, name="model(params, x, t, cond)", where="pso_loss")
    if variant == "eps":
      return jnp.mean((eps - eps_from_x0(x_t, pred, alpha, sigma)) ** 2, axis=axes)
    return jnp.mean((x0 - pred) ** 2, axis=axes)

  diff_tgt = error(params, target) - error(base, target)
  diff_ref = error(params, reference) - error(base, reference)
  loss = -jnp.mean(jax.nn.log_sigmoid(-beta * (diff_tgt - diff_ref)))
  if variant == "eps":  # traced times at sigma = 0: a NaN loss (poison), never a silent 0
    loss = loss * jnp.where(jnp.all(sigma > 0), 1.0, jnp.nan).astype(loss.dtype)
  return loss
