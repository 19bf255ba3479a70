"""Steps to a target validation loss: a 2-layer character transformer, four optimizers.

The corpus is the Python standard library's own ``*.py`` files (top level of the stdlib
directory, sorted by name, concatenated; available offline everywhere Python is). A
flax.nnx transformer (2 pre-LN blocks, d_model 64, 4 heads, context 64) is trained on
random windows (batch 16) with AdamW, Sophia-H, Sophia-G (both k = 10) and AdaHessian,
each at the best learning rate of a small sweep (best = fewest steps to the target, ties
broken by the final validation loss). All runs share the data order, the initial weights,
a 20-step linear warmup and decoupled weight decay 0.01.

    .venv/bin/python bench/repro_char_transformer.py [--steps 400] [--target 2.6] [--quick]

Prints a table and writes ``bench/results/char_transformer.json`` (``--quick``: 20 steps
per optimizer at one learning rate, written to the temporary directory instead). The
numbers are what this tiny CPU-sized setup gives; the paper-scale claims (e.g. Sophia's
2x speed-up on GPT-2) are not expected to transfer to it, and the table is reported
whatever it shows.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import sysconfig
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from _timing import output_path, time_once  # noqa: E402

import optim  # noqa: E402

D_MODEL, HEADS, CONTEXT, BATCH, LAYERS = 64, 4, 64, 16, 2
EVAL_EVERY, VAL_WINDOWS = 20, 64
WARMUP, WEIGHT_DECAY = 20, 0.01


# ----------------------------------------------------------------------------- data


def load_corpus(max_chars: int = 2_000_000):
  """Stdlib sources as int32 codes: printable ASCII + newline; anything else -> one code."""
  stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
  text = "".join(
    p.read_text(encoding="utf-8", errors="replace") for p in sorted(stdlib.glob("*.py"))
  )
  text = text[:max_chars]
  alphabet = ["\n"] + [chr(c) for c in range(32, 127)]
  table = np.full(0x110000, len(alphabet), np.int32)  # len(alphabet) = "other"
  for i, ch in enumerate(alphabet):
    table[ord(ch)] = i
  codes = table[np.frombuffer(text.encode("utf-32-le"), np.uint32)]
  split = int(0.9 * len(codes))
  return jnp.asarray(codes[:split]), jnp.asarray(codes[split:]), len(alphabet) + 1


def windows(data, starts):
  idx = starts[:, None] + jnp.arange(CONTEXT + 1)
  seq = data[idx]
  return seq[:, :-1], seq[:, 1:]


# ----------------------------------------------------------------------------- model


class Block(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.ln1 = nnx.LayerNorm(D_MODEL, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
      num_heads=HEADS, in_features=D_MODEL, decode=False, rngs=rngs
    )
    self.ln2 = nnx.LayerNorm(D_MODEL, rngs=rngs)
    self.up = nnx.Linear(D_MODEL, 4 * D_MODEL, rngs=rngs)
    self.down = nnx.Linear(4 * D_MODEL, D_MODEL, rngs=rngs)

  def __call__(self, x, mask):
    x = x + self.attn(self.ln1(x), mask=mask)
    return x + self.down(jax.nn.gelu(self.up(self.ln2(x))))


class CharTransformer(nnx.Module):
  def __init__(self, vocab: int, rngs: nnx.Rngs):
    self.tok = nnx.Embed(vocab, D_MODEL, rngs=rngs)
    self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (CONTEXT, D_MODEL)))
    self.blocks = nnx.List([Block(rngs) for _ in range(LAYERS)])
    self.ln = nnx.LayerNorm(D_MODEL, rngs=rngs)
    self.head = nnx.Linear(D_MODEL, vocab, rngs=rngs)

  def __call__(self, tokens):
    x = self.tok(tokens) + self.pos[...][: tokens.shape[-1]]
    mask = nnx.make_causal_mask(tokens)
    for block in self.blocks:
      x = block(x, mask)
    return self.head(self.ln(x))


# ----------------------------------------------------------------------------- training


def optimizers(batch_tokens: int):
  """name -> (factory(learning_rate), learning-rate sweep)."""
  wd = WEIGHT_DECAY
  return {
    "adamw": (
      lambda learning_rate: optax.adamw(learning_rate, weight_decay=wd),
      [1e-3, 3e-3, 1e-2],
    ),
    "sophia_h": (
      lambda learning_rate: optim.sophia(
        learning_rate, gamma=0.01, weight_decay=wd, update_interval=10, key=1
      ),
      [3e-4, 1e-3, 3e-3],
    ),
    "sophia_g": (
      lambda learning_rate: optim.sophia(
        learning_rate, gamma=0.05, weight_decay=wd, variant="gnb", batch_size=batch_tokens, key=1
      ),
      [3e-4, 1e-3, 3e-3],
    ),
    "adahessian": (
      lambda learning_rate: optim.adahessian(learning_rate, weight_decay=wd, key=1),
      [0.05, 0.15, 0.5],
    ),
  }


def make_runner(graphdef, train, val_x, val_y, factory, steps):
  """A jitted ``run(params, peak_lr, key) -> val losses every EVAL_EVERY steps``."""

  def loss_fn(params, x, y):
    logits = nnx.merge(graphdef, params)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def sampled_loss(params, key, x):
    logits = nnx.merge(graphdef, params)(x)
    y = jax.random.categorical(key, jax.lax.stop_gradient(logits))
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def schedule_scale(step):
    return jnp.minimum(1.0, (step + 1) / WARMUP)

  tx = optax.inject_hyperparams(factory)(learning_rate=0.0)

  @jax.jit
  def run(params, peak_lr, key):
    state = tx.init(params)

    def step(carry, step_key):
      params, state, i = carry
      starts = jax.random.randint(step_key, (BATCH,), 0, train.shape[0] - CONTEXT - 1)
      x, y = windows(train, starts)
      obj = functools.partial(loss_fn, x=x, y=y)
      grads = jax.grad(obj)(params)
      hp = dict(state.hyperparams, learning_rate=peak_lr * schedule_scale(i))
      state = state._replace(hyperparams=hp)
      # Sophia-G draws the labels with the key kept in its state.
      sampled = functools.partial(sampled_loss, x=x)
      updates, state = tx.update(grads, state, params, obj_fn=obj, sampled_obj_fn=sampled)
      return (optax.apply_updates(params, updates), state, i + 1), None

    def chunk(carry, chunk_key):
      carry, _ = jax.lax.scan(step, carry, jax.random.split(chunk_key, EVAL_EVERY))
      val = loss_fn(carry[0], val_x, val_y)
      return carry, val

    carry = (params, state, jnp.zeros([], jnp.int32))
    _, vals = jax.lax.scan(chunk, carry, jax.random.split(key, steps // EVAL_EVERY))
    return vals

  return run


def steps_to(vals, target):
  hit = np.nonzero(np.asarray(vals) <= target)[0]
  return int((hit[0] + 1) * EVAL_EVERY) if hit.size else None


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--target", type=float, default=2.2)
  parser.add_argument(
    "--also", type=float, nargs="*", default=[2.6, 2.4], help="extra targets reported"
  )
  parser.add_argument("--only", nargs="*", default=None, help="subset of optimizers")
  parser.add_argument(
    "--quick", action="store_true", help="20 steps per optimizer at one learning rate (smoke run)"
  )
  args = parser.parse_args(argv)
  if args.quick:
    args.steps = EVAL_EVERY
  steps = args.steps - args.steps % EVAL_EVERY

  t_all = time.perf_counter()
  train, val, vocab = load_corpus()
  vstarts = jnp.linspace(0, val.shape[0] - CONTEXT - 2, VAL_WINDOWS).astype(jnp.int32)
  val_x, val_y = windows(val, vstarts)
  model = CharTransformer(vocab, nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(
    f"# corpus: {train.shape[0] + val.shape[0]:,} chars of stdlib *.py, vocab {vocab}; "
    f"model {n_params:,} params; {steps} steps x batch {BATCH} x context {CONTEXT}; "
    f"target val loss {args.target}"
  )

  rows, sweeps = {}, {}
  for name, (factory, lrs) in optimizers(BATCH * CONTEXT).items():
    if args.only and name not in args.only:
      continue
    t0 = time.perf_counter()
    run = make_runner(graphdef, train, val_x, val_y, factory, steps)
    sweeps[name] = []
    for lr in lrs[:1] if args.quick else lrs:
      vals, seconds = time_once(lambda lr=lr: run(params, jnp.float32(lr), jax.random.key(42)))
      vals = np.asarray(vals)
      sweeps[name].append(
        {
          "lr": lr,
          "steps_to_target": steps_to(vals, args.target),
          "final_val": float(vals[-1]),
          "best_val": float(np.nanmin(vals)) if np.isfinite(vals).any() else None,
          "val_curve": [float(v) for v in vals],
          "seconds": seconds,
        }
      )
      s = sweeps[name][-1]
      print(
        f"  {name:<10} lr {lr:<7g} steps->target {str(s['steps_to_target']):>5}  "
        f"final val {s['final_val']:.3f}  ({s['seconds']:.0f}s)"
      )

    def rank(s):
      hit = s["steps_to_target"]
      final = s["final_val"] if np.isfinite(s["final_val"]) else np.inf
      return (hit is None, hit if hit is not None else 0, final)

    best = min(sweeps[name], key=rank)
    best["steps_to_other_targets"] = {str(t): steps_to(best["val_curve"], t) for t in args.also}
    rows[name] = {
      **{k: v for k, v in best.items() if k != "val_curve"},
      "wall_s": time.perf_counter() - t0,
    }

  fmt = lambda n: str(n) if n is not None else f"> {steps}"
  others = "".join(f" steps to {t} |" for t in args.also)
  print(f"\n| optimizer | best lr | steps to val loss {args.target} |{others} final val loss |")
  print("|---" * (4 + len(args.also)) + "|")
  for name, r in rows.items():
    o = "".join(f" {fmt(v)} |" for v in r["steps_to_other_targets"].values())
    hit = fmt(r["steps_to_target"])
    print(f"| {name} | {r['lr']:g} | {hit} |{o} {r['final_val']:.3f} |")
  total = time.perf_counter() - t_all
  print(f"# total {total:.0f}s")
  out = {
    "config": {
      "d_model": D_MODEL,
      "heads": HEADS,
      "layers": LAYERS,
      "context": CONTEXT,
      "batch": BATCH,
      "steps": steps,
      "eval_every": EVAL_EVERY,
      "val_windows": VAL_WINDOWS,
      "warmup": WARMUP,
      "weight_decay": WEIGHT_DECAY,
      "target": args.target,
      "n_params": int(n_params),
      "vocab": vocab,
    },
    "best": rows,
    "sweeps": sweeps,
    "total_seconds": total,
    "backend": jax.default_backend(),
  }
  path = output_path("char_transformer.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=2))
  print(f"wrote {path}")
  return out


if __name__ == "__main__":
  main()
