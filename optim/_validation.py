"""The one validation module of ``optim`` (``jaxdiff._validation`` builds on it).

Every public factory checks its arguments here, so a user sees one style of message that
names the argument at fault:

- :func:`check_scalar` for numeric hyperparameters (type, NaN, infinity, interval, integer,
  static-ness). It returns the Python value when the argument is concrete and ``None``
  when it is traced (under ``optax.inject_hyperparams`` or ``jit``), where no check is
  possible; callers document that case.
- :func:`check_choice` for string options.
- :func:`as_key` for PRNG keys: the one key policy of both packages accepts a typed key
  (``jax.random.key``), a raw ``uint32`` key (``jax.random.PRNGKey``) or an int seed.
- :func:`renamed_kwargs` and :func:`warn_default` keep old keyword spellings and old
  defaults working for one release with a ``DeprecationWarning``; :func:`renamed_field`
  does the same for a result's renamed field and :func:`moved_names` for a moved name.
- :func:`check_flag` for ``bool`` options.
- :func:`check_labels` / :func:`poison`: the one label policy (concrete labels out of
  range raise; traced ones poison the outputs that depend on them with NaN).
- :func:`require_fn` / :func:`require_params` for the extra arguments of ``update``.
- :func:`check_output`: the one check of what a user's callable returns (a denoiser,
  model, classifier, operator, fitness or objective), at trace time: one array shaped
  (and typed) like a reference, or a real scalar; :func:`check_batch` for per-example
  arguments against their batch (labels against data).
- :func:`guard` for the ``init``/``update`` arguments of every optimizer.
- :func:`import_extra` for the optional dependencies of the ``demo`` extra (matplotlib,
  tqdm, scikit-learn): imported where they are used, never when a package is imported.
"""

from __future__ import annotations

import functools
import importlib
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Sentinel for "argument not given" where ``None`` is a meaningful value.
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()


def is_traced(x) -> bool:
  """True when ``x`` is (or contains) a JAX tracer, i.e. its value is unknown now."""
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def as_key(key: Any, *, name: str = "key") -> jax.Array:
  """A typed PRNG key from an int seed, a raw ``uint32`` key or a typed key.

  This is the key policy of both packages: every public ``key=`` argument goes through it.
  """
  if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  if isinstance(key, bool):
    raise TypeError(f"{name} must be an int seed or a JAX PRNG key, got a bool")
  if isinstance(key, (int, np.integer)) or (
    isinstance(key, (jax.Array, np.ndarray)) and jnp.shape(key) == () and _is_int(key)
  ):
    if not isinstance(key, jax.core.Tracer) and not -(2**31) <= int(key) < 2**32:
      # Without x64, jax keeps 32 bits of the seed: 2**32 would silently equal seed 0.
      raise ValueError(f"{name}: an int seed must lie in [-2**31, 2**32), got {int(key)}")
    return jax.random.key(key)
  if isinstance(key, (jax.Array, np.ndarray)) and jnp.asarray(key).dtype == jnp.uint32:
    if jnp.shape(key)[-1:] != (2,) and jnp.shape(key)[-1:] != (4,):
      raise ValueError(
        f"{name}: a raw uint32 key must have a trailing dimension of 2 (threefry) or 4 (rbg), "
        f"got shape {jnp.shape(key)}"
      )
    return jax.random.wrap_key_data(jnp.asarray(key))
  raise TypeError(
    f"{name} must be an int seed or a JAX PRNG key (jax.random.key(...)), got {type(key).__name__}"
  )


def _is_int(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.integer)


def concrete(x) -> float | None:
  """The Python value of a scalar hyperparameter when it is known now, else ``None``."""
  if isinstance(x, bool):
    return float(x)
  if isinstance(x, (int, float, np.integer, np.floating)):
    return float(x)
  if isinstance(x, (np.ndarray, jax.Array)) and jnp.shape(x) == ():
    if isinstance(x, jax.core.Tracer):
      return None
    try:
      return float(x)
    except (jax.errors.ConcretizationTypeError, TypeError):
      return None
  return None


