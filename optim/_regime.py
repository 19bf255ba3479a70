"""Regime adaptation (Hoffer, Hubara, Soudry 2017): a small-batch regime at a large batch."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax.numpy as jnp
import optax

from optim._validation import check_choice, check_learning_rate, check_scalar


class Regime(NamedTuple):
  """What :func:`regime_adaptation` returns: the adapted learning rate and the run length.

  Attributes:
    learning_rate: a float (for a float input) or an optax schedule of the update count.
    num_steps: how many updates to run at the large batch size.
  """

  learning_rate: optax.ScalarOrSchedule
  num_steps: int


def regime_adaptation(
  learning_rate: optax.ScalarOrSchedule,
  base_batch_size: int,
  batch_size: int,
  base_num_steps: int,
  *,
  variant: Literal["updates", "epochs"] = "updates",
) -> Regime:
  r"""Moves a training regime tuned at batch size :math:`B_0` to batch size :math:`B`.

  With :math:`k = B / B_0` and the small-batch regime :math:`\eta_0(t)`,
  :math:`t = 0, \dots, T_0 - 1` (updates at :math:`B_0`):

  .. math::
    \text{"updates"} \text{ (regime adaptation)}:&\quad
      \eta(t) = \sqrt{k}\,\eta_0(t), \qquad T = T_0, \\
    \text{"epochs"} \text{ (learning-rate fix only)}:&\quad
      \eta(t) = \sqrt{k}\,\eta_0(\lfloor k t \rfloor), \qquad T = \lceil T_0 / k \rceil.

  The paper's argument: SGD's weights move like a random walk on a random potential, the
  distance travelled grows like :math:`\log t`, and large batches generalize worse only
  because they take fewer updates. Scaling the learning rate by :math:`\sqrt{k}` keeps the
  covariance of the update's noise that of the small batch (the "learning-rate fix", the
  official code's ``lr = lr0 * (batch_size / 128) ** 0.5``), and *regime adaptation* keeps
  the number of updates, and the updates at which the rate drops, those of the small batch
  (the official ``--regime_bb_fix``: every epoch milestone and the epoch count multiplied
  by :math:`\lceil k \rceil`, i.e. :math:`k` times the epochs). ``"epochs"`` is the
  same-epochs baseline with the learning-rate fix (:math:`k` times fewer updates, milestones
  at the same epochs). Pair it with :class:`optim.layers.GhostBatchNorm` (ghost batch
  :math:`B_0`), the paper's third ingredient.

  Args:
    learning_rate: :math:`\eta_0`: a float (finite, ``>= 0``) or an optax schedule of the
      update count at :math:`B_0`.
    base_batch_size: :math:`B_0 \ge 1`, the batch the regime was tuned at (an integer).
    batch_size: :math:`B \ge 1`, the batch to train at (an integer).
    base_num_steps: :math:`T_0 \ge 1`, the regime's number of updates at :math:`B_0`.
    variant: ``"updates"`` (regime adaptation: same number of updates) or ``"epochs"``
      (same number of epochs, learning-rate fix only).

  Returns:
    A :class:`Regime` ``(learning_rate, num_steps)``: the learning rate (a float for a
    float input, else a jit-able schedule of the update count at :math:`B`) and
    :math:`T`.

  Raises:
    TypeError: a non-numeric or traced batch size or step count (they shape the run).
    ValueError: a batch size or step count that is not a positive integer, a bad
      learning rate or an unknown ``variant``.

  Example:
    >>> import optax
    >>> from optim.schedules import regime_adaptation
    >>> base = optax.piecewise_constant_schedule(0.1, {1000: 0.1})  # drop at update 1000
    >>> lr, steps = regime_adaptation(base, 32, 512, base_num_steps=2000)
    >>> steps, round(float(lr(999)), 3), round(float(lr(1000)), 3)
    (2000, 0.4, 0.04)
    >>> lr, steps = regime_adaptation(base, 32, 512, base_num_steps=2000, variant="epochs")
    >>> steps, round(float(lr(62)), 3), round(float(lr(63)), 3)
    (125, 0.4, 0.04)

  References:
    Hoffer, Hubara, Soudry, "Train longer, generalize better: closing the generalization
    gap in large batch training of neural networks", NeurIPS 2017, arXiv:1705.08741
    (Sections 4-5); official code github.com/eladhoffer/bigBatch (``main_normal.py``).
  """
  check_learning_rate(learning_rate)
  base_batch_size = check_scalar(
    "base_batch_size", base_batch_size, lo=1, integer=True, static=True
  )
  batch_size = check_scalar("batch_size", batch_size, lo=1, integer=True, static=True)
  base_num_steps = check_scalar("base_num_steps", base_num_steps, lo=1, integer=True, static=True)
  check_choice("variant", variant, ("updates", "epochs"))
  k = batch_size / base_batch_size
  factor = math.sqrt(k)
  if variant == "updates":
    num_steps = base_num_steps
  else:
    num_steps = max(1, math.ceil(base_num_steps / k))
  if not callable(learning_rate):
    return Regime(learning_rate * factor, num_steps)
  base: Callable = learning_rate
  if variant == "updates":
    return Regime(lambda count: factor * base(count), num_steps)

  def schedule(count):
    # The base step reached after `count` large-batch updates, k * count (floored for a
    # fractional k); integer arithmetic where k is an integer, so that it stays exact.
    count = jnp.asarray(count)
    if k == int(k):
      base_count = count * int(k)
    else:
      base_count = jnp.floor(count.astype(jnp.float32) * k).astype(jnp.int32)
    return factor * base(base_count)

  return Regime(schedule, num_steps)
