"""TrAct (Petersen et al.): train the first layer's pre-activations, not its weights."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from optim._validation import check_floating, check_scalar

_EXTRA = "first_layer_inputs"


def _inputs_matrix(inputs, fan_in: int, leaf_shape) -> jax.Array:
  """The first-layer inputs as a ``(b, fan_in)`` matrix (leading axes flattened)."""
  if inputs is None:
    raise TypeError(
      f"scale_by_tract needs the extra argument {_EXTRA}=x (the first layer's inputs, shape "
      "(batch, fan_in)): tx.update(grads, state, params, first_layer_inputs=x)"
    )
  x = jnp.asarray(inputs)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"scale_by_tract: {_EXTRA} must be floating point, got dtype {x.dtype}")
  if x.ndim < 2 or x.shape[-1] != fan_in:
    raise ValueError(
      f"scale_by_tract: {_EXTRA} of shape {x.shape} does not fit a kernel of shape "
      f"{leaf_shape}: expected (batch, {fan_in}) (the kernel's fan-in, prod(shape[:-1]), "
      "on the last axis; further leading axes are flattened into the batch)"
    )
  x = x.reshape(-1, fan_in)
  if x.shape[0] == 0:
    raise ValueError(f"scale_by_tract: {_EXTRA} has no rows (an empty batch)")
  return x


def tract_precondition(grad: jax.Array, inputs: jax.Array, lam) -> jax.Array:
  r"""``(X^T X / b + lam I)^{-1} G`` for one kernel ``G`` of layout ``(..., out)``."""
  fan_in = math.prod(grad.shape[:-1])
  x = _inputs_matrix(inputs, fan_in, grad.shape)
  ct = jnp.promote_types(jnp.promote_types(grad.dtype, x.dtype), jnp.float32)
  x = x.astype(ct)
  gram = x.T @ x / x.shape[0] + lam * jnp.eye(fan_in, dtype=ct)
  chol = jax.scipy.linalg.cho_factor(gram, lower=True)
  out = jax.scipy.linalg.cho_solve(chol, grad.reshape(fan_in, -1).astype(ct))
  return out.reshape(grad.shape).astype(grad.dtype)


def scale_by_tract(lam: float = 0.1) -> optax.GradientTransformationExtraArgs:
  r"""TrAct: the closed-form first-layer update that trains pre-activations (Petersen et al.).

  For a first layer :math:`z = W^\top x` (kernel :math:`W` of layout ``(fan_in, out)``, as
  flax's ``Dense``) and a batch :math:`X \in \mathbb{R}^{b \times n}` of its inputs, TrAct
  takes a gradient step on the pre-activations, :math:`z^\star = z - \eta\, b\,
  \nabla_z \mathcal{L}`, and returns the weights that fit them best in least squares,
  regularized towards the current ones:

  .. math::
    W^\star = \arg\min_{W'} \tfrac{1}{b}\|X W' - Z^\star\|_F^2 + \lambda\|W' - W\|_F^2
            = W - \eta\,\Big(\frac{X^\top X}{b} + \lambda I\Big)^{-1} \nabla_W \mathcal{L}.

  So the transformation maps the kernel's gradient :math:`G = \nabla_W \mathcal{L}` to
  :math:`(X^\top X / b + \lambda I)^{-1} G` and leaves 1-D leaves (the bias) unchanged;
  chain it before any optax optimizer (plain SGD gives the paper's update; the paper also
  runs it before Adam and SGD with momentum). The update no longer scales with the input
  contrast, which is the paper's point: with plain gradients, high-contrast images dominate
  the first layer's learning. Kernels of any rank ``(..., out)`` are flattened to
  ``(prod(shape[:-1]), out)``; a convolution's inputs are then its patches, flattened in
  the kernel's order (``jax.lax.conv_general_dilated_patches`` with a channels-last kernel
  layout, transposed to match).

  Cost: one :math:`n \times n` Cholesky solve per step (:math:`n` = fan-in, 64 for 8x8
  digits, 48 for 4x4 RGB patches), :math:`O(b n^2 + n^3)`. The system is positive definite
  for any :math:`\lambda > 0`, so no input batch (constant, zero, rank-deficient) can make
  it singular.

  Apply it to the first layer only, e.g. with ``optax.partition`` (the extra argument is
  forwarded to every group; the others ignore it); every kernel it sees must fit
  ``first_layer_inputs``.

  Non-finite gradients: propagate (a NaN gradient entry makes its output column NaN).
  Non-finite inputs make the whole update NaN.

  Args:
    lam: :math:`\lambda > 0`, the paper's only hyperparameter (default 0.1, the paper's and
      the official code's default). Large :math:`\lambda` recovers :math:`G/\lambda`, i.e.
      plain gradient descent with the learning rate divided by :math:`\lambda`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` takes the keyword extra
    argument ``first_layer_inputs`` (shape ``(batch, fan_in)``, further leading axes are
    flattened into the batch).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optim
    >>> params = {"first": {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)},
    ...           "head": {"kernel": jnp.zeros((2, 1))}}
    >>> first = optax.chain(optim.scale_by_tract(0.1), optax.sgd(0.1))
    >>> tx = optax.partition(
    ...   {"first": first, "rest": optax.adam(1e-3)},
    ...   {"first": {"kernel": "first", "bias": "first"}, "head": {"kernel": "rest"}})
    >>> x = jnp.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    >>> g = jax.tree.map(jnp.ones_like, params)
    >>> u, _ = tx.update(g, tx.init(params), params, first_layer_inputs=x)
    >>> u["first"]["kernel"].shape, [round(float(b), 4) for b in u["first"]["bias"]]
    ((3, 2), [-0.1, -0.1])

  References:
    Petersen, Borgelt, Ermon, "TrAct: Making First-layer Pre-Activations Trainable",
    NeurIPS 2024, arXiv:2410.23970 (Section 3).
  """
  check_scalar("lam", lam, lo=0.0, lo_open=True)

  def init_fn(params):
    check_floating(params, "params", "scale_by_tract")
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra):
    del params
    check_floating(updates, "updates", "scale_by_tract")
    inputs = extra.get(_EXTRA)
    out = jax.tree.map(
      lambda g: g if jnp.ndim(g) < 2 else tract_precondition(g, inputs, lam), updates
    )
    return out, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
