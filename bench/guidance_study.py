"""Guidance study on the exact Gaussian mixture: CFG overshoot vs APG, and AG's NFE savings.

Run: .venv/bin/python bench/guidance_study.py [--quick]    (prints two tables, writes
bench/results/guidance.json; ``--quick``: 200 samples, written to the temporary directory).
CPU, float64, about a minute. Rules are built by name from ``jaxdiff.guidance.REGISTRY``.

Part 1 (Sadat et al., APG): class-0 samples at growing guidance scale w. "overshoot" is the
mean signed distance past the class mean along the class-mean direction,
E[<x, mu_0/|mu_0|>] - |mu_0| (0 for exact class samples); "norm" is E|x| / |mu_0|;
"sat" the saturation excess past the data box [-R, R] with R = max|mu| + 3 std.
Part 2 (Castillo et al., AG): for each threshold gamma_bar, the NFE per sample and the
sliced Wasserstein distance (SW2) to CFG's samples (same seeds) and to exact samples of
the classifier-free-guided target's class (class-conditional law), at w = 3.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from _timing import output_path  # noqa: E402

import jaxdiff  # noqa: E402
from jaxdiff import guidance, metrics, schedules, solvers  # noqa: E402
from jaxdiff.testing import GaussianMixture  # noqa: E402

MEANS = jnp.array([[3.0, 0.0], [-1.5, 2.6], [-1.5, -2.6]])
VAR = 0.25
N_SAMPLES = 2000
STEPS = 20


# The CFG-vs-APG rows: (row name, registry rule, hyperparameters).
# Besides CFG and APG as the demo runs it, the ablation switches on one part of APG at a time
# (projection eta = 0, reverse momentum, norm clipping r) and runs the settings of the
# paper's reference code (Sadat et al., appendix: eta = 0, momentum -0.75, r = 2.5).
APG_ROWS = (
  ("cfg", "cfg", {}),
  ("apg(eta=0,b=-0.5)", "apg", dict(eta=0.0, momentum=-0.5)),
  ("apg(eta=0,b=-0.5,r=1)", "apg", dict(eta=0.0, momentum=-0.5, norm_threshold=1.0)),
  ("only projection eta=0", "apg", dict(eta=0.0)),
  ("only momentum b=-0.5", "apg", dict(eta=1.0, momentum=-0.5)),
  ("only clipping r=2.5", "apg", dict(eta=1.0, norm_threshold=2.5)),
  ("paper (eta=0,b=-0.75,r=2.5)", "apg", dict(eta=0.0, momentum=-0.75, norm_threshold=2.5)),
)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="200 samples: proves the script runs")
  quick = ap.parse_args().quick
  n_samples = 200 if quick else N_SAMPLES
  gmm = GaussianMixture(MEANS, VAR, weights=jnp.array([5.0, 3.0, 2.0]))
  sched = schedules.vp_cosine()
  ts = schedules.timesteps(sched, STEPS, spacing="logsnr")
  den = gmm.denoiser(sched)
  x_T = jax.random.normal(jax.random.key(0), (n_samples, 2))
  cond = jnp.zeros((n_samples,), jnp.int32)
  solver = solvers.make("dpmpp_2m")
  mu0 = MEANS[0]
  r0 = float(jnp.linalg.norm(mu0))
  box = float(jnp.max(jnp.abs(MEANS))) + 3 * VAR**0.5

  def run(rule, steps=STEPS):
    grid = ts if steps == STEPS else schedules.timesteps(sched, steps, spacing="logsnr")
    out = jaxdiff.sample(den, solver, x_T, grid, key=jax.random.key(1), cond=cond, guidance=rule)
    return out.x, int(out.nfe)

  def stats(x):
    along = float(jnp.mean(x @ (mu0 / r0)))
    return {
      "overshoot": along - r0,
      "norm_ratio": float(jnp.mean(jnp.linalg.norm(x, axis=-1))) / r0,
      "saturation": float(metrics.saturation(x, low=-box, high=box)),
      "finite": bool(jnp.isfinite(x).all()),
    }

  rows = []
  print(f"{'w':>5} | {'rule':<28} | {'overshoot':>9} | {'|x|/|mu|':>8} | {'sat':>8}")
  for w in (1.0, 3.0, 7.0, 15.0, 30.0, 50.0):
    for name, rule, hyper in APG_ROWS:
      s = stats(run(guidance.make(rule, w, **hyper))[0])
      rows.append({"scale": w, "rule": name, **s})
      print(
        f"{w:5.1f} | {name:<28} | {s['overshoot']:9.3f} | {s['norm_ratio']:8.3f} | "
        f"{s['saturation']:8.4f}"
      )

  exact = gmm.sample(jax.random.key(2), n_samples, cond)
  key = jax.random.key(3)
  swd = lambda a, b: float(metrics.sliced_wasserstein(a, b, key=key, num_projections=256))
  w = 3.0
  x_cfg, nfe_cfg = run(guidance.make("cfg", w))
  ag_rows = []
  print(
    f"\nAdaptive Guidance at w={w}: CFG nfe={nfe_cfg}, SW2(CFG, exact class)="
    f"{swd(x_cfg, exact):.4f}"
  )
  # Equal cost: CFG on a coarser grid with (about) the evaluations AG made, compared with
  # the same reference (CFG's own samples at STEPS steps). AG saves nothing if plain CFG with
  # fewer steps is as close.
  print(
    f"{'gamma_bar':>9} | {'nfe':>4} | {'saved':>6} | {'SW2 to CFG':>10} | {'SW2 to exact':>12}"
    f" | {'CFG same nfe':>12} | {'its SW2 to CFG':>14}"
  )
  for thr in (1.01, 0.9999, 0.999, 0.99, 0.95, 0.9):
    x, nfe = run(guidance.make("adaptive", w, threshold=thr))
    steps_eq = max(2, round(nfe / 2))
    x_eq, nfe_eq = run(guidance.make("cfg", w), steps=steps_eq)
    r = {
      "threshold": thr,
      "nfe": nfe,
      "saved_fraction": 1 - nfe / nfe_cfg,
      "sw2_to_cfg": swd(x, x_cfg),
      "sw2_to_exact_class": swd(x, exact),
      "cfg_equal_nfe": {"steps": steps_eq, "nfe": nfe_eq, "sw2_to_cfg": swd(x_eq, x_cfg)},
    }
    ag_rows.append(r)
    print(
      f"{thr:9.4f} | {nfe:4d} | {r['saved_fraction']:6.1%} | {r['sw2_to_cfg']:10.4f} | "
      f"{r['sw2_to_exact_class']:12.4f} | {nfe_eq:12d} | {r['cfg_equal_nfe']['sw2_to_cfg']:14.4f}"
    )
  path = output_path("guidance.json", quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w") as f:
    json.dump(
      {
        "setup": {
          "means": np.asarray(MEANS).tolist(),
          "variance": VAR,
          "weights": [0.5, 0.3, 0.2],
          "samples": n_samples,
          "steps": STEPS,
          "solver": "dpmpp_2m",
          "schedule": "vp_cosine, logsnr grid",
          "target_class": 0,
        },
        "cfg_vs_apg": rows,
        "adaptive": {
          "scale": w,
          "cfg_nfe": nfe_cfg,
          "sw2_cfg_to_exact": swd(x_cfg, exact),
          "rows": ag_rows,
        },
        "backend": jax.default_backend(),
        "unix_time": time.time(),
      },
      f,
      indent=2,
    )
  print(f"\nwrote {path}")


if __name__ == "__main__":
  main()
