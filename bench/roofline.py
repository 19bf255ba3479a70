"""Optimizer steps as a fraction of the memory-bandwidth roofline of this device.

An elementwise optimizer step is memory bound: it reads the parameters, the gradients and
every state buffer once and writes the parameters and the state back (donated, in place).
Its floor is ``bytes moved / peak bandwidth``; the fraction reported is

    achieved bandwidth / peak = (bytes moved per step / step time) / peak,

with the peak *measured* here, not taken from a spec sheet: the bandwidth of a jitted
streaming kernel ``y = x + 1`` (reads and writes ``x`` once, a device-to-device copy with
an add) on a buffer far larger than the caches, best of several rounds. Bytes moved are
counted from the pytrees (params + grads + state read, params + state written), the
minimum any implementation must move; 1.0 would be the roofline.

Run by ``bench/gpu.sh`` (on a GPU it writes bench/results/gpu/roofline.json); on its own:
``.venv/bin/python bench/roofline.py [--quick]`` (``--quick``: tiny sizes, a dry run that
proves the script works on any backend, written to the temporary directory).
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import optax
from _timing import Stateful, compare, output_path

import optim


def nbytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def peak_bandwidth(n_bytes: int, rounds: int) -> dict:
  """Bytes per second of ``y = x + 1`` on ``n_bytes`` of float32 (2 x n_bytes moved)."""
  x = jnp.zeros(n_bytes // 4, jnp.float32)
  step = jax.jit(lambda x: x + 1.0, donate_argnums=0)
  t = compare({"copy": Stateful(step, x)}, rounds=rounds, calls_per_round=10, warmup=3)["copy"]
  best = min(t.rounds)
  return {"buffer_bytes": n_bytes, "seconds_best": best, "bytes_per_s": 2 * n_bytes / best}


OPTIMIZERS = {
  "optax.adam": lambda: optax.adam(1e-3),
  "optax.sgd (momentum)": lambda: optax.sgd(1e-3, momentum=0.9),
  "diffGrad": lambda: optim.diffgrad(1e-3),
  "AdamP": lambda: optim.adamp(1e-3),
  "SGDP": lambda: optim.sgdp(1e-3),
  "perp_grad + adam": lambda: optax.chain(optim.perp_grad(), optax.adam(1e-3)),
}


def optimizer_rows(layers: int, width: int, rounds: int, peak: float) -> dict:
  key = jax.random.key(0)
  params = {
    f"w{i}": jax.random.normal(jax.random.fold_in(key, i), (width, width)) for i in range(layers)
  }
  grads = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
  fns, moved, out = {}, {}, {}
  for name, make in OPTIMIZERS.items():
    tx = make()

    @functools.partial(jax.jit, donate_argnums=0)
    def step(carry, tx=tx):
      p, s = carry
      u, s = tx.update(grads, s, p)
      return optax.apply_updates(p, u), s

    p0 = jax.tree.map(jnp.copy, params)
    state = tx.init(p0)
    fns[name] = Stateful(step, (p0, state))
    # read params, grads, state; write params, state
    moved[name] = 2 * nbytes(p0) + nbytes(grads) + 2 * nbytes(state)
  res = compare(fns, baseline="optax.adam", rounds=rounds, calls_per_round=5, warmup=3)
  for name, t in res.items():
    bw = moved[name] / t.seconds
    out[name] = {
      "step_s": t.seconds,
      "ratio_to_adam": t.ratio,
      "bytes_moved": moved[name],
      "bytes_per_s": bw,
      "fraction_of_peak": bw / peak,
    }
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="tiny sizes: a dry run on any backend")
  ap.add_argument("--out", help="JSON path (default: bench/results/gpu/roofline.json)")
  args = ap.parse_args()
  quick = args.quick
  dev = jax.devices()[0]
  rounds = 3 if quick else 9
  peak = peak_bandwidth(2**22 if quick else 2**30, rounds)  # 4 MiB dry, 1 GiB real
  layers, width = (2, 256) if quick else (4, 2048)  # 131k / 16.8M float32 parameters
  rows = optimizer_rows(layers, width, rounds, peak["bytes_per_s"])
  res = {
    "device": dev.device_kind,
    "backend": jax.default_backend(),
    "quick": quick,
    "num_params": layers * width * width,
    "peak": peak,
    "optimizers": rows,
  }
  print(
    f"{dev.device_kind} ({jax.default_backend()}): measured peak "
    f"{peak['bytes_per_s'] / 1e9:.1f} GB/s (y = x + 1 on {peak['buffer_bytes'] >> 20} MiB)"
  )
  print(
    f"{'optimizer':24s} {'step':>10s} {'vs adam':>8s} {'GB moved':>9s} {'GB/s':>8s} {'of peak':>8s}"
  )
  for name, r in rows.items():
    print(
      f"{name:24s} {1e3 * r['step_s']:8.3f}ms {r['ratio_to_adam']:8.2f} "
      f"{r['bytes_moved'] / 1e9:9.3f} {r['bytes_per_s'] / 1e9:8.1f} {r['fraction_of_peak']:8.2f}"
    )
  if args.out:
    path = pathlib.Path(args.out)
  elif quick:
    path = output_path("roofline.json", True)
  else:
    path = pathlib.Path(__file__).resolve().parent / "results" / "gpu" / "roofline.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(res, indent=2))
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
