"""The block interface of a transformer denoiser: ``encode -> blocks -> readout``.

Feature caching (:mod:`jaxdiff.caching`), block skipping (:func:`jaxdiff.search.skip_blocks`)
and early exit (:class:`jaxdiff.models.EarlyExit`) each run a network's blocks themselves:
they store, skip or stop after some of them. They see the network through this one
interface, check it with :func:`block_network` and run it with :func:`run_blocks`, the
same loop the model's own ``__call__`` runs.

A network with the block interface (:class:`BlockNetwork`) has

* ``encode(x, t, cond) -> (h, c, aux)``: tokens ``h``, the conditioning vector ``c`` that
  modulates every block, and whatever ``readout`` needs (``aux``);
* ``blocks``: a sequence of blocks ``block(h, c, perturb) -> h``;
* ``readout(h, c, aux, x)``: the network output, shaped like ``x``;
* optionally ``pag_layers``: the indices of the blocks that receive ``perturb``
  (Perturbed-Attention Guidance); default every block.

A feature cache also needs each block as its gated residual branches
(:class:`BranchBlock`): ``block.residual_branches(c) -> [(gate, branch), ...]`` with
``h <- h + gate[:, None, :] * branch(h, perturb)`` in order.

:class:`jaxdiff.models.DigitDenoiser` implements both. A parameterization wrapper
(:func:`jaxdiff.from_v`, ...) exposes its network as ``.net``; :func:`block_network` looks
there too, through every wrapper that leaves the blocks alone (:mod:`jaxdiff._wrappers`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import jax

from jaxdiff._wrappers import inner, opaque, through_blocks

Array = jax.Array

_REQUIRED = ("encode", "blocks", "readout")


@runtime_checkable
class BlockNetwork(Protocol):
  """A network as ``encode -> blocks -> readout`` (see the module docstring)."""

  blocks: Sequence[Any]

  def encode(self, x: Array, t: Array, cond: Any) -> tuple[Array, Array, Any]: ...

  def readout(self, h: Array, c: Array, aux: Any, x: Array) -> Array: ...


class BranchBlock(Protocol):
  """A block that exposes its gated residual branches (what a feature cache stores)."""

  def __call__(self, h: Array, c: Array, perturb: Array | None) -> Array: ...

  def residual_branches(self, c: Array) -> list[tuple[Array, Callable[..., Array]]]: ...


def _has_interface(net, branches: bool) -> bool:
  if net is None or not all(hasattr(net, name) for name in _REQUIRED):
    return False
  if not callable(net.encode) or not callable(net.readout):
    return False
  try:
    blocks = list(net.blocks)
  except TypeError:
    return False
  return not branches or all(hasattr(b, "residual_branches") for b in blocks)


def find_block_network(denoise, *, branches: bool = False):
  """The network with the block interface behind ``denoise``, or ``None``.

  ``denoise`` itself, or the network inside the wrappers around it that leave its blocks
  alone (a parameterization's ``net``; :func:`jaxdiff._wrappers.through_blocks`), never
  through a wrapper that runs the blocks itself (block skipping, early exit); with
  ``branches=True`` every block must also expose ``residual_branches``.
  """
  for net in through_blocks(denoise):
    if _has_interface(net, branches):
      return net
  return None


def block_network(denoise, *, who: str, branches: bool = False):
  """:func:`find_block_network`, or a ``TypeError`` naming ``who`` (the caller).

  Example:
    >>> from jaxdiff._blocks import block_network
    >>> try:
    ...   block_network(lambda x, t, c: x, who="skip_blocks")
    ... except TypeError as e:
    ...   print(str(e)[:47])
    skip_blocks: the network has no block interface
  """
  net = find_block_network(denoise, branches=branches)
  if net is None:
    stop = opaque(denoise)
    if stop is not None and find_block_network(inner(stop), branches=branches) is not None:
      raise TypeError(
        f"{who}: {type(stop).__name__} runs its network's blocks itself (it skips or exits "
        f"early), so {who} cannot run them through it; apply {who} to the network inside"
      )
    need = " (each block with residual_branches(c))" if branches else ""
    raise TypeError(
      f"{who}: the network has no block interface: it needs encode(x, t, cond) -> "
      f"(h, c, aux), blocks{need} (each block(h, c, perturb) -> h) and "
      "readout(h, c, aux, x), on the denoiser or on its .net (a parameterization "
      "wrapper), e.g. models.DigitDenoiser; got "
      f"{type(denoise).__name__}"
    )
  return net


def perturb_for(net, k: int, perturb):
  """The ``perturb`` flag block ``k`` receives: ``perturb`` if ``k`` is in ``pag_layers``."""
  if perturb is None:
    return None
  layers = getattr(net, "pag_layers", None)
  return perturb if layers is None or k in layers else None


def apply_blocks(
  net,
  h: Array,
  c: Array,
  *,
  perturb=None,
  start: int = 0,
  stop: int | None = None,
  block_fn: Callable | None = None,
) -> Array:
  """Runs blocks ``start .. stop - 1`` of ``net`` on the tokens ``h``.

  ``block_fn(k, block, h, c, p) -> h`` replaces a block's own call ``block(h, c, p)``
  (a cache serving the branches, a mask skipping the block); ``p`` is the ``perturb``
  flag block ``k`` receives (see :func:`perturb_for`).
  """
  blocks = net.blocks
  stop = len(blocks) if stop is None else stop
  for k in range(start, stop):
    p = perturb_for(net, k, perturb)
    block = blocks[k]
    h = block(h, c, p) if block_fn is None else block_fn(k, block, h, c, p)
  return h


def run_blocks(net, x: Array, t: Array, cond, *, perturb=None, block_fn=None) -> Array:
  """``net.readout(apply_blocks(net, *net.encode(x, t, cond)))``: the whole forward pass.

  With ``block_fn=None`` this is the network's own forward pass.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff._blocks import run_blocks
    >>> class Toy:  # tokens are x itself; block 0 adds 1, block 1 doubles
    ...   blocks = (lambda h, c, p: h + 1.0, lambda h, c, p: 2.0 * h)
    ...   encode = staticmethod(lambda x, t, cond: (x, None, None))
    ...   readout = staticmethod(lambda h, c, aux, x: h)
    >>> run_blocks(Toy(), jnp.ones(2), None, None).tolist()
    [4.0, 4.0]
    >>> skip_first = lambda k, block, h, c, p: h if k == 0 else block(h, c, p)
    >>> run_blocks(Toy(), jnp.ones(2), None, None, block_fn=skip_first).tolist()
    [2.0, 2.0]
  """
  h, c, aux = net.encode(x, t, cond)
  h = apply_blocks(net, h, c, perturb=perturb, block_fn=block_fn)
  return net.readout(h, c, aux, x)


def branch_block_fn(branch_fn: Callable) -> Callable:
  """A ``block_fn`` that runs each block as its gated residual branches, the value of
  branch ``j`` (counted over all blocks, in order) coming from
  ``branch_fn(j, h, run) -> value`` where ``run(h)`` computes the branch itself.

  Feature caches store and forecast these values; ``branch_fn = lambda j, h, run: run(h)``
  is the block's own computation. The branch counter lives in the returned function:
  build one per forward pass.
  """
  counter = [0]

  def block_fn(k, block, h, c, p):
    del k
    for gate, branch in block.residual_branches(c):
      j = counter[0]
      counter[0] += 1
      h = h + gate[:, None, :] * branch_fn(j, h, lambda h, branch=branch, p=p: branch(h, p))
    return h

  return block_fn
