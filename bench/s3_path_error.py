"""S³ at NFE 8-10 on the exact mixture with a path-error fitness.

The search section of ``bench/sampling_accelerators.py`` scores S³ by the SW2 of 512
samples; at NFE 8-10 the fixed solvers' SW2 (0.056 / 0.042) is below that fitness's noise
(0.066 ± 0.013), so the comparison there had no resolution. Here the fitness is the
discretisation error itself: the RMS distance of each sample to the endpoint of the
probability-flow ODE from the same noise (a tight diffrax solve, float64), on 256 paths;
the held-out metric is the same on 1000 other paths. The problem, the grids, the fixed
solvers and the S³ settings (64 true evaluations, 4 rounds x 1024 predicted) are the
search section's.

    python bench/s3_path_error.py     # NFE 8 and 10, 3 search keys each (about 1 minute)

Writes bench/results/s3_path_error.json.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from _accel_search import FIXED, _fixed, _summary, compare
from _timing import output_path
from sampling_accelerators import DIM, SCHED, make_problem

import jaxdiff
from jaxdiff import solvers
from jaxdiff.testing import probability_flow_reference

NFES = (8, 10)
SEARCH_KEYS = (0, 1, 2)  # three searches per NFE: the search's own spread


def main() -> None:
  t0 = time.perf_counter()
  _, denoisers, _, _ = make_problem()
  den = denoisers["exact"]
  grid = jaxdiff.schedules.timesteps(SCHED, NFES[0])
  t_start, t_end = float(grid.t[0]), float(grid.t[-1])
  x_fit = jax.random.normal(jax.random.key(21), (256, DIM))
  x_eval = jax.random.normal(jax.random.key(0), (1000, DIM))
  with jax.enable_x64(True):
    ref = lambda x: np.asarray(
      probability_flow_reference(
        den, SCHED, jnp.asarray(x, jnp.float64), t_start, t_end, rtol=1e-9, atol=1e-9
      ),
      np.float32,
    )
    ref_fit, ref_eval = ref(x_fit), ref(x_eval)

  @jax.jit
  def sq_errors(solver, grid, x_T, target):
    x = jaxdiff.sample(den, solver, x_T, grid, key=0).x
    return jnp.sum(jnp.square(x - target), axis=1)  # per path

  def errors(s, x, r):
    return np.asarray(sq_errors(solvers.usf(s.steps, all_branches=True), s.grid(SCHED), x, r))

  fit = lambda s: float(np.sqrt(errors(s, x_fit, ref_fit).mean()))

  def held_out(s):
    e = errors(s, x_eval, ref_eval)
    rms = float(np.sqrt(e.mean()))
    # The paths' standard error of the RMS (delta method on the mean squared error).
    return {"path_rms": rms, "path_rms_se": float(e.std(ddof=1) / np.sqrt(e.size) / (2 * rms))}

  out = {
    "setting": {
      "problem": "64-D 8-component mixture, exact denoiser, vp_linear",
      "fitness": "RMS distance to the PF-ODE endpoint (diffrax, f64, rtol 1e-9), 256 paths",
      "held_out": "the same on 1000 other paths",
      "s3": "64 true evaluations, 4 rounds x 1024 predicted, seeded with DPM++(2M)/UniPC",
    }
  }
  for nfe in NFES:
    for key in SEARCH_KEYS:
      rows, info = compare(SCHED, nfe, fit, held_out, budget=64, rounds=4, candidates=1024, key=key)
      best, fixed, s3 = _summary(rows, "path_rms")
      # Paired over the same held-out paths: S3's mean squared error minus the best fixed
      # solver's, with its standard error.
      named = {f"{FIXED[n]}, {g}": sch for (n, g), sch in _fixed(SCHED, nfe).items()}
      found = jaxdiff.search.SolverSchedule.from_json(info["schedule"])
      diff = errors(found, x_eval, ref_eval) - errors(named[best], x_eval, ref_eval)
      paired = {"mean": float(diff.mean()), "se": float(diff.std(ddof=1) / np.sqrt(diff.size))}
      print(
        f"NFE {nfe:2d} key {key}: best fixed {best:18s} RMS {fixed:.4f}  S3 {s3:.4f};"
        f" paired MSE difference {paired['mean']:+.4f} +- {paired['se']:.4f}"
      )
      out[f"NFE {nfe} key {key}"] = {"rows": rows, "search": info, "paired_mse_diff": paired}
  out["seconds"] = time.perf_counter() - t0
  path = output_path("s3_path_error.json", False)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))
  print(f"wrote {path} ({out['seconds']:.0f} s)")


if __name__ == "__main__":
  main()
