"""Argument checks shared by the networks and the training loop of :mod:`jaxdiff.models`."""

from __future__ import annotations

from jaxdiff._validation import check_scalar


def check_size(name: str, value, *, lo: int = 1) -> int:
  """A concrete integer ``>= lo`` that fixes a shape or a count."""
  return check_scalar(name, value, lo=lo, integer=True, static=True)
