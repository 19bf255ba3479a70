"""Curvature toolkit costs on a ~1M-parameter MLP, measured side by side in one run.

Prints a table and writes bench/results/curvature.json:
- time of one Hessian-vector product / time of one gradient (goal <= 2.5),
- the same ratio for a GGN and an empirical-Fisher product,
- wall time of a 100-iteration SLQ run (one probe) and of 100-probe Hutchinson,
- PyHessian's trace / top-eigenvalue time on the same architecture and batch, as a ratio,
  only when torch and pyhessian are importable (they are not installed by this project).

Every timed function is jitted, warmed up, synchronized with ``block_until_ready`` and
reported as the median of repeats.

Usage: .venv/bin/python bench/bench_curvature.py [--repeats N] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import optim
from optim import curvature

SIZES = (512, 1024, 512, 10)  # 1,055,242 parameters
BATCH = 256


def init_mlp(key, sizes=SIZES):
  keys = jax.random.split(key, len(sizes) - 1)
  return [
    {"w": jax.random.normal(k, (m, n)) * np.sqrt(2.0 / m), "b": jnp.zeros(n)}
    for k, m, n in zip(keys, sizes[:-1], sizes[1:])
  ]


def mlp(params, x):
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def loss(params, batch):
  x, y = batch
  return jnp.mean(curvature.softmax_nll(mlp(params, x), y))


def median_time(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm up
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def pyhessian_times(repeats: int) -> dict | None:
  try:
    import torch
    from pyhessian import hessian as pyhessian_hessian
  except ImportError:
    return None
  torch.manual_seed(0)
  layers = []
  for m, n in zip(SIZES[:-1], SIZES[1:]):
    layers += [torch.nn.Linear(m, n), torch.nn.ReLU()]
  model = torch.nn.Sequential(*layers[:-1])
  x = torch.randn(BATCH, SIZES[0])
  y = torch.randint(0, SIZES[-1], (BATCH,))
  comp = pyhessian_hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
  out = {}
  for name, call in (
    ("trace_100", lambda: comp.trace(maxIter=100, tol=0.0)),
    ("top1_eig_100", lambda: comp.eigenvalues(maxIter=100, tol=0.0, top_n=1)),
  ):
    times = []
    for _ in range(max(1, repeats // 5)):
      t0 = time.perf_counter()
      call()
      times.append(time.perf_counter() - t0)
    out[name] = statistics.median(times)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument(
    "--out", default=str(pathlib.Path(__file__).parent / "results/curvature.json")
  )
  args = parser.parse_args()

  kp, kx, ky, kv = jax.random.split(jax.random.key(0), 4)
  params = init_mlp(kp)
  batch = (jax.random.normal(kx, (BATCH, SIZES[0])), jax.random.randint(ky, (BATCH,), 0, SIZES[-1]))
  v = optim._tree.tree_probe(kv, params, "gaussian")
  num_params = sum(x.size for x in jax.tree.leaves(params))

  grad = jax.jit(jax.grad(loss))
  hvp = jax.jit(lambda p, v, b: curvature.hvp(loss, p, v, b))
  ggn = jax.jit(
    lambda p, v, b: curvature.ggn_matvec(
      mlp, lambda z, y: jnp.mean(curvature.softmax_nll(z, y)), p, b
    )(v)
  )
  fisher = jax.jit(lambda p, v, b: curvature.fisher_matvec(mlp, p, b)(v))
  slq = jax.jit(
    lambda p, b: (
      curvature.slq_density(
        curvature.hessian_matvec(loss, p, b), key=jax.random.key(1), num_iters=100
      ).density
    )
  )
  trace = jax.jit(
    lambda p, b: (
      curvature.hutchinson_trace(
        curvature.hessian_matvec(loss, p, b), key=jax.random.key(2), num_probes=100
      ).trace
    )
  )
  top = jax.jit(
    lambda p, b: (
      curvature.top_eigenvalues(
        curvature.hessian_matvec(loss, p, b), key=jax.random.key(3), k=1, max_iters=100, tol=0.0
      ).eigenvalues
    )
  )

  r = args.repeats
  t_grad = median_time(grad, params, batch, repeats=r)
  t_hvp = median_time(hvp, params, v, batch, repeats=r)
  t_ggn = median_time(ggn, params, v, batch, repeats=r)
  t_fisher = median_time(fisher, params, v, batch, repeats=r)
  t_slq = median_time(slq, params, batch, repeats=max(1, r // 5))
  t_trace = median_time(trace, params, batch, repeats=max(1, r // 5))
  t_top = median_time(top, params, batch, repeats=max(1, r // 5))
  ph = pyhessian_times(r)

  rows = [
    ("gradient", t_grad, 1.0),
    ("HVP (forward-over-reverse)", t_hvp, t_hvp / t_grad),
    ("GGN matvec", t_ggn, t_ggn / t_grad),
    ("empirical Fisher matvec", t_fisher, t_fisher / t_grad),
    ("SLQ, 100 Lanczos iterations", t_slq, t_slq / t_grad),
    ("Hutchinson trace, 100 probes", t_trace, t_trace / t_grad),
    ("power iteration, 100 iterations", t_top, t_top / t_grad),
  ]
  device = jax.devices()[0]
  print(f"MLP {SIZES}, {num_params:,} parameters, batch {BATCH}, device {device.device_kind}")
  print(f"{'operation':36s} {'median time (ms)':>17s} {'/ gradient':>11s}")
  for name, t, ratio in rows:
    print(f"{name:36s} {1e3 * t:17.3f} {ratio:11.2f}")
  if ph is None:
    print("PyHessian: torch/pyhessian not importable; comparison skipped")
  else:
    print(
      f"PyHessian trace (100 probes)   {ph['trace_100']:.3f} s; ours / theirs = "
      f"{t_trace / ph['trace_100']:.3f}"
    )
    print(
      f"PyHessian top-1 (100 iters)    {ph['top1_eig_100']:.3f} s; ours / theirs = "
      f"{t_top / ph['top1_eig_100']:.3f}"
    )

  result = {
    "sizes": list(SIZES),
    "num_params": int(num_params),
    "batch": BATCH,
    "device": f"{device.platform}:{device.device_kind}",
    "cpu_count_visible": len(jax.devices("cpu")),
    "machine": platform.machine(),
    "repeats": r,
    "seconds": {name: t for name, t, _ in rows},
    "hvp_over_grad": t_hvp / t_grad,
    "hvp_over_grad_goal": 2.5,
    "ggn_over_grad": t_ggn / t_grad,
    "fisher_over_grad": t_fisher / t_grad,
    "slq_100_seconds": t_slq,
    "pyhessian": ph,
    "pyhessian_ratio_trace": None if ph is None else t_trace / ph["trace_100"],
    "pyhessian_ratio_top1": None if ph is None else t_top / ph["top1_eig_100"],
  }
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
