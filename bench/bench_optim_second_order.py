"""Per-step cost of the curvature-based optimizers, as a ratio to AdamW in the same run.

A step is everything a training loop pays: ``value_and_grad`` of a ~10M-parameter MLP on
one batch, the optimizer update (with its Hessian-vector product or sliding-window
solve) and ``apply_updates``, jitted together. Optimizers are timed in interleaved
rounds (every round times each optimizer once, ``bench/_timing.py``) and each ratio is the
median over rounds of the per-round ratio, which keeps slow drifts of a shared machine out
of the ratios.

Goals: Sophia-H (k = 10) <= 1.3x AdamW on CPU (1.15x where an HVP costs less);
AdaHessian <= 1.1x one ``jax.jvp(jax.value_and_grad(f))`` pass (``component_vg_hvp``: the
floor of any step that needs a gradient and an HVP); M-FAC at m = 32 reported. The
``*_one_pass`` rows take loss, gradient and HVP from one such pass
(``optim.curvature.value_grad_and_hvp`` with the optimizer's probe, passed as ``hvp=``);
the plain rows compute a gradient and let the optimizer compute its HVP (``obj_fn=``).
``sophia_h_k10_one_pass_loop`` is the one-pass loop that also tells Sophia which steps
refresh (``refresh=True/False``), so neither compiled step traces a ``lax.cond``.

    .venv/bin/python bench/bench_optim_second_order.py [--quick] [--runs N]

It measures ``--runs`` times (3 by default), each in a fresh process, and reports the
median and range of each ratio over the runs (``_timing.over_runs``), then writes
``bench/results/optim_second_order.json`` (``--quick``: the temporary directory instead);
``make bench`` runs it after ``bench/bench_optim.py``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import pathlib
import platform
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from _timing import Stateful, compare, output_path, over_runs, ratio  # noqa: E402

import optim  # noqa: E402

GOALS = {"sophia_h_k10_one_pass": 1.3, "sophia_h_k10_one_pass_loop": 1.3, "sophia_g_k10": 1.3}
# AdaHessian's goal is relative to one forward-over-reverse pass, not to AdamW.
ONE_PASS_GOALS = {"adahessian_one_pass": 1.1}


def _mlp_init(key, sizes):
  params = []
  for k, (a, b) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
    params.append({"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)})
  return params


def _mlp_apply(params, x):
  for layer in params[:-1]:
    x = jax.nn.gelu(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def _optimizers(batch: int):
  return {
    "adamw": optax.adamw(1e-3, weight_decay=0.1),
    "sophia_h_k10": optim.sophia(1e-3, update_interval=10, key=0),
    "sophia_h_k10_one_pass": _OnePass(optim.sophia(1e-3, update_interval=10, key=0), 10),
    "sophia_h_k10_one_pass_loop": _OnePass(
      optim.sophia(1e-3, update_interval=10, key=0), 10, loop_decides=True
    ),
    "sophia_g_k10": optim.sophia(1e-3, variant="gnb", batch_size=batch, key=0),
    "adahessian": optim.adahessian(0.15, key=0),
    "adahessian_one_pass": _OnePass(optim.adahessian(0.15, key=0), 1),
    "mfac_m32": optim.mfac(1e-3, num_grads=32, damping=1e-4),
  }


class _OnePass(NamedTuple):
  """A Hutchinson-curvature optimizer stepped with loss, gradient and HVP from one pass
  on its refresh steps (every ``interval``-th), and a plain gradient on the others.
  ``loop_decides``: pass Sophia's ``refresh=`` flag (the loop's schedule, no cond traced)."""

  tx: optax.GradientTransformationExtraArgs
  interval: int
  loop_decides: bool = False


class _GradOnly:
  """Marker: time ``value_and_grad`` alone."""


class _VgHvpOnly:
  """Marker: time one ``optim.curvature.value_grad_and_hvp`` alone."""


class _HvpOnly:
  """Marker: time one ``optim.curvature.hvp`` alone (forward-over-reverse)."""


def _make_step(tx, x, y):
  def loss(params):
    logits = _mlp_apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def sampled(params, key):
    logits = _mlp_apply(params, x)
    ys = jax.random.categorical(key, jax.lax.stop_gradient(logits))
    return optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean()

  if isinstance(tx, (_GradOnly, _HvpOnly, _VgHvpOnly)):
    tx.init = lambda params: jax.random.key(0)

    @jax.jit
    def component(params, state):
      if isinstance(tx, _GradOnly):
        return params, state, jax.value_and_grad(loss)(params)
      v = optim._tree.tree_probe(state, params)
      if isinstance(tx, _VgHvpOnly):
        return params, state, optim.curvature.value_grad_and_hvp(loss, params, v)
      return params, state, optim.curvature.hvp(loss, params, v)

    return component

  if isinstance(tx, _OnePass):
    # Two compiled steps chosen by the training loop's own step index (no lax.cond, so an
    # ordinary step is exactly the plain one and no zero HVP is materialized).
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def refresh_step(params, state):
      value, grads, hz = optim.curvature.value_grad_and_hvp(loss, params, state[0].probe(params))
      flag = {"refresh": True} if tx.loop_decides else {}
      updates, state = tx.tx.update(grads, state, params, hvp=hz, **flag)
      return optax.apply_updates(params, updates), state, value

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def plain_step(params, state):
      value, grads = jax.value_and_grad(loss)(params)
      extra = {"refresh": False} if tx.loop_decides else {"obj_fn": loss}
      updates, state = tx.tx.update(grads, state, params, **extra)
      return optax.apply_updates(params, updates), state, value

    steps = itertools.count()
    return lambda p, s: (refresh_step if next(steps) % tx.interval == 0 else plain_step)(p, s)

  # Params and state are donated, as in any training loop: M-FAC's gradient window is then
  # updated in place instead of copied every step.
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state):
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grads, state, params, obj_fn=loss, sampled_obj_fn=sampled)
    return optax.apply_updates(params, updates), state, value

  return step


def measure(sizes=(1024, 2048, 2048, 2048, 10), batch=128, rounds=7, steps_per_round=10, only=None):
  """Median per-step seconds of each optimizer; ``steps_per_round`` is a multiple of 10.

  ``only``: a subset of the rows (``adamw`` and the components are always timed)."""
  key = jax.random.key(0)
  params = _mlp_init(key, sizes)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  x = jax.random.normal(jax.random.key(1), (batch, sizes[0]))
  y = jax.random.randint(jax.random.key(2), (batch,), 0, sizes[-1])
  todo = dict(_optimizers(batch))
  # Components, for reading the ratios: one gradient, and one Hessian-vector product.
  todo["component_grad"] = _GradOnly()
  todo["component_hvp"] = _HvpOnly()
  todo["component_vg_hvp"] = _VgHvpOnly()
  if only is not None:
    todo = {k: v for k, v in todo.items() if k in (*only, "adamw") or k.startswith("component_")}
  timed = {}
  for name, tx in todo.items():
    step = _make_step(tx, x, y)
    p = jax.tree.map(jnp.copy, params)  # donated: every optimizer gets its own copy
    init = tx.tx.init if isinstance(tx, _OnePass) else tx.init
    timed[name] = Stateful(lambda psv, _step=step: _step(psv[0], psv[1]), (p, init(p), None))
  # One warm-up step (its time: compilation + the first step).
  timings = compare(
    timed, baseline="adamw", rounds=rounds, calls_per_round=steps_per_round, warmup=1
  )
  table = {}
  for name, t in timings.items():
    if name.startswith("component_"):
      table[name] = {"ms": 1e3 * t.seconds, "ratio_to_adamw_step": t.ratio}
      continue
    table[name] = {
      "ms_per_step": 1e3 * t.seconds,
      "ratio_to_adamw": t.ratio,
      "ratio_min_max": list(t.ratio_min_max),
      "goal": GOALS.get(name),
      "meets_goal": None if name not in GOALS else bool(t.ratio <= GOALS[name]),
      "compile_s": t.warmup_s,
    }
    if name in ONE_PASS_GOALS:
      r = ratio(t, timings["component_vg_hvp"])
      goal = ONE_PASS_GOALS[name]
      table[name].update(ratio_to_vg_hvp=r, goal_vs_vg_hvp=goal, meets_goal=bool(r <= goal))
  return {
    "model": {"sizes": list(sizes), "n_params": int(n_params), "batch": batch},
    "rounds": rounds,
    "steps_per_round": steps_per_round,
    "device": str(jax.devices()[0]),
    "backend": jax.default_backend(),
    "cpu": platform.processor() or platform.machine(),
    "jax": jax.__version__,
    "results": table,
  }


def _print(out):
  m = out["model"]
  print(
    f"# {m['n_params'] / 1e6:.1f}M-param MLP {m['sizes']}, batch {m['batch']}, "
    f"{out['backend']}; median of {out['rounds']} rounds x {out['steps_per_round']} steps"
  )
  print(f"{'optimizer':<22} {'ms/step':>9} {'x AdamW':>8} {'range':>13} {'goal':>6}")
  for name, r in out["results"].items():
    if name.startswith("component_"):
      print(f"{name:<22} {r['ms']:9.1f} {r['ratio_to_adamw_step']:8.2f}   (alone, no update)")
      continue
    goal = "" if r["goal"] is None else f"{r['goal']:.2f}"
    if "ratio_to_vg_hvp" in r:
      goal = f"{r['ratio_to_vg_hvp']:.2f}x one pass (goal {r['goal_vs_vg_hvp']:.2f})"
    lo, hi = r["ratio_min_max"]
    print(
      f"{name:<22} {r['ms_per_step']:9.1f} {r['ratio_to_adamw']:8.2f} "
      f"{f'[{lo:.2f}, {hi:.2f}]':>13} {goal:>6}"
    )


def run(results: dict, quick: bool = False, only=None) -> dict:
  """Measures, prints, stores under ``results['optim_second_order']`` and writes JSON (to the
  temporary directory for ``quick`` or ``only`` runs)."""
  kwargs = dict(rounds=3, sizes=(512, 1024, 1024, 10), batch=64) if quick else {}
  out = measure(**kwargs, only=only)
  _print(out)
  results["optim_second_order"] = out
  path = output_path("optim_second_order.json", quick or only is not None)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=2))
  print(f"wrote {path}")
  return out


def _ratios(out: dict) -> dict:
  """Row -> ratio to AdamW; the one-pass goal rows also as ``"<row> / one pass"``."""
  rows = {}
  for name, r in out["results"].items():
    rows[name] = r.get("ratio_to_adamw", r.get("ratio_to_adamw_step"))
    if "ratio_to_vg_hvp" in r:
      rows[f"{name} / one pass"] = r["ratio_to_vg_hvp"]
  return rows


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="a ~2M-parameter smoke run")
  parser.add_argument("--only", nargs="+", help="time only these rows (and adamw)")
  parser.add_argument(
    "--runs", type=int, default=3, help="fresh processes; the median over them is reported"
  )
  parser.add_argument("--json-to", help=argparse.SUPPRESS)  # a single run's output (for --runs)
  args = parser.parse_args()
  if args.json_to:
    pathlib.Path(args.json_to).write_text(json.dumps(measure(only=args.only)))
  elif args.quick or args.runs <= 1:
    run({}, quick=args.quick, only=args.only)
  else:
    out, summary = over_runs(
      __file__,
      args.runs,
      ["--only", *args.only] if args.only else [],
      _ratios,
    )
    out.update(runs=args.runs, summary_over_runs=summary)
    _print(out)
    print(f"\nover {args.runs} runs (fresh processes): median ratio to AdamW [range]")
    for name, r in summary.items():
      lo, hi = r["min_max"]
      goal = GOALS.get(name, ONE_PASS_GOALS.get(name.removesuffix(" / one pass")))
      if name in ONE_PASS_GOALS:  # its goal is the one-pass row's
        goal = None
      verdict = "" if goal is None else ("ok" if r["median"] <= goal else "MISS")
      print(f"{name:<24}{r['median']:7.2f} [{lo:.2f}, {hi:.2f}]  {verdict}")
    path = output_path("optim_second_order.json", args.only is not None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
