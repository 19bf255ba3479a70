"""Reading the searches' JSON files: one schema check, one-line errors naming file and field.

:meth:`SolverSchedule.from_json <jaxdiff.search.SolverSchedule.from_json>` and
:meth:`SkipSchedule.from_json <jaxdiff.search.SkipSchedule.from_json>` read JSON text or a
file (``os.PathLike``) through :func:`read_object`; every problem (not JSON, not an
object, a missing or unknown field, the other schedule type's file, times that are not
finite or not strictly decreasing) is a ``ValueError`` whose message starts with the
reader and the source, e.g. ``SolverSchedule.from_json(runs/s3.json): field 't' ...``.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

# The fields of each file type, to recognise one type's file given to the other's reader.
FIELDS = {
  "SolverSchedule": ("steps", "t"),
  "SkipSchedule": ("t", "mask"),
}


class Source:
  """Where a JSON document came from, for messages: ``"<reader>(<file>)"`` or the text."""

  def __init__(self, reader: str, path: str | None):
    self.reader, self.path = reader, path

  def __str__(self) -> str:
    return f"{self.reader}({self.path})" if self.path else f"{self.reader} (JSON text)"

  def error(self, message: str, exc: type[Exception] = ValueError) -> Exception:
    return exc(f"{self}: {message}")

  def wrap(self, field: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, its ``ValueError``/``TypeError`` re-raised as one naming this file."""
    try:
      return fn()
    except (ValueError, TypeError) as err:
      raise self.error(f"field {field!r}: {err}") from err


def read_object(source, kind: str) -> tuple[dict, Source]:
  """The JSON object in ``source`` (text, bytes or a path) with exactly ``FIELDS[kind]``."""
  reader = f"{kind}.from_json"
  if isinstance(source, (os.PathLike, pathlib.Path)):
    src = Source(reader, os.fspath(source))
    text = pathlib.Path(source).read_text()  # OSError names the file itself
  elif isinstance(source, (str, bytes, bytearray)):
    src, text = Source(reader, None), source
  else:
    raise TypeError(
      f"{reader}: text must be JSON text (str) or a path (pathlib.Path), got "
      f"{type(source).__name__}"
    )
  try:
    data = json.loads(text)
  except json.JSONDecodeError as err:
    hint = ""
    if isinstance(text, str) and len(text) < 4096 and "\n" not in text and os.path.isfile(text):
      hint = f"; to read the file {text!r}, pass pathlib.Path({text!r})"
    msg = f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}){hint}"
    raise src.error(msg) from None
  want = FIELDS[kind]
  if not isinstance(data, dict):
    raise src.error(
      f"expected a JSON object with fields {_names(want)}, got a JSON {_json_type(data)}"
    )
  missing, unknown = [f for f in want if f not in data], [f for f in data if f not in want]
  if missing or unknown:
    for other, fields in FIELDS.items():
      if other != kind and set(data) == set(fields):
        raise src.error(
          f"this is a {other}'s JSON (fields {_names(fields)}), not a {kind}'s "
          f"({_names(want)}); read it with {other}.from_json"
        )
    parts = [f"missing field{'s' * (len(missing) > 1)} {_names(missing)}"] if missing else []
    if unknown:
      parts.append(f"unknown field{'s' * (len(unknown) > 1)} {_names(unknown)}")
    raise src.error(f"{' and '.join(parts)} (a {kind} has exactly {_names(want)})")
  return data, src


def times(data: dict, src: Source) -> np.ndarray:
  """Field ``t``: a list of finite numbers, strictly decreasing (noise decreasing)."""
  t = data["t"]
  if not isinstance(t, list) or len(t) < 2:
    raise src.error(
      f"field 't' must be a list of at least 2 grid times, got {_json_type(t)} {_short(t)}"
    )
  for i, v in enumerate(t):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      raise src.error(f"field 't' must hold numbers, got {_json_type(v)} {_short(v)} at t[{i}]")
    if not math.isfinite(v):
      raise src.error(f"field 't' must be finite, got {v} at t[{i}]")
  out = np.asarray(t, np.float64)
  bad = np.flatnonzero(~(np.diff(out) < 0))
  if bad.size:
    i = int(bad[0])
    raise src.error(
      f"field 't' must be strictly decreasing (noise decreasing along the grid), got "
      f"t[{i}] = {t[i]!r} and t[{i + 1}] = {t[i + 1]!r}"
    )
  return out


def records(data: dict, field: str, fields: tuple[str, ...], src: Source) -> list[dict]:
  """Field ``field``: a list of objects with exactly ``fields`` each."""
  items = data[field]
  if not isinstance(items, list):
    raise src.error(
      f"field {field!r} must be a list of objects, got {_json_type(items)} {_short(items)}"
    )
  for i, item in enumerate(items):
    if not isinstance(item, dict):
      raise src.error(
        f"field '{field}[{i}]' must be an object with fields {_names(fields)}, got "
        f"{_json_type(item)} {_short(item)}"
      )
    missing = [f for f in fields if f not in item]
    unknown = [f for f in item if f not in fields]
    if missing or unknown:
      what = ", ".join(
        ([f"missing {_names(missing)}"] if missing else [])
        + ([f"unknown {_names(unknown)}"] if unknown else [])
      )
      raise src.error(f"field '{field}[{i}]' must have exactly {_names(fields)}: {what}")
  return items


def _names(fields) -> str:
  return ", ".join(repr(f) for f in fields)


def _json_type(v) -> str:
  return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
    type(v), "number"
  )


def _short(v) -> str:
  text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else repr(v)
  return text if len(text) <= 40 else text[:37] + "..."


def block_mask(data: dict, src: Source) -> np.ndarray:
  """Field ``mask``: a list of rows of equal length, entries 0/1 (or booleans); the row
  count against ``t`` is the caller's check."""
  rows = data["mask"]
  if not isinstance(rows, list):
    raise src.error(f"field 'mask' must be a list of rows, got {_json_type(rows)} {_short(rows)}")
  width = len(rows[0]) if rows and isinstance(rows[0], list) else 0
  for i, row in enumerate(rows):
    if not isinstance(row, list) or len(row) != width:
      raise src.error(
        f"field 'mask[{i}]' must be a list of {width} entries (as long as mask[0]), got "
        f"{_short(row)}"
      )
    for k, v in enumerate(row):
      if v not in (0, 1) or not isinstance(v, (int, bool)):
        raise src.error(f"field 'mask[{i}][{k}]' must be 0 or 1 (or a boolean), got {_short(v)}")
  return np.asarray(rows, bool).reshape(len(rows), width)
