"""Sampling benchmarks: loop overhead, error vs NFE per solver, optional diffusers comparison.

(a) loop overhead = time(jaxdiff.sample, N steps) / (N x time(one jitted denoiser call)) on a
    small MLP denoiser, measured side by side in this process (goal <= 1.05);
(b) RMS error vs a tight diffrax solve of the probability-flow ODE of an exact Gaussian
    mixture, for every solver at 5 / 10 / 20 NFE (vp_cosine with logSNR grid; flow with
    uniform-t grid from pure noise), plus plain-grid empirical orders;
(c) only when torch and diffusers are importable: diffusers' schedulers on the same mixture.

Writes bench/results/sampling.json. Run: .venv/bin/python bench/bench_sampling.py
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)


import jaxdiff  # noqa: E402
from jaxdiff import schedules, solvers  # noqa: E402
from jaxdiff.testing import GaussianMixture, probability_flow_reference  # noqa: E402

OUT = pathlib.Path(__file__).parent / "results" / "sampling.json"


def _time(f, reps=5):
  f()  # compile / warm
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(f())
    best = min(best, time.perf_counter() - t0)
  return best


def loop_overhead(n_steps=50, batch=256, dim=64, width=512):
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
    t_call = _time(lambda: one(x, t, None))
    t_chain = _time(lambda: chained(x))
    rows = {}
    for name, s in [
      ("ddim", solvers.ddim()),
      ("dpmpp_2m", solvers.dpmpp_2m()),
      ("unipc", solvers.unipc()),
    ]:
      ts = schedules.timesteps(sched, n_steps, spacing="logsnr")
      t_s = _time(lambda s=s, ts=ts: jaxdiff.sample(mlp, s, x, ts, key=jax.random.key(0)).x)
      rows[name] = {
        "sample_s": t_s,
        "overhead_vs_single_calls": t_s / (n_steps * t_call),
        "overhead_vs_chained_calls": t_s / t_chain,
      }
  return {
    "n_steps": n_steps,
    "batch": batch,
    "dim": dim,
    "width": width,
    "one_call_s": t_call,
    "chained_calls_s": t_chain,
    "solvers": rows,
  }


def _mixture():
  means = np.array([[-1.0, 0.5], [1.0, 1.0], [0.5, -1.0]])
  covs = np.array([[[0.6, 0.2], [0.2, 0.5]], [[0.5, 0.0], [0.0, 0.8]], [[0.9, -0.3], [-0.3, 0.6]]])
  return GaussianMixture(means, covs, [0.5, 0.3, 0.2])


def _reference(gmm, sched, x_T, t0, t1):
  return probability_flow_reference(gmm.denoiser(sched), sched, x_T, t0, t1, rtol=1e-12, atol=1e-12)


SOLVERS = {
  "ddim": solvers.ddim(),
  "euler": solvers.euler(),
  "heun": solvers.heun(),
  "dpmpp_2m": solvers.dpmpp_2m(),
  "dpmpp_3m": solvers.dpmpp_3m(),
  "dpmpp_3m_diffusers": solvers.dpmpp_3m(diffusers_compat=True),
  "unipc2": solvers.unipc(2),
  "unipc3": solvers.unipc(3),
}


def error_vs_nfe():
  gmm = _mixture()
  cases = {
    "vp_cosine": (schedules.vp_cosine(), "logsnr", 0.9946, 1e-3),
    "flow": (schedules.flow(), "uniform", 1.0, 1e-2),
  }
  table = {}
  for case, (sched, spacing, t0, t1) in cases.items():
    x_T = jax.random.normal(jax.random.key(0), (64, 2)) * sched.sigma(t0)
    ref = _reference(gmm, sched, x_T, t0, t1)
    for name, s in SOLVERS.items():
      row = {}
      for nfe in (5, 10, 20, 40, 80):
        n = nfe // s.stages if s.stages == 1 else (nfe + 1) // 2
        ts = schedules.timesteps(sched, n, spacing=spacing, t_start=t0, t_end=t1)
        out = jaxdiff.sample(gmm.denoiser(sched), s, x_T, ts, key=jax.random.key(1))
        row[nfe] = {"nfe": int(out.nfe), "rms_error": float(jnp.sqrt(jnp.mean((out.x - ref) ** 2)))}
      e = np.array([row[n]["rms_error"] for n in (20, 40, 80)])
      row["plain_grid_order_20_80"] = float(-np.polyfit(np.log([20, 40, 80]), np.log(e), 1)[0])
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
  res = {
    "device": str(jax.devices()[0]),
    "loop_overhead": loop_overhead(),
    "error_vs_nfe": error_vs_nfe(),
    "diffusers": diffusers_comparison(),
  }
  OUT.parent.mkdir(parents=True, exist_ok=True)
  OUT.write_text(json.dumps(res, indent=2))
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
    print(
      f"    {'solver':20s}" + "".join(f"{n:>11d}" for n in (5, 10, 20, 40, 80)) + "   order(20-80)"
    )
    for name, row in rows.items():
      print(
        f"    {name:20s}"
        + "".join(f"{row[n]['rms_error']:11.2e}" for n in (5, 10, 20, 40, 80))
        + f"   {row['plain_grid_order_20_80']:.2f}"
      )
  print("(c) diffusers:", res["diffusers"])
  print(f"wrote {OUT}")


if __name__ == "__main__":
  main()
