"""S³ (USF solver-schedule search) vs the best fixed solver: the ``search`` section of
``bench/sampling_accelerators.py`` (``--only search``).

For each NFE in (4, 5, 6, 8, 10):
  * fixed: DDIM, DPM-Solver++(2M) and UniPC (bh2, order 2 + UniC), each on the uniform-t
    and the uniform-logSNR grid; the best grid per solver and the best of all six;
  * S³ (``jaxdiff.search.s3_search``): ``budget`` true evaluations, seeded with the
    DPM-Solver++(2M) and UniPC decisions on both grids; the searched schedule is then
    measured on held-out noise.
Every run, fixed solvers included, is a USF solver (``solvers.usf_steps`` gives DDIM and
UniPC bit for bit, DPM-Solver++(2M) to rounding) with ``all_branches=True``, so one
compilation per (problem, NFE) serves the whole table.

The block-skipping study (AutoDiffusion stage 2, :func:`skip_study`) runs alone:
``python bench/sampling_accelerators.py --only skip [--quick]`` writes
bench/results/sampling_accelerators_skip.json.

Problems
  * mixture: the 64-D, 8-component Gaussian mixture of the study (exact denoiser and the
    imperfect one, ``(1 - 0.3 sigma_t^2) x0``); fitness SW2 of 512 samples to the 8000
    true ones (projection key 8); held-out metric SW2 of 2000 other samples (key 7, the
    study's metric);
  * digits: the demo's cached class-conditional DiT (``DemoConfig.full()``, v-prediction,
    no guidance); fitness FD of the demo classifier's features of 200 samples (20 per
    class) to the held-out digits; held-out metric FD and class accuracy of 300 other
    samples (30 per class).
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxdiff
from jaxdiff import metrics, schedules, search, solvers

NFES = (4, 5, 6, 8, 10)
SHIPPED = (
  pathlib.Path(__file__).resolve().parents[1] / "jaxdiff" / "demo" / "searched_schedules.json"
)
FIXED = {"ddim": "DDIM", "dpmpp_2m": "DPM++(2M)", "unipc": "UniPC"}
SPACINGS = {"uniform t": "uniform", "logSNR": "logsnr"}


def _fixed(sched, nfe):
  out = {}
  for name in FIXED:
    for gname, spacing in SPACINGS.items():
      t = np.asarray(schedules.timesteps(sched, nfe, spacing=spacing).t, np.float64)
      out[(name, gname)] = search.SolverSchedule(solvers.usf_steps(name, nfe), t)
  return out


def compare(sched, nfe, fit, held_out, *, budget, rounds, candidates, key=0):
  """One NFE: the six fixed (solver, grid) pairs and S³, measured by ``held_out``."""
  fixed = _fixed(sched, nfe)
  rows = {f"{FIXED[n]}, {g}": held_out(s) for (n, g), s in fixed.items()}
  t = next(iter(fixed.values())).t
  seeds = [s for (n, g), s in fixed.items() if n != "ddim" and g == "logSNR"]
  t0 = time.perf_counter()
  res = search.s3_search(
    fit,
    t[0],
    t[-1],
    nfe,
    key=key,
    budget=budget,
    rounds=rounds,
    candidates=candidates,
    initial=seeds,
  )
  secs = time.perf_counter() - t0
  rows["S3"] = held_out(res.schedule)
  return rows, {
    "evaluations": res.evaluations,
    "seconds_under_load": secs,
    "fit_history": [float(v) for v in res.history],
    "predictor_spearman_last_round": res.predictor_corr,
    "schedule": res.schedule.to_json(),
  }


def _summary(rows, key):
  best_fixed = min((r for n, r in rows.items() if n != "S3"), key=lambda r: r[key])
  name = next(n for n, r in rows.items() if r is best_fixed)
  return name, best_fixed[key], rows["S3"][key]


def mixture(denoisers, true, sched, quick):
  n_fit, n_eval = (256, 512) if quick else (512, 2000)
  x_fit = jax.random.normal(jax.random.key(21), (n_fit, true.shape[1]))
  x_eval = jax.random.normal(jax.random.key(0), (n_eval, true.shape[1]))
  budget, rounds, cands = (12, 2, 128) if quick else (64, 4, 1024)
  nfes = (5,) if quick else NFES
  out = {}
  for den_name, den in denoisers.items():

    @jax.jit
    def sw(solver, grid, x_T, pkey, true, den=den):
      x = jaxdiff.sample(den, solver, x_T, grid, key=0).x
      return metrics.sliced_wasserstein(x, true, key=pkey, num_projections=256)

    run = lambda s, x_T, k: float(
      sw(solvers.usf(s.steps, all_branches=True), s.grid(sched), x_T, k, true)
    )
    fit = lambda s: run(s, x_fit, jax.random.key(8))
    held_out = lambda s: {"sw": run(s, x_eval, jax.random.key(7))}
    for nfe in nfes:
      rows, info = compare(
        sched, nfe, fit, held_out, budget=budget, rounds=rounds, candidates=cands
      )
      best, fixed_sw, s3_sw = _summary(rows, "sw")
      print(
        f"[search] mixture {den_name:9s} NFE {nfe:2d}: best fixed {best:24s} SW {fixed_sw:.4f}"
        f"  S3 {s3_sw:.4f}  ({info['evaluations']} evals, {info['seconds_under_load']:.0f} s)"
      )
      out[f"{den_name} NFE {nfe}"] = {"rows": rows, "search": info}
  return out


def _batch(per_class, seed):
  """Starting noise and labels: ``per_class`` samples of each digit."""
  labels = jnp.asarray(np.repeat(np.arange(10), per_class), jnp.int32)
  return jax.random.normal(jax.random.key(seed), (labels.shape[0], 8, 8)), labels


def _digits_models():
  """The demo's cached models (``DemoConfig.full()``), its digits and the FD evaluator."""
  from _digits import demo_models

  _, _, models, evaluator = demo_models()
  return models, evaluator


