"""Training-free sampling improvements on an exact Gaussian mixture: quality vs NFE and time.

The testbed is a 64-dimensional, 8-component Gaussian mixture (VP-linear schedule, the
DDPM one TS-DPM was tuned on) sampled with
  * the exact denoiser, and
  * a deliberately imperfect one, ``x0_hat = (1 - c sigma_t^2) D(x, t)`` with ``c = 0.3``
    (an error that shrinks predictions most at high noise, the shape of error behind
    exposure bias: the states drift off the marginal's variance, which the Time-Shift
    Sampler's variance matching is built to see).
Quality: sliced Wasserstein distance (SW2, 256 projections) of 2000 samples to 8000 true
samples, and the gap between the mean per-sample pixel variance of the samples and of
the data (|var gap|). Speed: wall time per call relative to the base solver at the same
NFE, measured in interleaved rounds in this process (``bench/_timing.py``).

Sections
  (a) correctors: solver at N/2 steps + Langevin / LML after every step (~N NFE) vs the
      solver at N steps, and the solver + corrector at N steps (2N NFE);
  (b) Time-Shift: ddim / ddpm / dpmpp_2m / unipc with and without the shift, same NFE;
  (c) search: the best evolutionary timestep grid (jaxdiff.search) vs the base grid.
  Digits-model sections, each alone with ``--only NAME`` and each writing
  bench/results/sampling_accelerators_NAME.json:
  cache (``bench/_accel_cache.py``): FORA / TaylorSeer / ERTACache vs full computation;
  exit (``bench/_accel_exit.py``): DeeDiff early exit vs fewer full steps;
  search (``bench/_accel_search.py``): S³'s USF schedules vs the best fixed solver at
      NFE 4-10, on the mixture and the digits model;
  skip (``bench/_accel_search.py``): AutoDiffusion's timesteps + block masks at equal blocks.

Writes bench/results/sampling_accelerators.json (sections a-c).
Run: .venv/bin/python bench/sampling_accelerators.py [--quick] [--only cache|exit|search|skip]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from _timing import compare, output_path

import jaxdiff
from jaxdiff import correctors, metrics, schedules, search, solvers
from jaxdiff.testing import GaussianMixture, probability_flow_reference

SCHED = schedules.vp_linear()
DIM = 64
ERR = 0.3


def make_problem():
  rng = np.random.default_rng(0)
  means = rng.normal(size=(8, DIM)) * 1.0
  gmm = GaussianMixture(means, 0.1)
  exact = gmm.denoiser(SCHED)

  def imperfect(x, t, cond=None):
    s2 = jnp.square(SCHED.sigma(t)).astype(x.dtype)
    return (1.0 - ERR * s2)[:, None] * exact(x, t, cond)

  true = gmm.sample(jax.random.key(123), 8000)
  data_var = float(jnp.mean(jnp.var(true, axis=1, ddof=1)))
  return gmm, {"exact": exact, "imperfect": imperfect}, true, data_var


def quality(x, true):
  sw = float(metrics.sliced_wasserstein(x, true, key=7, num_projections=256))
  gap = abs(float(jnp.mean(jnp.var(x, axis=1, ddof=1)) - jnp.mean(jnp.var(true, axis=1, ddof=1))))
  return sw, gap


def run_rows(rows, denoisers, true, n_samples, rounds, baseline):
  """rows: name -> (solver, grid, kwargs). Returns name -> {den: metrics} (+ time ratios)."""
  x_T = jax.random.normal(jax.random.key(0), (n_samples, DIM))
  out = {}
  for den_name, den in denoisers.items():
    fns = {}
    for name, (solver, ts, kw) in rows.items():
      fns[name] = lambda solver=solver, ts=ts, kw=kw: (
        jaxdiff.sample(den, solver, x_T, ts, key=1, **kw).x
      )
    for name, (solver, ts, kw) in rows.items():
      res = jaxdiff.sample(den, solver, x_T, ts, key=1, **kw)
      sw, gap = quality(res.x, true)
      out.setdefault(name, {})[den_name] = {"sw": sw, "var_gap": gap, "nfe": int(res.nfe)}
    if den_name == "exact":
      timing = compare(fns, baseline=baseline, rounds=rounds)
      for name in rows:
        out[name]["time_ratio"] = timing[name].ratio
  return out


def print_table(title, table):
  print(f"\n{title}")
  print(
    f"{'method':44s} {'NFE':>4s} {'SW exact':>9s} {'SW imperf':>9s} {'|var gap| imp':>13s} "
    f"{'time':>6s}"
  )
  for name, r in table.items():
    ex, im = r["exact"], r["imperfect"]
    tr = r.get("time_ratio")
    print(
      f"{name:44s} {ex['nfe']:4d} {ex['sw']:9.4f} {im['sw']:9.4f} {im['var_gap']:13.4f} "
      f"{(tr if tr is not None else float('nan')):6.2f}"
    )


CORRECTORS = {
  "Langevin(0.16)": correctors.langevin(0.16),
  "LML(lamb=64)": correctors.lml(64.0),
  "LML(lamb=64, kappa=0.5)": correctors.lml(64.0, kappa=0.5),
}


def correctors_section(denoisers, true, nfes, n_samples, rounds):
  results = {}
  for nfe in nfes:
    half = max(nfe // 2, 1)
    g_full = schedules.timesteps(SCHED, nfe)
    g_half = schedules.timesteps(SCHED, half)
    rows = {}
    for sname in ("ddim", "dpmpp_2m"):
      sol = solvers.make(sname)
      rows[f"{sname} {nfe} steps"] = (sol, g_full, {})
      for cname, corr in CORRECTORS.items():  # half the steps: ~ the same NFE
        rows[f"{sname} {half} steps + {cname}"] = (sol, g_half, {"corrector": corr})
      for cname in ("Langevin(0.16)", "LML(lamb=64)"):  # all the steps: twice the NFE
        corr = CORRECTORS[cname]
        rows[f"{sname} {nfe} steps + {cname} [2x NFE]"] = (sol, g_full, {"corrector": corr})
    table = run_rows(rows, denoisers, true, n_samples, rounds, f"ddim {nfe} steps")
    print_table(f"(a) correctors, ~{nfe} NFE (time relative to ddim {nfe} steps)", table)
    results[str(nfe)] = table
  return results


def timeshift_section(denoisers, true, data_var, nfes, n_samples, rounds):
  results = {}
  # window 40/1000, cutoff t = 0.3. The official placement (the step lands at the matched
  # time) serves DDIM only; ours (the network evaluated there) serves every solver.
  landed = jaxdiff.time_shift(SCHED, 40, 0.3)
  evaluated = jaxdiff.time_shift(SCHED, 40, 0.3, variant="evaluate")
  matched = jaxdiff.time_shift(SCHED, 40, 0.3, data_var=data_var, variant="evaluate")
  for nfe in nfes:
    grid = schedules.timesteps(SCHED, nfe)
    rows = {
      "TS-ddim (w=40, c=0.3: official, lands)": (solvers.ddim(), grid, {"time_shift": landed})
    }
    for sname in ("ddim", "ddpm", "dpmpp_2m", "unipc"):
      sol = solvers.make(sname)
      rows[f"{sname}"] = (sol, grid, {})
      rows[f"TS-{sname} (w=40, c=0.3, data_var=0, evaluate)"] = (
        sol,
        grid,
        {"time_shift": evaluated},
      )
      rows[f"TS-{sname} (w=40, c=0.3, data_var={data_var:.2f}, evaluate)"] = (
        sol,
        grid,
        {"time_shift": matched},
      )
    table = run_rows(rows, denoisers, true, n_samples, rounds, "ddim")
    print_table(f"(b) Time-Shift, {nfe} NFE (time relative to ddim)", table)
    results[str(nfe)] = table
  return results


def search_section(den, true, quick):
  """Evolutionary grid search (fitness: RMS error vs the PF-ODE reference on 128 paths)."""
  t_start, t_end = 1.0, 1e-3
  n_fit = 64 if quick else 128
  x_fit = jax.random.normal(jax.random.key(11), (n_fit, DIM))
  x_test = jax.random.normal(jax.random.key(12), (n_fit, DIM))
  with jax.enable_x64(True):
    ref = lambda x: np.asarray(
      probability_flow_reference(
        den, SCHED, jnp.asarray(x, jnp.float64), t_start, t_end, rtol=1e-7, atol=1e-7
      ),
      np.float32,
    )
    ref_fit, ref_test = ref(x_fit), ref(x_test)
  x_sw = jax.random.normal(jax.random.key(13), (2000 if not quick else 256, DIM))
  results = {}
  for nfe in (5,) if quick else (5, 8):
    for sname in ("ddim", "dpmpp_2m", "unipc"):
      sol = solvers.make(sname)

      def rms(t, x, r, sol=sol):
        x = jaxdiff.sample(den, sol, x, jaxdiff.timesteps_from(SCHED, t), key=0).x
        return jnp.sqrt(jnp.mean(jnp.square(x - r)))

      fit = jax.jit(jax.vmap(lambda t, sol=sol: rms(t, x_fit, ref_fit, sol)))
      t0 = time.perf_counter()
      res = search.evolve_timesteps(
        fit,
        t_start,
        t_end,
        nfe,
        key=0,
        batched=True,
        population=8 if quick else 16,
        generations=2 if quick else 8,
        top_k=4,
      )
      secs = time.perf_counter() - t0
      rows = {}
      for gname, t in (
        ("uniform t", np.linspace(t_start, t_end, nfe + 1)),
        ("uniform logSNR", np.asarray(schedules.timesteps(SCHED, nfe, spacing="logsnr").t)),
        ("searched", res.t),
      ):
        g = jaxdiff.timesteps_from(SCHED, t)
        err = float(rms(jnp.asarray(t), x_test, ref_test))
        x = jaxdiff.sample(den, sol, x_sw, g, key=0).x
        sw = float(metrics.sliced_wasserstein(x, true, key=7, num_projections=256))
        rows[gname] = {"rms_vs_reference_heldout": err, "sw": sw, "t": [float(v) for v in t]}
      rows["search"] = {
        "evaluations": res.evaluations,
        "seconds": secs,
        "fit_history": [float(v) for v in res.history],
      }
      results[f"{sname} NFE {nfe}"] = rows
      print(
        f"(c) {sname:9s} NFE {nfe}: held-out RMS vs PF reference  uniform-t "
        f"{rows['uniform t']['rms_vs_reference_heldout']:.4f}  logSNR "
        f"{rows['uniform logSNR']['rms_vs_reference_heldout']:.4f}  searched "
        f"{rows['searched']['rms_vs_reference_heldout']:.4f}   SW: "
        f"{rows['uniform t']['sw']:.4f} / {rows['uniform logSNR']['sw']:.4f} / "
        f"{rows['searched']['sw']:.4f}  ({res.evaluations} grids, {secs:.0f} s)"
      )
  return results


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--search-only", action="store_true", help="only section (c), not written")
  ap.add_argument(
    "--only",
    choices=("cache", "exit", "search", "skip"),
    help="run one digits-model section alone (cache: bench/_accel_cache.py, exit: "
    "bench/_accel_exit.py, search and skip: bench/_accel_search.py; each writes its own "
    "JSON)",
  )
  args = ap.parse_args()
  if args.only == "cache":
    import _accel_cache

    _accel_cache.run(args.quick)
    return
  if args.only == "exit":
    import _accel_exit

    _accel_exit.run(args.quick)
    return
  if args.only == "search":
    import _accel_search

    _accel_search.run(args.quick, make_problem, SCHED)
    return
  if args.only == "skip":
    import _accel_search

    _accel_search.run_skip(args.quick)
    return
  t0 = time.perf_counter()
  gmm, denoisers, true, data_var = make_problem()
  n = 256 if args.quick else 2000
  rounds = 1 if args.quick else 3
  nfes = (10,) if args.quick else (6, 10, 20)
  if args.search_only:
    search_section(denoisers["exact"], true, args.quick)
    return
  out = {
    "setting": {
      "dim": DIM,
      "components": 8,
      "covariance": 0.1,
      "schedule": "vp_linear",
      "grid": "timesteps(vp_linear, N) default spacing",
      "samples": n,
      "true_samples": 8000,
      "imperfect_denoiser": f"(1 - {ERR} sigma_t^2) * exact",
      "data_var": data_var,
      "metric": "sliced Wasserstein-2, 256 projections",
      "under_load": True,
    },
    "correctors": correctors_section(denoisers, true, nfes, n, rounds),
    "timeshift": timeshift_section(denoisers, true, data_var, nfes, n, rounds),
  }
  out["search"] = search_section(denoisers["exact"], true, args.quick)
  out["seconds"] = time.perf_counter() - t0
  path = output_path("sampling_accelerators.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))
  print(f"\nwrote {path} ({out['seconds']:.0f} s)")


if __name__ == "__main__":
  main()
