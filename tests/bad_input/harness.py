"""The harness of the hostile-input tables (bad input, across every public function).

A :class:`Case` is a one-line reproducer (``code``, evaluated in a namespace of small
fixtures) and what must happen:

* ``Raises(TypeError, "argname")``: a clear error at call time whose type is the given one
  (never an internal JAX/XLA error) and whose message matches the regex (it must name the
  argument at fault).
* ``Returns(check, policy)``: the input is valid or has a documented, tested behaviour.
  ``check(result)`` asserts it; ``policy`` says in one sentence which documented rule
  it follows. Unless ``nan_ok`` is set (the documented behaviour *is* a NaN, as for a
  poisoned output under jit), every floating leaf of the result must be finite.

Each table module builds a list of cases and parametrizes one test over it with
:func:`run`; ids are the reproducers themselves, so a failure prints the line to paste.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest


@dataclasses.dataclass(frozen=True)
class Raises:
  exc: type[BaseException] | tuple[type[BaseException], ...]
  match: str


@dataclasses.dataclass(frozen=True)
class Returns:
  check: Callable[[Any], Any] | None = None
  policy: str = ""
  nan_ok: bool = False


@dataclasses.dataclass(frozen=True)
class Case:
  code: str
  expect: Raises | Returns

  def __str__(self) -> str:
    return self.code


def raises(exc, match: str) -> Raises:
  return Raises(exc, match)


def returns(check=None, policy: str = "", *, nan_ok: bool = False) -> Returns:
  return Returns(check, policy, nan_ok)


def finite(x) -> None:
  """Every floating leaf of ``x`` is finite."""
  for leaf in jax.tree.leaves(x):
    if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
      assert bool(jnp.all(jnp.isfinite(leaf))), f"non-finite output: {leaf}"


_INTERNAL = ("jax._src", "jaxlib", "xla")


def run(case: Case, namespace: dict) -> None:
  """Evaluates ``case.code`` in a copy of ``namespace`` and asserts ``case.expect``."""
  ns = dict(namespace)
  expect = case.expect
  if isinstance(expect, Raises):
    with pytest.raises(expect.exc) as info:
      _eval(case.code, ns)
    err = info.value
    module = type(err).__module__
    assert not module.startswith(_INTERNAL), f"internal error {type(err)}: {err}"
    assert re.search(expect.match, str(err)), (
      f"message does not name the argument ({expect.match!r}): {err}"
    )
    return
  result = _eval(case.code, ns)
  if not expect.nan_ok:
    finite(result)
  if expect.check is not None:
    outcome = expect.check(result)
    assert outcome is None or bool(outcome), f"check failed on {result!r}"


def _eval(code: str, ns: dict):
  result = eval(compile(code, "<case>", "eval"), ns)  # noqa: S307 - test reproducers
  return jax.block_until_ready(result) if _is_arrays(result) else result


def _is_arrays(x) -> bool:
  try:
    return all(isinstance(leaf, (jax.Array, np.ndarray, int, float)) for leaf in jax.tree.leaves(x))
  except Exception:  # noqa: BLE001 - non-pytree results are returned as they are
    return False


def params(cases: list[Case]):
  """``pytest.mark.parametrize`` over ``cases`` with the reproducers as ids."""
  return pytest.mark.parametrize("case", cases, ids=[c.code for c in cases])
