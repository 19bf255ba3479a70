"""Training-free sampling speed-ups on the demo's cached denoiser: TaylorSeer feature
caching against full computation (:mod:`jaxdiff.caching`), and the shipped S³ solver
schedule against DPM-Solver++(2M) at the same small NFE (:mod:`jaxdiff.search`).

The studies behind the README's tables are ``bench/sampling_accelerators.py --only cache``
and ``--only search``; the demo runs one small setting of each.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import (
  caching,
  from_v,
  guidance,
  sample,
  schedules,
  search,
  solvers,
)
from jaxdiff._caching import call_flops
from jaxdiff.demo import _figures as fig

__all__ = ["feature_caching", "searched_schedule"]


def feature_caching(config, models, evaluator, labels, key, out) -> dict:
  """TaylorSeer vs full computation at equal steps (CFG, DPM-Solver++(2M)): FD, accuracy,
  full/partial evaluations, FLOP ratio (XLA's count per call) and wall ratio; a figure."""
  den = from_v(models.denoiser, models.schedule)
  ts = schedules.timesteps(models.schedule, config.cache_steps, spacing="logsnr")
  y = jnp.asarray(labels)
  x_T = jax.random.normal(jax.random.fold_in(key, 7), (len(labels), 8, 8))
  cfg = guidance.cfg(config.scale_of("cfg"))
  full_f, part_f = call_flops(den, x_T, jnp.full((len(labels),), 0.5), y)
  rule = caching.taylorseer(config.cache_interval, config.cache_order)
  rows, samples = [], []
  settings = (("full computation", None), (f"TaylorSeer {rule.interval}/{rule.order}", rule))
  for name, cache in settings:
    run = lambda: sample(den, solvers.dpmpp_2m(), x_T, ts, key=1, cond=y, guidance=cfg, cache=cache)
    res = jax.block_until_ready(run())  # compiles
    t0 = time.perf_counter()
    res = jax.block_until_ready(run())
    wall = time.perf_counter() - t0
    nfe = int(res.nfe)
    full = int(res.stats.get("full_nfe", nfe))
    flops = (full * full_f + (nfe - full) * part_f) / (nfe * full_f)
    x = np.asarray(res.x)
    rms = float(np.sqrt(np.mean((x - samples[0][1]) ** 2))) if samples else 0.0
    rows.append(
      {"setting": name, "nfe": nfe, "full_nfe": full, "flop_ratio": flops, "wall_s": wall}
      | {k: v for k, v in evaluator(x, labels).items() if k in ("fd", "accuracy")}
      | {"rms_to_full": rms}
    )
    samples.append((name, x))
  fig.save_panels(
    out / "feature_caching.png", samples, labels, 10, "feature caching (CFG, DPM-Solver++(2M))"
  )
  return {"steps": config.cache_steps, "ceiling": full_f / part_f, "rows": rows}


def searched_schedule(config, models, evaluator, labels, key, out) -> dict:
  """The shipped S³ schedule vs DPM-Solver++(2M) (logSNR grid) at ``searched_nfe``
  evaluations, unguided, same noise: FD, accuracy and a figure."""
  shipped = json.loads((pathlib.Path(__file__).parent / "searched_schedules.json").read_text())
  if str(config.searched_nfe) not in shipped:
    raise ValueError(
      f"searched_nfe = {config.searched_nfe} has no shipped schedule; shipped: {sorted(shipped)}"
    )
  found = search.SolverSchedule.from_json(shipped[str(config.searched_nfe)])
  den = from_v(models.denoiser, models.schedule)
  y = jnp.asarray(labels)
  x_T = jax.random.normal(jax.random.fold_in(key, 11), (len(labels), 8, 8))
  n = config.searched_nfe
  logsnr = schedules.timesteps(models.schedule, n, spacing="logsnr")
  runs = (
    ("DPM-Solver++(2M), logSNR grid", solvers.dpmpp_2m(), logsnr),
    ("S³ schedule (USF)", found.solver(), found.grid(models.schedule)),
  )
  rows, samples = [], []
  for name, solver, ts in runs:
    res = sample(den, solver, x_T, ts, key=1, cond=y)
    r = evaluator(np.asarray(res.x), labels)
    rows.append({"setting": name, "nfe": int(res.nfe), "fd": r["fd"], "accuracy": r["accuracy"]})
    samples.append((name, np.asarray(res.x)))
  fig.save_panels(out / "searched_schedule.png", samples, labels, 10, f"{n} evaluations, unguided")
  return {"nfe": n, "rows": rows, "steps": [c._asdict() for c in found.steps]}
