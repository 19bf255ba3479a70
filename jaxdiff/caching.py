"""jaxdiff.caching: feature caches for transformer denoisers, the ``cache`` seam of
:func:`jaxdiff.sample` (``grid -> [cache o network] -> guidance -> solver``).

Pass a rule as ``jaxdiff.sample(..., cache=...)``. At the steps the rule marks as reuse,
every block's residual branches (attention and MLP outputs) come from the rule's cache
instead of the network; the embedding, the adaLN gates and the readout still run. The
denoiser must have the block interface of :mod:`jaxdiff._blocks` with blocks that expose
their residual branches (:class:`jaxdiff.models.DigitDenoiser` does). Every rule composes
with every solver, corrector and schedule, and with every guidance rule that declares its
network calls (``rule.calls``); a call a guidance rule makes inside its own ``lax.cond``
(through :meth:`jaxdiff.Network.cond`) runs the full network and counts as full.
:class:`NoCache` is ``sample``'s default: every call is the network's own. Rules are
immutable pytrees; the count of full evaluations is ``result.stats["full_nfe"]``.
"""

from jaxdiff._caching import CacheRule, Fora, TaylorSeer, fora, taylorseer
from jaxdiff._ertacache import ERTACache, ertacache
from jaxdiff._network import NoCache

__all__ = [
  "CacheRule",
  "ERTACache",
  "Fora",
  "NoCache",
  "TaylorSeer",
  "ertacache",
  "fora",
  "taylorseer",
]
