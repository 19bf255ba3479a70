"""Curvature matrix-vector products on pytrees: Hessian, Gauss-Newton and Fisher.

Every product here is matrix-free: the curvature matrix of a model with ``P``
parameters is never formed, only its action on a vector with the parameters' pytree
structure, at the cost of a small constant number of forward/backward passes.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from optim._tree import tree_vdot
from optim._validation import (
  as_key,
  check_choice,
  check_flag,
  check_floating,
  check_labels,
  check_like,
  check_objective,
  check_scalar,
  leaf_dtype,
  poison,
  renamed_kwargs,
)

PyTree = Any

__all__ = [
  "LinearOperator",
  "directional_sharpness",
  "fisher_matvec",
  "ggn_matvec",
  "hessian_matvec",
  "hvp",
  "sample_categorical",
  "softmax_nll",
  "value_grad_and_hvp",
]


def check_callable(fn: Any, name: str, where: str, signature: str) -> None:
  """Raises a ``TypeError`` naming ``name`` unless ``fn`` is callable."""
  if not callable(fn):
    raise TypeError(f"{where}: {name} must be callable ({signature}), got {type(fn).__name__}")


def _check_scalar_objective(
  f: Callable, params: PyTree, *args, name: str = "f", where: str = "hvp"
) -> None:
  """Raises a ``TypeError`` at trace time unless ``f(params, *args)`` is a real scalar."""
  signature = f"{name}(params, *args) -> scalar"
  check_callable(f, name, where, signature)
  check_objective(f, (params, *args), name, where, signature)


def cast_like(v: PyTree, like: PyTree, what: str = "v", what_like: str = "params") -> PyTree:
  """Checks that ``v`` matches ``like`` leaf for leaf and casts it to ``like``'s dtypes.

  Forward-mode differentiation needs tangents with the primal's dtype; casting here lets a
  user pass, e.g., a float32 probe for bfloat16 parameters. Integer leaves are cast too;
  bool, complex and non-array leaves are a ``TypeError`` (a cast would drop their meaning).
  """
  check_like(v, like, what, what_like)
  for path, x in jax.tree_util.tree_leaves_with_path(v):
    dtype = leaf_dtype(x, what + jax.tree_util.keystr(path), what)
    if jnp.issubdtype(dtype, jnp.bool_) or not jnp.issubdtype(dtype, jnp.number):
      raise TypeError(f"{what}{jax.tree_util.keystr(path)} must be a real array, got {dtype}")
    if jnp.issubdtype(dtype, jnp.complexfloating):
      raise TypeError(
        f"{what}{jax.tree_util.keystr(path)} must be real, got dtype {dtype} (the operators "
        "are real symmetric)"
      )
  return jax.tree.map(lambda x, p: jnp.asarray(x).astype(jnp.result_type(p)), v, like)


def hvp(f: Callable[..., jax.Array], params: PyTree, v: PyTree, *args: Any) -> PyTree:
  """Hessian-vector product ``H v`` of a scalar objective, by forward-over-reverse.

  .. math::
    H v = \\frac{\\partial}{\\partial \\epsilon} \\nabla f(\\theta + \\epsilon v)
    \\Big|_{\\epsilon = 0},

  computed as one ``jax.jvp`` of ``jax.grad(f)``: about the cost of two gradients, and
  no ``P x P`` matrix is formed (Pearlmutter, 1994).

  Non-finite entries of ``params`` or ``v`` propagate (NaN in, NaN out), as in any JAX
  derivative.

  Args:
    f: objective ``f(params, *args) -> scalar``.
    params: the point :math:`\\theta` (any pytree of float arrays).
    v: the direction, a pytree with the structure and shapes of ``params``; it is cast to
      the parameters' dtypes.
    *args: extra positional arguments of ``f`` (e.g. a batch); not differentiated.

  Returns:
    ``H v`` with the structure and dtypes of ``params``.

  Raises:
    ValueError: ``v`` and ``params`` differ in structure or leaf shapes, or ``params`` is
      empty.
    TypeError: ``f`` is not callable or does not return a real scalar; ``params`` has a
      non-floating leaf; ``v`` has a bool, complex or non-array leaf.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.curvature import hvp
    >>> f = lambda p: jnp.sum(p["w"] ** 3)
    >>> hvp(f, {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([1.0, 1.0])})["w"]
    Array([ 6., 12.], dtype=float32)

  References:
    Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 6(1), 1994.
  """
  check_floating(params, "params", "hvp", allow_empty=False)
  _check_scalar_objective(f, params, *args)
  v = cast_like(v, params)
  grad_f = lambda p: jax.grad(f)(p, *args)
  return jax.jvp(grad_f, (params,), (v,))[1]


def value_grad_and_hvp(
  f: Callable[..., jax.Array], params: PyTree, v: PyTree, *args: Any
) -> tuple[jax.Array, PyTree, PyTree]:
  r"""``(f(params), grad f(params), H v)`` from one ``jax.jvp`` of ``jax.value_and_grad(f)``.

  .. math::
    \big(f(\theta),\ \nabla f(\theta)\big) \text{ and }
    H v = \frac{\partial}{\partial \epsilon} \nabla f(\theta + \epsilon v)
    \Big|_{\epsilon = 0}.

  The primal outputs of the forward-over-reverse pass that :func:`hvp` runs are the loss
  and the gradient: a training step that needs all three (AdaHessian, a Sophia-H refresh
  step) pays one pass instead of a gradient plus an HVP. The values equal
  ``jax.value_and_grad(f)(params, *args)`` and ``hvp(f, params, v, *args)``.

  Args:
    f: objective ``f(params, *args) -> scalar``.
    params: the point :math:`\theta` (any pytree of float arrays).
    v: the direction, shaped like ``params`` (cast to its dtypes).
    *args: extra positional arguments of ``f`` (e.g. a batch); not differentiated.

  Returns:
    ``(value, grad, hv)``; ``grad`` and ``hv`` have the structure and dtypes of ``params``.

  Raises:
    ValueError, TypeError: as :func:`hvp`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.curvature import value_grad_and_hvp
    >>> f = lambda p: jnp.sum(p ** 3)
    >>> value, grad, hv = value_grad_and_hvp(f, jnp.array([1.0, 2.0]), jnp.ones(2))
    >>> float(value), grad.tolist(), hv.tolist()
    (9.0, [3.0, 12.0], [6.0, 12.0])

  References:
    Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 6(1), 1994.
  """
  check_floating(params, "params", "value_grad_and_hvp", allow_empty=False)
  _check_scalar_objective(f, params, *args, where="value_grad_and_hvp")
  v = cast_like(v, params)
  value_and_grad_f = lambda p: jax.value_and_grad(f)(p, *args)
  (value, grad), (_, hv) = jax.jvp(value_and_grad_f, (params,), (v,))
  return value, grad, hv


def directional_sharpness(
  f: Callable[..., jax.Array], params: PyTree, direction: PyTree, *args: Any
) -> jax.Array:
  """Curvature of ``f`` along a direction: the Rayleigh quotient of the Hessian.

  .. math::
    s(d) = \\frac{d^\\top H d}{d^\\top d}, \\qquad H = \\nabla^2 f(\\theta).

  A zero direction has no defined quotient; this function returns ``0`` for it (the
  numerator is exactly zero as well), never NaN. The quotient is scale invariant, so the
  direction is first divided by its largest entry: a tiny (``1e-30``) or huge (``1e30``)
  direction gives the same sharpness instead of ``0`` by underflow or NaN by overflow of
  :math:`d^\\top d`. The result is accumulated in at least float32; a non-finite
  direction gives NaN (propagated).

  Args:
    f: objective ``f(params, *args) -> scalar``.
    params: the point :math:`\\theta`.
    direction: :math:`d`, with the structure and shapes of ``params`` (e.g. the
      gradient, or an optimizer's update).
    *args: extra positional arguments of ``f``.

  Returns:
    A scalar array: :math:`d^\\top H d / \\|d\\|^2` (``0`` when ``d = 0``).

  Raises:
    ValueError: ``direction`` and ``params`` differ in structure or leaf shapes.
    TypeError: ``f`` is not callable or does not return a real scalar; ``params`` has a
      non-floating leaf; ``direction`` has a bool, complex or non-array leaf.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.curvature import directional_sharpness
    >>> f = lambda p: 0.5 * (3.0 * p[0] ** 2 + p[1] ** 2)
    >>> directional_sharpness(f, jnp.zeros(2), jnp.array([1.0, 0.0]))
    Array(3., dtype=float32)

  References:
    Cohen et al., "Gradient Descent on Neural Networks Typically Occurs at the Edge of
    Stability", arXiv:2103.00065 (sharpness along the update direction).
  """
  check_floating(params, "params", "directional_sharpness", allow_empty=False)
  direction = cast_like(direction, params, "direction")
  wide = lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32))
  leaves = jax.tree.leaves(direction)
  scale = jnp.max(jnp.stack([jnp.max(jnp.abs(wide(x)), initial=0.0) for x in leaves]))
  safe = jnp.where(scale > 0, scale, 1)
  direction = jax.tree.map(lambda x: (wide(x) / safe).astype(x.dtype), direction)
  hd = hvp(f, params, direction, *args)
  num = tree_vdot(direction, hd)
  den = tree_vdot(direction, direction)  # >= 1 after the scaling, unless d = 0 (or non-finite)
  zero = scale == 0
  return jnp.where(zero, jnp.zeros_like(num), num / jnp.where(zero, 1, den))


@dataclasses.dataclass(frozen=True, eq=False)
class LinearOperator:
  """A symmetric linear operator on pytrees, given by its matrix-vector product.

  ``op(v)`` returns ``M v`` with the structure of ``like``. The operator is a plain Python
  object (not a pytree): build it inside the function you ``jax.jit``, from the traced
  parameters, and hand it to any estimator.

  The arguments are checked when the operator is built (``matvec`` callable, ``like`` a
  non-empty pytree of floating-point shapes; arrays are replaced by their
  ``jax.ShapeDtypeStruct``) and every product at trace time: ``v`` must match ``like`` (it
  is cast to its dtypes) and ``matvec(v)`` must return real arrays with the structure and
  shapes of ``like``, so a wrong operator is an error naming ``matvec``, not a broadcast.

  Attributes:
    matvec: ``v -> M v`` on pytrees shaped like ``like``.
    like: a pytree of ``jax.ShapeDtypeStruct`` giving the structure, shapes and dtypes of
      the vectors the operator acts on (random probes are drawn with it).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.curvature import LinearOperator
    >>> op = LinearOperator(lambda v: 2.0 * v, jax.ShapeDtypeStruct((3,), jnp.float32))
    >>> op(jnp.ones(3)), op.dim
    (Array([2., 2., 2.], dtype=float32), 3)

  References:
    Golub & Van Loan, "Matrix Computations", 4th ed., Ch. 10 (matrix-free methods need
    only the product).
  """

  matvec: Callable[[PyTree], PyTree]
  like: PyTree

  def __post_init__(self):
    check_callable(self.matvec, "matvec", "LinearOperator", "v -> M v on pytrees shaped like like")
    check_floating(self.like, "like", "LinearOperator", allow_empty=False)
    object.__setattr__(self, "like", shape_dtype_tree(self.like))

  def __call__(self, v: PyTree) -> PyTree:
    out = self.matvec(cast_like(v, self.like, "v", "the operator's domain"))
    if jax.tree.structure(out) != jax.tree.structure(self.like):
      raise ValueError(
        "LinearOperator: matvec(v) must return a pytree with the structure of like; got\n"
        f"  matvec(v): {jax.tree.structure(out)}\n  like: {jax.tree.structure(self.like)}"
      )
    for (path, o), x in zip(jax.tree_util.tree_leaves_with_path(out), jax.tree.leaves(self.like)):
      at = "matvec(v)" + jax.tree_util.keystr(path)
      dtype = leaf_dtype(o, at, "LinearOperator")
      if jnp.shape(o) != x.shape:
        raise ValueError(
          f"LinearOperator: {at} has shape {jnp.shape(o)} but like has {x.shape} there "
          "(matvec must map the domain to itself)"
        )
      if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"LinearOperator: {at} has dtype {dtype}; it must be real floating")
    return out

  @property
  def dim(self) -> int:
    """The number of scalar entries of a vector in the domain."""
    return sum(int(x.size) for x in jax.tree.leaves(self.like))

  @property
  def dtype(self):
    """The widest floating dtype among the domain's leaves (float32 at least)."""
    return jnp.result_type(jnp.float32, *[x.dtype for x in jax.tree.leaves(self.like)])


def check_operator(op: Any, name: str) -> None:
  """Raises a ``TypeError`` unless ``op`` is a :class:`LinearOperator` (the estimators' input)."""
  if not isinstance(op, LinearOperator):
    raise TypeError(
      f"{name} expects a LinearOperator (from hessian_matvec, ggn_matvec, fisher_matvec or "
      f"LinearOperator(matvec, like)), got {type(op).__name__}"
    )


def check_at_most_dim(name: str, value: int, op: LinearOperator) -> None:
  """Raises unless ``value`` (a count of orthonormal vectors) is at most the operator's dimension.

  An orthonormal set or a Krylov basis cannot have more vectors than the dimension, so ``k``
  or ``num_iterations`` beyond it is an error rather than padding with spurious values.
  """
  if value > op.dim:
    raise ValueError(
      f"{name}={value} exceeds the dimension of the operator ({op.dim}): at most {op.dim} "
      "orthonormal vectors exist"
    )


def shape_dtype_tree(tree: PyTree) -> PyTree:
  """``jax.ShapeDtypeStruct`` for every leaf of ``tree`` (arrays or shape structs)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def _average_over_batches(
  product: Callable[[PyTree, jax.Array], PyTree], batches: PyTree, like: PyTree, stacked: bool
) -> PyTree:
  """``product(batch, index)`` for one batch, or its mean over a stack of batches.

  With ``stacked=True`` every leaf of ``batches`` carries a leading batch-of-batches axis
  ``B``; the mean is accumulated in a ``lax.scan`` (one batch in memory at a time) in at
  least float32 and cast back to ``like``'s dtypes.
  """
  if not stacked:
    return product(batches, jnp.zeros((), jnp.int32))
  num_batches = jax.tree.leaves(batches)[0].shape[0]  # validated by _first_batch
  acc_dtype = lambda x: jnp.promote_types(jnp.result_type(x), jnp.float32)

  def body(acc, xs):
    batch, index = xs
    out = product(batch, index)
    return otu.tree_add(acc, otu.tree_cast_like(out, acc)), None

  acc0 = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), acc_dtype(x)), like)
  total, _ = jax.lax.scan(body, acc0, (batches, jnp.arange(num_batches, dtype=jnp.int32)))
  return jax.tree.map(lambda t, x: (t / num_batches).astype(jnp.result_type(x)), total, like)


def _num_stacked(batches: PyTree, where: str) -> int:
  """The common leading (batch-of-batches) axis size of ``batches``; raises if there is none."""
  leaves = jax.tree.leaves(batches)
  if not leaves:
    raise ValueError(f"{where}: stacked=True needs at least one array in the batch")
  sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
      f"{where}: stacked=True needs every batch leaf to have the same leading "
      f"(batch-of-batches) axis; got leading sizes {sorted(map(str, sizes))}"
    )
  (num_batches,) = sizes
  if num_batches == 0:
    raise ValueError(f"{where}: stacked=True needs at least one batch along the leading axis")
  return num_batches


def _first_batch(batches: PyTree, stacked: bool, where: str) -> PyTree:
  """The first of a stack of batches (validating ``stacked`` and the stack), or ``batches``."""
  if not check_flag(f"{where}: stacked", stacked):
    return batches
  _num_stacked(batches, where)
  return jax.tree.map(lambda x: x[0], batches)


def hessian_matvec(
  f: Callable[..., jax.Array], params: PyTree, *args: Any, stacked: bool = False
) -> LinearOperator:
  """The Hessian of a scalar objective as a linear operator (forward-over-reverse HVPs).

  .. math::
    v \\mapsto \\frac{1}{B} \\sum_{b=1}^{B} \\nabla^2_\\theta f(\\theta, a_b)\\, v

  with :math:`B = 1` unless ``stacked``. Each product is one :func:`hvp`.

  Args:
    f: objective ``f(params, *args) -> scalar``.
    params: the point :math:`\\theta`.
    *args: extra positional arguments of ``f`` (e.g. a batch).
    stacked: if ``True``, every leaf of ``args`` has a leading axis of ``B`` batches and
      the operator is the mean of the per-batch Hessians, computed with ``lax.scan`` so
      that curvature can be estimated on more data than fits in one call.

  Returns:
    A :class:`LinearOperator` on pytrees shaped like ``params``.

  Raises:
    TypeError: ``f`` is not callable or does not return a real scalar (checked on one
      batch), a non-floating leaf of ``params``, or a non-bool ``stacked``.
    ValueError: ``stacked`` batches without a common leading axis, or empty ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.curvature import hessian_matvec
    >>> f = lambda w, x: 0.5 * jnp.mean((x @ w) ** 2)
    >>> xs = jnp.ones((4, 8, 2))  # 4 stacked batches of 8 examples
    >>> op = hessian_matvec(f, jnp.zeros(2), xs, stacked=True)
    >>> op(jnp.array([1.0, 0.0]))
    Array([1., 1.], dtype=float32)

  References:
    Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 6(1), 1994.
  """
  check_floating(params, "params", "hessian_matvec", allow_empty=False)
  one = _first_batch(args, stacked, "hessian_matvec")
  _check_scalar_objective(f, params, *one, where="hessian_matvec")

  def matvec(v):
    return _average_over_batches(lambda a, _: hvp(f, params, v, *a), args, params, stacked)

  return LinearOperator(matvec, shape_dtype_tree(params))


def _split_batch(batch: Any, name: str) -> tuple[Any, Any]:
  if not (isinstance(batch, tuple | list) and len(batch) == 2):
    raise TypeError(f"{name} expects batch=(inputs, targets), got {type(batch).__name__}")
  return batch[0], batch[1]


def ggn_matvec(
  model_fn: Callable[[PyTree, Any], PyTree],
  loss_fn: Callable[[PyTree, Any], jax.Array],
  params: PyTree,
  batch: tuple[Any, Any],
  *,
  stacked: bool = False,
) -> LinearOperator:
  """The generalized Gauss-Newton matrix :math:`J^\\top H_L J` as a linear operator.

  With outputs :math:`z = m(\\theta, x)` and loss :math:`L(z, y)`,

  .. math::
    G v = J^\\top \\big(\\nabla_z^2 L(z, y)\\big) J v, \\qquad
    J = \\partial z / \\partial \\theta,

  computed with one linearization of the model (``jax.linearize``), its transpose, and a
  Hessian-vector product of the loss in output space. :math:`G` is positive semi-definite
  whenever :math:`L` is convex in :math:`z`, and equals the Hessian when the model is
  linear in :math:`\\theta`.

  Args:
    model_fn: ``model_fn(params, inputs) -> outputs`` (a pytree, e.g. logits).
    loss_fn: ``loss_fn(outputs, targets) -> scalar``; usually the mean over the batch.
    params: the point :math:`\\theta`.
    batch: ``(inputs, targets)``.
    stacked: if ``True``, ``inputs`` and ``targets`` carry a leading axis of batches and
      the operator is the mean of the per-batch GGNs (``lax.scan``).

  Returns:
    A :class:`LinearOperator` on pytrees shaped like ``params``.

  Raises:
    TypeError: ``batch`` is not a pair, ``model_fn``/``loss_fn`` is not callable,
      ``loss_fn`` does not return a real scalar, a non-floating leaf of ``params``, or a
      non-bool ``stacked``.
    ValueError: ``stacked`` batches without a common leading axis, or empty ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.curvature import ggn_matvec
    >>> model = lambda w, x: x @ w
    >>> loss = lambda z, y: 0.5 * jnp.mean((z - y) ** 2)
    >>> x, y = jnp.array([[1.0, 0.0], [1.0, 1.0]]), jnp.zeros(2)
    >>> ggn_matvec(model, loss, jnp.zeros(2), (x, y))(jnp.array([0.0, 2.0]))
    Array([1., 1.], dtype=float32)

  References:
    Schraudolph, "Fast curvature matrix-vector products for second-order gradient
    descent", Neural Computation 14(7), 2002. Martens, "New insights and perspectives on
    the natural gradient method", arXiv:1412.1193 (Sec. 8).
  """
  check_callable(model_fn, "model_fn", "ggn_matvec", "model_fn(params, inputs) -> outputs")
  check_floating(params, "params", "ggn_matvec", allow_empty=False)
  inputs, targets = _split_batch(batch, "ggn_matvec")
  one = _first_batch((inputs, targets), stacked, "ggn_matvec")
  out_shape = jax.eval_shape(model_fn, params, one[0])
  _check_scalar_objective(loss_fn, out_shape, one[1], name="loss_fn", where="ggn_matvec")

  def product(b, v):
    x, y = b
    outputs, model_jvp = jax.linearize(lambda p: model_fn(p, x), params)
    model_vjp = jax.linear_transpose(model_jvp, params)
    jv = model_jvp(v)
    hjv = jax.jvp(jax.grad(lambda z: loss_fn(z, y)), (outputs,), (jv,))[1]
    return model_vjp(hjv)[0]

  def matvec(v):
    return _average_over_batches(lambda b, _: product(b, v), (inputs, targets), params, stacked)

  return LinearOperator(matvec, shape_dtype_tree(params))


def softmax_nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example negative log-likelihood of integer ``labels`` under ``softmax(logits)``.

  .. math::
    \\ell(z, y) = -\\log \\mathrm{softmax}(z)_y = \\log \\sum_c e^{z_c} - z_y,

  over the last axis, not reduced over the batch: a wrapper of
  ``optax.losses.softmax_cross_entropy_with_integer_labels`` that applies the label
  policy; it is the default ``nll_fn`` of :func:`fisher_matvec`.

  **Labels.** Integers in ``[0, C)``. Concrete labels are checked: a float or bool array
  is a ``TypeError``, a label out of range (``-1`` included) a ``ValueError`` naming
  ``labels``, the range and the first offending value. Traced labels (under ``jit``)
  cannot raise: the loss of an example with an invalid label is NaN, and so is its
  gradient (explicit poisoning), never another class's loss.

  Args:
    logits: ``(..., C)`` unnormalized log-probabilities.
    labels: ``(...)`` integer class indices in ``[0, C)`` (shape of ``logits`` without the
      last axis).

  Returns:
    ``(...)`` the per-example losses (NaN where a traced label is invalid).

  Raises:
    TypeError: ``labels`` is not an integer array.
    ValueError: a concrete label outside ``[0, C)``, or ``labels`` of the wrong shape.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.curvature import softmax_nll
    >>> softmax_nll(jnp.zeros((2, 4)), jnp.array([0, 3]))  # uniform: log 4
    Array([1.3862944, 1.3862944], dtype=float32)

  References:
    Bishop, "Pattern Recognition and Machine Learning", 2006, Sec. 4.3.4.
  """
  logits = jnp.asarray(logits)
  if logits.ndim == 0:
    raise ValueError("softmax_nll: logits must have a class axis (the last), got a scalar")
  valid = check_labels("labels", labels, logits.shape[-1])
  labels = jnp.asarray(labels)
  if labels.shape != logits.shape[:-1]:
    raise ValueError(
      f"softmax_nll: labels shape {labels.shape} must be logits.shape[:-1] = {logits.shape[:-1]}"
    )
  safe = jnp.where(valid, labels, 0).astype(jnp.int32)
  return poison(optax.losses.softmax_cross_entropy_with_integer_labels(logits, safe), valid)


def _positional_key_deprecated(fn: Callable) -> Callable:
  """Accepts the old ``fn(key, x)`` call for one release, with a ``DeprecationWarning``."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    if len(args) == 2 and "key" not in kwargs:
      warnings.warn(
        f"{fn.__name__}(key, x) with a positional key is deprecated; call "
        f"{fn.__name__}(x, key=key) (the old form will be removed in the next release)",
        DeprecationWarning,
        stacklevel=2,
      )
      key, x = args
      return fn(x, key=key, **kwargs)
    return fn(*args, **kwargs)

  return wrapper


@_positional_key_deprecated
def sample_categorical(logits: jax.Array, *, key: Any) -> jax.Array:
  """Labels drawn from ``softmax(logits)`` (the model's predictive distribution).

  .. math::
    \\hat y \\sim \\mathrm{Categorical}\\big(\\mathrm{softmax}(z)\\big)

  independently for every row of ``logits`` (Gumbel-max, ``jax.random.categorical``); the
  default ``sample_fn`` of :func:`fisher_matvec` with ``variant="true"``.

  Args:
    logits: ``(..., C)`` unnormalized log-probabilities.
    key: a PRNG key (typed, raw ``uint32`` or an int seed).

  Returns:
    ``(...)`` int32 labels in ``[0, C)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.curvature import sample_categorical
    >>> logits = jnp.array([[0.0, -jnp.inf], [-jnp.inf, 0.0]])
    >>> sample_categorical(logits, key=0)
    Array([0, 1], dtype=int32)

  References:
    Martens, "New insights and perspectives on the natural gradient method",
    arXiv:1412.1193, Sec. 9.2 (sampled labels for the true Fisher).
  """
  return jax.random.categorical(as_key(key), logits, axis=-1)


@renamed_kwargs(kind="variant")
def fisher_matvec(
  model_fn: Callable[[PyTree, Any], PyTree],
  params: PyTree,
  batch: tuple[Any, Any],
  *,
  variant: str = "empirical",
  nll_fn: Callable[[PyTree, Any], jax.Array] = softmax_nll,
  sample_fn: Callable[..., Any] = sample_categorical,
  key: Any = None,
  num_samples: int = 1,
  stacked: bool = False,
) -> LinearOperator:
  """The Fisher information (empirical, or true with sampled labels) as a linear operator.

  With per-example gradients :math:`g_n(y) = \\nabla_\\theta \\ell(m(\\theta, x_n), y)` of the
  negative log-likelihood :math:`\\ell`,

  .. math::
    F_{\\mathrm{emp}} v = \\frac{1}{N} \\sum_{n} g_n(y_n) \\, g_n(y_n)^\\top v, \\qquad
    F v = \\frac{1}{N S} \\sum_{n} \\sum_{s=1}^{S} g_n(\\hat y_{ns}) \\, g_n(\\hat y_{ns})^\\top v,
    \\quad \\hat y_{ns} \\sim p(y \\mid x_n, \\theta).

  The per-example gradients are never materialized: with :math:`J_\\ell` the ``N x P``
  Jacobian of the vector of per-example losses, :math:`F v = J_\\ell^\\top J_\\ell v / N`
  (one linearization of the model, a JVP and its transpose). The sampled labels are a
  deterministic function of ``key`` (and of the batch index when ``stacked``), so the
  operator is a fixed symmetric PSD matrix, as Lanczos requires. In expectation over the
  labels, the true Fisher of a softmax cross-entropy model equals its GGN
  (:func:`ggn_matvec` with the mean loss); the empirical Fisher does not (Kunstner et al.).

  **Labels.** With the default ``nll_fn`` and ``variant="empirical"``, concrete
  ``targets`` are checked when the operator is built (integers in ``[0, C)``; an error
  names ``targets``, the range and the first offending value). Traced targets cannot be
  checked: an invalid one makes its example's loss NaN (:func:`softmax_nll`), and with
  it every product of the operator (explicit poisoning, never a silently dropped label).

  Args:
    model_fn: ``model_fn(params, inputs) -> outputs``.
    params: the point :math:`\\theta`.
    batch: ``(inputs, targets)``; ``targets`` is used by ``variant="empirical"`` only.
    variant: ``"empirical"`` (observed labels) or ``"true"`` (labels sampled from the
      model). Formerly ``kind`` (deprecated spelling, still accepted).
    nll_fn: ``nll_fn(outputs, targets) -> (N,)`` per-example negative log-likelihoods;
      softmax cross-entropy on integer labels (:func:`softmax_nll`) by default.
    sample_fn: ``sample_fn(outputs, *, key) -> targets`` drawn from the model's predictive
      distribution (``variant="true"``); :func:`sample_categorical` by default.
    key: PRNG key for the sampled labels (required for ``variant="true"``): a typed key,
      a raw ``uint32`` key or an int seed.
    num_samples: label samples :math:`S` per example (``variant="true"``; a positive
      integer).
    stacked: if ``True``, ``inputs``/``targets`` carry a leading axis of batches and the
      operator is the mean over batches (``lax.scan``).

  Returns:
    A :class:`LinearOperator` on pytrees shaped like ``params``.

  Raises:
    ValueError: unknown ``variant``, missing ``key``, ``num_samples < 1``, ``nll_fn``
      not returning one value per example, an empty batch, or a concrete label out of
      range.
    TypeError: ``sample_fn`` does not accept ``(outputs, *, key)``; a function argument
      that is not callable; non-integer labels; a non-floating leaf of ``params``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.curvature import fisher_matvec
    >>> model = lambda w, x: x @ w
    >>> x, y = jnp.ones((8, 2)), jnp.zeros(8, jnp.int32)
    >>> op = fisher_matvec(model, jnp.zeros((2, 3)), (x, y), variant="true",
    ...                    key=jax.random.key(0), num_samples=4)
    >>> op(jnp.ones((2, 3))).shape
    (2, 3)

  References:
    Martens, "New insights and perspectives on the natural gradient method",
    arXiv:1412.1193. Kunstner, Balles & Hennig, "Limitations of the empirical Fisher
    approximation for natural gradient descent", arXiv:1905.12558.
  """
  check_choice("variant", variant, ("empirical", "true"))
  num_samples = check_scalar("num_samples", num_samples, lo=1, integer=True, static=True)
  if variant == "true" and key is None:
    raise ValueError("fisher_matvec(variant='true') needs a PRNG key= for the sampled labels")
  if key is not None:
    key = as_key(key)
  check_callable(model_fn, "model_fn", "fisher_matvec", "model_fn(params, inputs) -> outputs")
  check_callable(nll_fn, "nll_fn", "fisher_matvec", "nll_fn(outputs, targets) -> (N,)")
  check_callable(sample_fn, "sample_fn", "fisher_matvec", "sample_fn(outputs, *, key)")
  check_floating(params, "params", "fisher_matvec", allow_empty=False)
  inputs, targets = _split_batch(batch, "fisher_matvec")
  one = _first_batch((inputs, targets), stacked, "fisher_matvec")
  out_shape = jax.eval_shape(model_fn, params, one[0])
  if variant == "empirical" and nll_fn is softmax_nll:
    # The whole (possibly stacked) label array, now: inside the products it is traced and
    # an invalid label could only poison the result.
    num_classes = out_shape.shape[-1] if getattr(out_shape, "ndim", 0) else 0
    check_labels("fisher_matvec: targets (batch[1])", targets, num_classes)
  if variant == "true":
    try:
      one_t = jax.eval_shape(lambda z: sample_fn(z, key=key), out_shape)
    except TypeError as e:
      raise TypeError(
        "sample_fn is called as sample_fn(outputs, *, key) -> targets (the key is "
        f"keyword-only, like sample_categorical); calling it failed with: {e}"
      ) from e
  else:
    one_t = one[1]
  nll_shape = jax.eval_shape(nll_fn, out_shape, one_t)
  if not isinstance(nll_shape, jax.ShapeDtypeStruct) or len(nll_shape.shape) != 1:
    raise ValueError(
      "fisher_matvec: nll_fn must return a 1-D vector of per-example negative "
      f"log-likelihoods, got {getattr(nll_shape, 'shape', nll_shape)}"
    )
  if nll_shape.shape[0] == 0:
    raise ValueError("fisher_matvec: batch has no examples (the Fisher is a mean over them)")

  def product(b, index, v):
    x, y = b
    outputs, model_jvp = jax.linearize(lambda p: model_fn(p, x), params)
    model_vjp = jax.linear_transpose(model_jvp, params)
    jv = model_jvp(v)
    if variant == "true":
      keys = jax.random.split(jax.random.fold_in(key, index), num_samples)
      logits = jax.lax.stop_gradient(outputs)
      ys = jax.vmap(lambda k: sample_fn(logits, key=k))(keys)
    else:
      ys = jax.tree.map(lambda t: t[None], y)

    def output_cotangent(y_s):
      nll = lambda z: nll_fn(z, y_s)
      per_example, vjp = jax.vjp(nll, outputs)
      jl_v = jax.jvp(nll, (outputs,), (jv,))[1]  # (N,) = J_l v
      return vjp(jl_v / (per_example.shape[0] * ys_count))[0]

    ys_count = jax.tree.leaves(ys)[0].shape[0]
    cot = jax.vmap(output_cotangent)(ys)
    cot = jax.tree.map(lambda c: jnp.sum(c, axis=0), cot)
    return model_vjp(cot)[0]

  def matvec(v):
    return _average_over_batches(lambda b, i: product(b, i, v), (inputs, targets), params, stacked)

  return LinearOperator(matvec, shape_dtype_tree(params))
