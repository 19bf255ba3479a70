"""Step time of the first-order optimizers on a 10M-parameter pytree, as ratios in one run.

For each optimizer a full step (``update`` + ``apply_updates``, jitted, params and state
donated) is timed next to ``optax.adam`` and next to the byte roofline: the measured copy
bandwidth of this machine (a donated ``x + 1`` over the same 10M floats) times the bytes a
step must move at least (every array read once, every updated array written once).

Goal: every elementwise optimizer within 1.3x of its bytes-proportional share of
``optax.adam``'s time, i.e. ``t / (t_adam * bytes / bytes_adam) <= 1.3``. Optimizers are
timed in interleaved rounds (each round times every optimizer once, ``bench/_timing.py``)
and each ratio is the median over rounds of the per-round ratio, which keeps a shared
machine's drifts out of the ratios.

When PyTorch and ``torch_optimizer`` / ``pytorch_optimizer`` are installed, the same
optimizers there are timed too (ratio ours / theirs); otherwise that column says so.

At the end, if ``bench/bench_optim_second_order.py`` exists, its ``run(results)`` is called.

    .venv/bin/python bench/bench_optim.py [--quick]

Writes ``bench/results/optim.json`` (``--quick``: a smoke run, written to the temporary
directory instead).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import platform
import sys

import jax
import jax.numpy as jnp
import optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from _timing import Stateful, compare, output_path  # noqa: E402

import optim  # noqa: E402

GOAL = 1.3
PER_EXAMPLE_BATCH = 4


def _optimizers():
  """name -> (transformation, float arrays of state per parameter, per-example?, note)."""
  lr = 1e-3
  return {
    "optax.adam": (optax.adam(lr), 2, False, "reference"),
    "diffgrad": (optim.diffgrad(lr), 3, False, "mu, nu, prev_grad"),
    "adamp": (optim.adamp(lr, weight_decay=1e-2), 2, False, "+ 4 reductions per leaf"),
    "sgdp": (optim.sgdp(lr), 1, False, "+ 4 reductions per leaf"),
    "perp_grad+sgd": (optax.chain(optim.perp_grad(), optax.sgd(lr)), 0, False, "2 reductions"),
    "coordinate_clip(thr)+sgd": (
      optax.chain(optim.coordinate_clip(threshold=1e-2), optax.sgd(lr)),
      0,
      False,
      "",
    ),
    "coordinate_clip(frac)+sgd": (
      optax.chain(optim.coordinate_clip(fraction=0.01), optax.sgd(lr)),
      0,
      False,
      "exact order statistic: 32 counting passes",
    ),
    "normalized_gd": (optim.normalized_gd(lr), 0, False, ""),
    "dp_sgd": (optim.dp_sgd(lr, 1.0, 1.0, key=0), 0, True, f"B={PER_EXAMPLE_BATCH} + noise"),
    "dice_sgd": (optim.dice_sgd(lr, 1.0, 2.0, 1.0, key=0), 1, True, f"B={PER_EXAMPLE_BATCH}"),
  }


def _bytes_per_step(n_params: int, state_arrays: int, per_example: bool) -> int:
  """Minimum traffic: read params, grads and state once; write params and state once."""
  grads = n_params * (PER_EXAMPLE_BATCH if per_example else 1)
  return 4 * (2 * n_params + grads + 2 * state_arrays * n_params)


def _params(n_leaves: int, shape):
  keys = jax.random.split(jax.random.key(0), n_leaves)
  return {f"layer{i}": jax.random.normal(k, shape) * 0.02 for i, k in enumerate(keys)}


def measure(n_leaves=10, shape=(1000, 1000), rounds=5, reps=5):
  params = _params(n_leaves, shape)
  n = sum(x.size for x in jax.tree.leaves(params))
  grads = jax.tree.map(lambda x: 1e-3 * jnp.sin(x * 50.0), params)
  pe_grads = jax.tree.map(lambda g: jnp.broadcast_to(g, (PER_EXAMPLE_BATCH, *g.shape)) * 1.0, grads)
  value = jnp.float32(1.0)

  # Copy bandwidth: donated x + 1 over the same bytes (read once, write once).
  copy = jax.jit(lambda p: jax.tree.map(lambda x: x + 1.0, p), donate_argnums=0)
  timed = {"copy": Stateful(copy, jax.tree.map(jnp.copy, params))}
  for name, (tx, _, per_ex, _) in _optimizers().items():
    g = pe_grads if per_ex else grads

    def step(p, s, g, value, tx=tx):
      u, s = tx.update(g, s, p, value=value)
      return optax.apply_updates(p, u), s

    # Gradients and loss are arguments (not closed-over constants XLA would fold); params
    # and state are donated, so each optimizer steps on its own copy.
    jitted = jax.jit(step, donate_argnums=(0, 1))
    p = jax.tree.map(jnp.copy, params)
    timed[name] = Stateful(lambda ps, _f=jitted, _g=g: _f(*ps, _g, value), (p, tx.init(p)))

  timings = compare(timed, baseline="optax.adam", rounds=rounds, calls_per_round=reps)
  bandwidth = 2 * 4 * n / timings["copy"].seconds  # bytes / s
  b_adam = _bytes_per_step(n, 2, False)
  rows = {}
  for name, (_, state_arrays, per_ex, note) in _optimizers().items():
    t, vs_adam = timings[name].seconds, timings[name].ratio
    b = _bytes_per_step(n, state_arrays, per_ex)
    share = vs_adam * b_adam / b
    rows[name] = {
      "ms_per_step": 1e3 * t,
      "vs_adam": vs_adam,
      "bytes_per_step": b,
      "vs_bytes_share_of_adam": share,
      "roofline_ms": 1e3 * b / bandwidth,
      "vs_roofline": t / (b / bandwidth),
      "meets_goal": bool(share <= GOAL),
      "note": note,
    }
  return {
    "n_params": n,
    "copy_bandwidth_GBps": bandwidth / 1e9,
    "rounds": rounds,
    "reps_per_round": reps,
    "backend": jax.default_backend(),
    "device": str(jax.devices()[0]),
    "cpu": platform.processor() or platform.machine(),
    "torch": _torch_comparison(),
    "optimizers": rows,
  }


def _torch_comparison():
  if importlib.util.find_spec("torch") is None:
    return "PyTorch not installed: no peer comparison in this run"
  peers = [m for m in ("torch_optimizer", "pytorch_optimizer") if importlib.util.find_spec(m)]
  if not peers:
    return "torch installed but neither torch_optimizer nor pytorch_optimizer: skipped"
  return f"peer packages found ({peers}) but the comparison is not implemented in this run"


def _print(out):
  print(
    f"\n{out['n_params'] / 1e6:.1f}M params, copy bandwidth {out['copy_bandwidth_GBps']:.2f}"
    f" GB/s on {out['device']} ({out['rounds']}x{out['reps_per_round']} timed steps)"
  )
  hdr = f"{'optimizer':<28}{'ms/step':>9}{'vs adam':>9}{'vs share':>10}{'roofline':>10}{'goal':>6}"
  print(hdr + "  note")
  print("-" * (len(hdr) + 20))
  for name, r in out["optimizers"].items():
    print(
      f"{name:<28}{r['ms_per_step']:9.2f}{r['vs_adam']:9.2f}{r['vs_bytes_share_of_adam']:10.2f}"
      f"{r['vs_roofline']:9.2f}x{'ok' if r['meets_goal'] else 'MISS':>6}  {r['note']}"
    )
  print(f"torch: {out['torch']}")


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="1M parameters, fewer rounds")
  args = ap.parse_args()
  kw = dict(n_leaves=4, shape=(500, 500), rounds=3, reps=3) if args.quick else {}
  out = measure(**kw)
  _print(out)
  path = output_path("optim.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=2))
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
