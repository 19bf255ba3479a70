"""optim.loops: functions that run a whole minimisation or training, not one step.

:func:`boost_layer` builds a hidden layer by gradient boosting, one block of units at a
time, each block fitted with an optax optimizer (-> :class:`BoostedLayer`, applied with
its later blocks switched off or not by :func:`boosted_layer_apply`).

Everything at ``optim``'s top level is one optax step (a ``GradientTransformation`` and
its state) that the caller's loop drives. The functions here own the loop themselves:
:func:`reg_newton_minimize` runs the gradient-regularized Newton method to a tolerance in
one ``lax.while_loop`` (it reuses the accepted point's value and gradient, which the optax
form :func:`optim.reg_newton` cannot), and :func:`adaptive_batch_train` trains with
AdAdaGrad's growing batch, whose batch-size tests :func:`norm_test` and
:func:`augmented_inner_product_test` (-> :class:`BatchTest`) also serve a loop of your own.
:func:`storm_step` is one step of STORM's training loop (a meta update of the loss
rescaler through the model's optax step, then the model step), carried in a
:class:`StormState`.
:func:`sso_step` is one outer step of SSO (target-based surrogates): one loss gradient in
the model's output space builds the surrogate :func:`sso_surrogate`, which any optax
optimizer then minimises in a few cheap inner steps (-> :class:`SSOStep`).
:func:`harpg_step` is one step of (N)-HARPG, the Hessian-aided recursive policy gradient
(or of N-PG-IGT / normalized-momentum policy gradient), carried in a
:class:`PolicyGradientState` from :func:`policy_gradient_init`; :func:`hessian_correction`
is its matrix-free policy-Hessian estimate applied to a vector.
"""

from optim._adadagrad import (
  AdaptiveBatchResult,
  BatchTest,
  adaptive_batch_train,
  augmented_inner_product_test,
  norm_test,
)
from optim._boost import BoostedLayer, boost_layer, boosted_layer_apply
from optim._newton import RegNewtonResult, reg_newton_minimize
from optim._policy_gradient import (
  PolicyGradientState,
  harpg_step,
  hessian_correction,
  policy_gradient_init,
)
from optim._sso import SSOStep, sso_step, sso_surrogate
from optim._storm import StormMetrics, StormState, storm_step

__all__ = [
  "AdaptiveBatchResult",
  "BoostedLayer",
  "boost_layer",
  "boosted_layer_apply",
  "BatchTest",
  "RegNewtonResult",
  "adaptive_batch_train",
  "augmented_inner_product_test",
  "norm_test",
  "reg_newton_minimize",
  "StormMetrics",
  "StormState",
  "storm_step",
  "SSOStep",
  "sso_step",
  "sso_surrogate",
  "PolicyGradientState",
  "harpg_step",
  "hessian_correction",
  "policy_gradient_init",
]
