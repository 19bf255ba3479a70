"""Sampling benchmarks: loop overhead, error vs NFE per solver, optional diffusers comparison.

(a) loop overhead = time(jaxdiff.sample, N steps) / (N x time(one jitted denoiser call)) on a
    small MLP denoiser, measured side by side in this process in interleaved rounds (the
    median of per-round ratios, ``bench/_timing.py``; goal <= 1.05);
(b) RMS error vs a tight diffrax solve of the probability-flow ODE of an exact Gaussian
    mixture, for every deterministic solver of ``jaxdiff.solvers.REGISTRY`` (plus a few
    variants) at 5 / 10 / 20 / 40 / 80 NFE (vp_cosine with logSNR grid; flow with uniform-t
    grid from pure noise), plus plain-grid empirical orders;
(c) only when torch and diffusers are importable: diffusers' schedulers on the same mixture.

Writes bench/results/sampling.json. Run: .venv/bin/python bench/bench_sampling.py [--quick]
(``--quick``: a smoke run on tiny sizes, written to the temporary directory).
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)


from _timing import compare, output_path, ratio  # noqa: E402

import jaxdiff  # noqa: E402
from jaxdiff import schedules, solvers  # noqa: E402
from jaxdiff.testing import GaussianMixture, probability_flow_reference  # noqa: E402

# Solvers whose loop overhead is timed (names of jaxdiff.solvers.REGISTRY).
LOOP_SOLVERS = ("ddim", "dpmpp_2m", "unipc")
NFES = (5, 10, 20, 40, 80)


def loop_overhead(n_steps=50, batch=256, dim=64, width=512, rounds=7):
  k = jax.random.split(jax.random.key(0), 3)
  w1 = jax.random.normal(k[0], (dim + 1, width), jnp.float32) / np.sqrt(dim)
  w2 = jax.random.normal(k[1], (width, width), jnp.float32) / np.sqrt(width)
  w3 = jax.random.normal(k[2], (width, dim), jnp.float32) / np.sqrt(width)

  def mlp(x, t, c):
    h = jnp.concatenate([x, t[:, None].astype(x.dtype)], axis=1)
    return jnp.tanh(jnp.tanh(h @ w1) @ w2) @ w3

  with jax.enable_x64(False):
    sched = schedules.vp_cosine()
    x = jax.random.normal(jax.random.key(1), (batch, dim), jnp.float32)
    t = jnp.full((batch,), 0.5, jnp.float32)
    one = jax.jit(mlp)
    # N chained calls inside one jit: the denoiser's own cost without Python dispatch.
    chained = jax.jit(lambda x: jax.lax.fori_loop(0, n_steps, lambda i, y: mlp(y, t, None), x))
    ts = schedules.timesteps(sched, n_steps, spacing="logsnr")
    fns = {"one call": lambda: one(x, t, None), "chained": lambda: chained(x)}
    for name in LOOP_SOLVERS:
      s = solvers.make(name)
      fns[name] = lambda s=s: jaxdiff.sample(mlp, s, x, ts, key=jax.random.key(0)).x
    timings = compare(fns, baseline="one call", rounds=rounds)
    rows = {
      name: {
        "sample_s": timings[name].seconds,
        "overhead_vs_single_calls": timings[name].ratio / n_steps,
        "overhead_vs_chained_calls": ratio(timings[name], timings["chained"]),
      }
      for name in LOOP_SOLVERS
    }
  return {
    "n_steps": n_steps,
    "batch": batch,
    "dim": dim,
    "width": width,
    "rounds": rounds,
    "one_call_s": timings["one call"].seconds,
    "chained_calls_s": timings["chained"].seconds,
    "solvers": rows,
  }


def _mixture():
  means = np.array([[-1.0, 0.5], [1.0, 1.0], [0.5, -1.0]])
  covs = np.array([[[0.6, 0.2], [0.2, 0.5]], [[0.5, 0.0], [0.0, 0.8]], [[0.9, -0.3], [-0.3, 0.6]]])
  return GaussianMixture(means, covs, [0.5, 0.3, 0.2])


def _reference(gmm, sched, x_T, t0, t1):
  return probability_flow_reference(gmm.denoiser(sched), sched, x_T, t0, t1, rtol=1e-12, atol=1e-12)


def _solvers():
  """Every deterministic registered solver with its defaults, plus variants worth a row."""
  built = {n: solvers.make(n) for n in solvers.REGISTRY}
  table = {n: s for n, s in built.items() if not s.stochastic}
  table["dpmpp_3m_diffusers"] = solvers.make("dpmpp_3m", diffusers_compat=True)
  table["unipc3"] = solvers.make("unipc", order=3)
  return table


def error_vs_nfe(nfes=NFES):
  gmm = _mixture()
  cases = {
    "vp_cosine": (schedules.vp_cosine(), "logsnr", 0.9946, 1e-3),
    "flow": (schedules.flow(), "uniform", 1.0, 1e-2),
  }
  table = {}
  for case, (sched, spacing, t0, t1) in cases.items():
    x_T = jax.random.normal(jax.random.key(0), (64, 2)) * sched.sigma(t0)
    ref = _reference(gmm, sched, x_T, t0, t1)
    for name, s in _solvers().items():
      row = {}
      for nfe in nfes:
        n = nfe // s.stages if s.stages == 1 else (nfe + 1) // 2
        ts = schedules.timesteps(sched, n, spacing=spacing, t_start=t0, t_end=t1)
        out = jaxdiff.sample(gmm.denoiser(sched), s, x_T, ts, key=jax.random.key(1))
        row[nfe] = {"nfe": int(out.nfe), "rms_error": float(jnp.sqrt(jnp.mean((out.x - ref) ** 2)))}
      fit = nfes[-3:]  # the empirical order from the three finest grids
      e = np.array([row[n]["rms_error"] for n in fit])
      row["plain_grid_order_20_80"] = float(-np.polyfit(np.log(fit), np.log(e), 1)[0])
      table.setdefault(case, {})[name] = row
  return table


def diffusers_comparison():
  try:
    import diffusers  # noqa: F401
    import torch  # noqa: F401
  except ImportError:
    return {"skipped": "torch/diffusers not importable (not installed on purpose)"}
  return {"skipped": "comparison not implemented in this revision"}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="tiny sizes: proves the script runs")
  quick = ap.parse_args().quick
  nfes = (5, 10, 20) if quick else NFES
  overhead_kw = dict(n_steps=5, batch=16, dim=8, width=32, rounds=2) if quick else {}
  res = {
    "device": str(jax.devices()[0]),
    "loop_overhead": loop_overhead(**overhead_kw),
    "error_vs_nfe": error_vs_nfe(nfes),
    "diffusers": diffusers_comparison(),
  }
  out = output_path("sampling.json", quick)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(res, indent=2))
  lo = res["loop_overhead"]
  print(
    f"(a) loop overhead, {lo['n_steps']} steps, MLP {lo['dim']}-{lo['width']}, batch {lo['batch']}"
  )
  print(
    f"    one call {lo['one_call_s'] * 1e3:.3f} ms, {lo['n_steps']} chained in one jit "
    f"{lo['chained_calls_s'] * 1e3:.2f} ms"
  )
  for k, v in lo["solvers"].items():
    print(
      f"    {k:10s} sample {v['sample_s'] * 1e3:8.2f} ms  / (N x call) = "
      f"{v['overhead_vs_single_calls']:.3f}   / chained = {v['overhead_vs_chained_calls']:.3f}"
    )
  print("(b) RMS error vs diffrax reference (PF-ODE of exact mixture)")
  for case, rows in res["error_vs_nfe"].items():
    print(f"  {case}")
    print(f"    {'solver':20s}" + "".join(f"{n:>11d}" for n in nfes) + "   order(finest 3)")
    for name, row in rows.items():
      print(
        f"    {name:20s}"
        + "".join(f"{row[n]['rms_error']:11.2e}" for n in nfes)
        + f"   {row['plain_grid_order_20_80']:.2f}"
      )
  print("(c) diffusers:", res["diffusers"])
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
