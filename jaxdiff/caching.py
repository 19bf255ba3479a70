"""jaxdiff.caching: feature caches for transformer denoisers, the ``cache`` seam of
:func:`jaxdiff.sample` (``grid -> [cache o network] -> guidance -> solver``).

Pass a rule as ``jaxdiff.sample(..., cache=...)``. At the steps the rule marks as reuse,
every block's residual branches (attention and MLP outputs) come from the rule's cache
instead of the network; the embedding, the adaLN gates and the readout still run. The
denoiser must expose its blocks (the protocol of :mod:`jaxdiff._caching`;
:class:`jaxdiff.models.DigitDenoiser` does). Every rule composes with every solver,
guidance rule, corrector and schedule (a call a guidance rule makes inside its own
``lax.cond``, as adaptive guidance does, runs the full network and counts as full).
"""

from jaxdiff._caching import CacheRule, ERTACache, Fora, TaylorSeer, ertacache, fora, taylorseer

__all__ = ["CacheRule", "ERTACache", "Fora", "TaylorSeer", "ertacache", "fora", "taylorseer"]
