"""Exponentiated gradient: a multiplicative, sign-preserving update (Dale's law).

A weight's sign never changes: every step multiplies it by a positive factor. The sign
form is the exponentiated gradient of Cornford et al. (mirror descent with the
unnormalised entropy of ``|w|``), the update that Shetty, Prasath & Seelamantula
(arXiv:2510.02730) connect to the Dale-Langevin sampler of :mod:`jaxdiff.multiplicative`;
the log form is gradient descent on ``log|w|``, whose drift is that sampler's (the
Hyvarinen score ``w * grad``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optim._validation import check_choice, check_learning_rate, guard, require_params

VARIANTS = ("sign", "log")


class ExponentiatedGradientState(NamedTuple):
  """The step count (read by a learning-rate schedule)."""

  count: jax.Array


def exponentiated_gradient(
  learning_rate: optax.ScalarOrSchedule, *, variant: str = "sign"
) -> optax.GradientTransformation:
  r"""Exponentiated gradient descent: each weight is multiplied by a positive factor.

  .. math::
    \text{sign:}\quad w_{t+1} = w_t \odot \exp\big(-\eta_t\,\mathrm{sign}(w_t) \odot g_t\big),
    \qquad
    \text{log:}\quad w_{t+1} = w_t \odot \exp\big(-\eta_t\, w_t \odot g_t\big),

  with :math:`g_t = \nabla f(w_t)`. Both keep every weight's sign (Dale's law: an
  excitatory synapse stays excitatory); a weight at exactly 0 stays 0. To first order the
  sign form is gradient descent preconditioned by :math:`|w|` (mirror descent with the
  potential :math:`\sum_i |w_i|\log|w_i| - |w_i|`, Cornford et al.), and the log form is
  gradient descent on :math:`u = \log|w|`, since :math:`\partial f / \partial u = w \odot g`
  (preconditioner :math:`w^2`; the descent counterpart of the Dale-Langevin sampler, whose
  drift is the Hyvarinen score :math:`x \odot \nabla\log p`, Shetty et al.). The update is
  returned as :math:`w_t \odot \mathrm{expm1}(\cdot)`, so ``optax.apply_updates`` gives
  the product without cancellation; where the exponent underflows the weight becomes 0,
  never of the other sign.

  Non-finite gradients: propagate (the weight becomes NaN). No state but the count;
  compose with ``optax.apply_if_finite`` to skip such steps.

  Args:
    learning_rate: :math:`\eta`, a float (finite, >= 0) or an optax schedule of the count.
    variant: ``"sign"`` (default; Cornford et al.'s exponentiated gradient) or ``"log"``
      (gradient descent on ``log|w|``). The paper's optimiser section could not be read
      here: the sign form is the published EG rule for weights of both signs, the log
      form the one its sampler's drift implies; both are documented assumptions.

  Returns:
    An ``optax.GradientTransformation``; ``update`` needs ``params``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optim import exponentiated_gradient
    >>> w = jnp.array([2.0, -0.5])
    >>> f = lambda w: jnp.sum((w - jnp.array([1.0, -1.0])) ** 2)
    >>> tx = exponentiated_gradient(0.2); s = tx.init(w)
    >>> for _ in range(50):
    ...   u, s = tx.update(jax.grad(f)(w), s, w); w = optax.apply_updates(w, u)
    >>> w.round(3).tolist()
    [1.0, -1.0]

  References:
    Shetty, Prasath & Seelamantula, "Dale meets Langevin: A Multiplicative Denoising
    Diffusion Model", arXiv:2510.02730; Cornford et al., "Brain-like learning with
    exponentiated gradients", bioRxiv 10.1101/2024.10.25.620272; Kivinen & Warmuth,
    "Exponentiated gradient versus gradient descent for linear predictors", 1997.
  """
  check_learning_rate(learning_rate)
  variant = check_choice("variant", variant, VARIANTS)

  def init_fn(params):
    del params
    return ExponentiatedGradientState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    require_params(params, "exponentiated_gradient")
    eta = learning_rate(state.count) if callable(learning_rate) else learning_rate

    def one(g, w):
      scale = jnp.sign(w) if variant == "sign" else w
      step = jnp.asarray(eta, w.dtype) * scale * g.astype(w.dtype)
      return (w * jnp.expm1(-step)).astype(w.dtype)

    new = jax.tree.map(one, updates, params)
    return new, ExponentiatedGradientState(count=optax.safe_int32_increment(state.count))

  return guard(optax.GradientTransformation(init_fn, update_fn), "exponentiated_gradient")
