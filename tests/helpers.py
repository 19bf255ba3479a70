"""Helpers shared across the test tree."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def orbax_roundtrip(tree: Any, directory: str | pathlib.Path) -> Any:
  """Saves ``tree`` with orbax and restores it into the same structure.

  Typed PRNG key arrays are stored as their raw key data and re-wrapped on restore, so
  a restored optimizer or sampler state reproduces the exact next step.
  """
  directory = pathlib.Path(directory).absolute() / "ckpt"
  is_key = lambda x: (
    isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
  )
  impls = jax.tree.map(lambda x: jax.random.key_impl(x) if is_key(x) else None, tree)
  raw = jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)
  raw = jax.tree.map(lambda x: np.asarray(x) if not isinstance(x, jax.Array) else x, raw)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(directory, raw)
    ckptr.wait_until_finished()
    restored = ckptr.restore(directory, raw)
  return jax.tree.map(
    lambda r, impl: jax.random.wrap_key_data(r, impl=impl) if impl is not None else r,
    restored,
    impls,
    is_leaf=lambda x: x is None,
  )
