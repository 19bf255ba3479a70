"""Studies of the learning rules without end-to-end backprop, on sklearn digits.

``tpsgd``: tpSGD (``optim.local.tpsgd_grads`` + ``optax.sgd``) against backprop SGD on the
same tanh MLP (64-128-64-10), equal epochs, 3 seeds; then the memory claim: the peak
bytes (arguments + outputs + temporaries, ``memory_analysis()``) of one compiled training
step, backprop vs tpSGD as one program and tpSGD layer by layer, at several depths.
``boost``: a 128-unit hidden layer built by gradient boosting (8 blocks of 16, each fitted
to the cross-entropy's pseudo-residuals with Adam) against the same 64-128-10 network
trained by backprop for as many full-batch steps, with the accuracy as blocks are switched
off at test time. ``noprop``: NoProp-DT (10 blocks,
each an MLP on the image and the noisy one-hot label, AdamW) against a backprop MLP of one
block's size and against tpSGD, equal epochs, 3 seeds.
``noprop_ct`` / ``noprop_fm``: NoProp-CT (one MLP on the image, the noisy one-hot label and
features of t, fixed cosine schedule, 40-step ancestral chain) and NoProp-FM (the same MLP as
a vector field, 40 Euler steps, nearest one-hot embedding), AdamW, the DT study's epochs and
seeds; the DT and backprop figures they are compared with are the ``noprop`` study's.

Usage: ``.venv/bin/python bench/repro_beyond_backprop.py tpsgd noprop noprop_ct noprop_fm boost
[--quick]``. Writes
``bench/results/repro_beyond_backprop.json`` (``--quick``: the temporary directory).
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
from optim.local import (  # noqa: E402
  mlp_apply,
  mlp_init,
  noprop_ct_loss,
  noprop_ct_predict,
  noprop_dt_loss,
  noprop_fm_loss,
  noprop_fm_predict,
  noprop_predict,
  noprop_schedule,
  tpsgd_grads,
  tpsgd_projections,
)
from optim.loops import boost_layer, boosted_layer_apply  # noqa: E402

SEEDS = (0, 1, 2)


def _accuracy_row(accs) -> dict:
  """The per-seed test accuracies with their mean and (population) std, as the JSON keeps them."""
  return {"test_accuracy": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs))}


def _data():
  d = load_digits(key=0)
  flat = lambda a: np.asarray(a, np.float32).reshape(len(a), -1)  # noqa: E731
  return flat(d.train_x), np.asarray(d.train_y), flat(d.test_x), np.asarray(d.test_y)


def _batches(n, batch, key):
  perm = np.asarray(jax.random.permutation(key, n))
  return [perm[i : i + batch] for i in range(0, n - batch + 1, batch)]


def _accuracy(logits, y):
  return float(np.mean(np.argmax(np.asarray(logits), 1) == y))


def _bp_grads(params, x, y):
  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(mlp_apply(p, x), y).mean()

  return jax.grad(loss)(params)


def _train_mlp(rule, sizes, seed, epochs, lr, data, batch=64):
  xtr, ytr, xte, yte = data
  params = mlp_init(sizes, key=seed)
  proj = tpsgd_projections(sizes, key=seed + 100)
  tx = optax.sgd(lr, momentum=0.9)
  state = tx.init(params)

  @jax.jit
  def step(params, state, x, y):
    g = _bp_grads(params, x, y) if rule == "backprop" else tpsgd_grads(params, proj, x, y)[0]
    updates, state = tx.update(g, state)
    return optax.apply_updates(params, updates), state

  for e in range(epochs):
    for idx in _batches(len(xtr), batch, jax.random.key(1000 * seed + e)):
      params, state = step(params, state, xtr[idx], ytr[idx])
  return _accuracy(mlp_apply(params, xte), yte)


def _program_bytes(fn, *args) -> int:
  """Arguments + outputs + temporaries of one compiled program (no donation)."""
  m = jax.jit(fn).lower(*args).compile().memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def _step_bytes(depth, width, batch):
  """Peak bytes of one training step: backprop and tpSGD as one program, and tpSGD run
  layer by layer (one program per layer, as an edge device would: the layer's program
  with its input batch and the labels, plus every other layer's parameters, which stay
  resident; the peak is the largest over the layers)."""
  sizes = [64] + [width] * depth + [10]
  params = mlp_init(sizes, key=0)
  proj = tpsgd_projections(sizes, key=1)
  x, y = jnp.zeros((batch, 64)), jnp.zeros((batch,), jnp.int32)

  def whole(rule):
    def step(params, x, y):
      g = _bp_grads(params, x, y) if rule == "backprop" else tpsgd_grads(params, proj, x, y)[0]
      return jax.tree.map(lambda p, g: p - 0.1 * g, params, g)

    return _program_bytes(step, params, x, y)

  def hidden(layer, p, h, y):  # one layer: its local gradient, update and output
    head = {"w": jnp.zeros((p.shape[1], 10)), "b": jnp.zeros(10)}
    g, _ = tpsgd_grads([layer, head], [p], h, y)
    new = jax.tree.map(lambda a, b: a - 0.1 * b, layer, g[0])
    return new, jnp.tanh(h @ layer["w"] + layer["b"])

  def output(layer, h, y):
    g, _ = tpsgd_grads([layer], [], h, y)
    return jax.tree.map(lambda a, b: a - 0.1 * b, layer, g[0])

  per_layer, h = [], x
  for layer, p in zip(params[:-1], proj, strict=True):
    per_layer.append(_program_bytes(hidden, layer, p, h, y))
    h = jnp.zeros((batch, layer["w"].shape[1]))
  per_layer.append(_program_bytes(output, params[-1], h, y))
  # The other layers' parameters stay resident while one layer trains: add them.
  sizes_bytes = [sum(a.nbytes for a in jax.tree.leaves(layer)) for layer in params]
  total = sum(sizes_bytes)
  peaks = [b + total - own for b, own in zip(per_layer, sizes_bytes, strict=True)]
  return whole("backprop"), whole("tpsgd"), max(peaks)


def study_tpsgd(quick: bool) -> dict:
  data = _data()
  sizes, epochs = [64, 128, 64, 10], 2 if quick else 30
  rows = {}
  for rule, lr in (("backprop", 0.05), ("tpsgd", 0.05)):
    accs = [_train_mlp(rule, sizes, s, epochs, lr, data) for s in SEEDS]
    rows[rule] = _accuracy_row(accs)
    print(f"{rule:9s} test accuracy {np.mean(accs):.4f} +- {np.std(accs):.4f}  {accs}")
  memory = []
  batch, width = 256, 256
  for depth in (2, 4, 8) if quick else (2, 4, 8, 16):
    bp, tp, tp_layer = _step_bytes(depth, width, batch)
    memory.append(
      {
        "depth": depth,
        "width": width,
        "batch": batch,
        "backprop_bytes": bp,
        "tpsgd_one_program_bytes": tp,
        "tpsgd_layerwise_peak_bytes": tp_layer,
        "ratio_one_program": tp / bp,
        "ratio_layerwise": tp_layer / bp,
      }
    )
    print(
      f"depth {depth:2d}: peak bytes backprop {bp:>9d}  tpSGD one program {tp:>9d} "
      f"({tp / bp:.2f}x)  tpSGD layer by layer {tp_layer:>9d} ({tp_layer / bp:.2f}x)"
    )
  return {
    "sizes": sizes,
    "epochs": epochs,
    "optimizer": "sgd(lr, momentum=0.9), batch 64",
    "accuracy": rows,
    "memory": memory,
    "device": jax.devices()[0].platform,
  }


def _block(p, x, z):
  h = jnp.tanh(jnp.concatenate([x, z], 1) @ p[0]["w"] + p[0]["b"])
  return h @ p[1]["w"] + p[1]["b"]


def _readout(p, z):
  return z @ p["w"] + p["b"]


def study_noprop(quick: bool) -> dict:
  data = xtr, ytr, xte, yte = _data()
  T, hidden, epochs = 10, 128, 2 if quick else 30
  ab = noprop_schedule(T)
  out = {
    "blocks": T,
    "hidden": hidden,
    "epochs": epochs,
    "schedule": "cosine",
    "optimizer": "adamw(1e-2, weight_decay=1e-3), batch 64",
    "eta": 0.1,
  }
  accs = []
  for seed in SEEDS:
    keys = jax.random.split(jax.random.key(seed), T + 1)
    params = {
      "blocks": [mlp_init([74, hidden, 10], key=k) for k in keys[:T]],
      "readout": mlp_init([10, 10], key=keys[T])[0],
    }
    tx = optax.adamw(1e-2, weight_decay=1e-3)
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y, key):
      def loss(p):
        return noprop_dt_loss(
          p, x, y, ab, denoise=_block, readout=_readout, key=key, num_classes=10
        )[0]

      g = jax.grad(loss)(params)
      updates, state = tx.update(g, state, params)
      return optax.apply_updates(params, updates), state

    for e in range(epochs):
      for i, idx in enumerate(_batches(len(xtr), 64, jax.random.key(1000 * seed + e))):
        params, state = step(
          params, state, xtr[idx], ytr[idx], jax.random.key(10**6 * seed + 1000 * e + i)
        )
    logits = noprop_predict(
      params, xte, ab, denoise=_block, readout=_readout, key=seed, num_classes=10
    )
    accs.append(_accuracy(logits, yte))
  out["noprop_dt"] = _accuracy_row(accs)
  print(f"NoProp-DT test accuracy {np.mean(accs):.4f} +- {np.std(accs):.4f}  {accs}")
  bp = [_train_mlp("backprop", [64, hidden, 10], s, epochs, 0.05, data) for s in SEEDS]
  out["backprop_64_128_10"] = _accuracy_row(bp)
  print(f"backprop 64-{hidden}-10 test accuracy {np.mean(bp):.4f} +- {np.std(bp):.4f}  {bp}")
  tp = [_train_mlp("tpsgd", [64, hidden, 10], s, epochs, 0.05, data) for s in SEEDS]
  out["tpsgd_64_128_10"] = _accuracy_row(tp)
  print(f"tpSGD 64-{hidden}-10 test accuracy {np.mean(tp):.4f} +- {np.std(tp):.4f}  {tp}")
  return out


def _time_net(p, x, z, t):
  k = jnp.arange(1, 5, dtype=z.dtype)
  feats = [t[:, None], jnp.sin(jnp.pi * k * t[:, None]), jnp.cos(jnp.pi * k * t[:, None])]
  return mlp_apply(p, jnp.concatenate([x, z, *feats], 1))


def _study_noprop_continuous(kind: str, quick: bool) -> dict:
  xtr, ytr, xte, yte = _data()
  hidden, epochs, lr, steps = 128, 2 if quick else 30, 1e-3, 40
  out = {
    "net": f"MLP 83-{hidden}-{hidden}-10 on (image, z, t features)",
    "epochs": epochs,
    "optimizer": f"adamw({lr}, weight_decay=1e-3), batch 64",
    "num_steps": steps,
    "embedding": "one-hot (fixed)",
  }
  if kind == "ct":
    out |= {"schedule": "cosine (fixed)", "eta": 1.0, "sampler": "ancestral"}
  else:
    out |= {"eta": 1.0, "scores": "nearest embedding"}
  accs = []
  for seed in SEEDS:
    k_net, k_out = jax.random.split(jax.random.key(seed))
    params = {"net": mlp_init([83, hidden, hidden, 10], key=k_net)}
    if kind == "ct":
      params["readout"] = mlp_init([10, 10], key=k_out)[0]
    tx = optax.adamw(lr, weight_decay=1e-3)
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y, key):
      def loss(p):
        if kind == "ct":
          return noprop_ct_loss(
            p, x, y, denoise=_time_net, readout=_readout, key=key, num_classes=10
          )[0]
        return noprop_fm_loss(p, x, y, vector_field=_time_net, key=key, num_classes=10)[0]

      g = jax.grad(loss)(params)
      updates, state = tx.update(g, state, params)
      return optax.apply_updates(params, updates), state

    for e in range(epochs):
      for i, idx in enumerate(_batches(len(xtr), 64, jax.random.key(1000 * seed + e))):
        params, state = step(
          params, state, xtr[idx], ytr[idx], jax.random.key(10**6 * seed + 1000 * e + i)
        )
    if kind == "ct":
      logits = noprop_ct_predict(
        params,
        xte,
        denoise=_time_net,
        readout=_readout,
        key=seed,
        num_steps=steps,
        num_classes=10,
      )
    else:
      logits = noprop_fm_predict(
        params, xte, vector_field=_time_net, key=seed, num_steps=steps, num_classes=10
      )
    accs.append(_accuracy(logits, yte))
  name = f"noprop_{kind}"
  out[name] = _accuracy_row(accs)
  print(f"NoProp-{kind.upper()} test accuracy {np.mean(accs):.4f} +- {np.std(accs):.4f}  {accs}")
  return out


def study_noprop_ct(quick: bool) -> dict:
  return _study_noprop_continuous("ct", quick)


def study_noprop_fm(quick: bool) -> dict:
  return _study_noprop_continuous("fm", quick)


def study_boost(quick: bool) -> dict:
  xtr, ytr, xte, yte = _data()
  J, m, steps = 8, 16, 30 if quick else 300
  out = {
    "blocks": J,
    "block_size": m,
    "steps_per_block": steps,
    "optimizer": "adam(1e-2), full batch",
    "loss": "cross_entropy",
  }
  boosted, bp = [], []
  for seed in SEEDS:
    layer = boost_layer(
      xtr,
      ytr,
      num_blocks=J,
      block_size=m,
      optimizer=optax.adam(1e-2),
      num_steps=steps,
      key=seed,
      loss="cross_entropy",
      num_classes=10,
    )
    boosted.append(
      [_accuracy(boosted_layer_apply(layer, xte, num_blocks=j), yte) for j in range(1, J + 1)]
    )
    params = mlp_init([64, J * m, 10], key=seed)
    tx = optax.adam(1e-2)

    def step(carry, _):
      p, s = carry
      g = _bp_grads(p, xtr, ytr)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=J * steps))(
      (params, tx.init(params))
    )
    bp.append(_accuracy(mlp_apply(params, xte), yte))
  acc = np.array(boosted)
  out["boosted_accuracy_by_blocks"] = {"mean": acc.mean(0).tolist(), "std": acc.std(0).tolist()}
  out["backprop_64_128_10"] = _accuracy_row(bp)
  for j in range(J):
    print(
      f"boosted, {j + 1} blocks ({(j + 1) * m:3d} units): "
      f"{acc[:, j].mean():.4f} +- {acc[:, j].std():.4f}"
    )
  print(
    f"backprop 64-{J * m}-10 ({J * steps} full-batch steps): {np.mean(bp):.4f} +- {np.std(bp):.4f}"
  )
  return out


STUDIES = {
  "tpsgd": study_tpsgd,
  "noprop": study_noprop,
  "noprop_ct": study_noprop_ct,
  "noprop_fm": study_noprop_fm,
  "boost": study_boost,
}


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("study", nargs="+", help=f"'all' or some of: {', '.join(STUDIES)}")
  ap.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
  args = ap.parse_args(argv)
  names = list(STUDIES) if args.study == ["all"] else args.study
  unknown = [n for n in names if n not in STUDIES]
  if unknown:
    ap.error(f"unknown study {', '.join(unknown)}; choose from {', '.join(STUDIES)}")
  path = output_path("repro_beyond_backprop.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  for name in names:
    print(f"== {name}", flush=True)
    t0 = time.perf_counter()
    result = STUDIES[name](args.quick)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged[name] = result
    path.write_text(json.dumps(merged, indent=1, default=float) + "\n")
    print(f"== {name}: {result['wall_seconds']} s -> {path}", flush=True)


if __name__ == "__main__":
  main()
