"""DPM-Solver++(3M): which weight of the second divided difference gives third order.

Measures the global error of the multistep third-order update against a tight diffrax solve
of the probability-flow ODE of an exact Gaussian mixture (float64), on λ-uniform
(``spacing="logsnr"``) and t-uniform grids of ``vp_cosine``, for

* ``jaxdiff.solvers.dpmpp_3m()`` (weight 2 on ``D2``, the exact Taylor coefficient), and
* ``jaxdiff.solvers.dpmpp_3m(diffusers_compat=True)`` (weight 1: the official DPM-Solver
  code and diffusers),

and, when torch and diffusers are importable, diffusers' own
``DPMSolverMultistepScheduler(solver_order=3, algorithm_type="dpmsolver++")`` driven by the
same exact denoiser (its update function, untouched). The derivation is in
``docs/dpmpp_3m.md``. The empirical order is the slope of log error against log steps over
the three finest grids.

Run: ``.venv/bin/python bench/dpmpp3m_order.py [--quick]``; writes
``bench/results/dpmpp3m_order.json``.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from _timing import output_path  # noqa: E402

import jaxdiff  # noqa: E402
from jaxdiff import schedules, solvers  # noqa: E402
from jaxdiff.testing import GaussianMixture, probability_flow_reference  # noqa: E402

STEPS = (10, 20, 40, 80, 160)


def _mixture() -> GaussianMixture:
  means = np.array([[-1.0, 0.5], [1.0, 1.0], [0.5, -1.0]])
  covs = np.array([[[0.6, 0.2], [0.2, 0.5]], [[0.5, 0.0], [0.0, 0.8]], [[0.9, -0.3], [-0.3, 0.6]]])
  return GaussianMixture(means, covs, [0.5, 0.3, 0.2])


def _order(steps, errors) -> float:
  fit = slice(-3, None)
  return float(-np.polyfit(np.log(steps[fit]), np.log(errors[fit]), 1)[0])


def _rms(a, b) -> float:
  return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def jaxdiff_orders(steps) -> dict:
  """Errors and orders of both weights on λ-uniform and t-uniform grids."""
  gmm, sched = _mixture(), schedules.vp_cosine()
  t0, t1 = 0.99, 1e-3
  x_T = jax.random.normal(jax.random.key(0), (64, 2)) * sched.sigma(t0)
  ref = probability_flow_reference(gmm.denoiser(sched), sched, x_T, t0, t1)
  variants = {
    "weight 2 (jaxdiff)": solvers.dpmpp_3m(lower_order_final=False),
    "weight 1 (official code, diffusers)": solvers.dpmpp_3m(
      lower_order_final=False, diffusers_compat=True
    ),
  }
  table = {}
  for spacing in ("logsnr", "uniform"):
    for name, solver in variants.items():
      errs = []
      for n in steps:
        ts = schedules.timesteps(sched, n, spacing=spacing, t_start=t0, t_end=t1)
        out = jaxdiff.sample(gmm.denoiser(sched), solver, x_T, ts, key=jax.random.key(1))
        errs.append(_rms(out.x, ref))
      table.setdefault(spacing, {})[name] = {
        "rms_error": dict(zip(map(str, steps), errs)),
        "order": _order(np.array(steps), np.array(errs)),
      }
  return table


def diffusers_orders(steps) -> dict:
  """diffusers' DPMSolverMultistepScheduler (3rd order, dpmsolver++) on the exact mixture.

  The scheduler runs on its own discrete VP table (``scaled_linear`` betas, 1000 steps)
  from its first to its last sigma; the model output is the exact data prediction
  (``prediction_type="sample"``) at the scheduler's own (alpha_t, sigma_t). For a VP process
  the probability-flow solution as a function of logSNR does not depend on the schedule,
  so the reference is the diffrax solve on ``vp_cosine`` between the same two logSNRs.
  """
  try:
    import torch
    from diffusers import DPMSolverMultistepScheduler
  except ImportError as e:  # torch/diffusers are the optional `peers` extra
    return {"skipped": f"torch/diffusers not importable ({e}); pip install -e '.[peers]'"}
  gmm, sched = _mixture(), schedules.vp_cosine()
  table = {}
  for grid, lu in (("uniform (diffusers linspace)", False), ("logsnr (use_lu_lambdas)", True)):
    errs, ran = [], []
    for n in steps:
      sch = DPMSolverMultistepScheduler(
        solver_order=3,
        algorithm_type="dpmsolver++",
        prediction_type="sample",
        lower_order_final=False,
        euler_at_final=False,
        final_sigmas_type="sigma_min",
        use_lu_lambdas=lu,
      )
      sch.set_timesteps(n)
      sch.sigmas = sch.sigmas.to(torch.float64)
      sig = sch.sigmas.numpy()  # diffusers' sigma = sigma_t / alpha_t
      # With use_lu_lambdas the grid already ends at sigma_min and "sigma_min" appends it
      # again: a zero-length last step (h = 0, NaN in the multistep ratios). Stop before it.
      n_run = len(sch.timesteps) - int(sig[-1] == sig[-2])
      lam0, lam1 = -np.log(sig[0]), -np.log(sig[n_run])
      t0 = float(sched.t_from_logsnr(2 * lam0))
      t1 = float(sched.t_from_logsnr(2 * lam1))
      x_T = jax.random.normal(jax.random.key(0), (64, 2)) * sched.sigma(t0)
      ref = probability_flow_reference(gmm.denoiser(sched), sched, x_T, t0, t1)
      x = torch.from_numpy(np.array(x_T))
      for i, t in enumerate(sch.timesteps[:n_run]):
        alpha = 1.0 / np.sqrt(sig[i] ** 2 + 1.0)
        x0 = gmm.posterior_mean(jnp.asarray(x.numpy()), alpha, sig[i] * alpha)
        x = sch.step(torch.from_numpy(np.array(x0)), t, x).prev_sample
      errs.append(_rms(x.numpy(), ref))
      ran.append(n_run)
    table[grid] = {
      "rms_error": dict(zip(map(str, steps), errs)),
      "steps_run": ran,
      "order": _order(np.array(ran), np.array(errs)),
    }
  return table


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="three coarse grids: proves it runs")
  quick = ap.parse_args().quick
  steps = STEPS[:3] if quick else STEPS
  res = {
    "steps": list(steps),
    "jaxdiff": jaxdiff_orders(steps),
    "diffusers": diffusers_orders(steps),
  }
  out = output_path("dpmpp3m_order.json", quick)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(res, indent=2))
  head = "".join(f"{n:>11d}" for n in steps)
  print(f"RMS error vs diffrax PF-ODE reference (exact mixture, float64); steps: {head}")
  for spacing, rows in res["jaxdiff"].items():
    for name, row in rows.items():
      errs = "".join(f"{e:11.2e}" for e in row["rms_error"].values())
      print(f"  {spacing:8s} {name:38s}{errs}   order {row['order']:.2f}")
  if "skipped" in res["diffusers"]:
    print("  diffusers:", res["diffusers"]["skipped"])
  else:
    for grid, row in res["diffusers"].items():
      errs = "".join(f"{e:11.2e}" for e in row["rms_error"].values())
      print(f"  diffusers {grid:36s}{errs}   order {row['order']:.2f}")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
