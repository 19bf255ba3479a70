"""Step time of the first-order optimizers on 10M parameters, as ratios in one run.

For each optimizer a full step (``update`` + ``apply_updates``, jitted, params and state
donated) is timed next to ``optax.adam`` and next to the byte roofline: the measured copy
bandwidth of this machine (a donated ``x + 1`` over the same 10M floats) times the bytes a
step must move at least (every array read once, every updated array written once).

Goal: every elementwise optimizer within 1.3x of its bytes-proportional share of
``optax.adam``'s time, i.e. ``t / (t_adam * bytes / bytes_adam) <= 1.3``; where the project
sets a goal as a plain ratio to ``optax.adam`` (``ISSUE_GOALS``), that one. The row
``noise alone`` (one standard normal per parameter, nothing else) is the floor under the
DP-SGD and DiceSGD rows. Optimizers are
timed in interleaved rounds (each round times every optimizer once, ``bench/_timing.py``)
and each ratio is the median over rounds of the per-round ratio, which keeps a shared
machine's drifts out of the ratios. One process's state (allocator, pages, caches) still
biases all of its rounds alike, by up to 30% on this CPU, so the whole measurement is
repeated ``--runs`` times (5 by default), each in a fresh process, and the median and range
over the runs are reported (``_timing.over_runs``).

Two settings a user meets are measured side by side in the same rounds: each step jitted
as a user writes it (no option: what one gets by default) and jitted with
``optim.xla.compiler_options()`` (``jax.jit(..., compiler_options=...)``, one computation;
no process-wide ``XLA_FLAGS``). And four layouts of the 10M parameters: 10 leaves of
1000x1000 (every optimizer), one 1000x10000 leaf, one 10000x1000 leaf and one flat 10M
vector (the optimizers with a project goal, ``LAYOUT_ROWS``, and ``optax.adam``).

The comparison with the PyTorch peers (torch-optimizer, pytorch_optimizer) is
``bench/bench_peers.py`` (``make bench-peers``); the second-order optimizers are
``bench/bench_optim_second_order.py``. ``make bench`` runs both scripts.

    .venv/bin/python bench/bench_optim.py [--quick] [--runs N] [--layouts NAME ...]

Writes ``bench/results/optim.json`` (``--quick``: a smoke run, written to the temporary
directory instead).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import sys

import jax
import jax.numpy as jnp
import optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from _timing import Stateful, compare, output_path, over_runs  # noqa: E402

import optim  # noqa: E402
import optim.xla  # noqa: E402

GOAL = 1.3
PER_EXAMPLE_BATCH = 4
# The project's per-optimizer goals, as ratios to optax.adam's step (rows without one: GOAL).
ISSUE_GOALS = {
  "diffgrad": 1.7,
  "adamp": 2.5,
  "sgdp": 1.6,
  "perp_grad+sgd": 1.0,
  "coordinate_clip(frac)+sgd": 12.0,
  "coordinate_clip(frac, sample)+sgd": 1.0,
  "dp_sgd": 8.0,
  "dice_sgd": 10.0,
}


# name -> (number of leaves, leaf shape): 10M parameters each.
LAYOUTS = {
  "10x1000x1000": (10, (1000, 1000)),
  "1x1000x10000": (1, (1000, 10000)),
  "1x10000x1000": (1, (10000, 1000)),
  "flat 10M": (1, (10_000_000,)),
}
# Timed on every layout (the first layout times every optimizer).
LAYOUT_ROWS = ("optax.adam", "diffgrad", "adamp", "sgdp")
# The suffix of the rows jitted with optim.xla.compiler_options().
OPTS = " +xla opts"


def _noise_alone():
  """A step that only draws one standard normal per parameter (DP-SGD's noise, the same
  draw): the floor under the DP rows."""

  def update(updates, state, params=None, **extra):
    del params, extra
    key, sub = jax.random.split(state)
    z = optim._tree.tree_probe(sub, updates, "gaussian")
    return jax.tree.map(lambda g, n: g + 1e-3 * n, updates, z), key

  return optax.GradientTransformationExtraArgs(lambda params: jax.random.key(0), update)


def _optimizers():
  """name -> (transformation, float arrays of state per parameter, per-example?, note)."""
  lr = 1e-3
  return {
    "optax.adam": (optax.adam(lr), 2, False, "reference"),
    "diffgrad": (optim.diffgrad(lr), 3, False, "mu, nu, prev_grad"),
    "adamp": (optim.adamp(lr, weight_decay=1e-2), 2, False, "+ 4 reductions per leaf"),
    "sgdp": (optim.sgdp(lr), 1, False, "+ 4 reductions per leaf"),
    "perp_grad+sgd": (optax.chain(optim.perp_grad(), optax.sgd(lr)), 0, False, "3 fused sums"),
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
      "exact order statistic: ~20 counting passes",
    ),
    "coordinate_clip(frac, sample)+sgd": (
      optax.chain(optim.coordinate_clip(fraction=0.01, variant="sample"), optax.sgd(lr)),
      0,
      False,
      "threshold from a 1/64 sample (approximate)",
    ),
    "normalized_gd": (optim.normalized_gd(lr), 0, False, ""),
    "dp_sgd": (optim.dp_sgd(lr, 1.0, 1.0, key=0), 0, True, f"B={PER_EXAMPLE_BATCH} + noise"),
    "dice_sgd": (optim.dice_sgd(lr, 1.0, 2.0, 1.0, key=0), 1, True, f"B={PER_EXAMPLE_BATCH}"),
    "noise alone": (optax.chain(_noise_alone(), optax.sgd(lr)), 0, False, "10M normals only"),
  }


def _bytes_per_step(n_params: int, state_arrays: int, per_example: bool) -> int:
  """Minimum traffic: read params, grads and state once; write params and state once."""
  grads = n_params * (PER_EXAMPLE_BATCH if per_example else 1)
  return 4 * (2 * n_params + grads + 2 * state_arrays * n_params)


def _params(n_leaves: int, shape):
  keys = jax.random.split(jax.random.key(0), n_leaves)
  return {f"layer{i}": jax.random.normal(k, shape) * 0.02 for i, k in enumerate(keys)}


def measure(layout="10x1000x1000", rounds=15, reps=5, only=None, n_leaves=None, shape=None):
  """Times the optimizers on one layout, each jitted without and with the XLA options.

  ``only``: a subset of names (``optax.adam`` is always timed); ``n_leaves``/``shape``
  override the layout (``--quick``). Rows ``name`` are jitted as a user writes it, rows
  ``name +xla opts`` with ``compiler_options=optim.xla.compiler_options()``; every ratio is
  to ``optax.adam`` jitted without options, in the same rounds.
  """
  if n_leaves is None:
    n_leaves, shape = LAYOUTS[layout]
  optimizers = {
    name: v for name, v in _optimizers().items() if only is None or name in (*only, "optax.adam")
  }
  params = _params(n_leaves, shape)
  n = sum(x.size for x in jax.tree.leaves(params))
  grads = jax.tree.map(lambda x: 1e-3 * jnp.sin(x * 50.0), params)
  pe_grads = jax.tree.map(lambda g: jnp.broadcast_to(g, (PER_EXAMPLE_BATCH, *g.shape)) * 1.0, grads)
  value = jnp.float32(1.0)
  options = optim.xla.compiler_options()

  # Copy bandwidth: donated x + 1 over the same bytes (read once, write once).
  copy = jax.jit(lambda p: jax.tree.map(lambda x: x + 1.0, p), donate_argnums=0)
  timed = {"copy": Stateful(copy, jax.tree.map(jnp.copy, params))}
  for name, (tx, _, per_ex, _) in optimizers.items():
    g = pe_grads if per_ex else grads

    def step(p, s, g, value, tx=tx):
      u, s = tx.update(g, s, p, value=value)
      return optax.apply_updates(p, u), s

    # Gradients and loss are arguments (not closed-over constants XLA would fold); params
    # and state are donated, so each optimizer steps on its own copy.
    for suffix, opts in (("", None), (OPTS, options)):
      jitted = jax.jit(step, donate_argnums=(0, 1), compiler_options=opts)
      p = jax.tree.map(jnp.copy, params)
      s0 = jax.jit(tx.init)(p)  # fresh buffers: init may hand out shared constant arrays
      timed[name + suffix] = Stateful(lambda ps, _f=jitted, _g=g: _f(*ps, _g, value), (p, s0))

  timings = compare(timed, baseline="optax.adam", rounds=rounds, calls_per_round=reps)
  bandwidth = 2 * 4 * n / timings["copy"].seconds  # bytes / s
  b_adam = _bytes_per_step(n, 2, False)
  rows = {}
  for name, (_, state_arrays, per_ex, note) in optimizers.items():
    for suffix in ("", OPTS):
      t, vs_adam = timings[name + suffix].seconds, timings[name + suffix].ratio
      b = _bytes_per_step(n, state_arrays, per_ex)
      share = vs_adam * b_adam / b
      rows[name + suffix] = {
        "ms_per_step": 1e3 * t,
        "vs_adam": vs_adam,
        "bytes_per_step": b,
        "vs_bytes_share_of_adam": share,
        "roofline_ms": 1e3 * b / bandwidth,
        "vs_roofline": t / (b / bandwidth),
        "issue_goal_vs_adam": ISSUE_GOALS.get(name),
        "meets_goal": bool(vs_adam <= ISSUE_GOALS[name] if name in ISSUE_GOALS else share <= GOAL),
        "note": note,
      }
  return {
    "layout": layout
    if shape is None or (n_leaves, shape) == LAYOUTS.get(layout)
    else (f"{n_leaves}x{'x'.join(map(str, shape))}"),
    "n_params": n,
    "copy_bandwidth_GBps": bandwidth / 1e9,
    "rounds": rounds,
    "reps_per_round": reps,
    "backend": jax.default_backend(),
    "device": str(jax.devices()[0]),
    "cpu": platform.processor() or platform.machine(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "compiler_options": options,
    "torch": _torch_comparison(),
    "optimizers": rows,
  }


def measure_layouts(layouts, rounds=15, reps=5, only=None):
  """:func:`measure` on each layout: every optimizer on the first, ``LAYOUT_ROWS`` on the rest."""
  out = {}
  for i, layout in enumerate(layouts):
    rows = only if i == 0 else [r for r in LAYOUT_ROWS if only is None or r in only]
    out[layout] = measure(layout, rounds=rounds, reps=reps, only=rows)
  return out


def _torch_comparison():
  if importlib.util.find_spec("torch") is None:
    return "PyTorch not installed: no peer comparison in this run"
  peers = [m for m in ("torch_optimizer", "pytorch_optimizer") if importlib.util.find_spec(m)]
  if not peers:
    return "torch installed but neither torch_optimizer nor pytorch_optimizer: skipped"
  return f"peer packages found ({peers}): the side-by-side table is `make bench-peers`"


def _print(out):
  print(
    f"\n{out['layout']}: {out['n_params'] / 1e6:.1f}M params, copy bandwidth"
    f" {out['copy_bandwidth_GBps']:.2f} GB/s on {out['device']}"
    f" ({out['rounds']}x{out['reps_per_round']} timed steps)"
  )
  hdr = (
    f"{'optimizer':<44}{'ms/step':>9}{'vs adam':>9}{'vs share':>10}{'roofline':>10}"
    f"{'goal':>8}{'':>6}"
  )
  print(hdr + "  note")
  print("-" * (len(hdr) + 20))
  for name, r in out["optimizers"].items():
    goal = r.get("issue_goal_vs_adam")
    goal = f"{goal:.1f}x" if goal else f"{GOAL:.1f}sh"
    print(
      f"{name:<44}{r['ms_per_step']:9.2f}{r['vs_adam']:9.2f}{r['vs_bytes_share_of_adam']:10.2f}"
      f"{r['vs_roofline']:9.2f}x{goal:>8}{'ok' if r['meets_goal'] else 'MISS':>6}  {r['note']}"
    )


def _ratios(out):
  return {
    f"{layout} | {name}": r["vs_adam"]
    for layout, o in out["layouts"].items()
    for name, r in o["optimizers"].items()
  }


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="1M parameters, fewer rounds")
  ap.add_argument("--only", nargs="+", help="time only these optimizers (and optax.adam)")
  ap.add_argument(
    "--layouts",
    nargs="+",
    choices=list(LAYOUTS),
    default=list(LAYOUTS),
    metavar="LAYOUT",
    help=f"which layouts (default: all of {list(LAYOUTS)})",
  )
  ap.add_argument(
    "--runs", type=int, default=3, help="fresh processes; the median over them is reported"
  )
  ap.add_argument("--json-to", help=argparse.SUPPRESS)  # a single run's output (for --runs)
  args = ap.parse_args()
  if args.quick:
    out = {
      "layouts": {
        "quick 4x500x500": measure(
          "quick 4x500x500", rounds=3, reps=3, only=args.only, n_leaves=4, shape=(500, 500)
        )
      }
    }
  elif args.runs <= 1:
    out = {"layouts": measure_layouts(args.layouts, only=args.only)}
    if args.json_to:
      pathlib.Path(args.json_to).write_text(json.dumps(out))
      return
  else:
    argv = (["--only", *args.only] if args.only else []) + ["--layouts", *args.layouts]
    out, summary = over_runs(__file__, args.runs, argv, _ratios)
    for row, r in summary.items():
      layout, name = row.split(" | ")
      goal = out["layouts"][layout]["optimizers"][name]["issue_goal_vs_adam"]
      r.update(goal=goal, meets_goal=None if goal is None else bool(r["median"] <= goal))
    out.update(runs=args.runs, summary_over_runs=summary)
  for o in out["layouts"].values():
    _print(o)
  first = next(iter(out["layouts"].values()))
  print(
    f"\ngoal: the project's ratio to optax.adam (x) where it sets one, else {GOAL} times the"
    f" bytes share of optax.adam (sh). Rows '{OPTS.strip()}': jitted with"
    f" compiler_options={first['compiler_options']}; XLA_FLAGS: {first['xla_flags'] or '(none)'}"
  )
  print(f"torch: {first['torch']}")
  if "summary_over_runs" in out:
    print(f"\nover {args.runs} runs (fresh processes): median ratio to optax.adam [range]")
    for row, r in out["summary_over_runs"].items():
      (lo, hi), goal = r["min_max"], r["goal"]
      verdict = "" if goal is None else ("ok" if r["meets_goal"] else "MISS")
      goal = "" if goal is None else f"goal {goal:.1f}x"
      print(f"{row:<58}{r['median']:7.2f} [{lo:.2f}, {hi:.2f}]  {goal:>10} {verdict}")
  path = output_path("optim.json", args.quick or args.only is not None)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=2))
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
