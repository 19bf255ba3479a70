"""tpSGD for RNNs against backpropagation through time, on sklearn digits read row by row.

Each 8x8 image is an 8-step sequence of 8 pixels; a tanh Elman RNN 8-64-10 (one recurrent
layer) and 8-64-64-10 (two) are trained with SGD (lr 0.05, momentum 0.9, batch 64, 30
epochs, 3 seeds) by BPTT (``jax.grad`` of the cross-entropy of ``rnn_apply``) and by
``optim.local.tpsgd_rnn_grads`` with the target on every step and on the last step only,
and a control that trains the output layer alone (the recurrent layers stay random, an
echo-state network); for the one-layer net, tpSGD also at lr 0.01 and 0.2.
Then the memory claim: peak bytes (arguments + outputs + temporaries,
``memory_analysis()``) of one compiled training step, BPTT vs tpSGD, as the sequence
grows (batch 256, width 256, one recurrent layer).

Usage: ``.venv/bin/python bench/repro_tpsgd_rnn.py [--quick]``. Writes
``bench/results/repro_tpsgd_rnn.json`` (``--quick``: the temporary directory).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from _timing import output_path  # noqa: E402

from jaxdiff.models import load_digits  # noqa: E402
from optim.local import rnn_apply, rnn_init, tpsgd_projections, tpsgd_rnn_grads  # noqa: E402

SEEDS = (0, 1, 2)
RULES = ("bptt", "tpsgd_all", "tpsgd_last", "readout_only")


def _data():
  d = load_digits(key=0)
  seq = lambda a: np.asarray(a, np.float32).reshape(len(a), 8, 8)  # noqa: E731 - rows = steps
  return seq(d.train_x), np.asarray(d.train_y), seq(d.test_x), np.asarray(d.test_y)


def _grads(rule, params, proj, x, y):
  if rule == "bptt":

    def loss(p):
      return optax.softmax_cross_entropy_with_integer_labels(rnn_apply(p, x), y).mean()

    return jax.grad(loss)(params)
  steps = "all" if rule == "tpsgd_all" else "last"
  grads = tpsgd_rnn_grads(params, proj, x, y, target_steps=steps)[0]
  if rule == "readout_only":  # control: the recurrent layers stay at their random init
    grads = [jax.tree.map(jnp.zeros_like, g) for g in grads[:-1]] + grads[-1:]
  return grads


def _train(rule, sizes, seed, epochs, data, lr=0.05, batch=64):
  xtr, ytr, xte, yte = data
  params = rnn_init(sizes, key=seed)
  proj = tpsgd_projections(sizes, key=seed + 100)
  tx = optax.sgd(lr, momentum=0.9)
  state = tx.init(params)

  @jax.jit
  def step(params, state, x, y):
    updates, state = tx.update(_grads(rule, params, proj, x, y), state)
    return optax.apply_updates(params, updates), state

  n = len(xtr)
  for e in range(epochs):
    perm = np.asarray(jax.random.permutation(jax.random.key(1000 * seed + e), n))
    for i in range(0, n - batch + 1, batch):
      idx = perm[i : i + batch]
      params, state = step(params, state, xtr[idx], ytr[idx])
  return float(np.mean(np.argmax(np.asarray(rnn_apply(params, xte)), 1) == yte))


def _step_bytes(rule, steps, width, batch):
  sizes = [8, width, 10]
  params = rnn_init(sizes, key=0)
  proj = tpsgd_projections(sizes, key=1)
  x, y = jnp.zeros((batch, steps, 8)), jnp.zeros((batch,), jnp.int32)

  def step(params, x, y):
    g = _grads(rule, params, proj, x, y)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, g)

  m = jax.jit(step).lower(params, x, y).compile().memory_analysis()
  total = int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)
  return total, int(m.temp_size_in_bytes)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
  args = ap.parse_args(argv)
  t0 = time.perf_counter()
  data = _data()
  epochs = 2 if args.quick else 30
  out = {
    "task": "digits rows as 8-step sequences of 8 pixels",
    "epochs": epochs,
    "optimizer": "sgd(0.05, momentum=0.9), batch 64",
    "accuracy": {},
  }
  for sizes in ([8, 64, 10], [8, 64, 64, 10]):
    arch = "-".join(map(str, sizes))
    rows = {}
    for rule in RULES:
      accs = [_train(rule, sizes, s, epochs, data) for s in SEEDS]
      rows[rule] = {"test_accuracy": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs))}
      print(
        f"{arch:12s} {rule:10s} test accuracy {np.mean(accs):.4f} +- {np.std(accs):.4f}  {accs}"
      )
    out["accuracy"][arch] = rows
  sweep = {}
  for rule in ("tpsgd_all", "tpsgd_last"):
    for lr in (0.01, 0.2):
      accs = [_train(rule, [8, 64, 10], s, epochs, data, lr=lr) for s in SEEDS]
      sweep[f"{rule}_lr{lr}"] = {"test_accuracy": accs, "mean": float(np.mean(accs))}
      print(f"8-64-10 {rule:10s} lr {lr}: {np.mean(accs):.4f} +- {np.std(accs):.4f}  {accs}")
  out["lr_sweep_8-64-10"] = sweep
  memory = []
  for steps in (8, 32) if args.quick else (8, 32, 128, 512):
    bp, bp_temp = _step_bytes("bptt", steps, 256, 256)
    tp, tp_temp = _step_bytes("tpsgd_all", steps, 256, 256)
    memory.append(
      {
        "time_steps": steps,
        "width": 256,
        "batch": 256,
        "bptt_bytes": bp,
        "bptt_temp_bytes": bp_temp,
        "tpsgd_bytes": tp,
        "tpsgd_temp_bytes": tp_temp,
        "ratio": tp / bp,
      }
    )
    print(
      f"T {steps:3d}: peak bytes BPTT {bp:>10d} (temp {bp_temp:>10d})  "
      f"tpSGD {tp:>10d} (temp {tp_temp:>9d})  {tp / bp:.3f}x"
    )
  out["memory"] = memory
  out["device"] = jax.devices()[0].platform
  out["wall_seconds"] = round(time.perf_counter() - t0, 1)
  path = output_path("repro_tpsgd_rnn.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1) + "\n")
  print(f"{out['wall_seconds']} s -> {path}")


if __name__ == "__main__":
  main()
