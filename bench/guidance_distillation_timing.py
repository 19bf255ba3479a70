"""Wall time per sample of AGD (one evaluation per step) against CFG (two), idle cores.

The companion of ``bench/guidance_distillation.py``, whose timings were single calls on a
loaded machine. Here every sampler runs on the demo's cached digits denoiser, 300 samples
(30 per digit), DPM-Solver++(2M) on the demo's logSNR grid, compiled, timed in interleaved
rounds (``_timing.compare``: the median of per-round ratios to CFG at 10 steps):

* CFG, w = 3, 10 steps (20 evaluations: the reference AGD distils);
* CFG, w = 3, 5 steps (10 evaluations: CFG at AGD's budget);
* conditional, 10 steps (10 evaluations: the floor of one evaluation per step);
* AGD, w = 3, 10 steps (10 evaluations of the denoiser with its ``mlp_gate`` adapters, 32
  hidden units, as in the study).

The adapters are freshly initialised, not trained: the cost of an evaluation does not depend
on the weights' values (same shapes, same program). Run it with nothing else on the machine.

    python bench/guidance_distillation_timing.py [--rounds 15] [--batch 300]

Writes bench/results/guidance_distillation_timing.json.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from _digits import demo_models
from _timing import compare, output_path
from flax import nnx

import jaxdiff
from jaxdiff import distill, from_v, guidance, schedules, solvers


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--rounds", type=int, default=15)
  ap.add_argument("--batch", type=int, default=300)
  args = ap.parse_args()
  rounds, n = (2, 20) if args.quick else (args.rounds, args.batch)
  d = demo_models()
  sched = d.models.schedule
  net = d.models.denoiser
  teacher = from_v(net, sched)
  adapter = distill.GuidanceAdapter(net, hidden=32, variant="mlp_gate", rngs=nnx.Rngs(0))
  student = from_v(adapter, sched)
  labels = jnp.asarray(np.arange(n) % 10, jnp.int32)
  x_T = jax.random.normal(jax.random.key(0), (n, 8, 8))
  solver = solvers.make("dpmpp_2m")

  def sampler(denoise, rule, steps):
    ts = schedules.timesteps(sched, steps, spacing="logsnr")
    fn = jax.jit(
      lambda x: jaxdiff.sample(denoise, solver, x, ts, key=1, cond=labels, guidance=rule).x
    )
    return lambda: fn(x_T)

  runs = {
    "CFG w=3, 10 steps (20 evaluations)": sampler(teacher, guidance.cfg(3.0), 10),
    "CFG w=3, 5 steps (10 evaluations)": sampler(teacher, guidance.cfg(3.0), 5),
    "conditional, 10 steps (10 evaluations)": sampler(teacher, guidance.conditional(), 10),
    "AGD w=3, 10 steps (10 evaluations)": sampler(student, guidance.agd(3.0), 10),
  }
  base = next(iter(runs))
  res = compare(runs, baseline=base, rounds=rounds)
  rows = {
    k: {"ms_per_sample": 1e3 * t.seconds / n, "ratio_to_cfg_20": t.ratio} for k, t in res.items()
  }
  for k, r in rows.items():
    print(f"{k:42s} {r['ms_per_sample']:8.4f} ms/sample  x{r['ratio_to_cfg_20']:.3f} of CFG 20")
  load = os.getloadavg()[0]
  out = {"setting": {"samples": n, "rounds": rounds, "load_avg_1min_at_end": load}, "rows": rows}
  path = output_path("guidance_distillation_timing.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=2))
  print("wrote", path, "load", load)


if __name__ == "__main__":
  main()
