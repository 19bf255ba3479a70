"""Curvature-based optimizers in the shared generic table."""

import jax
import jax.numpy as jnp

import optim
from optim._tree import tree_probe
from tests.optim.cases import OptCase


def gaussian_sampled_loss(obj_fn, params, grads):
  """``sampled_obj_fn`` for Sophia-G on the generic problems, built from first principles.

  Read the parabola as a unit-variance Gaussian model ``y ~ N(params, I)``: labels
  sampled from the model's own predictive distribution are ``y = params + xi`` with
  ``xi ~ N(0, I)``, and the sampled-label loss is ``0.5 ||params - y||^2`` (one
  prediction, ``batch_size = 1``). Its GNB estimate ``g_hat ** 2 = xi ** 2`` has
  expectation 1, the Gauss-Newton diagonal (= the Hessian of the parabola).
  """
  del obj_fn, params, grads

  def sampled_obj_fn(p, key):
    xi = tree_probe(key, p, "gaussian")
    y = jax.tree.map(lambda a, e: jax.lax.stop_gradient(a) + e, p, xi)
    return 0.5 * sum(
      jnp.sum(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))
      for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(y))
    )

  return {"sampled_obj_fn": sampled_obj_fn}


CURVATURE_CASES: list[OptCase] = [
  OptCase(
    name="sophia_h",
    make=lambda learning_rate: optim.sophia(learning_rate, gamma=0.1, weight_decay=0.0, key=0),
    lr=0.1,
    steps=600,
    rosenbrock_lr=0.3,
    needs_obj_fn=True,
    note=(
      "k = 10; h is an un-bias-corrected EMA, so early steps are clipped sign steps of size "
      "lr and the parabola needs ~600 steps to enter the Newton regime"
    ),
  ),
  OptCase(
    name="sophia_g",
    make=lambda learning_rate: optim.sophia(
      learning_rate, gamma=0.1, weight_decay=0.0, variant="gnb", batch_size=1, key=0
    ),
    lr=0.1,
    steps=600,
    needs_obj_fn=True,
    extra_args=gaussian_sampled_loss,
    note=(
      "GNB with labels sampled from a unit-variance Gaussian model of the parabola; no "
      "Rosenbrock (it has no likelihood to sample labels from)"
    ),
  ),
  OptCase(
    name="adahessian",
    make=lambda learning_rate: optim.adahessian(learning_rate, key=0),
    lr=0.15,
    needs_obj_fn=True,
    note="paper defaults; no Rosenbrock: |diag H| preconditioning stalls in the curved valley",
  ),
  OptCase(
    name="adahessian_k05_every3_wd",
    make=lambda learning_rate: optim.adahessian(
      learning_rate, hessian_power=0.5, update_interval=3, weight_decay=1e-4, key=1
    ),
    lr=0.15,
    needs_obj_fn=True,
    note="hessian_power 0.5, Hessian every 3 steps, decoupled decay 1e-4 (moves x* by ~1e-4)",
  ),
  OptCase(
    name="reg_newton",
    make=lambda learning_rate: optim.reg_newton(learning_rate),
    lr=1.0,
    steps=30,
    rosenbrock_lr=1.0,
    rosenbrock_steps=200,
    needs_obj_fn=True,
    note=(
      "paper defaults (gamma_0 = 1, adaptive search, exact Hessian by CG); lr 1 is the "
      "paper's method: its acceptance test assumes the full step"
    ),
  ),
  OptCase(
    name="mfac",
    make=lambda learning_rate: optim.mfac(learning_rate, num_grads=8, damping=1.0),
    lr=0.1,
    rosenbrock_lr=0.03,
    note=(
      "damping 1: on deterministic gradients the window's empirical Fisher is dominated by "
      "old, large gradients, and small damping stalls the parabola"
    ),
  ),
]
