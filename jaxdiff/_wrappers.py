"""What a denoiser wrapper forwards: the one mechanism behind every wrapper of jaxdiff.

A *wrapper* holds a network (its ``inner``, e.g. ``net``) and changes its calls: a
parameterization (:class:`jaxdiff.parameterization.Wrapped`), block skipping
(:class:`jaxdiff.search.SkipBlocks`), early exit (:class:`jaxdiff.models.EarlyExit`), the
loop's :class:`jaxdiff.Network` and its output check. What the network *declares* about
itself must read the same through any stack of wrappers, so that an error the bare
network gives is the error the wrapped one gives (``sample(from_v(net, sched), ...,
cond=labels)`` range-checks the labels against ``net.num_classes``). The declarations
(:data:`DECLARED`):

* ``num_classes``: the label range :func:`jaxdiff.sample` checks before compiling;
* ``check_grid(grid)``: a network built for one time grid (a :class:`SkipBlocks`, whose
  mask rows are the grid's steps) checks the grid it is sampled on.

:func:`wrapper` registers a class: it installs a read-only forward of each declaration
the class does not define itself, and records whether the wrapper leaves the network's
blocks alone. A parameterization does (it only converts the output), so the block
interface of :mod:`jaxdiff._blocks` is found through it and a feature cache runs the
inner network's blocks; block skipping and early exit do not (they run the blocks
themselves), so a cache or a block search behind them is an error, never a silent
bypass of the mask or the exits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# What a network may declare and every wrapper forwards (None where the network is silent).
DECLARED = ("num_classes", "check_grid")


class _Forward:
  """A read-only attribute of the wrapped network (``None`` if it declares none)."""

  def __set_name__(self, owner, name):
    self.name = name

  def __get__(self, obj, owner=None):
    if obj is None:
      return self
    return getattr(inner(obj), self.name, None)


def wrapper(*, inner: str = "net", blocks: bool) -> Any:
  """Class decorator: ``cls`` wraps the network in its attribute ``inner``.

  Every name of :data:`DECLARED` that ``cls`` does not define is forwarded from the
  network. ``blocks``: whether the wrapper leaves the network's blocks alone (its output
  is a function of the network's), so block-level add-ons may run the network's blocks
  through it; a wrapper that converts the output says how with a method
  ``blocks_output(out, x, t)`` (the identity if absent).

  Example:
    >>> from jaxdiff._wrappers import wrapper
    >>> class Net:
    ...   num_classes = 10
    >>> @wrapper(blocks=False)
    ... class Twice:
    ...   def __init__(self, net):
    ...     self.net = net
    >>> Twice(Twice(Net())).num_classes, Twice(object()).num_classes
    (10, None)
  """

  def register(cls):
    cls.__wrapper_inner__ = inner
    cls.__wrapper_blocks__ = bool(blocks)
    for name in DECLARED:
      if not any(name in vars(k) for k in cls.__mro__ if k is not object):
        forward = _Forward()
        forward.__set_name__(cls, name)
        setattr(cls, name, forward)
    return cls

  return register


def inner(obj) -> Any:
  """The network ``obj`` wraps: a registered wrapper's inner, or the ``__wrapped__`` of a
  transparent proxy; ``None`` if ``obj`` wraps nothing."""
  name = getattr(type(obj), "__wrapper_inner__", None)
  if name is not None:
    return getattr(obj, name, None)
  return vars(obj).get("__wrapped__") if hasattr(obj, "__dict__") else None


def through_blocks(obj) -> Iterator[Any]:
  """``obj`` and the networks inside it whose blocks are reachable through ``obj``.

  Follows registered wrappers that leave the blocks alone, transparent proxies
  (``__wrapped__``) and, for an unregistered object, its ``net`` attribute (the
  documented convention for a user's own parameterization wrapper). Stops at a wrapper
  that runs the blocks itself.
  """
  seen = set()
  while obj is not None and id(obj) not in seen:
    seen.add(id(obj))
    yield obj
    if hasattr(type(obj), "__wrapper_inner__"):
      if not type(obj).__wrapper_blocks__:
        return
      obj = inner(obj)
    elif hasattr(obj, "__dict__") and "__wrapped__" in vars(obj):
      obj = vars(obj)["__wrapped__"]
    else:
      obj = getattr(obj, "net", None)


def opaque(obj) -> Any:
  """The first wrapper in ``obj``'s chain that runs the blocks itself, or ``None``."""
  chain = list(through_blocks(obj))
  last = chain[-1] if chain else None
  return last if not getattr(type(last), "__wrapper_blocks__", True) else None
