"""Feature caching on the digits DiT: FORA, TaylorSeer and ERTACache vs full computation.

The demo's cached denoiser (``prepare_models``, v-prediction on ``vp_cosine``; depth 2,
dim 64, 16 tokens) samples ``samples_per_class`` digits per class with CFG (the demo's
scale) on the log-SNR grid; quality is the demo's: Frechet distance of the demo
classifier's features to held-out digits and class accuracy (``demo/_evaluation.py``).

Per (solver, steps): the full sampler, FORA (interval 2-5), TaylorSeer (order 1 and 2,
interval 2-5) and ERTACache (profiled on a separate calibration batch at three
thresholds). Cost: evaluations split into full and partial, the FLOP ratio to the full
sampler (FLOPs of one full and one partial network call from XLA's cost analysis of
the compiled pieces), and the wall-time ratio (interleaved rounds, ``_timing.compare``;
measured under load on a shared 2-core machine). The FLOP ceiling: a partial call still
runs the embedding, the adaLN gates and the readout, so the speed-up of caching every
step is ``F_full / F_partial``.

Run: .venv/bin/python bench/sampling_accelerators.py --only cache [--quick]
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from _timing import compare, output_path

import jaxdiff
from jaxdiff import caching, from_v, guidance, schedules, solvers
from jaxdiff._caching import call_flops


def _setup(quick: bool):
  from _digits import class_labels, demo_models

  config, _, models, evaluator = demo_models()
  labels = class_labels(5 if quick else config.samples_per_class)
  return config, models, evaluator, labels


def network_flops(denoise, n: int) -> dict:
  """FLOPs of one full and one partial (cached-branches) network call on a batch of n."""
  x, t, y = jnp.zeros((n, 8, 8)), jnp.full((n,), 0.5), jnp.zeros((n,), jnp.int32)
  full, part = call_flops(denoise, x, t, y)
  return {"full": full, "partial": part, "ceiling": full / part}


def run(quick: bool = False) -> dict:
  t0 = time.perf_counter()
  config, models, evaluator, labels = _setup(quick)
  sched = models.schedule
  den = from_v(models.denoiser, sched)
  n = len(labels)
  rule = guidance.cfg(config.scale_of("cfg"))
  y = jnp.asarray(labels)
  x_T = jax.random.normal(jax.random.key(config.seed + 100), (n, 8, 8))
  x_cal = jax.random.normal(jax.random.key(config.seed + 200), (n, 8, 8))
  flops = network_flops(den, n)
  print(
    f"[cache] network FLOPs per call: full {flops['full']:.3g}, partial {flops['partial']:.3g}"
    f" -> ceiling {flops['ceiling']:.2f}x"
  )
  settings = [("dpmpp_2m", 20)] if quick else [("dpmpp_2m", 50), ("dpmpp_2m", 20), ("ddim", 20)]
  intervals = (2, 4) if quick else (2, 3, 4, 5)
  thresholds = (0.1,) if quick else (0.05, 0.1, 0.2)
  results = {}
  for solver_name, steps in settings:
    solver = solvers.make(solver_name)
    ts = schedules.timesteps(sched, steps, spacing="logsnr")
    rules = {"full": None}
    rules.update({f"fora N={k}": caching.fora(k) for k in intervals})
    for m in (1, 2):
      rules.update({f"taylorseer m={m} N={k}": caching.taylorseer(k, m) for k in intervals})
    for thr in thresholds:
      rules[f"ertacache thr={thr}"] = caching.ertacache(
        den, solver, x_cal, ts, key=1, cond=y, threshold=thr
      )
    grids = {name: ts for name in rules}
    # The equal-compute alternative: the full sampler on a coarser grid (same FLOP ratios).
    for k in intervals:
      rules[f"full, {steps // k} steps"] = None
      grids[f"full, {steps // k} steps"] = schedules.timesteps(sched, steps // k, spacing="logsnr")
    fns = {
      name: (
        lambda r=r, g=grids[name]: jaxdiff.sample(
          den, solver, x_T, g, key=2, cond=y, guidance=rule, cache=r
        )
      )
      for name, r in rules.items()
    }
    base_nfe = None
    rows = {}
    reference = None
    for name, fn in fns.items():
      out = fn()
      reference = out.x if reference is None else reference  # "full" runs first
      # Closeness to the full computation from the same noise: the per-sample RMS
      # difference of the images (the quality loss a cache causes, free of FD noise).
      rms = float(jnp.sqrt(jnp.mean(jnp.square(out.x - reference))))
      nfe = int(out.nfe)
      base_nfe = nfe if base_nfe is None else base_nfe
      full = int(out.stats.get("full_nfe", nfe))
      cost = (full * flops["full"] + (nfe - full) * flops["partial"]) / (base_nfe * flops["full"])
      rows[name] = {
        **{
          k: v for k, v in evaluator(np.asarray(out.x), labels).items() if k in ("fd", "accuracy")
        },
        "nfe": nfe,
        "full_nfe": full,
        "partial_nfe": nfe - full,
        "flop_ratio": cost,
        "rms_to_full": rms,
      }
      if name.startswith("ertacache"):
        rows[name]["schedule"] = "".join("F" if f else "." for f in rules[name].full)
    timed = ["full", f"fora N={intervals[-1]}", f"taylorseer m=2 N={intervals[-1]}"]
    timed.append(f"ertacache thr={thresholds[-1]}")
    timing = compare({k: fns[k] for k in timed}, baseline="full", rounds=2 if quick else 5)
    for k in timed:
      rows[k]["wall_ratio"] = timing[k].ratio
    key = f"{solver_name} {steps} steps"
    results[key] = rows
    print(f"\n[cache] {key} (CFG {config.scale_of('cfg')}, {n} samples)")
    head = f"  {'rule':<24}{'FD':>8}{'acc':>7}{'RMS to full':>12}{'full/nfe':>10}{'FLOPs':>8}"
    print(head + f"{'wall':>7}")
    for name, r in rows.items():
      wall = f"{r['wall_ratio']:.2f}" if "wall_ratio" in r else "-"
      print(
        f"  {name:<24}{r['fd']:>8.3f}{r['accuracy']:>7.3f}{r['rms_to_full']:>12.4f}"
        f"{r['full_nfe']:>5}/{r['nfe']:<4}"
        f"{r['flop_ratio']:>8.2f}{wall:>7}"
      )
  out = {
    "setting": {
      "model": "demo DigitDenoiser (DemoConfig.full(): dim 64, depth 2, 16 tokens), v-pred",
      "guidance": f"cfg({config.scale_of('cfg')}); each CFG call has its own cache slot",
      "grid": "timesteps(vp_cosine, N, spacing='logsnr')",
      "samples": n,
      "ertacache_calibration": "a separate batch of noise, same labels, conditional calls",
      "flops_per_call": flops,
      "wall_ratio": "median of per-round ratios to the full sampler (bench/_timing.py)",
      "under_load": True,
    },
    "results": results,
    "seconds": time.perf_counter() - t0,
  }
  path = output_path("sampling_accelerators_cache.json", quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))
  print(f"\nwrote {path} ({out['seconds']:.0f} s)")
  return out
