"""Learning-rate schedules: linear decay, refinement from gradient norms, batch-size scaling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax.numpy as jnp
import numpy as np
import optax

from optim._validation import (
  check_choice,
  check_learning_rate,
  check_scalar,
  is_traced,
  renamed_kwargs,
)


def linear_decay(
  peak_value: float, total_steps: int, warmup_steps: int = 0, end_value: float = 0.0
) -> optax.Schedule:
  r"""Linear warmup to ``peak_value`` then linear decay to ``end_value`` at ``total_steps``.

  .. math::
    \eta_t = \begin{cases}
      \eta_{\max}\, t / T_w & t < T_w \\
      \eta_{\mathrm{end}} + (\eta_{\max} - \eta_{\mathrm{end}})
        \dfrac{T - t}{T - T_w} & T_w \le t \le T \\
      \eta_{\mathrm{end}} & t > T \end{cases}

  Defazio et al. show that linear decay is the worst-case optimal schedule for the last
  iterate of SGD and matches or beats cosine in practice; it is also what :func:`refined`
  returns when the gradient norms are constant.

  Args:
    peak_value: :math:`\eta_{\max}`, finite.
    total_steps: :math:`T > T_w`, an integer.
    warmup_steps: :math:`T_w \ge 0`, an integer.
    end_value: :math:`\eta_{\mathrm{end}}`, finite.

  Returns:
    An optax schedule (``count -> learning rate``), jit-able.

  Raises:
    TypeError: a non-numeric argument, or a traced ``total_steps``/``warmup_steps`` (they
      shape the schedule, so they must be concrete).
    ValueError: a non-finite ``peak_value``/``end_value``, a non-integer or out-of-range
      step count, or ``warmup_steps >= total_steps``. Traced ``peak_value``/``end_value``
      (under ``jit``) are not checked: a NaN there gives a NaN schedule (propagated).

  Example:
    >>> from optim.schedules import linear_decay
    >>> s = linear_decay(1.0, total_steps=10)
    >>> [round(float(s(t)), 2) for t in (0, 5, 10, 20)]
    [1.0, 0.5, 0.0, 0.0]

  References:
    Defazio, Cutkosky, Mehta, Mishchenko, "When, Why and How Much? Adaptive Learning Rate
    Scheduling by Refinement", arXiv:2310.07831 (Section 2).
  """
  check_scalar("peak_value", peak_value)
  check_scalar("end_value", end_value)
  # Both set the schedule's pieces (Python control flow), so they are static.
  total_steps = check_scalar("total_steps", total_steps, lo=1, integer=True, static=True)
  warmup_steps = check_scalar("warmup_steps", warmup_steps, lo=0, integer=True, static=True)
  if total_steps <= warmup_steps:
    raise ValueError(
      f"linear_decay: need 0 <= warmup_steps < total_steps (the decay needs at least one "
      f"step), got warmup_steps={warmup_steps}, "
      f"total_steps={total_steps}"
    )
  decay = optax.linear_schedule(peak_value, end_value, total_steps - warmup_steps)
  if warmup_steps == 0:
    return decay
  warm = optax.linear_schedule(0.0, peak_value, warmup_steps)
  return optax.join_schedules([warm, decay], [warmup_steps])


def _median_filter(x: np.ndarray, width: int) -> np.ndarray:
  """Centered running median with edges padded by the nearest value."""
  if width <= 1:
    return x
  half = width // 2
  padded = np.concatenate([np.full(half, x[0]), x, np.full(width - 1 - half, x[-1])])
  windows = np.lib.stride_tricks.sliding_window_view(padded, width)
  return np.median(windows, axis=1)


def _norms_array(grad_norms) -> np.ndarray:
  """``grad_norms`` as a float64 host vector, validated (see :func:`refined`)."""
  if is_traced(grad_norms):
    raise TypeError(
      "refined: grad_norms must be host data (a list or a concrete array of a previous "
      "run's norms), not a traced array: the schedule table is built in Python"
    )
  if isinstance(grad_norms, str) or grad_norms is None:
    raise TypeError(f"refined: grad_norms must be a 1-D sequence of numbers, got {grad_norms!r}")
  try:
    raw = np.asarray(grad_norms)
    if raw.dtype == np.bool_ or np.iscomplexobj(raw):
      raise TypeError(f"dtype {raw.dtype}")
    g = raw.astype(np.float64)
  except (TypeError, ValueError) as err:
    raise TypeError(f"refined: grad_norms must be a 1-D sequence of real numbers ({err})") from err
  if g.ndim != 1 or g.size < 2:
    raise ValueError(
      f"refined: grad_norms must be a 1-D sequence of length >= 2, got shape {g.shape}"
    )
  bad = ~np.isfinite(g) | (g <= 0)
  if np.any(bad):
    i = int(np.argmax(bad))
    raise ValueError(
      f"refined: grad_norms must be positive and finite (a norm of 0 would get an infinite "
      f"weight); got grad_norms[{i}] = {g[i]}"
    )
  return g


def _refined_shape(g: np.ndarray, power: float) -> tuple[np.ndarray, float]:
  r"""``(eta, top)``: :math:`\eta_t = w_t \sum_{s>t} w_s` (:math:`w_t = g_t^{-p}`) and its max.

  In float64; the schedule is ``peak_value * eta / top`` (the order it always had).

  Directly when every weight and product is a normal float64 (no overflow, no underflow:
  the common case, computed as it always was); otherwise in log space (a reverse
  cumulative ``logaddexp``), which is exact up to rounding for any positive finite norms:
  norms of 1e-160 or 1e160 (or 1e-30 with a large power) overflow :math:`w` or the
  products, which gave NaN.
  """
  tiny, big = np.finfo(np.float64).tiny, np.finfo(np.float64).max
  with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
    w = g**-power
    tail = np.concatenate([np.cumsum(w[::-1])[::-1][1:], [0.0]])  # sum_{s>t} w_s
    eta = w * tail
    top = eta.max()
    body = eta[:-1]  # the last entry is 0 by definition (nothing after T)
    normal = lambda x: bool(np.all((x >= tiny) & (x <= big)))
    if normal(w) and normal(tail[:-1]) and normal(body) and normal(body / top):
      return eta, top
  logw = -power * np.log(g)
  log_tail = np.append(np.logaddexp.accumulate(logw[::-1])[::-1][1:], -np.inf)
  log_eta = logw + log_tail
  return np.exp(log_eta - log_eta.max()), 1.0


def refined(
  grad_norms,
  peak_value: float,
  *,
  power: float = 2.0,
  smoothing: float = 0.0,
) -> optax.Schedule:
  r"""Schedule refined from the gradient norms recorded in a previous run (Defazio et al.).

  Given the norms :math:`\|g_1\|, \dots, \|g_T\|` of a previous run, weights
  :math:`w_t = \|g_t\|^{-p}` (``power`` :math:`p = 2` for SGD with the Euclidean norm; for
  Adam, record the :math:`\ell_1` norm of Adam's normalized gradient and use :math:`p = 1`)
  give the schedule

  .. math::
    \eta_t = \eta_{\max}\,\frac{w_t \sum_{s=t+1}^{T} w_s}{\max_k\, w_k \sum_{s=k+1}^{T} w_s},
    \qquad t = 1, \dots, T,

  which is :math:`\eta_{\max}(T - t)/(T - 1)`-shaped linear decay when the norms are
  constant and decays faster where the norms grow. The norms are first smoothed by a running
  median of width ``smoothing * T`` (the paper's :math:`\tau`; rounded up to an odd width,
  edges padded with the nearest norm). Step ``count = 0`` of the
  returned schedule is :math:`t = 1`; counts past :math:`T - 1` return 0.

  The table is computed in float64, in log space when a weight or product would leave
  float64's normal range (norms near 1e-160 or 1e160, or 1e±30 with a large ``power``), so
  any positive finite norms give a finite schedule; the schedule depends only on the
  norms' ratios (scaling every norm by a constant leaves it unchanged).

  Args:
    grad_norms: 1-D sequence of :math:`T \ge 2` positive, finite norms (host data).
    peak_value: :math:`\eta_{\max}`, finite.
    power: :math:`p > 0`, finite.
    smoothing: median-filter width as a fraction of :math:`T`, in [0, 1].

  Returns:
    An optax schedule (``count -> learning rate``), jit-able (the table is a constant).

  Raises:
    TypeError: ``grad_norms`` is not real host data (a string, ``None``, a traced array).
    ValueError: ``grad_norms`` not 1-D of length >= 2, or with an entry that is not
      positive and finite (the message gives the first one); a bad hyperparameter.

  Example:
    >>> import numpy as np
    >>> from optim.schedules import refined
    >>> s = refined(np.ones(5), peak_value=1.0)
    >>> [round(float(s(t)), 2) for t in range(5)]
    [1.0, 0.75, 0.5, 0.25, 0.0]

  References:
    Defazio, Cutkosky, Mehta, Mishchenko, "When, Why and How Much? Adaptive Learning Rate
    Scheduling by Refinement", arXiv:2310.07831 (Algorithm 1 and its Adam variant).
  """
  g = _norms_array(grad_norms)
  check_scalar("peak_value", peak_value)
  power = check_scalar("power", power, lo=0.0, lo_open=True, static=True)
  smoothing = check_scalar("smoothing", smoothing, lo=0.0, hi=1.0, static=True)
  width = int(smoothing * g.size)
  g = _median_filter(g, width + 1 - width % 2)  # odd, so the window is centered
  eta, top = _refined_shape(g, power)
  table = jnp.asarray(peak_value * eta / top, dtype=jnp.float32)
  last = table.size - 1

  def schedule(count):
    idx = jnp.clip(jnp.asarray(count, jnp.int32), 0, last)
    return jnp.where(jnp.asarray(count) > last, 0.0, table[idx])

  return schedule


@renamed_kwargs(kind="variant")
def scale_for_batch_size(
  learning_rate: optax.ScalarOrSchedule,
  base_batch_size: int,
  batch_size: int,
  variant: Literal["sgd", "adaptive"] = "sgd",
) -> optax.ScalarOrSchedule:
  r"""Rescales a learning rate tuned at ``base_batch_size`` for ``batch_size``.

  .. math::
    \eta(B) = \eta(B_0)\,\frac{B}{B_0} \ \ (\text{SGD}), \qquad
    \eta(B) = \eta(B_0)\,\sqrt{\frac{B}{B_0}} \ \ (\text{adaptive: Adam, ...}).

  Granziol et al. derive both rules from the spectrum of the mini-batch Hessian
  (random-matrix theory): the noise part of the curvature scales as :math:`1/B`, giving the
  linear rule for SGD and the square-root rule for adaptive methods (whose preconditioner
  itself scales with the gradient noise). Both hold below the critical batch size.

  Args:
    learning_rate: a float (finite, >= 0) or an optax schedule (scaled pointwise).
    base_batch_size: :math:`B_0 \ge 1`, an integer.
    batch_size: :math:`B \ge 1`, an integer.
    variant: ``"sgd"`` (linear) or ``"adaptive"`` (square root). Formerly ``kind`` (still
      accepted, with a ``DeprecationWarning``).

  Returns:
    A float, or a schedule if ``learning_rate`` was one.

  Example:
    >>> from optim.schedules import scale_for_batch_size
    >>> scale_for_batch_size(0.1, 128, 512), scale_for_batch_size(1e-3, 128, 512, "adaptive")
    (0.4, 0.002)

  References:
    Granziol, Zohren, Roberts, "Learning Rates as a Function of Batch Size: A Random Matrix
    Theory Approach to Neural Network Training", JMLR 2022, arXiv:2006.09092.
  """
  check_learning_rate(learning_rate)
  base_batch_size = check_scalar(
    "base_batch_size", base_batch_size, lo=1, integer=True, static=True
  )
  batch_size = check_scalar("batch_size", batch_size, lo=1, integer=True, static=True)
  check_choice("variant", variant, ("sgd", "adaptive"))
  if variant == "sgd":
    factor = batch_size / base_batch_size
  else:
    factor = float(np.sqrt(batch_size / base_batch_size))
  if callable(learning_rate):
    base: Callable = learning_rate
    return lambda count: factor * base(count)
  return learning_rate * factor
