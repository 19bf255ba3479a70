"""AdAdaGrad (Lau, Liu, Kolar): adaptive batch-size tests for adaptive gradient methods."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim._dp import _batch_size
from optim._schedules import scale_for_batch_size
from optim._validation import (
  as_key,
  check_choice,
  check_floating,
  check_learning_rate,
  check_scalar,
  is_traced,
)

PyTree = Any


class BatchTest(NamedTuple):
  """The outcome of an adaptive batch-size test on one batch of per-example gradients.

  Attributes:
    passed: whether the batch was large enough (bool scalar).
    batch_size: the smallest batch size the test asks for (float scalar, rounded up;
      ``inf`` when the mean gradient is zero but the examples disagree; NaN, with
      ``passed=False``, when traced per-example gradients are not finite); at most the
      current size when ``passed``.
    statistic: the test's left-hand side over its right-hand side (<= 1 passes).
  """

  passed: jax.Array
  batch_size: jax.Array
  statistic: jax.Array


def _stats(per_example):
  """Mean gradient ``gbar`` (a tree), ``|gbar|^2``, ``<g_i, gbar>`` and ``|g_i - gbar|^2``."""
  check_floating(per_example, "per_example_grads", "adaptive batch test")
  b = _batch_size(per_example, "adaptive batch test")
  if b < 2:
    raise ValueError(
      "adaptive batch test: needs at least 2 per-example gradients to estimate a variance, "
      f"got a batch of {b}"
    )
  wide = jax.tree.map(lambda g: g.astype(jnp.promote_types(g.dtype, jnp.float32)), per_example)
  gbar = jax.tree.map(lambda g: jnp.mean(g, axis=0), wide)
  rowsum = lambda t: sum(jnp.sum(x.reshape(b, -1), axis=1) for x in jax.tree.leaves(t))
  sq_mean = sum(jnp.sum(m**2) for m in jax.tree.leaves(gbar))
  inner = rowsum(jax.tree.map(lambda g, m: g * m, wide, gbar))
  dev = rowsum(jax.tree.map(lambda g, m: (g - m) ** 2, wide, gbar))
  return b, sq_mean, inner, dev


def _ratio(num, den):
  """``num / den`` with ``0/0 = 0`` (no spread, nothing to ask for) and ``x/0 = inf``."""
  safe = jnp.where(den > 0, den, 1.0)
  return jnp.where(num > 0, jnp.where(den > 0, num / safe, jnp.inf), 0.0)


def _outcome(b, required, stats, where):
  """The :class:`BatchTest` for the batch size ``required``; poisoned if ``stats`` are not finite.

  A NaN or inf per-example gradient (or a square that overflows) makes the statistics
  non-finite, and the ratios' ``0/0 = 0`` convention would then read it as "no spread":
  a passed test with batch size 0. Concrete statistics raise instead; traced ones give
  ``passed=False`` and NaN ``batch_size`` and ``statistic``.
  """
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in stats]))
  if not is_traced(finite) and not bool(finite):
    raise ValueError(
      f"{where}: per_example_grads gave non-finite statistics (a NaN or inf gradient, or "
      "squares that overflow the dtype): the test cannot decide, so no batch size is given"
    )
  required = jnp.where(finite, jnp.ceil(required), jnp.nan)
  return BatchTest(passed=required <= b, batch_size=required, statistic=required / b)


def norm_test(per_example_grads: PyTree, *, eta: float = 0.5) -> BatchTest:
  r"""The (approximate) norm test: is the batch large enough for the gradient's noise?

  With per-example gradients :math:`g_i`, :math:`i \in \mathcal B`, :math:`|\mathcal B| = b`,
  and their mean :math:`\bar g`, the test of Byrd et al. used by AdAdaGrad (Lau et
  al.) is

  .. math::
    \frac{1}{b}\,\frac{1}{b-1}\sum_{i}\|g_i - \bar g\|^2 \;\le\; \eta^2\,\|\bar g\|^2,

  and when it fails the next batch should be
  :math:`b' = \big\lceil \frac{1}{b-1}\sum_i\|g_i - \bar g\|^2 / (\eta^2\|\bar g\|^2)\big\rceil`
  (the size at which the same sample variance would pass).

  Non-finite per-example gradients (NaN, inf, or squares that overflow the dtype) make the
  statistics non-finite: concrete ones raise a ``ValueError``; traced ones (under ``jit``)
  give the poison ``passed=False`` with NaN ``batch_size`` and ``statistic``, never a passed
  test.

  Variant note: the default :math:`\eta = 0.5` is an assumption (the stored sources did not
  give the paper's tuned value); smaller :math:`\eta` asks for larger batches.

  Args:
    per_example_grads: a pytree, every leaf with a leading batch axis :math:`b \ge 2`.
    eta: :math:`\eta > 0`.

  Returns:
    A :class:`BatchTest`; jit-able (``eta`` may be traced).

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.loops import norm_test
    >>> g = {"w": jnp.array([[1.0, 0.0], [3.0, 0.0]])}  # mean (2, 0), sample variance 2
    >>> t = norm_test(g, eta=0.5)
    >>> bool(t.passed), float(t.batch_size)  # 2 / (0.25 * 4) = 2 <= b
    (True, 2.0)

  References:
    Lau, Liu, Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient
    Methods", arXiv:2402.11215 (2024); Byrd, Chin, Nocedal, Wu, "Sample size selection in
    optimization methods for machine learning", Math. Program. 2012.
  """
  check_scalar("eta", eta, lo=0.0, lo_open=True)
  b, sq_mean, _, dev = _stats(per_example_grads)
  var = jnp.sum(dev) / (b - 1)
  return _outcome(b, _ratio(var, eta**2 * sq_mean), (sq_mean, dev), "norm_test")


def augmented_inner_product_test(
  per_example_grads: PyTree, *, theta: float = 0.9, nu: float = 5.84
) -> BatchTest:
  r"""The augmented inner-product test (inner-product plus orthogonality test).

  With per-example gradients :math:`g_i` (batch :math:`b`) and their mean :math:`\bar g`,
  both of Bollapragada et al.'s conditions (as used by Lau et al.) must hold:

  .. math::
    \frac{1}{b}\,\frac{1}{b-1}\sum_i\big(\langle g_i, \bar g\rangle - \|\bar g\|^2\big)^2
      &\le \theta^2\,\|\bar g\|^4 \quad\text{(inner product)},\\
    \frac{1}{b}\,\frac{1}{b-1}\sum_i\Big\|g_i - \frac{\langle g_i, \bar g\rangle}
      {\|\bar g\|^2}\bar g\Big\|^2 &\le \nu^2\,\|\bar g\|^2 \quad\text{(orthogonality)};

  the requested batch is the larger of the two sizes at which each would pass. The first
  controls the noise along the descent direction only, so it asks for far smaller batches
  than the norm test; the second keeps the orthogonal noise bounded.

  Defaults :math:`\theta = 0.9`, :math:`\nu = 5.84` (:math:`\tan 80^\circ`) are Bollapragada
  et al.'s.

  Non-finite per-example gradients: as in :func:`norm_test` (concrete: ``ValueError``;
  traced: ``passed=False``, NaN ``batch_size`` and ``statistic``).

  Args:
    per_example_grads: a pytree, every leaf with a leading batch axis :math:`b \ge 2`.
    theta: :math:`\theta > 0`.
    nu: :math:`\nu > 0`.

  Returns:
    A :class:`BatchTest`; jit-able.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.loops import augmented_inner_product_test
    >>> g = {"w": jnp.array([[1.0, 1.0], [3.0, -1.0]])}  # mean (2, 0)
    >>> t = augmented_inner_product_test(g)
    >>> bool(t.passed), float(t.batch_size)
    (True, 1.0)

  References:
    Lau, Liu, Kolar, "AdAdaGrad", arXiv:2402.11215; Bollapragada, Byrd, Nocedal, "Adaptive
    Sampling Strategies for Stochastic Optimization", SIAM J. Optim. 2018, arXiv:1710.11258.
  """
  check_scalar("theta", theta, lo=0.0, lo_open=True)
  check_scalar("nu", nu, lo=0.0, lo_open=True)
  b, sq_mean, inner, dev = _stats(per_example_grads)
  var_ip = jnp.sum((inner - sq_mean) ** 2) / (b - 1)
  # |g_i - (<g_i, gbar>/|gbar|^2) gbar|^2 = |g_i - gbar|^2 - (<g_i, gbar> - |gbar|^2)^2/|gbar|^2
  proj = _ratio((inner - sq_mean) ** 2, jnp.broadcast_to(sq_mean, inner.shape))
  proj = jnp.where(sq_mean > 0, proj, 0.0)
  var_orth = jnp.sum(jnp.maximum(dev - proj, 0.0)) / (b - 1)
  need = jnp.maximum(_ratio(var_ip, theta**2 * sq_mean**2), _ratio(var_orth, nu**2 * sq_mean))
  return _outcome(b, need, (sq_mean, inner, dev), "augmented_inner_product_test")


class AdaptiveBatchResult(NamedTuple):
  """What :func:`adaptive_batch_train` returns.

  Attributes:
    params: the final parameters.
    batch_sizes: the batch size of every step (int numpy array).
    examples: examples consumed up to and including every step (cumulative).
    losses: the mini-batch loss of every step (before its update).
    callbacks: the values ``callback(step, params)`` returned, every ``callback_every``.
  """

  params: PyTree
  batch_sizes: np.ndarray
  examples: np.ndarray
  losses: np.ndarray
  callbacks: list


def adaptive_batch_train(
  per_example_loss: Callable[[PyTree, PyTree], jax.Array],
  params: PyTree,
  data: PyTree,
  make_optimizer: Callable[[Any], optax.GradientTransformation],
  learning_rate: float,
  *,
  num_steps: int,
  initial_batch_size: int,
  max_batch_size: int | None = None,
  variant: str = "norm",
  eta: float = 0.5,
  theta: float = 0.9,
  nu: float = 5.84,
  lr_scaling: str | None = "adaptive",
  callback: Callable[[int, PyTree], Any] | None = None,
  callback_every: int = 1,
  key=0,
) -> AdaptiveBatchResult:
  r"""Trains with AdAdaGrad's adaptive batch size: test each batch, grow it when it fails.

  Each step draws :math:`b_k` examples without replacement, computes their per-example
  gradients, applies the optimizer to their mean, and runs the test (:func:`norm_test` for
  ``variant="norm"``, :func:`augmented_inner_product_test` for ``"inner_product"``) on
  them: the next batch is :math:`b_{k+1} = \max(b_k, \hat b_k)`, with :math:`\hat b_k` the
  size the test asks for, rounded up to a multiple of ``initial_batch_size`` (so at most
  ``max_batch_size / initial_batch_size`` shapes are compiled) and capped at
  ``max_batch_size`` (default: the data size). The batch never shrinks (as in
  Lau et al.). When it grows, the learning rate is rescaled by
  :func:`optim.schedules.scale_for_batch_size` (``lr_scaling="adaptive"``: square root,
  for AdaGrad/Adam; ``"sgd"``: linear; ``None``: kept), through
  ``optax.inject_hyperparams``, so the optimizer's state carries over.

  A step whose per-example gradients are not finite is a ``ValueError`` naming the step
  (the test cannot choose a batch size from them).

  Args:
    per_example_loss: ``(params, example) -> scalar`` for one example of ``data``.
    params: initial parameters.
    data: a pytree of arrays with a shared leading axis (the examples).
    make_optimizer: ``learning_rate -> GradientTransformation`` (e.g. ``optax.adagrad``).
    learning_rate: the learning rate at ``initial_batch_size`` (a float).
    num_steps: optimizer steps, an integer >= 1.
    initial_batch_size: :math:`b_0 \ge 2`.
    max_batch_size: cap on :math:`b_k` (default and maximum: the number of examples).
    variant: ``"norm"`` or ``"inner_product"`` (the augmented inner-product test).
    eta: the norm test's :math:`\eta`.
    theta: the inner-product test's :math:`\theta`.
    nu: the orthogonality test's :math:`\nu`.
    lr_scaling: ``"adaptive"``, ``"sgd"`` or ``None``.
    callback: optional ``(step, params) -> value`` (e.g. the full training loss), called
      after steps ``0, callback_every, ...`` and after the last step.
    callback_every: an integer >= 1.
    key: int seed or PRNG key of the batch sampling (keyword-only).

  Returns:
    An :class:`AdaptiveBatchResult`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optim.loops import adaptive_batch_train
    >>> x = jnp.linspace(-1, 1, 64); data = (x, 3 * x + 0.3 * jnp.sin(40 * x))
    >>> loss = lambda w, ex: (w[0] * ex[0] - ex[1]) ** 2
    >>> r = adaptive_batch_train(loss, jnp.zeros(1), data, optax.adagrad, 0.5,
    ...                          num_steps=12, initial_batch_size=4, key=0)
    >>> int(r.batch_sizes[0]), bool(r.batch_sizes[-1] > 4), bool(r.losses[-1] < r.losses[0])
    (4, True, True)

  References:
    Lau, Liu, Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient
    Methods", arXiv:2402.11215 (2024).
  """
  check_learning_rate(learning_rate)
  num_steps = check_scalar("num_steps", num_steps, lo=1, integer=True, static=True)
  b0 = check_scalar("initial_batch_size", initial_batch_size, lo=2, integer=True, static=True)
  every = check_scalar("callback_every", callback_every, lo=1, integer=True, static=True)
  check_choice("variant", variant, ("norm", "inner_product"))
  if lr_scaling is not None:
    check_choice("lr_scaling", lr_scaling, ("adaptive", "sgd"))
  n = _batch_size(data, "adaptive_batch_train: data")
  cap = (
    n
    if max_batch_size is None
    else check_scalar("max_batch_size", max_batch_size, lo=b0, integer=True, static=True)
  )
  cap = min(cap, n)
  if b0 > n:
    raise ValueError(f"initial_batch_size={b0} exceeds the number of examples ({n})")
  if variant == "norm":
    test = lambda g: norm_test(g, eta=eta)
  else:
    test = lambda g: augmented_inner_product_test(g, theta=theta, nu=nu)
  tx = optax.inject_hyperparams(make_optimizer)(learning_rate=learning_rate)
  grads_fn = jax.vmap(jax.grad(per_example_loss), in_axes=(None, 0))
  losses_fn = jax.vmap(per_example_loss, in_axes=(None, 0))

  @jax.jit
  def step(params, state, batch):
    g = grads_fn(params, batch)
    loss = jnp.mean(losses_fn(params, batch))
    mean = jax.tree.map(lambda x: jnp.mean(x, axis=0), g)
    updates, state = tx.update(mean, state, params)
    return optax.apply_updates(params, updates), state, loss, test(g).batch_size

  key = as_key(key)
  state = tx.init(params)
  b = b0
  sizes, examples, losses, calls = [], [], [], []
  seen = 0
  for k in range(num_steps):
    key, sub = jax.random.split(key)
    idx = jax.random.choice(sub, n, (b,), replace=False)
    batch = jax.tree.map(lambda a: a[idx], data)
    params, state, loss, want = step(params, state, batch)
    seen += b
    sizes.append(b)
    examples.append(seen)
    losses.append(float(loss))
    if callback is not None and (k % every == 0 or k == num_steps - 1):
      calls.append(callback(k, params))
    want = float(want)
    if math.isnan(want):
      raise ValueError(
        f"adaptive_batch_train: at step {k} the per-example gradients of per_example_loss "
        f"(batch of {b}) are not finite, so the {variant} test cannot choose a batch size"
      )
    if want > b:
      new_b = cap if not math.isfinite(want) else min(cap, b0 * math.ceil(want / b0))
      if new_b > b and lr_scaling is not None:
        lr = scale_for_batch_size(learning_rate, b0, new_b, lr_scaling)
        hp = dict(state.hyperparams)
        hp["learning_rate"] = jnp.asarray(lr, hp["learning_rate"].dtype)
        state = state._replace(hyperparams=hp)
      b = max(b, new_b)
  return AdaptiveBatchResult(
    params, np.asarray(sizes), np.asarray(examples), np.asarray(losses), calls
  )
