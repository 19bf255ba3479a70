"""Curvature toolkit costs on a ~1M-parameter MLP, measured side by side in one run.

Prints a table and writes bench/results/curvature.json:
- time of one Hessian-vector product / time of one gradient (goal <= 2.5),
- the same ratio for a GGN and an empirical-Fisher product,
- wall time of a 100-iteration SLQ run (one probe) and of 100-probe Hutchinson,
- PyHessian's trace / top-eigenvalue time on the same architecture and batch, as a ratio,
  only when torch and pyhessian are importable (they are not installed by this project).

Every timed function is jitted, warmed up and synchronized with ``block_until_ready``;
each is timed in interleaved rounds with the gradient (``bench/_timing.py``) and its ratio
is the median over rounds of the per-round ratio, which keeps a shared machine's drifts out.

Usage: .venv/bin/python bench/bench_curvature.py [--repeats N] [--out PATH] [--quick]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np
from _timing import compare, output_path

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


def pyhessian_times(repeats: int, sizes=SIZES, batch=BATCH) -> dict | None:
  try:
    import torch
    from pyhessian import hessian as pyhessian_hessian
  except ImportError:
    return None
  torch.manual_seed(0)
  layers = []
  for m, n in zip(sizes[:-1], sizes[1:]):
    layers += [torch.nn.Linear(m, n), torch.nn.ReLU()]
  model = torch.nn.Sequential(*layers[:-1])
  x = torch.randn(batch, sizes[0])
  y = torch.randint(0, sizes[-1], (batch,))
  comp = pyhessian_hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
  timings = compare(
    {
      "trace_100": lambda: comp.trace(maxIter=100, tol=0.0),
      "top1_eig_100": lambda: comp.eigenvalues(maxIter=100, tol=0.0, top_n=1),
    },
    rounds=max(1, repeats // 5),
    warmup=1,
  )
  return {name: t.seconds for name, t in timings.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--out", default=None, help="JSON path (default: bench/results/)")
  parser.add_argument(
    "--quick", action="store_true", help="a tiny MLP and 2 rounds: proves the script runs"
  )
  args = parser.parse_args()
  sizes, batch_size = ((64, 128, 64, 10), 32) if args.quick else (SIZES, BATCH)
  repeats = 2 if args.quick else args.repeats
  out = pathlib.Path(args.out) if args.out else output_path("curvature.json", args.quick)

  kp, kx, ky, kv = jax.random.split(jax.random.key(0), 4)
  params = init_mlp(kp, sizes)
  batch = (
    jax.random.normal(kx, (batch_size, sizes[0])),
    jax.random.randint(ky, (batch_size,), 0, sizes[-1]),
  )
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
        curvature.hessian_matvec(loss, p, b), key=jax.random.key(1), num_iterations=100
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
        curvature.hessian_matvec(loss, p, b),
        key=jax.random.key(3),
        k=1,
        max_iterations=100,
        tol=0.0,
      ).eigenvalues
    )
  )

  r = repeats
  # Products: many rounds. Whole algorithms (100 products each): fewer rounds, each again
  # interleaved with a gradient so that their ratio is per round too.
  fast = compare(
    {
      "gradient": lambda: grad(params, batch),
      "HVP (forward-over-reverse)": lambda: hvp(params, v, batch),
      "GGN matvec": lambda: ggn(params, v, batch),
      "empirical Fisher matvec": lambda: fisher(params, v, batch),
    },
    baseline="gradient",
    rounds=r,
  )
  slow = compare(
    {
      "gradient": lambda: grad(params, batch),
      "SLQ, 100 Lanczos iterations": lambda: slq(params, batch),
      "Hutchinson trace, 100 probes": lambda: trace(params, batch),
      "power iteration, 100 iterations": lambda: top(params, batch),
    },
    baseline="gradient",
    rounds=max(1, r // 5),
  )
  timings = {**fast, **{k: t for k, t in slow.items() if k != "gradient"}}
  rows = [(name, t.seconds, t.ratio) for name, t in timings.items()]
  t_hvp = timings["HVP (forward-over-reverse)"]
  t_slq = timings["SLQ, 100 Lanczos iterations"].seconds
  t_trace = timings["Hutchinson trace, 100 probes"].seconds
  t_top = timings["power iteration, 100 iterations"].seconds
  ph = pyhessian_times(r, sizes, batch_size)

  device = jax.devices()[0]
  print(f"MLP {sizes}, {num_params:,} parameters, batch {batch_size}, device {device.device_kind}")
  print(
    f"{'operation':36s} {'median time (ms)':>17s} {'/ gradient':>11s}  (median per-round ratio)"
  )
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
    "sizes": list(sizes),
    "num_params": int(num_params),
    "batch": batch_size,
    "device": f"{device.platform}:{device.device_kind}",
    "cpu_count_visible": len(jax.devices("cpu")),
    "machine": platform.machine(),
    "repeats": r,
    "seconds": {name: t for name, t, _ in rows},
    "ratios_to_gradient": {name: ratio for name, _, ratio in rows},
    "hvp_over_grad": t_hvp.ratio,
    "hvp_over_grad_goal": 2.5,
    "ggn_over_grad": timings["GGN matvec"].ratio,
    "fisher_over_grad": timings["empirical Fisher matvec"].ratio,
    "slq_100_seconds": t_slq,
    "pyhessian": ph,
    "pyhessian_ratio_trace": None if ph is None else t_trace / ph["trace_100"],
    "pyhessian_ratio_top1": None if ph is None else t_top / ph["top1_eig_100"],
  }
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
