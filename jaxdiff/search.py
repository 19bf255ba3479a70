"""jaxdiff.search: training-free search for sampling schedules.

Results are ordinary data: arrays of times (``jaxdiff.timesteps_from(schedule, result.t)``),
to save and reuse with any solver, guidance rule or corrector, (S³) a
:class:`SolverSchedule` of per-step USF decisions plus times, and (AutoDiffusion's block
skipping) a :class:`SkipSchedule` of times plus per-step block masks, both saved as JSON.
"""

from jaxdiff._search import (
  S3Result,
  SearchResult,
  SkipBlocks,
  SkipSchedule,
  SkipSearchResult,
  SolverSchedule,
  evolve_skips,
  evolve_timesteps,
  s3_search,
  skip_blocks,
)

__all__ = [
  "S3Result",
  "SearchResult",
  "SkipBlocks",
  "SkipSchedule",
  "SkipSearchResult",
  "SolverSchedule",
  "evolve_skips",
  "evolve_timesteps",
  "s3_search",
  "skip_blocks",
]
