"""M-FAC optimizer: the dynamic algorithm over a sliding window of gradients."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import optax
import optax.tree_utils as otu

from optim._validation import (
  MISSING,
  add_decayed_weights,
  check_dtype,
  check_learning_rate,
  check_scalar,
  guard,
  renamed_kwargs,
  warn_default,
)

PyTree = Any

__all__ = ["ScaleByMFACState", "mfac", "scale_by_mfac"]


class ScaleByMFACState(NamedTuple):
  """State of :func:`scale_by_mfac`.

  Attributes:
    count: steps taken (int32); the next gradient goes to slot ``count % m``.
    grads: the ring buffer :math:`G`, one ``(m, leaf.size)`` matrix per parameter leaf
      (row ``i`` is the flattened gradient of slot ``i``); slots not yet written are zero
      (they add nothing to the Fisher).
    gram: :math:`G G^\\top`, ``(m, m)``, kept up to date one row/column per step.
    momentum: the EMA of the preconditioned gradients.
  """

  count: jax.Array
  grads: optax.Updates
  gram: jax.Array
  momentum: optax.Updates


@renamed_kwargs(buffer_dtype="mu_dtype")
def scale_by_mfac(
  num_grads: int = 1024,
  damping: float = 1e-5,
  momentum: float = 0.0,
  mu_dtype: Any = None,
) -> optax.GradientTransformation:
  r"""M-FAC preconditioning: the inverse empirical Fisher of the last ``m`` gradients.

  At step :math:`t` the gradient :math:`g_t` replaces the oldest one in a ring buffer
  :math:`G \in \mathbb R^{m \times d}` and (Frantar et al., 2021, Sec. 3.2 and 5)

  .. math::
    \hat F_t &= \lambda I + \frac{1}{m} G^\top G, \qquad
    \hat F_t^{-1} g_t = \frac{1}{\lambda}\Big(g_t - G^\top K^{-1} (G g_t)\Big), \quad
    K = m\lambda I_m + G G^\top \\
    v_t &= \mu v_{t-1} + (1 - \mu) \hat F_t^{-1} g_t, \qquad u_t = v_t .

  Per step: one new row/column of :math:`G G^\top` (:math:`G g_t`, ``O(md)``), a
  Cholesky factorisation of the ``m x m`` matrix :math:`K` (``O(m^3)``; the paper's
  dynamic algorithm recomputes its ``m x m`` coefficient matrices the same way), two
  triangular solves (``O(m^2)``) and :math:`G^\top(\cdot)` (``O(md)``). The first ``m``
  steps use the zero-filled buffer, as the official implementation does. With ``mu = 0``
  this is :math:`\hat F_t^{-1} g_t`. Memory: ``m d`` for the buffer; jit the training step
  with the optimizer state donated (``donate_argnums``) so that the buffer is updated in
  place, otherwise every step copies it.

  The Woodbury form with a Cholesky factor is the same computation as the paper's
  coefficient recursion (an LU factorisation without pivoting of
  :math:`\lambda^{-1} G G^\top + m I`, which equals :math:`K/\lambda`), in a
  numerically stable, matmul-friendly form. The Gram matrix and the factorisation are
  in float32 at least.

  Non-finite gradients: propagate. A NaN or inf gradient makes the update NaN and poisons
  the state: the gradient window for ``m`` steps and the momentum EMA for good (even at
  ``momentum=0``, since ``0 * NaN`` is NaN). Wrap the optimizer in
  ``optax.apply_if_finite`` when that can happen; the skipped step leaves the state
  untouched.

  Args:
    num_grads: :math:`m \ge 1`, the window length (a static Python int: it sets shapes;
      under ``optax.inject_hyperparams`` list it in ``static_args``).
    damping: :math:`\lambda > 0` (official default ``1e-5``). :math:`K` is positive
      definite for any :math:`\lambda > 0`, but its condition number grows like
      :math:`\|g\|^2 / (m \lambda)`: in float32 keep it below ~1e6, or the Cholesky
      factorisation loses accuracy (NaN when it fails outright).
    momentum: :math:`\mu \in [0, 1)` (official default 0).
    mu_dtype: dtype of the gradient window :math:`G`; ``None`` (default): the
      parameters' dtypes. Formerly ``buffer_dtype=`` (still accepted, with a
      ``DeprecationWarning``). The momentum :math:`v` keeps the parameters' dtypes.

  Returns:
    An ``optax.GradientTransformation`` (needs no objective).

  Raises:
    ValueError: bad hyperparameters (checked when concrete).
    TypeError: a non-numeric hyperparameter or a traced ``num_grads``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim import scale_by_mfac
    >>> opt = scale_by_mfac(num_grads=4, damping=1.0)
    >>> g = jnp.array([1.0, 0.0])
    >>> u, state = opt.update(g, opt.init(g))
    >>> u  # (I + g g^T / 4)^{-1} g = g / (1 + 1/4)
    Array([0.8, 0. ], dtype=float32)

  References:
    Frantar, Kurtic, Alistarh, "M-FAC: Efficient Matrix-Free Approximations of
    Second-Order Information", NeurIPS 2021, arXiv:2107.03356.
  """
  m = check_scalar("num_grads", num_grads, lo=1, integer=True, static=True)
  check_scalar("damping", damping, lo=0.0, lo_open=True)
  check_scalar("momentum", momentum, lo=0.0, hi=1.0, hi_open=True)
  mu_dtype = check_dtype("mu_dtype", mu_dtype)

  def init_fn(params):
    def buffer(p):
      return jnp.zeros((m, int(np.prod(jnp.shape(p)))), mu_dtype or jnp.result_type(p))

    acc = jnp.result_type(jnp.float32, *[jnp.result_type(p) for p in jax.tree.leaves(params)])
    return ScaleByMFACState(
      count=jnp.zeros([], jnp.int32),
      grads=jax.tree.map(buffer, params),
      gram=jnp.zeros((m, m), acc),
      momentum=otu.tree_zeros_like(params),
    )

  def update_fn(updates, state, params=None):
    del params
    acc = state.gram.dtype
    slot = state.count % m
    flat_g = [g.reshape(-1) for g in jax.tree.leaves(updates)]
    # One 2-D (m, size) buffer per leaf, written with a dynamic-update-slice and only
    # then read: with a donated state XLA updates it in place and feeds it straight to
    # the products (a reshape in between, or reading the old buffer, costs a copy).
    buffers = [
      jax.lax.dynamic_update_index_in_dim(b, g.astype(b.dtype), slot, 0)
      for b, g in zip(jax.tree.leaves(state.grads), flat_g)
    ]
    row = sum(
      (
        jnp.matmul(b, g.astype(b.dtype), preferred_element_type=acc)
        for b, g in zip(buffers, flat_g)
      ),
      start=jnp.zeros((m,), acc),
    )  # G g_t, with g_t already in its slot
    gram = state.gram.at[slot, :].set(row).at[:, slot].set(row)
    lam = jnp.asarray(damping, acc)
    chol = jnp.linalg.cholesky(m * lam * jnp.eye(m, dtype=acc) + gram)
    coef = jsl.cho_solve((chol, True), row)
    treedef = jax.tree.structure(updates)
    correction = jax.tree.unflatten(
      treedef,
      [
        jnp.matmul(coef.astype(b.dtype), b, preferred_element_type=acc).reshape(jnp.shape(g))
        for b, g in zip(buffers, jax.tree.leaves(updates))
      ],
    )
    grads = jax.tree.unflatten(treedef, buffers)
    ihvp = jax.tree.map(lambda g, c: (g.astype(acc) - c) / lam, updates, correction)
    mom = otu.tree_cast_like(
      otu.tree_update_moment(ihvp, state.momentum, momentum, 1), state.momentum
    )
    new_updates = jax.tree.map(lambda v, g: v.astype(g.dtype), mom, updates)
    return new_updates, ScaleByMFACState(
      count=optax.safe_increment(state.count), grads=grads, gram=gram, momentum=mom
    )

  return guard(optax.GradientTransformation(init_fn, update_fn), "scale_by_mfac")


@renamed_kwargs(buffer_dtype="mu_dtype")
def mfac(
  learning_rate: optax.ScalarOrSchedule = MISSING,
  num_grads: int = 1024,
  damping: float = 1e-5,
  momentum: float = 0.0,
  weight_decay: float = 0.0,
  weight_decay_mask: Any = None,
  mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The M-FAC optimizer (Frantar et al., 2021): SGD preconditioned by :func:`scale_by_mfac`.

  .. math::
    \theta_{t+1} = \theta_t - \eta_t v_t, \qquad
    v_t = \mu v_{t-1} + (1 - \mu) \hat F_t^{-1} (g_t + \lambda_{wd} \theta_t),

  with the weight decay added to the gradient *before* preconditioning (an L2 term), as
  the official implementation does.

  Non-finite gradients: propagate and poison the state (see :func:`scale_by_mfac`);
  compose with ``optax.apply_if_finite`` to skip such steps.

  Args:
    learning_rate: :math:`\eta_t \ge 0`, float or optax schedule; required (the official
      default 1e-3 is used, with a ``DeprecationWarning``, when it is omitted). A schedule's
      values are not checked: one returning NaN gives NaN updates.
    num_grads, damping, momentum, mu_dtype: see :func:`scale_by_mfac` (``buffer_dtype=``
      is the deprecated spelling of ``mu_dtype=``).
    weight_decay: :math:`\lambda_{wd} \ge 0` (coupled L2).
    weight_decay_mask: optional mask (pytree or callable) of the parameters to decay.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (extra arguments are ignored). Under
    ``optax.inject_hyperparams``, list ``num_grads`` in ``static_args``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optim import mfac
    >>> f = lambda p: 0.5 * jnp.sum(jnp.array([1.0, 10.0]) * p**2)
    >>> opt = mfac(0.1, num_grads=8, damping=1.0)
    >>> @jax.jit
    ... def step(p, state):
    ...   u, state = opt.update(jax.grad(f)(p), state, p)
    ...   return optax.apply_updates(p, u), state
    >>> p0 = jnp.array([1.0, -1.0]); p, state = p0, opt.init(p0)
    >>> for _ in range(100):
    ...   p, state = step(p, state)
    >>> bool(f(p) < 1e-4 * f(p0))
    True

  References:
    Frantar, Kurtic, Alistarh, "M-FAC: Efficient Matrix-Free Approximations of
    Second-Order Information", NeurIPS 2021, arXiv:2107.03356.
  """
  learning_rate = warn_default(learning_rate, "learning_rate", 1e-3, "mfac")
  check_learning_rate(learning_rate)
  check_scalar("weight_decay", weight_decay, lo=0.0)
  # The decay comes first and would cast integer gradients to float: guard the whole chain.
  return guard(
    optax.chain(
      add_decayed_weights(weight_decay, weight_decay_mask, "mfac"),
      scale_by_mfac(num_grads=num_grads, damping=damping, momentum=momentum, mu_dtype=mu_dtype),
      optax.scale_by_learning_rate(learning_rate),
    ),
    "mfac",
  )
