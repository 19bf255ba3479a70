"""Small-scale reproductions of the first-order optimizer papers.

Prints a table and writes bench/results/repro_first_order.json. Four studies:

1. Prieto et al. (arXiv:2501.04697): ⊥Grad + StableMax vs AdamW (softmax) on modular
   addition, no weight decay: steps to 95% test accuracy.
2. Zhang et al. (arXiv:2311.14632): DiceSGD vs DP-SGD on logistic regression at a small
   clip threshold and equal noise multiplier: final full-data loss.
3. Tyurin (arXiv:2412.08424): Normalized LR+GD vs LR+GD with large steps on separable
   data: iterations to zero training error.
4. Pan & Li (arXiv:2306.00204): directional sharpness u^T H u / |u|^2 of the SGD update
   direction vs Adam's (and their coordinate-clipped versions) along an Adam run of a tiny
   one-layer attention model.

Usage: ``.venv/bin/python bench/repro_first_order.py [--quick]`` (``--quick``: smaller
budgets, written to the temporary directory instead of ``bench/results``).
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optim
from optim.curvature import directional_sharpness
from optim.losses import stablemax_cross_entropy

# ---------------------------------------------------------------- 1. grokking, no decay


def modular_addition(p=31, train_frac=0.5, seed=0):
  a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
  a, b = a.ravel(), b.ravel()
  y = (a + b) % p
  x = np.concatenate([np.eye(p)[a], np.eye(p)[b]], axis=1).astype(np.float32)
  perm = np.random.default_rng(seed).permutation(len(y))
  n = int(train_frac * len(y))
  tr, te = perm[:n], perm[n:]
  return (jnp.asarray(x[tr]), jnp.asarray(y[tr])), (jnp.asarray(x[te]), jnp.asarray(y[te]))


def mlp_init(key, sizes, *, bias=True, init="he"):
  """MLP weights. ``init="he"``: normal(0, 2/fan_in) (the small setting); ``"torch"``:
  uniform(±1/sqrt(fan_in)), PyTorch's ``nn.Linear`` default, as in the paper's code."""
  keys = jax.random.split(key, len(sizes) - 1)
  layers = []
  for k, m, n in zip(keys, sizes[:-1], sizes[1:]):
    if init == "torch":
      w = jax.random.uniform(k, (m, n), minval=-1.0, maxval=1.0) / np.sqrt(m)
    else:
      w = jax.random.normal(k, (m, n)) * np.sqrt(2.0 / m)
    layers.append({"w": w, "b": jnp.zeros(n)} if bias else {"w": w})
  return layers


def mlp_apply(params, x):
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer.get("b", 0.0))
  return x @ params[-1]["w"] + params[-1].get("b", 0.0)


def steps_to_accuracy(
  tx,
  loss_name,
  *,
  p,
  hidden,
  max_steps,
  seed,
  target=0.95,
  every=50,
  train_frac=0.5,
  bias=True,
  init="he",
):
  (xtr, ytr), (xte, yte) = modular_addition(p, train_frac=train_frac, seed=seed)
  params = mlp_init(jax.random.key(seed), [2 * p, hidden, hidden, p], bias=bias, init=init)

  def loss_fn(params):
    logits = mlp_apply(params, xtr)
    if loss_name == "stablemax":
      return jnp.mean(stablemax_cross_entropy(logits, ytr))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, ytr))

  @jax.jit
  def chunk(params, state):
    def body(carry, _):
      params, state = carry
      loss, g = jax.value_and_grad(loss_fn)(params)
      u, state = tx.update(g, state, params, value=loss)
      return (optax.apply_updates(params, u), state), loss

    (params, state), losses = jax.lax.scan(body, (params, state), None, length=every)
    acc_te = jnp.mean(jnp.argmax(mlp_apply(params, xte), -1) == yte)
    acc_tr = jnp.mean(jnp.argmax(mlp_apply(params, xtr), -1) == ytr)
    return params, state, losses[-1], acc_tr, acc_te

  state = tx.init(params)
  step, first_train = 0, None
  while step < max_steps:
    params, state, loss, acc_tr, acc_te = chunk(params, state)
    step += every
    if first_train is None and float(acc_tr) >= target:
      first_train = step
    if float(acc_te) >= target:
      return {"steps": step, "train_95": first_train, "test_acc": float(acc_te)}
  return {"steps": None, "train_95": first_train, "test_acc": float(acc_te), "loss": float(loss)}


def study_grokking(quick: bool):
  p, hidden = 31, 128
  max_steps = 1000 if quick else 4000
  lr = 3e-3
  configs = {
    "AdamW (softmax CE, wd=0)": (optax.adamw(lr, weight_decay=0.0), "softmax"),
    "AdamW (StableMax CE, wd=0)": (optax.adamw(lr, weight_decay=0.0), "stablemax"),
    "⊥Grad+AdamW (softmax CE, wd=0)": (
      optax.chain(optim.perp_grad(), optax.adamw(lr, weight_decay=0.0)),
      "softmax",
    ),
    "⊥Grad+AdamW (StableMax CE, wd=0)": (
      optax.chain(optim.perp_grad(), optax.adamw(lr, weight_decay=0.0)),
      "stablemax",
    ),
  }
  seeds = [0] if quick else [0, 1]
  out = {}
  for name, (tx, loss_name) in configs.items():
    out[name] = [
      steps_to_accuracy(tx, loss_name, p=p, hidden=hidden, max_steps=max_steps, seed=s)
      for s in seeds
    ]
  return {
    "setup": f"(a+b) mod {p}, 50% train, MLP 2p-{hidden}-{hidden}-p, full batch, lr {lr}, "
    f"max {max_steps} steps, seeds {seeds}",
    "results": out,
  }


def study_grokking_paper(quick: bool):
  """Prieto et al.'s own setting (official code, ``run_main_experiments.sh``, Figure 1):
  (a+b) mod 113, 40% train, bias-free MLP 226-200-200-113 with PyTorch's default init,
  full batch, AdamW lr 0.01, eps 1e-25, no weight decay; beta2 0.99 for the ⊥Grad run and
  0.999 for the StableMax run (the paper runs StableMax alone for 80k steps; here every
  configuration gets the same step budget)."""
  p, hidden, frac, lr = 113, 200, 0.4, 0.01
  max_steps = 300 if quick else 2000

  def adamw(b2):
    return optax.adamw(lr, b1=0.9, b2=b2, eps=1e-25, weight_decay=0.0)

  configs = {
    "AdamW (softmax CE)": (adamw(0.99), "softmax"),
    "AdamW (StableMax CE)": (adamw(0.999), "stablemax"),
    "⊥Grad+AdamW (softmax CE)": (optax.chain(optim.perp_grad(), adamw(0.99)), "softmax"),
    "⊥Grad+AdamW (StableMax CE)": (optax.chain(optim.perp_grad(), adamw(0.99)), "stablemax"),
  }
  seeds = [0] if quick else [0, 1]
  kw = dict(p=p, hidden=hidden, max_steps=max_steps, train_frac=frac, bias=False, init="torch")
  out = {
    name: [steps_to_accuracy(tx, loss, seed=s, every=10, **kw) for s in seeds]
    for name, (tx, loss) in configs.items()
  }
  return {
    "setup": f"(a+b) mod {p}, {frac:.0%} train, bias-free MLP 2p-{hidden}-{hidden}-p (torch "
    f"init), full batch, AdamW lr {lr} eps 1e-25 wd 0, max {max_steps} steps, seeds {seeds}",
    "results": out,
  }


# ---------------------------------------------------------------- 2. DP logistic regression


def study_dp(quick: bool):
  rng = np.random.default_rng(0)
  n, d, batch = 2000, 20, 64
  w_true = rng.normal(size=d)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (rng.uniform(size=n) < 1 / (1 + np.exp(-x @ w_true))).astype(np.float32)
  x, y = jnp.asarray(x), jnp.asarray(y)

  def loss_i(w, xi, yi):
    z = xi @ w
    return jnp.logaddexp(0.0, z) - yi * z

  full = lambda w: jnp.mean(jax.vmap(loss_i, in_axes=(None, 0, 0))(w, x, y))
  steps = 500 if quick else 1500
  lr, clip, sigma = 0.5, 0.05, 1.0

  def run(tx, seed):
    @jax.jit
    def go(w, key):
      def body(carry, k):
        w, s = carry
        idx = jax.random.choice(k, n, (batch,), replace=False)
        g = jax.vmap(jax.grad(loss_i), in_axes=(None, 0, 0))(w, x[idx], y[idx])
        u, s = tx.update(g, s, w)
        return (optax.apply_updates(w, u), s), None

      keys = jax.random.split(key, steps)
      (w, _), _ = jax.lax.scan(body, (w, tx.init(w)), keys)
      return full(w)

    return float(go(jnp.zeros(d), jax.random.key(seed)))

  # Reference optimum: plain full-batch GD run long.
  w = jnp.zeros(d)
  gd = jax.jit(lambda w: w - 2.0 * jax.grad(full)(w))
  for _ in range(3000):
    w = gd(w)
  seeds = [0, 1, 2]
  res = {"optimum (non-private GD)": float(full(w))}
  for name, make in {
    f"DP-SGD (C={clip})": lambda s: optim.dp_sgd(lr, clip, sigma, key=s),
    f"DiceSGD (C1={clip}, C2={2 * clip})": lambda s: optim.dice_sgd(
      lr, clip, 2 * clip, sigma, key=s
    ),
    f"DiceSGD (C1=C2={clip})": lambda s: optim.dice_sgd(lr, clip, clip, sigma, key=s),
  }.items():
    losses = [run(make(s), s) for s in seeds]
    res[name] = {"mean": float(np.mean(losses)), "per_seed": losses}
  return {
    "setup": f"logistic regression n={n}, d={d}, batch {batch}, lr {lr}, {steps} steps, "
    f"noise multiplier {sigma} (std sigma*C1/B on the mean for both), seeds {seeds}",
    "results": res,
  }


# ---------------------------------------------------------------- 3. normalized GD


def study_normalized_gd(quick: bool):
  rng = np.random.default_rng(0)
  n, d = 300, 10
  w_star = rng.normal(size=d)
  x = rng.normal(size=(n, d))
  margin = x @ w_star / np.linalg.norm(w_star)
  keep = np.abs(margin) > 0.02  # separable with a small margin
  x, y = jnp.asarray(x[keep], jnp.float32), jnp.asarray(np.sign(margin[keep]), jnp.float32)
  loss = lambda w: jnp.mean(jnp.logaddexp(0.0, -y * (x @ w)))
  max_iter = 20000 if not quick else 5000

  def iters_to_zero_error(tx):
    @jax.jit
    def go(w):
      def cond(c):
        w, s, t = c
        return (jnp.any(jnp.sign(x @ w) != y)) & (t < max_iter)

      def body(c):
        w, s, t = c
        value, g = jax.value_and_grad(loss)(w)
        u, s = tx.update(g, s, w, value=value)
        return optax.apply_updates(w, u), s, t + 1

      return jax.lax.while_loop(cond, body, (w, tx.init(w), 0))[2]

    t = int(go(jnp.zeros(d)))
    return t if t < max_iter else None

  res = {}
  for gamma in [1.0, 10.0, 100.0, 1000.0]:
    res[f"LR+GD gamma={gamma:g}"] = iters_to_zero_error(optax.sgd(gamma))
  for gamma in [0.1, 1.0, 10.0, 100.0, 1000.0]:
    res[f"Normalized LR+GD gamma={gamma:g}"] = iters_to_zero_error(optim.normalized_gd(gamma))
  return {
    "setup": f"separable data n={int(keep.sum())}, d={d}, margin > 0.02 (unit w*), "
    f"full-batch, max {max_iter} iterations (None = not reached)",
    "results": res,
  }


# ---------------------------------------------------------------- 4. directional sharpness


def attention_model(key, vocab=16, dim=32, seq=12):
  ks = jax.random.split(key, 6)
  s = 1.0 / np.sqrt(dim)
  return {
    "emb": jax.random.normal(ks[0], (vocab, dim)) * 0.5,
    "pos": jax.random.normal(ks[1], (seq, dim)) * 0.5,
    "q": jax.random.normal(ks[2], (dim, dim)) * s,
    "k": jax.random.normal(ks[3], (dim, dim)) * s,
    "v": jax.random.normal(ks[4], (dim, dim)) * s,
    "out": jax.random.normal(ks[5], (dim, vocab)) * s,
  }


def attention_loss(params, tokens):
  h = params["emb"][tokens[:, :-1]] + params["pos"][None, : tokens.shape[1] - 1]
  q, k, v = h @ params["q"], h @ params["k"], h @ params["v"]
  t = h.shape[1]
  att = (q @ jnp.swapaxes(k, 1, 2)) / np.sqrt(h.shape[-1])
  att = jnp.where(jnp.tril(jnp.ones((t, t), bool)), att, -1e9)
  h = h + jax.nn.softmax(att, -1) @ v
  logits = h @ params["out"]
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]))


def study_sharpness(quick: bool):
  vocab, seq, batch = 16, 12, 64
  rng = np.random.default_rng(0)
  # Sequences from a sparse random Markov chain: learnable next-token structure.
  trans = rng.dirichlet(np.full(vocab, 0.1), size=vocab)
  seqs = np.zeros((512, seq), np.int32)
  seqs[:, 0] = rng.integers(0, vocab, 512)
  for t in range(1, seq):
    u = rng.uniform(size=512)[:, None]
    seqs[:, t] = (np.cumsum(trans[seqs[:, t - 1]], axis=1) < u).sum(axis=1).clip(0, vocab - 1)
  data = jnp.asarray(seqs)
  params = attention_model(jax.random.key(0), vocab, seq=seq)
  adam = optax.scale_by_adam()
  tx = optax.chain(adam, optax.scale(-3e-3))
  state = tx.init(params)
  clip = optim.coordinate_clip(fraction=0.1)

  @jax.jit
  def train_step(params, state, batch):
    g = jax.grad(attention_loss)(params, batch)
    u, state = tx.update(g, state, params)
    return optax.apply_updates(params, u), state

  @jax.jit
  def sharpness(params, adam_state, batch):
    g = jax.grad(attention_loss)(params, batch)
    adam_dir, _ = adam.update(g, adam_state, params)  # Adam's direction at this point
    f = lambda p: attention_loss(p, batch)
    clipped_g, _ = clip.update(g, ())
    clipped_a, _ = clip.update(adam_dir, ())
    return {
      "SGD": directional_sharpness(f, params, g),
      "Adam": directional_sharpness(f, params, adam_dir),
      "clipped SGD (top 10%)": directional_sharpness(f, params, clipped_g),
      "clipped Adam (top 10%)": directional_sharpness(f, params, clipped_a),
    }

  checkpoints = [10, 100, 300] if quick else [10, 100, 300, 1000]
  rows = {}
  key = jax.random.key(1)
  for step in range(1, checkpoints[-1] + 1):
    key, k = jax.random.split(key)
    mb = data[jax.random.choice(k, data.shape[0], (batch,), replace=False)]
    params, state = train_step(params, state, mb)
    if step in checkpoints:
      s = sharpness(params, state[0], data[:256])
      rows[str(step)] = {k: float(v) for k, v in s.items()}
  return {
    "setup": f"1-layer causal attention, vocab {vocab}, seq {seq}, trained with Adam lr 3e-3 "
    f"batch {batch}; sharpness d^T H d / |d|^2 on 256 sequences at the Adam iterate",
    "results": rows,
  }


# ---------------------------------------------------------------- main


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true", help="smaller budgets (CI smoke)")
  ap.add_argument(
    "--only", nargs="+", metavar="STUDY", help="run these studies; keep the others' results"
  )
  args = ap.parse_args()
  # Imported here: tests load this file as a module without bench/ on the path.
  from _timing import output_path, time_once

  studies = [
    ("grokking_paper_setting", study_grokking_paper),
    ("grokking_perp_grad_stablemax", study_grokking),
    ("dp_logistic_regression", study_dp),
    ("normalized_gd_separable", study_normalized_gd),
    ("directional_sharpness", study_sharpness),
  ]
  path = output_path("repro_first_order.json", args.quick)
  out, timing = {}, {}
  if args.only:
    unknown = set(args.only) - {name for name, _ in studies}
    if unknown:
      ap.error(f"--only: unknown studies {sorted(unknown)}")
    if path.exists():
      out = json.loads(path.read_text())
      timing = out.pop("seconds", {})
      out.pop("backend", None)
    studies = [(name, fn) for name, fn in studies if name in args.only]
  for name, fn in studies:
    out[name], timing[name] = time_once(lambda fn=fn: fn(args.quick))
    print(f"\n== {name} ({timing[name]:.1f}s) ==\n   {out[name]['setup']}")
    for k, v in out[name]["results"].items():
      print(f"   {k:<42} {json.dumps(v)}")
  out["seconds"] = timing
  out["backend"] = jax.default_backend()
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))
  print(f"\nwrote {path}")


if __name__ == "__main__":
  main()
