"""The one validation module of ``jaxdiff``: the ``optim`` checks plus diffusion-specific ones.

Both packages share one API and one message style (see ``optim._validation``): scalar
hyperparameters through :func:`check_scalar`, options through :func:`check_choice`, keys
through :func:`as_key` (typed key, raw key or int seed), renamed keywords through
:func:`renamed_kwargs`, class labels through :func:`check_labels` / :func:`poison`, the
outputs of a user's callables through :func:`check_output`, per-example arguments
against their batch through :func:`check_batch`, and data that must be finite
(measurements, the exact posterior's ``A`` and ``y``, a mixture's parameters) through
:func:`check_finite`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from optim._validation import (
  MISSING,
  OutputDtypeError,
  as_key,
  check_batch,
  check_choice,
  check_flag,
  check_labels,
  check_output,
  check_scalar,
  concrete,
  import_extra,
  is_traced,
  poison,
  renamed_kwargs,
  warn_default,
)

__all__ = [
  "MISSING",
  "OutputDtypeError",
  "as_key",
  "check_batch",
  "check_choice",
  "check_finite",
  "check_flag",
  "check_scalar",
  "concrete",
  "import_extra",
  "is_traced",
  "poison",
  "renamed_kwargs",
  "check_labels",
  "check_output",
  "static_equal",
  "warn_default",
]


def static_equal(value, target: float) -> bool:
  """True only when ``value`` is concrete and equals ``target`` (then work can be skipped)."""
  if isinstance(value, jax.core.Tracer):
    return False
  try:
    return float(value) == target
  except (TypeError, ValueError):
    return False


def check_finite(name: str, value) -> None:
  """A concrete ``value`` holding NaN or inf is a ``ValueError`` naming ``name`` and the
  first offending index; a traced one cannot be checked (callers say in their docstring
  what it gives: NaN in the outputs that depend on it).

  The one non-finite-data check of jaxdiff's small data: measurements (every
  :class:`Operator` consumer), the exact posterior's ``A`` and ``y``, a mixture's
  parameters, :func:`~jaxdiff.guidance.minority_score`'s samples. (The metrics reduce
  their large feature arrays on the device instead of copying them here.)
  """
  if is_traced(value):
    return
  # NumPy on the host: a concrete array closed over inside a jit trace is checked too
  # (jnp operations there would return tracers).
  arr = np.asarray(value)
  if not jnp.issubdtype(arr.dtype, jnp.inexact):
    return
  ok = np.isfinite(arr)
  if ok.all():
    return
  i = np.unravel_index(int(np.argmax(~ok.reshape(-1))), ok.shape)
  at = f" at index {tuple(int(j) for j in i)}" if arr.ndim else ""
  raise ValueError(f"{name} must be finite (no NaN or inf), got {arr[i]}{at}")
