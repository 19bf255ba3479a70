"""jaxdiff.correctors: Langevin-type correctors that :func:`jaxdiff.sample` runs after each step.

Pass one as ``jaxdiff.sample(..., corrector=...)``; its network evaluations are counted
in ``nfe``. :class:`NoCorrector` (``none()``) is ``sample``'s default. It composes with
every solver, guidance rule and schedule.
"""

from jaxdiff._correctors import (
  LML,
  Corrector,
  Langevin,
  LMLState,
  NoCorrector,
  langevin,
  lml,
  none,
)

__all__ = ["Corrector", "LML", "LMLState", "Langevin", "NoCorrector", "langevin", "lml", "none"]