def digits(quick):
  from flax import nnx

  t0 = time.perf_counter()
  models, evaluator = _digits_models()
  print(f"[search] digits models ready in {time.perf_counter() - t0:.0f} s")
  sched = models.schedule
  gd, params = nnx.split(models.denoiser)

  @jax.jit
  def draw(params, solver, grid, x_T, labels):
    den = jaxdiff.from_v(nnx.merge(gd, params), sched)
    return jaxdiff.sample(den, solver, x_T, grid, key=0, cond=labels).x

  fit_batch, eval_batch = _batch(10 if quick else 20, 31), _batch(10 if quick else 30, 32)

  def run(s, xb):
    x_T, labels = xb
    x = draw(params, solvers.usf(s.steps, all_branches=True), s.grid(sched), x_T, labels)
    return evaluator(np.asarray(x), np.asarray(labels))

  fit = lambda s: run(s, fit_batch)["fd"]

  def held_out(s):
    r = run(s, eval_batch)
    return {"fd": r["fd"], "accuracy": r["accuracy"]}

  budget, rounds, cands = (8, 1, 64) if quick else (32, 4, 1024)
  out = {}
  for nfe in (5,) if quick else NFES:
    rows, info = compare(sched, nfe, fit, held_out, budget=budget, rounds=rounds, candidates=cands)
    best, fixed_fd, s3_fd = _summary(rows, "fd")
    print(
      f"[search] digits NFE {nfe:2d}: best fixed {best:24s} FD {fixed_fd:.3f} "
      f"(acc {rows[best]['accuracy']:.3f})  S3 FD {s3_fd:.3f} (acc {rows['S3']['accuracy']:.3f})"
      f"  ({info['evaluations']} evals, {info['seconds_under_load']:.0f} s)"
    )
    out[f"NFE {nfe}"] = {"rows": rows, "search": info}
  if not quick:  # the demo's "Searched schedule" section reads these
    ship = {k.split()[1]: v["search"]["schedule"] for k, v in out.items()}
    SHIPPED.write_text(json.dumps(ship, indent=1) + "\n")
    print(f"[search] wrote {SHIPPED}")
  return out


def s3_section(denoisers, true, sched, quick, with_digits=True):
  out = {
    "setting": {
      "fixed": "DDIM / DPM++(2M) / UniPC(bh2, 2, UniC) on uniform-t and logSNR grids",
      "s3": "budget true evaluations: mixture 64 (4 rounds x 1024 predicted), digits 32",
      "fitness_mixture": "SW2 of 512 samples (projection key 8); held out: 2000 samples, key 7",
      "fitness_digits": "FD of classifier features, 200 samples; held out: 300 samples",
      "under_load": True,
    },
    "mixture": mixture(denoisers, true, sched, quick),
  }
  if with_digits:
    out["digits"] = digits(quick)
  return out


def run(quick, make_problem, sched, with_digits=True):
  """The section alone: writes bench/results/sampling_accelerators_search.json."""
  from _timing import output_path

  t0 = time.perf_counter()
  _, denoisers, true, _ = make_problem()
  out = s3_section(denoisers, true, sched, quick, with_digits)
  out["seconds"] = time.perf_counter() - t0
  path = output_path("sampling_accelerators_search.json", quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))
  print(f"\nwrote {path} ({out['seconds']:.0f} s)")


# ---------------------------------------------------------------------------------------
# AutoDiffusion's block skipping (``python bench/sampling_accelerators.py --only skip``)

