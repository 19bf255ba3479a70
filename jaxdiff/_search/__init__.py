"""The sampling-schedule searches behind :mod:`jaxdiff.search`, one topic per module.

* ``_grid``: the time table candidates live on and the search's host-side generator;
* ``_population``: the evolutionary population loop (AutoDiffusion, Alg. 1);
* ``_timesteps``: AutoDiffusion's timestep search (``evolve_timesteps``);
* ``_skip``: AutoDiffusion's block skipping (``skip_blocks``) and its search with the
  timesteps (``evolve_skips``);
* ``_s3``: S³'s predictor-based search over USF solver schedules (``s3_search``).

This package exports nothing: :mod:`jaxdiff.search` imports from the modules.
"""