def _interval(lo, hi, lo_open, hi_open) -> str:
  return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def check_scalar(
  name: str,
  value: Any,
  *,
  lo: float = -math.inf,
  hi: float = math.inf,
  lo_open: bool = False,
  hi_open: bool = False,
  integer: bool = False,
  allow_inf: bool = False,
  static: bool = False,
) -> Any:
  """Validates a numeric scalar hyperparameter; returns its Python value or ``None``.

  Args:
    name: the argument's name, used in the message.
    value: a Python number, a 0-d array, or a tracer.
    lo, hi, lo_open, hi_open: the admissible interval (closed by default).
    integer: the value must be integral (``3`` or ``3.0``, not ``2.7``); returns an ``int``.
    allow_inf: ``±inf`` is a meaningful value (for example "no clipping"); otherwise the
      value must be finite.
    static: the value sets a shape or a trip count, so it cannot be traced; a tracer raises
      a ``TypeError`` that says so instead of JAX's concretization error.

  Returns:
    The concrete Python value (``float`` or ``int``), or ``None`` when ``value`` is traced
    and ``static`` is false. Traced values are not checked: the factory documents it.

  Raises:
    TypeError: ``value`` is not a real scalar (``None``, a bool, a string, a complex or an
      array with more than one element), or is traced while ``static`` is set.
    ValueError: NaN, an infinity where not allowed, a fractional value where an integer is
      needed, or a value outside the interval.
  """
  if isinstance(value, jax.core.Tracer):
    if static:
      raise TypeError(
        f"{name} must be a concrete Python number: it fixes a shape or a loop length, so it "
        "cannot be traced (with optax.inject_hyperparams, list it in static_args)."
      )
    return None
  if isinstance(value, (bool, np.bool_)) or getattr(value, "dtype", None) == np.bool_:
    raise TypeError(f"{name} must be a real number, got a bool ({value!r})")
  if isinstance(value, (np.ndarray, jax.Array)):
    if jnp.size(value) != 1 or jnp.ndim(value) > 1:
      raise TypeError(f"{name} must be a scalar, got an array of shape {jnp.shape(value)}")
    if jnp.issubdtype(jnp.result_type(value), jnp.complexfloating):
      raise TypeError(f"{name} must be real, got dtype {jnp.result_type(value)}")
    value = np.asarray(value).reshape(()).item()
  if isinstance(value, complex) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
  v = float(value)
  if math.isnan(v):
    raise ValueError(f"{name} must be a number, got NaN")
  if math.isinf(v) and not allow_inf:
    raise ValueError(f"{name} must be finite, got {v}")
  if integer and not (math.isinf(v) or v == math.floor(v)):
    raise ValueError(f"{name} must be an integer, got {value!r}")
  ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
  if not ok:
    # An infinite end that is not admissible prints as open: "(0, inf)", not "(0, inf]".
    lo_open = lo_open or (math.isinf(lo) and not allow_inf)
    hi_open = hi_open or (math.isinf(hi) and not allow_inf)
    raise ValueError(f"{name} must lie in {_interval(lo, hi, lo_open, hi_open)}, got {value!r}")
  if integer and not math.isinf(v):
    return int(v)
  return v


def check_learning_rate(learning_rate: Any) -> None:
  """A learning rate is a schedule (callable, not checked) or a finite scalar ``>= 0``."""
  if not callable(learning_rate):
    check_scalar("learning_rate", learning_rate, lo=0.0)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
  """Validates a string option against its admissible values."""
  choices = tuple(choices)
  if value not in choices:
    raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
  return value


