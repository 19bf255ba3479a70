"""Per-step cost of the curvature-based optimizers, as a ratio to AdamW in the same run.

A step is everything a training loop pays: ``value_and_grad`` of a ~10M-parameter MLP on
one batch, the optimizer update (with its Hessian-vector product or sliding-window
solve) and ``apply_updates``, jitted together. Optimizers are timed in interleaved
rounds (every round times each optimizer once, ``bench/_timing.py``) and each ratio is the
median over rounds of the per-round ratio, which keeps slow drifts of a shared machine out
of the ratios.

Goals: Sophia (k = 10) <= 1.15x AdamW; AdaHessian (one HVP per step) <= 2.5x;
M-FAC at m = 32 reported.

    .venv/bin/python bench/bench_optim_second_order.py [--quick]

It writes ``bench/results/optim_second_order.json`` (``--quick``: the temporary directory
instead); ``make bench`` runs it after ``bench/bench_optim.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from _timing import Stateful, compare, output_path  # noqa: E402

import optim  # noqa: E402

GOALS = {"sophia_h_k10": 1.15, "sophia_g_k10": 1.15, "adahessian": 2.5}


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
    "sophia_g_k10": optim.sophia(1e-3, variant="gnb", batch_size=batch, key=0),
    "adahessian": optim.adahessian(0.15, key=0),
    "mfac_m32": optim.mfac(1e-3, num_grads=32, damping=1e-4),
  }


class _GradOnly:
  """Marker: time ``value_and_grad`` alone."""


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

  if isinstance(tx, (_GradOnly, _HvpOnly)):
    tx.init = lambda params: jax.random.key(0)

    @jax.jit
    def component(params, state):
      if isinstance(tx, _GradOnly):
        return params, state, jax.value_and_grad(loss)(params)
      v = optim._tree.tree_probe(state, params)
      return params, state, optim.curvature.hvp(loss, params, v)

    return component

  # Params and state are donated, as in any training loop: M-FAC's gradient window is then
  # updated in place instead of copied every step.
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state):
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grads, state, params, obj_fn=loss, sampled_obj_fn=sampled)
    return optax.apply_updates(params, updates), state, value

  return step


def measure(sizes=(1024, 2048, 2048, 2048, 10), batch=128, rounds=7, steps_per_round=10):
  """Median per-step seconds of each optimizer; ``steps_per_round`` is a multiple of 10."""
  key = jax.random.key(0)
  params = _mlp_init(key, sizes)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  x = jax.random.normal(jax.random.key(1), (batch, sizes[0]))
  y = jax.random.randint(jax.random.key(2), (batch,), 0, sizes[-1])
  todo = dict(_optimizers(batch))
  # Components, for reading the ratios: one gradient, and one Hessian-vector product.
  todo["component_grad"] = _GradOnly()
  todo["component_hvp"] = _HvpOnly()
  timed = {}
  for name, tx in todo.items():
    step = _make_step(tx, x, y)
    p = jax.tree.map(jnp.copy, params)  # donated: every optimizer gets its own copy
    timed[name] = Stateful(lambda psv, _step=step: _step(psv[0], psv[1]), (p, tx.init(p), None))
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
  print(f"{'optimizer':<14} {'ms/step':>9} {'x AdamW':>8} {'range':>13} {'goal':>6}")
  for name, r in out["results"].items():
    if name.startswith("component_"):
      print(f"{name:<14} {r['ms']:9.1f} {r['ratio_to_adamw_step']:8.2f}   (alone, no update)")
      continue
    goal = "" if r["goal"] is None else f"{r['goal']:.2f}"
    lo, hi = r["ratio_min_max"]
    print(
      f"{name:<14} {r['ms_per_step']:9.1f} {r['ratio_to_adamw']:8.2f} "
      f"{f'[{lo:.2f}, {hi:.2f}]':>13} {goal:>6}"
    )


def run(results: dict, quick: bool = False) -> dict:
  """Measures, prints, stores under ``results['optim_second_order']`` and writes JSON."""
  kwargs = dict(rounds=3, sizes=(512, 1024, 1024, 10), batch=64) if quick else {}
  out = measure(**kwargs)
  _print(out)
  results["optim_second_order"] = out
  path = output_path("optim_second_order.json", quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=2))
  print(f"wrote {path}")
  return out


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="a ~2M-parameter smoke run")
  run({}, quick=parser.parse_args().quick)
