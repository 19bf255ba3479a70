"""The network as the sampling loop hands it to guidance rules and correctors.

A :class:`Network` is an immutable pytree around the user's denoiser. A call returns the
output *and* the network with its new state, as equinox's stateful layers do
(``out, state = layer(x, state)``)::

    x0, net = net(x, t, cond)

The state is what the loop needs to know about the calls it did not make itself:

* ``nfe``: network evaluations per sample (a call on ``m * B`` rows, with ``B`` the batch
  of ``x_T``, is ``m`` evaluations: CFG's batched call counts 2);
* ``stats``: counters the denoiser reports per call (a denoiser that declares
  ``stats_names`` and has ``with_stats(x, t, cond, **kw) -> (out, {name: int32})``, such as
  :class:`jaxdiff.models.EarlyExit`'s ``"blocks"``), and those of the cache
  (``"full_nfe"``);
* ``cache_state``: the feature cache's slots (:mod:`jaxdiff.caching`), one per network
  call of a step, in the order the step makes them.

A rule that calls the network inside its own control flow (``lax.cond`` on its state)
uses :meth:`Network.cond`, whose branches call the network uncached: the cache's slots
belong to the calls every step makes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff._module import module, replace, static
from jaxdiff._wrappers import wrapper

Array = jax.Array


@module
class NoCache:
  """The do-nothing cache: every call is the denoiser's own (``sample``'s default).

  Example:
    >>> from jaxdiff import caching
    >>> caching.NoCache().stat_names()
    ()
  """

  def init(self, fn, x_T, ts, cond, calls) -> tuple:
    del fn, x_T, ts, cond, calls
    return ()

  def call(self, net: Network, x, t, cond, kwargs) -> tuple[Array, tuple, dict]:
    out, stats = net.plain(x, t, cond, kwargs)
    return out, net.cache_state, stats

  def stat_names(self) -> tuple[str, ...]:
    return ()

  def external_stats(self, n) -> dict:
    """The counters ``n`` evaluations made outside the network add (none here)."""
    del n
    return {}


@wrapper(inner="fn", blocks=True)
@module
class Network:
  """A denoiser with explicit call state (see the module docstring).

  Build one with :meth:`of`; rules call it and return the new one.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import Network
    >>> net = Network.of(lambda x, t, c: 0.5 * x, batch=2)
    >>> x0, net = net(jnp.ones((4, 3)), jnp.zeros(4), None)  # a batched call: 2 evaluations
    >>> x0.shape, int(net.nfe)
    ((4, 3), 2)
  """

  fn: Any = static()
  batch: int = static()
  nfe: Array
  stats: dict
  cache: Any
  cache_state: tuple
  step: Array
  slot: int = static(0)
  live: bool = static(True)

  @classmethod
  def of(cls, fn, *, batch: int, cache=None, cache_state=(), step=0, live=True) -> Network:
    """A fresh network around ``fn`` (zero counts) for an ``x_T`` of ``batch`` rows;
    ``live=False``: every call is uncached."""
    cache = NoCache() if cache is None else cache
    names = tuple(getattr(fn, "stats_names", ())) + tuple(cache.stat_names())
    stats = {name: jnp.zeros((), jnp.int32) for name in names}
    return cls(
      fn,
      int(batch),
      jnp.zeros((), jnp.int32),
      stats,
      cache,
      cache_state,
      jnp.asarray(step, jnp.int32),
      0,
      bool(live),
    )

  def evaluations(self, x) -> int:
    """Evaluations per sample that a call on ``x`` makes (``x.shape[0] // batch``, >= 1)."""
    return max(x.shape[0] // self.batch, 1)

  def plain(self, x, t, cond, kwargs) -> tuple[Array, dict]:
    """The denoiser's own call and the counters it reports (``{}`` if it declares none)."""
    if getattr(self.fn, "stats_names", ()):
      return self.fn.with_stats(x, t, cond, **kwargs)
    return self.fn(x, t, cond, **kwargs), {}

  def __call__(self, x, t, cond=None, **kwargs) -> tuple[Array, Network]:
    out, cache_state, stats = self.cache.call(self, x, t, cond, kwargs)
    slot = self.slot + 1 if self.live else self.slot
    new_stats = dict(self.stats)
    for name, value in stats.items():
      new_stats[name] = new_stats[name] + jnp.asarray(value, jnp.int32)
    nfe = self.nfe + jnp.int32(self.evaluations(x))
    return out, replace(self, nfe=nfe, stats=new_stats, cache_state=cache_state, slot=slot)

  def uncached(self) -> Network:
    """The network whose calls bypass the cache (the full network, no slot), counted as
    any call: for calls inside a transformation of the rule's own (``jax.vjp``) or its
    control flow. Hand the result's counts back with :meth:`restore`."""
    return replace(self, live=False)

  def restore(self, like: Network) -> Network:
    """This network's counts and state, with ``like``'s cache participation and slot."""
    return replace(self, live=like.live, slot=like.slot)

  def count(self, n) -> Network:
    """The network with ``n`` more evaluations per sample counted that were made outside
    it (a weak model, Jacobian-vector probes): ``nfe`` and the cache's counters
    (``"full_nfe"``: they ran a whole network), no slot and no denoiser counters."""
    n = jnp.asarray(n, jnp.int32)
    stats = dict(self.stats)
    for name, value in self.cache.external_stats(n).items():
      stats[name] = stats[name] + value
    return replace(self, nfe=self.nfe + n, stats=stats)

  def at_step(self, step) -> Network:
    """The network for the calls of step ``step`` (the slots start again)."""
    return replace(self, step=jnp.asarray(step, jnp.int32), slot=0)

  def skip_calls(self, n: int) -> Network:
    """As if ``n`` slot calls were made (the branch of a ``lax.cond`` that makes none)."""
    return replace(self, slot=self.slot + n)

  def cond(self, pred, true_fn, false_fn, *operands):
    """``lax.cond`` over functions ``f(net, *operands) -> (out, net)`` that call the
    network: inside, calls are uncached (both branches then return the same state
    structure); the counts they make are kept."""
    inner = self.uncached()

    def branch(fn):
      return lambda ops: fn(inner, *ops)

    out, net = jax.lax.cond(pred, branch(true_fn), branch(false_fn), operands)
    return out, net.restore(self)


def as_network(denoise, x) -> Network:
  """``denoise`` as a :class:`Network` for a batch like ``x`` (a network passes through)."""
  if isinstance(denoise, Network):
    return denoise
  return Network.of(denoise, batch=x.shape[0])
