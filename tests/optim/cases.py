"""The shared table of optimizers swept by every generic test (tests/optim/test_generic.py).

Each module that ships optimizers contributes a list of ``OptCase``:
``cases_first_order.FIRST_ORDER_CASES`` and ``cases_curvature.CURVATURE_CASES``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import optax


@dataclasses.dataclass(frozen=True)
class OptCase:
  """One optimizer configuration as the generic tests see it.

  Attributes:
    name: test id.
    make: ``make(learning_rate) -> GradientTransformationExtraArgs``; the learning rate
      may be a float or an optax schedule.
    lr: a learning rate that solves the generic parabola in ``steps`` steps.
    steps: steps allowed on the parabola.
    rosenbrock_lr: a learning rate that solves 2-D Rosenbrock in ``rosenbrock_steps``,
      or ``None`` when the method is not meant to (say why in ``note``).
    rosenbrock_steps: steps allowed on Rosenbrock.
    needs_obj_fn: the update needs the ``obj_fn`` extra argument (curvature methods).
    per_example: the update expects per-example gradients with a leading batch axis.
    extra_args: builds extra keyword arguments from ``(obj_fn, params, grads)`` beyond
      ``obj_fn`` and ``value`` (which the harness always passes).
    hyperparam: the name of a hyperparameter ``optax.inject_hyperparams`` may trace.
    note: anything a reader of a failing test should know.
    tol: relative distance to the minimizer the parabola run must reach
      (``||x - x*|| / ||x*||``); Rosenbrock uses ``10 * tol`` absolute.
  """

  name: str
  make: Callable[[Any], optax.GradientTransformationExtraArgs]
  lr: float
  steps: int = 300
  rosenbrock_lr: float | None = None
  rosenbrock_steps: int = 2000
  needs_obj_fn: bool = False
  per_example: bool = False
  extra_args: Callable[..., dict] | None = None
  hyperparam: str = "learning_rate"
  note: str = ""
  tol: float = 1e-2