SKIP_BUDGETS = (3, 4, 5, 6)  # in steps of the full network: budget = steps x depth blocks


def skip_study(quick):
  """Digits: (timesteps, block masks) searched by ``search.evolve_skips`` vs plain
  DPM-Solver++(2M) at the same number of blocks evaluated.

  For a budget of ``n`` full-network steps (``n * K`` blocks, ``K`` = the DiT's depth, 2 in
  the demo): DPM-Solver++(2M) with ``n`` steps on the uniform-t and the logSNR grid (the
  better one is the baseline); the search with ``num_steps = n`` (all blocks fit: the
  paper's stage 1, timesteps only) and with ``n + 1`` and ``n + 2`` steps (the budget
  forces ``K`` resp. ``2K`` skipped blocks: blocks traded for steps). The search is seeded
  with the logSNR grid; fitness FD on 200 samples, measured on 300 held-out samples.
  """
  from flax import nnx

  models, evaluator = _digits_models()
  sched = models.schedule
  depth = len(models.denoiser.blocks)
  gd, params = nnx.split(models.denoiser)
  solver = solvers.dpmpp_2m()

  @jax.jit
  def draw(params, mask, t, x_T, labels):
    net = search.skip_blocks(nnx.merge(gd, params), mask, t)
    grid = jaxdiff.timesteps_from(sched, t)
    return jaxdiff.sample(jaxdiff.from_v(net, sched), solver, x_T, grid, key=0, cond=labels).x

  fit_batch, eval_batch = _batch(10 if quick else 20, 31), _batch(10 if quick else 30, 32)

  def run(s, xb):
    x_T, labels = xb
    x = draw(params, jnp.asarray(s.mask), jnp.asarray(s.t, jnp.float32), x_T, labels)
    return evaluator(np.asarray(x), np.asarray(labels))

  def held_out(s):
    r = run(s, eval_batch)
    return {"fd": r["fd"], "accuracy": r["accuracy"], "blocks": s.blocks, "steps": len(s.mask)}

  kw = dict(population=8, generations=2, top_k=2) if quick else {}
  out = {}
  for n in (4,) if quick else SKIP_BUDGETS:
    budget = n * depth
    rows = {}
    for gname, spacing in SPACINGS.items():
      t = np.asarray(schedules.timesteps(sched, n, spacing=spacing).t, np.float64)
      rows[f"DPM++(2M) {n} steps, {gname}"] = held_out(
        search.SkipSchedule(t, np.ones((n, depth), bool))
      )
    info = {}
    for steps in (n, n + 1, n + 2):
      t = np.asarray(schedules.timesteps(sched, steps, spacing="logsnr").t, np.float64)
      seed = search.SkipSchedule.spread(t, depth, budget)
      t0 = time.perf_counter()
      res = search.evolve_skips(
        lambda s: run(s, fit_batch)["fd"],
        t[0],
        t[-1],
        steps,
        depth,
        block_budget=budget,
        key=0,
        initial=[seed],
        **kw,
      )
      secs = time.perf_counter() - t0
      name = f"searched {steps} steps"
      rows[name] = held_out(res.schedule)
      info[name] = {
        "evaluations": res.evaluations,
        "seconds_under_load": secs,
        "fit_history": [float(v) for v in res.history],
        "schedule": res.schedule.to_json(),
      }
    best = min((k for k in rows if k.startswith("DPM")), key=lambda k: rows[k]["fd"])
    line = "  ".join(
      f"{k.split(',')[0] if k.startswith('DPM') else k}: FD {r['fd']:.3f} acc {r['accuracy']:.3f}"
      for k, r in rows.items()
      if not k.startswith("DPM") or k == best
    )
    print(f"[skip] budget {budget} blocks ({n} x {depth}): {line}")
    out[f"budget {budget}"] = {"rows": rows, "search": info, "best_fixed": best}
  return out


def run_skip(quick: bool) -> None:
  """The block-skipping study (``sampling_accelerators.py --only skip``): writes
  bench/results/sampling_accelerators_skip.json."""
  from _timing import output_path

  t0 = time.perf_counter()
  result = {
    "setting": {
      "model": "demo DiT (DemoConfig.full(), v-prediction, 2 blocks), no guidance",
      "solver": "DPM-Solver++(2M) for every row",
      "budget": "blocks evaluated per sample = full-network steps x depth",
      "search": "evolve_skips, population 16, 8 generations, top 4, mutation 0.25",
      "fitness": "FD of classifier features, 200 samples; held out: 300 samples",
      "under_load": True,
    },
    "digits": skip_study(quick),
  }
  result["seconds"] = time.perf_counter() - t0
  path = output_path("sampling_accelerators_skip.json", quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=1))
  print(f"\nwrote {path} ({result['seconds']:.0f} s)")
