"""jaxdiff.search: training-free search for sampling schedules.

Results are ordinary data: arrays of times (``jaxdiff.timesteps_from(schedule, result.t)``),
to save and reuse with any solver, guidance rule or corrector, (S³) a
:class:`SolverSchedule` of per-step USF decisions plus times, and (AutoDiffusion's block
skipping) a :class:`SkipSchedule` of times plus per-step block masks, both saved as JSON.
"""

from jaxdiff._search._s3 import S3Result, SolverSchedule, s3_search
from jaxdiff._search._skip import (
  SkipBlocks,
  SkipSchedule,
  SkipSearchResult,
  evolve_skips,
  skip_blocks,
)
from jaxdiff._search._timesteps import SearchResult, evolve_timesteps

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
