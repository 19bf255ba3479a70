"""The one validation module of ``jaxdiff``: the ``optim`` checks plus diffusion-specific ones.

Both packages share one API and one message style (see ``optim._validation``): scalar
hyperparameters through :func:`check_scalar`, options through :func:`check_choice`, keys
through :func:`as_key` (typed key, raw key or int seed), renamed keywords through
:func:`renamed_kwargs`, class labels through :func:`check_labels` / :func:`poison`.
"""

from __future__ import annotations

import jax

from optim._validation import (
  MISSING,
  as_key,
  check_choice,
  check_flag,
  check_labels,
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
  "as_key",
  "check_choice",
  "check_flag",
  "check_scalar",
  "concrete",
  "import_extra",
  "is_traced",
  "poison",
  "renamed_kwargs",
  "check_labels",
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
