"""Immutable pytree objects: what every add-on of :func:`jaxdiff.sample` is built from.

``@module`` makes a class a frozen dataclass registered as a JAX pytree (public
``jax.tree_util.register_dataclass``): fields are children (traced by ``jit``) unless
declared with :func:`static`, which puts them in the treedef (hashed and compared by
``jit``'s cache). This is equinox's ``Module`` in twenty lines, without the dependency:

* a float hyperparameter (a guidance scale, a corrector's ``snr``, a threshold) is a
  field, so changing it does not recompile a jitted caller, and rebuilding an equal
  object does not either (its static fields compare equal);
* what sets shapes or Python control flow (a number of steps, an order, a variant
  string, a callable) is :func:`static`.

Equality is identity (``eq=False``): two objects holding arrays have no single truth
value; ``jit`` compares the static fields through the treedef instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import jax

T = TypeVar("T")


def static(default: Any = dataclasses.MISSING, **kwargs) -> Any:
  """A field kept in the treedef (not traced): shapes, Python control flow, callables."""
  metadata = {**kwargs.pop("metadata", {}), "static": True}
  return dataclasses.field(default=default, metadata=metadata, **kwargs)


def module(cls: type[T]) -> type[T]:
  """Frozen dataclass + pytree registration (see the module docstring).

  Unflattening bypasses ``__init__`` (as equinox does): ``__post_init__`` validates what a
  user passes, once, and never runs on the tracers ``jit`` rebuilds the object with.
  """
  cls = dataclasses.dataclass(frozen=True, eq=False)(cls)
  fields = dataclasses.fields(cls)
  data = tuple(f.name for f in fields if not f.metadata.get("static", False))
  meta = tuple(f.name for f in fields if f.metadata.get("static", False))
  keys = tuple(jax.tree_util.GetAttrKey(name) for name in data)

  def flatten_with_keys(obj):
    children = tuple((k, getattr(obj, n)) for k, n in zip(keys, data))
    return children, tuple(getattr(obj, n) for n in meta)

  def flatten(obj):
    return tuple(getattr(obj, n) for n in data), tuple(getattr(obj, n) for n in meta)

  def unflatten(aux, children):
    obj = object.__new__(cls)
    for name, value in zip(meta, aux):
      object.__setattr__(obj, name, value)
    for name, value in zip(data, children):
      object.__setattr__(obj, name, value)
    return obj

  jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
  return cls


def replace(obj: T, **changes) -> T:
  """A copy of the module ``obj`` with ``changes`` (``dataclasses.replace``)."""
  return dataclasses.replace(obj, **changes)


def setfield(obj, name: str, value) -> None:
  """Sets a field of a frozen module from its ``__post_init__`` (validated values)."""
  object.__setattr__(obj, name, value)
