"""Trace-time validation shared by the optimizers: hyperparameter ranges, extra args, keys.

Checks run on concrete (Python or concrete array) values only; under
``optax.inject_hyperparams`` hyperparameters arrive as tracers and are checked on the
first, concrete construction instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def as_key(key: Any) -> jax.Array:
  """A typed PRNG key from an int seed, a raw ``uint32`` key or a typed key."""
  if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  if isinstance(key, (int, np.integer)) or (
    isinstance(key, (jax.Array, np.ndarray)) and jnp.shape(key) == () and _is_int(key)
  ):
    return jax.random.key(key)
  if isinstance(key, (jax.Array, np.ndarray)) and jnp.asarray(key).dtype == jnp.uint32:
    return jax.random.wrap_key_data(jnp.asarray(key))
  raise TypeError(
    f"key must be an int seed or a JAX PRNG key (jax.random.key(...)), got {type(key).__name__}"
  )


def _is_int(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.integer)


def concrete(x) -> float | None:
  """The Python value of a hyperparameter when it is known at trace time, else ``None``.

  ``optax.inject_hyperparams`` re-creates the transformation with traced hyperparameters
  inside ``update``; range checks then happen only on the first, concrete call.
  """
  if isinstance(x, (int, float, np.integer, np.floating)):
    return float(x)
  if isinstance(x, (np.ndarray, jax.Array)) and jnp.shape(x) == ():
    try:
      return float(x)
    except (jax.errors.ConcretizationTypeError, TypeError):
      return None
  return None


def check_range(name: str, value, lo: float, hi: float, *, lo_open=False, hi_open=True):
  """Raises ``ValueError`` when a concrete hyperparameter is outside its interval (or NaN)."""
  v = concrete(value)
  if v is None:
    return
  ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
  if not ok:
    interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    raise ValueError(f"{name} must lie in {interval}, got {v}")


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


def require_params(params, method: str):
  if params is None:
    raise ValueError(
      f"{method} evaluates curvature at the current parameters: pass params to update"
    )


def check_hparam(name: str, value, ok, what: str) -> None:
  """Raises ``ValueError`` for a concrete hyperparameter outside its range (tracers pass)."""
  if isinstance(value, jax.core.Tracer) or callable(value):
    return
  if not ok(float(value)):
    raise ValueError(f"{name} must be {what}, got {value!r}")
