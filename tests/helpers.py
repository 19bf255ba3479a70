"""Helpers shared across the test tree."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from optim._tree import data_to_keys, keys_to_data


def orbax_roundtrip(tree: Any, directory: str | pathlib.Path) -> Any:
  """Saves ``tree`` with orbax and restores it into the same structure.

  Typed PRNG key arrays are stored as their raw key data and re-wrapped on restore, so
  a restored optimizer or sampler state reproduces the exact next step.
  """
  directory = pathlib.Path(directory).absolute() / "ckpt"
  raw = keys_to_data(tree)
  raw = jax.tree.map(lambda x: np.asarray(x) if not isinstance(x, jax.Array) else x, raw)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(directory, raw)
    ckptr.wait_until_finished()
    restored = ckptr.restore(directory, raw)
  return data_to_keys(restored, tree)