def check_flag(name: str, value) -> bool:
  """A ``bool`` option (NumPy bools too); anything else is a ``TypeError`` naming it."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
  return bool(value)


# ---------------------------------------------------------------------------------------
# Class labels: the one label policy of both packages.


def check_labels(name: str, labels, num_classes: int, *, allow_null: bool = False) -> jax.Array:
  """Validates integer class labels; returns their validity mask (the one label policy).

  Class labels are integers in ``[0, num_classes)``; with ``allow_null`` the null label
  ``-1`` ("unconditional") is accepted too. Concrete labels are checked now: a float,
  bool or complex array raises a ``TypeError`` and a label out of range a ``ValueError``,
  both naming ``name``, the admissible range and (for the range) the first offending
  value. Traced labels (under ``jit``) and labels sharded over several processes cannot
  raise: the caller uses the returned boolean mask (shape of ``labels``; ``True`` where
  the label is valid, null included) to poison with NaN every output that depends on an
  invalid label, never to fall back silently to another class.

  Example:
    >>> import jax.numpy as jnp
    >>> check_labels("cond", jnp.array([0, 2, -1]), 3, allow_null=True).tolist()
    [True, True, True]
    >>> check_labels("cond", jnp.array([0, 3]), 3)
    Traceback (most recent call last):
    ...
    ValueError: cond: class labels must lie in [0, 3) (num_classes=3); got 3 at index (1,)
  """
  if labels is None or isinstance(labels, str):
    raise TypeError(f"{name} must be an integer array of class labels, got {labels!r}")
  if not isinstance(labels, (jax.Array, np.ndarray, np.generic)):
    try:  # a Python int or a (nested) list of them
      labels = np.asarray(labels)
    except (TypeError, ValueError) as err:
      raise TypeError(
        f"{name} must be an integer array of class labels, got {type(labels).__name__}"
      ) from err
  dtype = labels.dtype
  if jnp.issubdtype(dtype, jnp.bool_) or not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(f"{name} must hold integer class labels, got dtype {dtype}")
  lo = -1 if allow_null else 0
  # An array spread over several processes cannot be read on one host: like a traced one,
  # it is checked inside the computation (multi-host sampling, ``jax.distributed``).
  traced = is_traced(labels)
  if traced or (isinstance(labels, jax.Array) and not labels.is_fully_addressable):
    labels = jnp.asarray(labels)
    return (labels >= lo) & (labels < num_classes)
  arr = np.asarray(labels)
  bad = (arr < lo) | (arr >= num_classes)
  if np.any(bad):
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    allowed = f"[0, {num_classes})" + (" or the null label -1" if allow_null else "")
    raise ValueError(
      f"{name}: class labels must lie in {allowed} (num_classes={num_classes}); "
      f"got {arr[where].item()} at index {where}"
    )
  return jnp.ones(arr.shape, bool)


def poison(out: jax.Array, valid: jax.Array) -> jax.Array:
  """``out`` with NaN in the rows (leading axis) where ``valid`` is false, value and gradient.

  A product with ``where(valid, 1, nan)`` rather than a ``where`` on ``out``: the gradient
  of a ``where`` is zero on the unselected side, which would hide an invalid label. Plus
  ``where(valid, -0.0, nan)``: under ``jit`` XLA folds a product of a select of constants
  (``one_hot(labels) * c``) into a select that keeps the zeros, so the product alone can
  lose the NaN; the sum cannot, and adding ``-0.0`` leaves every valid value bit for bit.
  """
  mask = valid.reshape(valid.shape + (1,) * (out.ndim - valid.ndim))
  nan = jnp.asarray(jnp.nan, out.dtype)
  return out * jnp.where(mask, jnp.ones((), out.dtype), nan) + jnp.where(
    mask, jnp.asarray(-0.0, out.dtype), nan
  )


def require_fn(extra: dict, name: str, method: str, signature: str) -> Callable:
  """Fetches a callable extra argument of ``update``, or raises a clear error."""
  fn = extra.get(name)
  if fn is None:
    raise ValueError(
      f"{method} needs the objective: call update(grads, state, params, {name}=...) with "
      f"{name}: {signature}. With optax.chain, pass it as a keyword extra argument; the "
      "chain forwards it to every GradientTransformationExtraArgs."
    )
  if not callable(fn):
    raise TypeError(f"{name} must be callable ({signature}), got {type(fn).__name__}")
  return fn


class OutputDtypeError(TypeError, ValueError):
  """A callable returned an array of the wrong dtype (:func:`check_output`).

  A ``TypeError`` (the package's error for dtypes) that is also a ``ValueError``: the
  error ``jaxdiff.sample`` raised for a wrong-dtype denoiser output before the check was
  shared, so code that catches either keeps working.
  """


_KINDS = {"floating": "real floating-point", "real": "real (integer or floating-point)"}


def _out_dtype(out):
  if isinstance(out, (bool, np.bool_)):
    return np.dtype(bool)
  if isinstance(out, (int, float, complex)):
    return np.result_type(out)
  return getattr(out, "dtype", None)


def _shape_of(out) -> tuple:
  return tuple(out.shape) if hasattr(out, "shape") else tuple(np.shape(out))


def _dtype_ok(dt, want) -> bool:
  if want == "floating":
    return jnp.issubdtype(dt, jnp.floating)
  if want == "real":
    return dt != np.bool_ and (jnp.issubdtype(dt, jnp.floating) or jnp.issubdtype(dt, jnp.integer))
  return dt == jnp.dtype(want)


def _dtype_text(want) -> str:
  return _KINDS[want] if isinstance(want, str) else str(jnp.dtype(want))


def check_output(
  out: Any,
  *,
  like: Any = None,
  shape: tuple | None = None,
  dtype: Any = None,
  scalar: bool = False,
  name: str = "the function",
  where: str = "",
  like_name: str = "x",
  what: str = "",
  hint: str = "",
) -> Any:
  """The output of a user's callable is what the caller needs; returns ``out`` unchanged.

  The one output check of both packages, run at trace time (it reads only shapes and
  dtypes, so it costs nothing once compiled): every public function that calls a user's
  denoiser, model, classifier, measurement operator, fitness or objective passes its
  output here before using it, so a wrong output is an error naming the callable, never
  a silent broadcast or an error from deep inside JAX. Two forms:

  * an array: ``out`` is one array (not a pytree, not a Python number) with the shape of
    ``like`` (or ``shape``) exactly (no broadcasting) and the dtype of ``like`` (or
    ``dtype``);
  * a scalar (``scalar=True``): ``out`` has shape ``()`` (a 0-d array, a NumPy scalar or
    a Python number) and a real floating-point dtype (or ``dtype``).

  Args:
    out: the callable's output (an array, a tracer, a shape struct or a Python number).
    like: the reference array (or ``jax.ShapeDtypeStruct``) whose shape and dtype ``out``
      must have.
    shape: the required shape (overrides ``like``'s).
    dtype: the required dtype (overrides ``like``'s): a dtype (exact match), or a kind:
      ``"floating"`` (any floating-point dtype) or ``"real"`` (integer or floating point,
      not bool). Default: ``like``'s dtype; ``"floating"`` for a scalar; any real dtype
      for a ``shape`` alone.
    scalar: require a scalar (see above).
    name: the callable as the user knows it, e.g. ``"denoise(x, t, cond)"``.
    where: the public function that called it (the message's prefix).
    like_name: what ``like`` is, for the message (``"x"``).
    what: what the output is, for the message of a scalar (``"loss"``).
    hint: a last sentence of the message (how to fix it).

  Raises:
    TypeError: ``out`` is not one array (a pytree, ``None``, a Python number where an
      array is needed), is not a scalar where one is needed, or has the wrong dtype (an
      :class:`OutputDtypeError`, also a ``ValueError``).
    ValueError: ``out`` has the wrong shape.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.ones((4, 2))
    >>> check_output(x[:, :1], like=x, name="denoise(x, t, cond)")
    Traceback (most recent call last):
    ...
    ValueError: denoise(x, t, cond) must return x's shape and dtype (4, 2) float32 (no broadcasting), got (4, 1) float32
    >>> check_output(jnp.ones(3), scalar=True, name="fitness(t)", where="evolve_timesteps")
    Traceback (most recent call last):
    ...
    TypeError: evolve_timesteps: fitness(t) must return a real floating-point scalar, got shape (3,)
  """  # noqa: E501 - doctest output lines
  at = f"{where}: " if where else ""
  tail = f"; {hint}" if hint else ""
  if scalar:
    want = "floating" if dtype is None else dtype
    expected = f"a {_dtype_text(want)} scalar" + (f" {what}" if what else "")
    dt = _out_dtype(out)
    if isinstance(out, (bool, np.bool_)) or dt is None:
      got = "a bool" if dt is not None else type(out).__name__
      if dt is None and not jax.tree_util.treedef_is_leaf(jax.tree.structure(out)):
        got += " (a pytree)"
      raise TypeError(f"{at}{name} must return {expected}, got {got}{tail}")
    got_shape = _shape_of(out)
    if got_shape != ():
      raise TypeError(f"{at}{name} must return {expected}, got shape {got_shape}{tail}")
    if not _dtype_ok(dt, want):
      raise OutputDtypeError(f"{at}{name} must return {expected}, got dtype {dt}{tail}")
    return out
  if like is not None:
    shape = tuple(like.shape) if shape is None else shape
    dtype = like.dtype if dtype is None else dtype
  want_shape = None if shape is None else tuple(shape)
  desc = (
    f" shaped like {like_name} {want_shape}"
    if like is not None
    else (f" of shape {want_shape}" if want_shape is not None else "")
  )
  if not (isinstance(out, (jax.Array, np.ndarray)) or isinstance(out, jax.ShapeDtypeStruct)):
    pytree = not jax.tree_util.treedef_is_leaf(jax.tree.structure(out))
    raise TypeError(
      f"{at}{name} must return one array{desc}, got {type(out).__name__}"
      + (" (a pytree)" if pytree else "")
      + tail
    )
  got = f"{tuple(out.shape)} {out.dtype}"
  if like is not None and not isinstance(dtype, str):
    expected = f"{like_name}'s shape and dtype {want_shape} {jnp.dtype(dtype)}"
  elif dtype is not None:
    expected = f"a {_dtype_text(dtype)} array{desc}"
  else:
    expected = f"shape {want_shape}"
  msg = f"{at}{name} must return {expected} (no broadcasting), got {got}{tail}"
  if want_shape is not None and tuple(out.shape) != want_shape:
    raise ValueError(msg)
  if dtype is not None and not _dtype_ok(out.dtype, dtype):
    raise OutputDtypeError(msg)
  if dtype is None and not _dtype_ok(out.dtype, "real") and out.dtype != np.bool_:
    raise OutputDtypeError(f"{at}{name} must return a real array{desc}, got {got}{tail}")
  return out


def check_batch(tree: Any, batch: int, *, name: str, like_name: str, where: str = "") -> None:
  """Every leaf of ``tree`` is batch-first with leading size ``batch`` (``None`` passes).

  The one check of per-example arguments against the batch they go with (labels against
  data, ``cond`` against ``x_T``): a scalar label or a batch of another size would
  broadcast over the batch or fail deep inside the model.

  Example:
    >>> import jax.numpy as jnp
    >>> check_batch(jnp.array(3), 4, name="y", like_name="x0", where="early_exit_loss")
    Traceback (most recent call last):
    ...
    ValueError: early_exit_loss: y must be batch-first with leading size 4 (like x0), got shape ()
  """
  at = f"{where}: " if where else ""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    leaf_shape = jnp.shape(leaf)
    if len(leaf_shape) < 1 or leaf_shape[0] != batch:
      raise ValueError(
        f"{at}{name}{jax.tree_util.keystr(path)} must be batch-first with leading size "
        f"{batch} (like {like_name}), got shape {leaf_shape}"
      )


def check_objective(fn: Callable, args: tuple, name: str, method: str, signature: str) -> None:
  """``fn(*args)`` (traced only, by ``jax.eval_shape``) is a real floating-point scalar.

  Names the extra argument (``obj_fn``, ``sampled_obj_fn``) instead of letting the error come
  from deep inside a Hessian-vector product (:func:`check_output` with ``scalar=True``).
  """
  try:
    out = jax.eval_shape(fn, *args)
  except TypeError as err:
    if "positional argument" not in str(err):
      raise
    raise TypeError(
      f"{method}: {name} must be a function {signature}; calling it failed: {err}"
    ) from err
  reduce = "reduce the loss (e.g. take its mean over the batch) first"
  check_output(
    out,
    scalar=True,
    name=name,
    where=method,
    what=f"loss ({signature})",
    hint=reduce if hasattr(out, "shape") and _shape_of(out) != () else "",
  )


def check_dtype(name: str, dtype: Any) -> Any:
  """``None`` or a floating-point dtype (an integer accumulator would truncate silently)."""
  if dtype is None:
    return None
  try:
    dt = jnp.dtype(dtype)
  except (TypeError, ValueError) as err:
    raise TypeError(
      f"{name} must be a floating-point dtype (e.g. jnp.float32), got {dtype!r}"
    ) from err
  if not jnp.issubdtype(dt, jnp.floating):
    raise TypeError(f"{name} must be a floating-point dtype (e.g. jnp.float32), got {dt}")
  return dt


def require_params(params, method: str):
  """Raises a clear error when ``update`` was called without the parameters it needs."""
  if params is None:
    raise ValueError(f"{method} needs the current parameters: call update(updates, state, params)")


# ---------------------------------------------------------------------------------------
# Deprecations (one release).


def renamed_kwargs(**renames: str) -> Callable[[Callable], Callable]:
  """Accepts old keyword spellings for one release, with a ``DeprecationWarning``.

  ``@renamed_kwargs(kind="probe")`` lets ``f(kind="gaussian")`` mean ``f(probe="gaussian")``.
  The wrapped function keeps the new signature (``inspect.signature`` follows
  ``__wrapped__``), so the keyword-vocabulary test sees only the current names. An old
  spelling may map to a ``(new_name, translate)`` pair when its values changed too.
  """

  def decorate(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      for old, new in renames.items():
        if old in kwargs:
          new_name, translate = (new, None) if isinstance(new, str) else new
          if new_name in kwargs:
            raise TypeError(
              f"{fn.__name__}() got both {old!r} (deprecated) and {new_name!r}; pass {new_name!r}"
            )
          value = kwargs.pop(old)
          warnings.warn(
            f"{fn.__name__}({old}=...) is deprecated; use {new_name}=... "
            "(the old spelling will be removed in the next release)",
            DeprecationWarning,
            stacklevel=2,
          )
          kwargs[new_name] = translate(value) if translate is not None else value
      return fn(*args, **kwargs)

    wrapper.deprecated_kwargs = dict(renames)  # type: ignore[attr-defined]
    return wrapper

  return decorate


def renamed_field(old: str, new: str) -> property:
  """A read-only alias ``old`` of the field ``new`` of a result ``NamedTuple``, for one release.

  Put ``iterations = renamed_field("iterations", "n_iters")`` in the class body: reading
  ``result.iterations`` returns ``result.n_iters`` with a ``DeprecationWarning``. The
  alias is not a field: the constructor, ``_replace`` and ``_fields`` know only ``new``.
  """

  def get(self):
    warnings.warn(
      f"{type(self).__name__}.{old} is deprecated; use .{new} "
      "(the old name will be removed in the next release)",
      DeprecationWarning,
      stacklevel=2,
    )
    return getattr(self, new)

  get.__doc__ = f"Deprecated alias of ``{new}`` (removed in the next release)."
  return property(get)


def moved_names(module: str, moved: dict[str, str]) -> Callable[[str], Any]:
  """A module ``__getattr__`` that serves moved or renamed names for one release.

  ``moved`` maps an old name of ``module`` to its new dotted place
  (``"optim.loops.reg_newton_minimize"``); reading the old name returns the object there
  with a ``DeprecationWarning`` that names the new place. The new module is imported
  only then, so an old name costs nothing until it is used.
  """

  def __getattr__(name: str) -> Any:
    if name in moved:
      where, _, attr = moved[name].rpartition(".")
      warnings.warn(
        f"{module}.{name} is deprecated; use {moved[name]} "
        "(the old name will be removed in the next release)",
        DeprecationWarning,
        stacklevel=2,
      )
      return getattr(importlib.import_module(where), attr)
    raise AttributeError(f"module {module!r} has no attribute {name!r}")

  return __getattr__


def warn_default(value: Any, name: str, default: Any, where: str) -> Any:
  """Returns ``default`` with a ``DeprecationWarning`` when ``value`` is :data:`MISSING`."""
  if value is MISSING:
    warnings.warn(
      f"{where}() without {name} is deprecated: pass {name} explicitly (the old default "
      f"{default!r} is used for now and will be removed in the next release)",
      DeprecationWarning,
      stacklevel=3,
    )
    return default
  return value


# ---------------------------------------------------------------------------------------
# init / update arguments of a GradientTransformation.


def _describe(path) -> str:
  return jax.tree_util.keystr(path)  # "" for a bare array: "v has shape ..."


def leaf_dtype(leaf: Any, name: str, where: str):
  """The dtype of an array (or shape struct) leaf; a ``TypeError`` naming ``name`` otherwise."""
  if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
    if not isinstance(leaf, (int, float)) or isinstance(leaf, bool):
      raise TypeError(f"{where}: {name} must hold arrays, got a {type(leaf).__name__}")
  return jnp.result_type(leaf)


def check_floating(tree: Any, what: str, where: str, *, allow_empty: bool = True) -> None:
  """Every leaf of ``tree`` is a real floating-point array (or shape struct).

  Optimizer state and curvature are defined on floating-point leaves only: integer
  parameters would truncate moments, and have no tangent space for ``jvp``. With
  ``allow_empty=False`` an empty tree is an error too (no curvature to estimate).
  """
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  if not leaves and not allow_empty:
    raise ValueError(f"{where}: {what} must hold at least one array, got {tree!r}")
  for path, leaf in leaves:
    at = what + jax.tree_util.keystr(path)
    dtype = leaf_dtype(leaf, at, where)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
        f"{where}: {at} has dtype {dtype}; it must be real floating point "
        "(cast with jnp.asarray(x, jnp.float32))"
      )


def check_like(tree: Any, like: Any, what: str, what_like: str, method: str = "") -> None:
  """``tree`` has the pytree structure and leaf shapes of ``like`` (no silent broadcasting).

  Messages name the leaf by its path and start with ``method`` when given.
  """
  at = f"{method}: " if method else ""
  t, l = jax.tree.structure(tree), jax.tree.structure(like)
  if t != l:
    raise ValueError(
      f"{at}{what} and {what_like} must have the same pytree structure; got\n"
      f"  {what}: {t}\n  {what_like}: {l}"
    )
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(like)):
    if jnp.shape(a) != jnp.shape(b):
      raise ValueError(
        f"{at}{what}{_describe(path)} has shape {jnp.shape(a)} but {what_like} has "
        f"{jnp.shape(b)} there"
      )


def check_mask(mask: Any, params: Any, method: str, name: str = "weight_decay_mask") -> None:
  """``mask`` (or ``mask(params)``) is a pytree of bools shaped like (a prefix of) ``params``.

  The mask semantics of ``optax.masked`` / ``optax.add_decayed_weights``; checked here so that
  a wrong structure is an error naming the argument, not a pytree-prefix error from JAX.
  """
  if mask is None:
    return
  tree = mask(params) if callable(mask) else mask
  try:
    jax.tree.map(lambda m, p: None, tree, params)
  except ValueError as err:
    raise ValueError(
      f"{method}: {name} must be a pytree of bools with the structure of (a prefix of) "
      f"params, or a function of params returning one; got\n  {name}: "
      f"{jax.tree.structure(tree)}\n  params: {jax.tree.structure(params)}"
    ) from err
  for path, m in jax.tree_util.tree_leaves_with_path(tree):
    if not (isinstance(m, (bool, np.bool_)) or jnp.result_type(m) == jnp.bool_):
      raise TypeError(
        f"{method}: {name}{_describe(path)} must be a bool, got {m!r} ({type(m).__name__})"
      )


def add_decayed_weights(weight_decay: Any, mask: Any, method: str) -> Any:
  """``optax.add_decayed_weights`` whose ``mask`` is checked against the params.

  A wrong mask structure is then an error naming ``weight_decay_mask`` (:func:`check_mask`).
  """
  tx = optax.add_decayed_weights(weight_decay, mask)
  if mask is None:
    return tx

  def init_fn(params):
    check_mask(mask, params, method)
    return tx.init(params)

  def update_fn(updates, state, params=None):
    if params is not None:
      check_mask(mask, params, method)
    return tx.update(updates, state, params)

  return optax.GradientTransformation(init_fn, update_fn)


def per_example_batch(
  grads: Any, who: str, *, name: str = "per-example gradients", min_batch: int = 1, why: str = ""
) -> int:
  """The one leading batch size of every leaf of per-example ``grads``, checked.

  Every leaf must have a leading batch axis (a scalar leaf is an error), all of the same
  size, at least ``min_batch`` (``why`` says why a larger minimum, e.g. "coherence compares
  examples"). That the axes after it are the params' shapes is :func:`guard`'s check
  (``per_example``) and :func:`check_per_example`'s.
  """
  leaves = jax.tree.leaves(grads)
  if not leaves:
    raise ValueError(f"{who}: empty gradient pytree ({name})")
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    if jnp.ndim(g) == 0:
      raise ValueError(
        f"{who} expects {name} with a leading batch axis (axis 0); leaf "
        f"{jax.tree_util.keystr(path)} is a scalar. Compute them with "
        "jax.vmap(jax.grad(loss), in_axes=(None, 0))."
      )
  sizes = {jnp.shape(g)[0] for g in leaves}
  if len(sizes) != 1:
    shapes = [jnp.shape(g) for g in leaves]
    raise ValueError(f"{who}: {name} must share one batch size on axis 0; got leaf shapes {shapes}")
  b = sizes.pop()
  if b == 0:
    raise ValueError(
      f"{who}: the {name} have batch size 0 (an empty batch): their mean, hence the update, "
      "is undefined"
    )
  if b < min_batch:
    raise ValueError(
      f"{who}: {why + ', so ' if why else ''}{name} needs a batch of at least {min_batch} "
      f"examples on axis 0; got {b}"
    )
  return b


def check_per_example(tree: Any, params: Any, what: str, method: str) -> None:
  """``tree`` is not shaped like ``params`` itself: a mean gradient where per-example ones go.

  Per-example gradients have one more (leading batch) axis than the params on every leaf,
  so a tree whose leaves have exactly the params' shapes is a mean (or single-example)
  gradient; read as a batch, its first axis would be averaged away or broadcast. The
  shapes after the batch axis are :func:`check_like`'s to compare.
  """
  if jax.tree.structure(tree) != jax.tree.structure(params):
    return  # check_like names the structures
  leaves = jax.tree.leaves(tree)
  if leaves and all(jnp.shape(a) == jnp.shape(b) for a, b in zip(leaves, jax.tree.leaves(params))):
    raise ValueError(
      f"{method}: {what} (per example) must be per-example gradients with a leading batch "
      f"axis (params' shapes after it), but every leaf of {what} has the params' shape: a "
      "mean gradient? Compute them with jax.vmap(jax.grad(loss), in_axes=(None, 0))."
    )


def guard(tx: Any, method: str, *, per_example: bool = False) -> Any:
  """Wraps a transformation so that ``init``/``update`` check their arguments at trace time.

  ``init(params)``: params are floating point. ``update(updates, state, params)``: updates
  are floating point and shaped like params (with a leading per-example axis when
  ``per_example``), and ``state`` has the structure and shapes ``init`` gives for params
  (for the updates when ``update`` gets no params). All checks
  read only shapes and dtypes, so they cost nothing after tracing. Extra arguments are
  forwarded unchanged.
  """

  def init_fn(params):
    check_floating(params, "params", method)
    return tx.init(params)

  def update_fn(updates, state, params=None, **extra):
    check_floating(updates, "updates", method)
    like, what = updates, "updates"
    if per_example:
      like = jax.tree.map(lambda u: jax.ShapeDtypeStruct(jnp.shape(u)[1:], u.dtype), updates)
      what = "updates (per example)"
    if params is not None:
      check_floating(params, "params", method)
      if per_example:
        check_per_example(updates, params, "updates", method)
      check_like(like, params, what, "params", method)
    # Without params the updates stand in for them: the state must fit init either way.
    expected = jax.eval_shape(tx.init, like if params is None else params)
    if jax.tree.leaves(expected) or jax.tree.leaves(state):  # any empty state will do
      check_like(state, expected, "state", "init(params)", method)
    if isinstance(tx, optax.GradientTransformationExtraArgs):
      return tx.update(updates, state, params, **extra)
    return tx.update(updates, state, params)

  if isinstance(tx, optax.GradientTransformationExtraArgs):
    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
  return optax.GradientTransformation(init_fn, update_fn)


# Import name -> distribution name, for the optional dependencies of the extras.
_DISTRIBUTIONS = {"sklearn": "scikit-learn"}


def import_extra(module: str, *, caller: str, extra: str = "demo"):
  """Imports the optional dependency ``module`` for ``caller``, naming the extra if absent.

  The plots, progress bars and the digits data set need packages that ``import optim,
  jaxdiff`` does not: they are imported here, on first use. A missing one raises an
  ``ImportError`` (a ``ModuleNotFoundError``) that says which call needs it and the
  install command, instead of a bare "No module named ..."; an ImportError from inside
  an installed package propagates unchanged.

  Example:
    >>> import_extra("json", caller="example").__name__
    'json'
  """
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    top = module.partition(".")[0]
    if e.name is None or e.name.partition(".")[0] != top:
      raise
    dist = _DISTRIBUTIONS.get(top, top)
    raise ModuleNotFoundError(
      f"{caller} needs {dist}, which is part of the {extra!r} extra: "
      f"pip install 'optim-jaxdiff[{extra}]'",
      name=e.name,
    ) from e
