"""jaxdiff.search: training-free search for sampling schedules.

Results are ordinary arrays of times (``jaxdiff.timesteps_from(schedule, result.t)``),
to save and reuse with any solver, guidance rule or corrector.
"""

from jaxdiff._search import SearchResult, evolve_timesteps

__all__ = ["SearchResult", "evolve_timesteps"]
