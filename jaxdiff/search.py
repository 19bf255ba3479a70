"""jaxdiff.search: training-free search for sampling schedules.

Results are ordinary data: arrays of times (``jaxdiff.timesteps_from(schedule, result.t)``),
to save and reuse with any solver, guidance rule or corrector, and (S³) a
:class:`SolverSchedule` of per-step USF decisions plus times, saved as JSON.
"""

from jaxdiff._search import S3Result, SearchResult, SolverSchedule, evolve_timesteps, s3_search

__all__ = ["S3Result", "SearchResult", "SolverSchedule", "evolve_timesteps", "s3_search"]
