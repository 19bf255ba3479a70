"""Sophia-G vs AdamW on a GPT-2-style decoder: the paper's comparison, at CPU size.

Liu et al. (arXiv:2305.14342) train GPT-2 (125M-770M) on OpenWebText and report that
Sophia-G reaches AdamW's validation loss in about half the steps. This study repeats the
comparison with the paper's own recipe on the largest decoder that 2 CPU cores train in
minutes: a byte-level GPT-2-style model (``bench/_gpt.py``: pre-LN, learned positions,
GELU MLP, tied embeddings, no biases, GPT-2 initialization) on the Python standard library's
sources (offline; every 20th file held out for validation).

Hyperparameters are those of the official code (github.com/Liuhong99/Sophia, the 125M
configs ``config/train_gpt2_small_{adam,sophiag}.py``):

* both: gradient clipping at global norm 1, linear warmup over the first 2% of the steps
  then cosine decay (nanoGPT's ``get_lr``), weight decay on the linear layers' weights only;
* AdamW: beta1 0.9, beta2 0.95, eps 1e-8, weight decay 0.1, final lr = peak / 20;
* Sophia-G: beta1 0.965, beta2 0.99, rho 0.05 (``gamma``), k = 10, the Gauss-Newton-Bartlett
  estimator with B = the tokens of a batch, weight decay 0.2, final lr = peak / 40.

The peak learning rate of each is tuned the same way: the same grid (6e-4, the paper's value
for 125M, then 1e-3 and 2e-3; a first grid 1e-3..4e-3 had AdamW best at its lower edge), one
short run each (its own full schedule), lowest final validation loss wins. Then one full run
each per seed; the target is AdamW's final validation loss, and the study reports the tokens
each optimizer needs to reach it, and the speed-up ratio. Sophia-G is also run with half the
tokens (its schedule compressed to the half budget), the paper's form of the claim ("the
same loss in 50% fewer steps"). All runs of a seed share the initial weights and the data
order.

    .venv/bin/python bench/sophia_gpt.py [--size cpu|gpu] [--steps N] [--seeds 0 1] [--quick]

Prints a table and writes ``bench/results/sophia_gpt.json`` (after every run, so a
stopped study keeps what it finished). ``--quick`` is a seconds-long smoke run of a tiny
model, written to the temporary directory. ``--size gpu`` is GPT-2 small's shape (12 x 768,
context 1024; 86M parameters with the byte vocabulary) for an accelerator. ``--rho-ablation
RHO ...`` adds full Sophia-G runs at other rho to existing results.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

ROOT = pathlib.Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
  if str(path) not in sys.path:
    sys.path.insert(0, str(path))

import _gpt  # noqa: E402
from _timing import output_path  # noqa: E402

import optim  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Size:
  model: _gpt.GPTConfig
  batch: int  # sequences per step
  steps: int  # full-run steps
  grid_steps: int  # steps of a learning-rate-grid run
  eval_every: int
  val_windows: int


SIZES = {
  # ~0.84M parameters, 4096 tokens a step (see the README section for the measured speed).
  "cpu": Size(_gpt.GPTConfig(128, 4, 4, 128), 32, 400, 100, 25, 128),
  # GPT-2 small's shape (12 x 768, context 1024) with the 256-byte vocabulary.
  "gpu": Size(_gpt.GPTConfig(768, 12, 12, 1024), 64, 5000, 500, 100, 256),
  "quick": Size(_gpt.GPTConfig(32, 2, 2, 32), 8, 20, 10, 5, 8),
}

LR_GRID = (6e-4, 1e-3, 2e-3)
WARMUP_FRACTION = 0.02  # 2000 of 100k steps in the official configs
GRAD_CLIP = 1.0

# Official 125M configs (config/train_gpt2_small_*.py); min_lr_ratio = min_lr / learning_rate.
HPARAMS = {
  "adamw": {"b1": 0.9, "b2": 0.95, "eps": 1e-8, "weight_decay": 0.1, "min_lr_ratio": 0.05},
  "sophia_g": {
    "b1": 0.965,
    "b2": 0.99,
    "rho": 0.05,
    "update_interval": 10,
    "weight_decay": 0.2,
    "min_lr_ratio": 0.025,
  },
}


def lr_schedule(peak_lr, steps: int, min_lr_ratio: float):
  """nanoGPT's ``get_lr``: linear warmup from 0, then cosine down to ``peak * min_lr_ratio``
  (written here rather than with ``optax.warmup_cosine_decay_schedule`` so the peak may be
  a traced value: one compilation serves the whole learning-rate grid)."""
  warmup = max(1, round(WARMUP_FRACTION * steps))

  def schedule(count):
    t = count.astype(jnp.float32)
    decay = jnp.clip((t - warmup) / max(steps - warmup, 1), 0.0, 1.0)
    cosine = min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + jnp.cos(jnp.pi * decay))
    return peak_lr * jnp.where(t < warmup, t / warmup, cosine)

  return schedule


def make_optimizer(
  name: str, peak_lr, steps: int, batch_tokens: int, mask, seed: int, rho: float | None = None
):
  hp = HPARAMS[name]
  lr = lr_schedule(peak_lr, steps, hp["min_lr_ratio"])
  if name == "adamw":
    opt = optax.adamw(
      lr, b1=hp["b1"], b2=hp["b2"], eps=hp["eps"], weight_decay=hp["weight_decay"], mask=mask
    )
  else:
    opt = optim.sophia(
      lr,
      b1=hp["b1"],
      b2=hp["b2"],
      gamma=hp["rho"] if rho is None else rho,
      weight_decay=hp["weight_decay"],
      weight_decay_mask=mask,
      update_interval=hp["update_interval"],
      variant="gnb",
      batch_size=batch_tokens,
      key=seed,
      track_win_rate="step",  # the win rate curve is read at every evaluation step
    )
  return optax.chain(optax.clip_by_global_norm(GRAD_CLIP), opt)


def make_trainer(name: str, size: Size, steps: int, seed: int, rho: float | None = None):
  """``train(params, peak_lr, data, val_x, val_y, log) -> record`` for one optimizer and
  run length; evaluation every ``size.eval_every`` steps. One compilation per
  (optimizer, length): the peak learning rate is an argument."""
  config, batch = size.model, size.batch
  batch_tokens = batch * config.context
  mask = _gpt.decay_mask(_gpt.init_params(config, jax.random.key(0)))
  tx_for = functools.partial(
    make_optimizer, name, steps=steps, batch_tokens=batch_tokens, mask=mask, seed=seed, rho=rho
  )
  data_key = jax.random.key(1000 + seed)

  @jax.jit
  def init(params, peak_lr):
    return tx_for(peak_lr).init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def chunk(params, state, peak_lr, step0, data, val_x, val_y):
    tx = tx_for(peak_lr)

    def step(carry, i):
      params, state = carry
      starts = jax.random.randint(
        jax.random.fold_in(data_key, i), (batch,), 0, data.shape[0] - config.context - 1
      )
      x, y = _gpt.windows(data, starts, config.context)
      loss, grads = jax.value_and_grad(_gpt.loss_fn)(params, x, y, config)
      extra = {}
      if name == "sophia_g":
        extra["sampled_obj_fn"] = functools.partial(_gpt.sampled_loss_fn, x=x, config=config)
      updates, state = tx.update(grads, state, params, **extra)
      return (optax.apply_updates(params, updates), state), loss

    (params, state), losses = jax.lax.scan(
      step, (params, state), step0 + jnp.arange(size.eval_every)
    )
    win = otu.tree_get(state, "win_rate", default=jnp.float32(jnp.nan))
    return params, state, losses.mean(), _gpt.loss_fn(params, val_x, val_y, config), win

  def train(params, peak_lr, data, val_x, val_y, log=""):
    params = jax.tree.map(jnp.array, params)  # a copy: ``chunk`` donates its buffers
    lr = jnp.float32(peak_lr)
    state = init(params, lr)
    curve, train_curve, win_curve = [], [], []
    t0 = time.perf_counter()
    for step0 in range(0, steps, size.eval_every):
      params, state, tr, val, win = chunk(params, state, lr, step0, data, val_x, val_y)
      curve.append(float(val))
      train_curve.append(float(tr))
      win_curve.append(float(win))
      if log:
        print(
          f"  {log} step {step0 + size.eval_every:>5}  train {tr:.4f}  val {val:.4f}", flush=True
        )
    seconds = time.perf_counter() - t0
    return {
      "lr": float(peak_lr),
      "steps": steps,
      "tokens_per_eval": size.eval_every * batch_tokens,
      "final_val": curve[-1],
      "val_curve": curve,
      "train_curve": train_curve,
      "win_rate_curve": win_curve if name == "sophia_g" else None,
      "seconds": seconds,
      "seconds_per_step": seconds / steps,
    }

  return train


def tokens_to(curve, target, tokens_per_eval):
  """Tokens at the first evaluation whose validation loss is at or below ``target``."""
  hit = np.nonzero(np.asarray(curve) <= target)[0]
  return int((hit[0] + 1) * tokens_per_eval) if hit.size else None


def rho_ablation(path, rhos, size, steps, data, val_x, val_y):
  """Full Sophia-G runs at other rho (the paper tunes rho so the unclipped fraction stays in
  0.1-0.5), added to the results in ``path`` against the same AdamW target."""
  out = json.loads(path.read_text())
  lr = out["best_lr"]["sophia_g"]
  for seed, runs in out["runs"].items():
    params = _gpt.init_params(size.model, jax.random.key(int(seed)))
    summary = out["summary"][seed]
    ablation = summary.setdefault("rho_ablation", {})
    for rho in rhos:
      train = make_trainer("sophia_g", size, steps, int(seed), rho=rho)
      rec = runs[f"sophia_g_rho{rho:g}"] = train(
        params, lr, data, val_x, val_y, log=f"sophia_g rho {rho:g} s{seed}"
      )
      hit = tokens_to(rec["val_curve"], summary["target"], rec["tokens_per_eval"])
      ablation[f"{rho:g}"] = {
        "final_val": rec["final_val"],
        "tokens_to_target": hit,
        "speedup": summary["tokens_to_target_adamw"] / hit if hit else None,
        "win_rate_mean": float(np.mean(rec["win_rate_curve"])),
      }
      path.write_text(json.dumps(out, indent=2))
      print(f"  seed {seed} rho {rho:g}: {ablation[f'{rho:g}']}", flush=True)
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=("cpu", "gpu"), default="cpu")
  parser.add_argument("--steps", type=int, default=None, help="full-run steps (default: size's)")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--lrs", type=float, nargs="+", default=list(LR_GRID))
  parser.add_argument(
    "--grid-known",
    nargs="*",
    default=[],
    metavar="NAME:LR=LOSS",
    help="grid results of an earlier invocation with the same settings (runs are deterministic);"
    " those runs are skipped",
  )
  parser.add_argument(
    "--rho-ablation",
    type=float,
    nargs="+",
    default=None,
    help="only add full Sophia-G runs at these rho to the existing results (same lr, seeds)",
  )
  parser.add_argument("--no-half", action="store_true", help="skip the half-budget Sophia-G run")
  parser.add_argument(
    "--batch",
    type=int,
    default=None,
    help="sequences per step (default: size's); 256 gives 32,768 tokens a step, the same gradient"
    " as accumulating 8 micro-batches of 32. Results go to sophia_gpt_b{BATCH}.json",
  )
  parser.add_argument(
    "--fixed-lr",
    nargs=2,
    type=float,
    default=None,
    metavar=("ADAMW", "SOPHIA_G"),
    help="skip the grid and use these peak learning rates (e.g. the ones the default batch's grid"
    " chose)",
  )
  parser.add_argument("--eval-every", type=int, default=None, help="steps between evaluations")
  parser.add_argument("--quick", action="store_true", help="tiny model, seconds (smoke run)")
  args = parser.parse_args(argv)
  size = SIZES["quick" if args.quick else args.size]
  if args.steps:
    size = dataclasses.replace(size, steps=args.steps)
  if args.batch:
    size = dataclasses.replace(size, batch=args.batch)
  if args.eval_every:
    size = dataclasses.replace(size, eval_every=args.eval_every)
  if args.quick:
    args.lrs = args.lrs[:2]
  steps = size.steps - size.steps % size.eval_every
  config, batch_tokens = size.model, size.batch * size.model.context

  t_all = time.perf_counter()
  train_np, val_np = _gpt.load_corpus(max_bytes=2_000_000 if args.quick else 24_000_000)
  data = jnp.asarray(train_np)
  vstarts = np.linspace(0, val_np.size - config.context - 2, size.val_windows).astype(np.int32)
  val_x, val_y = _gpt.windows(jnp.asarray(val_np), jnp.asarray(vstarts), config.context)
  print(
    f"# corpus: {train_np.size:,} train / {val_np.size:,} val bytes of stdlib *.py; model "
    f"{config.n_params:,} params ({config.layers} x {config.d_model}, {config.heads} heads, "
    f"context {config.context}); {batch_tokens} tokens/step; {steps} steps "
    f"({steps * batch_tokens:,} tokens); backend {jax.default_backend()}",
    flush=True,
  )

  name = f"sophia_gpt_b{args.batch}.json" if args.batch else "sophia_gpt.json"
  path = output_path(name, args.quick)
  if args.rho_ablation:
    return rho_ablation(path, args.rho_ablation, size, steps, data, val_x, val_y)

  out = {
    "config": {
      **dataclasses.asdict(config),
      "n_params": config.n_params,
      "batch": size.batch,
      "batch_tokens": batch_tokens,
      "steps": steps,
      "grid_steps": size.grid_steps,
      "eval_every": size.eval_every,
      "val_windows": size.val_windows,
      "train_bytes": int(train_np.size),
      "val_bytes": int(val_np.size),
      "lr_grid": args.lrs,
      "warmup_fraction": WARMUP_FRACTION,
      "grad_clip": GRAD_CLIP,
      "hyperparameters": HPARAMS,
    },
    "grid": {},
    "runs": {},
    "summary": {},
    "backend": jax.default_backend(),
  }
  path.parent.mkdir(parents=True, exist_ok=True)

  def save():
    out["total_seconds"] = time.perf_counter() - t_all
    path.write_text(json.dumps(out, indent=2))

  names = ("adamw", "sophia_g")
  params0 = _gpt.init_params(config, jax.random.key(args.seeds[0]))
  best_lr, known = {}, {}
  for entry in args.grid_known:
    name, rest = entry.split(":")
    lr, loss = rest.split("=")
    known.setdefault(name, {})[float(lr)] = float(loss)
  out["grid_known"] = args.grid_known
  for name in names:  # the grid: seed 0's initialization and data, short runs
    if args.fixed_lr:
      best_lr[name] = dict(zip(names, args.fixed_lr))[name]
      continue
    train = make_trainer(name, size, size.grid_steps, args.seeds[0])
    out["grid"][name] = []
    for lr in args.lrs:
      if lr in known.get(name, {}):
        out["grid"][name].append({"lr": lr, "final_val": known[name][lr], "seconds": None})
        continue
      rec = train(params0, lr, data, val_x, val_y)
      out["grid"][name].append({k: rec[k] for k in ("lr", "final_val", "seconds")})
      print(
        f"  grid {name:<9} lr {lr:<7g} final val {rec['final_val']:.4f} ({rec['seconds']:.0f}s)"
      )
      save()
    finite = [g for g in out["grid"][name] if np.isfinite(g["final_val"])]
    best_lr[name] = min(finite, key=lambda g: g["final_val"])["lr"]
  out["best_lr"] = best_lr
  out["lr_source"] = "fixed (--fixed-lr)" if args.fixed_lr else "grid"

  for seed in args.seeds:
    params = _gpt.init_params(config, jax.random.key(seed))
    runs = out["runs"][str(seed)] = {}
    for name in names:
      train = make_trainer(name, size, steps, seed)
      runs[name] = train(params, best_lr[name], data, val_x, val_y, log=f"{name} s{seed}")
      save()
    target = runs["adamw"]["final_val"]
    summary = {"target": target}
    for name in names:
      r = runs[name]
      summary[f"tokens_to_target_{name}"] = tokens_to(r["val_curve"], target, r["tokens_per_eval"])
    adam_t, soph_t = summary["tokens_to_target_adamw"], summary["tokens_to_target_sophia_g"]
    summary["speedup"] = adam_t / soph_t if soph_t else None
    summary["final_val_sophia_g"] = runs["sophia_g"]["final_val"]
    summary["wall_ratio_per_step"] = (
      runs["sophia_g"]["seconds_per_step"] / runs["adamw"]["seconds_per_step"]
    )
    out["summary"][str(seed)] = summary
    save()
    if not args.no_half:
      half = dataclasses.replace(size, steps=steps // 2 - (steps // 2) % size.eval_every)
      train = make_trainer("sophia_g", half, half.steps, seed)
      runs["sophia_g_half"] = train(
        params, best_lr["sophia_g"], data, val_x, val_y, log=f"sophia_g/2 s{seed}"
      )
      summary["final_val_sophia_g_half"] = runs["sophia_g_half"]["final_val"]
      save()

  fmt = lambda t: f"{t / 1e6:.2f}M" if t else f"> {steps * batch_tokens / 1e6:.2f}M"
  print(
    "\n| seed | AdamW lr | Sophia-G lr | target (AdamW final val) | AdamW tokens | "
    "Sophia-G tokens | speed-up | Sophia-G final | Sophia-G half-budget final |"
  )
  print("|---" * 9 + "|")
  for seed, s in out["summary"].items():
    half = s.get("final_val_sophia_g_half")
    print(
      f"| {seed} | {best_lr['adamw']:g} | {best_lr['sophia_g']:g} | {s['target']:.4f} | "
      f"{fmt(s['tokens_to_target_adamw'])} | {fmt(s['tokens_to_target_sophia_g'])} | "
      f"{s['speedup'] and round(s['speedup'], 2)} | {s['final_val_sophia_g']:.4f} | "
      f"{'-' if half is None else f'{half:.4f}'} |"
    )
  save()
  print(f"# total {out['total_seconds']:.0f}s; wrote {path}")
  return out


if __name__ == "__main__":
  main()
